/**
 * What a share client makes of the server's replies: an error reply as the error to throw (a code this library does
 * not know never passes as one of its own), and a load reply's stats as the LoadStats of the buffer it maps. The
 * client (client.ts) owns the conversation; this file only decodes what came back.
 * @module
 */
import type { LoadStats } from '../api/buffer.js';
import { DmaloadError, DmaloadSystemError, isErrorCode } from '../core/errors.js';
import { engine } from '../engine/engine.js';
import type { ErrorBody, LoadReplyBody } from './protocol.js';

/** The error an Error reply stands for: the server's system error, its (known) code, or ERR_SHARE_REPLY. */
export function serverError(body: Record<string, unknown>, path: string, socket: string): Error {
  const b = body as Partial<ErrorBody>;
  if (typeof b.errno === 'number' && b.errno !== 0 && typeof b.syscall === 'string') {
    return new DmaloadSystemError(b.errno, b.syscall, path, `on the dmaload server at '${socket}'`);
  }
  // A code this library does not know (a newer server's, or a peer that is no dmaload server) is not passed on as
  // if it were one: it becomes ERR_SHARE_REPLY, with the server's code in the message.
  const code = b.code;
  const known = isErrorCode(code);
  const theirs = !known && typeof code === 'string' && /^[A-Z][A-Z0-9_]{1,63}$/.test(code) ? ` (server code ${code})` : '';
  const message = `dmaload server at '${socket}': ${typeof b.message === 'string' ? b.message : 'request failed'}${theirs}`;
  return new DmaloadError(known ? code : 'ERR_SHARE_REPLY', message, { path });
}

/** A LoadReply's size and stats, each field checked (what the server sent is not trusted to be well formed). */
export function loadReplyStats(body: LoadReplyBody, socket: string): { size: number; stats: LoadStats } {
  const s = (body.stats ?? {}) as Partial<LoadReplyBody['stats']>;
  const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
  const size = num(body.size);
  const stats: LoadStats = {
    io: s.io === 'direct' || s.io === 'buffered' || s.io === 'mixed' || s.io === 'uncached' || s.io === 'network' ? s.io : 'buffered',
    directBytes: num(s.directBytes),
    copiedBytes: num(s.copiedBytes),
    ioReason: typeof s.ioReason === 'string' ? s.ioReason : undefined,
    engine: s.engine === 'threads' ? 'threads' : engine().engine,
    ms: 0,
    allocMs: 0,
    ioMs: body.cached ? 0 : num(s.loadMs),
    parts: [],
    overlap: false,
    cpuMs: 0,
    bytesPerSec: 0,
    pageCacheBytes: 0,
    bytesRead: num(s.bytesRead),
    chunkSize: 0,
    queueDepth: 0,
    served: { socket, cached: body.cached === true, serverMs: num(s.serverMs) },
  };
  // What the server checked when it loaded the file (a hub-cache blob against its name), as the server says.
  const v = s.verified;
  if (
    v &&
    typeof v.sha256 === 'string' &&
    /^[0-9a-f]{64}$/.test(v.sha256) &&
    (v.source === 'option' || v.source === 'hub-cache' || v.source === 'hub' || v.source === 'store' || v.source === 'computed')
  ) {
    stats.verified = {
      algorithm: 'sha256',
      sha256: v.sha256,
      source: v.source,
      hashMs: 0,
      extraBytes: 0,
      impl: v.impl === 'portable' || v.impl === 'openssl' ? v.impl : 'sha-ni',
    };
  }
  return { size, stats };
}
