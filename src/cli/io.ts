/** What a CLI command writes to, so tests can call commands without a process. */
import { nearest } from '../api/options.js';
import { createHash } from 'node:crypto';
import { AbortError } from '../core/errors.js';
import type { ErrorCode } from '../core/errors.js';
import { formatBytes, printable } from '../core/util.js';

export { printable };

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

/**
 * A usage error: exit status 2. Its code is ERR_USAGE, or the library's code for a flag's value it refused
 * (ERR_OUT_OF_RANGE, …); `flag` names the flag or variable when there is one.
 */
export class UsageError extends Error {
  readonly code: ErrorCode;
  readonly flag: string | undefined;
  constructor(message: string, code: ErrorCode = 'ERR_USAGE', flag?: string) {
    super(message);
    this.code = code;
    this.flag = flag;
  }
}

/** What the CLI says of an error, in text and in --json alike. */
export interface ErrorReport {
  code: string | undefined;
  message: string;
  /** The file it is about, where there is one. */
  path?: string;
  /** The flag or variable a usage error is about, where there is one. */
  flag?: string;
}

export function errorReport(e: unknown): ErrorReport {
  const err = e as Error & { code?: unknown; path?: unknown; flag?: unknown };
  return {
    code: typeof err?.code === 'string' ? err.code : undefined,
    message: err instanceof Error ? err.message : String(e),
    ...(typeof err?.path === 'string' && err.path !== '' ? { path: err.path } : {}),
    ...(typeof err?.flag === 'string' ? { flag: err.flag } : {}),
  };
}

/**
 * An error as one line of text: `CODE: message (path)`, the code said once (a system error's message starts with
 * it already) and the path added where the message does not name it; escaped for the terminal (messages quote
 * names from files).
 */
export function errorText(r: ErrorReport): string {
  const code = r.code && !r.message.startsWith(r.code) ? `${r.code}: ` : '';
  const path = r.path && !r.message.includes(r.path) ? ` (${r.path})` : '';
  return printable(`${code}${r.message}${path}`, '\n');
}

/** The one JSON document of a command that failed with --json: `{ "error": { code, message, path?, flag? } }`. */
export function errorJson(r: ErrorReport): string {
  return JSON.stringify({ error: r }) + '\n';
}

/** Whether argv asks for --json (before a `--` that ends the options). */
export function wantsJson(argv: readonly string[]): boolean {
  const end = argv.indexOf('--');
  return (end < 0 ? argv : argv.slice(0, end)).includes('--json');
}

/** Reports a usage error of `cmd`: exit status 2. As JSON with `json`; else the message and where to find help. */
export function reportUsage(io: Pick<CliIO, 'stdout' | 'stderr'>, cmd: string, e: UsageError, json: boolean): number {
  const r = errorReport(e);
  if (json) io.stdout(errorJson(r));
  else io.stderr(printable(`dmaload ${cmd}: ${r.code === 'ERR_USAGE' ? '' : `${r.code}: `}${r.message}\nRun 'dmaload ${cmd} --help' for usage.\n`, '\n'));
  return 2;
}

/** A one-line progress bar on a terminal, redrawn in place; silent elsewhere. */
export function progressBar(
  io: CliIO,
  label: string,
): { update(bytes: number, total: number, network?: { connections: number; retries: number }): void; done(): void } {
  if (!io.isTTY) return { update() {}, done() {} };
  const t0 = performance.now();
  let drawn = false;
  return {
    update(bytes, total, network) {
      const frac = total > 0 ? bytes / total : 1;
      const width = 30;
      const fill = Math.round(frac * width);
      const s = (performance.now() - t0) / 1000;
      const rate = s > 0 ? bytes / s / 1e6 : 0;
      io.stderr(
        `\r${label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}% ${formatBytes(bytes)} / ${formatBytes(total)}  ${rate.toFixed(0)} MB/s ` +
          (network ? `${network.connections} conn${network.connections === 1 ? '' : 's'}${network.retries ? `, ${network.retries} retries` : ''} ` : ''),
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
