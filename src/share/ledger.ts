/**
 * What the server's buffers really hold: every byte a request made it allocate counts until nobody holds the buffer —
 * the cache, a reply in flight, or any client's fd or mapping, however it was duplicated, passed on or reopened.
 *
 * The kernel says when that is: each served memfd is watched with inotify (through /proc/self/fd/N), and IN_IGNORED
 * arrives when its last reference anywhere is gone (the memfd's dentry dies, and with it the watch). Until then its
 * bytes stay charged, to the budget and to the user whose request loaded it. IN_OPEN and IN_CLOSE_* give how many
 * open file descriptions others hold (every reply is its own reopen), which only guides what to evict first: a buffer
 * someone holds frees nothing when the cache lets it go.
 *
 * dma-bufs (udmabuf, dma-heap targets) are charged until the server drops them: the kernel gives no such event for
 * them, so clients holding one are not counted (docs/serve.md says so).
 * @module
 */
import { readFileSync } from 'node:fs';
import { closeFd, native } from '../engine/binding.js';
import { Watch } from './channel.js';

const I = native.fdConstants;

/** Bytes charged for one buffer. */
export interface Holding {
  readonly bytes: number;
  readonly uid: number;
  /** Open file descriptions others hold now (replies in flight included); -1 when unknown (after an overflow). */
  others: number;
  /** The charge is gone: the buffer was freed (or, untracked, dropped by the server). */
  freed: boolean;
  /** The inotify watch, or undefined when the buffer could not be watched (dma-bufs). */
  wd: number | undefined;
}

export class Ledger {
  #ifd: number;
  #watch: Watch | undefined;
  readonly #byWd = new Map<number, Holding>();
  readonly #byUid = new Map<number, number>();
  #used = 0;
  readonly #log: (line: string) => void;
  /** Called after a charge ends, or once nobody but the server holds a buffer (room for loads that wait). */
  onFreed: (() => void) | undefined;

  constructor(log: (line: string) => void) {
    this.#log = log;
    this.#ifd = native.inotifyInit();
    if (this.#ifd >= 0) {
      try {
        this.#watch = new Watch(this.#ifd, () => {
          this.drain();
          this.#watch?.arm(native.shareConstants.EPOLLIN);
        });
        this.#watch.arm(native.shareConstants.EPOLLIN);
      } catch (e) {
        closeFd(this.#ifd);
        this.#ifd = -1;
        this.#log(`inotify: ${(e as Error).message}; served buffers count only while the server holds them`);
      }
    } else {
      this.#log(`inotify_init: errno ${-this.#ifd}; served buffers count only while the server holds them`);
    }
  }

  /** Bytes charged now, in all. */
  get used(): number {
    return this.#used;
  }

  /** Bytes charged now to `uid`. */
  usedBy(uid: number): number {
    return this.#byUid.get(uid) ?? 0;
  }

  #add(uid: number, bytes: number): void {
    this.#used += bytes;
    const n = this.usedBy(uid) + bytes;
    if (n === 0) this.#byUid.delete(uid);
    else this.#byUid.set(uid, n);
  }

  /**
   * Charges `bytes` to `uid` for the buffer `fd` is open on, watched when `track` (memfds) so that the charge lasts
   * until the kernel reports the last reference gone.
   */
  charge(bytes: number, uid: number, fd: number, track: boolean): Holding {
    const h: Holding = { bytes, uid, others: 0, freed: false, wd: undefined };
    this.#add(uid, bytes);
    if (track && this.#ifd >= 0) {
      const wd = native.inotifyWatch(this.#ifd, fd, I.IN_OPEN | I.IN_CLOSE_WRITE | I.IN_CLOSE_NOWRITE);
      if (wd >= 0) {
        // One inode, one watch: the same wd twice would mean two buffers share an inode, which never happens.
        h.wd = wd;
        this.#byWd.set(wd, h);
      } else {
        this.#log(`inotify_add_watch: errno ${-wd}; this buffer counts only while the server holds it`);
      }
    }
    return h;
  }

  /**
   * The server let go of the buffer (its own fds are closed). An untracked charge ends here; a tracked one when the
   * kernel says so, which for a buffer nobody else holds is already queued: read it now.
   */
  dropped(h: Holding): void {
    if (h.freed) return;
    if (h.wd === undefined) return this.#free(h);
    this.drain();
  }

  #free(h: Holding): void {
    if (h.freed) return;
    h.freed = true;
    if (h.wd !== undefined) this.#byWd.delete(h.wd);
    this.#add(h.uid, -h.bytes);
    this.onFreed?.();
  }

  /** Applies every pending event (also called before budget decisions, so they see the latest state). */
  drain(): void {
    if (this.#ifd < 0) return;
    for (;;) {
      const ev = native.inotifyRead(this.#ifd);
      if (typeof ev === 'number') {
        this.#log(`inotify read: errno ${-ev}`);
        return;
      }
      if (ev.length === 0) return;
      for (let i = 0; i + 1 < ev.length; i += 2) {
        const wd = ev[i]!;
        const mask = ev[i + 1]!;
        if (mask & I.IN_Q_OVERFLOW) {
          this.#overflowed();
          continue;
        }
        const h = this.#byWd.get(wd);
        if (!h) continue;
        if (mask & I.IN_IGNORED) this.#free(h);
        else if (h.others >= 0 && mask & I.IN_OPEN) h.others++;
        else if (h.others >= 0 && mask & (I.IN_CLOSE_WRITE | I.IN_CLOSE_NOWRITE)) {
          h.others = Math.max(0, h.others - 1);
          // Nobody else holds it now: the cache may drop it to make room for a load that waits.
          if (h.others === 0) this.onFreed?.();
        }
      }
    }
  }

  /**
   * Events were lost (a client opening and closing a buffer fast enough to fill the queue). Which buffers still
   * exist is read back from the kernel (the watches listed in /proc/self/fdinfo of the inotify fd); how many
   * descriptions others hold is not known any more (-1): the cache may drop such a buffer, and the kernel's
   * IN_IGNORED then says whether that freed it.
   */
  #overflowed(): void {
    this.#log('inotify queue overflowed: rereading which buffers are still held');
    let text = '';
    try {
      text = readFileSync(`/proc/self/fdinfo/${this.#ifd}`, 'latin1');
    } catch {
      return;
    }
    const live = new Set([...text.matchAll(/^inotify wd:(\d+)/gm)].map((m) => Number(m[1])));
    for (const [wd, h] of [...this.#byWd]) {
      if (!live.has(wd)) this.#free(h);
      else h.others = -1;
    }
  }

  /** Stops watching; every charge ends (the server is closing). */
  close(): void {
    this.#watch?.close();
    this.#watch = undefined;
    if (this.#ifd >= 0) closeFd(this.#ifd);
    this.#ifd = -1;
    for (const h of [...this.#byWd.values()]) this.#free(h);
  }
}
