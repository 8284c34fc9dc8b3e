/**
 * Ranged GETs on kept-alive connections of its own: the network source's receive path. undici (which opens objects,
 * follows redirects, goes through proxies and streams servers without ranges) gives every socket read a new 64 KiB
 * buffer and copies every byte into its parser's memory; at a GiB that was ~30 full garbage collections and 3 CPU-s
 * here, where reading each connection into one reused buffer (`onread`) and copying into the target took 1.1; the
 * body is now read straight into the target, the reused buffer kept for heads (docs/benchmarks.md). It speaks only
 * what a ranged read needs: one GET at a time per connection, an answer framed by Content-Length. An answer the
 * caller accepts but that is framed otherwise (chunked, or no length) is WireUnsupported before any of its body is
 * handed on, and the caller goes back to undici.
 */
import net from 'node:net';
import tls from 'node:tls';
import { AbortError } from '../../core/errors.js';

export type WireHeaders = Record<string, string | string[] | undefined>;

/** What one GET's answer goes to: `start` sees status and headers (and throws to refuse them), `data` the body. */
export interface WireSink {
  start(status: number, headers: WireHeaders): void;
  data(chunk: Buffer): void;
  /**
   * Where the next at most `max` body bytes may be read straight to (the target's pages at the body's place), or
   * undefined for `data`. What is read there is reported by `placed`. Valid until the answer ends.
   */
  place?(max: number): Uint8Array | undefined;
  placed?(n: number): void;
}

/** The answer was accepted but is not framed by Content-Length: nothing of its body was handed on. */
export class WireUnsupported extends Error {}

/** The largest head (status line and headers) taken. */
const MAX_HEAD = 64 * 1024;
/** Each connection's one read buffer (heads, and bodies that cannot be read in place). */
const READ_BUFFER = 256 * 1024;
/** The most one read in place asks for. */
const PLACE_MAX = 4 * 1024 * 1024;
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** A network failure with an errno-style code (the caller retries those). */
function netError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

interface Exchange {
  sink: WireSink;
  head: Buffer[];
  headLen: number;
  /** Body bytes still to come; -1 while reading the head. */
  left: number;
  /** Any byte of the answer arrived. */
  got: boolean;
  keep: boolean;
  done: (e?: Error) => void;
}

class Conn {
  readonly socket: net.Socket;
  ex: Exchange | undefined;
  dead = false;
  used = false;
  /** Whether any byte of the last answer arrived (a kept connection that failed before one was stale). */
  answered = false;
  /** What failed first (a stall while connecting is reported as such, not as the close that followed). */
  #failure: Error | undefined;
  #ready: Promise<void>;
  readonly #scratch = Buffer.allocUnsafe(READ_BUFFER);
  /** Where the socket reads next, when that is in place (the sink's target). */
  #inPlace: Uint8Array | undefined;

  constructor(u: URL, ca: string[] | undefined, stallMs: number) {
    const host = u.hostname.replace(/^\[|\]$/g, '');
    const tlsOn = u.protocol === 'https:';
    const port = Number(u.port || (tlsOn ? 443 : 80));
    // Node calls `buffer` after each callback for where the next read goes: the body's place in the target while an
    // answer's body is due (the kernel copies into it: no copy here), the scratch buffer otherwise. An answer ends
    // either in a callback (then the next read goes to the scratch buffer) or with the socket destroyed, so no read
    // ever lands in a target after its answer.
    const onread = {
      buffer: () => this.#nextBuffer(),
      callback: (n: number, b: Uint8Array) => {
        this.#read(n, b);
        return true;
      },
    } as unknown as net.OnReadOpts;
    // tls.connect takes onread as net.connect does (Node ≥ 15.1); its typings do not say so.
    const secure: tls.ConnectionOptions = { host, port, ALPNProtocols: ['http/1.1'], ...(net.isIP(host) ? {} : { servername: host }), ...(ca ? { ca } : {}) };
    this.socket = tlsOn ? tls.connect(Object.assign(secure, { onread })) : net.connect({ host, port, onread });
    this.socket.setNoDelay(true);
    this.socket.setTimeout(stallMs, () => this.#fail(netError('ETIMEDOUT', `no byte for ${stallMs} ms`)));
    this.#ready = new Promise<void>((resolve, reject) => {
      this.socket.once(tlsOn ? 'secureConnect' : 'connect', resolve);
      this.socket.once('error', reject);
      this.socket.once('close', () => reject(this.#failure ?? netError('ECONNRESET', 'the connection closed before it was made')));
    });
    // Awaited only for a connection being made; a rejection after that is the same failure #fail reports.
    this.#ready.catch(() => {});
    this.socket.on('error', (e) => this.#fail(e));
    this.socket.on('end', () => this.#fail(netError('ECONNRESET', 'the server closed the connection')));
    this.socket.on('close', () => this.#fail(netError('ECONNRESET', 'the connection closed')));
  }

  /** Resolves once connected (and the TLS handshake is done); an abort destroys the connection. */
  async ready(signal: AbortSignal): Promise<void> {
    const onAbort = () => this.destroy();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      if (signal.aborted) this.destroy();
      await this.#ready;
    } catch (e) {
      throw signal.aborted ? new AbortError(undefined, { cause: signal.reason }) : e;
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  /** Sends one GET and runs its answer through `sink`; resolves at the body's end. */
  get(path: string, host: string, headers: Record<string, string>, signal: AbortSignal, sink: WireSink): Promise<{ keep: boolean }> {
    let req = `GET ${path} HTTP/1.1\r\nhost: ${host}\r\n`;
    for (const [k, v] of Object.entries(headers)) {
      if (k.toLowerCase() === 'host') continue;
      if (!TOKEN.test(k) || /[\r\n\0]/.test(v)) throw new TypeError(`invalid request header '${k}'`);
      req += `${k}: ${v}\r\n`;
    }
    req += '\r\n';
    return new Promise((resolve, reject) => {
      const onAbort = () => this.#fail(new AbortError(undefined, { cause: signal.reason }));
      const ex: Exchange = {
        sink,
        head: [],
        headLen: 0,
        left: -1,
        got: false,
        keep: true,
        done: (e) => {
          this.ex = undefined;
          signal.removeEventListener('abort', onAbort);
          this.socket.unref();
          this.answered = ex.got;
          if (e === undefined) resolve({ keep: ex.keep && !this.dead });
          else reject(e);
        },
      };
      this.ex = ex;
      this.used = true;
      this.socket.ref();
      signal.addEventListener('abort', onAbort, { once: true });
      if (signal.aborted) return onAbort();
      this.socket.write(req);
    });
  }

  destroy(): void {
    this.dead = true;
    this.socket.destroy();
  }

  #fail(e: unknown): void {
    this.dead = true;
    const err = e instanceof Error ? e : new Error(String(e));
    this.#failure ??= err;
    const ex = this.ex;
    if (!this.socket.destroyed) this.socket.destroy();
    ex?.done(err);
  }

  #nextBuffer(): Uint8Array {
    const ex = this.ex;
    this.#inPlace = ex && ex.left > 0 && !this.dead ? ex.sink.place?.(Math.min(ex.left, PLACE_MAX)) : undefined;
    return this.#inPlace ?? this.#scratch;
  }

  #read(n: number, b: Uint8Array): void {
    const ex = this.ex;
    // Bytes with no request out: a server that does not keep to the protocol. Never reused.
    if (!ex) return this.#fail(netError('ECONNRESET', 'bytes arrived with no request out'));
    ex.got = true;
    try {
      if (b === this.#inPlace) {
        // Read straight into the target, at most what the body still owes.
        ex.left -= n;
        ex.sink.placed!(n);
        if (ex.left === 0) {
          if (!ex.keep || this.dead) this.destroy();
          ex.done();
        }
        return;
      }
      return this.#scan(ex, n, b as Buffer);
    } catch (e) {
      this.#fail(e);
    }
  }

  /** Bytes read into the scratch buffer: heads, and bodies (or their starts) handed to the sink. */
  #scan(ex: Exchange, n: number, b: Buffer): void {
    let off = 0;
    while (off < n && this.ex === ex) {
      if (ex.left < 0) off = this.#head(ex, b, off, n);
      else {
        const k = Math.min(n - off, ex.left);
        ex.sink.data(b.subarray(off, off + k));
        ex.left -= k;
        off += k;
      }
      if (ex.left === 0) {
        // More bytes than the answer: the connection is out of step; the answer itself is whole.
        if (off < n) this.dead = true;
        if (!ex.keep || this.dead) this.destroy();
        return ex.done();
      }
    }
  }

  /** Takes head bytes from b[off, n); once the head is whole, checks it with the sink. Returns where it stopped. */
  #head(ex: Exchange, b: Buffer, off: number, n: number): number {
    // Most heads arrive whole in one read: searched where they lie; a head split over reads is kept (a copy: the read
    // buffer is reused).
    const prev = ex.headLen;
    const all = prev === 0 ? b.subarray(off, n) : Buffer.concat([...ex.head, b.subarray(off, n)]);
    const end = all.indexOf('\r\n\r\n', Math.max(0, prev - 3));
    if (end < 0) {
      if (all.length > MAX_HEAD) throw netError('EPROTO', `an answer's head is over ${MAX_HEAD} bytes`);
      ex.head = [Buffer.from(all)];
      ex.headLen = all.length;
      return n;
    }
    const used = end + 4 - prev;
    const lines = all.subarray(0, end).toString('latin1').split('\r\n');
    const m = /^HTTP\/1\.([01]) (\d{3})/.exec(lines[0]!);
    if (!m) throw netError('EPROTO', `not an HTTP/1.1 answer: ${JSON.stringify(lines[0]!.slice(0, 40))}`);
    const status = Number(m[2]);
    const h: WireHeaders = {};
    for (const line of lines.slice(1)) {
      const i = line.indexOf(':');
      if (i <= 0) throw netError('EPROTO', 'a malformed header line');
      const k = line.slice(0, i).trim().toLowerCase();
      const v = line.slice(i + 1).trim();
      const old = h[k];
      h[k] = old === undefined ? v : Array.isArray(old) ? [...old, v] : [old, v];
    }
    ex.head = [];
    ex.headLen = 0;
    // An informational answer (103 Early Hints) comes before the real one.
    if (status >= 100 && status < 200) return off + used;
    const conn = String(h.connection ?? '').toLowerCase();
    ex.keep = m[1] === '1' ? !conn.includes('close') : conn.includes('keep-alive');
    ex.sink.start(status, h);
    const len = typeof h['content-length'] === 'string' ? h['content-length'] : undefined;
    if (h['transfer-encoding'] !== undefined || len === undefined || !/^\d+$/.test(len)) {
      throw new WireUnsupported(
        `an answer framed by ${h['transfer-encoding'] ? `Transfer-Encoding ${String(h['transfer-encoding'])}` : 'the connection closing'}`,
      );
    }
    ex.left = Number(len);
    return off + used;
  }
}

/** Kept-alive connections to one origin, for ranged GETs. */
export class Wire {
  readonly #u: URL;
  readonly #ca: string[] | undefined;
  readonly #stallMs: number;
  #idle: Conn[] = [];
  #all = new Set<Conn>();
  #closed = false;
  #retired = false;

  constructor(url: string, ca: string[] | undefined, stallMs: number) {
    this.#u = new URL(url);
    this.#ca = ca;
    this.#stallMs = stallMs;
  }

  /**
   * GETs `url` (of this wire's origin) with `headers`, its answer through `sink`. A kept connection that the server
   * closed before answering is replaced once, as an HTTP client does; any other failure rejects.
   */
  async get(url: string, headers: Record<string, string>, signal: AbortSignal, sink: WireSink): Promise<void> {
    const u = new URL(url);
    if (u.origin !== this.#u.origin) throw new TypeError(`the wire for ${this.#u.origin} was asked for another origin`);
    const host = headers.host ?? headers.Host ?? u.host;
    for (let fresh = false; ; fresh = true) {
      if (this.#closed) throw new AbortError();
      let c = fresh || this.#retired ? undefined : this.#idle.pop();
      while (c?.dead) c = this.#idle.pop();
      const reused = c !== undefined;
      c ??= this.#open();
      try {
        if (!reused) await c.ready(signal);
        const r = await c.get(u.pathname + u.search, host, headers, signal, sink);
        if (r.keep && !this.#closed && !this.#retired) this.#idle.push(c);
        else this.#drop(c);
        return;
      } catch (e) {
        this.#drop(c);
        const stale = reused && !c.answered && !signal.aborted && !(e instanceof WireUnsupported);
        if (!stale || fresh) throw e;
      }
    }
  }

  /** Keeps no connection once its request is done (those in flight finish); closes the idle ones. */
  retire(): void {
    this.#retired = true;
    for (const c of [...this.#idle]) this.#drop(c);
  }

  /** Closes every connection. */
  close(): void {
    this.#closed = true;
    for (const c of this.#all) c.destroy();
    this.#all.clear();
    this.#idle = [];
  }

  #open(): Conn {
    const c = new Conn(this.#u, this.#ca, this.#stallMs);
    this.#all.add(c);
    c.socket.once('close', () => this.#drop(c));
    return c;
  }

  #drop(c: Conn): void {
    c.destroy();
    this.#all.delete(c);
    const i = this.#idle.indexOf(c);
    if (i >= 0) this.#idle.splice(i, 1);
  }
}
