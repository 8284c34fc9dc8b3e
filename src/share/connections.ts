/**
 * The share server's connections: accepted under limits (in all and per user), read while they keep up, and closed
 * when they sit idle, leave replies unread, or belong to a user whose fds' file systems hang. A refused or closed
 * connection is told why first (an Error with id 0), best effort.
 * @module
 */
import { DmaloadSystemError } from '../core/errors.js';
import type { ErrorCode } from '../core/errors.js';
import { C, closeFd, native } from '../engine/binding.js';
import { Channel, Watch } from './channel.js';
import type { Incoming } from './channel.js';
import type { FdGuard, Sender } from './fds.js';
import { MessageType, encode } from './protocol.js';

const S = native.shareConstants;
/** Requests one connection may have in progress; past it, the server stops reading that connection until replies go out. */
export const MAX_INFLIGHT = 16;
/** Replies a client may leave unread before the server stops reading its requests. */
export const MAX_UNREAD = 32;
/** Calls on a user's fds stuck past their time bound (a file system that does not answer) before that user is cut off. */
export const MAX_STUCK = 4;

export interface Limits {
  maxConnections: number;
  perUserConnections: number;
  idleTimeout: number;
  replyTimeout: number;
}

export interface Conn {
  channel: Channel;
  from: Sender;
  peer: string;
  inflight: number;
  lastActive: number;
  /** Replies sent since the client was last seen to have read everything. */
  sent: number;
  /** Since when the client has left bytes unread (SIOCOUTQ > 0). */
  unreadSince: number | undefined;
  /** Reading its requests is stopped until it reads its replies. */
  heldUnread: boolean;
  /** Aborted once the connection is closed (a download it waits for may then have no one left to wait for it). */
  gone: AbortController;
}

/** Every connection of one server, and its listening socket's readiness. */
export class Connections {
  readonly #listenFd: number;
  readonly #limits: Limits;
  readonly #guard: FdGuard;
  readonly #log: (line: string) => void;
  readonly #onMessage: (conn: Conn, m: Incoming) => void;
  readonly #conns = new Set<Conn>();
  readonly #perUid = new Map<number, number>();
  readonly #watch: Watch;
  readonly #timer: NodeJS.Timeout;
  readonly #socket: string;
  readonly #ownUid = process.getuid?.() ?? 0;
  #closed = false;
  /** Connections refused at accept or closed by the server. */
  dropped = 0;

  constructor(socket: string, listenFd: number, limits: Limits, guard: FdGuard, log: (line: string) => void, onMessage: (conn: Conn, m: Incoming) => void) {
    this.#socket = socket;
    this.#listenFd = listenFd;
    this.#limits = limits;
    this.#guard = guard;
    this.#log = log;
    this.#onMessage = onMessage;
    this.#watch = new Watch(listenFd, () => this.#accept());
    this.#watch.arm(S.EPOLLIN);
    const tick = Math.max(10, Math.min(1000, Math.floor(Math.min(limits.idleTimeout, limits.replyTimeout) / 4)));
    this.#timer = setInterval(() => this.#housekeeping(), tick);
    this.#timer.unref();
  }

  get size(): number {
    return this.#conns.size;
  }

  #accept(): void {
    if (this.#closed) return;
    try {
      this.#acceptSome();
    } catch (e) {
      // Never expected (epoll_ctl out of memory): keep serving the connections there are, try again shortly.
      this.#log(`accept: ${(e as Error).message}`);
      setTimeout(() => !this.#closed && this.#watch.arm(S.EPOLLIN), 100).unref();
    }
  }

  /** Why a new connection from `uid` is refused, if it is. */
  #refusal(uid: number): { code: ErrorCode; message: string } | undefined {
    const l = this.#limits;
    if (this.#conns.size >= l.maxConnections)
      return {
        code: 'ERR_SHARE_TOO_MANY_CONNECTIONS',
        message: `the server has ${this.#conns.size} connections, its limit (--max-connections); try again later`,
      };
    // The server's own user is not limited per user (its operator; as with the per-user budget).
    if (uid !== this.#ownUid && (this.#perUid.get(uid) ?? 0) >= l.perUserConnections) {
      return {
        code: 'ERR_SHARE_TOO_MANY_CONNECTIONS',
        message: `uid ${uid} has ${l.perUserConnections} connections open, the most one user may (--per-user-connections); close some`,
      };
    }
    if (this.#guard.stuck(uid) >= MAX_STUCK)
      return {
        code: 'ERR_SHARE_FD_TIMEOUT',
        message: `the file systems of fds uid ${uid} sent do not answer; the server takes no more requests from this user until they do`,
      };
    return undefined;
  }

  #acceptSome(): void {
    for (let i = 0; i < 64; i++) {
      const fd = native.unixAccept(this.#listenFd);
      if (fd === -C.EAGAIN) break;
      if (fd < 0) {
        if (fd === -C.ECONNABORTED) continue;
        // Out of fds or memory: accepting again at once would spin; give the server a moment to free some.
        this.#log(`accept: ${new DmaloadSystemError(fd, 'accept', this.#socket).message}`);
        setTimeout(() => !this.#closed && this.#watch.arm(S.EPOLLIN), 100).unref();
        return;
      }
      const cred = native.peerCred(fd);
      if (typeof cred === 'number') {
        closeFd(fd);
        continue;
      }
      const [pid, uid] = cred;
      const refused = this.#refusal(uid);
      if (refused) {
        // Told why (id 0: about the connection), then hung up; anything it sent is dropped unread with the socket.
        native.sendMsg(fd, encode(MessageType.Error, 0, refused), []);
        closeFd(fd);
        this.dropped++;
        this.#log(`pid ${pid} uid ${uid}: refused: ${refused.message}`);
        continue;
      }
      const conn: Conn = {
        channel: undefined as unknown as Channel,
        from: { uid, pid },
        peer: `pid ${pid} uid ${uid}`,
        inflight: 0,
        lastActive: performance.now(),
        sent: 0,
        unreadSince: undefined,
        heldUnread: false,
        gone: new AbortController(),
      };
      try {
        conn.channel = new Channel(fd, {
          message: (m) => this.#onMessage(conn, m),
          closed: () => {
            this.#conns.delete(conn);
            const n = (this.#perUid.get(uid) ?? 1) - 1;
            if (n > 0) this.#perUid.set(uid, n);
            else this.#perUid.delete(uid);
            this.#log(`${conn.peer}: disconnected`);
            conn.gone.abort();
          },
        });
      } catch (e) {
        this.#log(`accept: ${(e as Error).message}`);
        continue;
      }
      this.#conns.add(conn);
      this.#perUid.set(uid, (this.#perUid.get(uid) ?? 0) + 1);
      this.#log(`${conn.peer}: connected`);
    }
    this.#watch.arm(S.EPOLLIN);
  }

  /** Closes a connection the server gives up on, telling the client why (best effort: its queue may be full). */
  drop(conn: Conn, code: string, why: string): void {
    if (conn.channel.closed) return;
    this.dropped++;
    this.#log(`${conn.peer}: closing the connection: ${why}`);
    native.sendMsg(conn.channel.fd, encode(MessageType.Error, 0, { code, message: why }), []);
    conn.channel.close();
  }

  /** Idle connections, unread replies and users whose file systems hang, checked a few times per timeout. */
  #housekeeping(): void {
    const now = performance.now();
    const l = this.#limits;
    for (const conn of [...this.#conns]) {
      const q = native.socketOutq(conn.channel.fd);
      if (q > 0 || conn.channel.queued > 0) {
        conn.unreadSince ??= now;
        if (now - conn.unreadSince > l.replyTimeout) {
          this.drop(conn, 'ERR_SHARE_REPLY_TIMEOUT', `its replies stayed unread for ${l.replyTimeout} ms (--reply-timeout)`);
          continue;
        }
      } else {
        conn.unreadSince = undefined;
        conn.sent = 0;
        if (conn.heldUnread) {
          conn.heldUnread = false;
          this.hold(conn);
        }
        if (conn.inflight === 0 && now - conn.lastActive > l.idleTimeout) {
          this.drop(conn, 'ERR_SHARE_IDLE', `it sent nothing for ${l.idleTimeout} ms (--idle-timeout)`);
          continue;
        }
      }
      if (this.#guard.stuck(conn.from.uid) >= MAX_STUCK)
        this.drop(conn, 'ERR_SHARE_FD_TIMEOUT', `the file systems of fds uid ${conn.from.uid} sent do not answer`);
    }
  }

  /** Reading stops while a connection has too much in progress or leaves its replies unread. */
  hold(conn: Conn): void {
    if (conn.inflight >= MAX_INFLIGHT || conn.heldUnread) conn.channel.pause();
    else conn.channel.resume();
  }

  /** After each reply's last message: a client that leaves many replies unread is not read until it catches up. */
  replied(conn: Conn): void {
    conn.sent++;
    if (conn.sent >= MAX_UNREAD && !conn.heldUnread && native.socketOutq(conn.channel.fd) > 0) {
      conn.heldUnread = true;
      this.hold(conn);
    }
  }

  /** Stops accepting and closes every connection; the listening socket stays the caller's to close. */
  close(): void {
    this.#closed = true;
    clearInterval(this.#timer);
    this.#watch.close();
    for (const c of [...this.#conns]) c.channel.close();
  }
}
