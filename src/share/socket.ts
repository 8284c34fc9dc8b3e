/**
 * The share server's listening socket: bound in a private folder (so that setting its mode cannot be redirected by a
 * symlink someone swaps in), then hard-linked into place, which fails if anything is there.
 * @module
 */
import { linkSync, lstatSync, mkdtempSync, rmSync, unlinkSync } from 'node:fs';
import type { Stats } from 'node:fs';
import { dirname, join } from 'node:path';
import { DmaloadSystemError, errnoCode } from '../core/errors.js';
import { C, closeFd, native } from '../engine/binding.js';

/** Whether a server listens at `socket` now: connecting succeeds or its backlog is full. */
function probeSocket(socket: string): number {
  const probe = native.unixConnect(socket);
  if (probe >= 0) closeFd(probe);
  return probe >= 0 ? 0 : probe;
}

/**
 * Creates the listening socket: bound in a private folder (so that setting its mode cannot be redirected by a
 * symlink someone swaps in), then hard-linked into place, which fails if anything is there. A stale socket file
 * (connecting is refused: nobody listens) is replaced; anything else is refused.
 */
export function listen(socket: string, mode: number): number {
  const dir = mkdtempSync(join(dirname(socket), '.dmaload-'));
  try {
    const tmp = join(dir, 's');
    const fd = native.unixListen(tmp, mode, 128);
    if (fd < 0)
      throw new DmaloadSystemError(
        fd,
        'bind',
        socket,
        fd === -C.ENAMETOOLONG ? 'a Unix socket path holds at most 107 bytes (the server binds in a folder beside it first: choose a shorter path)' : undefined,
      );
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          linkSync(tmp, socket);
          return fd;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw e;
        }
        let st: Stats;
        try {
          st = lstatSync(socket);
        } catch {
          continue; // gone meanwhile
        }
        if (!st.isSocket())
          throw new DmaloadSystemError(-C.EADDRINUSE, 'bind', socket, 'the path exists and is not a socket; remove it or choose another path');
        const probe = probeSocket(socket);
        if (probe === 0 || probe === -C.EAGAIN) throw new DmaloadSystemError(-C.EADDRINUSE, 'bind', socket, 'a server is already listening there');
        // Only ECONNREFUSED says nobody listens. Any other failure (EACCES: another user's live server) proves nothing,
        // and unlinking would hand that server's path, and its clients' file descriptors, to this one.
        if (probe !== -C.ECONNREFUSED) {
          throw new DmaloadSystemError(
            -C.EADDRINUSE,
            'bind',
            socket,
            `a socket is there and connecting to it failed (${errnoCode(probe)}), so it may be in use; remove it if you know it is stale`,
          );
        }
        unlinkSync(socket); // a socket left behind by a server that died
      }
    } catch (e) {
      closeFd(fd);
      const err = e as NodeJS.ErrnoException;
      if (e instanceof DmaloadSystemError || typeof err.errno !== 'number') throw e;
      throw new DmaloadSystemError(err.errno, 'link', socket);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
