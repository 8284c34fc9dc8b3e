/**
 * Admission to the share server's budget: a load that does not fit now waits until it does, instead of failing while
 * other clients are about to close what they hold. Waiters are served fairly across users — round robin over the
 * users that wait, first come first served within one user — so one user's queue cannot starve another's. A load
 * larger than the whole budget (or a user's share) fails at once; a wait longer than the bound fails with
 * ERR_MEMORY_BUDGET saying how long it waited.
 * @module
 */
import { DmaloadError } from '../core/errors.js';
import { formatBytes } from '../core/util.js';

export interface AdmissionOptions {
  /** Milliseconds a load may wait for room before ERR_MEMORY_BUDGET. */
  waitMs: number;
  /** Makes room for `charge` more bytes of `uid` if it can (evicting what only the cache holds): whether they fit. */
  fits: (charge: number, uid: number) => boolean;
  /** Takes the room (reserves the bytes); called in the same turn as a `fits` that said yes. */
  take: (charge: number, uid: number) => void;
  /** Why `charge` bytes of `uid` do not fit, for the error after the wait. */
  why: (charge: number, uid: number, name: string) => string;
  /** The server closing: every waiter fails. */
  signal: AbortSignal;
}

interface Waiter {
  charge: number;
  uid: number;
  name: string;
  since: number;
  timer: NodeJS.Timeout;
  resolve: () => void;
  reject: (e: unknown) => void;
}

export class Admission {
  readonly #o: AdmissionOptions;
  /** Per uid, its waiters in arrival order; Map order is the round robin's. */
  readonly #queues = new Map<number, Waiter[]>();

  constructor(o: AdmissionOptions) {
    this.#o = o;
    o.signal.addEventListener('abort', () => {
      for (const q of this.#queues.values()) for (const w of q) this.#fail(w, o.signal.reason);
      this.#queues.clear();
    });
  }

  /** Loads waiting for room now. */
  get queued(): number {
    let n = 0;
    for (const q of this.#queues.values()) n += q.length;
    return n;
  }

  /**
   * Resolves once `charge` bytes of `uid` are reserved: at once when they fit and nobody waits before them, else when
   * room is made for them (see {@link wake}); rejects with ERR_MEMORY_BUDGET after the wait bound.
   */
  admit(charge: number, uid: number, name: string): Promise<void> {
    if (this.#queues.size === 0 && this.#o.fits(charge, uid)) {
      this.#o.take(charge, uid);
      return Promise.resolve();
    }
    this.#o.signal.throwIfAborted();
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = {
        charge,
        uid,
        name,
        since: performance.now(),
        resolve,
        reject,
        timer: setTimeout(() => {
          this.#remove(w);
          const waited = Math.round(performance.now() - w.since);
          this.#fail(
            w,
            new DmaloadError('ERR_MEMORY_BUDGET', `${this.#o.why(charge, uid, name)} (waited ${waited} ms for room; the server waits ${this.#o.waitMs} ms)`),
          );
        }, this.#o.waitMs),
      };
      const q = this.#queues.get(uid);
      if (q) q.push(w);
      else this.#queues.set(uid, [w]);
      // Others wait, but maybe only for room this one does not need (another user's bigger load): its turn now.
      this.wake();
    });
  }

  /**
   * Room may have been made (a buffer freed, a load ended): admits waiters while they fit, taking each user's first
   * waiter in turn; a user whose first waiter does not fit keeps its place, and the others still get their turn.
   */
  wake(): void {
    let admitted = true;
    while (admitted && this.#queues.size > 0) {
      admitted = false;
      for (const [uid, q] of [...this.#queues]) {
        const w = q[0]!;
        if (!this.#o.fits(w.charge, uid)) continue;
        this.#o.take(w.charge, uid);
        this.#remove(w);
        clearTimeout(w.timer);
        w.resolve();
        admitted = true;
        // The user goes to the back of the round robin.
        const rest = this.#queues.get(uid);
        if (rest) {
          this.#queues.delete(uid);
          this.#queues.set(uid, rest);
        }
      }
    }
  }

  #remove(w: Waiter): void {
    const q = this.#queues.get(w.uid);
    if (!q) return;
    const i = q.indexOf(w);
    if (i >= 0) q.splice(i, 1);
    if (q.length === 0) this.#queues.delete(w.uid);
  }

  #fail(w: Waiter, e: unknown): void {
    clearTimeout(w.timer);
    w.reject(e);
  }
}

/** The message of a load that can never fit (bigger than the budget or a user's share). */
export function neverFits(charge: number, budget: number, perUser: number | undefined, name: string): string | undefined {
  if (charge > budget)
    return `'${name}' needs ${formatBytes(charge)} but the server's budget is ${formatBytes(budget)}; start the server with a larger budget (--budget)`;
  if (perUser !== undefined && charge > perUser)
    return `'${name}' needs ${formatBytes(charge)} but the server allows each user ${formatBytes(perUser)}; its operator can raise that (--per-user-budget)`;
  return undefined;
}
