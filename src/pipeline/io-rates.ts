/**
 * What io 'auto' knows of this machine's two ways of filling fresh memory with a file's cached ranges: copying them
 * from the page cache, or reading the device again by direct I/O. Which is faster differs per machine (measured:
 * 2.2 GB/s copying against 2.0 direct on one VM; 0.7 against 2.5 on another of the same kind, whose host caches the
 * disk and whose fresh pages cost more), so the rates are measured, not assumed: every load that moves at least
 * {@link RECORD_FROM} bytes one way alone, into fresh memory and without a hash slowing it, refreshes that way's rate.
 * They are kept beside the first-touch measurement (`$XDG_CACHE_HOME/dmaload/io-rates.json`), per machine and, for
 * direct I/O, per device, and forgotten after {@link RATE_TTL_MS}.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { MiB } from '../core/util.js';
import { invalidValue } from '../core/errors.js';
import { firstTouchCachePath, machineKey } from '../engine/first-touch.js';

/** A way's rate is measured on at least this many bytes (less is mostly start-up). */
export const RECORD_FROM = 64 * MiB;
/** Rates older than this are not used: the next loads measure again. */
export const RATE_TTL_MS = 7 * 24 * 3600e3;
/** Direct I/O replaces copying only when it is faster by this factor: the rates are not exact. */
export const DIRECT_WINS_BY = 1.15;

interface Rate {
  /** Bytes per millisecond (= MB/s / 1000). */
  rate: number;
  at: number;
}

interface RateFile {
  version: 1;
  key: string;
  copy?: Rate;
  direct: Record<string, Rate>;
}

/** The rates known for one device's files, and how to report a measured one. */
export interface RateBook {
  /** Copying from the page cache into fresh memory, bytes per ms; undefined when not measured (lately). */
  readonly copy: number | undefined;
  /** Direct I/O from this device into fresh memory, bytes per ms. */
  readonly direct: number | undefined;
  /** A way moved `bytes` alone in `ms`: kept when the sample has `min` bytes (default {@link RECORD_FROM}) or more. */
  note(way: 'copy' | 'direct', bytes: number, ms: number, min?: number): void;
}

export function ioRatesPath(): string {
  return join(dirname(firstTouchCachePath()), 'io-rates.json');
}

let memo: (RateFile & { path: string }) | undefined;

function read(): RateFile & { path: string } {
  const key = machineKey();
  const path = ioRatesPath();
  if (memo?.key === key && memo.path === path) return memo;
  try {
    const v = JSON.parse(readFileSync(path, 'utf8')) as RateFile;
    if (v.version === 1 && v.key === key && typeof v.direct === 'object' && v.direct) return (memo = { ...v, path });
  } catch {
    // None yet, or unreadable: start afresh.
  }
  return (memo = { version: 1, key, direct: {}, path });
}

function fresh(r: Rate | undefined): number | undefined {
  return r && Number.isFinite(r.rate) && r.rate > 0 && Date.now() - r.at < RATE_TTL_MS ? r.rate : undefined;
}

function write(f: RateFile): void {
  try {
    const path = ioRatesPath();
    mkdirSync(dirname(path), { recursive: true });
    const tmp = `${path}.${process.pid}.tmp`;
    const { version, key, copy, direct } = f;
    writeFileSync(tmp, JSON.stringify({ version, key, copy, direct }, null, 2) + '\n');
    renameSync(tmp, path);
  } catch {
    // Best effort: this process keeps what it measured.
  }
}

/**
 * The rates for files on device `dev` (a stat's dev), or undefined with DMALOAD_IO_RATES=off (io 'auto' then copies
 * every cached range and measures nothing, the rule before rates were measured).
 */
export function rateBook(dev: number): RateBook | undefined {
  const env = process.env.DMALOAD_IO_RATES;
  if (env === 'off') return undefined;
  if (env !== undefined && env !== '' && env !== 'on') throw invalidValue('DMALOAD_IO_RATES', env, "must be 'on' or 'off'");
  const f = read();
  return {
    copy: fresh(f.copy),
    direct: fresh(f.direct[String(dev)]),
    note(way, bytes, ms, min = RECORD_FROM) {
      if (bytes < min || !(ms > 0)) return;
      const cur = read();
      const sample: Rate = { rate: bytes / ms, at: Date.now() };
      // Half the old value, half the new: one odd load does not flip the choice, a changed machine soon does.
      const mix = (old: Rate | undefined): Rate => (fresh(old) ? { rate: (old!.rate + sample.rate) / 2, at: sample.at } : sample);
      if (way === 'copy') cur.copy = mix(cur.copy);
      else cur.direct[String(dev)] = mix(cur.direct[String(dev)]);
      write(cur);
    },
  };
}
