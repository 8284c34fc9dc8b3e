/** Flag values that several commands take (--target, --io, --part-size, --huge-pages, --numa-node, --verify): a value, or a usage error. */
import { KNOBS, verifyOption } from '../api/options.js';
import type { HugePages } from '../api/options.js';
import type { NumaNode } from '../engine/numa.js';
import { parseSize } from '../core/util.js';
import { UsageError } from './io.js';

export function choice<T extends string>(flag: string, v: string | undefined, allowed: readonly T[], dflt: T): T {
  if (v === undefined) return dflt;
  if (!(allowed as readonly string[]).includes(v)) throw new UsageError(`--${flag} must be one of ${allowed.join(', ')} (got '${v}')`);
  return v as T;
}

/** --part-size: a size that the partSize option takes (KNOBS.partSize: whole pages), else a usage error. */
export function partSizeFlag(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = parseSize(v);
  const k = KNOBS.partSize;
  if (n === undefined || n < k.min || n % k.multipleOf !== 0)
    throw new UsageError(`--part-size must be a size that is a multiple of ${k.multipleOf}, e.g. 32MiB (got '${v}')`);
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
