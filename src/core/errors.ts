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

/**
 * Every `ERR_…` code dmaload throws, in one list: the type {@link ErrorCode} is made from it, so a misspelt code is a
 * compile error, and a test keeps docs/api.md's table and the codes used in src/ and native/ equal to it. A code never
 * changes meaning; one that goes away stays listed until a major version.
 */
export const ERROR_CODES = [
  // Files and I/O
  'ERR_NOT_REGULAR_FILE',
  'ERR_IS_DIRECTORY',
  'ERR_FILE_CHANGED',
  'ERR_CHECKSUM_MISMATCH',
  'ERR_FILE_CLOSED',
  'ERR_SAME_FILE',
  'ERR_DIRECT_IO_ALIGNMENT',
  'ERR_DIRECT_IO_UNSUPPORTED',
  'ERR_UNCACHED_IO_UNSUPPORTED',
  // Memory, buffers and the objects that hold them
  'ERR_MEMORY_BUDGET',
  'ERR_HUGETLB_POOL',
  'ERR_BUFFER_CLOSED',
  'ERR_BUFFER_BUSY',
  'ERR_BUFFER_READ_ONLY',
  'ERR_BUFFER_TOO_LARGE',
  'ERR_BUFFER_TOO_SMALL',
  'ERR_POOL_CLOSED',
  'ERR_WRITER_CLOSED',
  'ERR_WRITER_BUSY',
  // Devices and the addon
  'ERR_NO_UDMABUF',
  'ERR_UDMABUF_SIZE_LIMIT',
  'ERR_NO_HEAP',
  'ERR_EMPTY_DMABUF',
  'ERR_NO_ADDON',
  // Model files (the parsers and loadModel)
  'ERR_MODEL_FORMAT',
  'ERR_MODEL_TRUNCATED',
  'ERR_MODEL_HEADER',
  'ERR_MODEL_VERSION',
  'ERR_MODEL_RANGE',
  'ERR_MODEL_DUPLICATE',
  'ERR_MODEL_UTF8',
  'ERR_MODEL_DTYPE_UNKNOWN',
  'ERR_MODEL_TENSOR_NOT_FOUND',
  'ERR_MODEL_NOT_FOUND',
  'ERR_MODEL_AMBIGUOUS',
  // Network sources (URLs and Hugging Face references)
  'ERR_SOURCE_SCHEME',
  'ERR_SOURCE_NOT_FOUND',
  'ERR_SOURCE_AUTH',
  'ERR_SOURCE_HTTP',
  'ERR_SOURCE_NETWORK',
  'ERR_SOURCE_PROTOCOL',
  'ERR_SOURCE_NO_RANGES',
  'ERR_SOURCE_REDIRECT',
  'ERR_SOURCE_SIZE_MISMATCH',
  'ERR_SOURCE_OFFLINE',
  // dmaload serve: the client's own, then the server's replies (docs/protocol.md)
  'ERR_SHARE_CLOSED',
  'ERR_SHARE_SERVER_GONE',
  'ERR_SHARE_REPLY',
  'ERR_SHARE_UNTRUSTED_SERVER',
  'ERR_SHARE_PROTOCOL',
  'ERR_SHARE_VERSION',
  'ERR_SHARE_MESSAGE_TOO_LARGE',
  'ERR_SHARE_NO_FD',
  'ERR_SHARE_FDS',
  'ERR_SHARE_FD_ACCESS',
  'ERR_SHARE_FD_TIMEOUT',
  'ERR_SHARE_FS_UNSUPPORTED',
  'ERR_SHARE_FS_UNKNOWN',
  'ERR_SHARE_SOURCE_NOT_ALLOWED',
  'ERR_SHARE_SERVER_CLOSING',
  'ERR_SHARE_LOAD_STALLED',
  'ERR_SHARE_TOO_MANY_CONNECTIONS',
  'ERR_SHARE_IDLE',
  'ERR_SHARE_REPLY_TIMEOUT',
  'ERR_SHARE_INTERNAL',
  // The bench and the CLI
  'ERR_BENCH_NO_SPACE',
  'ERR_BENCH_FILE_TOO_SMALL',
  'ERR_USAGE',
  // Arguments: Node's own codes, on TypeError / RangeError (invalidType, invalidValue, outOfRange below)
  'ERR_INVALID_ARG_TYPE',
  'ERR_INVALID_ARG_VALUE',
  'ERR_OUT_OF_RANGE',
  // The addon's own invariants. TypeScript checks every argument first, so one of these means a bug in dmaload
  // (or a call into the binding around the library): a closed region or queue, a detached ArrayBuffer, a failed
  // Node-API call, a thread that could not start.
  'ERR_REGION_CLOSED',
  'ERR_BUFFER_DETACHED',
  'ERR_QUEUE_CLOSED',
  'ERR_REACTOR_CLOSED',
  'ERR_NAPI',
  'ERR_DMALOAD_NATIVE',
] as const;

/** One of {@link ERROR_CODES}. */
export type ErrorCode = (typeof ERROR_CODES)[number];

const codeSet: ReadonlySet<string> = new Set(ERROR_CODES);
/** Whether `code` is one of dmaload's codes (a code from outside, such as a server's reply, may not be). */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && codeSet.has(code);
}

/** The library's own error: `code` is one of {@link ERROR_CODES}; `path` names the file when there is one. */
export class DmaloadError extends Error {
  readonly code: ErrorCode;
  readonly path: string | undefined;
  constructor(code: ErrorCode, message: string, opts: { path?: string; cause?: unknown } = {}) {
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
