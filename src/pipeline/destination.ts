/**
 * Opening a file to write, crash-safe. With `atomic`, the bytes go to a file that has no name until it is complete
 * (O_TMPFILE), which is then linked in and renamed over the destination: a writer killed at any point before that
 * leaves nothing behind, and a reader sees the old file or the new one, never a torn one. File systems without
 * O_TMPFILE get a hidden `.NAME.dmaload-PID-RANDOM.tmp` beside the destination instead; the temporaries of dead
 * processes are removed the next time anything is written to that folder.
 */
import { randomBytes } from 'node:crypto';
import { constants as FS, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { DmaloadSystemError } from '../core/errors.js';
import { C, native } from '../engine/binding.js';
import { attachDirect, requireRegular } from './source.js';
import type { IoMode, OpenedFile } from './source.js';

/** The file being written: its descriptors, alignment and buffered-write flags as source.ts opens files. */
export interface Destination extends Pick<OpenedFile, 'fd' | 'directFd' | 'direct' | 'align' | 'rwFlags'> {
  path: string;
  /** Makes the written file the destination (atomic: link and rename; folder fsynced when `sync`). */
  commit(sync: boolean): Promise<void>;
  /** Closes the descriptors; a temporary file that was never committed disappears. Idempotent. */
  close(): Promise<void>;
}

const TEMP = /^\.(.*)\.dmaload-(\d+)-[0-9a-f]+\.tmp$/;

/** A hidden name beside `path`, recognisable as ours: `.NAME.dmaload-PID-RANDOM.tmp`. */
export function tempNameFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.dmaload-${process.pid}-${randomBytes(4).toString('hex')}.tmp`);
}

/** Removes `.NAME.dmaload-PID-*.tmp` files beside `path` whose process is gone (best effort). */
export async function removeStaleTemps(path: string): Promise<number> {
  const dir = dirname(path);
  let removed = 0;
  const names = await fsp.readdir(dir).catch(() => [] as string[]);
  for (const name of names) {
    const m = TEMP.exec(name);
    if (!m || m[1] !== basename(path) || alive(Number(m[2]))) continue;
    if (
      await fsp.unlink(join(dir, name)).then(
        () => true,
        () => false,
      )
    )
      removed++;
  }
  return removed;
}

function alive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // someone else's process: alive
  }
}

/**
 * Opens the file to write `path`: with `atomic`, an unnamed file in its folder (or a hidden temporary where the
 * file system has no O_TMPFILE); else `path` itself, truncated. `mode` is applied exactly, whatever the umask.
 */
export async function openDestination(path: string, opts: { atomic: boolean; io: IoMode; mode: number | undefined }): Promise<Destination> {
  const existing = await fsp.stat(path).catch((e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? undefined : Promise.reject(e)));
  if (existing) requireRegular(existing, path);
  const mode = opts.mode ?? (existing ? existing.mode & 0o7777 : 0o644);
  let handle: FileHandle;
  let temp: string | undefined; // the named temporary, when O_TMPFILE is not available
  let unnamed = false;
  if (opts.atomic) {
    await removeStaleTemps(path);
    const t = await openUnnamed(dirname(path), mode);
    if (t) {
      handle = t;
      unnamed = true;
    } else {
      temp = tempNameFor(path);
      handle = await fsp.open(temp, FS.O_WRONLY | FS.O_CREAT | FS.O_EXCL, mode);
    }
  } else {
    handle = await fsp.open(path, FS.O_WRONLY | FS.O_CREAT | FS.O_TRUNC, mode);
  }
  let direct: FileHandle | undefined;
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await direct?.close().catch(() => {});
    await handle.close().catch(() => {});
    if (temp !== undefined) await fsp.unlink(temp).catch(() => {});
  };
  try {
    if (opts.atomic || opts.mode !== undefined) await handle.chmod(mode);
    const d = await attachDirect(handle.fd, path, 'write', opts.io);
    direct = d.handle;
    return {
      path,
      fd: handle.fd,
      directFd: direct?.fd ?? -1,
      direct: direct !== undefined,
      align: d.align,
      rwFlags: d.rwFlags,
      async commit(sync: boolean) {
        if (opts.atomic) {
          if (unnamed) temp = await linkUnnamed(handle.fd, path);
          if (temp !== undefined) {
            await fsp.rename(temp, path);
            temp = undefined;
          }
        }
        if (sync && opts.atomic) await syncFolder(dirname(path));
      },
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

/** An O_TMPFILE file in `dir`, or undefined where the file system cannot make one. */
async function openUnnamed(dir: string, mode: number): Promise<FileHandle | undefined> {
  try {
    return await fsp.open(dir, C.O_TMPFILE | FS.O_WRONLY, mode);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EOPNOTSUPP' || code === 'EISDIR' || code === 'EINVAL' || code === 'ENOTSUP') return undefined;
    throw e;
  }
}

/**
 * Gives the unnamed file a name. A new destination gets its final name at once (linkat fails rather than replace
 * anything); an existing one is replaced by linking to a hidden temporary and renaming that over it. Returns the
 * temporary's name, or undefined when the file already has its final name.
 */
async function linkUnnamed(fd: number, path: string): Promise<string | undefined> {
  const r = native.linkTmpfile(fd, path);
  if (r === 0) return undefined;
  if (r !== -17 /* EEXIST */) throw new DmaloadSystemError(r, 'linkat', path);
  const temp = tempNameFor(path);
  const t = native.linkTmpfile(fd, temp);
  if (t < 0) throw new DmaloadSystemError(t, 'linkat', temp);
  return temp;
}

async function syncFolder(dir: string): Promise<void> {
  const d = await fsp.open(dir, FS.O_RDONLY | FS.O_DIRECTORY);
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}
