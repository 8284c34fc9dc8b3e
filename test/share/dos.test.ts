/**
 * No client can stop `dmaload serve` for others: stacked file systems over a user's FUSE daemon are refused by what the
 * file really lives on, a burst of fds on a never-closing FUSE file costs a bounded number of threads, a load that
 * makes no progress is abandoned, and shutdown finishes while a request hangs. The attacker is another user (uid
 * 65534, burst.ts) against a root server where the test runs as root; the oracles are error codes, the server's
 * thread count (/proc/PID/status), its status counters, and bytes hashed against the file's.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import {
  appendFileSync,
  chmodSync,
  closeSync,
  constants as fsConstants,
  mkdirSync,
  mkdtempSync,
  openSync,
  promises as fsp,
  readFileSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { connect, serve } from '../../src/index.js';
import { MAX_FD_THREADS_PER_USER, stackedRefusal } from '../../src/share/fds.js';
import { Admission } from '../../src/share/admission.js';
import { CLOSE_WAIT } from '../../src/share/server.js';
import { bufferSha256, makeFile, seededBytes, sha256, tempDir, repoRoot } from '../helpers.js';
import { LOOPBACK, failure } from '../sources/common.js';
import { startFuse } from './fuse.js';
import { connectRaw, frame, recvRaw } from './util.js';
import { MessageType } from '../../src/share/protocol.js';
import { native } from '../../src/engine/binding.js';
import { statusLatency } from './status.js';

const NOBODY = 65534;
const { dir, cleanup } = tempDir('dmaload-dos-');
after(cleanup);
for (const k of ['NO_PROXY', 'no_proxy']) process.env[k] = process.env[k] ? `${process.env[k]},${LOOPBACK}` : LOOPBACK;

/** A folder uid 65534 can reach (sockets, mount points): /tmp first, as the FUSE helper's mounts are there too. */
const shared = (() => {
  const d = mkdtempSync(join(process.getuid?.() === 0 ? '/tmp' : tmpdir(), 'dmaload-dos-'));
  chmodSync(d, 0o711);
  return d;
})();
after(() => rmSync(shared, { recursive: true, force: true }));
let n = 0;
const sock = () => join(shared, `d${n++}.sock`);
const BURST = join(repoRoot, 'dist', 'test', 'share', 'burst.js');

/** Why uid 65534 cannot attack here, or undefined. */
function attackerMissing(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (the attacker runs as uid 65534)';
  const probe = spawnSync(process.execPath, ['-e', `require('fs').accessSync(${JSON.stringify(BURST)})`], { uid: NOBODY, gid: NOBODY });
  return probe.status === 0 ? undefined : `uid ${NOBODY} cannot read this checkout (${repoRoot})`;
}

/** Runs burst.ts as uid 65534 (optionally wrapped, e.g. in `unshare`); resolves its JSON line; end() lets it exit. */
function attack(args: string[], wrap: string[] = []): { line: Promise<Record<string, unknown>>; end(): void; proc: ChildProcess } {
  const argv = [...wrap, process.execPath, BURST, ...args];
  const p = spawn(argv[0]!, argv.slice(1), { uid: NOBODY, gid: NOBODY, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  p.stderr.on('data', (d: Buffer) => (err += d));
  const line = new Promise<Record<string, unknown>>((resolve, reject) => {
    p.stdout.on('data', (d: Buffer) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(JSON.parse(out.slice(0, nl)) as Record<string, unknown>);
    });
    p.once('close', (code) => reject(new Error(`attacker exited ${code} before answering: ${err}`)));
  });
  line.catch(() => {});
  return { line, end: () => p.stdin.end(), proc: p };
}

/** `dmaload serve` as its own process (as deployed); resolves once it listens. */
async function serveProcess(args: string[]): Promise<{ socket: string; proc: ChildProcess; log: () => string; exited: Promise<number | null> }> {
  const socket = sock();
  const proc = spawn(process.execPath, [join(repoRoot, 'bin', 'dmaload.js'), 'serve', '--socket', socket, '--mode', '0666', '-v', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  proc.stderr.on('data', (d: Buffer) => (log += d));
  const exited = new Promise<number | null>((r) => proc.once('close', (code) => r(code)));
  await new Promise<void>((resolve, reject) => {
    proc.stderr.on('data', () => /listening/.test(log) && resolve());
    void exited.then((code) => reject(new Error(`server exited ${code}: ${log}`)));
  });
  return { socket, proc, log: () => log, exited };
}

const threadsOf = (pid: number) => Number(/^Threads:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);

/** A web server whose bodies never come (only the probe's first byte is answered): a download that hangs. */
async function hangingWeb(size: number): Promise<{ base: string; requests: () => number; close(): void }> {
  let requests = 0;
  const held: Array<() => void> = [];
  const web = createServer((req, res) => {
    requests++;
    const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    if (m && m[1] === '0' && m[2] === '0') {
      res.writeHead(206, { etag: '"h"', 'content-length': 1, 'content-range': `bytes 0-0/${size}` });
      return void res.end(Buffer.alloc(1));
    }
    held.push(() => res.destroy());
  });
  await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
  return {
    base: `http://127.0.0.1:${(web.address() as AddressInfo).port}`,
    requests: () => requests,
    close: () => {
      for (const f of held.splice(0)) f();
      web.closeAllConnections();
      web.close();
    },
  };
}

describe('serve: stacked file systems are judged by what their files live on', () => {
  test('an overlay a user mounts in its own namespace is refused, whatever its layers', async (t) => {
    const why = attackerMissing();
    if (why) return t.skip(why);
    if (spawnSync('unshare', ['-Urm', 'true'], { uid: NOBODY, gid: NOBODY }).status !== 0) return t.skip('unprivileged user namespaces are not allowed here');
    const base = mkdtempSync(join(shared, 'ovl-'));
    chmodSync(base, 0o777);
    const server = await serve({ socket: sock(), mode: 0o666 });
    try {
      const script = [
        `mkdir -p ${base}/l ${base}/u ${base}/w ${base}/m`,
        `head -c 65536 /dev/zero > ${base}/l/f`,
        `mount -t overlay o -o lowerdir=${base}/l,upperdir=${base}/u,workdir=${base}/w ${base}/m`,
        `exec "$@"`,
      ].join(' && ');
      const a = attack(['send', server.socket, `${base}/m/f`], ['unshare', '-Urm', 'sh', '-c', script, 'sh']);
      const r = await a.line;
      a.end();
      assert.equal(r.code, 'ERR_SHARE_FS_UNSUPPORTED', JSON.stringify(r));
      assert.equal(server.status().loads, 0);
    } finally {
      await server.close();
      rmSync(base, { recursive: true, force: true });
    }
  });

  test('an overlay the system mounted: served over local layers, refused over a FUSE layer', async (t) => {
    if (process.getuid?.() !== 0) return t.skip('mounting needs root');
    const fuse = await startFuse('ok', 128 * 1024, { base: shared });
    if (typeof fuse === 'string') return t.skip(fuse);
    const base = mkdtempSync(join(shared, 'sysovl-'));
    const mounted: string[] = [];
    const overlay = (lower: string, name: string) => {
      const d = join(base, name);
      for (const x of ['u', 'w', 'm']) mkdirSync(join(d, x), { recursive: true });
      execFileSync('mount', ['-t', 'overlay', 'o', '-o', `lowerdir=${lower},upperdir=${d}/u,workdir=${d}/w`, `${d}/m`]);
      mounted.push(`${d}/m`);
      return `${d}/m`;
    };
    const server = await serve({ socket: sock() });
    try {
      const local = join(base, 'lower');
      mkdirSync(local);
      const bytes = seededBytes(96 * 1024 + 5, 91);
      writeFileSync(join(local, 'model.bin'), bytes);
      let good: string;
      let bad: string;
      try {
        good = overlay(local, 'good');
        bad = overlay(fuse.dir, 'bad');
      } catch (e) {
        return t.skip(`cannot mount an overlay here: ${(e as Error).message}`);
      }
      const c = await connect(server.socket);
      const b = await c.load(join(good, 'model.bin'));
      assert.equal(bufferSha256(b), sha256(bytes), 'an overlay over a local folder is served');
      b.close();
      const e = await failure(c.load(join(bad, 'data')));
      assert.equal(e.code, 'ERR_SHARE_FS_UNSUPPORTED', e.message);
      assert.match(e.message, /layer on fuse/);
      c.close();
    } finally {
      await server.close();
      for (const m of mounted.reverse()) spawnSync('umount', ['-l', m]);
      await fuse.stop();
      rmSync(base, { recursive: true, force: true });
    }
  });
});

describe('serve: bounded threads, abandoned loads, a shutdown that finishes', () => {
  test('a burst of fds of a never-closing FUSE file: threads stay bounded, the log too, another user still loads', async (t) => {
    const why = attackerMissing();
    if (why) return t.skip(why);
    const fuse = await startFuse('hang-flush', 64 * 1024, { base: shared });
    if (typeof fuse === 'string') return t.skip(fuse);
    const server = await serveProcess([]);
    const pid = server.proc.pid!;
    try {
      const before = threadsOf(pid);
      // 8 connections × 16 status requests × 64 copies of the fd: 8192 fds to close, each close hanging for good.
      const a = attack(['burst', server.socket, fuse.file, '8', '16']);
      const during = (async () => {
        const r = await a.line;
        await new Promise((res) => setTimeout(res, 3000)); // past the 2 s bound of the first closes
        return r;
      })();
      const worst = await statusLatency(server.socket, during);
      const r = await during;
      const threads = threadsOf(pid);
      const c = await connect(server.socket);
      const st = await c.status();
      // Another user's (root's) load of an ordinary file, meanwhile.
      const f = makeFile(dir, 'victim', 256 * 1024 + 1);
      const t0 = performance.now();
      const b = await c.load(f.path);
      const loadMs = performance.now() - t0;
      assert.equal(bufferSha256(b), f.sha256);
      b.close();
      c.close();
      const hung = (server.log().match(/has not returned/g) ?? []).length;
      t.diagnostic(
        `attacker: ${JSON.stringify(r)}; threads ${before} -> ${threads}; status fdCalls ${st.fdCalls}, fdsParked ${st.fdsParked}; worst status ${worst.toFixed(0)} ms; victim load ${loadMs.toFixed(0)} ms; ${hung} 'has not returned' log lines`,
      );
      assert.ok(st.fdCalls <= MAX_FD_THREADS_PER_USER, `${st.fdCalls} native fd calls in flight`);
      assert.ok(threads - before <= MAX_FD_THREADS_PER_USER + 4, `the server went from ${before} to ${threads} threads`);
      assert.ok(worst < 1000, `status took ${worst} ms`);
      assert.ok(loadMs < 1000, `the other user's load took ${loadMs} ms`);
      assert.ok(hung <= 4, `${hung} lines about calls that have not returned`);
      a.end();
    } finally {
      await fuse.stop();
      server.proc.kill('SIGTERM');
    }
    assert.equal(await server.exited, 0, server.log());
  });

  test("a client's file is opened and closed on the server's own threads: loads go on while libuv's shared pool is stuck", async () => {
    const f = makeFile(dir, 'pool-stuck', 8 * 1024 * 1024 + 3);
    const server = await serve({ socket: sock() });
    // Opens of FIFOs that no writer opens: every thread of this process's libuv pool waits (4 unless
    // UV_THREADPOOL_SIZE says otherwise), as it did behind a client's file system that never answers an OPEN.
    const threads = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
    const fifos = Array.from({ length: threads }, (_, i) => join(dir, `pool-fifo-${i}`));
    for (const p of fifos) execFileSync('mkfifo', [p]);
    const stuck = fifos.map((p) => fsp.open(p, 'r'));
    try {
      // The client in a process of its own (its open of the file must not wait on this pool).
      const script = `
        const { connect } = await import(${JSON.stringify(join(repoRoot, 'dist', 'src', 'index.js'))});
        const { createHash } = await import('node:crypto');
        const c = await connect(process.argv[1]);
        for (let i = 0; i < 2; i++) {
          const b = await c.load(process.argv[2]);
          console.log(createHash('sha256').update(b.bytes).digest('hex'), b.stats.io);
          b.close();
        }
        c.close();`;
      // Not spawnSync: the server runs in this process's event loop.
      const r = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
        execFile(process.execPath, ['--input-type=module', '-e', script, server.socket, f.path], { encoding: 'utf8', timeout: 20_000 }, (e, stdout, stderr) =>
          resolve({ status: e ? ((e as { code?: number }).code ?? null) : 0, stdout, stderr }),
        );
      });
      assert.equal(r.status, 0, r.stderr || 'the client timed out: a load waited on the shared pool');
      const lines = r.stdout.trim().split('\n');
      assert.equal(lines.length, 2, r.stdout);
      for (const l of lines) assert.equal(l.split(' ')[0], f.sha256);
    } finally {
      // Writers for the FIFOs: the pool's threads return.
      for (const p of fifos) closeSync(openSync(p, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK));
      for (const h of await Promise.all(stuck)) await h.close();
      await server.close();
    }
  });

  test('a load that makes no progress is abandoned after the stall timeout: coded error, budget released, nothing cached', async () => {
    const web = await hangingWeb(8 * 1024 * 1024);
    const server = await serve({ socket: sock(), budget: 64 * 1024 * 1024, allowSources: [`${web.base}/`], stallTimeout: 1000, source: { stallMs: 60_000 } });
    try {
      const c = await connect(server.socket);
      const t0 = performance.now();
      const e = await failure(c.load(`${web.base}/model.bin`));
      const ms = performance.now() - t0;
      assert.equal(e.code, 'ERR_SHARE_LOAD_STALLED', e.message);
      assert.ok(ms < 5000, `the stalled load failed after ${ms} ms`);
      const st = await c.status();
      assert.equal(st.stalled, 1);
      assert.equal(st.used, 0, 'its budget is released');
      assert.equal(st.entries, 0);
      c.close();
    } finally {
      await server.close();
      web.close();
    }
  });

  test('SIGTERM ends the server within its bound while a download hangs; status answers until then', async () => {
    const web = await hangingWeb(8 * 1024 * 1024);
    const server = await serveProcess(['--allow-source', `${web.base}/`]);
    try {
      const c = await connect(server.socket);
      const pending = c.load(`${web.base}/model.bin`).catch((e: unknown) => e);
      const deadline = Date.now() + 5000;
      while (web.requests() < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.ok(web.requests() >= 2, 'the download started');
      assert.equal((await c.status()).connections >= 1, true);
      const t0 = performance.now();
      server.proc.kill('SIGTERM');
      const code = await server.exited;
      const ms = performance.now() - t0;
      assert.equal(code, 0, server.log());
      assert.ok(ms < CLOSE_WAIT + 3000, `the server took ${ms} ms to stop`);
      const r = (await pending) as { code?: string };
      assert.ok(r.code === 'ERR_SHARE_SERVER_CLOSING' || r.code === 'ERR_SHARE_SERVER_GONE', String(r.code));
      c.close();
    } finally {
      server.proc.kill('SIGKILL');
      web.close();
    }
  });
});

describe('serve: loads that do not fit wait for room', () => {
  test('16 clients loading 16 files of 8 MiB against a 64 MiB budget: every load exact, none refused', async () => {
    const files = Array.from({ length: 16 }, (_, i) => makeFile(dir, `contend-${i}`, 8 * 1024 * 1024, 500 + i));
    const server = await serve({ socket: sock(), budget: 64 * 1024 * 1024 });
    const errors: string[] = [];
    let loads = 0;
    let maxQueued = 0;
    try {
      const until = performance.now() + 4000;
      await Promise.all(
        Array.from({ length: 16 }, async (_, k) => {
          const c = await connect(server.socket);
          try {
            for (let i = k; performance.now() < until; i += 7) {
              const f = files[i % files.length]!;
              try {
                const b = await c.load(f.path);
                if (bufferSha256(b) !== f.sha256) errors.push(`${f.path}: wrong bytes`);
                loads++;
                maxQueued = Math.max(maxQueued, server.status().queued);
                await new Promise((r) => setTimeout(r, 5 + (i % 4) * 5));
                b.close();
              } catch (e) {
                errors.push(`${(e as { code?: string }).code}: ${(e as Error).message}`);
              }
            }
          } finally {
            c.close();
          }
        }),
      );
    } finally {
      await server.close();
    }
    assert.deepEqual(errors.slice(0, 5), [], `${errors.length} of ${loads + errors.length} loads failed`);
    assert.ok(loads >= 16, `${loads} loads`);
    assert.ok(maxQueued > 0, 'loads did wait for room (the test exercised the queue)');
  });

  test('a load bigger than the budget fails at once; one that waits past --budget-wait fails saying so', async () => {
    const big = makeFile(dir, 'too-big', 9 * 1024 * 1024);
    const held = makeFile(dir, 'held', 6 * 1024 * 1024);
    const other = makeFile(dir, 'other', 6 * 1024 * 1024);
    const server = await serve({ socket: sock(), budget: 8 * 1024 * 1024, budgetWait: 300 });
    try {
      const c = await connect(server.socket);
      const t0 = performance.now();
      const e1 = await failure(c.load(big.path));
      assert.equal(e1.code, 'ERR_MEMORY_BUDGET');
      assert.ok(performance.now() - t0 < 250, 'at once');
      const b = await c.load(held.path);
      const e2 = await failure(c.load(other.path));
      assert.equal(e2.code, 'ERR_MEMORY_BUDGET');
      assert.match(e2.message, /waited \d+ ms/);
      // Once the holder lets go, the same load fits.
      b.close();
      const deadline = Date.now() + 3000;
      let ok: Awaited<ReturnType<typeof c.load>> | undefined;
      while (!ok && Date.now() < deadline) ok = await c.load(other.path).catch(() => undefined);
      assert.ok(ok, 'the load fits once the held buffer is closed');
      assert.equal(bufferSha256(ok), other.sha256);
      ok.close();
      c.close();
    } finally {
      await server.close();
    }
  });

  test('a file truncated or extended while its load waits for room: ERR_FILE_CHANGED, nothing cached, the next load exact', async () => {
    const MiB = 1024 * 1024;
    const server = await serve({ socket: sock(), budget: 16 * MiB, budgetWait: 20_000 });
    try {
      const c = await connect(server.socket);
      for (const change of ['truncate', 'extend'] as const) {
        const hold = makeFile(dir, `hold-${change}`, 12 * MiB);
        const held = await c.load(hold.path);
        const f = makeFile(dir, `changing-${change}`, 8 * MiB + 5);
        // Inspected (its size taken) at once, then queued: 12 + 8 MiB do not fit in 16.
        const pending = c.load(f.path).then(
          (b) => b,
          (e: unknown) => e as { code?: string; message?: string },
        );
        const deadline = Date.now() + 5000;
        while (server.status().queued < 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
        assert.equal(server.status().queued, 1, 'the load waits for room');
        if (change === 'truncate') truncateSync(f.path, 4 * MiB);
        else appendFileSync(f.path, Buffer.alloc(4096, 7));
        held.close();
        const r = await pending;
        assert.ok(!('bytes' in r), 'no buffer for a file that changed');
        assert.equal((r as { code?: string }).code, 'ERR_FILE_CHANGED', (r as { message?: string }).message);
        // Nothing of the failed load was kept: the file as it is now loads afresh, byte-exact.
        const now = readFileSync(f.path);
        const b = await c.load(f.path);
        assert.equal(bufferSha256(b), sha256(now));
        assert.equal(b.stats.served?.cached, false);
        b.close();
      }
      c.close();
    } finally {
      await server.close();
    }
  });

  test('waiters are admitted round robin across users: one user’s queue does not starve another', async () => {
    let room = 0;
    const order: string[] = [];
    const ac = new AbortController();
    const adm = new Admission({ waitMs: 5000, fits: (n) => n <= room, take: (n) => (room -= n), why: () => 'no room', signal: ac.signal });
    const waits = [
      ...Array.from({ length: 4 }, (_, i) => adm.admit(1, 1000, `a${i}`).then(() => order.push(`a${i}`))),
      adm.admit(1, 2000, 'b0').then(() => order.push('b0')),
      adm.admit(1, 2000, 'b1').then(() => order.push('b1')),
    ];
    assert.equal(adm.queued, 6);
    for (let i = 0; i < 6; i++) {
      room += 1;
      adm.wake();
      await new Promise((r) => setImmediate(r));
    }
    await Promise.all(waits);
    assert.deepEqual(order, ['a0', 'b0', 'a1', 'b1', 'a2', 'a3']);
    ac.abort();
  });
});

test('serve -v names an evicted file by its path (escaped), not by its inode numbers', async () => {
  const a = makeFile(dir, 'evict-me\u202e.bin', 5 * 1024 * 1024);
  const b = makeFile(dir, 'then-me', 5 * 1024 * 1024);
  const lines: string[] = [];
  const server = await serve({ socket: sock(), budget: 8 * 1024 * 1024, log: (l) => lines.push(l) });
  try {
    const c = await connect(server.socket);
    (await c.load(a.path)).close();
    const deadline = Date.now() + 3000;
    let got: Awaited<ReturnType<typeof c.load>> | undefined;
    while (!got && Date.now() < deadline) got = await c.load(b.path).catch(() => undefined);
    assert.ok(got, 'the second file loads once the first is evicted');
    got.close();
    c.close();
  } finally {
    await server.close();
  }
  const line = lines.find((l) => l.startsWith('evicted '));
  assert.ok(line, lines.join('\n'));
  assert.ok(line.includes('evict-me') && !line.includes('\u202e'), line);
});

test('a load that fits is not held behind another user’s load that does not', async () => {
  const room = { free: 10 };
  const ac = new AbortController();
  const adm = new Admission({ waitMs: 2000, fits: (n) => n <= room.free, take: (n) => (room.free -= n), why: () => 'no room', signal: ac.signal });
  const big = adm.admit(50, 1000, 'big').catch((e: unknown) => e);
  const t0 = performance.now();
  await adm.admit(5, 2000, 'small');
  assert.ok(performance.now() - t0 < 100, 'admitted at once, not after the big one gives up');
  assert.equal(room.free, 5);
  assert.equal(((await big) as { code?: string }).code, 'ERR_MEMORY_BUDGET');
  ac.abort();
});

test('a plan request for a file whose header claims to be huge is refused at once, nothing read past the claim', async () => {
  const path = join(dir, 'huge-header.safetensors');
  // Each starts like a safetensors header ('{' after the length), so it is parsed as one.
  const head = Buffer.concat([Buffer.alloc(8), Buffer.from('{"a":{"dtyp')]);
  head.writeBigUInt64LE(BigInt(2 ** 40)); // a 1 TiB header, in a 19-byte file
  writeFileSync(path, head);
  const big = join(dir, 'over-limit.safetensors');
  const h2 = Buffer.concat([Buffer.alloc(8), Buffer.from('{"a":{"dtyp')]);
  h2.writeBigUInt64LE(BigInt(200 * 1024 * 1024)); // over the parser's limit, in a file that is that large (sparse)
  writeFileSync(big, h2);
  truncateSync(big, 200 * 1024 * 1024 + 8);
  const server = await serve({ socket: sock() });
  try {
    for (const [file, code] of [
      [path, 'ERR_MODEL_TRUNCATED'],
      [big, 'ERR_MODEL_HEADER'],
    ] as const) {
      const s = connectRaw(server.socket);
      const fd = openSync(file, 'r');
      try {
        const t0 = performance.now();
        native.sendMsg(s, frame(MessageType.PlanRequest, 1, { files: [file], rank: 0, worldSize: 1 }), [fd]);
        const r = await recvRaw(s, 5000);
        assert.ok(r !== 'eof');
        assert.equal(r.type, MessageType.Error);
        assert.match(String(r.body.code), /^ERR_MODEL_(TRUNCATED|HEADER|RANGE)$/, `${file}: ${JSON.stringify(r.body)} (expected like ${code})`);
        assert.ok(performance.now() - t0 < 1000, 'refused at once');
      } finally {
        closeSync(fd);
        closeSync(s);
      }
    }
    assert.equal(server.status().loads, 0);
  } finally {
    await server.close();
  }
});

test('system overlays by their mount tables: a container root is accepted, a FUSE layer refused, overlays over overlays followed', () => {
  const line = (id: number, point: string, type: string, options = 'rw') => ({ id, point, type, options });
  // Inside a container: the root overlay names the host's folders, which this namespace does not have.
  const root = line(
    1,
    '/',
    'overlay',
    'rw,lowerdir=/var/lib/docker/overlay2/l/AB:/var/lib/docker/overlay2/l/CD,upperdir=/var/lib/docker/overlay2/x/diff,workdir=/var/lib/docker/overlay2/x/work',
  );
  assert.equal(stackedRefusal(root, [root, line(2, '/proc', 'proc')]), undefined);
  // On a host: layers on ext4 are fine, one on FUSE is not, nor one on a FUSE mount under an overlay's layer.
  const ext4 = line(1, '/', 'ext4');
  const fuse = line(3, '/mnt/remote', 'fuse.sshfs');
  const ok = line(4, '/srv/merged', 'overlay', 'rw,lowerdir=/srv/lower,upperdir=/srv/upper,workdir=/srv/work');
  assert.equal(stackedRefusal(ok, [ext4, fuse, ok]), undefined);
  const bad = line(5, '/srv/m2', 'overlay', 'rw,lowerdir=/srv/lower:/mnt/remote/models,upperdir=/srv/u2,workdir=/srv/w2');
  assert.match(stackedRefusal(bad, [ext4, fuse, bad]) ?? '', /layer on fuse\.sshfs/);
  const over = line(6, '/srv/m3', 'overlay', 'rw,lowerdir=/srv/m2/sub,upperdir=/srv/u3,workdir=/srv/w3');
  assert.match(stackedRefusal(over, [ext4, fuse, bad, over]) ?? '', /layer on fuse\.sshfs/, 'the overlay under it is followed');
  assert.equal(stackedRefusal(line(7, '/x', 'overlay', 'rw'), [ext4]), 'an overlay whose layers its mount options do not name');
  assert.match(stackedRefusal(line(8, '/y', 'ecryptfs', 'rw'), [ext4]) ?? '', /ecryptfs/);
});
