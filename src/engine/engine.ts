/**
 * The I/O engine: moves a byte range between a file and memory with several requests in flight, by io_uring or,
 * where io_uring is refused (seccomp: EPERM/ENOSYS, or an old kernel), by a pool of threads. Runs off the JS
 * thread; reports progress; stops within one request on abort.
 */
import { AbortError, DmaloadSystemError, errnoCode, requireMultiple } from '../core/errors.js';
import { native } from './binding.js';
import type { TransferOptions, TransferResult } from './binding.js';
import { MiB, intOption } from '../core/util.js';

export type EngineName = 'uring' | 'threads';

/** Defaults measured on this project's reference machine (see README, `npm run bench:load`). */
export const DEFAULT_CHUNK = 4 * MiB;
export const DEFAULT_DEPTH = 8;

export interface Tuning {
  /** Bytes per request (task size). Option `chunkSize`, env DMALOAD_CHUNK_SIZE. */
  chunk: number;
  /** Requests in flight. Option `queueDepth`, env DMALOAD_QUEUE_DEPTH. */
  depth: number;
}

export function tuning(opts: { chunkSize?: unknown; queueDepth?: unknown }): Tuning {
  const chunk = intOption('chunkSize', opts.chunkSize, 'DMALOAD_CHUNK_SIZE', DEFAULT_CHUNK, 4096, 1024 * MiB, true);
  requireMultiple('chunkSize', chunk, 4096); // direct I/O needs whole blocks in every request but the last
  const depth = intOption('queueDepth', opts.queueDepth, 'DMALOAD_QUEUE_DEPTH', DEFAULT_DEPTH, 1, 256);
  return { chunk, depth };
}

let probed: { engine: EngineName; reason: string | undefined } | undefined;

/** The engine this process uses: io_uring when a ring can be set up, else threads (with the reason). */
export function engine(): { engine: EngineName; reason: string | undefined } {
  const forced = process.env.DMALOAD_ENGINE;
  if (forced === 'threads') return { engine: 'threads', reason: 'DMALOAD_ENGINE=threads' };
  if (!probed) {
    const r = native.uringProbe();
    probed = r === 0 ? { engine: 'uring', reason: undefined } : { engine: 'threads', reason: `io_uring_setup failed with ${errnoCode(r)}` };
  }
  return probed;
}

export interface RunOptions extends Omit<TransferOptions, 'engine' | 'depth' | 'chunk'> {
  tuning: Tuning;
  path: string;
  signal?: AbortSignal | undefined;
  onProgress?: ((bytes: number) => void) | undefined;
}

/**
 * Runs one transfer to completion. Resolves with the native result when the bytes moved (a short read is reported,
 * not thrown: the caller knows what it means); rejects with AbortError on abort and a system error on failure.
 */
export async function run(o: RunOptions): Promise<TransferResult & { engine: EngineName }> {
  o.signal?.throwIfAborted();
  const { engine: eng } = engine();
  let progressError: unknown;
  const { tuning: t, path, signal, onProgress, ...rest } = o;
  const job = native.transfer(
    { ...rest, chunk: t.chunk, depth: t.depth, engine: eng },
    onProgress &&
      ((bytes) => {
        try {
          onProgress(bytes);
        } catch (e) {
          // A throwing callback ends the transfer with its own error rather than crashing the process.
          progressError ??= e;
          job.cancel();
        }
      }),
  );
  const onAbort = () => job.cancel();
  signal?.addEventListener('abort', onAbort, { once: true });
  let r: TransferResult;
  try {
    r = await job.promise;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
  if (progressError !== undefined) throw progressError;
  if (r.cancelled) throw new AbortError(undefined, { cause: signal?.reason });
  if (r.errno) throw new DmaloadSystemError(r.errno, r.syscall, path);
  return { ...r, engine: eng };
}
