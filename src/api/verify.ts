/**
 * verifyFile(): a file's SHA-256 at the device's speed — direct I/O into a small ring of private memory, the hash
 * on a native thread following the reads — checked against the expected one (the caller's, or a Hugging Face hub
 * cache blob's name). No page cache is left behind and memory use is the ring's, whatever the file's size.
 */
import { fstatSync } from 'node:fs';
import { cpuMsSince, msSince } from '../core/util.js';
import { native } from '../engine/binding.js';
import { pageCacheBytes, uncachedRead } from '../pipeline/cache.js';
import { fileChanged } from '../pipeline/source.js';
import { openRef } from '../pipeline/sources/open.js';
import type { SourceOptions } from '../pipeline/sources/resolve.js';
import type { IoMode } from '../pipeline/source.js';
import { HashStream, digestOf, expectedFor, expectedFrom, hashRanges } from '../pipeline/verify.js';
import { functionOption, ioOption, optionNames, optionsObject, pathOption, signalOption, sourceOption, tuning, verifyOption } from './options.js';

export interface VerifyFileOptions {
  /** The SHA-256 the file must have (64 hex digits). Default: the hub-cache blob name the path resolves to, if any. */
  sha256?: string;
  /** As load()'s: 'auto' (default) reads by direct I/O where the file system allows. */
  io?: IoMode;
  chunkSize?: number;
  queueDepth?: number;
  onProgress?: (p: { bytes: number; total: number }) => void;
  signal?: AbortSignal;
  /** For a URL or a hub reference: load()'s network options (docs/sources.md). */
  source?: SourceOptions;
}

export interface VerifyFileResult {
  path: string;
  size: number;
  /** The file's SHA-256. */
  sha256: string;
  /** What it was compared with, or undefined when nothing was expected (then `ok` is undefined too). */
  expected: string | undefined;
  /** 'option' (the sha256 option), 'hub-cache' (the blob's name), 'hub' (its X-Linked-Etag), or 'computed'. */
  source: 'option' | 'hub-cache' | 'hub' | 'store' | 'computed';
  /** true: the hashes match; false: they differ; undefined: nothing was expected. */
  ok: boolean | undefined;
  /** The reads: 'direct', or 'uncached'/'buffered' where the file system has no direct I/O; 'network' for a URL. */
  io: 'direct' | 'uncached' | 'buffered' | 'network';
  ms: number;
  cpuMs: number;
  bytesPerSec: number;
  /** Bytes of the file in the page cache afterwards; null where this user cannot know (a file it may not write). */
  pageCacheBytes: number | null;
  impl: 'openssl' | 'sha-ni' | 'portable';
}

const VERIFY_FILE_OPTIONS = optionNames<VerifyFileOptions>()(['sha256', 'io', 'chunkSize', 'queueDepth', 'onProgress', 'signal', 'source']);

/**
 * Hashes the file at `path` and compares the hash with the expected one. A mismatch is not thrown: `ok` is false
 * (the CLI's `dmaload verify` exits 1); use load()'s `verify` option to refuse a corrupt file while loading it.
 * @throws system errors (ENOENT, …), ERR_NOT_REGULAR_FILE, ERR_FILE_CHANGED, AbortError, ERR_INVALID_ARG_*
 */
export async function verifyFile(path: string, options: VerifyFileOptions = {}): Promise<VerifyFileResult> {
  pathOption('path', path);
  const o = optionsObject(options, VERIFY_FILE_OPTIONS, 'verifyFile()');
  const given = o.sha256 === undefined ? undefined : verifyOption({ sha256: o.sha256 });
  const io = ioOption(o.io);
  const tune = tuning('read', o);
  const onProgress = functionOption<NonNullable<VerifyFileOptions['onProgress']>>('onProgress', o.onProgress);
  const signal = signalOption(o.signal);
  signal?.throwIfAborted();
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  const src = await openRef(path, io, { ...sourceOption(o.source), signal });
  let hs: HashStream | undefined;
  try {
    const expected = (src.remote ? expectedFrom(src.remote.sha256, given ?? true, src.remote.sha256From) : await expectedFor(src.path, given ?? true))!;
    hs = new HashStream(src.size, path);
    const stream = hs;
    await uncachedRead(src.fd, src.direct ? 0 : src.rwFlags, src.size, 0, () =>
      hashRanges(src, [{ offset: 0, length: src.size }], stream, {
        tuning: tune,
        signal,
        onProgress: onProgress && ((bytes) => onProgress({ bytes, total: src.size })),
      }),
    );
    const now = src.remote ? src.size : fstatSync(src.fd).size;
    if (now !== src.size) fileChanged(path, 'verify', src.size, now);
    const h = await digestOf(hs, path);
    hs = undefined;
    const ms = msSince(t0);
    return {
      path,
      size: src.size,
      sha256: h.sha256,
      expected: expected.sha256,
      source: expected.source,
      ok: expected.sha256 === undefined ? undefined : expected.sha256 === h.sha256,
      io: src.remote ? 'network' : src.direct ? 'direct' : src.rwFlags ? 'uncached' : 'buffered',
      ms,
      cpuMs: cpuMsSince(c0),
      bytesPerSec: ms > 0 ? Math.round(src.size / (ms / 1000)) : 0,
      pageCacheBytes: src.remote ? 0 : pageCacheBytes(src.fd, src.size),
      impl: native.sha256Impl,
    };
  } finally {
    if (hs) await hs.cancel();
    await src.close();
  }
}
