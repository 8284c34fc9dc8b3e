/** Helpers for the share tests: a raw protocol client built on the addon alone, child processes, settling counts. */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../src/engine/binding.js';
import { HEADER_SIZE, MAGIC, MAX_MESSAGE, VERSION } from '../../src/share/protocol.js';
import { repoRoot } from '../helpers.js';

export const EAGAIN = -11;

/** A message as the protocol frames it, built here by hand (not with the library's encode()). */
export function frame(type: number, id: number, body: unknown, opts: { magic?: Uint8Array; version?: number; bodyLength?: number } = {}): Uint8Array {
  const json = new TextEncoder().encode(typeof body === 'string' ? body : JSON.stringify(body));
  const out = new Uint8Array(HEADER_SIZE + json.length);
  const dv = new DataView(out.buffer);
  out.set(opts.magic ?? MAGIC, 0);
  dv.setUint16(4, opts.version ?? VERSION, true);
  dv.setUint16(6, type, true);
  dv.setUint32(8, id, true);
  dv.setUint32(12, opts.bodyLength ?? json.length, true);
  out.set(json, HEADER_SIZE);
  return out;
}

export interface RawReply {
  type: number;
  id: number;
  body: Record<string, unknown>;
  fds: number[];
}

/** Waits for one message on a raw socket: the reply, or 'eof' when the server closed the connection. */
export async function recvRaw(fd: number, timeoutMs = 5000): Promise<RawReply | 'eof'> {
  const buf = new Uint8Array(MAX_MESSAGE + 1);
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const r = native.recvMsg(fd, buf, 64);
    if (r === EAGAIN) {
      if (performance.now() > deadline) throw new Error(`no reply within ${timeoutMs} ms`);
      await new Promise((res) => setImmediate(res));
      continue;
    }
    if (typeof r === 'number') {
      if (r === -104) return 'eof'; // ECONNRESET
      throw new Error(`recvmsg: errno ${-r}`);
    }
    const [length = 0, , ...fds] = r;
    if (length === 0 && fds.length === 0) return 'eof';
    const dv = new DataView(buf.buffer, 0, HEADER_SIZE);
    const body = JSON.parse(new TextDecoder().decode(buf.subarray(HEADER_SIZE, length))) as Record<string, unknown>;
    return { type: dv.getUint16(6, true), id: dv.getUint32(8, true), body, fds };
  }
}

/** Connects a raw socket, retrying while the backlog is full. */
export function connectRaw(path: string): number {
  const fd = native.unixConnect(path);
  if (fd < 0) throw new Error(`connect ${path}: errno ${-fd}`);
  return fd;
}

/** Polls `check` until it returns undefined (settled) or the time runs out; resolves with its last answer. */
export async function settle(check: () => string | undefined, ms = 3000): Promise<string | undefined> {
  const deadline = performance.now() + ms;
  let last = check();
  while (last !== undefined && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 5));
    last = check();
  }
  return last;
}

/** Runs `node dist/test/share/child.js ...args`; resolves with its exit code, stdout and stderr. */
export function child(
  args: string[],
  opts: { timeoutMs?: number; uid?: number; gid?: number; onSpawn?: (pid: number) => void } = {},
): Promise<{ code: number | null; signal: string | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [join(repoRoot, 'dist', 'test', 'share', 'child.js'), ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(opts.uid === undefined ? {} : { uid: opts.uid }),
      ...(opts.gid === undefined ? {} : { gid: opts.gid }),
    });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d));
    p.stderr.on('data', (d: Buffer) => (err += d));
    if (p.pid !== undefined) opts.onSpawn?.(p.pid);
    const timer = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    p.on('error', reject);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, out, err });
    });
  });
}

/**
 * A folder for sockets, in the system temp folder: a Unix socket's path holds at most 107 bytes, and the tests' data
 * folder (which must do direct I/O) can be deep inside a checkout. `cleanup()` removes it.
 */
export function socketDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'dmaload-sock-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
