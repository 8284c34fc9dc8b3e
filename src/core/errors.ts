/**
 * Errors thrown by dmaload.
 *
 * Two shapes, following Node core:
 * - {@link DmaloadSystemError}: a failed system call, with `errno`, `code` ('ENOENT'), `syscall` and `path`,
 *   and the message `CODE: text, syscall 'path'`.
 * - {@link DmaloadError}: the library's own conditions, with a stable `ERR_…` code that never changes meaning.
 * Argument errors are plain TypeError/RangeError with `code` set to 'ERR_INVALID_ARG_TYPE' / 'ERR_INVALID_ARG_VALUE'
 * / 'ERR_OUT_OF_RANGE', naming the exact option.
 */
import { getSystemErrorName } from 'node:util';

/** The library's own error: `code` starts with `ERR_`; `path` names the file when there is one. */
export class DmaloadError extends Error {
  readonly code: string;
  readonly path: string | undefined;
  constructor(code: string, message: string, opts: { path?: string; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'DmaloadError';
    this.code = code;
    this.path = opts.path;
  }
}

/** A failed system call, shaped like Node's own SystemError. */
export class DmaloadSystemError extends Error {
  readonly errno: number;
  readonly code: string;
  readonly syscall: string;
  readonly path: string | undefined;
  constructor(errno: number, syscall: string, path?: string, hint?: string) {
    const e = Math.abs(errno);
    const code = errnoCode(e);
    super(`${code}: ${errnoText(e)}, ${syscall}${path === undefined ? '' : ` '${path}'`}${hint ? ` (${hint})` : ''}`);
    this.name = 'Error';
    // Node's errno on SystemError is negative (uv style); keep that convention.
    this.errno = -e;
    this.code = code;
    this.syscall = syscall;
    this.path = path;
  }
}

/** The AbortError that Node's own APIs reject with. */
export class AbortError extends Error {
  readonly code = 'ABORT_ERR';
  constructor(message = 'The operation was aborted', opts?: { cause?: unknown }) {
    super(message, opts);
    this.name = 'AbortError';
  }
}

/** The errno's name ('ENOENT'): libuv's, else the C library's (libuv lacks some, such as ETOOMANYREFS). */
export function errnoCode(errno: number): string {
  const e = Math.abs(errno);
  let name: string | undefined;
  try {
    name = getSystemErrorName(-e);
  } catch {
    /* not a number libuv maps */
  }
  if (name === undefined || name.startsWith('Unknown system error')) name = errnoName?.(e) ?? name;
  return name ?? `Unknown system error ${e}`;
}

let strerror: ((e: number) => string) | undefined;
let errnoName: ((e: number) => string | undefined) | undefined;
/** Installed by the native binding once it loads, so errors read like the C library's. */
export function setStrerror(fn: (e: number) => string, names?: (e: number) => string | undefined): void {
  strerror = fn;
  errnoName = names;
}
function errnoText(errno: number): string {
  const s = strerror?.(errno);
  return s ? s.charAt(0).toLowerCase() + s.slice(1) : `errno ${errno}`;
}

/** A negative return from the addon becomes a thrown system error; anything else passes through. */
export function check<T>(r: T | number, syscall: string, path?: string): T {
  if (typeof r === 'number' && r < 0) throw new DmaloadSystemError(r, syscall, path);
  return r as T;
}

/** A failed Node fs call as the library reports system errors: code, errno, syscall and the path it was about. */
export function asSystemError(e: unknown, path: string): unknown {
  const err = e as NodeJS.ErrnoException;
  if (typeof err?.errno !== 'number' || typeof err.syscall !== 'string') return e;
  return new DmaloadSystemError(err.errno, err.syscall, path);
}

export function invalidType(name: string, expected: string, got: unknown): TypeError {
  const e = new TypeError(`The "${name}" option must be ${expected}. Received ${describe(got)}`);
  (e as TypeError & { code: string }).code = 'ERR_INVALID_ARG_TYPE';
  return e;
}

export function invalidValue(name: string, got: unknown, reason: string): TypeError {
  const e = new TypeError(`The "${name}" option ${reason}. Received ${describe(got)}`);
  (e as TypeError & { code: string }).code = 'ERR_INVALID_ARG_VALUE';
  return e;
}

export function outOfRange(name: string, range: string, got: unknown): RangeError {
  const e = new RangeError(`The value of "${name}" is out of range. It must be ${range}. Received ${describe(got)}`);
  (e as RangeError & { code: string }).code = 'ERR_OUT_OF_RANGE';
  return e;
}

function describe(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v);
  if (typeof v === 'bigint') return `${v}n`;
  if (v === null || typeof v !== 'object') return String(v);
  return `an instance of ${v.constructor?.name ?? 'Object'}`;
}
