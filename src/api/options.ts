/**
 * The one option schema: every option any call takes is named, limited, defaulted and (where it has one) read
 * from its environment variable here, and nowhere else. Bad values throw TypeError/RangeError with code
 * ERR_INVALID_ARG_TYPE, ERR_INVALID_ARG_VALUE or ERR_OUT_OF_RANGE, naming the option (or the variable).
 *
 * One vocabulary for sizes, in every call:
 * - `chunkSize`: bytes per I/O request (the task size);
 * - `queueDepth`: requests in flight;
 * - `partSize`: bytes per unit of memory the call allocates — a part of a loaded buffer (one dma-buf each), or a
 *   slot of copy()'s ring.
 * Older names stay accepted as aliases: createWriter's `bufferSize` (= chunkSize), copy()'s `slotSize`
 * (= partSize) and `slots` (= parts).
 */
import type { SourceOptions } from '../pipeline/sources/resolve.js';
import { invalidType, invalidValue, outOfRange } from '../core/errors.js';
import { GiB, MiB, memAvailable, parseSize } from '../core/util.js';
import { PAGE_SIZE } from '../engine/binding.js';
import type { Tuning } from '../engine/engine.js';
import type { NumaNode } from '../engine/numa.js';
import type { IoMode } from '../pipeline/source.js';
import { TARGET_NAMES } from '../targets/index.js';
import type { TargetName } from '../targets/index.js';

export const IO_MODES: readonly IoMode[] = ['auto', 'direct', 'buffered', 'uncached'];

/** What a knob accepts and where its default comes from. */
interface Knob {
  /** Environment variable that replaces the built-in default (an option given in the call wins over it). */
  env?: string;
  min: number;
  max: number;
  /** Values must be a multiple of this. */
  multipleOf?: number;
  /** The variable may be written as a size: `4MiB`, `1g`. */
  size?: boolean;
}

/** The knobs. Limits are the engine's: a queue deeper than 256 buys nothing and costs memory in every engine. */
export const KNOBS = {
  chunkSize: { env: 'DMALOAD_CHUNK_SIZE', min: 4096, max: GiB, multipleOf: 4096, size: true },
  queueDepth: { env: 'DMALOAD_QUEUE_DEPTH', min: 1, max: 256 },
  partSize: { min: PAGE_SIZE, max: Number.MAX_SAFE_INTEGER, multipleOf: PAGE_SIZE, size: true },
  parts: { min: 2, max: 64 },
} satisfies Record<string, Knob>;

export type KnobName = keyof typeof KNOBS;

/**
 * Built-in defaults per kind of call, measured on the reference machine (README, `npm run bench:load`,
 * `npm run bench:cp`). Reads want 4 MiB requests; writes and copies want larger ones, and copies a deep queue
 * because reads and writes share the device.
 */
export const DEFAULTS = {
  read: { chunkSize: 4 * MiB, queueDepth: 8 },
  write: { chunkSize: 8 * MiB, queueDepth: 8 },
  copy: { chunkSize: 8 * MiB, queueDepth: 16, partSize: 128 * MiB, parts: 2 },
} as const;

/** A knob's value: the caller's, else its environment variable, else `dflt`; both sources checked alike. */
export function knob(name: KnobName, value: unknown, dflt: number, label: string = name): number {
  const k: Knob = KNOBS[name];
  let v: unknown = value;
  if (v === undefined && k.env !== undefined) {
    const e = process.env[k.env];
    if (e !== undefined && e !== '') {
      v = k.size ? (parseSize(e) ?? e) : Number(e);
      label = k.env;
    }
  }
  if (v === undefined) return dflt;
  if (typeof v !== 'number') throw invalidType(label, 'a number', v);
  if (!Number.isSafeInteger(v) || v < k.min || v > k.max) throw outOfRange(label, `an integer >= ${k.min} and <= ${k.max}`, v);
  if (k.multipleOf !== undefined && v % k.multipleOf !== 0) throw outOfRange(label, `a multiple of ${k.multipleOf}`, v);
  return v;
}

/** An option that may also be given under an older name; giving both is an error. */
export function aliased(opts: Record<string, unknown>, name: string, alias: string): unknown {
  if (opts[name] !== undefined && opts[alias] !== undefined) throw invalidValue(alias, opts[alias], `is another name for "${name}": give one of them`);
  return opts[name] ?? opts[alias];
}

/** chunkSize and queueDepth for a call of this kind. */
export function tuning(kind: keyof typeof DEFAULTS, opts: { chunkSize?: unknown; queueDepth?: unknown }): Tuning {
  const d = DEFAULTS[kind];
  return { chunk: knob('chunkSize', opts.chunkSize, d.chunkSize), depth: knob('queueDepth', opts.queueDepth, d.queueDepth) };
}

/** A part size, or undefined for the target's own default. */
export function partSizeOption(value: unknown): number | undefined {
  const v = knob('partSize', value, 0);
  return v === 0 ? undefined : v;
}

export function enumOption<T extends string>(name: string, value: unknown, allowed: readonly T[], dflt: T): T {
  if (value === undefined) return dflt;
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
    throw invalidValue(name, value, `must be one of ${allowed.map((a) => `'${a}'`).join(', ')}`);
  }
  return value as T;
}

export const ioOption = (v: unknown): IoMode => enumOption('io', v, IO_MODES, 'auto');
export const targetOption = (v: unknown): TargetName => enumOption('target', v, TARGET_NAMES, 'memory');

/**
 * What `hugePages` takes: true / false (transparent huge pages for the memory target, MADV_HUGEPAGE, or not),
 * 'hugetlb' (pages from the reserved hugetlb pool: memory, memfd and udmabuf targets; ERR_HUGETLB_POOL when it is
 * short) or 'hugetlb-or-small' (the same, but small pages when the pool is short).
 */
export type HugePages = boolean | 'hugetlb' | 'hugetlb-or-small';
export const HUGETLB_MODES = ['hugetlb', 'hugetlb-or-small'] as const;
const HUGE_PAGES_EXPECTED = "true, false, 'hugetlb' or 'hugetlb-or-small'";

/** The `hugePages` option, checked; undefined when not given. */
export function hugePagesOption(value: unknown): HugePages | undefined {
  if (value === undefined || typeof value === 'boolean') return value;
  if (typeof value === 'string' && (HUGETLB_MODES as readonly string[]).includes(value)) return value as HugePages;
  throw invalidType('hugePages', HUGE_PAGES_EXPECTED, value);
}

/**
 * Transparent huge pages or not, as decided by the caller: the `hugePages` option when a boolean, else
 * DMALOAD_HUGE_PAGES=1 or 0 (with the reason stats give); undefined when neither decides (then the machine's
 * measurement does).
 */
export function thpSetting(value: HugePages | undefined): { huge: boolean; reason: string } | undefined {
  if (typeof value === 'boolean') return { huge: value, reason: `hugePages: ${value}` };
  if (value !== undefined) return undefined;
  const env = hugePagesEnv();
  return typeof env === 'boolean' ? { huge: env, reason: `DMALOAD_HUGE_PAGES=${env ? 1 : 0}` } : undefined;
}

/** DMALOAD_HUGE_PAGES: 1 (true), 0 (false), hugetlb, hugetlb-or-small; undefined when unset or empty. */
export function hugePagesEnv(): HugePages | undefined {
  const e = process.env.DMALOAD_HUGE_PAGES;
  if (e === undefined || e === '') return undefined;
  if (e === '1' || e === '0') return e === '1';
  if ((HUGETLB_MODES as readonly string[]).includes(e)) return e as HugePages;
  throw invalidValue('DMALOAD_HUGE_PAGES', e, 'must be 1, 0, hugetlb or hugetlb-or-small');
}

/** What `numaNode` takes: a node number (an integer >= 0), or 'interleave'. */
const NUMA_EXPECTED = "a node number (an integer >= 0) or 'interleave'";
/** The highest node number Linux can have (MAX_NUMNODES = 1 << CONFIG_NODES_SHIFT, at most 1024). */
export const MAX_NUMA_NODE = 1023;

/**
 * The `numaNode` option, checked for its form (whether the node exists is pages.ts's question); undefined when not
 * given. Not a number or a string: ERR_INVALID_ARG_TYPE; a string but 'interleave', or a number that is no node
 * number (-1, 1.5): ERR_INVALID_ARG_VALUE.
 */
export function numaNodeOption(value: unknown, name = 'numaNode'): NumaNode | undefined {
  if (value === undefined || value === 'interleave') return value;
  if (typeof value !== 'number' && typeof value !== 'string') throw invalidType(name, NUMA_EXPECTED, value);
  if (typeof value === 'string' || !Number.isSafeInteger(value) || value < 0 || value > MAX_NUMA_NODE) {
    throw invalidValue(name, value, `must be ${NUMA_EXPECTED.replace('>= 0', `from 0 to ${MAX_NUMA_NODE}`)}`);
  }
  return value;
}

/** DMALOAD_NUMA_NODE: a node number or 'interleave'; undefined when unset or empty. */
export function numaNodeEnv(): NumaNode | undefined {
  const e = process.env.DMALOAD_NUMA_NODE;
  if (e === undefined || e === '') return undefined;
  return numaNodeOption(/^\d+$/.test(e) ? Number(e) : e, 'DMALOAD_NUMA_NODE');
}

export function boolOption(name: string, value: unknown, dflt: boolean): boolean {
  if (value === undefined) return dflt;
  if (typeof value !== 'boolean') throw invalidType(name, 'a boolean', value);
  return value;
}

export function signalOption(value: unknown): AbortSignal | undefined {
  if (value !== undefined && !(value instanceof AbortSignal)) throw invalidType('signal', 'an AbortSignal', value);
  return value;
}

export function functionOption<F>(name: string, value: unknown): F | undefined {
  if (value !== undefined && typeof value !== 'function') throw invalidType(name, 'a function', value);
  return value as F | undefined;
}

/**
 * A call's options object: `{}` when not given, ERR_INVALID_ARG_TYPE when not an object. With `names` (the call's
 * option names, from {@link optionNames}), a key that is not one of them is ERR_INVALID_ARG_VALUE naming it and the
 * nearest valid name: a misspelt option is an error, never silently ignored.
 */
export function optionsObject<T extends object>(value: T | undefined, names?: OptionNames, call?: string): T {
  if (value === undefined) return {} as T;
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw invalidType('options', 'an object', value);
  if (names) {
    for (const key of Object.keys(value)) {
      if (names.includes(key)) continue;
      const near = nearest(key, names);
      const hint = near ? `; did you mean '${near}'?` : '';
      throw invalidValue(key, (value as Record<string, unknown>)[key], `is not an option of ${call ?? 'this call'}${hint} (its options: ${names.join(', ')})`);
    }
  }
  return value;
}

/** A call's option names; see {@link optionNames}. */
export type OptionNames = readonly string[];

/**
 * The option names of an options interface `T`, checked both ways when it compiles: a name that `T` lacks, or a key
 * of `T` missing from the list, is a type error. `optionNames<LoadOptions>()(['target', …])`.
 */
export function optionNames<T>() {
  return <const K extends readonly (keyof T & string)[]>(
    names: K & ([Exclude<keyof T, K[number]>] extends [never] ? unknown : { missing: Exclude<keyof T, K[number]> }),
  ): OptionNames => names;
}

/** The name in `names` closest to `key` (edit distance at most 3, or differing only in case), if any. */
export function nearest(key: string, names: OptionNames): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const n of names) {
    const [a, b] = [key.toLowerCase(), n.toLowerCase()];
    // The same letters in another case, or a name cut short or run on ('maxIdle', 'targets'), or a few typos.
    const d = a === b ? 0 : a.length >= 3 && (b.startsWith(a) || a.startsWith(b)) ? 1 : editDistance(a, b);
    if (d < bestD) [best, bestD] = [n, d];
  }
  return bestD <= Math.min(3, Math.max(1, Math.floor(key.length / 2))) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

export function pathOption(name: string, value: unknown): string {
  if (typeof value !== 'string' || value === '') throw invalidType(name, 'a non-empty string', value);
  if (value.includes('\0')) throw invalidValue(name, value, 'must not contain NUL bytes');
  return value;
}

/** A memory budget in bytes; default MemAvailable. */
export function budgetOption(value: unknown, name = 'memoryBudget'): number {
  if (value === undefined) return memAvailable();
  // The codes every other byte count gives: the wrong type, or a number out of range.
  if (typeof value !== 'number') throw invalidType(name, 'a number of bytes', value);
  if (!(value >= 0)) throw outOfRange(name, 'a number >= 0', value);
  return value;
}

/** A byte count (e.g. expectedSize): a non-negative safe integer. */
export function byteCountOption(name: string, value: unknown): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number') throw invalidType(name, 'a number', value);
  if (!Number.isSafeInteger(value) || value < 0) throw outOfRange(name, 'a non-negative integer', value);
  return value;
}

/** A file mode such as 0o644. */
export function modeOption(value: unknown): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number') throw invalidType('mode', 'a file mode such as 0o644', value);
  if (!Number.isInteger(value) || value < 0 || value > 0o7777) throw outOfRange('mode', 'a file mode from 0 to 0o7777, such as 0o644', value);
  return value;
}

/** A whole number in [min, max] (a count, a uid, milliseconds): ERR_INVALID_ARG_TYPE when not a number. */
export function integerOption(name: string, value: unknown, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number') throw invalidType(name, 'a number', value);
  if (!Number.isSafeInteger(value) || value < min || value > max) throw outOfRange(name, `an integer from ${min} to ${max}`, value);
  return value;
}

/**
 * What `verify` takes: 'auto' (the default: a path that resolves into a Hugging Face hub cache blob named by its
 * SHA-256 is checked against that name), true (as 'auto', and the SHA-256 is computed and reported even with
 * nothing to check it against), false (check nothing), or `{ sha256: '<64 hex digits>' }`.
 */
export type VerifyOption = 'auto' | boolean | { sha256: string };

/** The `verify` option, checked; a hash in upper case is taken as the same hash. */
export function verifyOption(value: unknown): VerifyOption {
  if (value === undefined || value === 'auto') return 'auto';
  if (typeof value === 'boolean') return value;
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    const h = (value as { sha256?: unknown }).sha256;
    if (typeof h !== 'string') throw invalidType('verify.sha256', 'a string of 64 hex digits', h);
    if (!/^[0-9a-fA-F]{64}$/.test(h)) throw invalidValue('verify.sha256', h, 'must be a SHA-256: 64 hex digits');
    return { sha256: h.toLowerCase() };
  }
  throw invalidType('verify', "'auto', true, false or { sha256: '<64 hex digits>' }", value);
}

const SOURCE_OPTIONS = optionNames<SourceOptions>()([
  'headers',
  'ca',
  'connections',
  'chunkSize',
  'attempts',
  'stallMs',
  'token',
  'endpoint',
  'region',
  's3Endpoint',
  'pathStyle',
  'unsigned',
]);

/** The `source` option (network references), checked: each key's type and range; unknown keys refused. */
export function sourceOption(value: unknown): SourceOptions {
  const o = optionsObject(value as SourceOptions | undefined, SOURCE_OPTIONS, 'source');
  const int = (name: keyof SourceOptions, min: number, max: number): number | undefined => {
    const v = o[name];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw outOfRange(`source.${name}`, `an integer from ${min} to ${max}`, v);
    return v;
  };
  const out: SourceOptions = {};
  if (o.headers !== undefined) {
    if (o.headers === null || typeof o.headers !== 'object' || Object.values(o.headers).some((v) => typeof v !== 'string'))
      throw invalidType('source.headers', 'an object of string values', o.headers);
    out.headers = { ...o.headers };
  }
  if (o.ca !== undefined) {
    if (typeof o.ca !== 'string' && !Buffer.isBuffer(o.ca)) throw invalidType('source.ca', 'a PEM string or Buffer', o.ca);
    out.ca = o.ca;
  }
  for (const k of ['pathStyle', 'unsigned'] as const) {
    if (o[k] !== undefined && typeof o[k] !== 'boolean') throw invalidType(`source.${k}`, 'a boolean', o[k]);
    if (o[k] !== undefined) out[k] = o[k];
  }
  for (const k of ['token', 'endpoint', 'region', 's3Endpoint'] as const) {
    if (o[k] !== undefined && typeof o[k] !== 'string') throw invalidType(`source.${k}`, 'a string', o[k]);
    if (o[k] !== undefined) out[k] = o[k];
  }
  for (const k of ['endpoint', 's3Endpoint'] as const) {
    const v = out[k];
    if (v !== undefined && !/^https?:\/\/./.test(v)) throw invalidValue(`source.${k}`, v, 'must be an http(s) URL');
  }
  const connections = int('connections', 1, 256);
  const chunkSize = int('chunkSize', 64 * 1024, 1024 * 1024 * 1024);
  const attempts = int('attempts', 1, 100);
  const stallMs = int('stallMs', 100, 3_600_000);
  return {
    ...out,
    ...(connections ? { connections } : {}),
    ...(chunkSize ? { chunkSize } : {}),
    ...(attempts ? { attempts } : {}),
    ...(stallMs ? { stallMs } : {}),
  };
}

/** The `cache` option: false (default), true, or a folder (a non-empty string). */
export function cacheOption(value: unknown): boolean | string {
  if (value === undefined) return false;
  if (typeof value === 'boolean') return value;
  if (typeof value === 'string' && value !== '' && !value.includes('\0')) return value;
  throw invalidType('cache', 'true, false or a folder', value);
}
