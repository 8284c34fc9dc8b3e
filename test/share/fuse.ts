/**
 * A FUSE file system for attacking `dmaload serve`: test/share/fuse_daemon.py (Python standard library, raw
 * /dev/fuse, mount(2) as root; no libfuse or fusermount needed) serves one read-only file whose FLUSH hangs or fails,
 * or that stops answering after its first open. See the daemon's docstring for the modes.
 *
 * Careful in the hanging modes: once the daemon has read a request it does not answer, the caller waits in the kernel
 * in D state and even SIGKILL does not free it (only the daemon's death, which aborts the connection, does). So in
 * 'hang-flush' never open the file in the test process itself (every close of it, even at exit, hangs the thread), and
 * in 'hang-after-open' touch nothing under `dir` after the open: the hanging caller should be a child process, or a
 * thread of the server under test, never the thread that must call stop().
 */
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcessByStdio } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmdirSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { repoRoot } from '../helpers.js';

export type FuseMode = 'ok' | 'hang-flush' | 'eio-flush' | 'hang-after-open';

export interface FuseFs {
  /** The mount point (a fresh folder under the system temp folder). */
  dir: string;
  /** `dir/data`, the one file. */
  file: string;
  size: number;
  /** SHA-256 of the file's bytes, computed here by {@link fuseBytes} (not asked of the daemon). */
  sha256: string;
  /** The daemon's pid. */
  pid: number;
  /**
   * SIGKILLs the daemon (which aborts the connection: everything blocked on it returns, with ECONNABORTED or ENOTCONN),
   * waits for it to die, detaches the mount (umount -l) and removes the folder. Safe to call twice.
   */
  stop(): Promise<void>;
}

const DAEMON = join(repoRoot, 'test', 'share', 'fuse_daemon.py');
const SECTOR = 512;
const PERIOD = 256 * SECTOR;
/** Exit status of the daemon when the system refuses (no /dev/fuse, mount(2) failed): a reason to skip, not a bug. */
const REFUSED = 77;

let period: Uint8Array | undefined;

/**
 * Bytes [start, end) of the daemon's file: offset i holds (31i + 7(i >> 9)) & 255, except that the first 8 bytes of
 * each 512-byte sector hold the sector's number (uint64, little-endian), so that a sector served from the wrong offset
 * changes the hash. The daemon computes the same thing in Python; the tests check that the two agree.
 */
export function fuseBytes(start: number, end: number): Uint8Array {
  if (!period) {
    period = new Uint8Array(PERIOD);
    for (let i = 0; i < PERIOD; i++) period[i] = (31 * i + 7 * (i >> 9)) & 255;
  }
  const out = new Uint8Array(Math.max(0, end - start));
  for (let i = 0; i < out.length;) {
    const at = (start + i) % PERIOD;
    const n = Math.min(PERIOD - at, out.length - i);
    out.set(period.subarray(at, at + n), i);
    i += n;
  }
  for (let s = Math.floor(start / SECTOR); s * SECTOR < end; s++) {
    for (let b = 0, v = s; b < 8; b++, v = Math.floor(v / 256)) {
      const pos = s * SECTOR + b;
      if (pos >= start && pos < end) out[pos - start] = v & 255;
    }
  }
  return out;
}

/** SHA-256 of a file of `size` bytes made by {@link fuseBytes}, hashed in 8 MiB pieces. */
export function fuseSha256(size: number): string {
  const h = createHash('sha256');
  for (let at = 0; at < size; at += 8 * 1024 * 1024) h.update(fuseBytes(at, Math.min(size, at + 8 * 1024 * 1024)));
  return h.digest('hex');
}

/** Mounts still up, torn down at exit if a test did not stop them (a failed assertion before its stop()). */
const live = new Set<() => void>();
let exitHook = false;

/** Whether the process is gone or a zombie: either way it has closed its fds, so the FUSE connection is aborted. */
function dead(pid: number): boolean {
  try {
    return /^\d+ \(.*\) Z/s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

/**
 * Detaches the mount and removes the folder. The daemon must be dead first: with a live daemon that stopped
 * answering, anything that looks at `dir` (umount's own checks included) could block for good. -c (no canonicalize)
 * keeps umount from stat()ing the path at all; rmdir, not a recursive rm, so that a mount left up is never walked.
 */
function unmount(dir: string): void {
  spawnSync('umount', ['-l', '-c', dir], { stdio: 'ignore' });
  try {
    rmdirSync(dir);
  } catch {
    /* still mounted (umount failed) or already gone: nothing safe to do */
  }
}

/**
 * Mounts the FUSE file system in `mode` with a file of `size` bytes. Resolves with a reason string (for t.skip) where
 * it cannot run here: not root, no /dev/fuse, no python3, or mount(2) refused. Rejects if the daemon fails otherwise
 * or is not ready within `timeoutMs`: that is a bug in the harness, not a reason to skip.
 */
export async function startFuse(mode: FuseMode, size: number, opts: { timeoutMs?: number; base?: string } = {}): Promise<FuseFs | string> {
  if (process.getuid?.() !== 0) return 'mounting a FUSE file system without fusermount needs root';
  if (!existsSync('/dev/fuse')) return '/dev/fuse is missing (modprobe fuse)';
  // /tmp by default: other users must reach the mount (allow_other), and TMPDIR may be private (0700).
  const dir = mkdtempSync(join(opts.base ?? (existsSync('/tmp') ? '/tmp' : tmpdir()), 'dmaload-fuse-'));
  const p: ChildProcessByStdio<null, Readable, Readable> = spawn('python3', [DAEMON, dir, mode, String(size)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  p.stderr.on('data', (d: Buffer) => (err += d));
  const exited = new Promise<void>((res) => p.on('exit', () => res()));

  const teardownSync = (): void => {
    live.delete(teardownSync);
    try {
      p.kill('SIGKILL');
    } catch {
      /* already gone */
    }
    const deadline = performance.now() + 2000;
    while (p.pid !== undefined && !dead(p.pid) && performance.now() < deadline) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
    unmount(dir);
  };

  const ready = await new Promise<true | string | Error>((resolve) => {
    let out = '';
    const timer = setTimeout(
      () => resolve(new Error(`fuse_daemon.py not ready within ${opts.timeoutMs ?? 10_000} ms: ${err.trim()}`)),
      opts.timeoutMs ?? 10_000,
    );
    const done = (r: true | string | Error) => {
      clearTimeout(timer);
      resolve(r);
    };
    p.stdout.on('data', (d: Buffer) => {
      out += d;
      if (out.split('\n').includes('ready')) done(true);
    });
    p.on('error', (e: NodeJS.ErrnoException) => done(e.code === 'ENOENT' ? 'python3 is not installed; apt-get install python3' : e));
    p.on('exit', (code, signal) => {
      const why = `fuse_daemon.py exited (${signal ?? code}) before ready: ${err.trim()}`;
      done(code === REFUSED ? why : new Error(why));
    });
  });
  if (ready !== true) {
    teardownSync();
    if (ready instanceof Error) throw ready;
    return ready;
  }

  live.add(teardownSync);
  if (!exitHook) {
    exitHook = true;
    process.on('exit', () => [...live].forEach((f) => f()));
  }
  // A test that forgets stop() must not keep the runner alive: the exit hook cleans up instead.
  p.unref();
  (p.stdout as unknown as Socket).unref();
  (p.stderr as unknown as Socket).unref();

  let stopping: Promise<void> | undefined;
  return {
    dir,
    file: join(dir, 'data'),
    size,
    sha256: fuseSha256(size),
    pid: p.pid!,
    stop: () =>
      (stopping ??= (async () => {
        live.delete(teardownSync);
        p.ref(); // keeps the event loop alive until the exit below arrives
        if (p.exitCode === null && p.signalCode === null) {
          p.kill('SIGKILL');
          await Promise.race([exited, new Promise((r) => setTimeout(r, 5000).unref())]);
        }
        teardownSync();
      })()),
  };
}
