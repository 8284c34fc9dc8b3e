/**
 * Huge pages for fresh memory, decided by measurement: what the first touch of a GiB of anonymous memory costs
 * with and without MADV_HUGEPAGE, measured once per machine and cached (`$XDG_CACHE_HOME/dmaload/first-touch.json`,
 * else `~/.cache/dmaload/`).
 *
 * Why not always huge pages: they make faulting in and pinning far cheaper on most machines, but a VM whose
 * balloon reports free memory to its host (virtio-balloon free page reporting, e.g. Firecracker) hands every freed
 * 2 MiB block back, so each fresh huge page is faulted in by the host as well: measured on the reference VM, 1.7–2.5 s
 * of CPU per GiB with MADV_HUGEPAGE against 0.3–0.4 s without (small pages come from low-order free lists that stay
 * backed, up to a point: 4 GiB of small pages took 3.5–7.7 s). Only measuring tells the two kinds of machine
 * apart.
 */
import { accessSync, constants as FS, mkdirSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { GiB, MiB, memAvailable } from '../core/util.js';
import { native } from './binding.js';
import { anonymous } from './memory.js';
import type { Region } from './binding.js';

/** One measurement: wall and CPU milliseconds to fault in `bytes` of fresh anonymous memory (MADV_POPULATE_WRITE). */
export interface TouchCost {
  wallMs: number;
  cpuMs: number;
}

export interface FirstTouch {
  version: 2;
  /** The machine it was measured on: kernel, THP settings, memory, CPUs (a change re-measures). */
  key: string;
  bytes: number;
  /** Alternating rounds: small, huge, small, huge; each in memory of its own (none freed before the end). */
  small: TouchCost[];
  huge: TouchCost[];
  /** True when every huge-page round cost no more CPU than the small-page rounds' median. */
  hugeWins: boolean;
  measuredAt: string;
}

/** Loads of at least this many bytes measure when nothing is cached yet (a smaller one would pay more than it saves). */
export const MEASURE_FROM = 256 * MiB;

function readTrim(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return '';
  }
}

/** The THP mode for anonymous memory: 'always', 'madvise', 'never' or 'unavailable'. */
export function thpMode(): string {
  return /\[(\w+)\]/.exec(readTrim('/sys/kernel/mm/transparent_hugepage/enabled'))?.[1] ?? 'unavailable';
}

export function machineKey(): string {
  const defrag = /\[([\w+]+)\]/.exec(readTrim('/sys/kernel/mm/transparent_hugepage/defrag'))?.[1] ?? '';
  return `${os.release()} thp=${thpMode()} defrag=${defrag} mem=${os.totalmem()} cpus=${os.availableParallelism()}`;
}

/**
 * Whether a virtio-balloon `features` string (one '0'/'1' per feature bit, bit 0 first, as sysfs prints it) has
 * VIRTIO_BALLOON_F_REPORTING (bit 5): free page reporting, the guest handing freed memory back to its host.
 */
export function balloonReports(features: string): boolean {
  return features.trim()[5] === '1';
}

/** Whether this machine is a VM whose balloon reports free pages to its host (see {@link balloonReports}). */
export function freePageReporting(drivers = '/sys/bus/virtio/drivers/virtio_balloon'): boolean {
  try {
    return readdirSync(drivers).some((d) => d.startsWith('virtio') && balloonReports(readTrim(join(drivers, d, 'features'))));
  } catch {
    return false;
  }
}

const REPORTING_REASON =
  'small pages: this VM hands freed memory back to its host (virtio-balloon free page reporting), so what a fresh ' +
  'huge page costs depends on how long ago memory was freed (measured 0.1 s per GiB seconds after a free, 1.5–2.6 s ' +
  'after idle) and no one-time measurement can decide; hugePages: true or DMALOAD_HUGE_PAGES=1 to choose them';

/** Where the measurement is cached: $XDG_CACHE_HOME/dmaload/first-touch.json, else ~/.cache/dmaload/first-touch.json. */
export function firstTouchCachePath(): string {
  const base = process.env.XDG_CACHE_HOME || join(os.homedir(), '.cache');
  return join(base, 'dmaload', 'first-touch.json');
}

/** This process's measurement, when the cache could not be written. */
let measured: FirstTouch | undefined;

/** Whether the measurement's cache folder exists or can be made, and is writable. */
function cacheWritable(): boolean {
  const dir = dirname(firstTouchCachePath());
  try {
    mkdirSync(dir, { recursive: true });
    accessSync(dir, FS.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** The cached measurement for this machine, or undefined. */
export function cachedFirstTouch(): FirstTouch | undefined {
  if (measured?.key === machineKey()) return measured;
  try {
    const v = JSON.parse(readFileSync(firstTouchCachePath(), 'utf8')) as FirstTouch;
    return v.version === 2 && v.key === machineKey() && Array.isArray(v.small) && Array.isArray(v.huge) ? v : undefined;
  } catch {
    return undefined;
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

async function touch(region: Region, bytes: number): Promise<TouchCost> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const r = await native.populate(region, 0, bytes);
  if (r < 0) throw new Error(`madvise(MADV_POPULATE_WRITE) failed (${r})`);
  const c = process.cpuUsage(c0);
  return { wallMs: Math.round((performance.now() - t0) * 100) / 100, cpuMs: Math.round((c.user + c.system) / 10) / 100 };
}

/** 1 GiB, or an eighth of the free memory when that is less (a multiple of 2 MiB): the measurement holds four. */
function touchBytes(): number {
  return Math.max(2 * MiB, Math.min(GiB, Math.floor(memAvailable() / 8 / (2 * MiB)) * 2 * MiB));
}

/**
 * Measures the first touch of `bytes` (default 1 GiB, less on a machine with under 8 GiB free) with and without
 * MADV_HUGEPAGE, rounds alternating, and caches the result (best effort: an unwritable cache folder only means
 * measuring again next time).
 *
 * Every round touches memory of its own, held until the end: a round in memory the previous one just freed
 * measures recycling, not what a load meets. On a VM whose balloon reports free memory to its host that
 * difference is 10× for huge pages (measured: 130–150 ms per GiB recycled within seconds, 1.5–2.6 s after 5 s
 * idle), and one cheap round must not decide for every later load: huge pages win only when every round does.
 */
export async function measureFirstTouch(bytes = touchBytes(), rounds = 2): Promise<FirstTouch> {
  const small: TouchCost[] = [];
  const huge: TouchCost[] = [];
  const held: Region[] = [];
  try {
    for (let r = 0; r < rounds; r++) {
      for (const h of [false, true]) {
        held.push(anonymous(bytes, h));
        (h ? huge : small).push(await touch(held[held.length - 1]!, bytes));
      }
    }
  } finally {
    for (const region of held) native.munmap(region);
  }
  const smallMedian = median(small.map((s) => s.cpuMs));
  const ft: FirstTouch = {
    version: 2,
    key: machineKey(),
    bytes,
    small,
    huge,
    hugeWins: huge.every((h) => h.cpuMs <= smallMedian),
    measuredAt: new Date().toISOString(),
  };
  measured = ft;
  try {
    const path = firstTouchCachePath();
    mkdirSync(dirname(path), { recursive: true });
    const tmp = `${path}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(ft, null, 2) + '\n');
    renameSync(tmp, path);
  } catch {
    // Not cached: the next process measures again.
  }
  return ft;
}

/** A one-line account of a measurement. */
export function describeFirstTouch(ft: FirstTouch): string {
  const s = median(ft.small.map((x) => x.cpuMs));
  const h = Math.max(...ft.huge.map((x) => x.cpuMs));
  return `first touch of ${ft.bytes / GiB >= 1 ? `${ft.bytes / GiB} GiB` : `${ft.bytes / MiB} MiB`} costs up to ${h.toFixed(0)} ms of CPU with MADV_HUGEPAGE, ${s.toFixed(0)} ms without (measured ${ft.measuredAt.slice(0, 10)})`;
}

/**
 * Measures now when a fresh load of `capacity` bytes will want the answer and none is known (see
 * {@link decideHugePages}); load() calls it before its clock starts, so the measurement is not counted as the load's.
 */
export async function measureIfWanted(capacity: number, decided: boolean): Promise<void> {
  if (decided) return;
  if (capacity < MEASURE_FROM || memAvailable() < 6 * GiB || cachedFirstTouch()) return; // it holds 4 GiB a moment
  const mode = thpMode();
  if (mode === 'never' || mode === 'unavailable' || freePageReporting()) return;
  // Measured once per machine, or once per process where the result cannot be kept: not worth seconds every run.
  if (!cacheWritable()) return;
  await measureFirstTouch();
}

/**
 * Whether fresh memory of `capacity` bytes gets MADV_HUGEPAGE, and why: what the caller decided (the option, or
 * DMALOAD_HUGE_PAGES 1 or 0, resolved by the API), else this machine's measurement (see {@link measureIfWanted}),
 * else no.
 */
export async function decideHugePages(capacity: number, given: { huge: boolean; reason: string } | undefined): Promise<{ huge: boolean; reason: string }> {
  if (given) return given;
  if (capacity < 2 * MiB) return { huge: false, reason: 'smaller than one huge page' };
  const mode = thpMode();
  if (mode === 'never' || mode === 'unavailable') return { huge: false, reason: `transparent huge pages are ${mode}` };
  const ft = cachedFirstTouch();
  if (ft) return measuredDecision(ft);
  if (freePageReporting()) return { huge: false, reason: REPORTING_REASON };
  const where = cacheWritable() ? '' : `; ${dirname(firstTouchCachePath())} is not writable, so loads do not measure: set XDG_CACHE_HOME to a writable folder`;
  return {
    huge: false,
    reason: `not measured on this machine yet (a load of ${MEASURE_FROM / MiB} MiB or more measures once; or dmaload probe --first-touch${where})`,
  };
}

/**
 * Whether a fresh memfd of `capacity` bytes gets huge folios (made by MADV_COLLAPSE as it is faulted in; see
 * targets/memfd.ts), and why: what the caller decided, else yes where the kernel can (Linux 6.1+, THP built in,
 * shmem_enabled not 'deny'). Unlike anonymous memory, not left to the first-touch measurement: a shmem buffer is
 * mapped again by every reader and freed by whoever closes it last, and huge folios make both ~15-50× cheaper (1 GiB
 * here: a reader's mapping touched in 6 ms instead of 94-136, unmapped and freed in 4 ms instead of 220-310), while
 * filling it took 0.46 s against 0.8-1.2 s with small pages (1.0 s the first time after a pause, on this VM whose
 * balloon hands freed memory back to its host). `interleave`: the pages are to be spread over NUMA nodes one by one,
 * which a collapse would undo (it allocates each folio on one node, not by the mapping's policy): small pages.
 */
export function decideShmemFolios(
  capacity: number,
  given: { huge: boolean; reason: string } | undefined,
  interleave = false,
): { huge: boolean; reason: string } {
  if (given) return given;
  if (capacity < 2 * MiB) return { huge: false, reason: 'smaller than one huge page' };
  if (interleave) return { huge: false, reason: "small pages: numaNode 'interleave' spreads the memfd page by page" };
  const [major = 0, minor = 0] = os
    .release()
    .split('.')
    .map((x) => parseInt(x, 10));
  if (major < 6 || (major === 6 && minor < 1))
    return { huge: false, reason: `small pages: huge shmem folios need MADV_COLLAPSE (Linux 6.1; this is ${os.release()})` };
  const shmem = /\[(\w+)\]/.exec(readTrim('/sys/kernel/mm/transparent_hugepage/shmem_enabled'))?.[1];
  if (!shmem || shmem === 'deny') return { huge: false, reason: `small pages: shmem huge pages are ${shmem ?? 'not built in'}` };
  return { huge: true, reason: 'huge folios: each 2 MiB of the memfd collapsed into one as it is faulted in (MADV_COLLAPSE)' };
}

/**
 * What a measurement decides for loads on this machine: huge pages when they won every round, except on a VM with
 * free page reporting, where small pages whatever it said (see REPORTING_REASON).
 */
export function measuredDecision(ft: FirstTouch): { huge: boolean; reason: string } {
  if (freePageReporting()) return { huge: false, reason: `${REPORTING_REASON} (${describeFirstTouch(ft)})` };
  return { huge: ft.hugeWins, reason: `${ft.hugeWins ? 'huge pages' : 'small pages'}: ${describeFirstTouch(ft)}` };
}
