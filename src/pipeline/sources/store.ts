/**
 * The local copy a network load writes while it loads (`cache` option): every chunk that lands in the target is also
 * written to a partial file on disk (direct I/O where the file system has it, from the target's own pages: no
 * second copy in memory), and a record beside it says which byte ranges are on disk. An interrupted load resumes
 * from there: the ranges on disk are read back locally, only the rest is fetched. The copy is put in place (renamed
 * to its final name) only once every byte is there and the whole object's SHA-256 was checked while loading, so no
 * torn or unverified file is ever visible under the final name.
 *
 * The record is rewritten (atomically, after an fdatasync of the partial file) at most every 64 MiB written and when
 * the load ends, however it ends: what it lists is on disk, so a resume never trusts bytes that were not written.
 */
import { promises as fsp } from 'node:fs';
import { dirname } from 'node:path';
import { DmaloadError } from '../../core/errors.js';
import { C, native } from '../../engine/binding.js';
import type { Region } from '../../engine/binding.js';
import * as engine from '../../engine/engine.js';
import { IoQueue } from '../../engine/engine.js';
import { openFile } from '../source.js';
import type { OpenedFile } from '../source.js';

/** What identifies the object the partial file holds bytes of; a record for another version is thrown away. */
export interface Identity {
  size: number;
  etag: string | undefined;
  lastModified: string | undefined;
  sha256: string | undefined;
}

interface Record extends Identity {
  version: 1;
  /** Merged, sorted [start, end) byte ranges that are on disk. */
  ranges: Array<[number, number]>;
}

const SAVE_EVERY = 64 * 1024 * 1024;
/** …and at most this long (ms) after a write: a killed process (no close()) loses at most that much. */
const SAVE_MS = 250;

/** Merges [start, end) into sorted, disjoint `ranges` (in place). */
export function addRange(ranges: Array<[number, number]>, start: number, end: number): void {
  ranges.push([start, end]);
  ranges.sort((a, b) => a[0] - b[0]);
  const out: Array<[number, number]> = [];
  for (const r of ranges) {
    const last = out.at(-1);
    if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
    else out.push([r[0], r[1]]);
  }
  ranges.splice(0, ranges.length, ...out);
}

/**
 * Splits segments ([fileOffset, bufOffset, length, …]) into those `have` covers and the rest, keeping each piece's
 * place in the buffer.
 */
export function splitByHave(segments: readonly number[], have: ReadonlyArray<[number, number]>): { local: number[]; remote: number[] } {
  const local: number[] = [];
  const remote: number[] = [];
  for (let i = 0; i < segments.length; i += 3) {
    const f = segments[i]!;
    const b = segments[i + 1]!;
    const len = segments[i + 2]!;
    let at = f;
    const end = f + len;
    for (const [s, e] of have) {
      if (e <= at || s >= end) continue;
      if (s > at) remote.push(at, b + (at - f), s - at);
      const ls = Math.max(s, at);
      const le = Math.min(e, end);
      local.push(ls, b + (ls - f), le - ls);
      at = le;
      if (at >= end) break;
    }
    if (at < end) remote.push(at, b + (at - f), end - at);
  }
  return { local, remote };
}

/** A partial file and its record. {@link PartialStore.open} creates or resumes it. */
export class PartialStore {
  readonly partial: string;
  readonly recordPath: string;
  #record: Record;
  #file: OpenedFile;
  #direct: IoQueue | undefined;
  #buffered: IoQueue;
  #pending = new Set<Promise<void>>();
  #sinceSave = 0;
  #dirty = false;
  #timer: NodeJS.Timeout;
  #failure: unknown;
  #saving: Promise<void> = Promise.resolve();
  #closed = false;

  private constructor(partial: string, recordPath: string, record: Record, file: OpenedFile) {
    this.partial = partial;
    this.recordPath = recordPath;
    this.#record = record;
    this.#file = file;
    this.#buffered = new IoQueue(file.fd, { write: true, direct: false, depth: 8, path: partial });
    if (file.direct) this.#direct = new IoQueue(file.directFd, { write: true, direct: true, depth: 16, path: partial });
    // A killed process (SIGKILL, the OOM killer) runs no close(): the record is kept at most SAVE_MS behind.
    this.#timer = setInterval(() => {
      if (this.#dirty && !this.#closed) {
        this.#dirty = false;
        this.#save().catch(() => {});
      }
    }, SAVE_MS);
    this.#timer.unref();
  }

  /**
   * Opens the partial file at `partial` (created with its folder when missing) and its record at `recordPath`; a
   * record of another version of the object (size, ETag, Last-Modified or SHA-256 differ) starts over from nothing.
   */
  static async open(partial: string, recordPath: string, id: Identity): Promise<PartialStore> {
    await fsp.mkdir(dirname(partial), { recursive: true });
    let record: Record = { version: 1, ...id, ranges: [] };
    const old = await fsp
      .readFile(recordPath, 'utf8')
      .then((t) => JSON.parse(t) as Record)
      .catch(() => undefined);
    const st = await fsp.stat(partial).catch(() => undefined);
    // Without a strong validator (a strong ETag or a SHA-256) bytes on disk cannot be known to be this version's.
    const pinned = id.etag !== undefined || id.sha256 !== undefined;
    if (
      pinned &&
      old &&
      st?.isFile() &&
      old.version === 1 &&
      old.size === id.size &&
      old.etag === id.etag &&
      old.lastModified === id.lastModified &&
      old.sha256 === id.sha256 &&
      Array.isArray(old.ranges)
    ) {
      // Only ranges inside the object and on disk count.
      const ranges = old.ranges.filter((r) => Array.isArray(r) && r[0] >= 0 && r[0] < r[1] && r[1] <= Math.min(id.size, st.size));
      record = { ...record, ranges: ranges.map((r) => [r[0], r[1]]) };
    } else {
      await fsp.rm(partial, { force: true });
    }
    const file = await openFile(partial, 'write', 'auto');
    try {
      return new PartialStore(partial, recordPath, record, file);
    } catch (e) {
      await file.close();
      throw e;
    }
  }

  /** The ranges on disk. */
  get have(): ReadonlyArray<[number, number]> {
    return this.#record.ranges;
  }

  /** Whether every byte of the object is on disk. */
  get complete(): boolean {
    const r = this.#record.ranges;
    return this.#record.size === 0 || (r.length === 1 && r[0]![0] === 0 && r[0]![1] >= this.#record.size);
  }

  /**
   * Reads the `local` segments back from the partial file into `region` (direct I/O where it can), their bytes
   * handed to `hash` as for any read. Resolves with the bytes read.
   */
  async readBack(
    region: Region,
    local: number[],
    o: { signal: AbortSignal; hash?: import('../../engine/binding.js').Hasher | undefined; onProgress?: ((b: number) => void) | undefined },
  ): Promise<number> {
    const src = await openFile(this.partial, 'read', 'auto');
    try {
      const r = await engine.run({
        fd: src.direct ? src.directFd : src.fd,
        write: false,
        direct: src.direct,
        target: region,
        segments: local,
        padTo: src.direct ? src.align.offsetAlign : 1,
        bounce: false,
        populate: false,
        rwFlags: 0,
        hash: o.hash,
        tuning: { chunk: 4 << 20, depth: 8 },
        path: this.partial,
        signal: o.signal,
        onProgress: o.onProgress,
      });
      if (r.short) throw new DmaloadError('ERR_FILE_CHANGED', `'${this.partial}' became shorter while it was read back; load again`, { path: this.partial });
      return r.bytes;
    } finally {
      await src.close();
    }
  }

  /** Writes [fileOffset, +length) from the region to the partial file, in the background; recorded once written. */
  write(region: Region, bufOffset: number, fileOffset: number, length: number): void {
    if (this.#failure !== undefined || this.#closed) return;
    const block = this.#file.align.offsetAlign || 4096;
    const end = fileOffset + length;
    // Direct I/O for whole blocks (the file's tail rounded up: the region is padded, the file cut back at the end).
    const tail = end === this.#record.size;
    const aligned = fileOffset % block === 0 && bufOffset % block === 0 && (length % block === 0 || tail);
    const len = aligned ? Math.ceil(length / block) * block : length;
    const q = aligned && this.#direct ? this.#direct : this.#buffered;
    const p = q
      .submit(region, bufOffset, fileOffset, len)
      .then(async () => {
        addRange(this.#record.ranges, fileOffset, end);
        this.#dirty = true;
        this.#sinceSave += length;
        if (this.#sinceSave >= SAVE_EVERY) {
          this.#sinceSave = 0;
          await this.#save();
        }
      })
      .catch((e: unknown) => {
        // A full disk or a write error stops the copy, never the load: the record keeps what is on disk.
        this.#failure ??= e;
      });
    this.#pending.add(p);
    void p.finally(() => this.#pending.delete(p));
  }

  /** Why writing stopped, if it did (the load went on without its copy). */
  get failure(): unknown {
    return this.#failure;
  }

  /** Waits for every write started so far. */
  async drain(): Promise<void> {
    while (this.#pending.size > 0) await Promise.allSettled([...this.#pending]);
  }

  /** fdatasync, then the record, atomically: what it says is on disk is. */
  #save(): Promise<void> {
    this.#saving = this.#saving.then(async () => {
      native.fadvise(this.#file.fd, 0, 0, C.POSIX_FADV_DONTNEED);
      const fh = await fsp.open(this.partial, 'r+');
      try {
        await fh.datasync();
      } finally {
        await fh.close();
      }
      const tmp = `${this.recordPath}.${process.pid}.tmp`;
      await fsp.writeFile(tmp, JSON.stringify(this.#record));
      await fsp.rename(tmp, this.recordPath);
    });
    return this.#saving;
  }

  /**
   * Every byte is on disk and verified: cuts the file to the object's size, syncs it, and hands it to `place` (which
   * renames it to its final name); the record goes. Returns false (and keeps the partial file) when it is not complete.
   */
  async commit(place: (partial: string) => Promise<void>): Promise<boolean> {
    await this.drain();
    if (this.#failure !== undefined || !this.complete) return false;
    await this.close(false);
    await fsp.truncate(this.partial, this.#record.size);
    const fh = await fsp.open(this.partial, 'r+');
    try {
      await fh.datasync();
    } finally {
      await fh.close();
    }
    await place(this.partial);
    await fsp.rm(this.recordPath, { force: true });
    return true;
  }

  /** The bytes on disk are not the object's (a hash mismatch): the partial file and its record go. */
  async discard(): Promise<void> {
    await this.close(false);
    await fsp.rm(this.recordPath, { force: true });
    await fsp.rm(this.partial, { force: true });
  }

  /** Ends writing: waits for the writes, saves the record (unless `save` is false), closes the file. Idempotent. */
  async close(save = true): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    await this.drain();
    // A save the timer started finishes first: none lands after commit() removed the record.
    await this.#saving.catch(() => {});
    if (save) await this.#save().catch(() => {});
    await this.#direct?.close();
    await this.#buffered.close();
    this.#direct = undefined;
    await this.#file.close();
  }
}
