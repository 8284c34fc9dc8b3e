/** Seeded test data: the bench's generated files and the tests' files come from the same generator. */
import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, openSync, promises as fsp, statfsSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Deterministic pseudo-random bytes (xorshift32): the same seed gives the same bytes on every machine. */
export function seededBytes(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  const words = new Uint32Array(out.buffer, 0, size >>> 2);
  let x = seed >>> 0 || 0x9e3779b9;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = x;
  }
  for (let i = words.length * 4; i < size; i++) out[i] = (x = (x * 1103515245 + 12345) >>> 0) >>> 24;
  return out;
}

const PIECE = 16 * 1024 * 1024;

/**
 * Writes `size` seeded bytes to `path` in 16 MiB pieces and fsyncs it (so its clean pages can be evicted);
 * returns the data's SHA-256.
 */
export function writeSeededFile(path: string, size: number, seed = size): string {
  const fd = openSync(path, 'w');
  const h = createHash('sha256');
  try {
    for (let off = 0, i = 0; off < size; off += PIECE, i++) {
      const b = seededBytes(Math.min(PIECE, size - off), seed + i);
      h.update(b);
      for (let w = 0; w < b.length;) w += writeSync(fd, b, w);
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

/**
 * {@link writeSeededFile} (the same bytes) without holding the event loop for gigabytes: each piece is written on
 * libuv's pool, and `signal` stops it between pieces (the caller removes the partial file).
 */
export async function writeSeededFileAsync(path: string, size: number, seed = size, signal?: AbortSignal): Promise<string> {
  const fh = await fsp.open(path, 'w');
  const h = createHash('sha256');
  try {
    for (let off = 0, i = 0; off < size; off += PIECE, i++) {
      signal?.throwIfAborted();
      const b = seededBytes(Math.min(PIECE, size - off), seed + i);
      h.update(b);
      for (let w = 0; w < b.length;) w += (await fh.write(b, w)).bytesWritten;
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

/**
 * A folder on a disk for the benchmark scripts' data: DMALOAD_BENCH_DIR, else the system temp folder unless it is
 * tmpfs (no direct I/O there), else .cache under the project.
 */
export function benchDiskDir(): string {
  const forced = process.env.DMALOAD_BENCH_DIR;
  if (forced) return forced;
  const tmpfs = 0x01021994;
  return statfsSync(tmpdir()).type === tmpfs ? join(resolve(dirname(fileURLToPath(import.meta.url)), '../../..'), '.cache') : tmpdir();
}
