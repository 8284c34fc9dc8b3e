/** Test helpers: seeded data files, hashes, and counts of this process's fds and mappings for leak checks. */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeSeededFile } from '../tools/bench/data.js';
import { evictPath } from '../src/pipeline/cache.js';
import { native } from '../src/engine/binding.js';
export { seededBytes } from '../tools/bench/data.js';

/** A fresh folder under the system temp dir (ext4 here: direct I/O works), removed by `cleanup()`. */
export function tempDir(prefix = 'dmaload-test-'): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(process.env.DMALOAD_TEST_DIR ?? tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Writes `size` seeded bytes to `dir/name`; returns the path and the data's hash. */
export function makeFile(dir: string, name: string, size: number, seed = size): { path: string; sha256: string } {
  const path = join(dir, name);
  return { path, sha256: writeSeededFile(path, size, seed) };
}

/** Drops a file's pages from the page cache (makeFile's files are written back, so this empties it). */
export const evictFile = evictPath;

/** Reads a file through the page cache so that all of it is resident. */
export function warmFile(path: string): void {
  readFileSync(path);
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
