/**
 * serve() and connect(): one sealed buffer per file, mapped read-only by every client. Bytes are checked by SHA-256
 * against the generator's hash of the file; sharing by the kernel's view (the same memfd inode in two processes, the
 * seals F_GET_SEALS reports, writes refused with EPERM), the cache by the server's counters, leaks by /proc/self/fd,
 * /proc/self/maps and native.live().
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  fstatSync,
  openSync,
  readFileSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { spawn, spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { C, native } from '../../src/engine/binding.js';
import { connect, load, loadModel, readInto, save, serve } from '../../src/index.js';
import type { ShareServer } from '../../src/index.js';
import { bufferSha256 as hashOf, evictFile, fileSha256, leakCheck, makeFile, mappings, repoRoot, seededBytes, sha256, tempDir } from '../helpers.js';
import { child, connectRaw, frame, recvRaw, socketDir } from './util.js';
import type { RawReply } from './util.js';
import { MessageType } from '../../src/share/protocol.js';
import { pythonMissing, runPython } from './python.js';
import { cli } from '../cli/run.js';
import { writeSafetensors as writeSpecs } from '../formats/model-files.js';
import { existsSync } from 'node:fs';

const MiB = 1024 * 1024;
const { dir, cleanup } = tempDir('dmaload-serve-');
after(cleanup);
const sockets = socketDir();
after(sockets.cleanup);
let sockN = 0;
const sock = () => join(sockets.dir, `s${sockN++}.sock`);

describe('serve/connect: byte-exact, shared, sealed', () => {
  const sizes = [0, 1, 4097, 8 * MiB + 13];
  const files = new Map<number, { path: string; sha256: string }>();
  before(() => sizes.forEach((s) => files.set(s, makeFile(dir, `f-${s}`, s))));

  test('files of any size come back byte-exact, mapped read-only from one sealed memfd; the second load is a cache hit', async () => {
    const leaks = leakCheck();
    const server = await serve({ socket: sock() });
    const c = await connect(server.socket);
    try {
      for (const size of sizes) {
        const f = files.get(size)!;
        const b1 = await c.load(f.path);
        const b2 = await c.load(f.path);
        try {
          for (const b of [b1, b2]) {
            assert.equal(b.size, size);
            assert.equal(b.target, 'memfd');
            assert.equal(b.readOnly, true);
            assert.equal(hashOf(b), f.sha256);
            assert.equal(fstatSync(b.fd).size, size);
            const seals = native.seals(b.fd, 0);
            const want = C.F_SEAL_SHRINK | C.F_SEAL_GROW | C.F_SEAL_WRITE;
            assert.equal(seals & want, want, `seals ${seals}`);
          }
          // One buffer on the server: both fds are the same memfd.
          assert.equal(fstatSync(b1.fd).ino, fstatSync(b2.fd).ino);
          assert.deepEqual([b1.stats.served?.cached, b2.stats.served?.cached], [false, true]);
          assert.deepEqual([b1.stats.bytesRead, b2.stats.bytesRead], [size, 0]);
          assert.equal(b1.stats.served?.socket, server.socket);
          // Each reply is the client's own read-only file description; opened for writing, the seal refuses writes.
          assert.throws(() => writeSync(b1.fd, Uint8Array.of(1), 0, 1, 0), { code: 'EBADF' });
          const rw = openSync(`/proc/self/fd/${b1.fd}`, 'r+');
          try {
            assert.throws(() => writeSync(rw, Uint8Array.of(1), 0, 1, 0), { code: 'EPERM' });
            assert.equal(native.mmap(4096, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, rw, 0, 0), -1, 'F_SEAL_WRITE: EPERM');
          } finally {
            closeSync(rw);
          }
          assert.equal(native.mmap(4096, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, b1.fd, 0, 0), -13, 'a read-only description: EACCES');
          // A stray write into a client's bytes neither kills the process nor reaches anyone else: the memfd is
          // mapped copy-on-write, so the write lands in a private page and the served bytes stay the file's.
          if (size > 0) {
            const first = b1.bytes[0]!;
            b1.bytes[0] = first ^ 0xff;
            assert.equal(b1.bytes[0], first ^ 0xff);
            assert.equal(hashOf(b2), f.sha256);
            const again = await c.load(f.path);
            assert.equal(hashOf(again), f.sha256);
            again.close();
          }
        } finally {
          b1.close();
          b2.close();
        }
      }
      const st = server.status();
      const written = sizes.filter((n) => n > 0).length; // each reloaded once after the stray write
      assert.deepEqual([st.loads, st.misses, st.hits, st.entries, st.errors], [sizes.length, sizes.length, sizes.length + written, sizes.length, 0]);
    } finally {
      c.close();
      await server.close();
    }
    assert.equal(await leaks(), undefined);
  });

  test('the server keeps fds, not mappings: the only memfd mappings are the clients’, and they outlive eviction', async () => {
    const leaks = leakCheck();
    const f = files.get(8 * MiB + 13)!;
    const server = await serve({ socket: sock() });
    const c = await connect(server.socket);
    try {
      const m0 = mappings().memfds;
      const b = await c.load(f.path);
      assert.equal(mappings().memfds, m0 + 1, 'one mapping: the client’s');
      b.close();
      assert.equal(mappings().memfds, m0, 'the cached buffer is not mapped by the server');
      assert.equal(server.status().entries, 1);
    } finally {
      c.close();
      await server.close();
    }
    assert.equal(await leaks(), undefined);
  });

  test('a served buffer refuses readInto and load({ into }) (ERR_BUFFER_READ_ONLY) and can be saved', async () => {
    const f = files.get(4097)!;
    const aligned = makeFile(dir, 'aligned-64k', 64 * 1024);
    const server = await serve({ socket: sock() });
    const c = await connect(server.socket);
    try {
      const b = await c.load(f.path);
      await assert.rejects(readInto(b, f.path), { code: 'ERR_BUFFER_READ_ONLY', path: f.path });
      // A file that fits exactly, read cold: without the check the bytes would be copied into the read-only mapping.
      const a = await c.load(aligned.path);
      evictFile(aligned.path);
      await assert.rejects(load(aligned.path, { into: a }), { code: 'ERR_BUFFER_READ_ONLY', path: aligned.path });
      assert.equal(hashOf(a), aligned.sha256);
      a.close();
      const out = join(dir, 'saved-4097');
      await save(b, out);
      assert.equal(fileSha256(out), f.sha256);
      b.close();
    } finally {
      c.close();
      await server.close();
    }
  });

  test('another process maps the same memfd and reads the same bytes', async () => {
    const f = files.get(8 * MiB + 13)!;
    const server = await serve({ socket: sock() });
    const c = await connect(server.socket);
    try {
      const mine = await c.load(f.path);
      const r = await child(['load', server.socket, f.path]);
      assert.equal(r.code, 0, r.err);
      const got = JSON.parse(r.out) as { sha256: string; cached: boolean; ino: number; seals: number };
      assert.equal(got.sha256, f.sha256);
      assert.equal(got.cached, true);
      assert.equal(got.ino, fstatSync(mine.fd).ino);
      mine.close();
    } finally {
      c.close();
      await server.close();
    }
  });
});

describe('serve: the cache', () => {
  test('a changed file (new mtime) is loaded afresh; a buffer of the old one keeps its bytes', async () => {
    const leaks = leakCheck();
    const path = join(dir, 'changing');
    const v1 = seededBytes(3 * MiB + 5, 1);
    const v2 = seededBytes(3 * MiB + 5, 2);
    writeFileSync(path, v1);
    const server = await serve({ socket: sock() });
    const c = await connect(server.socket);
    try {
      const old = await c.load(path);
      writeFileSync(path, v2);
      const later = new Date(Date.now() + 5000);
      utimesSync(path, later, later);
      const fresh = await c.load(path);
      assert.equal(fresh.stats.served?.cached, false);
      assert.equal(hashOf(fresh), sha256(v2));
      assert.equal(hashOf(old), sha256(v1));
      assert.equal(server.status().loads, 2);
      old.close();
      fresh.close();
    } finally {
      c.close();
      await server.close();
    }
    assert.equal(await leaks(), undefined);
  });

  test('LRU under the budget: the oldest file nobody holds is dropped, a held one stays shared; too big is ERR_MEMORY_BUDGET', async () => {
    const leaks = leakCheck();
    const [a, b, d] = ['lru-a', 'lru-b', 'lru-c'].map((n, i) => makeFile(dir, n, 4 * MiB, 100 + i));
    const big = makeFile(dir, 'lru-big', 11 * MiB);
    const server = await serve({ socket: sock(), budget: 10 * MiB });
    const c = await connect(server.socket);
    try {
      const held = await c.load(a!.path);
      (await c.load(b!.path)).close();
      (await c.load(d!.path)).close(); // 12 MiB > 10: b goes (dropping a, which a client holds, would free nothing)
      let st = server.status();
      assert.deepEqual([st.entries, st.evictions], [2, 1]);
      assert.ok(st.used <= 10 * MiB);
      assert.equal(hashOf(held), a!.sha256);
      const again = await c.load(a!.path);
      assert.equal(again.stats.served?.cached, true, 'the held file is still the one shared copy');
      assert.equal(fstatSync(again.fd).ino, fstatSync(held.fd).ino);
      assert.equal(hashOf(again), a!.sha256);
      again.close();
      held.close();
      await assert.rejects(c.load(big.path), (e: Error & { code?: string; path?: string }) => {
        assert.equal(e.code, 'ERR_MEMORY_BUDGET');
        assert.equal(e.path, big.path);
        assert.match(e.message, /budget/);
        return true;
      });
      st = server.status();
      assert.ok(st.used <= 10 * MiB);
    } finally {
      c.close();
      await server.close();
    }
    assert.equal(await leaks(), undefined);
  });

  test('concurrent requests for one file, from several clients, read it once', async () => {
    const f = makeFile(dir, 'concurrent', 16 * MiB + 1);
    const server = await serve({ socket: sock() });
    const clients = await Promise.all([connect(server.socket), connect(server.socket)]);
    try {
      const bufs = await Promise.all(Array.from({ length: 8 }, (_, i) => clients[i % 2]!.load(f.path)));
      for (const b of bufs) assert.equal(hashOf(b), f.sha256);
      assert.equal(server.status().loads, 1);
      assert.equal(
        bufs.reduce((n, b) => n + b.stats.bytesRead, 0),
        16 * MiB + 1,
      );
      bufs.forEach((b) => b.close());
    } finally {
      clients.forEach((c) => c.close());
      await server.close();
    }
  });

  test('preload: files are cached before serve() resolves', async () => {
    const f = makeFile(dir, 'preloaded', MiB + 3);
    const server = await serve({ socket: sock(), preload: [f.path] });
    const c = await connect(server.socket);
    try {
      const b = await c.load(f.path);
      assert.equal(b.stats.served?.cached, true);
      assert.equal(hashOf(b), f.sha256);
      b.close();
    } finally {
      c.close();
      await server.close();
    }
    await assert.rejects(serve({ socket: sock(), preload: [join(dir, 'missing')] }), { code: 'ENOENT' });
  });
});

describe('serve/connect: errors', () => {
  test('closed client, server gone, no server: coded errors; nothing leaks', async () => {
    const leaks = leakCheck();
    const f = makeFile(dir, 'errs', 64 * MiB);
    const server = await serve({ socket: sock() });
    const c1 = await connect(server.socket);
    const c2 = await connect(server.socket);
    c1.close();
    c1.close(); // idempotent
    assert.equal(c1.closed, true);
    await assert.rejects(c1.load(f.path), { code: 'ERR_SHARE_CLOSED', path: f.path });
    await assert.rejects(c1.status(), { code: 'ERR_SHARE_CLOSED' });
    const pending = assert.rejects(c2.load(f.path), { code: 'ERR_SHARE_SERVER_GONE' });
    // Closing while the server reads: the load is aborted, the client told, nothing kept.
    while (server.status().misses === 0) await new Promise((r) => setImmediate(r));
    await server.close();
    await pending;
    await assert.rejects(c2.load(f.path), { code: 'ERR_SHARE_SERVER_GONE' });
    assert.equal(c2.closed, true);
    c2.close();
    await assert.rejects(connect(server.socket), { code: 'ENOENT', syscall: 'connect' });
    // A socket file nobody listens on.
    const stale = sock();
    closeSync(native.unixListen(stale, 0o600, 1));
    await assert.rejects(connect(stale), { code: 'ECONNREFUSED', syscall: 'connect' });
    assert.equal(await leaks(), undefined);
  });

  test('the client opens files itself: missing, a folder, a FIFO are refused before anything is sent', async () => {
    const server = await serve({ socket: sock() });
    const c = await connect(server.socket);
    try {
      const fifo = join(dir, 'fifo');
      execFileSync('mkfifo', [fifo]);
      await assert.rejects(c.load(join(dir, 'nope')), { code: 'ENOENT' });
      await assert.rejects(c.load(dir), { code: 'EISDIR' });
      await assert.rejects(c.load(fifo), { code: 'ERR_NOT_REGULAR_FILE' });
      await assert.rejects(c.load(''), { code: 'ERR_INVALID_ARG_TYPE' });
      assert.equal(server.status().misses, 0);
    } finally {
      c.close();
      await server.close();
    }
  });

  test('an aborted request rejects at once; its late reply is dropped with its fds', async () => {
    const leaks = leakCheck();
    const f = makeFile(dir, 'abort', 32 * MiB);
    const server = await serve({ socket: sock() });
    const c = await connect(server.socket);
    try {
      const ac = new AbortController();
      ac.abort();
      await assert.rejects(c.load(f.path, { signal: ac.signal }), { name: 'AbortError' });
      const ac2 = new AbortController();
      const p = c.load(f.path, { signal: ac2.signal });
      setImmediate(() => ac2.abort());
      await assert.rejects(p, { name: 'AbortError' });
      // The load finishes on the server; the next request is answered normally (and is a hit).
      const b = await c.load(f.path);
      assert.equal(hashOf(b), f.sha256);
      b.close();
    } finally {
      c.close();
      await server.close();
    }
    assert.equal(await leaks(), undefined);
  });

  test('the socket: 0600 by default, mode honoured, a live server is not replaced, a stale socket is', async () => {
    const path = sock();
    const old = process.umask(0o022);
    let s1: ShareServer | undefined;
    try {
      s1 = await serve({ socket: path });
      assert.equal(statSync(path).mode & 0o7777, 0o600);
      await assert.rejects(serve({ socket: path }), (e: Error & { code?: string }) => e.code === 'EADDRINUSE' && /already listening/.test(e.message));
      await s1.close();
      s1 = undefined;
      const s2 = await serve({ socket: path, mode: 0o660 });
      assert.equal(statSync(path).mode & 0o7777, 0o660);
      await s2.close();
      // Left behind by a server that died: replaced.
      closeSync(native.unixListen(path, 0o600, 1));
      const s3 = await serve({ socket: path });
      await s3.close();
      // A live server whose socket the probe may not connect to (mode 0: EACCES for anyone but root) is not stale:
      // only ECONNREFUSED says nobody listens. It keeps its socket, and the second serve() is refused.
      const live = await serve({ socket: path, mode: 0 });
      try {
        const ino = statSync(path).ino;
        // (a server started by mistake is closed, or it would keep this process alive)
        await assert.rejects(
          serve({ socket: path }).then(async (s) => (await s.close(), s)),
          (e: Error & { code?: string }) => e.code === 'EADDRINUSE',
          'refused',
        );
        assert.equal(statSync(path).ino, ino, 'the live server keeps its socket');
      } finally {
        await live.close();
      }
      writeFileSync(path, 'not a socket');
      await assert.rejects(serve({ socket: path }), (e: Error & { code?: string }) => e.code === 'EADDRINUSE' && /not a socket/.test(e.message));
    } finally {
      process.umask(old);
      await s1?.close();
    }
    await assert.rejects(serve({ socket: '' }), { code: 'ERR_INVALID_ARG_TYPE' });
    await assert.rejects(serve({ socket: sock(), target: 'memory' as never }), { code: 'ERR_INVALID_ARG_VALUE' });
    await assert.rejects(serve({ socket: sock(), budget: -1 }), { code: 'ERR_OUT_OF_RANGE', message: /"budget"/ });
    await assert.rejects(serve({ socket: sock(), budget: '1GiB' as never }), { code: 'ERR_INVALID_ARG_TYPE' });
    await assert.rejects(serve({ socket: sock(), signal: 'stop' as never }), { code: 'ERR_INVALID_ARG_TYPE', message: /signal/ });
    // Aborted before it starts: no socket is created.
    const early = sock();
    await assert.rejects(serve({ socket: early, signal: AbortSignal.abort() }), { name: 'AbortError' });
    assert.equal(existsSync(early), false);
    await assert.rejects(serve({ socket: sock(), mode: 0o10000 }), { code: 'ERR_OUT_OF_RANGE' });
  });
});

describe('serve: loadModel through the server', () => {
  /** A safetensors file written by hand (the model tests' writer), its tensors in the object's order. */
  function writeSafetensors(path: string, tensors: Record<string, { dtype: string; shape: number[]; data: Uint8Array }>): void {
    writeSpecs(
      path,
      Object.entries(tensors).map(([name, t]) => ({ name, ...t })),
    );
  }

  test('tensors are the same bytes as a local loadModel; a selection loads only the shards it needs', async () => {
    const leaks = leakCheck();
    const mdir = join(dir, 'model');
    mkdirSync(mdir);
    const t = {
      'a.weight': { dtype: 'F32', shape: [256, 256], data: seededBytes(256 * 256 * 4, 11) },
      'a.bias': { dtype: 'F32', shape: [3], data: seededBytes(12, 12) },
      'b.weight': { dtype: 'F16', shape: [1000], data: seededBytes(2000, 13) },
      'c.weight': { dtype: 'U8', shape: [MiB + 1], data: seededBytes(MiB + 1, 14) },
    };
    writeSafetensors(join(mdir, 'm-1.safetensors'), { 'a.weight': t['a.weight'], 'a.bias': t['a.bias'] });
    writeSafetensors(join(mdir, 'm-2.safetensors'), { 'b.weight': t['b.weight'], 'c.weight': t['c.weight'] });
    const index = join(mdir, 'model.safetensors.index.json');
    writeFileSync(
      index,
      JSON.stringify({
        metadata: {},
        weight_map: { 'a.weight': 'm-1.safetensors', 'a.bias': 'm-1.safetensors', 'b.weight': 'm-2.safetensors', 'c.weight': 'm-2.safetensors' },
      }),
    );
    const server = await serve({ socket: sock() });
    const c = await connect(server.socket);
    try {
      const served = await c.loadModel(index);
      const local = await loadModel(index);
      assert.deepEqual([...served.tensors.keys()], [...local.tensors.keys()]);
      for (const [name, spec] of Object.entries(t)) {
        const st = served.tensors.get(name)!;
        assert.equal(sha256(st.bytes), sha256(spec.data), name);
        assert.equal(sha256(st.bytes), sha256(local.tensors.get(name)!.bytes));
        assert.deepEqual(st.shape, spec.shape);
        assert.equal(st.buffer?.readOnly, true);
      }
      const f32 = served.tensors.get('a.weight')!.asTypedArray() as Float32Array;
      assert.equal(f32.length, 256 * 256);
      assert.equal(served.stats.files, 2);
      local.close();
      served.close();
      assert.throws(() => served.tensors.get('a.weight')!.bytes, { code: 'ERR_BUFFER_CLOSED' });

      const loadsBefore = server.status().misses;
      const some = await c.loadModel(index, { tensors: ['b.weight'] });
      assert.deepEqual([...some.tensors.keys()], ['b.weight']);
      assert.equal(sha256(some.tensors.get('b.weight')!.bytes), sha256(t['b.weight'].data));
      assert.equal(some.stats.files, 1);
      assert.equal(server.status().misses, loadsBefore, 'm-2 was already cached');
      some.close();
      await assert.rejects(c.loadModel(index, { tensors: ['nope'] }), { code: 'ERR_MODEL_TENSOR_NOT_FOUND' });
    } finally {
      c.close();
      await server.close();
    }
    assert.equal(await leaks(), undefined);
  });

  test('ranks: connect().loadModel and a raw PlanRequest give exactly what a local loadModel gives, at world sizes 1-5', async () => {
    const leaks = leakCheck();
    const mdir = join(dir, 'ranked');
    mkdirSync(mdir);
    const w = (n: string, dtype: string, shape: number[], size: number, seed: number) => [n, { dtype, shape, data: seededBytes(size, seed) }] as const;
    writeSafetensors(join(mdir, 'r-1.safetensors'), Object.fromEntries([w('emb', 'BF16', [37, 64], 37 * 128, 1), w('norm', 'F32', [64], 256, 2)]));
    writeSafetensors(
      join(mdir, 'r-2.safetensors'),
      Object.fromEntries([w('proj', 'F16', [130, 8], 130 * 16, 3), w('ids', 'I64', [5], 40, 4), w('odd', 'U8', [3, 3, 3], 27, 5)]),
    );
    const index = join(mdir, 'r.safetensors.index.json');
    writeFileSync(
      index,
      JSON.stringify({
        weight_map: { emb: 'r-1.safetensors', norm: 'r-1.safetensors', proj: 'r-2.safetensors', ids: 'r-2.safetensors', odd: 'r-2.safetensors' },
      }),
    );
    const files = ['r-1.safetensors', 'r-2.safetensors'];
    const server = await serve({ socket: sock() });
    const c = await connect(server.socket);
    const raw = connectRaw(server.socket);
    try {
      for (const split of ['tensors', 'rows'] as const) {
        for (let worldSize = 1; worldSize <= 5; worldSize++) {
          for (let rank = 0; rank < worldSize; rank++) {
            const local = await loadModel(index, { rank, worldSize, split });
            const served = await c.loadModel(index, { rank, worldSize, split });
            const want = [...local.tensors.values()].map((t) => [t.name, t.shape, sha256(t.bytes)]);
            assert.deepEqual(
              [...served.tensors.values()].map((t) => [t.name, t.shape, sha256(t.bytes)]),
              want,
              `${split} ${rank}/${worldSize}`,
            );
            // The plan the server sends other clients: the same tensors, shapes and bytes (read from the files here).
            const fds = files.map((f) => openSync(join(mdir, f), 'r'));
            native.sendMsg(raw, frame(MessageType.PlanRequest, 7, { files, rank, worldSize, split, path: index }), fds);
            fds.forEach((fd) => closeSync(fd));
            const r = (await recvRaw(raw)) as RawReply;
            assert.equal(r.type, MessageType.PlanReply, JSON.stringify(r.body));
            assert.equal(r.fds.length, 1);
            const plan = JSON.parse(readFileSync(`/proc/self/fd/${r.fds[0]}`, 'utf8')) as {
              tensors: Array<{ name: string; shape: number[]; file: number; offset: number; bytes: number }>;
            };
            assert.equal(fstatSync(r.fds[0]!).size, r.body.bytes);
            closeSync(r.fds[0]!);
            const got = plan.tensors.map((t) => [t.name, t.shape, sha256(readFileSync(join(mdir, files[t.file]!)).subarray(t.offset, t.offset + t.bytes))]);
            assert.deepEqual(got, want, `plan ${split} ${rank}/${worldSize}`);
            local.close();
            served.close();
          }
        }
      }
      const fd = openSync(join(mdir, files[0]!), 'r');
      native.sendMsg(raw, frame(MessageType.PlanRequest, 8, { files: [files[0]], rank: 3, worldSize: 2 }), [fd]);
      closeSync(fd);
      const bad = (await recvRaw(raw)) as RawReply;
      assert.deepEqual([bad.type, bad.body.code], [MessageType.Error, 'ERR_OUT_OF_RANGE']);
    } finally {
      closeSync(raw);
      c.close();
      await server.close();
    }
    assert.equal(await leaks(), undefined);
  });
});

describe('serve: a server that may not open the file reads through the client’s fd', () => {
  test('server as another user, file 0600: served byte-exact (buffered, through the fd)', async (t) => {
    if (process.getuid?.() !== 0) return t.skip('needs root to run the server as another user');
    const bin = join(repoRoot, 'bin', 'dmaload.js');
    const probe = spawnSync(process.execPath, ['-e', `require('fs').accessSync(${JSON.stringify(join(repoRoot, 'dist', 'src', 'index.js'))})`], {
      uid: 65534,
      gid: 65534,
    });
    if (probe.status !== 0) return t.skip(`uid 65534 cannot read this checkout (${repoRoot}) or run ${process.execPath}`);
    // The server's user must reach its socket's folder (the temp folder may be private: CI's tmpfs run); the file
    // stays in our private one.
    let sdir: string | undefined;
    for (const base of [tmpdir(), '/tmp']) {
      const d = mkdtempSync(join(base, 'dmaload-serve-nobody-'));
      chmodSync(d, 0o777);
      if (spawnSync(process.execPath, ['-e', `require('fs').accessSync(${JSON.stringify(d)}, 2)`], { uid: 65534, gid: 65534 }).status === 0) {
        sdir = d;
        break;
      }
      rmSync(d, { recursive: true, force: true });
    }
    if (!sdir) return t.skip(`uid 65534 can reach no folder for the socket (tried ${tmpdir()} and /tmp)`);
    const f = makeFile(dir, 'private', 3 * MiB + 7);
    chmodSync(f.path, 0o600);
    const socket = join(sdir, 's.sock');
    const p = spawn(process.execPath, [bin, 'serve', '--socket', socket, '--mode', '0666'], { uid: 65534, gid: 65534, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d: Buffer) => (err += d));
    const closed = new Promise((r) => p.once('close', r));
    try {
      await new Promise<void>((resolve, reject) => {
        p.stderr.on('data', () => /listening/.test(err) && resolve());
        void closed.then(() => reject(new Error(`server exited ${p.exitCode}: ${err}`)));
      });
      // A server run by another user gets no fd unless the client names that user (SO_PEERCRED).
      await assert.rejects(
        connect(socket),
        (e: Error & { code?: string }) => e.code === 'ERR_SHARE_UNTRUSTED_SERVER' && /uid 65534/.test(e.message) && /serverUid/.test(e.message),
      );
      const c = await connect(socket, { serverUid: 65534 });
      const b = await c.load(f.path);
      assert.equal(hashOf(b), f.sha256);
      assert.equal(b.stats.io, 'buffered');
      assert.match(b.stats.ioReason ?? '', /client's fd/);
      b.close();
      c.close();
    } finally {
      p.kill('SIGTERM');
      await closed;
      rmSync(sdir, { recursive: true, force: true });
    }
  });
});

describe('dmaload serve (CLI)', () => {
  test('preloads, serves, logs, stops on SIGTERM and removes its socket', async () => {
    const f = makeFile(dir, 'cli-file', 2 * MiB + 9);
    const socket = sock();
    const p = spawn(process.execPath, [join(repoRoot, 'bin', 'dmaload.js'), 'serve', '--socket', socket, '--budget', '64MiB', '--preload', f.path, '-v'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    p.stderr.on('data', (d: Buffer) => (err += d));
    const exited = new Promise<number | null>((r) => p.once('close', r));
    try {
      await new Promise<void>((resolve, reject) => {
        p.stderr.on('data', () => /listening/.test(err) && resolve());
        void exited.then((code) => reject(new Error(`server exited ${code}: ${err}`)));
      });
      assert.match(err, /1 files preloaded/);
      assert.equal(statSync(socket).mode & 0o777, 0o600);
      const c = await connect(socket);
      const b = await c.load(f.path);
      assert.equal(b.stats.served?.cached, true);
      assert.equal(hashOf(b), f.sha256);
      const st = await c.status();
      assert.equal(st.budget, 64 * MiB);
      assert.equal(st.pid, p.pid);
      b.close();
      c.close();
      p.kill('SIGTERM');
      assert.equal(await exited, 0);
      assert.match(err, /hit/);
      assert.match(err, /stopped \(1 hits/);
      assert.equal(existsSync(socket), false);
    } finally {
      if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    }
  });

  test('SIGHUP stops it like SIGTERM; a signal during --preload removes the socket and exits 128 + the signal', async () => {
    const run = (socket: string, extra: string[], env: Record<string, string> = {}) => {
      const p = spawn(process.execPath, [join(repoRoot, 'bin', 'dmaload.js'), 'serve', '--socket', socket, ...extra], {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...process.env, ...env },
      });
      let err = '';
      p.stderr.on('data', (d: Buffer) => (err += d));
      const exited = new Promise<number | null>((r) => p.once('close', r));
      return { p, exited, err: () => err };
    };
    const untilSocket = async (socket: string) => {
      for (const t0 = Date.now(); !existsSync(socket) && Date.now() - t0 < 20_000;) await new Promise((r) => setTimeout(r, 5));
      assert.ok(existsSync(socket), 'the socket appeared');
    };
    // Listening: SIGHUP (a closed terminal) stops it cleanly.
    const s1 = sock();
    const a = run(s1, []);
    try {
      await untilSocket(s1);
      a.p.kill('SIGHUP');
      assert.equal(await a.exited, 0, a.err());
      assert.equal(existsSync(s1), false, 'socket removed');
    } finally {
      if (a.p.exitCode === null && a.p.signalCode === null) a.p.kill('SIGKILL');
    }
    // Preloading a file slowly (4 KiB requests, one at a time): SIGTERM stops the preload and removes the socket.
    const f = makeFile(dir, 'slow-preload', 48 * MiB, 5);
    evictFile(f.path);
    const s2 = sock();
    const b = run(s2, ['--preload', f.path], { DMALOAD_QUEUE_DEPTH: '1', DMALOAD_CHUNK_SIZE: '4096' });
    try {
      await untilSocket(s2);
      b.p.kill('SIGTERM');
      assert.equal(await b.exited, 128 + 15, b.err());
      assert.match(b.err(), /interrupted \(SIGTERM\)/);
      assert.equal(existsSync(s2), false, 'socket removed');
    } finally {
      if (b.p.exitCode === null && b.p.signalCode === null) b.p.kill('SIGKILL');
    }
  });

  test('usage errors exit 2', async () => {
    assert.equal((await cli('serve')).code, 2);
    assert.equal((await cli('serve', '--socket', sock(), '--mode', '999')).code, 2);
    assert.equal((await cli('serve', '--socket', sock(), '--mode', '7777')).code, 2, 'setuid, setgid and sticky bits are not a socket mode');
    assert.equal((await cli('serve', '--socket', sock(), '--budget', 'lots')).code, 2);
    assert.equal((await cli('serve', '--socket', sock(), '--target', 'memory')).code, 2);
    const h = await cli('serve', '--help');
    assert.equal(h.code, 0);
    assert.match(h.out, /--socket PATH/);
  });
});

describe('serve --huge-pages hugetlb', () => {
  test('buffers from the hugetlb pool: byte-exact for two clients, the pool charged once, all of it back after close', async (t) => {
    const NR = '/proc/sys/vm/nr_hugepages';
    const meminfo = () => readFileSync('/proc/meminfo', 'utf8');
    if (process.getuid?.() !== 0 || !existsSync(NR) || !/^Hugepagesize:\s+2048 kB/m.test(meminfo()))
      return t.skip('needs root and a 2 MiB hugetlb pool to reserve');
    const free = () => Number(/^HugePages_Free:\s+(\d+)/m.exec(meminfo())![1]) - Number(/^HugePages_Rsvd:\s+(\d+)/m.exec(meminfo())![1]);
    const saved = readFileSync(NR, 'utf8');
    writeFileSync(NR, `${Number(saved) + 16}\n`);
    const leaks = leakCheck();
    const f = makeFile(dir, 'hugetlb-served', 8 * MiB + 4097);
    try {
      if (free() < 5) return t.skip(`the kernel found only ${free()} huge pages for the pool`);
      const server = await serve({ socket: sock(), hugePages: 'hugetlb' });
      const [c1, c2] = await Promise.all([connect(server.socket), connect(server.socket)]);
      try {
        const before = free();
        const b1 = await c1.load(f.path);
        const b2 = await c2.load(f.path);
        assert.equal(hashOf(b1), f.sha256);
        assert.equal(hashOf(b2), f.sha256);
        assert.equal(before - free(), 5, 'five 2 MiB pages, once: clients map the buffer shared, reserving nothing');
        b1.close();
        b2.close();
        // The Python client maps it in whole huge pages too: closed, nothing of it stays mapped (a mapping of a partial
        // huge page cannot be unmapped, and stayed for the life of the process).
        if (!pythonMissing) {
          const code = [
            'import gc, hashlib, sys',
            'from dmaload_client import Client',
            'with Client(sys.argv[1]) as c:',
            '    with c.load(sys.argv[2]) as b:',
            '        v = b.view(); h = hashlib.sha256(v).hexdigest(); v.release()',
            'gc.collect()',
            'print(h, sum(1 for l in open("/proc/self/maps") if "memfd:" in l))',
          ].join('\n');
          const r = await runPython(['-c', code, server.socket, f.path]);
          assert.equal(r.code, 0, r.err);
          assert.equal(r.out.trim(), `${f.sha256} 0`);
        }
      } finally {
        c1.close();
        c2.close();
        await server.close();
      }
      assert.equal(await leaks(), undefined);
    } finally {
      writeFileSync(NR, saved);
    }
  });
});

describe('serve: verification of hub-cache blobs', () => {
  test('a blob named by its SHA-256 is checked as the server loads it; a corrupt one is ERR_CHECKSUM_MISMATCH to the client', async () => {
    const root = join(dir, 'hub', 'models--org--served');
    mkdirSync(join(root, 'blobs'), { recursive: true });
    mkdirSync(join(root, 'snapshots', 'main'), { recursive: true });
    const put = (name: string, bytes: Uint8Array, blobName = sha256(bytes)) => {
      writeFileSync(join(root, 'blobs', blobName), bytes);
      symlinkSync(`../../blobs/${blobName}`, join(root, 'snapshots', 'main', name));
      return join(root, 'snapshots', 'main', name);
    };
    const good = seededBytes(3 * MiB + 11, 71);
    const bad = seededBytes(MiB + 3, 72);
    const okPath = put('good.bin', good);
    const badPath = put('bad.bin', bad, sha256(seededBytes(MiB + 3, 73)));
    const leaks = leakCheck();
    const server = await serve({ socket: sock() });
    const c = await connect(server.socket);
    try {
      const b = await c.load(okPath);
      assert.deepEqual([b.stats.verified?.sha256, b.stats.verified?.source], [sha256(good), 'hub-cache']);
      assert.equal(hashOf(b), sha256(good));
      b.close();
      await assert.rejects(c.load(badPath), (e: Error & { code?: string }) => e.code === 'ERR_CHECKSUM_MISMATCH' && e.message.includes(sha256(bad)));
      assert.equal(server.status().entries, 1, 'the corrupt file is not cached');
    } finally {
      c.close();
      await server.close();
    }
    assert.equal(await leaks(), undefined);
  });
});

describe('serve --exit-when-idle', () => {
  test('a server started on demand exits by itself once nobody has used it for the idle time, its socket removed', async () => {
    const socket = sock();
    const f = makeFile(dir, 'idle-exit', 256 * 1024 + 7);
    const p = spawn(process.execPath, [join(repoRoot, 'bin', 'dmaload.js'), 'serve', '--socket', socket, '--exit-when-idle', '600ms'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let log = '';
    p.stderr.on('data', (d: Buffer) => (log += d));
    const exited = new Promise<number | null>((r) => p.once('close', (code) => r(code)));
    try {
      await new Promise<void>((resolve, reject) => {
        p.stderr.on('data', () => /listening/.test(log) && resolve());
        void exited.then((code) => reject(new Error(`server exited ${code}: ${log}`)));
      });
      // A connected client keeps it alive past the idle time, however long it stays quiet.
      const c = await connect(socket);
      const b = await c.load(f.path);
      assert.equal(hashOf(b), f.sha256);
      b.close();
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(p.exitCode, null, 'still running while a client is connected');
      c.close();
      const t0 = performance.now();
      assert.equal(await exited, 0, log);
      const ms = performance.now() - t0;
      assert.ok(ms < 5000, `exited ${ms} ms after the last client left`);
      assert.ok(!existsSync(socket), 'its socket is removed');
    } finally {
      p.kill('SIGKILL');
    }
  });
});
