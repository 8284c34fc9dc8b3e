/**
 * Received fds, handled without trusting the file system behind them.
 *
 * A client's fd may be on a file system that a user's process serves (FUSE): every call the server makes on it can
 * wait for that process, and close() always does (FUSE sends FLUSH on every close). So the server never makes such a
 * call on the JS thread:
 * - the file system is identified without touching the file: the mount id in /proc/self/fdinfo/N, looked up in
 *   /proc/self/mountinfo and in the client's own (/proc/PID/mountinfo: a mount in the client's namespace). FUSE is
 *   refused (ERR_SHARE_FS_UNSUPPORTED), and so is a mount neither can show (ERR_SHARE_FS_UNKNOWN: a mount detached
 *   from every namespace could be anything).
 * - statx and close run on native threads of their own (native/fdops.cc), each with a time bound: past it the request
 *   fails (ERR_SHARE_FD_TIMEOUT) and the thread is left to finish whenever the file system answers. A user whose fds
 *   keep threads stuck is cut off (see {@link FdGuard.stuck}).
 * @module
 */
import { readFileSync, readlinkSync } from 'node:fs';
import { DmaloadError, DmaloadSystemError } from '../core/errors.js';
import { native } from '../engine/binding.js';
import type { FdInspection } from '../engine/binding.js';

/** File system types whose calls reach a user's process: never inspected, read or kept. */
export const REFUSED_FS = /^(fuse|fuseblk|fuse\..*|cuse)$/;
/**
 * Stacking file systems: a file on one lives on other mounts (an overlay's lower and upper folders), whose own file
 * system — FUSE among them — serves every open and read. Accepted only as the server's own mount table shows them,
 * with every layer checked; one mounted in a client's namespace (a user namespace lets any user mount an overlay) is
 * refused: its layers are paths the server cannot even see.
 */
export const STACKED_FS = /^(overlay|overlayfs|ecryptfs|shiftfs|aufs|unionfs|mergerfs|wrapfs)$/;

/** Which mount an fd is on, from procfs alone (no call reaches the file's own file system). */
function mountOf(fd: number): number | undefined {
  try {
    const m = /^mnt_id:\s*(\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'latin1'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** One line of a mountinfo table. */
export interface MountLine {
  id: number;
  /** Where it is mounted (octal escapes undone). */
  point: string;
  type: string;
  /** The super block's options ("rw,lowerdir=…,upperdir=…"). */
  options: string;
}

/** mountinfo's octal escapes (\040 for a space, \011, \012, \134). */
const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

function mountTable(file: string): MountLine[] | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'latin1');
  } catch {
    return undefined;
  }
  const out: MountLine[] = [];
  for (const line of text.split('\n')) {
    // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue": the type follows " - ".
    const dash = line.indexOf(' - ');
    if (dash < 0) continue;
    const head = line.slice(0, dash).split(' ');
    const tail = line.slice(dash + 3).split(' ');
    out.push({ id: Number(head[0]), point: unescape(head[4] ?? ''), type: tail[0] ?? '', options: tail[2] ?? '' });
  }
  return out;
}

/** Where `fd`'s mount is: in the server's own table, or only in the client's (`pid`'s) namespace. */
export interface FdMount {
  type: string;
  where: 'server' | 'client';
  /** The table it was found in (the server's, or the client's), to look the layers of a stacked file system up in. */
  table: MountLine[] | undefined;
  line: MountLine;
}

/** The mount `fd` is on, from the server's mount table or else the client's (`pid`); undefined when neither shows it. */
export function mountOfFd(fd: number, pid: number | undefined): FdMount | undefined {
  const id = mountOf(fd);
  if (id === undefined) return undefined;
  const own = mountTable('/proc/self/mountinfo');
  const mine = own?.find((m) => m.id === id);
  if (mine) return { type: mine.type, where: 'server', table: own, line: mine };
  const table = pid ? mountTable(`/proc/${pid}/mountinfo`) : undefined;
  const theirs = table?.find((m) => m.id === id);
  return theirs && { type: theirs.type, where: 'client', table, line: theirs };
}

/**
 * Whether process `pid` is in the server's own user namespace. A mount namespace such a process can be in was made
 * by a privileged process (a container runtime), so its mounts are the system's; an unprivileged user's overlay needs
 * a user namespace of its own, and its processes are in that one.
 */
function sameUserNamespace(pid: number | undefined): boolean {
  if (!pid) return false;
  try {
    return readlinkSync(`/proc/${pid}/ns/user`) === readlinkSync('/proc/self/ns/user');
  } catch {
    return false;
  }
}

/** The mount holding `path` in `table`: the last mounted one whose mount point is `path` or a parent of it. */
function mountAt(table: MountLine[], path: string): MountLine | undefined {
  let best: MountLine | undefined;
  for (const m of table) {
    const p = m.point;
    if (path === p || path.startsWith(p.endsWith('/') ? p : `${p}/`)) {
      if (!best || p.length >= best.point.length) best = m;
    }
  }
  return best;
}

/**
 * Why a file on the stacked mount `m` (in the server's table) cannot be trusted, or undefined when every layer is on a
 * file system the kernel serves alone. An overlay's layers are its lowerdir, upperdir and workdir options; any other
 * stacking type, or layers that cannot be read, are refused.
 */
export function stackedRefusal(m: MountLine, table: MountLine[], depth = 0): string | undefined {
  if (!/^overlay(fs)?$/.test(m.type)) return `a ${m.type} file system, whose layers the server cannot check`;
  // Options are split at commas that are not escaped; layers at unescaped colons.
  const opts = m.options.split(/(?<!\\),/);
  const layers: string[] = [];
  for (const o of opts) {
    const eq = o.indexOf('=');
    const k = o.slice(0, eq);
    if (!['lowerdir', 'lowerdir+', 'upperdir', 'workdir', 'datadir+'].includes(k)) continue;
    for (const p of o.slice(eq + 1).split(/(?<!\\):/)) if (p) layers.push(unescape(p).replace(/\\([,:\\])/g, '$1'));
  }
  if (!layers.some((l) => l)) return 'an overlay whose layers its mount options do not name';
  for (const l of layers) {
    const under = mountAt(table, l);
    if (!under) return `an overlay whose layer '${l}' is on no mount the server sees`;
    // A layer that resolves to this very overlay is a path of another mount namespace: a container's root overlay
    // names the host's folders, which the server inside cannot see. The container runtime (the system) made it, no
    // user could; the path itself is never touched (a stat could wait on whatever serves it).
    if (under === m) continue;
    if (REFUSED_FS.test(under.type)) return `an overlay with a layer on ${under.type} ('${l}'), served by a user's process`;
    if (STACKED_FS.test(under.type)) {
      if (depth >= 2) return 'overlays stacked more than three deep';
      const why = stackedRefusal(under, table, depth + 1);
      if (why) return why;
    }
  }
  return undefined;
}

/** Who sent an fd: the connection's peer, for limits and logs. */
export interface Sender {
  uid: number;
  pid: number | undefined;
}

export interface FdGuardOptions {
  /** Milliseconds an inspection may take before the request fails. */
  timeoutMs: number;
  log: (line: string) => void;
}

/**
 * Native calls on received fds (each on a thread of its own) in flight at once, in all: the most threads a server
 * spends on clients' fds, however many fds arrive and however many never return.
 */
export const MAX_FD_THREADS = 64;
/** The same per user: one user's stuck fds can take no more than this share of {@link MAX_FD_THREADS}. */
export const MAX_FD_THREADS_PER_USER = 8;
/** Received fds one user may have waiting for a close thread; past it, the user's connections are cut off. */
export const MAX_PARKED_PER_USER = 4096;
/** A repeated log line (a call that has not returned) is written at most once per this many ms per user. */
const LOG_EVERY_MS = 5000;

/** A native call waiting for a thread. */
interface Waiting {
  uid: number;
  run: () => void;
}

/**
 * Received fds: inspected and closed off the JS thread, on at most {@link MAX_FD_THREADS} native threads at once
 * ({@link MAX_FD_THREADS_PER_USER} per user); stuck calls and fds waiting to be closed are counted per user.
 */
export class FdGuard {
  readonly #o: FdGuardOptions;
  /** Per uid: native calls on that user's fds that have not returned within the time bound. */
  readonly #stuck = new Map<number, number>();
  /** Native calls in progress (inspections and closes), in all and per uid. */
  #pending = 0;
  readonly #pendingBy = new Map<number, number>();
  /** Calls waiting for a thread, oldest first; fds waiting to be closed are among them ("parked"). */
  readonly #queue: Waiting[] = [];
  readonly #parkedBy = new Map<number, number>();
  /** Per uid: when a repeated line was last logged, and how many were left out since. */
  readonly #quiet = new Map<number, { at: number; skipped: number }>();
  #idle: (() => void) | undefined;

  constructor(o: FdGuardOptions) {
    this.#o = o;
  }

  /** Calls on `uid`'s fds still stuck past the time bound, and fds past the parking limit (the user is cut off). */
  stuck(uid: number): number {
    return (this.#stuck.get(uid) ?? 0) + ((this.#parkedBy.get(uid) ?? 0) >= MAX_PARKED_PER_USER ? 1_000_000 : 0);
  }

  /** Native calls in progress (threads spent on received fds now). */
  get pending(): number {
    return this.#pending;
  }

  /** Fds waiting for a thread to close them. */
  get parked(): number {
    let n = 0;
    for (const v of this.#parkedBy.values()) n += v;
    return n;
  }

  /** Logs `line` about `uid`, at most once per LOG_EVERY_MS, saying how many like it were left out. */
  #logQuiet(uid: number, line: string): void {
    const now = performance.now();
    const q = this.#quiet.get(uid);
    if (q && now - q.at < LOG_EVERY_MS) {
      q.skipped++;
      return;
    }
    this.#quiet.set(uid, { at: now, skipped: 0 });
    this.#o.log(q?.skipped ? `${line} (and ${q.skipped} more such lines for uid ${uid} left out)` : line);
  }

  #count(map: Map<number, number>, uid: number, d: number): void {
    const n = (map.get(uid) ?? 0) + d;
    if (n > 0) map.set(uid, n);
    else map.delete(uid);
  }

  /** Whether a call of `uid` may start a thread now. */
  #room(uid: number): boolean {
    return this.#pending < MAX_FD_THREADS && (this.#pendingBy.get(uid) ?? 0) < MAX_FD_THREADS_PER_USER;
  }

  #started(uid: number): void {
    this.#pending++;
    this.#count(this.#pendingBy, uid, 1);
  }

  #ended(uid: number): void {
    this.#pending--;
    this.#count(this.#pendingBy, uid, -1);
    // A thread is free: the oldest waiting call that may have it (another user's, when this one's share is used).
    for (let i = 0; i < this.#queue.length; i++) {
      const w = this.#queue[i]!;
      if (!this.#room(w.uid)) continue;
      this.#queue.splice(i, 1);
      w.run();
      break;
    }
    if (this.#pending === 0 && this.#queue.length === 0) this.#idle?.();
  }

  /** Runs `run` once a thread may be spent on `uid`'s fds: now, or when one of the bounded threads returns. */
  #whenRoom(uid: number, run: () => void): { cancel(): boolean } {
    if (this.#room(uid)) {
      run();
      return { cancel: () => false };
    }
    const w: Waiting = { uid, run };
    this.#queue.push(w);
    return {
      cancel: () => {
        const i = this.#queue.indexOf(w);
        if (i < 0) return false;
        this.#queue.splice(i, 1);
        return true;
      },
    };
  }

  /**
   * Runs a native fd call with the time bound (counted from the request, waiting for a thread included): resolves
   * with its result, or rejects with ERR_SHARE_FD_TIMEOUT once the bound passes (a call that started is then counted
   * as stuck for `from.uid` until it returns; one still waiting for a thread is dropped).
   */
  #bounded<T>(from: Sender, name: string, what: string, start: (cb: (r: T) => void) => number, dispose?: (r: T) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let late = false;
      let running = false;
      const timeout = () =>
        new DmaloadError(
          'ERR_SHARE_FD_TIMEOUT',
          `the file system of '${name}' did not answer ${what} within ${this.#o.timeoutMs} ms; the server does not wait for it`,
          { path: name },
        );
      const timer = setTimeout(() => {
        late = true;
        if (!running && slot.cancel()) return reject(timeout());
        this.#stuck.set(from.uid, (this.#stuck.get(from.uid) ?? 0) + 1);
        this.#logQuiet(from.uid, `uid ${from.uid}: ${what} of '${name}' has not returned after ${this.#o.timeoutMs} ms (its file system does not answer)`);
        reject(timeout());
      }, this.#o.timeoutMs);
      // Referenced: the native call's callback does not keep the process alive by itself (a call that never returns
      // must not), so this timer does, until the call returns or its time is up.
      const slot = this.#whenRoom(from.uid, () => {
        running = true;
        this.#started(from.uid);
        let rc: number;
        try {
          rc = start((r) => {
            clearTimeout(timer);
            if (late) this.#count(this.#stuck, from.uid, -1);
            this.#ended(from.uid);
            if (!late) resolve(r);
            else dispose?.(r); // what a call that returned too late made (an fd) is not the caller's any more
          });
        } catch (e) {
          clearTimeout(timer);
          this.#ended(from.uid);
          reject(e);
          return;
        }
        if (rc < 0) {
          clearTimeout(timer);
          this.#ended(from.uid);
          reject(new DmaloadSystemError(rc, 'fcntl', name));
        }
      });
    });
  }

  /**
   * What the server needs of a received fd: refuses FUSE and unknown mounts first (procfs only), then statx and
   * F_GETFL off the JS thread. The fd stays the caller's.
   */
  async inspect(fd: number, name: string, from: Sender): Promise<FdInspection> {
    const mount = mountOfFd(fd, from.pid);
    const type = mount?.type;
    if (mount === undefined || type === undefined) {
      // Sockets, pipes and anonymous inodes live on kernel-internal mounts no table shows: not files either way.
      let link = '';
      try {
        link = readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        /* gone */
      }
      if (!link.startsWith('/'))
        throw new DmaloadError('ERR_NOT_REGULAR_FILE', `'${name}' is not a regular file (${link || 'unknown'}); dmaload reads regular files only`, {
          path: name,
        });
      throw new DmaloadError(
        'ERR_SHARE_FS_UNKNOWN',
        `'${name}' is on a mount that neither the server nor the client's mount namespace shows, so the server cannot tell what serves it; send a file from a mounted file system`,
        { path: name },
      );
    }
    if (REFUSED_FS.test(type)) {
      throw new DmaloadError(
        'ERR_SHARE_FS_UNSUPPORTED',
        `'${name}' is on a ${type} file system, served by a user's process that the server will not wait for; copy the file to a local file system first`,
        { path: name },
      );
    }
    if (STACKED_FS.test(type)) {
      const why =
        mount.where === 'client' && !sameUserNamespace(from.pid)
          ? `a ${type} file system mounted in a user namespace (any user can mount one there, over a FUSE folder of their own)`
          : stackedRefusal(mount.line, mount.table!);
      if (why)
        throw new DmaloadError(
          'ERR_SHARE_FS_UNSUPPORTED',
          `'${name}' is on ${why}; the server will not wait for it: copy the file to a file system mounted by the system`,
          { path: name },
        );
    }
    const r = await this.#bounded<FdInspection | number>(from, name, 'statx', (cb) => native.fdInspect(fd, cb));
    if (typeof r === 'number') throw new DmaloadSystemError(r, 'statx', name);
    return r;
  }

  /**
   * A new read-only open file description of a received fd's file (O_DIRECT when `direct`), opened on one of the
   * bounded threads with the time bound, so an open that waits on a client's file system for good holds one of its
   * sender's threads, never libuv's shared pool; an fd opened after the bound is closed the same way. The caller owns
   * the fd and hands it back with release().
   */
  async reopen(fd: number, name: string, from: Sender, direct: boolean): Promise<number> {
    const r = await this.#bounded<number>(
      from,
      name,
      direct ? 'an open with O_DIRECT' : 'an open',
      (cb) => native.fdOpen(fd, direct, cb),
      (late) => late >= 0 && this.release([late], from, name),
    );
    if (r < 0) throw new DmaloadSystemError(r, 'open', name);
    return r;
  }

  /**
   * Closes received fds off the JS thread, each once a bounded thread is free for its sender (until then it is
   * parked, counted against the sender); a close that fails or hangs is logged (rate-limited), never thrown.
   */
  release(fds: readonly number[], from: Sender, name = 'a received fd'): void {
    for (const fd of fds) {
      this.#count(this.#parkedBy, from.uid, 1);
      this.#whenRoom(from.uid, () => {
        this.#count(this.#parkedBy, from.uid, -1);
        this.#closeNow(fd, from, name);
      });
    }
  }

  #closeNow(fd: number, from: Sender, name: string): void {
    let late = false;
    const timer = setTimeout(() => {
      late = true;
      this.#stuck.set(from.uid, (this.#stuck.get(from.uid) ?? 0) + 1);
      this.#logQuiet(from.uid, `uid ${from.uid}: close of '${name}' has not returned after ${this.#o.timeoutMs} ms (its file system does not answer)`);
    }, this.#o.timeoutMs);
    timer.unref();
    this.#started(from.uid);
    let rc: number;
    try {
      rc = native.fdClose(fd, (r: number) => {
        clearTimeout(timer);
        if (late) this.#count(this.#stuck, from.uid, -1);
        this.#ended(from.uid);
        if (r < 0) this.#logQuiet(from.uid, `uid ${from.uid}: close of '${name}': ${new DmaloadSystemError(r, 'close', name).message}`);
      });
    } catch (e) {
      // No thread could start (the system's limit): the fd stays open, parked again for a later try.
      clearTimeout(timer);
      this.#ended(from.uid);
      this.#logQuiet(from.uid, `uid ${from.uid}: close of '${name}' deferred: ${(e as Error).message}`);
      this.#count(this.#parkedBy, from.uid, 1);
      setTimeout(() => {
        this.#count(this.#parkedBy, from.uid, -1);
        this.release([fd], from, name);
      }, 1000).unref();
      return;
    }
    if (rc < 0) {
      clearTimeout(timer);
      this.#ended(from.uid);
    }
  }

  /** Resolves once no call is in progress or waiting, or after `ms` (stuck calls are not waited for). */
  async drain(ms: number): Promise<void> {
    if (this.#pending === 0 && this.#queue.length === 0) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms);
      this.#idle = () => {
        clearTimeout(t);
        resolve();
      };
    });
    this.#idle = undefined;
  }
}
