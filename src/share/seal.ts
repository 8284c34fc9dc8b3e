/**
 * Turning a loaded buffer into something the server can hand out, and a received one back into a LoadedBuffer.
 *
 * Server side, {@link exportBuffer}: the server keeps only fds, never a mapping. A memfd is sealed
 * F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE (and F_SEAL_SEAL) before its first fd leaves, so no client can change
 * what another reads or make its mapping fault; F_SEAL_WRITE needs the writable mapping gone first, so the memfd is
 * duplicated, the load's buffer closed (unmapping it), and only then sealed. dma-bufs (udmabuf, dma-heap) cannot be
 * sealed: whoever holds one may map it writable. The server documents that.
 *
 * Client side, {@link mapReceived}: every received fd is mapped PROT_READ, MAP_SHARED (zero-copy), side by side into
 * one reserved range when there are several parts, after checking that each is at least as long as the reply says
 * (a shorter one would fault on access) and that a memfd is sealed (so it stays that long and those bytes).
 * @module
 */
import { fstatSync } from 'node:fs';
import { LoadedBuffer } from '../api/buffer.js';
import type { LoadStats } from '../api/buffer.js';
import { DmaloadError, DmaloadSystemError } from '../core/errors.js';
import { roundUp } from '../core/util.js';
import { C, PAGE_SIZE, closeFd, native } from '../engine/binding.js';
import type { Region } from '../engine/binding.js';
import { HUGE } from '../engine/memory.js';
import type { Allocation, Part } from '../targets/types.js';
import { closeFds } from './channel.js';
import type { LoadReplyBody } from './protocol.js';

export type ShareTarget = LoadReplyBody['target'];
export const SHARE_TARGETS: readonly ShareTarget[] = ['memfd', 'udmabuf', 'dma-heap'];

/** The seals every served memfd carries. */
export const SERVED_SEALS = C.F_SEAL_SHRINK | C.F_SEAL_GROW | C.F_SEAL_WRITE;

/** What the server keeps of a loaded file: fds only, one per part. */
export interface Exported {
  fds: number[];
  parts: Array<{ offset: number; size: number }>;
}

function dup(fd: number, path: string): number {
  const d = native.dupFd(fd);
  if (d < 0) throw new DmaloadSystemError(d, 'fcntl', path);
  return d;
}

/**
 * Takes a freshly loaded buffer apart into fds the server can send: duplicates of its memfd or dma-bufs, the buffer
 * closed (its mapping gone, unmapped off the event loop), a memfd then sealed against every change. Closes `buf`
 * whatever happens.
 */
export async function exportBuffer(buf: LoadedBuffer, target: ShareTarget): Promise<Exported> {
  const fds: number[] = [];
  try {
    const parts = buf.parts.map((p) => ({ offset: p.offset, size: p.size }));
    if (target === 'memfd') fds.push(dup(buf.fd, buf.path));
    else for (const p of buf.parts) fds.push(dup(p.fd, buf.path));
    await buf.closeSoon();
    if (target === 'memfd') {
      if (parts.length === 0) parts.push({ offset: 0, size: 0 }); // an empty file still has its (empty) memfd
      const s = native.seals(fds[0]!, SERVED_SEALS | C.F_SEAL_SEAL);
      if (s < 0) throw new DmaloadSystemError(s, 'fcntl', buf.path, s === -16 ? 'F_SEAL_WRITE: the memfd is still mapped writable somewhere' : 'F_ADD_SEALS');
    }
    return { fds, parts };
  } catch (e) {
    buf.close();
    closeFds(fds);
    throw e;
  }
}

/** Checks a load reply's layout against the fds that came with it; throws ERR_SHARE_REPLY naming what is wrong. */
function checkLayout(body: LoadReplyBody, fds: readonly number[], socket: string): void {
  const bad = (what: string) => new DmaloadError('ERR_SHARE_REPLY', `the dmaload server at '${socket}' sent a malformed reply: ${what}`, { path: socket });
  if (!Number.isSafeInteger(body.size) || body.size < 0) throw bad('size is not a byte count');
  if (!SHARE_TARGETS.includes(body.target)) throw bad(`unknown target ${JSON.stringify(body.target)}`);
  if (!Array.isArray(body.parts) || body.parts.length !== fds.length || fds.length === 0)
    throw bad(`${fds.length} fds for ${Array.isArray(body.parts) ? body.parts.length : 'no'} parts`);
  if (body.target === 'memfd' && fds.length !== 1) throw bad('a memfd reply must carry exactly one fd');
  let end = 0;
  for (const [i, p] of body.parts.entries()) {
    if (p === null || typeof p !== 'object' || !Number.isSafeInteger(p.offset) || !Number.isSafeInteger(p.size) || p.size < 0)
      throw bad(`part ${i} is not { offset, size }`);
    if (p.offset !== end || p.offset % PAGE_SIZE !== 0) throw bad(`part ${i} starts at ${p.offset}, not at ${end} on a page boundary`);
    end = p.offset + roundUp(p.size, PAGE_SIZE);
  }
  const last = body.parts.at(-1)!;
  if (last.offset + last.size !== body.size) throw bad(`parts cover ${last.offset + last.size} bytes, not ${body.size}`);
}

/**
 * Maps the fds of a load reply into one view (a memfd copy-on-write, dma-bufs read-only; see below) and wraps them in a LoadedBuffer that owns them (close()
 * unmaps and closes them). Takes ownership of `fds`: they are closed if this throws.
 */
export function mapReceived(path: string, socket: string, body: LoadReplyBody, fds: number[], stats: LoadStats): LoadedBuffer {
  let region: Region | undefined;
  try {
    checkLayout(body, fds, socket);
    for (const [i, fd] of fds.entries()) {
      const need = body.parts[i]!.size;
      const st = fstatSync(fd);
      if (st.size < need)
        throw new DmaloadError('ERR_SHARE_REPLY', `the dmaload server at '${socket}' sent part ${i} of ${st.size} bytes for ${need}`, { path: socket });
      if (body.target === 'memfd') {
        const seals = native.seals(fd, 0);
        if (seals < 0 || (seals & SERVED_SEALS) !== SERVED_SEALS) {
          throw new DmaloadError('ERR_SHARE_REPLY', `the dmaload server at '${socket}' sent a memfd that is not sealed against writes and resizing`, {
            path: socket,
          });
        }
      }
    }
    const capacity = roundUp(body.size, PAGE_SIZE);
    if (capacity > 0 && fds.length === 1) {
      // A sealed memfd is mapped private and writable: reads share the server's pages (zero-copy, one copy in
      // memory), and a stray write from JS lands in a private copy-on-write page instead of faulting the process
      // (nothing can write the shared buffer: F_SEAL_WRITE). dma-bufs refuse private mappings, so they stay
      // read-only and shared, and a write into them faults.
      // A hugetlb memfd (its block size is the huge page's) is mapped shared and read-only too: a private mapping of
      // one reserves pool pages for copy-on-write in every client.
      const cow = body.target === 'memfd' && fstatSync(fds[0]!).blksize <= PAGE_SIZE;
      const prot = cow ? C.PROT_READ | C.PROT_WRITE : C.PROT_READ;
      const flags = cow ? C.MAP_PRIVATE : C.MAP_SHARED;
      // At 2 MiB: the server's huge folios are then mapped by PMDs (a GiB touched in ms instead of a tenth of a second).
      const r = native.mmap(body.size, prot, flags, fds[0]!, 0, cow && body.size >= HUGE ? HUGE : 0);
      if (typeof r === 'number') throw new DmaloadSystemError(r, 'mmap', path);
      region = r;
    } else if (capacity > 0) {
      // Several dma-bufs: one reserved range, each mapped over its slice, so the CPU view is contiguous.
      const r = native.mmap(capacity, C.PROT_NONE, C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_NORESERVE, -1, 0, 0);
      if (typeof r === 'number') throw new DmaloadSystemError(r, 'mmap', path);
      region = r;
      for (const [i, p] of body.parts.entries()) {
        const len = roundUp(p.size, PAGE_SIZE);
        const rc = len > 0 ? native.mmapInto(r, p.offset, len, C.PROT_READ, C.MAP_SHARED, fds[i]!, 0) : 0;
        if (rc < 0) throw new DmaloadSystemError(rc, 'mmap', path);
      }
    }
  } catch (e) {
    if (region) native.munmap(region);
    closeFds(fds);
    throw e;
  }
  const parts: Part[] = body.parts.map((p, i) => ({ fd: fds[i]!, offset: p.offset, size: p.size }));
  let open = true;
  const alloc: Allocation = {
    region,
    directInto: false,
    readOnly: true,
    layout: body.parts.map((p) => ({ offset: p.offset, length: roundUp(p.size, PAGE_SIZE) })),
    populateInJob: false,
    allocPart: async () => {},
    finish: () => parts,
    close() {
      if (!open) return;
      open = false;
      if (region) native.munmap(region);
      region = undefined;
      for (const fd of fds) closeFd(fd);
    },
    ...(body.target === 'memfd' ? { fd: fds[0]! } : {}),
  };
  return new LoadedBuffer(path, body.size, body.target, alloc, parts, stats);
}
