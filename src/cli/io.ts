/** What a CLI command writes to, so tests can call commands without a process. */
import { createHash } from 'node:crypto';
import { formatBytes } from '../core/util.js';

export interface CliIO {
  stdout(s: string): void;
  stderr(s: string): void;
  /** Draw progress on stderr (a terminal). */
  isTTY: boolean;
}

export const processIO: CliIO = {
  stdout: (s) => void process.stdout.write(s),
  stderr: (s) => void process.stderr.write(s),
  isTTY: Boolean(process.stderr.isTTY),
};

/** A usage error: exit status 2. */
export class UsageError extends Error {
  readonly code = 'ERR_USAGE';
}

/** A one-line progress bar on a terminal, redrawn in place; silent elsewhere. */
export function progressBar(io: CliIO, label: string): { update(bytes: number, total: number): void; done(): void } {
  if (!io.isTTY) return { update() {}, done() {} };
  const t0 = performance.now();
  let drawn = false;
  return {
    update(bytes, total) {
      const frac = total > 0 ? bytes / total : 1;
      const width = 30;
      const fill = Math.round(frac * width);
      const s = (performance.now() - t0) / 1000;
      const rate = s > 0 ? bytes / s / 1e6 : 0;
      io.stderr(`\r${label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}% ${formatBytes(bytes)} / ${formatBytes(total)}  ${rate.toFixed(0)} MB/s `);
      drawn = true;
    },
    done() {
      if (drawn) io.stderr('\r\x1b[K');
    },
  };
}

/** SHA-256 of a buffer of any size in 64 MiB windows, yielding to the event loop between them. */
export async function sha256(buffer: { windows(size: number): Iterable<Uint8Array> }): Promise<string> {
  const h = createHash('sha256');
  for (const w of buffer.windows(64 * 1024 * 1024)) {
    h.update(w);
    await new Promise((r) => setImmediate(r));
  }
  return h.digest('hex');
}
