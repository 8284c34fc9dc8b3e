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

/** Which mount an fd is on, from procfs alone (no call reaches the file's own file system). */
function mountOf(fd: number): number | undefined {
  try {
    const m = /^mnt_id:\s*(\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'latin1'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** The file system type of mount `id` in a mountinfo table, or undefined when it is not there. */
function fsTypeIn(file: string, id: number): string | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'latin1');
  } catch {
    return undefined;
  }
  const prefix = `${id} `;
  for (const line of text.split('\n')) {
    if (!line.startsWith(prefix)) continue;
    // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue": the type follows " - ".
    const rest = line.slice(line.indexOf(' - ') + 3);
    return rest.split(' ')[0];
  }
  return undefined;
}

/**
 * The type of the file system `fd` is on ('ext4', 'tmpfs', 'fuse.sshfs'), from the server's mount table or the
 * client's (`pid`); undefined when neither shows the mount.
 */
export function fsTypeOf(fd: number, pid: number | undefined): string | undefined {
  const id = mountOf(fd);
  if (id === undefined) return undefined;
  return fsTypeIn('/proc/self/mountinfo', id) ?? (pid ? fsTypeIn(`/proc/${pid}/mountinfo`, id) : undefined);
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

/** Received fds: inspected and closed off the JS thread, with stuck calls counted per user. */
export class FdGuard {
  readonly #o: FdGuardOptions;
  /** Per uid: native calls on that user's fds that have not returned within the time bound. */
  readonly #stuck = new Map<number, number>();
  /** Native calls in progress (inspections and closes), for close() of the server. */
  #pending = 0;
  #idle: (() => void) | undefined;

  constructor(o: FdGuardOptions) {
    this.#o = o;
  }

  /** Calls on `uid`'s fds still stuck past the time bound. */
  stuck(uid: number): number {
    return this.#stuck.get(uid) ?? 0;
  }

  /** Native calls in progress. */
  get pending(): number {
    return this.#pending;
  }

  #started(): void {
    this.#pending++;
  }

  #ended(): void {
    if (--this.#pending === 0) this.#idle?.();
  }

  /**
   * Runs a native fd call with the time bound: resolves with its result, or rejects with ERR_SHARE_FD_TIMEOUT once
   * the bound passes (the call is then counted as stuck for `from.uid` until it returns).
   */
  #bounded<T>(from: Sender, name: string, what: string, start: (cb: (r: T) => void) => number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let late = false;
      const timer = setTimeout(() => {
        late = true;
        this.#stuck.set(from.uid, this.stuck(from.uid) + 1);
        this.#o.log(`uid ${from.uid}: ${what} of '${name}' has not returned after ${this.#o.timeoutMs} ms (its file system does not answer)`);
        reject(
          new DmaloadError(
            'ERR_SHARE_FD_TIMEOUT',
            `the file system of '${name}' did not answer ${what} within ${this.#o.timeoutMs} ms; the server does not wait for it`,
            { path: name },
          ),
        );
      }, this.#o.timeoutMs);
      // Referenced: the native call's callback does not keep the process alive by itself (a call that never returns
      // must not), so this timer does, until the call returns or its time is up.
      this.#started();
      let rc: number;
      try {
        rc = start((r) => {
          clearTimeout(timer);
          if (late) {
            const n = this.stuck(from.uid) - 1;
            if (n > 0) this.#stuck.set(from.uid, n);
            else this.#stuck.delete(from.uid);
          }
          this.#ended();
          resolve(r);
        });
      } catch (e) {
        rc = -1;
        clearTimeout(timer);
        this.#ended();
        reject(e);
        return;
      }
      if (rc < 0) {
        clearTimeout(timer);
        this.#ended();
        reject(new DmaloadSystemError(rc, 'fcntl', name));
      }
    });
  }

  /**
   * What the server needs of a received fd: refuses FUSE and unknown mounts first (procfs only), then statx and
   * F_GETFL off the JS thread. The fd stays the caller's.
   */
  async inspect(fd: number, name: string, from: Sender): Promise<FdInspection> {
    const type = fsTypeOf(fd, from.pid);
    if (type === undefined) {
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
    const r = await this.#bounded<FdInspection | number>(from, name, 'statx', (cb) => native.fdInspect(fd, cb));
    if (typeof r === 'number') throw new DmaloadSystemError(r, 'statx', name);
    return r;
  }

  /** Closes received fds off the JS thread; a close that fails or hangs is logged, never thrown. */
  release(fds: readonly number[], from: Sender, name = 'a received fd'): void {
    for (const fd of fds) {
      this.#bounded<number>(from, name, 'close', (cb) => native.fdClose(fd, cb)).then(
        (rc) => rc < 0 && this.#o.log(`uid ${from.uid}: close of '${name}': ${new DmaloadSystemError(rc, 'close', name).message}`),
        () => {
          /* logged by the timer */
        },
      );
    }
  }

  /** Resolves once no call is in progress, or after `ms` (stuck calls are not waited for). */
  async drain(ms: number): Promise<void> {
    if (this.#pending === 0) return;
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
