/**
 * The share addon (native/share.cc): Unix SOCK_SEQPACKET sockets that carry fds, and the reactor. Checked against the
 * kernel's own view: the received fd is the same open file (fstat dev/ino, its offset moves for both), the socket
 * file's mode by stat(), fds by /proc/self/fd, threads and queues by native.live().
 */
import assert from 'node:assert/strict';
import { closeSync, fstatSync, openSync, readSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { native } from '../../src/engine/binding.js';
import { fdCount, leakCheck, seededBytes, sha256, tempDir } from '../helpers.js';
import { socketDir } from './util.js';

const S = native.shareConstants;
const EAGAIN = -11;
const typeError = { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' };
const rangeError = { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' };
const { dir, cleanup } = tempDir('dmaload-share-native-');
after(cleanup);
const sockets = socketDir();
after(sockets.cleanup);

let n = 0;
/** A listening socket and a connected pair: [listen, client, server side]. */
function pair(): { path: string; listen: number; client: number; server: number; close(): void } {
  const path = join(sockets.dir, `s${n++}.sock`);
  const listen = native.unixListen(path, 0o600, 8);
  assert.ok(listen >= 0, `unixListen: errno ${-listen}`);
  const client = native.unixConnect(path);
  assert.ok(client >= 0, `unixConnect: errno ${-client}`);
  const server = native.unixAccept(listen);
  assert.ok(server >= 0, `unixAccept: errno ${-server}`);
  return { path, listen, client, server, close: () => [listen, client, server].forEach((fd) => closeSync(fd)) };
}

describe('share native: fd passing over SOCK_SEQPACKET', () => {
  test('a message and an fd arrive whole: the received fd is the same open file', async () => {
    const leaks = leakCheck();
    const p = pair();
    const file = join(dir, 'passed');
    const data = seededBytes(10000, 7);
    writeFileSync(file, data);
    const fd = openSync(file, 'r');
    try {
      const msg = seededBytes(1000, 1);
      assert.equal(native.sendMsg(p.client, msg, [fd]), 1000);
      const buf = new Uint8Array(4096);
      const r = native.recvMsg(p.server, buf, 4);
      assert.ok(Array.isArray(r));
      const [len, flags, got, ...rest] = r;
      assert.equal(len, 1000);
      assert.equal(flags! & (S.MSG_TRUNC | S.MSG_CTRUNC), 0);
      assert.equal(rest.length, 0);
      assert.equal(sha256(buf.subarray(0, 1000)), sha256(msg));
      assert.notEqual(got, fd);
      const a = fstatSync(fd);
      const b = fstatSync(got!);
      assert.equal(b.ino, a.ino);
      assert.equal(b.dev, a.dev);
      // One open file description: reading through one moves the offset the other sees.
      const head = new Uint8Array(100);
      assert.equal(readSync(got!, head, 0, 100, null), 100);
      const next = new Uint8Array(100);
      assert.equal(readSync(fd, next, 0, 100, null), 100);
      assert.equal(sha256(next), sha256(data.subarray(100, 200)));
      assert.equal(native.fdFlags(got!) & S.O_ACCMODE, 0); // O_RDONLY
      closeSync(got!);
      // Nothing more to read: EAGAIN, not a block.
      assert.equal(native.recvMsg(p.server, buf, 4), EAGAIN);
    } finally {
      closeSync(fd);
      p.close();
    }
    assert.equal(await leaks(), undefined);
  });

  test('a message longer than the buffer says so (MSG_TRUNC, real length); fds past maxFds are dropped (MSG_CTRUNC)', async () => {
    const leaks = leakCheck();
    const p = pair();
    const fds = [openSync(dir, 'r'), openSync(dir, 'r'), openSync(dir, 'r')];
    try {
      assert.equal(native.sendMsg(p.client, new Uint8Array(5000), []), 5000);
      const r = native.recvMsg(p.server, new Uint8Array(100), 4) as number[];
      assert.equal(r[0], 5000);
      assert.ok(r[1]! & S.MSG_TRUNC);
      const before = fdCount();
      assert.equal(native.sendMsg(p.client, new Uint8Array(16), fds), 16);
      const r2 = native.recvMsg(p.server, new Uint8Array(100), 1) as number[];
      assert.ok(r2[1]! & S.MSG_CTRUNC);
      assert.equal(r2.length, 3); // one fd installed, the others never were
      closeSync(r2[2]!);
      assert.equal(fdCount(), before);
      // maxFds 0: every fd is dropped by the kernel.
      assert.equal(native.sendMsg(p.client, new Uint8Array(16), fds), 16);
      const r3 = native.recvMsg(p.server, new Uint8Array(100), 0) as number[];
      assert.equal(r3.length, 2);
      assert.equal(fdCount(), before);
    } finally {
      fds.forEach((fd) => closeSync(fd));
      p.close();
    }
    assert.equal(await leaks(), undefined);
  });

  test('a peer that went away: recv reads 0, send is EPIPE (no SIGPIPE)', () => {
    const p = pair();
    closeSync(p.client);
    const r = native.recvMsg(p.server, new Uint8Array(16), 1) as number[];
    assert.deepEqual(r.slice(0, 1), [0]);
    assert.equal(native.sendMsg(p.server, new Uint8Array(16), []), -32);
    closeSync(p.server);
    closeSync(p.listen);
  });

  test('the socket file is created with exactly the mode asked, whatever the umask', () => {
    const old = process.umask(0o022);
    try {
      for (const mode of [0o600, 0o660, 0o666]) {
        const path = join(sockets.dir, `mode-${mode.toString(8)}.sock`);
        const fd = native.unixListen(path, mode, 8);
        assert.ok(fd >= 0);
        assert.equal(statSync(path).mode & 0o7777, mode);
        assert.ok(statSync(path).isSocket());
        closeSync(fd);
      }
    } finally {
      process.umask(old);
    }
  });

  test('errors are -errno: no server (ENOENT, ECONNREFUSED), path too long, address in use', () => {
    assert.equal(native.unixConnect(join(sockets.dir, 'nobody.sock')), -2);
    const p = pair();
    closeSync(p.listen);
    assert.equal(native.unixConnect(p.path), -111); // the file stays, nobody listens
    closeSync(p.client);
    closeSync(p.server);
    assert.equal(native.unixListen(`/tmp/${'x'.repeat(120)}`, 0o600, 8), -36);
    const path = join(sockets.dir, 'inuse.sock');
    const fd = native.unixListen(path, 0o600, 8);
    assert.equal(native.unixListen(path, 0o600, 8), -98);
    closeSync(fd);
  });

  test('arguments are checked by the addon itself', () => {
    assert.throws(() => native.sendMsg(-1, new Uint8Array(1), []), rangeError);
    assert.throws(() => native.sendMsg(0, 'x' as never, []), typeError);
    assert.throws(() => native.sendMsg(0, new Uint16Array(1) as never, []), typeError);
    assert.throws(() => native.sendMsg(0, new Uint8Array(1), [1.5]), rangeError);
    assert.throws(() => native.sendMsg(0, new Uint8Array(1), 'x' as never), typeError);
    assert.throws(() => native.sendMsg(0, new Uint8Array(1), new Array(254).fill(0)), rangeError);
    assert.throws(() => native.recvMsg(0, new Uint8Array(1), 254), rangeError);
    assert.throws(() => native.recvMsg(0, {} as never, 1), typeError);
    assert.throws(() => native.unixListen('', 0o600, 1), { code: 'ERR_INVALID_ARG_VALUE' });
    assert.throws(() => native.unixListen('a\0b', 0o600, 1), { code: 'ERR_INVALID_ARG_VALUE' });
    assert.throws(() => native.unixListen('/tmp/x', 0o10000, 1), rangeError);
    assert.throws(() => native.unixConnect(3 as never), typeError);
    assert.throws(() => native.reactorCtl({} as never, 1, 0, 1, 0), typeError);
    assert.throws(() => native.reactorOpen(1 as never), typeError);
    assert.equal(native.fdFlags(1 << 30), -9); // EBADF
    assert.equal(native.dupFd(1 << 30), -9);
  });
});

describe("share native: fdOpen (the server reopens a client's file on a thread of its own)", () => {
  test('a new description of the same file, O_DIRECT when asked; -errno for what cannot be opened; arguments checked', async () => {
    const leaks = leakCheck();
    const file = join(dir, 'reopened');
    const bytes = seededBytes(64 * 1024, 3);
    writeFileSync(file, bytes);
    const fd = openSync(file, 'r');
    // The addon's callback does not keep the process alive (a thread stuck for good must not): this timer does.
    const open = (f: number, direct: boolean) =>
      new Promise<number>((resolve, reject) => {
        const alive = setTimeout(() => reject(new Error('fdOpen: no answer in 10 s')), 10_000);
        const rc = native.fdOpen(f, direct, (r) => {
          clearTimeout(alive);
          resolve(r);
        });
        if (rc < 0) {
          clearTimeout(alive);
          reject(new Error(`fdOpen: errno ${-rc}`));
        }
      });
    try {
      for (const direct of [false, true]) {
        const r = await open(fd, direct);
        assert.ok(r >= 0, `fdOpen(direct ${direct}): errno ${-r}`);
        try {
          // The same file (dev, ino), a description of its own: its offset starts at 0 whatever the client's.
          assert.deepEqual([fstatSync(r).dev, fstatSync(r).ino], [fstatSync(fd).dev, fstatSync(fd).ino]);
          const got = Buffer.alloc(bytes.length);
          if (!direct) {
            assert.equal(readSync(r, got, 0, got.length, null), bytes.length);
            assert.equal(sha256(got), sha256(bytes));
          }
        } finally {
          closeSync(r);
        }
      }
      // A socket is not a file /proc lets anyone open: the errno comes back, no fd.
      const p = pair();
      try {
        const r = await open(p.client, false);
        assert.ok(r < 0, `fdOpen of a socket: ${r}`);
      } finally {
        p.close();
      }
      assert.throws(() => native.fdOpen(-1, false, () => {}), rangeError);
      assert.throws(() => native.fdOpen(fd, 'yes' as never, () => {}), typeError);
      assert.throws(() => native.fdOpen(fd, false, undefined as never), typeError);
    } finally {
      closeSync(fd);
    }
    assert.equal(await leaks(), undefined);
  });
});

describe('share native: the reactor', () => {
  test('reports readiness once per arm (EPOLLONESHOT), never reads itself; counted in live() until closed', async () => {
    const leaks = leakCheck();
    const l0 = native.live();
    const p = pair();
    const seen: number[][] = [];
    let wake: (() => void) | undefined;
    const r = native.reactorOpen((ev) => {
      seen.push(ev);
      wake?.();
    });
    assert.notEqual(typeof r, 'number');
    const reactor = r as Exclude<typeof r, number>;
    const l1 = native.live();
    assert.equal(l1.threads, l0.threads + 1);
    assert.equal(l1.queues, l0.queues + 1);
    assert.equal(l1.fds, l0.fds + 2);
    const next = () => new Promise<void>((res) => (wake = res));
    try {
      native.reactorRef(reactor, true);
      assert.equal(native.reactorCtl(reactor, 1, p.server, 42, S.EPOLLIN), 0);
      let got = next();
      native.sendMsg(p.client, Uint8Array.of(1, 2, 3), []);
      await got;
      assert.deepEqual(seen.at(-1), [42, S.EPOLLIN]);
      // Not re-armed: more data is not reported; the message is still there to read (the reactor read nothing).
      native.sendMsg(p.client, Uint8Array.of(4), []);
      await new Promise((res) => setTimeout(res, 30));
      assert.equal(seen.length, 1);
      assert.deepEqual((native.recvMsg(p.server, new Uint8Array(8), 0) as number[]).slice(0, 1), [3]);
      got = next();
      assert.equal(native.reactorCtl(reactor, 2, p.server, 43, S.EPOLLIN), 0);
      await got;
      assert.deepEqual(seen.at(-1), [43, S.EPOLLIN]);
      assert.equal(native.reactorCtl(reactor, 3, p.server, 43, 0), 0);
      assert.equal(native.reactorCtl(reactor, 2, p.server, 43, S.EPOLLIN), -2); // ENOENT: not registered
      assert.throws(() => native.reactorCtl(reactor, 4 as never, p.server, 1, 0), rangeError);
    } finally {
      native.reactorClose(reactor);
      native.reactorClose(reactor); // idempotent
      p.close();
    }
    assert.throws(() => native.reactorCtl(reactor, 1, 0, 1, 0), { code: 'ERR_REACTOR_CLOSED' });
    assert.deepEqual(native.live(), l0);
    assert.equal(await leaks(), undefined);
  });
});
