/**
 * The I/O engine: moves byte ranges between a file and memory with several requests in flight, by io_uring or,
 * where io_uring is refused (seccomp: EPERM/ENOSYS, or an old kernel), by a pool of threads. Runs off the JS
 * thread; reports progress; stops within one request on abort. Two shapes: run() for one job of many segments,
 * and {@link IoQueue} for a stream of requests on one file (the writer, copy).
 */
import { AbortError, DmaloadSystemError, errnoCode, invalidValue } from '../core/errors.js';
import { native } from './binding.js';
import type { Queue, TransferOptions, TransferResult, TransferTarget } from './binding.js';

export type EngineName = 'uring' | 'threads';

export interface Tuning {
  /** Bytes per request (task size). Option `chunkSize`, env DMALOAD_CHUNK_SIZE. */
  chunk: number;
  /** Requests in flight. Option `queueDepth`, env DMALOAD_QUEUE_DEPTH. */
  depth: number;
}

let probed: { engine: EngineName; reason: string | undefined } | undefined;

/** The engine this process uses: io_uring when a ring can be set up, else threads (with the reason). */
export function engine(): { engine: EngineName; reason: string | undefined } {
  const forced = process.env.DMALOAD_ENGINE;
  if (forced === 'threads') return { engine: 'threads', reason: 'DMALOAD_ENGINE=threads' };
  // A misspelt value must not silently mean the default: say which ones there are.
  if (forced !== undefined && forced !== '' && forced !== 'uring')
    throw invalidValue('DMALOAD_ENGINE', forced, "must be 'threads' or 'uring' (or unset: io_uring where the kernel allows it)");
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
 * not thrown: the caller knows what it means); rejects with AbortError on abort and a system error on failure —
 * always after the job's last request has ended.
 */
export async function run(o: RunOptions): Promise<TransferResult & { engine: EngineName }> {
  // The library's AbortError (code ABORT_ERR), as every other abort of a transfer: not the signal's bare reason (a
  // DOMException, code 20), which a job of a later part met when the abort came between two parts' jobs.
  if (o.signal?.aborted) throw new AbortError(undefined, { cause: o.signal.reason });
  const { engine: eng } = engine();
  let progressError: { error: unknown } | undefined;
  const { tuning: t, path, signal, onProgress, ...rest } = o;
  const job = native.transfer(
    { ...rest, chunk: t.chunk, depth: t.depth, engine: eng },
    onProgress &&
      ((bytes) => {
        if (progressError) return;
        try {
          onProgress(bytes);
        } catch (e) {
          // A throwing callback ends the transfer with its own error rather than crashing the process.
          progressError = { error: e };
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
  if (progressError) throw progressError.error;
  // A failed request is the news, even when the job was also cancelled meanwhile.
  if (r.errno && r.errno !== native.constants.ECANCELED) throw new DmaloadSystemError(r.errno, r.syscall, path);
  if (r.cancelled || r.errno) throw new AbortError(undefined, { cause: signal?.reason });
  return { ...r, engine: eng };
}

/**
 * A persistent queue on one file: one native thread and ring for its whole life, any number of requests.
 * submit() resolves with the bytes moved (fewer than asked only at end of file for a read) and rejects with a
 * system error; close() waits for every request and releases the file.
 */
export class IoQueue {
  readonly engine: EngineName;
  #q: Queue | undefined;
  #path: string;

  constructor(fd: number, opts: { write: boolean; direct: boolean; depth: number; path: string; rwFlags?: number }) {
    this.engine = engine().engine;
    this.#path = opts.path;
    const q = native.queueOpen({ fd, write: opts.write, direct: opts.direct, depth: opts.depth, engine: this.engine, rwFlags: opts.rwFlags ?? 0 });
    // -errno: dup, io_uring_setup or the thread failed; nothing stays open.
    if (typeof q === 'number')
      throw new DmaloadSystemError(q, q === -native.constants.EAGAIN ? 'pthread_create' : this.engine === 'uring' ? 'io_uring_setup' : 'fcntl', opts.path);
    this.#q = q;
  }

  async submit(target: TransferTarget, bufOffset: number, fileOffset: number, length: number): Promise<number> {
    if (!this.#q) throw new AbortError('The queue is closed');
    const r = await native.queueSubmit(this.#q, target, bufOffset, fileOffset, length);
    if (r.errno === native.constants.ECANCELED) throw new AbortError();
    if (r.errno) throw new DmaloadSystemError(r.errno, r.syscall, this.#path);
    return r.bytes;
  }

  /** Requests not yet handed to the kernel end with AbortError; those in flight finish. */
  cancel(): void {
    if (this.#q) native.queueCancel(this.#q);
  }

  /** Waits for every request, then releases the thread and the file. Idempotent. */
  async close(): Promise<void> {
    const q = this.#q;
    this.#q = undefined;
    if (q) await native.queueClose(q);
  }
}
