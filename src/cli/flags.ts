/** Flag values that several commands take (--target, --io, --part-size, --huge-pages, --numa-node, --verify): a value, or a usage error. */
import { KNOBS, verifyOption } from '../api/options.js';
import type { HugePages } from '../api/options.js';
import type { ErrorCode } from '../core/errors.js';
import type { NumaNode } from '../engine/numa.js';
import { GiB, MiB, parseSize, sizeError } from '../core/util.js';
import { UsageError } from './io.js';

export function choice<T extends string>(flag: string, v: string | undefined, allowed: readonly T[], dflt: T): T {
  if (v === undefined) return dflt;
  if (!(allowed as readonly string[]).includes(v)) throw new UsageError(`--${flag} must be one of ${allowed.join(', ')} (got '${v}')`);
  return v as T;
}

/** A size flag's value (`32MiB`, `32mb`, `4k`: see parseSize), else a usage error naming the unit not understood. */
export function sizeFlag(flag: string, v: string): number {
  const n = parseSize(v);
  if (n === undefined) throw new UsageError(`--${flag}: ${sizeError(v) ?? `'${v}' is not a size`}`);
  return n;
}

/**
 * The bounds of --part-size (load, serve), in docs/cli.md. Below 1 MiB a part costs more in allocation and requests
 * than its bytes take to read (4 KiB parts read 512 MiB at 4 MB/s); above 64 GiB it is a slip, not a part size.
 */
export const PART_SIZE_MIN = MiB;
export const PART_SIZE_MAX = 64 * GiB;

/** --part-size: a size from PART_SIZE_MIN to PART_SIZE_MAX in whole pages (KNOBS.partSize), else ERR_OUT_OF_RANGE (exit 2). */
export function partSizeFlag(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = sizeFlag('part-size', v);
  const bounds = `parts must be at least ${PART_SIZE_MIN / MiB} MiB and at most ${PART_SIZE_MAX / GiB} GiB`;
  const out = (why: string) => new UsageError(`--part-size ${v} (${n} bytes) ${why}`, 'ERR_OUT_OF_RANGE', '--part-size');
  if (n < PART_SIZE_MIN) throw out(`is below the minimum: ${bounds}; smaller ones make a load crawl`);
  if (n > PART_SIZE_MAX) throw out(`is above the maximum: ${bounds}`);
  if (n % KNOBS.partSize.multipleOf !== 0) throw out(`is not a multiple of ${KNOBS.partSize.multipleOf} bytes (whole pages)`);
  return n;
}

/** --huge-pages on|off|hugetlb|hugetlb-or-small: the hugePages option (on and off are true and false). */
export function hugePagesFlag(v: string | undefined): HugePages | undefined {
  const hp = v === undefined ? undefined : choice('huge-pages', v, ['on', 'off', 'hugetlb', 'hugetlb-or-small'] as const, 'off');
  return hp === undefined ? undefined : hp === 'on' ? true : hp === 'off' ? false : hp;
}

/** --numa-node: a node number or 'interleave' (whether the node exists, load() says: ERR_OUT_OF_RANGE). */
export function numaNodeFlag(v: string | undefined): NumaNode | undefined {
  if (v === undefined) return undefined;
  if (v === 'interleave') return v;
  if (!/^\d+$/.test(v)) throw new UsageError(`--numa-node must be a node number or interleave (got '${v}')`);
  return Number(v);
}

/** The CLI's `--verify` value for load and cp: auto (default), on, off, or sha256:HEX. */
export function verifyFlag(v: string | undefined): ReturnType<typeof verifyOption> {
  if (v === undefined || v === 'auto') return 'auto';
  if (v === 'on' || v === 'off') return v === 'on';
  const m = /^sha256:([0-9a-fA-F]{64})$/.exec(v);
  if (!m) throw new UsageError(`--verify must be auto, on, off or sha256:HEX with 64 hex digits (got '${v}')`);
  return verifyOption({ sha256: m[1]! });
}

/**
 * Per command, the library's option names of the values its flags pass (and the argument a reference came from):
 * what {@link flagError} names instead. Only these: an argument error about anything else is not the user's flag.
 */
export const OPTION_FLAGS: Readonly<Record<string, Readonly<Record<string, string>>>> = {
  load: {
    target: '--target',
    io: '--io',
    heap: '--heap',
    partSize: '--part-size',
    hugePages: '--huge-pages',
    numaNode: '--numa-node',
    verify: '--verify',
    'verify.sha256': '--verify',
    ref: 'FILE',
  },
  cp: { io: '--io', verify: '--verify', 'verify.sha256': '--verify', ref: 'SRC' },
  verify: { io: '--io', sha256: '--sha256', 'verify.sha256': '--sha256', ref: 'FILE' },
  probe: {},
  inspect: { rank: '--rank', worldSize: '--world-size', split: '--split', ref: 'FILE' },
  bench: { numaNode: '--numa-node' },
  pull: { include: '--include', ref: 'REPO' },
  serve: {
    budget: '--budget',
    perUserBudget: '--per-user-budget',
    maxConnections: '--max-connections',
    perUserConnections: '--per-user-connections',
    idleTimeout: '--idle-timeout',
    replyTimeout: '--reply-timeout',
    stallTimeout: '--stall-timeout',
    budgetWait: '--budget-wait',
    exitWhenIdle: '--exit-when-idle',
    mode: '--mode',
    target: '--target',
    heap: '--heap',
    partSize: '--part-size',
    io: '--io',
    hugePages: '--huge-pages',
    numaNode: '--numa-node',
    '--allow-source': '--allow-source',
  },
};

const ARG_CODES: ReadonlySet<string> = new Set(['ERR_INVALID_ARG_TYPE', 'ERR_INVALID_ARG_VALUE', 'ERR_OUT_OF_RANGE'] satisfies ErrorCode[]);
/** The three messages of core/errors.ts's invalidType, invalidValue and outOfRange, taken apart. */
const ARG_MESSAGE = /^The (?:value of "([^"]+)" is out of range\. It (must [\s\S]*)|"([^"]+)" option ([\s\S]*))\. Received ([\s\S]*)$/;

/**
 * A library's argument error (ERR_INVALID_ARG_TYPE, ERR_INVALID_ARG_VALUE, ERR_OUT_OF_RANGE) about a value that
 * came from one of the command's flags (`flags`: option name to flag) or from a DMALOAD_ variable, as a usage error
 * (exit 2) in the CLI's words: `--numa-node is out of range: it must be … (got 3)`, keeping the library's code.
 * Undefined for anything else (a runtime error, or an argument the CLI never passes: a bug, exit 1).
 */
export function flagError(e: unknown, flags: Readonly<Record<string, string>>): UsageError | undefined {
  const err = e as Error & { code?: unknown };
  if (!(err instanceof Error) || typeof err.code !== 'string' || !ARG_CODES.has(err.code)) return undefined;
  const m = ARG_MESSAGE.exec(err.message);
  if (!m) return undefined;
  const name = (m[1] ?? m[3])!;
  const flag = Object.hasOwn(flags, name) ? flags[name]! : /^DMALOAD_[A-Z0-9_]+$/.test(name) ? name : undefined;
  if (flag === undefined) return undefined;
  let text = m[1] !== undefined ? `is out of range: it ${m[2]!}` : m[4]!;
  // Other options the text names (`< worldSize (2)`), where the name cannot be an ordinary word: camelCase ones.
  for (const [option, f] of Object.entries(flags)) if (/^[a-z]+[A-Z][A-Za-z]*$/.test(option)) text = text.replace(new RegExp(`\\b${option}\\b`, 'g'), f);
  return new UsageError(`${flag} ${text} (got ${m[5]!})`, err.code as ErrorCode, flag);
}
