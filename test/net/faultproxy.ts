/**
 * A reverse proxy on loopback in front of one HTTP server (nginx from ./nginx.ts) that injects the faults a loader
 * meets on real object stores and CDNs: throttling and server errors, connections reset or closed mid-body, stalls,
 * a Range ignored, an object replaced between requests. A `plan` callback picks the fault of each request; every
 * other request is forwarded as is (keep-alive on both sides) and its answer streamed back.
 */
import { Agent, STATUS_CODES, createServer, request as httpRequest, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

export type Fault =
  /** Answer this status without asking the target (503 says SlowDown as S3 does unless `body` says otherwise). */
  | { status: number; retryAfter?: number; body?: string; headers?: Record<string, string> }
  /** Forward the headers and this many body bytes, then reset the connection (RST): the client gets at most that many. */
  | { reset: number }
  /** Forward the headers (with the full Content-Length) and exactly this many body bytes, then close the connection (FIN). */
  | { short: number }
  /** Forward the headers and `after` body bytes (64 KiB when omitted), send nothing for `stall` ms, then the rest. */
  | { stall: number; after?: number }
  /** Forward without Range and If-Range: the client gets 200 and the whole body. */
  | { ignoreRange: true }
  /**
   * The object changed since the client's last look: 412 when the request has If-Match, else the target's answer with
   * a different ETag (the target's with '-replaced' added inside the quotes) and different bytes (each one inverted).
   */
  | { replace: true };

/** The fault for the `n`th request (from 1) that reached the proxy, or undefined to forward it untouched. */
export type Plan = (req: IncomingMessage, n: number) => Fault | undefined;

export interface FaultProxyOptions {
  /** http://host:port of the server to forward to. */
  target: string;
  plan?: Plan;
  /** Delay before each request is answered or forwarded (faults included). */
  ttfbMs?: number;
  /** The address to listen on: 127.0.0.1 when omitted (127.0.0.2 to pose as a CDN apart from a hub on 127.0.0.1). */
  host?: string;
}

export interface ProxyLogEntry {
  n: number;
  method: string;
  url: string;
  range: string | undefined;
  /** Which fault the plan chose: 'status 503', 'reset', 'short', 'stall', 'ignoreRange' or 'replace'. */
  fault: string | undefined;
  /** The status sent to the client (undefined while no headers went out). */
  status: number | undefined;
  /** Body bytes of the target's answer sent to the client. */
  bytes: number;
}

export interface FaultStats {
  requests: number;
  faults: number;
  /** Faults injected, by kind (the names of ProxyLogEntry.fault). */
  byKind: Record<string, number>;
  /** Body bytes of the target's answers sent to the clients (fault bodies not counted). */
  bytesForwarded: number;
  log: ProxyLogEntry[];
}

export interface FaultProxy {
  /** http://HOST:PORT */
  url: string;
  port: number;
  stats: FaultStats;
  setPlan(plan: Plan | undefined): void;
  /** Forward to another server from the next request on (e.g. one started after the proxy, to know its URL). */
  setTarget(target: string): void;
  setTtfb(ms: number): void;
  /** Stops listening and destroys every connection, both sides, in flight or idle. */
  close(): Promise<void>;
}

const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade'];

function kindOf(f: Fault): string {
  if ('status' in f) return `status ${f.status}`;
  for (const k of ['reset', 'short', 'stall', 'ignoreRange', 'replace']) if (k in f) return k;
  throw new Error(`not a fault: ${JSON.stringify(f)}`);
}

function parseTarget(target: string): { hostname: string; port: number; host: string } {
  const u = new URL(target);
  if (u.protocol !== 'http:') throw new Error(`the fault proxy forwards to http:// only, not ${target}`);
  return { hostname: u.hostname, port: Number(u.port || 80), host: u.host };
}

export async function startFaultProxy(opts: FaultProxyOptions): Promise<FaultProxy> {
  let target = parseTarget(opts.target);
  let plan = opts.plan;
  let ttfbMs = opts.ttfbMs ?? 0;
  const stats: FaultStats = { requests: 0, faults: 0, byKind: {}, bytesForwarded: 0, log: [] };
  const agent = new Agent({ keepAlive: true, maxSockets: 256 });
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  let closing = false;
  const sleep = (ms: number) =>
    new Promise<void>((r) => {
      const t = setTimeout(() => (timers.delete(t), r()), ms);
      timers.add(t);
    });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const n = ++stats.requests;
    const fault = plan?.(req, n);
    const entry: ProxyLogEntry = {
      n,
      method: req.method!,
      url: req.url!,
      range: req.headers.range,
      fault: fault && kindOf(fault),
      status: undefined,
      bytes: 0,
    };
    stats.log.push(entry);
    if (fault) {
      stats.faults++;
      stats.byKind[entry.fault!] = (stats.byKind[entry.fault!] ?? 0) + 1;
    }
    if (ttfbMs > 0) await sleep(ttfbMs);
    if (closing || res.destroyed) return;

    if (fault && 'status' in fault) {
      req.resume();
      const slowDown = fault.status === 503 && fault.body === undefined;
      const body =
        fault.body ??
        (slowDown
          ? '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>'
          : `${fault.status} ${STATUS_CODES[fault.status] ?? ''}\n`);
      const headers: OutgoingHttpHeaders = {
        'content-type': body.startsWith('<') ? 'application/xml' : 'text/plain',
        'content-length': Buffer.byteLength(body),
      };
      if (fault.retryAfter !== undefined) headers['retry-after'] = String(fault.retryAfter);
      entry.status = fault.status;
      res.writeHead(fault.status, { ...headers, ...fault.headers });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    if (fault && 'replace' in fault && req.headers['if-match'] !== undefined) {
      req.resume();
      entry.status = 412;
      res.writeHead(412, { 'content-length': 0 });
      res.end();
      return;
    }

    const headers: OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(req.headers)) if (!HOP_BY_HOP.includes(k) && k !== 'host') headers[k] = v;
    headers.host = target.host;
    if (fault && 'ignoreRange' in fault) {
      delete headers.range;
      delete headers['if-range'];
    }
    const up = httpRequest({ agent, hostname: target.hostname, port: target.port, method: req.method, path: req.url, headers });
    req.pipe(up);
    // The client left (or a fault cut it off): the target's answer is not wanted, and a half-read one cannot be reused.
    res.once('close', () => {
      if (!res.writableFinished) up.destroy();
    });
    up.once('error', (e) => {
      if (closing) return;
      if (!res.headersSent) {
        entry.status = 502;
        res.writeHead(502, { 'content-type': 'text/plain' }).end(`fault proxy: ${e.message}\n`);
      } else res.destroy();
    });
    up.once('response', (ur) => forward(ur));

    function forward(ur: IncomingMessage): void {
      const out: OutgoingHttpHeaders = {};
      for (const [k, v] of Object.entries(ur.headers)) if (!HOP_BY_HOP.includes(k) && v !== undefined) out[k] = v;
      const replace = fault !== undefined && 'replace' in fault;
      if (replace && typeof out.etag === 'string') out.etag = out.etag.replace(/"$/, '-replaced"');
      entry.status = ur.statusCode!;
      res.writeHead(ur.statusCode!, out);
      const socket = res.socket!;
      const cutAt = fault && 'reset' in fault ? fault.reset : fault && 'short' in fault ? fault.short : Infinity;
      const stall = fault && 'stall' in fault ? { ms: fault.stall, at: fault.after ?? 64 * 1024, done: false } : undefined;
      let sent = 0;
      let cut = false;
      // Both backpressure and a stall pause the target's stream; it resumes when neither holds it.
      const holds = new Set<string>();
      const hold = (why: string) => (holds.add(why), ur.pause());
      const release = (why: string) => (holds.delete(why), holds.size === 0 && ur.resume());
      const write = (c: Buffer) => {
        if (c.length === 0) return;
        sent += c.length;
        entry.bytes += c.length;
        stats.bytesForwarded += c.length;
        if (!res.write(c)) {
          hold('drain');
          res.once('drain', () => release('drain'));
        }
      };
      const stallNow = (then: () => void) => {
        stall!.done = true;
        hold('stall');
        res.flushHeaders();
        void sleep(stall!.ms).then(() => {
          if (closing || res.destroyed) return;
          then();
          release('stall');
        });
      };
      const cutOff = () => {
        cut = true;
        ur.destroy();
        res.flushHeaders();
        // Once every byte is in the kernel (Node's buffer and the socket's cork are empty; a write callback of an
        // empty chunk says nothing): FIN (the client sees the body end early) or RST (a reset).
        const finish = () => {
          if (socket.destroyed) return;
          if (socket.writableLength > 0 || socket.writableCorked > 0) return void setImmediate(finish);
          if (fault && 'reset' in fault) socket.resetAndDestroy();
          else socket.end();
        };
        setImmediate(finish);
      };
      if (cutAt === 0) return cutOff();
      ur.on('data', (chunk: Buffer) => {
        if (cut) return;
        let c = chunk;
        if (replace) {
          c = Buffer.allocUnsafe(chunk.length);
          for (let i = 0; i < c.length; i++) c[i] = chunk[i]! ^ 0xff;
        }
        if (stall && !stall.done && sent + c.length >= stall.at) {
          const head = c.subarray(0, stall.at - sent);
          const rest = c.subarray(head.length);
          write(head);
          stallNow(() => write(rest));
          return;
        }
        if (sent + c.length >= cutAt) {
          write(c.subarray(0, cutAt - sent));
          return cutOff();
        }
        write(c);
      });
      ur.once('end', () => {
        if (cut) return;
        // A body shorter than the stall's offset stalls before its end.
        if (stall && !stall.done) stallNow(() => res.end());
        else res.end();
      });
      ur.once('error', () => res.destroy());
    }
  }
  const server = createServer((req, res) => void handle(req, res));
  server.keepAliveTimeout = 60_000;
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://${host}:${port}`,
    port,
    stats,
    setPlan: (p) => (plan = p),
    setTarget: (t) => (target = parseTarget(t)),
    setTtfb: (ms) => (ttfbMs = ms),
    async close() {
      if (closing) return;
      closing = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      const closed = new Promise<void>((r) => server.close(() => r()));
      for (const s of sockets) s.destroy();
      agent.destroy();
      await closed;
    },
  };
}
