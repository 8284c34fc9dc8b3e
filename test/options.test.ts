/**
 * One option policy, for every public call: each is run against the same kinds of bad input — an options value that
 * is not an object, a misspelt key, an option of the wrong type, a number out of range — and must reject with the
 * same error class and code (Node's argument codes) naming the option, before anything is opened or allocated. The
 * expected codes are written here, from the documented policy (docs/api.md), not taken from the code under test.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import {
  allocate,
  connect,
  copy,
  createPool,
  createWriter,
  load,
  loadModel,
  loadRanges,
  probe,
  readInto,
  save,
  serve,
  verifyFile,
  writeFrom,
} from '../src/index.js';
import { writeSafetensors } from './formats/model-files.js';
import { leakCheck, makeFile, tempDir } from './helpers.js';
import { socketDir } from './share/util.js';

const { dir, cleanup } = tempDir('dmaload-options-');
const sockets = socketDir();
after(() => {
  cleanup();
  sockets.cleanup();
});

const f = makeFile(dir, 'src', 10_000);
const model = join(dir, 'model.safetensors');
writeSafetensors(model, [{ name: 'w', dtype: 'F32', shape: [4], data: new Uint8Array(16) }]);
const out = () => join(dir, `out-${Math.random().toString(36).slice(2)}`);

type Call = (options: unknown) => Promise<unknown>;
interface Case {
  /** The misspelt key and the name the error must suggest. */
  typo: [string, string];
  /** An option of the wrong type. */
  wrongType: Record<string, unknown>;
  /** A number out of range. */
  outOfRange?: Record<string, unknown>;
}

const TYPE = { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' };
const VALUE = { name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' };
const RANGE = { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' };

describe('one option policy, every call', async () => {
  const buf = await allocate(10_000);
  const server = await serve({ socket: join(sockets.dir, 'opts.sock') });
  const client = await connect(server.socket);
  // One round trip: the server has accepted the connection (its socket fd) before any test counts fds.
  await client.status();
  const pool = createPool();
  after(async () => {
    buf.close();
    client.close();
    pool.close();
    await server.close();
  });

  const calls: Array<[string, Call, Case]> = [
    ['load', (o) => load(f.path, o as never), { typo: ['tagret', 'target'], wrongType: { signal: 'stop' }, outOfRange: { memoryBudget: -1 } }],
    [
      'loadRanges',
      (o) => loadRanges(f.path, [{ offset: 0, length: 10 }], o as never),
      { typo: ['chunksize', 'chunkSize'], wrongType: { onProgress: 1 }, outOfRange: { queueDepth: 0 } },
    ],
    ['loadModel', (o) => loadModel(model, o as never), { typo: ['tensor', 'tensors'], wrongType: { signal: {} }, outOfRange: { memoryBudget: -1 } }],
    ['allocate', (o) => allocate(4096, o as never), { typo: ['partsize', 'partSize'], wrongType: { hugePages: 'yes' }, outOfRange: { partSize: 4095 } }],
    ['readInto', (o) => readInto(buf, f.path, o as never), { typo: ['lenght', 'length'], wrongType: { fsync: 'no' }, outOfRange: { length: 0 } }],
    ['writeFrom', (o) => writeFrom(buf, out(), o as never), { typo: ['fileOfset', 'fileOffset'], wrongType: { io: 5 }, outOfRange: { fileOffset: -1 } }],
    ['save', (o) => save(buf, out(), o as never), { typo: ['atomc', 'atomic'], wrongType: { mode: '644' }, outOfRange: { mode: 0o10000 } }],
    ['createWriter', (o) => createWriter(out(), o as never), { typo: ['fsnyc', 'fsync'], wrongType: { chunkSize: '4MiB' }, outOfRange: { chunkSize: 4097 } }],
    ['copy', (o) => copy(f.path, out(), o as never), { typo: ['verfy', 'verify'], wrongType: { verify: 'yes' }, outOfRange: { parts: 1 } }],
    ['verifyFile', (o) => verifyFile(f.path, o as never), { typo: ['sha265', 'sha256'], wrongType: { sha256: 5 }, outOfRange: { queueDepth: 1000 } }],
    ['probe', (o) => probe(undefined, o as never), { typo: ['firsttouch', 'firstTouch'], wrongType: { firstTouch: 1 } }],
    [
      'createPool',
      async (o) => createPool(o as never),
      { typo: ['maxIdle', 'maxIdleBytes'], wrongType: { maxIdleBytes: '1GiB' }, outOfRange: { maxIdleBytes: -1 } },
    ],
    ['pool.load', (o) => pool.load(f.path, o as never), { typo: ['hugepages', 'hugePages'], wrongType: { overlap: 'on' }, outOfRange: { memoryBudget: -1 } }],
    [
      'serve',
      (o) => serve({ socket: join(sockets.dir, `s-${Math.random().toString(36).slice(2)}.sock`), ...(o as object) }),
      { typo: ['budgte', 'budget'], wrongType: { idleTimeout: '10s' }, outOfRange: { maxConnections: 0 } },
    ],
    ['connect', (o) => connect(server.socket, o as never), { typo: ['timout', 'timeout'], wrongType: { timeout: '5' }, outOfRange: { timeout: -1 } }],
    ['client.load', (o) => client.load(f.path, o as never), { typo: ['sigal', 'signal'], wrongType: { signal: true } }],
    [
      'client.loadModel',
      (o) => client.loadModel(model, o as never),
      { typo: ['worldsize', 'worldSize'], wrongType: { split: 5 }, outOfRange: { rank: -1, worldSize: 2 } },
    ],
  ];

  for (const [name, call, c] of calls) {
    test(`${name}: not an object, a misspelt key, a wrong type, out of range: coded errors naming the option; nothing leaked`, async () => {
      const leaks = leakCheck();
      // Not an options object. (serve() takes its socket in the options object: null is what it refuses there.)
      if (name !== 'serve') await assert.rejects(call(5), { ...TYPE, message: /"options"/ }, `${name}(5)`);
      const [typo, meant] = c.typo;
      await assert.rejects(call({ [typo]: 1 }), (e: Error & { code?: string }) => {
        assert.equal(e.name, VALUE.name, `${name}: ${e.message}`);
        assert.equal(e.code, VALUE.code, `${name}: ${e.message}`);
        assert.match(e.message, new RegExp(`"${typo}".*is not an option of .*did you mean '${meant}'`), name);
        return true;
      });
      const [wrongKey] = Object.keys(c.wrongType);
      await assert.rejects(call(c.wrongType), (e: Error & { code?: string }) => {
        assert.ok(e.code === TYPE.code || e.code === VALUE.code, `${name} ${JSON.stringify(c.wrongType)}: ${e.code} ${e.message}`);
        assert.equal(e.name, 'TypeError', `${name}: ${e.message}`);
        assert.match(e.message, new RegExp(wrongKey!), name);
        return true;
      });
      if (c.outOfRange) {
        const key = Object.keys(c.outOfRange)[0]!;
        await assert.rejects(call(c.outOfRange), (e: Error & { code?: string }) => {
          assert.deepEqual([e.name, e.code], [RANGE.name, RANGE.code], `${name} ${JSON.stringify(c.outOfRange)}: ${e.message}`);
          assert.match(e.message, new RegExp(key), name);
          return true;
        });
      }
      assert.equal(await leaks(), undefined);
    });
  }

  test('serve: each of its limits and page options, wrong type and out of range', async () => {
    const socket = () => join(sockets.dir, `l-${Math.random().toString(36).slice(2)}.sock`);
    const leaks = leakCheck();
    const cases: Array<[Record<string, unknown>, { name: string; code: string }]> = [
      [{ perUserBudget: '1GiB' }, TYPE],
      [{ perUserBudget: -1 }, RANGE],
      [{ maxConnections: 1.5 }, RANGE],
      [{ perUserConnections: 0 }, RANGE],
      [{ perUserConnections: 'many' }, TYPE],
      [{ idleTimeout: 0 }, RANGE],
      [{ replyTimeout: 2 ** 31 }, RANGE],
      [{ hugePages: 'hugetlbs' }, TYPE],
      [{ numaNode: -1 }, VALUE],
      [{ target: 'memory' }, VALUE],
      [{ io: 'fast' }, VALUE],
      [{ preload: 'model.bin' }, TYPE],
      [{ budget: -5 }, RANGE],
    ];
    for (const [o, want] of cases) {
      const key = Object.keys(o)[0]!;
      await assert.rejects(serve({ socket: socket(), ...o }), (e: Error & { code?: string }) => {
        assert.deepEqual([e.name, e.code], [want.name, want.code], `${JSON.stringify(o)}: ${e.message}`);
        assert.match(e.message, new RegExp(key), JSON.stringify(o));
        return true;
      });
    }
    assert.equal(await leaks(), undefined);
  });

  test('environment variables: a value that is not one of the allowed ones is an error naming them', async () => {
    const cases: Array<[string, string, RegExp]> = [
      ['DMALOAD_HUGE_PAGES', 'yes', /hugetlb-or-small/],
      ['DMALOAD_ENGINE', 'bogus', /'threads' or 'uring'/],
      ['DMALOAD_NUMA_NODE', 'x', /interleave/],
      ['DMALOAD_CHUNK_SIZE', '3', /DMALOAD_CHUNK_SIZE/],
    ];
    for (const [name, value, says] of cases) {
      process.env[name] = value;
      try {
        await assert.rejects(load(f.path), (e: Error & { code?: string }) => {
          assert.ok(['ERR_INVALID_ARG_VALUE', 'ERR_INVALID_ARG_TYPE', 'ERR_OUT_OF_RANGE'].includes(e.code ?? ''), `${name}=${value}: ${e.code}`);
          assert.match(e.message, new RegExp(name), `${name}: ${e.message}`);
          assert.match(e.message, says, `${name}: ${e.message}`);
          return true;
        });
      } finally {
        delete process.env[name];
      }
    }
  });
});
