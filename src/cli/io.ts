/** What a CLI command writes to, so tests can call commands without a process. */
import { nearest } from '../api/options.js';
import { createHash } from 'node:crypto';
import { AbortError } from '../core/errors.js';
import type { ErrorCode } from '../core/errors.js';
import { formatBytes } from '../core/util.js';

export { printable } from '../core/util.js';

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
  readonly code = 'ERR_USAGE' satisfies ErrorCode;
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
      io.stderr(
        `\r${label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}% ${formatBytes(bytes)} / ${formatBytes(total)}  ${rate.toFixed(0)} MB/s `,
      );
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

/** The signal that interrupted the running command: main() then exits 128 + its number. */
let interruptedBy: NodeJS.Signals | undefined;

/** Which signal interrupted the command (see {@link onInterrupt}), and forgets it. */
export function takeInterrupt(): NodeJS.Signals | undefined {
  const sig = interruptedBy;
  interruptedBy = undefined;
  return sig;
}

const INTERRUPTS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/**
 * An AbortSignal for a command's work that fires on SIGINT, SIGTERM or SIGHUP, so the command unwinds and removes
 * what it made (the bench's data, a half-written file) instead of dying with it in place. A second signal while
 * unwinding gets the default action: a user who presses Ctrl-C twice means it.
 */
export function onInterrupt(): { signal: AbortSignal; dispose(): void } {
  const ac = new AbortController();
  const dispose = () => {
    for (const s of INTERRUPTS) process.off(s, handler);
  };
  function handler(sig: NodeJS.Signals) {
    dispose();
    interruptedBy = sig;
    ac.abort(new AbortError(`interrupted (${sig})`));
  }
  for (const s of INTERRUPTS) process.on(s, handler);
  return { signal: ac.signal, dispose };
}

/**
 * A parseArgs error in the CLI's words: an unknown flag named with the nearest flag the command's `help` lists
 * ("did you mean '--target'?"), instead of the parser's advice about positionals; any other as the parser says it.
 */
export function parseErrorMessage(e: unknown, help: string): string {
  const err = e as Error & { code?: string };
  if (!/UNKNOWN_OPTION$/.test(err.code ?? '')) return err.message;
  const flag = /'(-[^']*)'/.exec(err.message)?.[1];
  if (!flag) return err.message;
  const flags = [...new Set(help.match(/--[a-z][a-z0-9-]*/g) ?? [])].map((f) => f.slice(2));
  const near = nearest(flag.replace(/^-+/, '').replace(/=.*$/, ''), flags);
  return `unknown option '${flag}'${near ? `; did you mean '--${near}'?` : ''}`;
}
