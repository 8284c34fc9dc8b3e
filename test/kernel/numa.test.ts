/**
 * NUMA placement (`numaNode`) against a real kernel with two nodes (scripts/kernel/run.sh boots its guest with qemu
 * `-numa`): for the memory, memfd and udmabuf targets, every page of a loaded buffer is on the node asked for, as
 * move_pages(2) in query mode reports it page by page, and 'interleave' spreads the pages evenly over the nodes; the
 * bytes are exact against the file. With hugetlb pages, the node's own pool gives them, and a node whose pool is
 * short is ERR_HUGETLB_POOL. A kernel with one node (or none) skips with the reason.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { allocate, load, probe } from '../../src/index.js';
import type { LoadedBuffer, TargetName } from '../../src/index.js';
import { native } from '../../src/engine/binding.js';
import { leakCheck, makeFile, sha256, sysfsMemoryNodes, tempDir } from '../helpers.js';

const MiB = 1024 * 1024;
const NODE_DIR = '/sys/devices/system/node';

/** The nodes with memory, read from sysfs here (an oracle independent of src/engine/numa.ts). */
const NODES = sysfsMemoryNodes() ?? [];
const SKIP =
  NODES.length < 2 ? `this kernel has ${NODES.length === 0 ? 'no NUMA' : 'one NUMA node'}: the qemu tier boots two (scripts/kernel/run.sh -numa)` : undefined;
const TARGETS: Array<[TargetName, string | undefined]> = [
  ['memory', undefined],
  ['memfd', undefined],
  ['udmabuf', existsSync('/dev/udmabuf') ? undefined : 'this kernel has no /dev/udmabuf (CONFIG_UDMABUF)'],
];

const { dir, cleanup } = tempDir();
after(cleanup);
const SIZE = 16 * MiB + 4097;
let file: { path: string; sha256: string };
before(() => {
  if (!SKIP) file = makeFile(dir, 'numa', SIZE);
});

/** The node of every page of the buffer's CPU view, from the kernel (move_pages query), counted per node. */
function pageNodes(b: LoadedBuffer): Map<number, number> {
  const nodes = native.numaPageNodes(b.bytes.buffer as ArrayBuffer, 0, b.size);
  if (typeof nodes === 'number') assert.fail(`move_pages failed with errno ${-nodes}`);
  const count = new Map<number, number>();
  for (const n of nodes) count.set(n, (count.get(n) ?? 0) + 1);
  return count;
}

describe('numaNode on two nodes: every page where it was asked to be (move_pages)', { skip: SKIP }, () => {
  test('probe lists every node with its memory', async () => {
    const p = await probe();
    assert.deepEqual(
      p.numa.nodes.map((n) => n.node),
      NODES,
    );
    for (const n of p.numa.nodes) {
      assert.ok(n.totalBytes > 256 * MiB, `node ${n.node}: ${n.totalBytes} bytes`);
      assert.ok(n.freeBytes > 0 && n.freeBytes <= n.totalBytes);
    }
  });

  for (const [target, skip] of TARGETS) {
    for (const node of [0, 1]) {
      test(`${target}: numaNode ${node}: every page on node ${node}, bytes exact`, { skip }, async () => {
        const leaks = leakCheck();
        const b = await load(file.path, { target, numaNode: node });
        try {
          assert.equal(sha256(b.bytes), file.sha256);
          assert.deepEqual([...pageNodes(b)], [[node, Math.ceil(SIZE / 4096)]]);
          assert.deepEqual(b.stats.numa?.nodes, [node]);
          assert.match(b.stats.numa.reason, new RegExp(`node ${node} \\(MPOL_BIND\\)`));
        } finally {
          b.close();
        }
        assert.equal(await leaks(), undefined);
      });
    }

    test(`${target}: 'interleave' spreads the pages evenly over both nodes`, { skip }, async () => {
      const b = await load(file.path, { target, numaNode: 'interleave' });
      try {
        assert.equal(sha256(b.bytes), file.sha256);
        const count = pageNodes(b);
        const pages = Math.ceil(SIZE / 4096);
        assert.deepEqual([...count.keys()].sort(), NODES);
        // Round-robin per page, or per 2 MiB where the memory target got transparent huge pages.
        for (const n of NODES) assert.ok(Math.abs(count.get(n)! - pages / NODES.length) <= 512 + 1, `node ${n}: ${count.get(n)} of ${pages} pages`);
        assert.deepEqual(b.stats.numa?.nodes, NODES);
      } finally {
        b.close();
      }
    });
  }

  test('allocate(): numaNode 1 puts the buffer on node 1', async () => {
    const b = await allocate(4 * MiB, { target: 'memfd', numaNode: 1 });
    try {
      assert.deepEqual([...pageNodes(b)], [[1, 1024]]);
    } finally {
      b.close();
    }
  });

  test('a node that is not there is ERR_OUT_OF_RANGE naming the nodes there are', async () => {
    const missing = Math.max(...NODES) + 1;
    await assert.rejects(load(file.path, { numaNode: missing }), { code: 'ERR_OUT_OF_RANGE', message: new RegExp(`nodes ${NODES.join(', ')}`) });
  });
});

describe(
  "numaNode with hugetlb pages: from the node's own pool",
  { skip: SKIP ?? (process.getuid?.() !== 0 ? 'reserving a hugetlb pool needs root' : undefined) },
  () => {
    const HP = 2 * MiB;
    const nr = (node: number) => `${NODE_DIR}/node${node}/hugepages/hugepages-2048kB/nr_hugepages`;
    const saved = new Map<number, string>();
    before(() => {
      for (const n of NODES) if (existsSync(nr(n))) saved.set(n, readFileSync(nr(n), 'utf8').trim());
    });
    after(() => {
      for (const [n, v] of saved) writeFileSync(nr(n), `${v}\n`);
    });

    for (const target of ['memory', 'memfd'] as const) {
      test(`${target}: hugetlb pages on node 1 only, node 0's pool untouched`, async (t) => {
        if (!existsSync(nr(1))) return t.skip('no 2 MiB hugetlb pool on node 1');
        const need = Math.ceil(SIZE / HP);
        writeFileSync(nr(0), '0\n');
        writeFileSync(nr(1), `${need}\n`);
        const got = Number(readFileSync(nr(1), 'utf8'));
        if (got < need) return t.skip(`the kernel found only ${got} of ${need} huge pages on node 1`);
        const b = await load(file.path, { target, numaNode: 1, hugePages: 'hugetlb' });
        try {
          assert.equal(sha256(b.bytes), file.sha256);
          assert.deepEqual([...pageNodes(b)], [[1, Math.ceil(SIZE / 4096)]]);
          assert.equal(b.stats.hugetlb?.pages, need);
        } finally {
          b.close();
        }
      });
    }

    test('a node whose pool is short is ERR_HUGETLB_POOL naming that node, before anything is read', async (t) => {
      if (!existsSync(nr(0))) return t.skip('no 2 MiB hugetlb pool on node 0');
      writeFileSync(nr(0), '0\n');
      writeFileSync(nr(1), `${Math.ceil(SIZE / HP)}\n`);
      const leaks = leakCheck();
      await assert.rejects(load(file.path, { target: 'memfd', numaNode: 0, hugePages: 'hugetlb' }), {
        code: 'ERR_HUGETLB_POOL',
        message: /NUMA node 0.*node0\/hugepages/,
      });
      assert.equal(await leaks(), undefined);
      // 'hugetlb-or-small': small pages, still on node 0.
      const b = await load(file.path, { target: 'memfd', numaNode: 0, hugePages: 'hugetlb-or-small' });
      try {
        assert.equal(b.stats.hugetlb, undefined);
        assert.equal(sha256(b.bytes), file.sha256);
        assert.deepEqual([...pageNodes(b)], [[0, Math.ceil(SIZE / 4096)]]);
      } finally {
        b.close();
      }
    });
  },
);
