/**
 * The kernel tier's fault device (scripts/kernel/run.sh): ext4 on a device-mapper device over the guest's second
 * disk, mounted on /fault. Its table starts linear (every sector passes through); these helpers swap in tables that
 * fail or slow down reads, the way xfstests' common/dmerror, common/dmflakey and common/dmdelay do:
 *
 * - {@link failRange}: linear, except the device sectors under a byte range of one file, which are `error`
 *   (dm-error: every bio there ends with EIO). The file's place on the device comes from `filefrag -v` (FIEMAP).
 *   {@link faultRanges} mixes error and delay ranges of one file in one table.
 * - {@link flakey}: `flakey` with `error_reads` over the whole device: every read fails, writes pass.
 * - {@link delay}: `delay` over the whole device: reads wait `ms` milliseconds, writes do not.
 * - {@link linear}: back to normal.
 *
 * Tables are swapped as xfstests does: suspend --nolockfs, load, resume (resume alone would keep the old table).
 * Outside the qemu tier, or where the guest lacks the modules, {@link faultSkip} gives the reason to skip.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';

const DEV = process.env.DMALOAD_KERNEL_FAULT_DEV;
const DISK = process.env.DMALOAD_KERNEL_FAULT_DISK;
/** A folder on the fault device's file system (ext4, direct I/O works). */
export const FAULT_DIR = process.env.DMALOAD_KERNEL_FAULT_DIR ?? '';

export type FaultTarget = 'error' | 'linear' | 'delay' | 'flakey';

let targets: Set<string> | undefined;
function loadedTargets(): Set<string> {
  if (!targets) {
    const out = execFileSync('dmsetup', ['targets'], { encoding: 'utf8' });
    targets = new Set(
      out
        .split('\n')
        .map((l) => l.split(/\s+/)[0]!)
        .filter(Boolean),
    );
  }
  return targets;
}

/** Why the fault tests cannot run here (undefined: they can), for t.skip(). */
export function faultSkip(...need: FaultTarget[]): string | undefined {
  if (process.env.DMALOAD_KERNEL_GUEST !== '1') return 'fault devices exist only in the qemu kernel tier (npm run test:kernel)';
  if (process.env.DMALOAD_KERNEL_FAULT_SKIP) return `no fault device in this guest: ${process.env.DMALOAD_KERNEL_FAULT_SKIP}`;
  if (!DEV || !DISK || !FAULT_DIR) return 'no fault device in this guest (DMALOAD_KERNEL_FAULT_DEV unset)';
  const have = loadedTargets();
  for (const t of ['linear', ...need]) {
    if (!have.has(t)) return `device-mapper target '${t}' is not in this kernel (module dm-${t} missing from the guest)`;
  }
  return undefined;
}

function dmsetup(...args: string[]): string {
  return execFileSync('dmsetup', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DM_DISABLE_UDEV: '1' } });
}

/** The backing disk's size in 512-byte sectors. */
function diskSectors(): number {
  return Number(readFileSync(`/sys/class/block/${basename(DISK!)}/size`, 'utf8').trim());
}

/** Replaces the fault device's table; on a refused table the old one stays. Lines: "start count target args". */
export function setTable(lines: string[]): void {
  const name = basename(DEV!);
  dmsetup('suspend', '--nolockfs', name);
  try {
    dmsetup('load', name, '--table', lines.join('\n'));
  } finally {
    dmsetup('resume', name);
  }
}

/** The current table, as dmsetup prints it (for messages). */
export function table(): string {
  return dmsetup('table', basename(DEV!)).trim();
}

export function linear(): void {
  setTable([`0 ${diskSectors()} linear ${DISK} 0`]);
}

/** Every read of the device fails with EIO (dm-flakey, down for the next 3 minutes, error_reads); writes pass. */
export function flakey(): void {
  setTable([`0 ${diskSectors()} flakey ${DISK} 0 0 180 1 error_reads`]);
}

/** Every read waits `ms` milliseconds in dm-delay; writes (and flushes) are not delayed. */
export function delay(ms: number): void {
  setTable([`0 ${diskSectors()} delay ${DISK} 0 ${ms} ${DISK} 0 0`]);
}

export interface Extent {
  /** Byte offset in the file. */
  logical: number;
  /** Byte offset on the device. */
  physical: number;
  length: number;
}

/** Where a file's bytes are on the device, from `filefrag -v` (FIEMAP). The file must be written back (fsync). */
export function extents(path: string): Extent[] {
  const out = execFileSync('filefrag', ['-v', path], { encoding: 'utf8' });
  const bs = Number(/blocks of (\d+) bytes/.exec(out)?.[1]);
  if (!(bs > 0)) throw new Error(`filefrag printed no block size:\n${out}`);
  const list: Extent[] = [];
  for (const line of out.split('\n')) {
    const m = /^\s*\d+:\s*(\d+)\.\.\s*(\d+):\s*(\d+)\.\.\s*(\d+):\s*(\d+):(.*)$/.exec(line);
    if (!m) continue;
    if (/unknown_loc|delalloc|inline|encoded/.test(m[6]!)) throw new Error(`${path}: extent without a fixed place on the device: ${line.trim()}`);
    list.push({ logical: Number(m[1]) * bs, physical: Number(m[3]) * bs, length: Number(m[5]) * bs });
  }
  if (list.length === 0) throw new Error(`filefrag found no extents in ${path}:\n${out}`);
  return list;
}

/** A byte range of a file whose reads fail with EIO (dm-error) or, with `delayMs`, wait that long (dm-delay). */
export interface Fault {
  offset: number;
  length: number;
  delayMs?: number;
}

/**
 * Makes reads of the file's bytes [offset, offset + length) fail with EIO: the device sectors under them become
 * dm-error, everything else stays linear. Offset and length must be multiples of 4096 (whole file system blocks).
 * Returns the device byte ranges that now fail.
 */
export function failRange(path: string, offset: number, length: number): Array<[start: number, length: number]> {
  return faultRanges(path, [{ offset, length }]);
}

/**
 * Several faults in one table: the device sectors under each file range become `error`, or `delay` (reads held
 * `delayMs`, writes not); all other sectors stay linear, or with `writeDelayMs`, `delay` with reads passed through
 * at once and every write held that long (a slow destination on the same file system). Ranges are whole 4 KiB
 * blocks and must not overlap. Returns the device byte ranges touched.
 */
export function faultRanges(path: string, faults: Fault[], opts: { writeDelayMs?: number } = {}): Array<[start: number, length: number]> {
  const map = extents(path);
  const spans: Array<{ start: number; len: number; delayMs: number | undefined }> = [];
  for (const f of faults) {
    if (f.offset % 4096 !== 0 || f.length % 4096 !== 0 || f.length <= 0) throw new RangeError(`fault range ${f.offset}+${f.length} is not whole 4 KiB blocks`);
    let found = false;
    for (const e of map) {
      const from = Math.max(f.offset, e.logical);
      const to = Math.min(f.offset + f.length, e.logical + e.length);
      if (to > from) {
        spans.push({ start: e.physical + (from - e.logical), len: to - from, delayMs: f.delayMs });
        found = true;
      }
    }
    if (!found) throw new Error(`${path} has no blocks in ${f.offset}+${f.length}`);
  }
  spans.sort((a, b) => a.start - b.start);
  const total = diskSectors();
  const lines: string[] = [];
  const pass = (from: number, count: number) =>
    opts.writeDelayMs === undefined
      ? `${from} ${count} linear ${DISK} ${from}`
      : `${from} ${count} delay ${DISK} ${from} 0 ${DISK} ${from} ${opts.writeDelayMs}`;
  let at = 0; // sector
  for (const { start, len, delayMs } of spans) {
    const s = start / 512;
    const n = len / 512;
    if (s < at) throw new Error('fault ranges overlap on the device');
    if (s > at) lines.push(pass(at, s - at));
    lines.push(delayMs === undefined ? `${s} ${n} error` : `${s} ${n} delay ${DISK} ${s} ${delayMs} ${DISK} ${s} 0`);
    at = s + n;
  }
  if (at < total) lines.push(pass(at, total - at));
  setTable(lines);
  return spans.map((x) => [x.start, x.len]);
}
