/**
 * An attacker for the share tests (not a test file itself), run as another user (uid 65534) against a root server.
 * Speaks the protocol raw (util.ts), so nothing in the library's client helps or hinders it. Prints one JSON line.
 *
 * - `forge SOCKET DIR INO SIZE MTIME_S`: creates files in DIR until one gets inode number INO (at most 400 tries; a
 *   freed inode is reused at once on ext4), gives it the victim's SIZE and mtime, sends its fd, and reports what came
 *   back: { reused, cached, sha256, code }.
 * - `send SOCKET FILE`: sends FILE's fd; { cached, sha256, code }.
 * - `churn SOCKET FILE N`: loads FILE N times, changing its mtime before each and keeping every reply;
 *   { loaded, codes }.
 * - `noread SOCKET FILE N`: loads FILE, then sends N status requests and never reads a reply; waits for stdin to close.
 * - `flood SOCKET N`: opens N connections and sends nothing; { open, refused } once the server had its say.
 * - `ready`: { ready: true }, once every module it imports (the addon included) has loaded: the tests run it first,
 *   as uid 65534, to check that this user can run the attacker where they staged it.
 */
import { createHash } from 'node:crypto';
import { closeSync, constants as FS, fstatSync, ftruncateSync, openSync, unlinkSync, utimesSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { C, native } from '../../src/engine/binding.js';
import { MessageType } from '../../src/share/protocol.js';
import { connectRaw, frame, recvRaw } from './util.js';

const [cmd, socket, ...rest] = process.argv.slice(2);

/** The reply to one load request with `fd` attached: its bytes hashed from a mapping of the fd that came back. */
async function ask(s: number, fd: number, id: number): Promise<{ cached?: boolean; sha256?: string; code?: string }> {
  native.sendMsg(s, frame(MessageType.LoadRequest, id, { path: 'attacker' }), [fd]);
  const r = await recvRaw(s, 20_000);
  if (r === 'eof') return { code: 'eof' };
  if (r.type === MessageType.Error) return { code: String(r.body.code) };
  const size = Number(r.body.size);
  const out: { cached?: boolean; sha256?: string } = { cached: r.body.cached === true };
  if (size > 0) {
    const region = native.mmap(size, C.PROT_READ, C.MAP_SHARED, r.fds[0]!, 0, 0);
    if (typeof region === 'number') throw new Error(`mmap errno ${-region}`);
    const h = createHash('sha256');
    for (let off = 0; off < size; off += 1 << 30) h.update(new Uint8Array(native.view(region, off, Math.min(1 << 30, size - off))));
    out.sha256 = h.digest('hex');
    native.munmap(region);
  } else {
    out.sha256 = createHash('sha256').digest('hex');
  }
  for (const f of r.fds) closeSync(f);
  return out;
}

async function main(): Promise<unknown> {
  const s = () => connectRaw(socket!);
  switch (cmd) {
    case 'forge': {
      const [dir, ino, size, mtime] = rest as [string, string, string, string];
      let fd = -1;
      let reused = false;
      const made: string[] = [];
      for (let i = 0; i < 400 && !reused; i++) {
        const p = join(dir, `f${i}`);
        if (fd >= 0) closeSync(fd);
        fd = openSync(p, FS.O_CREAT | FS.O_RDWR, 0o644);
        made.push(p);
        reused = String(fstatSync(fd, { bigint: true }).ino) === ino;
      }
      // The attacker's own bytes, the victim's size and modification time.
      writeSync(fd, new TextEncoder().encode('attacker bytes, not the secret'), 0);
      ftruncateSync(fd, Number(size));
      const p = made.at(-1)!;
      utimesSync(p, Number(mtime), Number(mtime));
      const ro = openSync(p, FS.O_RDONLY);
      const r = await ask(s(), ro, 1);
      for (const m of made.slice(0, -1)) unlinkSync(m);
      const own = createHash('sha256');
      const bytes = new Uint8Array(Number(size));
      bytes.set(new TextEncoder().encode('attacker bytes, not the secret').subarray(0, bytes.length));
      own.update(bytes);
      return { reused, ...r, own: own.digest('hex') };
    }
    case 'send': {
      const fd = openSync(rest[0]!, FS.O_RDONLY | FS.O_NONBLOCK);
      // Never closed here: on a FUSE file whose daemon does not answer FLUSH, close() would hang this process.
      return ask(s(), fd, 1);
    }
    case 'churn': {
      const [file, n] = rest as [string, string];
      const c = s();
      const codes: string[] = [];
      const kept: number[] = [];
      let loaded = 0;
      for (let i = 0; i < Number(n); i++) {
        utimesSync(file, 1_600_000_000 + i, 1_600_000_000 + i);
        const fd = openSync(file, FS.O_RDONLY);
        native.sendMsg(c, frame(MessageType.LoadRequest, i + 1, { path: 'churn' }), [fd]);
        closeSync(fd);
        const r = await recvRaw(c, 20_000);
        if (r === 'eof') {
          codes.push('eof');
          break;
        }
        if (r.type === MessageType.Error) codes.push(String(r.body.code));
        else loaded++;
        if (r.type !== MessageType.Error) kept.push(...r.fds); // held: every version stays alive in this process
      }
      process.stdout.write(JSON.stringify({ loaded, codes }) + '\n');
      await new Promise((r) => process.stdin.once('close', r).resume());
      return undefined;
    }
    case 'noread': {
      const [file, n] = rest as [string, string];
      const c = s();
      const fd = openSync(file, FS.O_RDONLY);
      native.sendMsg(c, frame(MessageType.LoadRequest, 1, { path: 'noread' }), [fd]);
      let sent = 0;
      for (let i = 0; i < Number(n); i++) if (native.sendMsg(c, frame(MessageType.StatusRequest, i + 2, {}), []) > 0) sent++;
      process.stdout.write(JSON.stringify({ sent }) + '\n');
      await new Promise((r) => process.stdin.once('close', r).resume());
      return undefined;
    }
    case 'flood': {
      const n = Number(rest[0]);
      const fds: number[] = [];
      for (let i = 0; i < n; i++) {
        const fd = native.unixConnect(socket!);
        if (fd >= 0) fds.push(fd);
      }
      // A refused connection hears why (id 0) and is hung up on; an accepted one hears nothing.
      await new Promise((r) => setTimeout(r, 300));
      let refused = 0;
      const codes = new Set<string>();
      for (const fd of fds) {
        const r = await recvRaw(fd, 1).catch(() => undefined);
        if (r && r !== 'eof' && r.id === 0) {
          refused++;
          codes.add(String(r.body.code));
        }
      }
      process.stdout.write(JSON.stringify({ open: fds.length, refused, codes: [...codes] }) + '\n');
      await new Promise((r) => process.stdin.once('close', r).resume());
      return undefined;
    }
    case 'ready':
      return { ready: true };
    default:
      throw new Error(`unknown command ${cmd}`);
  }
}

main().then(
  (out) => {
    if (out !== undefined) process.stdout.write(JSON.stringify(out) + '\n');
    process.exit(0);
  },
  (e: Error) => {
    process.stderr.write(`${e.stack ?? e.message}\n`);
    process.exit(1);
  },
);
