/** Test helpers: seeded data files, hashes, and counts of this process's fds and mappings for leak checks. */
import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../src/native.js';

/** A fresh folder under the system temp dir (ext4 here: direct I/O works), removed by `cleanup()`. */
export function tempDir(prefix = 'dmaload-test-'): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(process.env.DMALOAD_TEST_DIR ?? tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Deterministic pseudo-random bytes (xorshift32), so every run writes the same files. */
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

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Writes `size` seeded bytes to `dir/name` in 16 MiB pieces; returns the path and the data's hash. */
export function makeFile(dir: string, name: string, size: number, seed = size): { path: string; sha256: string } {
  const path = join(dir, name);
  const fd = openSync(path, 'w');
  const h = createHash('sha256');
  const piece = 16 * 1024 * 1024;
  try {
    for (let off = 0, i = 0; off < size || (size === 0 && i === 0); off += piece, i++) {
      const b = seededBytes(Math.min(piece, size - off), seed + i);
      h.update(b);
      if (b.length) writeSync(fd, b);
    }
    // Written back, so that evicting it from the page cache (a clean page only) works.
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return { path, sha256: h.digest('hex') };
}

export function fileSha256(path: string): string {
  return sha256(readFileSync(path));
}

/** Open fds of this process. */
export function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/**
 * Mappings that dmaload made: the addon's exact count of live mmaps, and the memfd mappings the kernel lists in
 * /proc/self/maps (V8 maps and unmaps its own heap all the time, so a raw line count would be noise).
 */
export function mappings(): { live: number; memfds: number } {
  const maps = readFileSync('/proc/self/maps', 'utf8');
  return { live: native.liveMappings(), memfds: maps.split('\n').filter((l) => l.includes('memfd:dmaload')).length };
}

/** Asserts (by returning a message) that fds are back to where they were and mappings did not grow. */
export function leakCheck(): () => string | undefined {
  const fds0 = fdCount();
  const m0 = mappings();
  return () => {
    const fds = fdCount();
    const m = mappings();
    if (fds !== fds0) return `fd count ${fds0} -> ${fds}`;
    if (m.memfds !== m0.memfds) return `memfd mappings ${m0.memfds} -> ${m.memfds}`;
    if (m.live !== m0.live) return `live mappings ${m0.live} -> ${m.live}`;
    return undefined;
  };
}
