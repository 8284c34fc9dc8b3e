/**
 * The wire protocol of `dmaload serve` (docs/protocol.md is the reference for other languages): one message per
 * SOCK_SEQPACKET datagram, a 16-byte little-endian header and a UTF-8 JSON object, fds attached with SCM_RIGHTS.
 *
 * ```
 * offset 0  4 bytes  magic 'DMLD' (0x44 0x4d 0x4c 0x44)
 * offset 4  u16      version (1)
 * offset 6  u16      type (MessageType)
 * offset 8  u32      id: chosen by the client, echoed in the reply
 * offset 12 u32      body length in bytes (the datagram is exactly 16 + this long)
 * offset 16 ...      body: a JSON object
 * ```
 * @module
 */
import { DmaloadError } from '../core/errors.js';
import type { ErrorCode } from '../core/errors.js';
import type { LoadStats } from '../api/buffer.js';

export const MAGIC = Uint8Array.of(0x44, 0x4d, 0x4c, 0x44);
export const VERSION = 1;
export const HEADER_SIZE = 16;
/** The longest message either side sends or accepts (header included); longer ones are refused, never read in part. */
export const MAX_MESSAGE = 64 * 1024;
/**
 * The most fds a message may carry: a load request has one, a reply one per part; a buffer of more parts is sent as a
 * LoadReply and LoadReplyMore messages (see {@link MessageType}).
 */
export const MAX_FDS = 64;

export const MessageType = {
  /** Client → server: load the file whose fd (O_RDONLY or O_RDWR, a regular file) is attached. Body `{ path? }`. */
  LoadRequest: 1,
  /**
   * Server → client: the buffer. Body {@link LoadReplyBody}; one fd per part, at most MAX_FDS of them: when there are
   * more parts, `more` LoadReplyMore messages with the same id follow at once, carrying the rest in part order.
   */
  LoadReply: 2,
  /** Client → server: the server's counters. Body `{}`, no fds. */
  StatusRequest: 3,
  /** Server → client: body {@link ServerStatus}. */
  StatusReply: 4,
  /** Server → client: the next up to MAX_FDS fds of a LoadReply (same id). Body `{ index }`, 1 to `more`. */
  LoadReplyMore: 5,
  /**
   * Client → server: plan one rank's share of a safetensors model. Body {@link PlanRequestBody}; one fd per file
   * (O_RDONLY), in `files` order.
   */
  PlanRequest: 6,
  /** Server → client: body `{ bytes }`, one fd: a sealed memfd of `bytes` bytes of JSON `{ format, tensors }`. */
  PlanReply: 7,
  /**
   * Server → client: a request failed. Body {@link ErrorBody}, no fds. Id 0: the connection is refused or being
   * closed (too many connections, idle, replies left unread); the server hangs up after it.
   */
  Error: 15,
} as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

/** How the server filled a buffer (its own load's stats) and what this request cost it. */
export interface ServedLoadStats {
  io: LoadStats['io'];
  directBytes: number;
  copiedBytes: number;
  ioReason?: string;
  engine: 'uring' | 'threads';
  /** The server's load of the file, ms (when it was loaded, not now). */
  loadMs: number;
  /** Bytes the server read from the file for this request: 0 on a cache hit. */
  bytesRead: number;
  /** The server's time for this request, from receiving it to sending the reply, ms. */
  serverMs: number;
  /** The file's SHA-256, checked while the server loaded it (a hub-cache blob's name: load()'s verify 'auto'). */
  verified?: { sha256: string; source: 'option' | 'hub-cache' | 'hub' | 'store' | 'computed'; impl: 'openssl' | 'sha-ni' | 'portable' };
}

export interface LoadReplyBody {
  size: number;
  target: 'memfd' | 'udmabuf' | 'dma-heap';
  /** In file order, one per attached fd: where the part is in the buffer and how many bytes of data it holds. */
  parts: Array<{ offset: number; size: number }>;
  /** Whether the buffer was already in the server's cache. */
  cached: boolean;
  stats: ServedLoadStats;
  /** LoadReplyMore messages that follow with the rest of the fds (absent or 0: this message has them all). */
  more?: number;
}

/** A PlanRequest: what loadModel(path, { rank, worldSize, split, tensors }) takes, for the files attached. */
export interface PlanRequestBody {
  /** Display names of the attached files, one per fd (a model's .safetensors file, or each shard of its index). */
  files: string[];
  rank: number;
  worldSize: number;
  split?: 'tensors' | 'rows';
  /** A selection of tensor names (default: all). */
  tensors?: string[];
  path?: string;
}

/** What `dmaload serve` reports about itself (StatusReply; {@link ShareServer.status}). */
export interface ServerStatus {
  pid: number;
  version: number;
  target: 'memfd' | 'udmabuf' | 'dma-heap';
  /** Bytes the server's buffers may hold, cached or held by clients. */
  budget: number;
  /** Bytes any one user's loads may hold (the server's own user is not limited). */
  perUserBudget: number;
  /** Bytes held now: every buffer the server made that the cache or any client still holds, and loads in progress. */
  used: number;
  /** Bytes of the cached buffers (part of `used`). */
  cachedBytes: number;
  /** Files in the cache. */
  entries: number;
  hits: number;
  misses: number;
  /** Files read from storage. */
  loads: number;
  /** Cache entries dropped to stay under the budget (clients that still hold them keep their pages). */
  evictions: number;
  /** Error replies sent. */
  errors: number;
  /** Clients connected now. */
  connections: number;
  /** Connections the server closed: refused at accept (limits), idle, or with replies left unread. */
  dropped: number;
  /** Loads waiting for room in the budget (they wait up to --budget-wait, fairly across users). */
  queued: number;
  /** Native calls on clients' fds in progress (each a thread; at most 64, 8 per user), stuck ones included. */
  fdCalls: number;
  /** Received fds waiting for one of those threads to close them. */
  fdsParked: number;
  /** Loads abandoned because they made no progress for the stall timeout (--stall-timeout). */
  stalled: number;
}

export interface ErrorBody {
  /** A stable code: the library's own (`ERR_…`) or an errno name (`ENOENT`). */
  code: string;
  message: string;
  /** For system errors: the negative errno and the failed call. */
  errno?: number;
  syscall?: string;
}

export interface Message {
  type: number;
  id: number;
  body: Record<string, unknown>;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** One message's bytes. Throws ERR_SHARE_MESSAGE_TOO_LARGE when it would not fit in MAX_MESSAGE. */
export function encode(type: MessageType, id: number, body: object): Uint8Array {
  const json = encoder.encode(JSON.stringify(body));
  if (HEADER_SIZE + json.length > MAX_MESSAGE) {
    throw new DmaloadError(
      'ERR_SHARE_MESSAGE_TOO_LARGE',
      `a dmaload share message of ${HEADER_SIZE + json.length} bytes is longer than the protocol's ${MAX_MESSAGE}`,
    );
  }
  const out = new Uint8Array(HEADER_SIZE + json.length);
  const dv = new DataView(out.buffer);
  out.set(MAGIC, 0);
  dv.setUint16(4, VERSION, true);
  dv.setUint16(6, type, true);
  dv.setUint32(8, id >>> 0, true);
  dv.setUint32(12, json.length, true);
  out.set(json, HEADER_SIZE);
  return out;
}

/** Why a message was refused: the code to answer with, and whether the peer speaks another protocol entirely. */
export class ProtocolError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    /** The request id when the header was readable (0 otherwise). */
    readonly id: number,
    /** Not this protocol at all (no magic, no header): answer once and hang up. */
    readonly fatal: boolean,
  ) {
    super(message);
  }
}

/**
 * Parses one received datagram of `length` bytes (its real length: more than `bytes` holds when it was truncated).
 * Throws {@link ProtocolError}.
 */
export function decode(bytes: Uint8Array, length: number): Message {
  if (length < HEADER_SIZE) throw new ProtocolError('ERR_SHARE_PROTOCOL', `message of ${length} bytes is shorter than the ${HEADER_SIZE}-byte header`, 0, true);
  for (let i = 0; i < MAGIC.length; i++) {
    if (bytes[i] !== MAGIC[i])
      throw new ProtocolError('ERR_SHARE_PROTOCOL', "message does not start with the magic 'DMLD': not a dmaload share message", 0, true);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, HEADER_SIZE);
  const version = dv.getUint16(4, true);
  const type = dv.getUint16(6, true);
  const id = dv.getUint32(8, true);
  const bodyLength = dv.getUint32(12, true);
  if (length > MAX_MESSAGE || length > bytes.length) {
    throw new ProtocolError('ERR_SHARE_MESSAGE_TOO_LARGE', `message of ${length} bytes is longer than the protocol's ${MAX_MESSAGE}`, id, false);
  }
  if (version !== VERSION)
    throw new ProtocolError('ERR_SHARE_VERSION', `protocol version ${version} is not supported (this side speaks ${VERSION})`, id, false);
  if (HEADER_SIZE + bodyLength !== length) {
    throw new ProtocolError('ERR_SHARE_PROTOCOL', `header says the body is ${bodyLength} bytes but the message has ${length - HEADER_SIZE}`, id, false);
  }
  let body: unknown;
  try {
    body = JSON.parse(decoder.decode(bytes.subarray(HEADER_SIZE, length)));
  } catch {
    throw new ProtocolError('ERR_SHARE_PROTOCOL', 'message body is not UTF-8 JSON', id, false);
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body))
    throw new ProtocolError('ERR_SHARE_PROTOCOL', 'message body is not a JSON object', id, false);
  return { type, id, body: body as Record<string, unknown> };
}
