/**
 * Verification while reading: a SHA-256 of the file computed on a native thread from the bytes as reads complete
 * (in file order, overlapped with the reads still in flight), never as a second pass over the file. Also where the
 * expected hash comes from when the caller gives none: a Hugging Face hub cache names every large file's blob by its
 * SHA-256 (`models--ORG--NAME/blobs/<sha256>`, with `snapshots/<rev>/<file>` a symlink to it).
 */
import { promises as fsp } from 'node:fs';
import { basename, dirname } from 'node:path';
import { AbortError, DmaloadError, DmaloadSystemError } from '../core/errors.js';
import { native } from '../engine/binding.js';
import type { HashResult, Hasher, Region } from '../engine/binding.js';
import * as engine from '../engine/engine.js';
import type { Tuning } from '../engine/engine.js';
import { anonymous } from '../engine/memory.js';
import type { OpenedFile } from './source.js';

/**
 * What a read checks its file against: a SHA-256 and where that came from ('computed': nothing, only report it;
 * 'hub': the hub's X-Linked-Etag for a file downloaded from it).
 */
export interface Expected {
  sha256: string | undefined;
  source: 'option' | 'hub-cache' | 'hub' | 'store' | 'computed';
}

/** What was verified: the file's SHA-256, computed while it was read and equal to the expected one. */
export interface VerifiedStats {
  algorithm: 'sha256';
  /** The file's SHA-256 (64 lowercase hex digits). */
  sha256: string;
  /**
   * What it was checked against: 'option' (the caller's `verify: { sha256 }`), 'hub-cache' (the name of the Hugging
   * Face cache blob the path resolves to), or 'computed' (`verify: true` with nothing to check against: only computed).
   */
  source: 'option' | 'hub-cache' | 'hub' | 'store' | 'computed';
  /** CPU time the hash thread spent (ms), overlapped with the reads. */
  hashMs: number;
  /** Bytes read only to hash them (loadRanges/loadModel: what no wanted range covers, the header included); 0 for load(). */
  extraBytes: number;
  /** 'openssl' (the OpenSSL Node carries), 'sha-ni' (dmaload's own loop on the x86 SHA extensions) or 'portable'. */
  impl: 'openssl' | 'sha-ni' | 'portable';
}

export const SHA256_HEX = /^[0-9a-f]{64}$/;

/**
 * The SHA-256 a hub-cache path promises: `path` resolves (through its symlinks) to `…/(models|datasets|spaces)--*
 * /blobs/<64 hex>`. A blob named by a git SHA-1 (40 hex digits: small files the hub stores in git) promises nothing.
 */
export async function hubCacheSha256(path: string): Promise<string | undefined> {
  const real = await fsp.realpath(path).catch(() => undefined);
  return real ? hubBlobSha256(real) : undefined;
}

/** {@link hubCacheSha256} of a path already resolved (no symlink left in it): asks the file system nothing. */
export function hubBlobSha256(real: string): string | undefined {
  const name = basename(real);
  const blobs = dirname(real);
  if (!SHA256_HEX.test(name) || basename(blobs) !== 'blobs' || !/^(models|datasets|spaces)--./.test(basename(dirname(blobs)))) return undefined;
  return name;
}

/** The error for a file whose hash is not the expected one. */
export function mismatch(path: string, expected: Expected & { sha256: string }, actual: string): DmaloadError {
  const from = {
    'hub-cache': 'its Hugging Face cache blob name',
    hub: "the hub's X-Linked-Etag",
    store: "the store's x-amz-checksum-sha256",
    option: 'the verify option',
    computed: 'the verify option',
  }[expected.source];
  const what =
    expected.source === 'hub-cache'
      ? 'delete the blob and download it again'
      : expected.source === 'hub' || expected.source === 'store'
        ? 'the bytes were damaged on the way or the object changed; load it again'
        : 'the file is corrupt or not the one expected; fetch it again';
  const e = new DmaloadError('ERR_CHECKSUM_MISMATCH', `'${path}' has SHA-256 ${actual} but ${from} says ${expected.sha256}: ${what}`, { path });
  Object.assign(e, { expected: expected.sha256, actual });
  return e;
}

/**
 * One file's running hash. Reads hand it their bytes through `hasher` (transfer's `hash` option) or feed();
 * `finish()` says no more will come and resolves with the result; `cancel()` stops it. One of the two must be
 * called: until then a native thread waits.
 */
export class HashStream {
  readonly hasher: Hasher;
  readonly total: number;
  #hashed = 0;
  #waiters: Array<{ at: number; resolve(): void; reject(e: unknown): void; signal: AbortSignal | undefined }> = [];
  #watched = new Map<AbortSignal, () => void>();
  #promise: Promise<HashResult>;
  #ended = false;

  constructor(total: number, path: string) {
    this.total = total;
    const h = native.hashOpen(total, (n) => {
      this.#hashed = n;
      this.#wake();
    });
    if (typeof h === 'number') throw new DmaloadSystemError(h, 'pthread_create', path);
    this.hasher = h.hasher;
    this.#promise = h.promise.then((r) => {
      this.#hashed = r.hashed;
      this.#ended = true;
      this.#wake();
      return r;
    });
  }

  feed(region: Region, bufOffset: number, fileOffset: number, length: number): void {
    native.hashFeed(this.hasher, region, bufOffset, fileOffset, length);
  }

  /**
   * Resolves once the first `bytes` of the file are hashed (or the stream ended, however far it got); rejects with
   * an AbortError when `signal` aborts first (the bytes before may never come: another read failed). However many
   * calls wait at once, a signal gets one listener from this stream, removed when none of them waits any more.
   */
  async waitFor(bytes: number, signal?: AbortSignal): Promise<void> {
    if (this.#hashed >= bytes || this.#ended) return;
    signal?.throwIfAborted();
    await new Promise<void>((resolve, reject) => {
      this.#waiters.push({ at: bytes, resolve, reject, signal });
      if (signal && !this.#watched.has(signal)) {
        const onAbort = () => {
          this.#watched.delete(signal);
          this.#waiters = this.#waiters.filter((w) => {
            if (w.signal !== signal) return true;
            w.reject(new AbortError(undefined, { cause: signal.reason }));
            return false;
          });
        };
        signal.addEventListener('abort', onAbort, { once: true });
        this.#watched.set(signal, onAbort);
      }
    });
  }

  #wake(): void {
    this.#waiters = this.#waiters.filter((w) => {
      if (this.#hashed < w.at && !this.#ended) return true;
      w.resolve();
      return false;
    });
    for (const [signal, onAbort] of this.#watched) {
      if (this.#waiters.some((w) => w.signal === signal)) continue;
      signal.removeEventListener('abort', onAbort);
      this.#watched.delete(signal);
    }
  }

  /** No more bytes will come: resolves with the digest (undefined unless every byte of the file was hashed). */
  finish(): Promise<HashResult> {
    native.hashEnd(this.hasher);
    return this.#promise;
  }

  /** Stops now; resolves once the hash thread has ended (it pins no memory any more). */
  cancel(): Promise<HashResult> {
    native.hashCancel(this.hasher);
    return this.#promise;
  }
}

/**
 * Hashes file ranges that no load reads (or a whole file, for `dmaload verify`): reads them into a small ring of
 * private memory by the engine, the hash following the reads, and a slot read again only once hashed. Memory is the
 * ring's, whatever the sizes. Resolves with the bytes read.
 */
export async function hashRanges(
  src: OpenedFile,
  ranges: ReadonlyArray<{ offset: number; length: number }>,
  hs: HashStream,
  o: { tuning: Tuning; signal?: AbortSignal | undefined; onProgress?: ((bytes: number) => void) | undefined },
): Promise<number> {
  const slot = Math.max(o.tuning.chunk, 8 << 20) * 4;
  const slots = 2;
  const total = ranges.reduce((n, r) => n + r.length, 0);
  if (total === 0) return 0;
  const block = src.direct ? src.align.offsetAlign : 1;
  const ring = anonymous(Math.min(slot, Math.ceil(total / block) * block + block) * slots, true, src.path);
  const slotLen = native.regionSize(ring) / slots;
  let done = 0;
  const jobs: Array<Promise<unknown> | undefined> = [];
  const slotEnd: number[] = [];
  try {
    let k = 0;
    for (const r of ranges) {
      for (let off = r.offset; off < r.offset + r.length;) {
        // Direct reads start on a block: start earlier and let the hash skip what it already has.
        const start = src.direct ? Math.floor(off / block) * block : off;
        const len = Math.min(slotLen - block, r.offset + r.length - start);
        const s = k++ % slots;
        await jobs[s];
        // The slot is free again once what was read into it is hashed.
        await hs.waitFor(Math.min(slotEnd[s] ?? 0, hs.total), o.signal);
        slotEnd[s] = start + len;
        o.signal?.throwIfAborted();
        // A network source reads into the ring through its own requests; they hash each piece as it lands.
        const remote = src.remote?.readInto(ring, [start, s * slotLen, len], { signal: o.signal ?? new AbortController().signal, hash: hs.hasher });
        const job = (
          remote
            ? remote.then(() => ({ short: false }))
            : engine.run({
                fd: src.direct ? src.directFd : src.fd,
                write: false,
                direct: src.direct,
                target: ring,
                segments: [start, s * slotLen, len],
                padTo: src.direct ? block : 1,
                bounce: false,
                populate: false,
                rwFlags: src.direct ? 0 : src.rwFlags,
                tuning: o.tuning,
                path: src.path,
                signal: o.signal,
                hash: hs.hasher,
              })
        ).then((res) => {
          if (res.short) throw new DmaloadError('ERR_FILE_CHANGED', `'${src.path}' became shorter while it was verified; verify it again`, { path: src.path });
          done += len;
          o.onProgress?.(done);
        });
        job.catch(() => {});
        jobs[s] = job;
        off = start + len;
      }
    }
    await Promise.all(jobs.filter((j) => j !== undefined));
    return done;
  } catch (e) {
    if (o.signal?.aborted && !(e instanceof AbortError)) throw new AbortError(undefined, { cause: o.signal.reason });
    throw e;
  } finally {
    await Promise.allSettled(jobs.filter((j) => j !== undefined));
    // The hasher pins the ring's pages it has not hashed yet: unmapping is deferred until then, never unsafe.
    native.munmap(ring);
  }
}

/**
 * What a read checks `path` against, or undefined (hash nothing): the caller's hash, else (verify 'auto' or true)
 * the hub-cache blob's name, else (verify true) nothing to compare, only a hash to report.
 */
export async function expectedFor(path: string, verify: 'auto' | boolean | { sha256: string }, resolved?: string): Promise<Expected | undefined> {
  if (verify === false) return undefined;
  if (typeof verify === 'object') return { sha256: verify.sha256, source: 'option' };
  const h = resolved !== undefined ? hubBlobSha256(resolved) : await hubCacheSha256(path);
  if (h) return { sha256: h, source: 'hub-cache' };
  return verify === true ? { sha256: undefined, source: 'computed' } : undefined;
}

/**
 * What a network read checks against: the caller's hash, else (verify 'auto' or true) the SHA-256 its source
 * promised (the hub's X-Linked-Etag), else (verify true) nothing to compare, only a hash to report.
 */
export function expectedFrom(promised: string | undefined, verify: 'auto' | boolean | { sha256: string }, from: 'hub' | 'store' = 'hub'): Expected | undefined {
  if (verify === false) return undefined;
  if (typeof verify === 'object') return { sha256: verify.sha256, source: 'option' };
  if (promised) return { sha256: promised, source: from };
  return verify === true ? { sha256: undefined, source: 'computed' } : undefined;
}

/** Ends a hash: its digest, or ERR_FILE_CHANGED when not every byte reached it (the file shrank while it was read). */
export async function digestOf(hs: HashStream, path: string): Promise<{ sha256: string; hashMs: number }> {
  const h = await hs.finish();
  if (h.digest === undefined)
    throw new DmaloadError(
      'ERR_FILE_CHANGED',
      `'${path}': only ${h.hashed} of ${hs.total} bytes could be hashed (the file changed while it was read); read it again`,
      { path },
    );
  return { sha256: h.digest, hashMs: Math.round(h.busyMs * 100) / 100 };
}

/** Ends a hash and checks it: {@link digestOf}, then ERR_CHECKSUM_MISMATCH when it differs from the expected one. */
export async function settle(hs: HashStream, path: string, expected: Expected): Promise<{ sha256: string; hashMs: number }> {
  const h = await digestOf(hs, path);
  if (expected.sha256 !== undefined && h.sha256 !== expected.sha256) throw mismatch(path, { ...expected, sha256: expected.sha256 }, h.sha256);
  return h;
}

/** The parts of [0, size) that no segment ([fileOffset, bufOffset, length, …]) reads. */
export function gaps(segments: readonly number[], size: number): Array<{ offset: number; length: number }> {
  const spans: Array<[number, number]> = [];
  for (let i = 0; i < segments.length; i += 3) spans.push([segments[i]!, segments[i]! + segments[i + 2]!]);
  spans.sort((a, b) => a[0] - b[0]);
  const out: Array<{ offset: number; length: number }> = [];
  let at = 0;
  for (const [s, e] of spans) {
    if (s > at) out.push({ offset: at, length: Math.min(s, size) - at });
    at = Math.max(at, e);
    if (at >= size) break;
  }
  if (at < size) out.push({ offset: at, length: size - at });
  return out.filter((g) => g.length > 0);
}
