/**
 * Sockets that carry fds, driven from JS readiness: the addon's reactor (native/share.cc) is one thread in epoll_wait
 * that only reports "readable"/"writable"; every accept, recvmsg and sendmsg is a non-blocking call on the JS thread,
 * and libuv never sees these sockets. So each socket has exactly one reader, and nothing here blocks the event loop
 * (messages are at most 64 KiB; the bytes of loaded files never pass through a socket, only their fds).
 *
 * One reactor serves the whole process: opened with the first socket, closed with the last (so leak checks see its
 * thread and fds come and go). It keeps the process alive only while someone holds a {@link keepAlive} — a listening
 * server, a client waiting for a reply — as a net.Server or a pending request would.
 * @module
 */
import { DmaloadSystemError } from '../core/errors.js';
import { C, closeFd, native } from '../engine/binding.js';
import type { Reactor } from '../engine/binding.js';
import { MAX_FDS, MAX_MESSAGE } from './protocol.js';

const S = native.shareConstants;
const { EAGAIN, EPIPE, ECONNRESET } = C;

let reactor: Reactor | undefined;
const handlers = new Map<number, (events: number) => void>();
let nextId = 1;
let holds = 0;

function dispatch(events: number[]): void {
  for (let i = 0; i + 1 < events.length; i += 2) {
    // An id that is gone belongs to a socket closed after the event was queued: its number may be someone else's now.
    const h = handlers.get(events[i]!);
    if (h) {
      try {
        h(events[i + 1]!);
      } catch (e) {
        // Handlers catch their own errors; one that escapes must not stop the other sockets' events.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
}

function openReactor(): Reactor {
  if (reactor) return reactor;
  const r = native.reactorOpen(dispatch);
  if (typeof r === 'number') throw new DmaloadSystemError(r, 'epoll_create');
  reactor = r;
  if (holds > 0) native.reactorRef(r, true);
  return r;
}

/** Keeps the process alive until the returned function is called (once). */
export function keepAlive(): () => void {
  if (holds++ === 0 && reactor) native.reactorRef(reactor, true);
  let done = false;
  return () => {
    if (done) return;
    done = true;
    if (--holds === 0 && reactor) native.reactorRef(reactor, false);
  };
}

/** A socket registered with the reactor, reported once per arm(). */
export class Watch {
  readonly #fd: number;
  readonly #id = nextId++;
  #live = true;

  constructor(fd: number, onEvents: (events: number) => void) {
    this.#fd = fd;
    const r = openReactor();
    handlers.set(this.#id, onEvents);
    const rc = native.reactorCtl(r, 1, fd, this.#id, 0);
    if (rc < 0) {
      this.#drop();
      throw new DmaloadSystemError(rc, 'epoll_ctl');
    }
  }

  /** Reports the next of `events` (EPOLLIN, EPOLLOUT, …; hang-ups and errors always), once. */
  arm(events: number): void {
    if (!this.#live || !reactor) return;
    const rc = native.reactorCtl(reactor, 2, this.#fd, this.#id, events);
    if (rc < 0) throw new DmaloadSystemError(rc, 'epoll_ctl');
  }

  /** Unregisters; the caller closes the socket afterwards. */
  close(): void {
    if (!this.#live) return;
    if (reactor) native.reactorCtl(reactor, 3, this.#fd, this.#id, 0);
    this.#drop();
  }

  #drop(): void {
    this.#live = false;
    handlers.delete(this.#id);
    if (handlers.size === 0 && reactor) {
      native.reactorClose(reactor);
      reactor = undefined;
    }
  }
}

/** One received message: `bytes` is valid only during the callback (the receive buffer is shared). */
export interface Incoming {
  /** The datagram's real length: longer than `bytes` when it was truncated. */
  length: number;
  bytes: Uint8Array;
  /** Received fds, the receiver's to close. */
  fds: number[];
  /** Fds were dropped because there were more than MAX_FDS. */
  fdsTruncated: boolean;
}

/** Why a channel closed. */
export type CloseReason = 'local' | 'eof' | 'hangup' | { errno: number; syscall: string };

interface Outgoing {
  bytes: Uint8Array;
  fds: number[];
  /** Called once the kernel took the message (errno 0) or it could not be sent (negative errno). */
  done: (errno: number) => void;
}

// One receive buffer for every channel: a message is handled before the next is read. One byte more than the largest
// message, so that a longer one shows up as truncated (MSG_TRUNC reports its real length anyway).
const rxBuf = new Uint8Array(MAX_MESSAGE + 1);

/** Messages a channel queues for a slow peer before it stops reading from that peer. */
export const MAX_QUEUED = 64;

export interface ChannelHandlers {
  message(m: Incoming): void;
  closed(reason: CloseReason): void;
}

/** A connected SOCK_SEQPACKET socket: messages in order, fds attached, sends queued when the peer is slow. */
export class Channel {
  readonly fd: number;
  #watch: Watch;
  #handlers: ChannelHandlers;
  #out: Outgoing[] = [];
  /** pause()d by the owner (too many requests in progress). */
  #held = false;
  #closed = false;

  /** Takes ownership of `fd` (a non-blocking connected socket). */
  constructor(fd: number, handlers: ChannelHandlers) {
    this.fd = fd;
    this.#handlers = handlers;
    try {
      this.#watch = new Watch(fd, (ev) => this.#onEvents(ev));
    } catch (e) {
      closeFd(fd);
      throw e;
    }
    this.#arm();
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Messages waiting for the peer to read. */
  get queued(): number {
    return this.#out.length;
  }

  /**
   * Reading stops while the owner holds it (pause()) or while {@link MAX_QUEUED} messages wait for a peer that does
   * not read them, so a client cannot make the server queue without bound; hang-ups are still noticed.
   */
  get #paused(): boolean {
    return this.#held || this.#out.length >= MAX_QUEUED;
  }

  /** Stops reading (backpressure) until resume(). */
  pause(): void {
    if (this.#held || this.#closed) return;
    this.#held = true;
    this.#arm();
  }

  resume(): void {
    if (!this.#held || this.#closed) return;
    this.#held = false;
    this.#arm();
  }

  /**
   * Sends one message, or queues it while the peer's queue is full. `done` is called once with 0 when the kernel took
   * it, or a negative errno when it never will be (the channel closed, or sendmsg refused it: ETOOMANYREFS, …).
   */
  send(bytes: Uint8Array, fds: number[], done: (errno: number) => void = () => {}): void {
    if (this.#closed) return done(-EPIPE);
    this.#out.push({ bytes, fds, done });
    if (this.#out.length === 1) this.#flush();
    if (!this.#closed) this.#arm();
  }

  close(reason: CloseReason = 'local'): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#watch.close();
    closeFd(this.fd);
    for (const m of this.#out.splice(0)) m.done(-EPIPE);
    this.#handlers.closed(reason);
  }

  #arm(): void {
    if (this.#closed) return;
    this.#watch.arm((this.#paused ? 0 : S.EPOLLIN | S.EPOLLRDHUP) | (this.#out.length > 0 ? S.EPOLLOUT : 0));
  }

  #onEvents(ev: number): void {
    if (this.#closed) return;
    try {
      if (ev & S.EPOLLOUT) this.#flush();
      if (!this.#closed && !this.#paused && ev & (S.EPOLLIN | S.EPOLLRDHUP | S.EPOLLHUP | S.EPOLLERR)) this.#read();
      else if (!this.#closed && ev & (S.EPOLLHUP | S.EPOLLERR)) this.close('hangup');
      this.#arm();
    } catch (e) {
      // A failure here (epoll_ctl out of memory, a bug in a handler) ends this connection, not the process.
      process.emitWarning(e as Error);
      this.close({ errno: typeof (e as { errno?: unknown }).errno === 'number' ? (e as { errno: number }).errno : -5, syscall: 'dmaload share' });
    }
  }

  #flush(): void {
    while (this.#out.length > 0 && !this.#closed) {
      const m = this.#out[0]!;
      const n = native.sendMsg(this.fd, m.bytes, m.fds);
      if (n === -EAGAIN) return;
      this.#out.shift();
      m.done(n < 0 ? n : 0);
      if (n === -EPIPE || n === -ECONNRESET) return this.close('hangup');
    }
  }

  #read(): void {
    // A bounded batch per wake-up, so one chatty peer cannot starve the others; the re-arm reports the rest.
    for (let i = 0; i < 64 && !this.#closed && !this.#paused; i++) {
      const r = native.recvMsg(this.fd, rxBuf, MAX_FDS);
      if (r === -EAGAIN) return;
      if (typeof r === 'number') return this.close(r === -ECONNRESET ? 'hangup' : { errno: r, syscall: 'recvmsg' });
      const [length = 0, flags = 0, ...fds] = r;
      // Zero bytes and no fds: the peer closed (the protocol has no empty messages).
      if (length === 0 && fds.length === 0) return this.close('eof');
      this.#handlers.message({ length, bytes: rxBuf.subarray(0, Math.min(length, rxBuf.length)), fds, fdsTruncated: (flags & S.MSG_CTRUNC) !== 0 });
    }
  }
}

/** Closes fds that are ours, ignoring errors (an fd is gone either way). */
export function closeFds(fds: readonly number[]): void {
  for (const fd of fds) {
    try {
      closeFd(fd);
    } catch {
      /* already closed */
    }
  }
}
