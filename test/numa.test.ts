/**
 * NUMA placement (`numaNode`) on this host, whatever its nodes: a load bound to a node that has memory is
 * byte-exact against the file and every page is on that node as move_pages(2) (query mode) reports it; a node the
 * machine lacks is ERR_OUT_OF_RANGE naming the nodes there are, with nothing left allocated; bad values, the
 * dma-heap target and `into` are ERR_INVALID_ARG_*. The two-node checks (every target, interleave, hugetlb pools per
 * node) run in the kernel tier: test/kernel/numa.test.ts. Oracles: sysfs read here, sha256 of the file, the kernel's
 * own page placement.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, describe, test } from 'node:test';
import { allocate, connect, createPool, load, probe, serve } from '../src/index.js';
import type { LoadedBuffer } from '../src/index.js';
import { C, native } from '../src/engine/binding.js';
import { cli } from './cli/run.js';
import { leakCheck, makeFile, sha256, sysfsMemoryNodes, tempDir } from './helpers.js';
import { socketDir } from './share/util.js';

const MiB = 1024 * 1024;
const NODE_DIR = '/sys/devices/system/node';

const NODES = sysfsMemoryNodes();
const NUMA = NODES !== undefined;
const FIRST = NODES?.[0] ?? 0;
const MISSING = Math.max(...(NODES ?? [0])) + 1;

const { dir, cleanup } = tempDir();
after(cleanup);
const SIZE = 6 * MiB + 4097;
const file = makeFile(dir, 'numa', SIZE);

/** The node of every page of the buffer, from the kernel. */
function nodesOf(b: LoadedBuffer): Set<number> {
  const r = native.numaPageNodes(b.bytes.buffer as ArrayBuffer, 0, b.size);
  assert.ok(typeof r !== 'number', `move_pages: errno ${-(r as number)}`);
  assert.equal(r.length, Math.ceil(SIZE / 4096));
  return new Set(r);
}

describe('numaNode: a node with memory', () => {
  for (const target of ['memory', 'memfd'] as const) {
    test(`${target}: numaNode ${FIRST}: bytes exact, every page on node ${FIRST}`, async () => {
      const leaks = leakCheck();
      const b = await load(file.path, { target, numaNode: FIRST });
      try {
        assert.equal(sha256(b.bytes), file.sha256);
        if (NUMA) {
          assert.deepEqual(nodesOf(b), new Set([FIRST]));
          assert.deepEqual(b.stats.numa?.nodes, [FIRST]);
          assert.match(b.stats.numa.reason, /MPOL_BIND/);
        } else {
          // A kernel without NUMA: nothing to bind, and the stats say so.
          assert.deepEqual(b.stats.numa?.nodes, []);
          assert.match(b.stats.numa.reason, /no NUMA/);
        }
        assert.equal(b.stats.numa?.node, FIRST);
      } finally {
        b.close();
      }
      assert.equal(await leaks(), undefined);
    });

    test(`${target}: 'interleave': bytes exact, pages only on nodes with memory`, async () => {
      const b = await load(file.path, { target, numaNode: 'interleave' });
      try {
        assert.equal(sha256(b.bytes), file.sha256);
        if (NUMA) for (const n of nodesOf(b)) assert.ok(NODES.includes(n), `page on node ${n}`);
        assert.deepEqual(b.stats.numa?.nodes, NODES ?? []);
      } finally {
        b.close();
      }
    });
  }

  test('allocate() takes numaNode too', async () => {
    const b = await allocate(SIZE, { target: 'memfd', numaNode: FIRST });
    try {
      if (NUMA) assert.deepEqual(nodesOf(b), new Set([FIRST]));
      assert.equal(b.stats.numa?.node, FIRST);
    } finally {
      b.close();
    }
  });

  test('a pool reuses only memory placed as asked, and the reload keeps saying where it is', async () => {
    const leaks = leakCheck();
    const pool = createPool();
    try {
      const a = await pool.load(file.path, { target: 'memfd', numaNode: FIRST });
      pool.release(a);
      const b = await pool.load(file.path, { target: 'memfd', numaNode: FIRST });
      assert.equal(b.stats.memory, 'reused');
      assert.equal(b.stats.numa?.node, FIRST);
      assert.equal(sha256(b.bytes), file.sha256);
      if (NUMA) assert.deepEqual(nodesOf(b), new Set([FIRST]));
      pool.release(b);
      const c = await pool.load(file.path, { target: 'memfd', numaNode: 'interleave' });
      assert.equal(c.stats.memory, 'fresh', 'memory bound to one node is not interleaved memory');
      c.close();
    } finally {
      pool.close();
    }
    assert.equal(await leaks(), undefined);
  });

  test('DMALOAD_NUMA_NODE is the default; the option wins over it', async (t) => {
    t.after(() => delete process.env.DMALOAD_NUMA_NODE);
    process.env.DMALOAD_NUMA_NODE = String(FIRST);
    const b = await load(file.path, { target: 'memfd' });
    try {
      assert.equal(sha256(b.bytes), file.sha256);
      assert.match(b.stats.numa!.reason, new RegExp(`^DMALOAD_NUMA_NODE=${FIRST}:`));
    } finally {
      b.close();
    }
    process.env.DMALOAD_NUMA_NODE = String(MISSING);
    await assert.rejects(load(file.path), { code: 'ERR_OUT_OF_RANGE', message: /DMALOAD_NUMA_NODE/ });
    const c = await load(file.path, { numaNode: FIRST });
    c.close();
    process.env.DMALOAD_NUMA_NODE = 'x';
    await assert.rejects(load(file.path), { code: 'ERR_INVALID_ARG_VALUE', message: /DMALOAD_NUMA_NODE/ });
  });

  test('probe().numa lists the nodes sysfs has, with their memory', async () => {
    const p = await probe();
    assert.equal(p.numa.available, NUMA);
    assert.deepEqual(
      p.numa.nodes.map((n) => n.node),
      NODES ?? [],
    );
    for (const n of p.numa.nodes) {
      const total = Number(/MemTotal:\s+(\d+) kB/.exec(readFileSync(`${NODE_DIR}/node${n.node}/meminfo`, 'utf8'))![1]) * 1024;
      assert.equal(n.totalBytes, total);
      assert.ok(n.freeBytes > 0 && n.freeBytes <= n.totalBytes);
    }
  });

  test('CLI: load --numa-node, probe lists the nodes', async () => {
    const r = await cli('load', file.path, '--numa-node', String(FIRST), '--hash', 'sha256', '--json');
    assert.equal(r.code, 0, r.err);
    const out = JSON.parse(r.out) as { sha256: string; numa: { node: number } };
    assert.equal(out.sha256, file.sha256);
    assert.equal(out.numa.node, FIRST);
    const bad = await cli('load', file.path, '--numa-node', 'near');
    assert.equal(bad.code, 2);
    assert.match(bad.err, /--numa-node/);
    const p = await cli('probe');
    assert.match(p.out, /NUMA nodes/);
  });
});

describe('numaNode: refused', () => {
  test(`a node that is not there (${MISSING}) is ERR_OUT_OF_RANGE naming the nodes there are, nothing allocated`, async () => {
    const leaks = leakCheck();
    for (const target of ['memory', 'memfd'] as const) {
      await assert.rejects(load(file.path, { target, numaNode: MISSING }), {
        code: 'ERR_OUT_OF_RANGE',
        message: NUMA ? new RegExp(`numaNode.*node${NODES.length === 1 ? '' : 's'} ${NODES.join(', ')}`) : /no NUMA/,
      });
    }
    await assert.rejects(allocate(4096, { numaNode: MISSING }), { code: 'ERR_OUT_OF_RANGE' });
    assert.equal(await leaks(), undefined);
  });

  test('values that are no node number: ERR_INVALID_ARG_VALUE; not a number or string: ERR_INVALID_ARG_TYPE', async () => {
    for (const v of [-1, 1.5, 'x', '0', NaN, 1024]) {
      await assert.rejects(load(file.path, { numaNode: v as never }), { code: 'ERR_INVALID_ARG_VALUE', message: /numaNode.*'interleave'/ }, String(v));
    }
    for (const v of [null, true, {}]) await assert.rejects(load(file.path, { numaNode: v as never }), { code: 'ERR_INVALID_ARG_TYPE' });
  });

  test('dma-heap (the heap allocates) and into (the buffer keeps its memory) are ERR_INVALID_ARG_VALUE', async () => {
    await assert.rejects(load(file.path, { target: 'dma-heap', numaNode: FIRST }), { code: 'ERR_INVALID_ARG_VALUE', message: /DMA heap/ });
    const b = await allocate(SIZE + 4096);
    try {
      await assert.rejects(load(file.path, { into: b, numaNode: FIRST }), { code: 'ERR_INVALID_ARG_VALUE', message: /into/ });
      assert.equal(b.closed, false);
    } finally {
      b.close();
    }
  });

  test('the addon checks its own arguments', async () => {
    const r = native.mmap(4096, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS, -1, 0, 0);
    assert.ok(typeof r !== 'number');
    try {
      assert.throws(() => native.mbind(r, 0, 8192, C.MPOL_BIND, [0], 0), { code: 'ERR_OUT_OF_RANGE' });
      assert.throws(() => native.mbind(r, 0, 4096, 7, [0], 0), { code: 'ERR_OUT_OF_RANGE' });
      assert.throws(() => native.mbind(r, 0, 4096, C.MPOL_BIND, [], 0), { code: 'ERR_OUT_OF_RANGE' });
      assert.throws(() => native.mbind(r, 0, 4096, C.MPOL_BIND, [-1], 0), { code: 'ERR_OUT_OF_RANGE' });
      assert.throws(() => native.mbind(r, 0, 4096, C.MPOL_BIND, 0 as never, 0), { code: 'ERR_INVALID_ARG_TYPE' });
      assert.throws(() => native.mbind(r, 0, 4096, C.MPOL_BIND, [0], 1 << 8), { code: 'ERR_OUT_OF_RANGE' });
      assert.throws(() => native.numaPageNodes(r, 0, 8192), { code: 'ERR_OUT_OF_RANGE' });
      if (NUMA) {
        // Not faulted in yet: -ENOENT for the page; then node FIRST once touched under MPOL_BIND.
        assert.equal(native.mbind(r, 0, 4096, C.MPOL_BIND, [FIRST], 0), 0);
        assert.deepEqual([...(native.numaPageNodes(r, 0, 4096) as Int32Array)], [-C.ENOENT]);
        new Uint8Array(native.view(r, 0, 4096)).fill(1);
        assert.deepEqual([...(native.numaPageNodes(r, 0, 4096) as Int32Array)], [FIRST]);
        // A node without memory (past the last one) is the kernel's EINVAL.
        assert.equal(native.mbind(r, 0, 4096, C.MPOL_BIND, [MISSING], 0), -C.EINVAL);
      }
    } finally {
      native.munmap(r);
    }
  });
});

describe('numaNode: serve', () => {
  test(`serve({ numaNode: ${FIRST} }): a served buffer's pages are on node ${FIRST}; a node the machine lacks is refused at start`, async () => {
    const sockets = socketDir();
    const leaks = leakCheck();
    try {
      await assert.rejects(serve({ socket: `${sockets.dir}/bad.sock`, numaNode: MISSING }), { code: 'ERR_OUT_OF_RANGE' });
      const server = await serve({ socket: `${sockets.dir}/ok.sock`, numaNode: FIRST });
      const c = await connect(server.socket);
      try {
        const b = await c.load(file.path);
        try {
          assert.equal(sha256(b.bytes), file.sha256);
          // The client's read-only mapping of the server's memfd: the same pages, wherever they are.
          if (NUMA) assert.deepEqual(nodesOf(b), new Set([FIRST]));
        } finally {
          b.close();
        }
      } finally {
        c.close();
        await server.close();
      }
      const r = await cli('serve', '--socket', `${sockets.dir}/cli.sock`, '--numa-node', 'x');
      assert.equal(r.code, 2);
    } finally {
      sockets.cleanup();
    }
    assert.equal(await leaks(), undefined);
  });
});

describe('numaNode: bench', () => {
  test(`dmaload bench --numa-node ${FIRST}: the rows run with it (their children inherit it), and the variable is put back; a missing node is refused`, async () => {
    const before = process.env.DMALOAD_NUMA_NODE;
    const r = await cli(
      'bench',
      file.path,
      '--numa-node',
      String(FIRST),
      '--rounds',
      '1',
      '--targets',
      'memory',
      '--methods',
      'dmaload',
      '--io',
      'direct',
      '--json',
    );
    assert.equal(r.code, 0, r.err);
    const rep = JSON.parse(r.out) as { rows: Array<{ supported: boolean; verified: boolean | null }> };
    assert.ok(rep.rows.length > 0 && rep.rows.every((row) => row.supported && row.verified === true), r.out);
    assert.equal(process.env.DMALOAD_NUMA_NODE, before);
    const bad = await cli('bench', file.path, '--numa-node', String(MISSING), '--rounds', '1');
    assert.equal(bad.code, 2, 'a usage error (issue #28 item 4)');
    assert.match(bad.err, /ERR_OUT_OF_RANGE: --numa-node /);
  });
});
