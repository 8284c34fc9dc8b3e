/**
 * Bad input to `dmaload serve`: garbage, short and long messages, bad headers and bodies, missing and extra fds, fds of
 * a FIFO, a folder, /dev/zero, a socket, O_PATH and O_WRONLY opens, clients that die mid-request or never read, and
 * 10,000 seeded fuzzed messages. Each gets a coded error reply or a closed connection (read here with the addon's raw
 * socket calls, not the library's client); the server keeps serving, and its fds (/proc/self/fd) and native.live()
 * come back to where they were.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { closeSync, constants as FS, openSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { native } from '../../src/engine/binding.js';
import { MessageType } from '../../src/share/protocol.js';
import { connect, serve } from '../../src/index.js';
import type { ShareServer } from '../../src/index.js';
import { fdCount, makeFile, sha256, tempDir } from '../helpers.js';
import { EAGAIN, child, connectRaw, frame, recvRaw, settle, socketDir } from './util.js';
import type { RawReply } from './util.js';

const MiB = 1024 * 1024;
const O_PATH = native.shareConstants.O_PATH;
const { dir, cleanup } = tempDir('dmaload-share-bad-');
after(cleanup);
const sockets = socketDir();
after(sockets.cleanup);

let server: ShareServer;
let file: { path: string; sha256: string };
let baseline: { fds: number; live: ReturnType<typeof native.live>; entries: number };
/** fds the tests send (they stay open here; the server gets its own copies). */
const kinds: Record<string, number> = {};

before(async () => {
  file = makeFile(dir, 'good', MiB + 17);
  const fifo = join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  kinds.file = openSync(file.path, 'r');
  kinds.fifo = openSync(fifo, FS.O_RDONLY | FS.O_NONBLOCK);
  kinds.dir = openSync(dir, 'r');
  kinds.zero = openSync('/dev/zero', 'r');
  kinds.opath = openSync(file.path, O_PATH);
  kinds.wronly = openSync(file.path, FS.O_WRONLY);
  server = await serve({ socket: join(sockets.dir, 's.sock'), preload: [file.path] });
  kinds.socket = connectRaw(server.socket);
  await settle(() => (server.status().connections === 1 ? undefined : 'accepting'));
  baseline = { fds: fdCount(), live: native.live(), entries: server.status().entries };
});

after(async () => {
  closeFds(Object.values(kinds));
  await server.close();
});

function closeFds(fds: number[]): void {
  for (const fd of fds) closeSync(fd);
}

/** Sends one message on a fresh connection (or `fd`) and returns what came back: a reply, or 'eof'. */
async function ask(bytes: Uint8Array, fds: number[] = [], fd?: number): Promise<RawReply | 'eof'> {
  const s = fd ?? connectRaw(server.socket);
  try {
    const n = native.sendMsg(s, bytes, fds);
    assert.ok(n === bytes.length || (n === -32 && bytes.length === 0), `sendmsg: ${n}`);
    const r = await recvRaw(s);
    if (r !== 'eof') closeFds(r.fds);
    return r;
  } finally {
    if (fd === undefined) closeSync(s);
  }
}

async function expectError(code: string, bytes: Uint8Array, fds: number[] = [], opts: { thenClosed?: boolean } = {}): Promise<void> {
  const s = connectRaw(server.socket);
  try {
    const r = await ask(bytes, fds, s);
    assert.notEqual(r, 'eof', `expected ${code}, the connection was closed`);
    const reply = r as RawReply;
    assert.equal(reply.type, MessageType.Error);
    assert.equal(reply.body.code, code, String(reply.body.message));
    assert.equal(typeof reply.body.message, 'string');
    if (opts.thenClosed) assert.equal(await recvRaw(s), 'eof');
    else {
      // The connection still works.
      const st = await ask(frame(MessageType.StatusRequest, 7, {}), [], s);
      assert.notEqual(st, 'eof');
      assert.equal((st as RawReply).type, MessageType.StatusReply);
      assert.equal((st as RawReply).id, 7);
    }
  } finally {
    closeSync(s);
  }
}

/** The server's fds and the addon's counts are back to the baseline, once it has noticed every disconnect. */
async function flat(): Promise<void> {
  const problem = await settle(() => {
    if (server.status().connections !== 1) return `connections ${server.status().connections}`;
    // Each file the cache gained holds two fds (its memfd, and the client's file it pins), and nothing else may stay.
    const want = baseline.fds + 2 * (server.status().entries - baseline.entries);
    if (fdCount() !== want) return `fds ${want} -> ${fdCount()}`;
    const l = native.live();
    for (const k of ['mappings', 'jobs', 'threads', 'queues', 'fds'] as const) if (l[k] !== baseline.live[k]) return `live ${k} ${baseline.live[k]} -> ${l[k]}`;
    return undefined;
  });
  assert.equal(problem, undefined);
}

/** A real client still gets the file byte-exact. */
async function stillServes(): Promise<void> {
  const c = await connect(server.socket);
  try {
    const b = await c.load(file.path);
    assert.equal(sha256(b.bytes), file.sha256);
    b.close();
  } finally {
    c.close();
  }
}

const load = (id = 1, body: unknown = { path: 'x' }) => frame(MessageType.LoadRequest, id, body);

describe('serve: bad input', () => {
  test('malformed messages: coded errors; a peer that does not speak the protocol is answered once and closed', async () => {
    await expectError('ERR_SHARE_PROTOCOL', new TextEncoder().encode('GET / HTTP/1.1\r\n\r\n'), [], { thenClosed: true });
    await expectError('ERR_SHARE_PROTOCOL', Uint8Array.of(0x44, 0x4d, 0x4c), [], { thenClosed: true });
    await expectError('ERR_SHARE_PROTOCOL', frame(MessageType.LoadRequest, 1, {}, { bodyLength: 1000 })); // truncated body
    await expectError('ERR_SHARE_PROTOCOL', frame(MessageType.LoadRequest, 1, {}, { bodyLength: 0 })); // body longer than said
    await expectError('ERR_SHARE_MESSAGE_TOO_LARGE', frame(MessageType.LoadRequest, 1, { pad: 'x'.repeat(100_000) }));
    await expectError('ERR_SHARE_VERSION', frame(MessageType.LoadRequest, 1, {}, { version: 2 }));
    await expectError('ERR_SHARE_PROTOCOL', frame(MessageType.LoadRequest, 1, '{"path":'));
    await expectError('ERR_SHARE_PROTOCOL', frame(MessageType.LoadRequest, 1, '[1,2]'));
    await expectError('ERR_SHARE_PROTOCOL', frame(MessageType.LoadRequest, 1, new TextDecoder('latin1').decode(Uint8Array.of(0x22, 0xff, 0x22))));
    await expectError('ERR_SHARE_PROTOCOL', frame(99, 1, {}));
    await expectError('ERR_SHARE_PROTOCOL', frame(MessageType.LoadReply, 1, {}), [kinds.file!]);
    await expectError('ERR_SHARE_PROTOCOL', load(1, { path: 42 }), [kinds.file!]);
    await expectError('ERR_SHARE_PROTOCOL', load(1, { path: 'p'.repeat(5000) }), [kinds.file!]);
    // An empty message reads as end of file: the connection is closed.
    assert.equal(await ask(new Uint8Array(0)), 'eof');
    await flat();
    await stillServes();
  });

  test('fds: none, too many, and every kind that is not a readable regular file', async () => {
    await expectError('ERR_SHARE_NO_FD', load());
    await expectError('ERR_SHARE_FDS', load(), [kinds.file!, kinds.file!]);
    await expectError('ERR_SHARE_FDS', load(), new Array(70).fill(kinds.file!));
    await expectError('ERR_SHARE_FDS', frame(MessageType.StatusRequest, 1, {}), [kinds.file!]);
    await expectError('ERR_NOT_REGULAR_FILE', load(), [kinds.fifo!]);
    await expectError('EISDIR', load(), [kinds.dir!]);
    await expectError('ERR_NOT_REGULAR_FILE', load(), [kinds.zero!]);
    await expectError('ERR_NOT_REGULAR_FILE', load(), [kinds.socket!]);
    // The file is cached, but an O_PATH or write-only fd does not prove the sender may read it.
    await expectError('ERR_SHARE_FD_ACCESS', load(), [kinds.opath!]);
    await expectError('ERR_SHARE_FD_ACCESS', load(), [kinds.wronly!]);
    const ok = await ask(load(5), [kinds.file!]);
    assert.notEqual(ok, 'eof');
    assert.equal((ok as RawReply).type, MessageType.LoadReply);
    assert.equal((ok as RawReply).id, 5);
    assert.equal((ok as RawReply).body.cached, true);
    await flat();
    await stillServes();
  });

  test('control messages other than SCM_RIGHTS (SCM_CREDENTIALS beside the fd, or alone) are ignored', async (t) => {
    const python = ['/usr/bin/python3', 'python3'].find((p) => spawnSync(p, ['-c', 'import socket; socket.SCM_CREDENTIALS']).status === 0);
    if (!python) return t.skip('no python3 with socket.SCM_CREDENTIALS to send them');
    // Node cannot attach SCM_CREDENTIALS; Python's sendmsg can (its own pid, uid and gid, which the kernel accepts).
    const script = `
import array, json, os, socket, struct, sys
path, hexframe, file = sys.argv[1:4]
out = []
for with_fd in (True, False):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    anc = [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack('iII', os.getpid(), os.getuid(), os.getgid()))]
    fd = os.open(file, os.O_RDONLY) if with_fd else None
    if fd is not None:
        anc.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [fd]).tobytes()))
    s.sendmsg([bytes.fromhex(hexframe)], anc)
    msg, ancdata, flags, _ = s.recvmsg(1 << 20, socket.CMSG_SPACE(64 * 4))
    got = array.array('i')
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got.frombytes(data[: len(data) - len(data) % 4])
    body = json.loads(msg[16:])
    out.append({'type': struct.unpack_from('<H', msg, 6)[0], 'code': body.get('code'), 'fds': len(got)})
    for f in got:
        os.close(f)
    if fd is not None:
        os.close(fd)
    s.close()
print(json.dumps(out))
`;
    const hex = Buffer.from(load(9)).toString('hex');
    const r = await new Promise<{ err: Error | null; stdout: string; stderr: string }>((resolve) =>
      execFile(python, ['-c', script, server.socket, hex, file.path], { encoding: 'utf8', timeout: 20_000 }, (err, stdout, stderr) =>
        resolve({ err, stdout, stderr }),
      ),
    );
    assert.equal(r.err, null, r.stderr);
    const [withFd, alone] = JSON.parse(r.stdout) as Array<{ type: number; code: string | null; fds: number }>;
    assert.equal(withFd!.type, MessageType.LoadReply, JSON.stringify(withFd));
    assert.ok(withFd!.fds >= 1, 'the buffer came back');
    assert.deepEqual([alone!.type, alone!.code], [MessageType.Error, 'ERR_SHARE_NO_FD']);
    await flat();
    await stillServes();
  });

  test('a client that dies mid-request, and one that never reads its replies', async () => {
    const cold = makeFile(dir, 'cold', 48 * MiB + 3);
    const r = await child(['die', server.socket, cold.path]);
    assert.equal(r.code, 0, r.err);
    // The load it asked for completes (and is cached) though nobody is left to answer.
    assert.equal(await settle(() => (server.status().entries === 2 ? undefined : `entries ${server.status().entries}`), 20_000), undefined);
    await flat();

    // 2,000 requests sent without reading: the server queues a bounded number of replies and stops reading until
    // they are taken; every request is answered, in order.
    const s = connectRaw(server.socket);
    try {
      const total = 2000;
      let sent = 0;
      let got = 0;
      while (got < total) {
        while (sent < total) {
          const n = native.sendMsg(s, frame(MessageType.StatusRequest, sent + 1, {}), []);
          if (n === EAGAIN) break;
          assert.ok(n > 0, `sendmsg ${n}`);
          sent++;
        }
        if (sent === total || got < sent) {
          const reply = await recvRaw(s);
          assert.notEqual(reply, 'eof');
          assert.equal((reply as RawReply).id, ++got);
        }
      }
    } finally {
      closeSync(s);
    }
    await flat();
    await stillServes();
  });

  test('10,000 seeded fuzzed messages: each answered with a coded error (or a reply), or the connection closed', async () => {
    let x = 0x2545f491;
    const rnd = (n: number) => {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      return x % n;
    };
    const fdChoices: number[][] = [
      [],
      [kinds.file!],
      [kinds.file!, kinds.file!],
      [kinds.fifo!],
      [kinds.dir!],
      [kinds.zero!],
      [kinds.opath!],
      [kinds.wronly!],
      [kinds.socket!],
    ];
    const outcomes = { error: 0, reply: 0, closed: 0 };
    const codes = new Set<string>();
    let s = connectRaw(server.socket);
    try {
      for (let i = 0; i < 10_000; i++) {
        let m: Uint8Array;
        const kind = rnd(4);
        if (kind === 0) m = load(rnd(1000), { path: 'fuzz' });
        else if (kind === 1) m = frame(MessageType.StatusRequest, rnd(1000), {});
        else if (kind === 2) m = frame(rnd(20), rnd(1000), rnd(2) ? { path: 'p', x: [1, 2, { y: null }] } : rnd(100));
        else m = Uint8Array.from({ length: rnd(64) }, () => rnd(256));
        // Mutations: flip bytes, cut, extend.
        m = m.slice();
        for (let k = rnd(4); k > 0; k--) {
          const op = rnd(4);
          if (op === 0 && m.length > 0) {
            const j = rnd(m.length);
            m[j] = m[j]! ^ (1 << rnd(8));
          } else if (op === 1 && m.length > 0) m = m.subarray(0, rnd(m.length + 1));
          else if (op === 2) m = Uint8Array.from([...m, ...Array.from({ length: rnd(40) }, () => rnd(256))]);
          else if (op === 3 && m.length >= 16) m[4 + rnd(12)] = rnd(256);
        }
        const fds = fdChoices[rnd(fdChoices.length)]!;
        const n = native.sendMsg(s, m, fds);
        if (n < 0) {
          // A closed connection refuses the send (EPIPE); anything else is a failure of this test.
          assert.equal(n, -32, `sendmsg: errno ${-n}`);
          closeSync(s);
          s = connectRaw(server.socket);
          i--;
          continue;
        }
        const r = await recvRaw(s);
        if (r === 'eof') {
          outcomes.closed++;
          closeSync(s);
          s = connectRaw(server.socket);
          continue;
        }
        closeFds(r.fds);
        if (r.type === MessageType.Error) {
          outcomes.error++;
          assert.match(String(r.body.code), /^(ERR_[A-Z_]+|E[A-Z]+)$/);
          codes.add(String(r.body.code));
        } else {
          assert.ok(r.type === MessageType.LoadReply || r.type === MessageType.StatusReply, `reply type ${r.type}`);
          outcomes.reply++;
        }
      }
    } finally {
      closeSync(s);
    }
    assert.equal(outcomes.error + outcomes.reply + outcomes.closed, 10_000);
    assert.ok(outcomes.error > 1000 && outcomes.reply > 0 && outcomes.closed > 0, JSON.stringify(outcomes));
    for (const c of ['ERR_SHARE_PROTOCOL', 'ERR_SHARE_NO_FD', 'ERR_SHARE_FDS', 'ERR_NOT_REGULAR_FILE', 'EISDIR', 'ERR_SHARE_FD_ACCESS'])
      assert.ok(codes.has(c), `no ${c} among ${[...codes].join(', ')}`);
    await flat();
    await stillServes();
  });
});
