/**
 * The network source: an object behind an http:// or https:// URL, read by parallel ranged GETs over kept-alive
 * connections (undici, the HTTP client Node's own fetch is built on), each range's body copied straight into the
 * destination's pages at its offset — one copy, never the whole object in the JS heap.
 *
 * Every answer is checked before a byte of it lands: status 206 with exactly the `Content-Range` asked for (a 200 to a
 * ranged request is a server that ignores ranges: streamed for a whole read, ERR_SOURCE_NO_RANGES otherwise), the
 * object pinned by `If-Match` on its strong ETag (else `If-Unmodified-Since`), so an object replaced mid-load is
 * ERR_FILE_CHANGED, never a mix. Failures are retried per range, not per load: 429, 5xx, resets, stalls (no byte for
 * `stallMs`) and short bodies, with exponential backoff and full jitter, `Retry-After` honoured, what already arrived
 * kept; 429 and 503 also halve the connections in use, so retries do not become a storm.
 *
 * Connections start at 4 and grow while the throughput grows (up to `connections`, default 32); chunks start at
 * 1 MiB and double up to 16 MiB (or stay at `chunkSize` when given), cut smaller at the end so the last connections
 * finish together. URLs in errors, logs and stats are redacted: no user info, no query string.
 */
import { setMaxListeners } from 'node:events';
import { readFileSync } from 'node:fs';
import { rootCertificates } from 'node:tls';
import type { Dispatcher } from 'undici';
import { AbortError, DmaloadError } from '../../core/errors.js';
import type { ErrorCode } from '../../core/errors.js';
import { native } from '../../engine/binding.js';
import type { Hasher, Region } from '../../engine/binding.js';
import type { ReadIntoOptions } from '../source.js';
import { Wire, WireUnsupported, type WireSink } from './wire.js';

const MiB = 1024 * 1024;
/** Documented caps and defaults (docs/sources.md). */
export const HTTP_DEFAULTS = { connections: 32, startConnections: 4, chunkMin: MiB, chunkMax: 16 * MiB, attempts: 8, stallMs: 15_000, redirects: 10 };
/** A ranged GET answered within this doubles the chunk size (the round trip and first-byte wait then cost ≤ ~10 %). */
const QUICK_MS = 200;
/** A growth window. */
const WINDOW_MS = 250;

export interface HttpOptions {
  /** Extra request headers (an `Authorization` is dropped when a redirect leaves the origin; never logged). */
  headers?: Record<string, string> | undefined;
  /** PEM of a CA to trust besides Node's own (which include NODE_EXTRA_CA_CERTS). */
  ca?: string | Buffer | undefined;
  /** Most connections to use at once (default 32); growth starts at 4. */
  connections?: number | undefined;
  /** Bytes per ranged GET: fixed, instead of growing from 1 MiB to 16 MiB. */
  chunkSize?: number | undefined;
  /** Attempts per range before the load fails (default 8). */
  attempts?: number | undefined;
  /** A range with no byte for this long is retried (default 15 000 ms). */
  stallMs?: number | undefined;
  signal?: AbortSignal | undefined;
  /** Headers made per request (a signature): called at most every four minutes, the answer reused meanwhile. */
  authorize?: (() => Promise<Record<string, string>>) | undefined;
  /** Called for each retry: what failed and how long until the next attempt (no URL, no secret). */
  onRetry?: ((info: { reason: string; delayMs: number; attempt: number }) => void) | undefined;
  /**
   * Whether a redirect may be followed to `url` (a share server's `--allow-source`); one that may not is
   * ERR_SHARE_SOURCE_NOT_ALLOWED, before anything is asked of that address.
   */
  redirectAllowed?: ((url: string) => boolean) | undefined;
  /**
   * The chunks' first and largest size when `chunkSize` is not given (default 1 MiB and 16 MiB). An object store
   * sets larger ones: each GET costs it a signature check and a subrequest.
   */
  chunkRange?: { min: number; max: number } | undefined;
}

/** What a transfer reports: bytes placed, requests, retries, and the most connections used at once. */
export interface HttpStats {
  bytes: number;
  requests: number;
  retries: number;
  connections: number;
}

/** The URL without user info, query or fragment: what errors and logs may show. */
export function redact(url: string): string {
  try {
    const u = new URL(url);
    const q = u.search ? '?…' : '';
    return `${u.protocol}//${u.host}${u.pathname}${q}`;
  } catch {
    return '(an invalid URL)';
  }
}

/** DMALOAD_HTTP_WIRE: 'off' sends every request through undici; checked before anything is asked of the network. */
function wireSetting(): boolean {
  const v = process.env.DMALOAD_HTTP_WIRE;
  if (v !== undefined && v !== '' && v !== 'on' && v !== 'off') {
    throw new DmaloadError('ERR_INVALID_ARG_VALUE', `DMALOAD_HTTP_WIRE is '${v}': use 'on' or 'off' (or leave it unset)`);
  }
  return v !== 'off';
}

/**
 * Whether ranged reads of `url` may go on the wire: no proxy in the way, by the rules of undici's EnvHttpProxyAgent
 * (which then carries every request): http_proxy/HTTP_PROXY, for https https_proxy/HTTPS_PROXY else those, unless
 * no_proxy/NO_PROXY is '*' or names the host (or a parent domain; with a port, only that port).
 */
export function noProxyFor(url: string): boolean {
  const env = process.env;
  const u = new URL(url);
  const http = env.http_proxy ?? env.HTTP_PROXY;
  const proxy = u.protocol === 'https:' ? (env.https_proxy ?? env.HTTPS_PROXY ?? http) : http;
  if (!proxy) return true;
  const list = env.no_proxy ?? env.NO_PROXY ?? '';
  if (list === '*') return true;
  const host = u.host.replace(/:\d*$/, '').toLowerCase();
  const port = Number(u.port) || (u.protocol === 'https:' ? 443 : 80);
  return list
    .split(/[,\s]/)
    .filter(Boolean)
    .some((entry) => {
      const m = /^(.+):(\d+)$/.exec(entry);
      const name = (m ? m[1]! : entry).replace(/^\*?\./, '').toLowerCase();
      if (m && Number(m[2]) !== port) return false;
      return host === name || host.endsWith(`.${name}`);
    });
}

/** An HTTP status (or a network failure) that is worth another attempt. */
const RETRY_STATUS = new Set([408, 429, 500, 502, 503, 504]);
/** TLS verification failures: another attempt would fail the same way. */
const TLS_FATAL = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ALTNAME|UNABLE_TO_GET_ISSUER/;

class Retryable extends Error {
  constructor(
    readonly reason: string,
    readonly retryAfterMs?: number,
    readonly throttled = false,
    readonly status?: number,
  ) {
    super(reason);
  }
}

function sourceError(code: ErrorCode, message: string, url: string, extra: Record<string, unknown> = {}): DmaloadError {
  const e = new DmaloadError(code, message, { path: redact(url) });
  return Object.assign(e, extra);
}

function header(h: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v[0] : v;
}

/** Retry-After: seconds or an HTTP date; capped at two minutes. */
function retryAfter(v: string | undefined): number | undefined {
  if (!v) return undefined;
  const s = Number(v);
  const ms = Number.isFinite(s) ? s * 1000 : Date.parse(v) - Date.now();
  return Number.isFinite(ms) ? Math.min(Math.max(0, ms), 120_000) : undefined;
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    if (signal.aborted) return reject(new AbortError(undefined, { cause: signal.reason }));
    const t = setTimeout(done, ms);
    function done() {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }
    function onAbort() {
      clearTimeout(t);
      reject(new AbortError(undefined, { cause: signal.reason }));
    }
    signal.addEventListener('abort', onAbort, { once: true });
  });

/** What the first answer said about the object: the URL it lives at after redirects, and its identity. */
export interface HttpObjectInfo {
  size: number;
  /** The strong ETag, quotes included; undefined when the server gave none or a weak one. */
  etag: string | undefined;
  lastModified: string | undefined;
  /** A weak ETag (W/"…"), compared on each answer where there is no strong one. */
  weakEtag?: string | undefined;
  /** Whether the server honours Range. */
  ranges: boolean;
  /** Headers of interest seen on any hop (the hub puts them on its redirect): lower-case names. */
  meta: Record<string, string>;
}

/** The error for a final status that is not success, with what to do. */
function statusError(status: number, url: string, opts: { tokenSent: boolean; attempts: number; hubCode?: string | undefined }): DmaloadError {
  const where = redact(url);
  const hub = opts.hubCode ? ` (${opts.hubCode})` : '';
  if (status === 404 || status === 410)
    return sourceError('ERR_SOURCE_NOT_FOUND', `'${where}' answered ${status}${hub}: no such object; check the name and the revision`, url, {
      status,
      storeCode: opts.hubCode,
    });
  if (status === 401 || status === 403) {
    const token = opts.tokenSent ? 'a token was sent and refused: check that it grants access' : 'no token was sent: set one (HF_TOKEN for the hub)';
    const gated = opts.hubCode === 'GatedRepo' ? '; the repository is gated: accept its conditions on its page first' : '';
    return sourceError('ERR_SOURCE_AUTH', `'${where}' answered ${status}${hub}: not authorized (${token}${gated})`, url, {
      status,
      tokenSent: opts.tokenSent,
      storeCode: opts.hubCode,
    });
  }
  return sourceError('ERR_SOURCE_HTTP', `'${where}' answered ${status}${hub} after ${opts.attempts} attempt(s)`, url, {
    status,
    attempts: opts.attempts,
    storeCode: opts.hubCode,
  });
}

/**
 * One object over HTTP(S). {@link HttpObject.open} follows redirects, learns the size and identity, and keeps a
 * connection pool for the ranged reads; {@link HttpObject.close} closes it.
 */
export class HttpObject {
  readonly url: string;
  readonly info: HttpObjectInfo;
  readonly stats: HttpStats = { bytes: 0, requests: 0, retries: 0, connections: 0 };
  /** undici's pool, made on first use (redirects and probes went on the wire; no ranges; a proxy; odd framing). */
  #dispatcher: Promise<Dispatcher> | undefined;
  /** The CAs to trust besides Node's (the `ca` option), for the wire and undici alike. */
  #ca: string[] | undefined;
  #headers: Record<string, string>;
  #o: Resolved;
  /** Requests in flight at most (grows from `startConnections` to `connections`, halves when throttled). */
  #limit: number;
  /** Requests in flight now, over every transfer of this object, and the workers waiting for a turn. */
  #inFlight = 0;
  #waiting: Array<() => void> = [];
  /** Bytes no request was given yet, over every transfer in progress (sizes the tail's chunks). */
  #remaining = 0;
  /** The chunk size transfers cut at: grows, and a later transfer does not start small again. */
  #chunk: number;
  #growth = { lastRate: 0, growing: true };
  /** The growth windows' timer while a transfer is in progress; each transfer's way to add workers. */
  #window: { lastBytes: number; timer: ReturnType<typeof setInterval> } | undefined;
  readonly #topUps = new Set<() => void>();
  #frozenUntil = 0;
  #throttled = false;
  /** The server answered 412 to its own ETag: conditions are dropped, each answer's ETag is compared instead. */
  #unpinned = false;
  /** Ranged GETs' own connections (./wire.ts), where no proxy is in the way and the server frames its answers so. */
  #wire: Wire | undefined;
  /** The wire made, retired or not: close() closes it. */
  #wireMade: Wire | undefined;

  private constructor(
    url: string,
    info: HttpObjectInfo,
    dispatcher: Dispatcher | undefined,
    headers: Record<string, string>,
    o: Resolved,
    ca: string[] | undefined,
    wire: Wire | undefined,
  ) {
    this.url = url;
    this.info = info;
    this.#dispatcher = dispatcher && Promise.resolve(dispatcher);
    this.#ca = ca;
    this.#headers = headers;
    this.#o = o;
    this.#limit = Math.min(HTTP_DEFAULTS.startConnections, o.connections);
    this.#chunk = o.chunkSize ?? this.#range().min;
    this.#wire = this.#wireMade = o.wire && noProxyFor(url) ? (wire ?? new Wire(url, ca, o.stallMs)) : undefined;
    if (wire && wire !== this.#wire) wire.close();
  }

  /** undici's pool for this object. */
  #undici(): Promise<Dispatcher> {
    return (this.#dispatcher ??= makeDispatcher(this.#o, this.#ca));
  }

  /** The size in bytes. */
  get size(): number {
    return this.info.size;
  }

  /**
   * Opens `url`: follows redirects (at most 10; https to http refused; `Authorization` dropped when the origin
   * changes), asks for its first byte to learn the size and whether ranges work, and pins its identity.
   */
  static async open(url: string, options: HttpOptions = {}): Promise<HttpObject> {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw sourceError('ERR_SOURCE_SCHEME', `'${redact(url)}' is not a valid URL`, url);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw sourceError('ERR_SOURCE_SCHEME', `'${redact(url)}' is not an http or https URL`, url);
    const o = {
      ...options,
      wire: wireSetting(),
      connections: options.connections ?? HTTP_DEFAULTS.connections,
      attempts: options.attempts ?? HTTP_DEFAULTS.attempts,
      stallMs: options.stallMs ?? HTTP_DEFAULTS.stallMs,
    };
    // The `ca` option adds to Node's CAs, NODE_EXTRA_CA_CERTS included (tls.rootCertificates lacks those).
    const extra = o.ca && process.env.NODE_EXTRA_CA_CERTS ? readFileSync(process.env.NODE_EXTRA_CA_CERTS, 'utf8') : undefined;
    const ca = o.ca ? [...rootCertificates, ...(extra ? [extra] : []), typeof o.ca === 'string' ? o.ca : o.ca.toString('utf8')] : undefined;
    const signal = o.signal ?? new AbortController().signal;
    const firstHeaders = async () => ({ ...(o.headers ?? {}), ...(o.authorize ? await o.authorize() : {}) });
    // The probe goes on the wire too where no proxy is in the way: undici (~150 ms to import here, the largest part
    // of a load's start) is then loaded only if something needs it.
    if (o.wire && noProxyFor(u.href)) {
      const wires = new ProbeWires(ca, o.stallMs);
      try {
        const first = await withRetries(
          o,
          signal,
          u.href,
          () => {},
          async () => probe(wires.ask, u.href, await firstHeaders(), signal, o.redirectAllowed),
        );
        const obj = new HttpObject(first.url, first.info, undefined, first.headers, o, ca, wires.take(first.url));
        obj.stats.requests += first.requests;
        return obj;
      } catch (e) {
        if (!(e instanceof WireUnsupported)) throw e;
        // A hop through a proxy, or an answer the wire cannot frame: undici asks everything again.
      } finally {
        wires.close();
      }
    }
    const dispatcher = await makeDispatcher(o, ca);
    try {
      const first = await withRetries(
        o,
        signal,
        u.href,
        () => {},
        async () => probe(undiciAsk(dispatcher), u.href, await firstHeaders(), signal, o.redirectAllowed),
      );
      const obj = new HttpObject(first.url, first.info, dispatcher, first.headers, o, ca, undefined);
      obj.stats.requests += first.requests;
      return obj;
    } catch (e) {
      await dispatcher.close().catch(() => {});
      throw e;
    }
  }

  async close(): Promise<void> {
    this.#wireMade?.close();
    const d = this.#dispatcher;
    this.#dispatcher = Promise.reject(new AbortError());
    this.#dispatcher.catch(() => {});
    if (d) await (await d.catch(() => undefined))?.destroy().catch(() => {});
    // A socket destroyed mid-body closes its fd on the event loop's next turns: close() returns after that.
    for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
  }

  #authAt = 0;
  #authHeaders: Record<string, string> = {};
  /** The `authorize` headers, made anew every four minutes (a SigV4 signature is good for fifteen). */
  async #auth(): Promise<Record<string, string>> {
    if (!this.#o.authorize) return {};
    if (Date.now() - this.#authAt > 240_000) {
      this.#authHeaders = lower(await this.#o.authorize());
      this.#authAt = Date.now();
    }
    return this.#authHeaders;
  }

  /** The conditions that pin the object: its strong ETag, else its Last-Modified. */
  #pin(): Record<string, string> {
    if (this.#unpinned) return {};
    if (this.info.etag) return { 'if-match': this.info.etag };
    if (this.info.lastModified) return { 'if-unmodified-since': this.info.lastModified };
    return {};
  }

  /** Reads [offset, offset+length) into a new Buffer (headers of model files: a few KiB). */
  async readBytes(offset: number, length: number, signal?: AbortSignal): Promise<Buffer> {
    const out = Buffer.allocUnsafe(length);
    if (length === 0) return out;
    await this.#transfer(
      [{ fileOff: offset, len: length, bufOff: 0, write: (at, b) => void b.copy(out, at - offset) }],
      signal ?? new AbortController().signal,
      undefined,
    );
    return out;
  }

  /**
   * Reads segments ([fileOffset, bufOffset, length, …]) into `region`, hashing each finished piece (`hash`), with
   * progress in bytes placed; `onPiece` hears of each finished chunk (a local copy writes it to disk). Resolves or
   * rejects only once no request writes into the region any more.
   */
  async readInto(region: Region, segments: readonly number[], o: ReadIntoOptions): Promise<number> {
    const items: Item[] = [];
    for (let i = 0; i < segments.length; i += 3) {
      const fileOff = segments[i]!;
      const bufOff = segments[i + 1]!;
      const len = segments[i + 2]!;
      if (len <= 0) continue;
      // A view per segment, at most maxView() bytes each.
      const max = native.maxView();
      for (let at = 0; at < len; at += max) {
        const n = Math.min(max, len - at);
        items.push({ fileOff: fileOff + at, len: n, region, bufOff: bufOff + at, onPiece: o.onPiece });
      }
    }
    let placed = 0;
    await this.#transfer(
      items,
      o.signal,
      (n) => {
        placed += n;
        o.onProgress?.(placed);
      },
      o.hash,
    );
    // On success every byte of every item was placed exactly once (the object's counters are shared by concurrent calls).
    return items.reduce((n, it) => n + it.len, 0);
  }

  /**
   * Runs the transfer of `items` with the adaptive pool of workers. Items are cut into chunks lazily, so the chunk
   * size can grow and the tail can shrink. Transfers that run at once (a copy's ring reads its slots so) share the
   * object's cap on requests in flight, its chunk size and its growth: `connections` holds for the object.
   */
  async #transfer(items: Item[], signal: AbortSignal, onBytes?: (n: number) => void, hash?: Hasher): Promise<void> {
    if (!this.info.ranges) return this.#stream(items, signal, onBytes, hash);
    const ac = new AbortController();
    const inner = AbortSignal.any([signal, ac.signal]);
    // One abort listener per request in flight: bounded by the connections, not a leak.
    setMaxListeners(this.#o.connections * 2 + 16, inner);
    const fixed = this.#o.chunkSize;
    const range = this.#range();
    let remaining = items.reduce((n, it) => n + it.len, 0);
    this.#remaining += remaining;
    const queue = items.map((it) => ({ ...it, done: 0 }));
    let qi = 0;
    const next = (): Piece | undefined => {
      while (qi < queue.length && queue[qi]!.done >= queue[qi]!.len) qi++;
      const it = queue[qi];
      if (!it) return undefined;
      // Near the end, smaller chunks so every connection finishes about together.
      const fair = Math.ceil(this.#remaining / Math.max(1, this.#limit));
      // Cut on 64 KiB boundaries (a local copy writes each piece by direct I/O); an item's end may be ragged.
      const want = fixed ?? Math.max(256 * 1024, Math.min(this.#chunk, fair));
      const n = Math.min(it.len - it.done, Math.ceil(want / 65536) * 65536);
      const p = { item: it, at: it.done, len: n };
      it.done += n;
      remaining -= n;
      this.#remaining -= n;
      return p;
    };
    let failure: { e: unknown } | undefined;
    const workers = new Set<Promise<void>>();
    const spawn = () => {
      const w = (async () => {
        try {
          // A request slot first (waiting holds no connection), then the next piece.
          while (!failure && (await this.#turn(inner))) {
            const p = next();
            try {
              if (!p) return;
              const t = performance.now();
              await this.#piece(p, inner, counted, hash);
              // A chunk answered quickly pays its request's round trip and first-byte wait for few bytes: ask for more.
              if (!fixed && p.len >= this.#chunk && performance.now() - t < QUICK_MS) this.#chunk = Math.min(range.max, this.#chunk * 2);
            } finally {
              this.#turnDone();
            }
          }
        } catch (e) {
          failure ??= { e };
          ac.abort(e);
        }
      })();
      workers.add(w);
      void w.finally(() => workers.delete(w));
    };
    // More workers as the cap grows (those past it wait for a turn).
    const topUp = () => {
      while (workers.size < this.#limit && remaining > 0 && !failure) spawn();
    };
    const counted = (n: number) => {
      this.#startWindows(n);
      onBytes?.(n);
    };
    const wake = () => this.#wakeAll();
    inner.addEventListener('abort', wake, { once: true });
    this.#topUps.add(topUp);
    try {
      topUp();
      while (workers.size > 0) await Promise.allSettled([...workers]);
    } finally {
      this.#topUps.delete(topUp);
      inner.removeEventListener('abort', wake);
      this.#remaining -= remaining;
      if (this.#topUps.size === 0) this.#stopWindows();
    }
    if (failure) {
      if (signal.aborted) throw new AbortError(undefined, { cause: signal.reason });
      throw failure.e;
    }
  }

  /** The chunk sizes allowed: the `chunkRange` option, else the defaults. */
  #range(): { min: number; max: number } {
    return this.#o.chunkRange ?? { min: HTTP_DEFAULTS.chunkMin, max: HTTP_DEFAULTS.chunkMax };
  }

  /** Waits for a request slot under the object's cap; false once `signal` aborted (no slot taken). */
  async #turn(signal: AbortSignal): Promise<boolean> {
    while (this.#inFlight >= this.#limit && !signal.aborted) await new Promise<void>((r) => this.#waiting.push(r));
    if (signal.aborted) {
      // A turn this worker was woken for goes to the next one waiting.
      if (this.#inFlight < this.#limit) this.#waiting.shift()?.();
      return false;
    }
    this.#inFlight++;
    this.stats.connections = Math.max(this.stats.connections, this.#inFlight);
    return true;
  }

  #turnDone(): void {
    this.#inFlight--;
    this.#waiting.shift()?.();
  }

  /** Wakes every worker waiting for a turn (an abort, or a cap grown); each checks again. */
  #wakeAll(): void {
    for (const w of this.#waiting.splice(0)) w();
  }

  /**
   * Growth windows, one timer for every transfer in progress. They start at the first body byte: a window holding
   * the connections' set-up and first waits would make any later one look faster (counting it grew the
   * connections to 28 against one Swift proxy, where 8 did as well).
   */
  #startWindows(first: number): void {
    if (this.#window) return;
    const w = { lastBytes: this.stats.bytes - first, timer: setInterval(() => this.#tick(w), WINDOW_MS) };
    this.#window = w;
  }

  #stopWindows(): void {
    if (this.#window) clearInterval(this.#window.timer);
    this.#window = undefined;
  }

  /** Every window: bigger chunks; while throughput grows by a tenth or more, more connections. */
  #tick(w: { lastBytes: number }): void {
    const rate = (this.stats.bytes - w.lastBytes) / WINDOW_MS;
    w.lastBytes = this.stats.bytes;
    if (!this.#o.chunkSize) this.#chunk = Math.min(this.#range().max, this.#chunk * 2);
    if (Date.now() >= this.#frozenUntil) this.#grow(rate);
    for (const topUp of this.#topUps) topUp();
    this.#wakeAll();
  }

  /** One window's growth of the connections: more while the throughput (`rate`) grew by a tenth or more. */
  #grow(rate: number): void {
    const g = this.#growth;
    // After a throttle's pause, growth starts again from the halved level (additive increase, halving decrease).
    if (this.#throttled) {
      this.#throttled = false;
      g.growing = true;
      g.lastRate = 0;
    }
    if (!g.growing || this.#limit >= this.#o.connections) return;
    if (rate > g.lastRate * 1.1 || g.lastRate === 0) {
      g.lastRate = Math.max(rate, g.lastRate);
      this.#limit = Math.min(this.#o.connections, this.#limit + Math.max(2, this.#limit >> 1));
    } else g.growing = false;
  }

  /** One chunk: a ranged GET with retries; what arrived before a failure stays, the rest is asked for again. */
  async #piece(p: Piece, signal: AbortSignal, onBytes?: (n: number) => void, hash?: Hasher): Promise<void> {
    const { item } = p;
    let at = p.at;
    const end = p.at + p.len;
    const view = item.region ? new Uint8Array(native.view(item.region, item.bufOff + p.at, p.len)) : undefined;
    try {
      await withRetries(
        this.#o,
        signal,
        this.url,
        (r) => {
          this.stats.retries++;
          if (r.throttled) {
            // The server asks for less: halve the connections and hold growth for a while.
            this.#limit = Math.max(1, this.#limit >> 1);
            this.#frozenUntil = Date.now() + 2000;
            this.#throttled = true;
          }
        },
        async () => {
          const from = item.fileOff + at;
          const to = item.fileOff + end - 1;
          const start = at;
          this.stats.requests++;
          try {
            const auth = await this.#auth();
            await this.#get({ ...this.#headers, ...auth, ...this.#pin(), range: `bytes=${from}-${to}` }, signal, {
              start: (status, h) => this.#checkRange(status, h, from, to),
              data: (c) => {
                if (at + c.length > end) throw sourceError('ERR_SOURCE_PROTOCOL', `'${redact(this.url)}' sent more bytes than the range asked for`, this.url);
                if (view) view.set(c, at - p.at);
                else item.write!(item.fileOff + at, c);
                at += c.length;
                this.stats.bytes += c.length;
                onBytes?.(c.length);
              },
              // The wire reads the body straight into the target (the checks above hold: it never asks for more
              // than the answer's Content-Length, which #checkRange matched with the range).
              place: view && ((max) => view.subarray(at - p.at, Math.min(end, at + max) - p.at)),
              placed: (n) => {
                at += n;
                this.stats.bytes += n;
                onBytes?.(n);
              },
            });
          } catch (e) {
            throw broken(e, at - start, this.url, signal);
          } finally {
            if (hash && item.region && at > start) native.hashFeed(hash, item.region, item.bufOff + start, item.fileOff + start, at - start);
          }
          if (at < end) throw new Retryable(`the body ended ${end - at} bytes short`);
          item.onPiece?.(item.fileOff + p.at, item.bufOff + p.at, p.len);
        },
      );
    } finally {
      if (view) native.unview(view.buffer);
    }
  }

  /** A ranged GET: on the wire, unless the server frames its answers otherwise (then through undici from now on). */
  async #get(headers: Record<string, string>, signal: AbortSignal, sink: WireSink): Promise<void> {
    const wire = this.#wire;
    if (wire) {
      try {
        return await wire.get(this.url, headers, signal, sink);
      } catch (e) {
        if (!(e instanceof WireUnsupported)) throw e;
        // Requests in flight on it finish (or come back here); it keeps no connection after them.
        if (this.#wire === wire) this.#wire = undefined;
        wire.retire();
      }
    }
    return get(await this.#undici(), this.url, headers, signal, sink);
  }

  /** Checks a ranged answer's status and headers before a byte of its body lands. */
  #checkRange(status: number, h: Headers, from: number, to: number): void {
    const where = redact(this.url);
    if (status === 206) {
      const cr = header(h, 'content-range');
      const m = cr ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(cr.trim()) : null;
      if (!m) throw sourceError('ERR_SOURCE_PROTOCOL', `'${where}' answered 206 without a usable Content-Range (${cr ?? 'none'})`, this.url);
      if (m[3] !== '*' && Number(m[3]) !== this.info.size) {
        throw sourceError(
          'ERR_FILE_CHANGED',
          `'${where}' changed during the load (${this.info.size} bytes at the start, ${m[3]} now); load it again`,
          this.url,
        );
      }
      if (Number(m[1]) !== from || Number(m[2]) !== to) {
        throw sourceError('ERR_SOURCE_PROTOCOL', `'${where}' answered bytes ${m[1]}-${m[2]} to a request for ${from}-${to}`, this.url);
      }
      const len = header(h, 'content-length');
      if (len !== undefined && Number(len) !== to - from + 1) {
        throw sourceError('ERR_SOURCE_PROTOCOL', `'${where}' answered ${len} bytes to a request for ${to - from + 1}`, this.url);
      }
      const etag = header(h, 'etag');
      const lm = header(h, 'last-modified');
      // Without a strong ETag, Last-Modified and a weak ETag still tell a replaced object.
      if (!this.info.etag && ((this.info.lastModified && lm && lm !== this.info.lastModified) || (this.info.weakEtag && etag && etag !== this.info.weakEtag))) {
        throw sourceError(
          'ERR_FILE_CHANGED',
          `'${where}' changed during the load (Last-Modified or ETag differ from the first answer's); load it again`,
          this.url,
        );
      }
      if (this.info.etag && etag && etag !== this.info.etag) {
        throw sourceError('ERR_FILE_CHANGED', `'${where}' changed during the load (ETag ${this.info.etag} at the start, ${etag} now); load it again`, this.url);
      }
      return;
    }
    if (status === 412 && !this.#unpinned && this.info.etag) {
      // Some servers (proxies, synthetic ETags) refuse If-Match with their own ETag. Ask again without conditions:
      // a changed object then shows a different ETag (checked above), an unchanged one loads.
      this.#unpinned = true;
      throw new Retryable('412 to If-Match with the ETag the server gave: retrying without conditions');
    }
    if (status === 412 || status === 416) {
      throw sourceError('ERR_FILE_CHANGED', `'${where}' changed during the load (${status} to a request pinned to its first version); load it again`, this.url);
    }
    if (status === 200) {
      throw sourceError('ERR_SOURCE_NO_RANGES', `'${where}' ignored a Range request (200 instead of 206): it cannot be read in parts`, this.url);
    }
    failStatus(status, h, this.url, Boolean(this.#headers.authorization));
  }

  /** A server without ranges: one GET of the whole object, each piece copied to where the items want it. */
  async #stream(items: Item[], signal: AbortSignal, onBytes?: (n: number) => void, hash?: Hasher): Promise<void> {
    const contiguous = items.every((it, i) => i === 0 || it.fileOff === items[i - 1]!.fileOff + items[i - 1]!.len);
    const want = items.reduce((n, it) => n + it.len, 0);
    // Only a read from the start can be streamed (a whole load, or a header): anything else would need ranges.
    if (items.length === 0 || !contiguous || items[0]!.fileOff !== 0 || (want !== this.info.size && items.some((it) => it.region))) {
      throw sourceError(
        'ERR_SOURCE_NO_RANGES',
        `'${redact(this.url)}' does not answer Range requests: only a load() of the whole object can read it (copy, verify and partial loads read in parts)`,
        this.url,
      );
    }
    let reported = 0;
    await withRetries(
      this.#o,
      signal,
      this.url,
      () => this.stats.retries++,
      async () => {
        this.stats.requests++;
        let at = 0;
        let k = 0;
        const views = new Map<number, Uint8Array>();
        // A header's few KiB: stop the body there (the connection is given up).
        const stop = new AbortController();
        try {
          const auth = await this.#auth();
          await get(await this.#undici(), this.url, { ...this.#headers, ...auth, ...this.#pin() }, AbortSignal.any([signal, stop.signal]), {
            start: (status, h) => {
              if (status === 412) throw sourceError('ERR_FILE_CHANGED', `'${redact(this.url)}' changed during the load; load it again`, this.url);
              if (status !== 200) failStatus(status, h, this.url, Boolean(this.#headers.authorization));
            },
            data: (c) => {
              let off = 0;
              while (off < c.length && at < want) {
                while (k < items.length && at >= items[k]!.fileOff + items[k]!.len) k++;
                const it = items[k]!;
                const n = Math.min(c.length - off, it.fileOff + it.len - at, want - at);
                if (it.region) {
                  let v = views.get(k);
                  if (!v) views.set(k, (v = new Uint8Array(native.view(it.region, it.bufOff, it.len))));
                  v.set(c.subarray(off, off + n), at - it.fileOff);
                } else it.write!(at, c.subarray(off, off + n));
                off += n;
                at += n;
              }
              // A retry starts over from 0: only bytes beyond what an earlier attempt reached are news.
              if (at > reported) {
                onBytes?.(at - reported);
                this.stats.bytes += at - reported;
                reported = at;
              }
              if (at >= want) stop.abort();
            },
          });
        } catch (e) {
          // Without ranges nothing can be resumed: the next attempt starts over (progress counts again from 0).
          if (!(stop.signal.aborted && at >= want)) throw broken(e, at, this.url, signal);
        } finally {
          if (hash && at === want) for (const it of items) if (it.region) native.hashFeed(hash, it.region, it.bufOff, it.fileOff, it.len);
          for (const v of views.values()) native.unview(v.buffer as ArrayBuffer);
        }
        if (at < want) throw new Retryable(`the body ended ${want - at} bytes short`);
        for (const it of items) it.onPiece?.(it.fileOff, it.bufOff, it.len);
      },
    );
  }
}

type Resolved = Required<Pick<HttpOptions, 'connections' | 'attempts' | 'stallMs'>> & HttpOptions & { wire: boolean };

interface Item {
  fileOff: number;
  len: number;
  region?: Region;
  bufOff: number;
  write?: (fileOffset: number, bytes: Buffer) => void;
  onPiece?: ((fileOffset: number, bufOffset: number, length: number) => void) | undefined;
}
interface Piece {
  item: Item & { done: number };
  at: number;
  len: number;
}

/** Throws the error a non-success status deserves: Retryable for 408, 429 and 5xx, else the coded error. */
function failStatus(s: number, h: Headers, url: string, tokenSent: boolean): never {
  if (RETRY_STATUS.has(s)) throw new Retryable(`status ${s}`, retryAfter(header(h, 'retry-after')), s === 429 || s === 503, s);
  throw statusError(s, url, { tokenSent, attempts: 1, hubCode: header(h, 'x-error-code') });
}

/** What a failed GET becomes: coded errors and retries as they are, a network failure a retry (unless TLS refused). */
function broken(e: unknown, got: number, url: string, signal: AbortSignal): unknown {
  if (e instanceof DmaloadError || e instanceof Retryable || e instanceof AbortError || signal.aborted) return e;
  const r = networkRetryable(e, url);
  if (!r) return e;
  return got > 0 ? new Retryable(`the body broke off after ${got} bytes (${r.reason})`) : r;
}

type Headers = Record<string, string | string[] | undefined>;

/**
 * One GET through the pool with undici's handler interface: each body chunk (a view of the socket's own buffer) goes
 * to `sink.data` as it arrives — no stream, no async iterator per chunk. `sink.start` sees the status and headers
 * first; what either throws ends the request (its connection is closed) and rejects. Resolves at the body's end.
 */
function get(
  dispatcher: Dispatcher,
  url: string,
  headers: Record<string, string>,
  signal: AbortSignal,
  sink: { start(status: number, headers: Headers): void; data(chunk: Buffer): void },
): Promise<void> {
  const u = new URL(url);
  return new Promise<void>((resolve, reject) => {
    let ctl: Dispatcher.DispatchController | undefined;
    let settled = false;
    const fail = (e: unknown) => {
      if (settled) return;
      settled = true;
      signal.removeEventListener('abort', onAbort);
      try {
        ctl?.abort(e instanceof Error ? e : new Error(String(e)));
      } catch {
        // already ended
      }
      reject(e);
    };
    const onAbort = () => fail(new AbortError(undefined, { cause: signal.reason }));
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    dispatcher.dispatch(
      { origin: u.origin, path: u.pathname + u.search, method: 'GET', headers },
      {
        onRequestStart(c) {
          ctl = c;
          if (settled) c.abort(new Error('aborted'));
        },
        onResponseStart(_c, status, h) {
          if (settled) return;
          try {
            sink.start(status, h);
          } catch (e) {
            fail(e);
          }
        },
        onResponseData(_c, chunk) {
          if (settled) return;
          try {
            sink.data(chunk);
          } catch (e) {
            fail(e);
          }
        },
        onResponseEnd() {
          if (settled) return;
          settled = true;
          signal.removeEventListener('abort', onAbort);
          resolve();
        },
        onResponseError(_c, err) {
          fail(err);
        },
      },
    );
  });
}

/** Runs `attempt` until it succeeds, a non-retryable error, the abort, or the last attempt. */
async function withRetries<T>(
  o: { attempts: number; onRetry?: HttpOptions['onRetry'] },
  signal: AbortSignal,
  url: string,
  onRetry: (r: Retryable) => void,
  attempt: () => Promise<T>,
): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await attempt();
    } catch (e) {
      if (signal.aborted) throw new AbortError(undefined, { cause: signal.reason });
      const r = e instanceof Retryable ? e : networkRetryable(e, url);
      if (!r) throw e;
      if (n >= o.attempts) throw lastError(r, n, e, url);
      // Full jitter: anywhere up to the exponential bound; Retry-After is a floor.
      const delay = Math.max(r.retryAfterMs ?? 0, Math.random() * Math.min(10_000, 100 * 2 ** n));
      onRetry(r);
      o.onRetry?.({ reason: r.reason, delayMs: Math.round(delay), attempt: n });
      await sleep(delay, signal);
    }
  }
}

/** The error after the last attempt: the redacted URL, the status or what failed, and the attempts. */
function lastError(r: Retryable, attempts: number, cause: unknown, currentUrl: string): DmaloadError {
  if (r.status !== undefined)
    return sourceError('ERR_SOURCE_HTTP', `'${redact(currentUrl)}' answered ${r.status} after ${attempts} attempts`, currentUrl, {
      status: r.status,
      attempts,
    });
  return Object.assign(
    new DmaloadError('ERR_SOURCE_NETWORK', `'${redact(currentUrl)}': ${r.reason} (after ${attempts} attempts); check the network and the server`, {
      path: redact(currentUrl),
      cause,
    }),
    { attempts },
  );
}

/** A network failure worth another attempt (reset, refused, stall, TLS broken mid-body), or undefined. */
function networkRetryable(e: unknown, currentUrl: string): Retryable | undefined {
  if (e instanceof DmaloadError || e instanceof AbortError) return undefined;
  const err = e as { code?: string; message?: string; cause?: { code?: string; message?: string } };
  const code = err.code ?? err.cause?.code ?? '';
  const msg = err.message ?? String(e);
  if (TLS_FATAL.test(code) || TLS_FATAL.test(err.cause?.code ?? '')) {
    throw Object.assign(
      new DmaloadError(
        'ERR_SOURCE_NETWORK',
        `'${redact(currentUrl)}': TLS verification failed (${code}); trust its CA with the ca option or NODE_EXTRA_CA_CERTS`,
        {
          path: redact(currentUrl),
          cause: e,
        },
      ),
      { attempts: 1 },
    );
  }
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') return new Retryable(`no byte for the stall timeout (${code})`);
  if (code.startsWith('UND_ERR') || code.startsWith('E') || /socket|TLS|SSL/i.test(msg)) return new Retryable(`${code || 'network error'}: ${msg}`);
  return undefined;
}

/** One GET through the pool, no redirect followed. */
async function request(dispatcher: Dispatcher, url: string, headers: Record<string, string>, signal: AbortSignal): Promise<Dispatcher.ResponseData> {
  const u = new URL(url);
  return dispatcher.request({ origin: u.origin, path: u.pathname + u.search, method: 'GET', headers, signal });
}

/** One of the probe's answers: status and headers; its body either read (an error's few KiB, as text) or cut off. */
interface Answer {
  statusCode: number;
  headers: Headers;
  /** Up to 8 KiB of the body, as text. */
  text(): Promise<string>;
  /** Ends a body that will not be read: a small one is read to its end, a big one cut off (its connection closed). */
  discard(): Promise<void>;
}
/** One GET, no redirect followed. */
type Ask = (url: string, headers: Record<string, string>, signal: AbortSignal) => Promise<Answer>;

/** undici's pool for an object: kept-alive connections, a stall timeout on headers and between body chunks,
 * proxies from HTTP_PROXY / HTTPS_PROXY / NO_PROXY. */
async function makeDispatcher(o: Resolved, ca: string[] | undefined): Promise<Dispatcher> {
  // Loaded on first use: a process that reads only local files (or only on the wire) never pays undici's start-up.
  const { EnvHttpProxyAgent } = await import('undici');
  return new EnvHttpProxyAgent({
    connections: o.connections,
    keepAliveTimeout: 30_000,
    headersTimeout: o.stallMs,
    bodyTimeout: o.stallMs,
    ...(ca ? { connect: { ca } } : {}),
    ...(ca ? { requestTls: { ca } } : {}),
  });
}

function undiciAsk(dispatcher: Dispatcher): Ask {
  return async (url, headers, signal) => {
    const res = await request(dispatcher, url, headers, signal);
    return {
      statusCode: res.statusCode,
      headers: res.headers,
      text: () => small(res),
      discard: async () => {
        discard(res);
        if (res.body.destroyed) await new Promise((r) => (res.body.closed ? r(undefined) : res.body.once('close', r)));
      },
    };
  };
}

/** The answer's body is bigger than a probe reads: the connection is given up. */
const CUT = new Error('cut');

/** The probe's wires, one per origin its redirects visit; the last one's connection goes on to the ranged reads. */
class ProbeWires {
  readonly #wires = new Map<string, Wire>();
  readonly #ca: string[] | undefined;
  readonly #stallMs: number;
  constructor(ca: string[] | undefined, stallMs: number) {
    this.#ca = ca;
    this.#stallMs = stallMs;
  }

  /** GETs on the wire; WireUnsupported where undici must ask instead (a proxy applies to this hop). */
  readonly ask: Ask = async (url, headers, signal) => {
    if (!noProxyFor(url)) throw new WireUnsupported(`a proxy applies to ${new URL(url).origin}`);
    const origin = new URL(url).origin;
    let wire = this.#wires.get(origin);
    if (!wire) this.#wires.set(origin, (wire = new Wire(url, this.#ca, this.#stallMs)));
    let status = 0;
    let h: Headers = {};
    const body: Buffer[] = [];
    let got = 0;
    try {
      await wire.get(url, headers, signal, {
        start: (st, hh) => {
          status = st;
          h = hh;
          if (Number(header(hh, 'content-length') ?? 0) > 64 * 1024) throw CUT;
        },
        data: (c) => {
          if (got < 8192) body.push(Buffer.from(c.subarray(0, 8192 - got)));
          got += c.length;
        },
      });
    } catch (e) {
      // Cut off, or framed otherwise where the status and headers are all the probe needs (a redirect, a whole
      // object). An error's body says why (an object store's <Code>): undici reads one framed otherwise.
      if (e !== CUT && !(e instanceof WireUnsupported && status > 0 && status < 400)) throw e;
    }
    const text = Buffer.concat(body).toString('utf8');
    return { statusCode: status, headers: h, text: async () => text, discard: async () => {} };
  };

  /** The wire of `url`'s origin, no longer this object's to close. */
  take(url: string): Wire | undefined {
    const origin = new URL(url).origin;
    const w = this.#wires.get(origin);
    this.#wires.delete(origin);
    return w;
  }

  close(): void {
    for (const w of this.#wires.values()) w.close();
    this.#wires.clear();
  }
}

/** The hub's headers (and the identity ones) worth keeping from any hop. */
const META = ['x-repo-commit', 'x-linked-etag', 'x-linked-size', 'etag', 'x-error-code', 'x-amz-checksum-sha256', 'x-amz-checksum-type'];

/** The first request: redirects followed, the size and identity learnt from a request for byte 0. */
async function probe(
  ask: Ask,
  start: string,
  headers0: Record<string, string>,
  signal: AbortSignal,
  redirectAllowed: ((url: string) => boolean) | undefined,
): Promise<{ url: string; info: HttpObjectInfo; headers: Record<string, string>; requests: number }> {
  let url = start;
  let headers = { ...lower(headers0) };
  const meta: Record<string, string> = {};
  const tokenSent = () => Boolean(headers.authorization);
  for (let hop = 0; ; hop++) {
    const res = await ask(url, { ...headers, range: 'bytes=0-0' }, signal);
    for (const k of META) {
      const v = header(res.headers, k);
      if (v !== undefined && meta[k] === undefined) meta[k] = v;
    }
    const s = res.statusCode;
    if ([301, 302, 303, 307, 308].includes(s)) {
      await res.discard();
      const loc = header(res.headers, 'location');
      if (hop >= HTTP_DEFAULTS.redirects)
        throw sourceError('ERR_SOURCE_REDIRECT', `'${redact(start)}' redirected more than ${HTTP_DEFAULTS.redirects} times`, start);
      if (!loc) throw sourceError('ERR_SOURCE_REDIRECT', `'${redact(url)}' answered ${s} without a Location`, url);
      const next = new URL(loc, url);
      if (next.protocol !== 'http:' && next.protocol !== 'https:')
        throw sourceError('ERR_SOURCE_REDIRECT', `'${redact(url)}' redirected to a ${next.protocol} URL`, url);
      if (new URL(url).protocol === 'https:' && next.protocol === 'http:') {
        throw sourceError('ERR_SOURCE_REDIRECT', `'${redact(url)}' redirected from https to http ('${redact(next.href)}'): refused`, url);
      }
      if (redirectAllowed && !redirectAllowed(next.href)) {
        throw sourceError(
          'ERR_SHARE_SOURCE_NOT_ALLOWED',
          `'${redact(url)}' redirected to '${redact(next.href)}', which this server may not fetch (--allow-source)`,
          url,
        );
      }
      // Credentials are for the origin they were given to, never for the host a redirect names.
      if (next.origin !== new URL(url).origin) {
        headers = Object.fromEntries(Object.entries(headers).filter(([k]) => k !== 'authorization' && k !== 'cookie'));
      }
      url = next.href;
      continue;
    }
    const etag0 = header(res.headers, 'etag');
    const etag = etag0 && !etag0.startsWith('W/') ? etag0 : undefined;
    const weakEtag = etag0?.startsWith('W/') ? etag0 : undefined;
    const lastModified = header(res.headers, 'last-modified');
    if (s === 206) {
      await res.discard();
      const m = /^bytes 0-0\/(\d+)$/.exec((header(res.headers, 'content-range') ?? '').trim());
      if (!m) throw sourceError('ERR_SOURCE_PROTOCOL', `'${redact(url)}' answered 206 without a usable Content-Range`, url);
      return { url, headers, requests: hop + 1, info: { size: Number(m[1]), etag, weakEtag, lastModified, ranges: true, meta } };
    }
    if (s === 416) {
      await res.discard();
      // An empty object: nothing to ask a range of.
      const m = /^bytes \*\/(\d+)$/.exec((header(res.headers, 'content-range') ?? '').trim());
      if (m && Number(m[1]) === 0) return { url, headers, requests: hop + 1, info: { size: 0, etag, weakEtag, lastModified, ranges: true, meta } };
      // Some stores (Swift's s3api, S3) answer an empty object's byte 0 with 416 and no Content-Range: ask once
      // without Range; an empty 200 is an empty object.
      const whole = await ask(url, headers, signal);
      const len = header(whole.headers, 'content-length');
      await whole.discard();
      if (whole.statusCode === 200 && len === '0') {
        const e2 = header(whole.headers, 'etag');
        return {
          url,
          headers,
          requests: hop + 2,
          info: { size: 0, etag: e2 && !e2.startsWith('W/') ? e2 : etag, weakEtag, lastModified, ranges: true, meta },
        };
      }
      throw sourceError('ERR_SOURCE_PROTOCOL', `'${redact(url)}' answered 416 to a request for its first byte`, url);
    }
    if (s === 200) {
      // The whole object is coming: cut it off (its socket closed before the caller goes on).
      await res.discard();
      const len = header(res.headers, 'content-length');
      if (len === undefined || !/^\d+$/.test(len)) {
        throw sourceError('ERR_SOURCE_NO_RANGES', `'${redact(url)}' ignores Range requests and does not say its length: it cannot be loaded`, url);
      }
      return { url, headers, requests: hop + 1, info: { size: Number(len), etag, weakEtag, lastModified, ranges: false, meta } };
    }
    if (RETRY_STATUS.has(s)) {
      await res.discard();
      throw new Retryable(`status ${s}`, retryAfter(header(res.headers, 'retry-after')), s === 429 || s === 503, s);
    }
    // An object store says why in its body (<Code>NoSuchKey</Code>): kept as the error's storeCode.
    const body = await res.text();
    const storeCode = header(res.headers, 'x-error-code') ?? meta['x-error-code'] ?? /<Code>([^<]{1,100})<\/Code>/.exec(body)?.[1];
    throw statusError(s, url, { tokenSent: tokenSent(), attempts: 1, hubCode: storeCode });
  }
}

/**
 * Ends a response's body that will not be read: a small one is read to its end (its connection stays alive), a big
 * one (a 200 with a whole object) is cut off; either way no error event is left unheard.
 */
function discard(res: Dispatcher.ResponseData): void {
  res.body.on('error', () => {});
  const len = Number(header(res.headers, 'content-length') ?? Infinity);
  if (len <= 64 * 1024) res.body.dump({ limit: 64 * 1024 }).catch(() => {});
  else res.body.destroy();
}

/** Up to 8 KiB of an error answer's body, as text. */
async function small(res: Dispatcher.ResponseData): Promise<string> {
  const len = Number(header(res.headers, 'content-length') ?? 0);
  if (len > 8192) {
    discard(res);
    return '';
  }
  return res.body.text().catch(() => '');
}

function lower(h: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(h).map(([k, v]) => [k.toLowerCase(), v]));
}
