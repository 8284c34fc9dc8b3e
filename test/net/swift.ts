/**
 * A one-node OpenStack Swift with its S3 API (the s3api middleware) on loopback, for tests of s3:// references
 * against a real object store: SigV4 checked by the store, its own error codes, ListObjectsV2, ranged GETs with
 * If-Match. It runs Debian's packaged servers (swift-proxy-server, swift-account-server, swift-container-server,
 * swift-object-server; DMALOAD_SWIFT_BIN for another folder) and a memcached of its own (the proxy's `cache`
 * middleware needs one) as children in the foreground, with the rings, configs and devices in a fresh temp folder
 * (the servers' `swift_dir`; /etc/swift/swift.conf, which every Swift process reads, is the packaged one).
 *
 * - Every listener is on 127.0.0.1 (free ports picked at start); logs come to a UDP socket of this process on
 *   127.0.0.1 (`log_udp_host`), never to syslog, and are kept for {@link Swift.logs}.
 * - `workers = 0`: each server is one process (no fork), so stop() kills exactly the pids it started; a watchdog
 *   shell (a child too) kills them if this process dies without stop(). Swift switches to its `user` in forked
 *   workers only, so these servers keep the caller's uid (root), `user = swift` in their configs notwithstanding;
 *   devices/ is swift's all the same, as a forking setup would need.
 * - Credentials: tempauth's `user_test_tester = testing .admin`, i.e. access key `test:tester`, secret `testing`
 *   (and `user_test_reader = reading`, a user of the same account with no role: AccessDenied); accounts are created on
 *   first use (`account_autocreate`); the S3 API's region is us-east-1.
 * - `trustForwardedHost`: a filter of the test's own before s3api makes a request's `X-Forwarded-Host` its Host (as
 *   a reverse proxy's deployment does), so that a request signed for a proxy in front (../net/faultproxy.ts, which
 *   rewrites Host to its target's) still verifies.
 *
 * Known of Swift's S3 API (2.30): an unsigned request gets a 400 HTML page (not AccessDenied); the ETag is the MD5;
 * there are no x-amz-checksum-* headers.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Hash } from '@smithy/hash-node';
import { SignatureV4 } from '@smithy/signature-v4';
import { toolEnv } from './nginx.js';

/** The folder of the Swift commands. */
export const SWIFT_BIN = process.env.DMALOAD_SWIFT_BIN || '/usr/bin';
const MEMCACHED = process.env.DMALOAD_MEMCACHED || '/usr/bin/memcached';
const SWIFT_CONF = '/etc/swift/swift.conf';
const SERVERS = ['account', 'container', 'object'] as const;
const COMMANDS = ['swift-ring-builder', 'swift-proxy-server', ...SERVERS.map((s) => `swift-${s}-server`)];

/** A user's uid and gid from /etc/passwd, or undefined. */
function passwd(user: string): { uid: number; gid: number } | undefined {
  const line = (existsSync('/etc/passwd') ? readFileSync('/etc/passwd', 'utf8') : '').split('\n').find((l) => l.startsWith(`${user}:`));
  const f = line?.split(':');
  return f && f.length >= 4 ? { uid: Number(f[2]), gid: Number(f[3]) } : undefined;
}

/** Why Swift cannot run here (tests skip with it), or undefined. */
export const swiftMissing: string | undefined = (() => {
  const install = 'apt-get install swift swift-proxy swift-object swift-container swift-account memcached';
  const absent = COMMANDS.map((c) => join(SWIFT_BIN, c)).filter((p) => !existsSync(p));
  if (absent.length) return `${absent.join(', ')} missing: ${install} (or set DMALOAD_SWIFT_BIN to the folder of the Swift commands)`;
  if (!existsSync(MEMCACHED)) return `${MEMCACHED} is missing (the Swift proxy's cache middleware needs a memcached): apt-get install memcached`;
  if (!existsSync(SWIFT_CONF)) return `${SWIFT_CONF} is missing (every Swift server reads it): ${install}`;
  if (process.getuid?.() !== 0) return 'the Swift test servers are set up as root (devices/ owned by the swift user, memcached -u): run the tests as root';
  if (!passwd('swift')) return `no 'swift' user (the swift package creates it): ${install}`;
  return undefined;
})();

/** An answer of the store: status, headers and the whole body. */
export interface SwiftResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** One request of the proxy's access log. */
export interface SwiftAccess {
  method: string;
  /** The path and query as the client sent them, decoded once (e.g. '/BUCKET/?list-type=2&prefix=a%2F'). */
  path: string;
  status: number;
  /** Body bytes sent to the client (0 for none). */
  bytesSent: number;
}

/** The proxy's access lines (proxy_logging's format) among the log's syslog lines; the S3 client's requests only. */
export function parseAccessLog(log: string): SwiftAccess[] {
  const out: SwiftAccess[] = [];
  for (const line of log.split('\n')) {
    const m = /^<\d+>proxy: (.*)$/.exec(line);
    if (!m) continue;
    const f = m[1]!.split(' ');
    // client_ip remote_addr datetime method path protocol status referer user_agent auth_token bytes_recvd bytes_sent …
    if (f.length < 12 || !/^HTTP\//.test(f[5]!) || !/^\d{3}$/.test(f[6]!)) continue;
    let path: string;
    try {
      path = decodeURIComponent(f[4]!);
    } catch {
      path = f[4]!;
    }
    // Swift's own subrequests (the account and container checks) go to /v1/…; the health check is no S3 request.
    if (path.startsWith('/v1/') || path === '/healthcheck') continue;
    out.push({ method: f[3]!, path, status: Number(f[6]), bytesSent: f[11] === '-' ? 0 : Number(f[11]) });
  }
  return out;
}

export interface Swift {
  /** http://127.0.0.1:PORT: the proxy, S3 API and Swift API alike. */
  endpoint: string;
  accessKey: string;
  secretKey: string;
  region: string;
  /** A user of the same account without any role (tempauth `user_test_reader = reading`): the store says AccessDenied. */
  noAccess: { accessKey: string; secretKey: string };
  /** The temp folder (rings, configs, devices); removed by stop(). */
  dir: string;
  /** The pids of memcached and the four servers. */
  pids: number[];
  /** A SigV4-signed S3 request (path `/BUCKET[/KEY]`, already escaped), signed with the secret unless `secretKey` says another. */
  request(
    method: string,
    path: string,
    o?: { query?: Record<string, string>; body?: Uint8Array; headers?: Record<string, string>; secretKey?: string },
  ): Promise<SwiftResponse>;
  /** PutBucket (200, or 409 BucketAlreadyOwnedByYou taken as done). */
  createBucket(bucket: string): Promise<void>;
  /** PutObject, the payload's SHA-256 signed; resolves with the ETag the store gave (quoted, the MD5). */
  put(bucket: string, key: string, bytes: Uint8Array): Promise<string>;
  /** DeleteObject. */
  remove(bucket: string, key: string): Promise<void>;
  /** What the servers logged (the proxy logs every request at INFO), the last 512 KiB. */
  logs(): string;
  /**
   * The S3 requests the proxy answered (its access log, Swift's own subrequests left out), oldest first. Waits until
   * there are at least `atLeast` and none came for a moment: a line is sent once a request has ended.
   */
  accessLog(o?: { atLeast?: number; timeoutMs?: number }): Promise<SwiftAccess[]>;
  /** Forgets the access log so far. */
  clearAccessLog(): void;
  /** Kills every process and removes the folder. */
  stop(): Promise<void>;
}

export interface SwiftOptions {
  /** Make `X-Forwarded-Host` the request's Host before s3api checks the signature (for a proxy in front). */
  trustForwardedHost?: boolean;
  /** s3api's `max_bucket_listing`: most keys per ListObjects page (S3's and Swift's 1000 when omitted). */
  maxBucketListing?: number;
}

/** Processes alive, killed if the test process exits without stop(). */
const running = new Set<ChildProcess>();
let exitHook = false;

/** RFC 3986 escaping, as SigV4 wants it (encodeURIComponent leaves ! ' ( ) * as they are). */
function rfc3986(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** Escapes each segment of an S3 key as SigV4's canonical URI wants it; '/' stays. */
export function escapeKey(key: string): string {
  return key.split('/').map(rfc3986).join('/');
}

/** The filter behind `trustForwardedHost` (eventlet keeps the raw headers, which s3api signs from, apart). */
const FORWARDED_HOST_PY = `"""dmaload tests: X-Forwarded-Host becomes the request's Host (a signature made for a proxy in front verifies)."""


def filter_factory(global_conf, **local_conf):
    def factory(app):
        def forwarded_host(env, start_response):
            host = env.pop('HTTP_X_FORWARDED_HOST', None)
            if host:
                env['HTTP_HOST'] = host
                raw = env.get('headers_raw')
                if raw is not None:
                    env['headers_raw'] = tuple(
                        (k, host if k.lower() == 'host' else v)
                        for k, v in raw if k.lower() != 'x-forwarded-host')
            return app(env, start_response)
        return forwarded_host
    return factory
`;

interface Ports {
  memcached: number;
  account: number;
  container: number;
  object: number;
  proxy: number;
}

function serverConf(dir: string, name: (typeof SERVERS)[number], port: number, logPort: number): string {
  return `# Written by test/net/swift.ts for one test run.
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = ${port}
bind_timeout = 2
workers = 0
user = swift
swift_dir = ${dir}
devices = ${join(dir, 'devices')}
mount_check = false
log_name = ${name}
log_udp_host = 127.0.0.1
log_udp_port = ${logPort}
log_level = INFO

[pipeline:main]
pipeline = ${name}-server

[app:${name}-server]
use = egg:swift#${name}
`;
}

function proxyConf(dir: string, ports: Ports, logPort: number, opts: SwiftOptions): string {
  const pipeline = `catch_errors gatekeeper healthcheck proxy-logging cache listing_formats ${opts.trustForwardedHost ? 'forwarded_host ' : ''}s3api tempauth copy slo dlo versioned_writes symlink proxy-logging proxy-server`;
  const filters = ['catch_errors', 'gatekeeper', 'healthcheck', 'listing_formats', 'copy', 'slo', 'dlo', 'versioned_writes', 'symlink'];
  return `# Written by test/net/swift.ts for one test run.
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = ${ports.proxy}
bind_timeout = 2
workers = 0
user = swift
swift_dir = ${dir}
log_name = proxy
log_udp_host = 127.0.0.1
log_udp_port = ${logPort}
log_level = INFO

[pipeline:main]
pipeline = ${pipeline}

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:${ports.memcached}

[filter:s3api]
use = egg:swift#s3api
location = us-east-1
${opts.maxBucketListing === undefined ? '' : `max_bucket_listing = ${opts.maxBucketListing}\n`}
[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin
user_test_reader = reading

[filter:forwarded_host]
paste.filter_factory = dmaload_forwarded_host:filter_factory

${filters.map((f) => `[filter:${f}]\nuse = egg:swift#${f}\n`).join('\n')}`;
}

/** Ports that were free on 127.0.0.1 a moment ago, all different (each held until all are found). */
async function freePorts(n: number): Promise<number[]> {
  const servers = Array.from({ length: n }, () => createServer());
  try {
    return await Promise.all(
      servers.map(
        (s) =>
          new Promise<number>((resolve, reject) => {
            s.once('error', reject);
            s.listen(0, '127.0.0.1', () => resolve((s.address() as { port: number }).port));
          }),
      ),
    );
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => (s.listening ? s.close(r) : r(undefined)))));
  }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

/** The Python the Swift commands run with (their shebang), e.g. /usr/bin/python3. */
function swiftPython(): string {
  const first = readFileSync(join(SWIFT_BIN, 'swift-ring-builder'), 'utf8').split('\n', 1)[0]!;
  const m = /^#!\s*(\S+)(?:\s+(\S+))?/.exec(first);
  if (!m) return 'python3';
  // '#!/usr/bin/env python3'
  return m[1]!.endsWith('/env') && m[2] ? m[2] : m[1]!;
}

/**
 * swift-ring-builder's own main() (swift.cli.ringbuilder) with each command's arguments, in one interpreter: the
 * nine commands as separate processes take about 5 s of Python start-up, this about half a second. Exit codes as the
 * command's: 0 done, 1 done with warnings, anything else an error.
 */
const RING_BUILDER_PY = `import json, sys
from swift.cli.ringbuilder import main
for args in json.loads(sys.argv[1]):
    try:
        main(['swift-ring-builder'] + args)
        code = 0
    except SystemExit as e:
        code = e.code
    if code not in (0, 1, None):
        sys.exit('swift-ring-builder %s exited with %s' % (' '.join(args), code))
`;

/**
 * The rings, as `swift-ring-builder X.builder create 8 1 1; … add r1z1-127.0.0.1:PORT/d1 100; … rebalance` for the
 * account, container and object servers: one device each (d1 under devices/), 2^8 partitions, one replica.
 */
function buildRings(dir: string, ports: Ports): Promise<void> {
  const commands = SERVERS.flatMap((s) => [
    [`${s}.builder`, 'create', '8', '1', '1'],
    [`${s}.builder`, 'add', `r1z1-127.0.0.1:${ports[s]}/d1`, '100'],
    [`${s}.builder`, 'rebalance'],
  ]);
  return new Promise((resolve, reject) => {
    const c = spawn(swiftPython(), ['-c', RING_BUILDER_PY, JSON.stringify(commands)], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: toolEnv() });
    let out = '';
    c.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    c.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    c.once('error', reject);
    c.once('close', (code) => {
      const missing = SERVERS.filter((s) => !existsSync(join(dir, `${s}.ring.gz`)));
      if (code === 0 && missing.length === 0) resolve();
      else reject(new Error(`building the rings failed (exit ${code}${missing.length ? `, no ${missing.join(', ')} ring` : ''}): ${out.trim()}`));
    });
  });
}

/**
 * Starts memcached and the four Swift servers on free loopback ports; resolves once the proxy's /healthcheck answers
 * and a signed S3 request (ListBuckets) succeeds.
 */
export async function startSwift(opts: SwiftOptions = {}): Promise<Swift> {
  if (swiftMissing) throw new Error(swiftMissing);
  const swiftUser = passwd('swift')!;
  const dir = mkdtempSync(join(tmpdir(), 'dmaload-swift-'));
  let log = '';
  const addLog = (s: string) => (log = (log + s).slice(-512 * 1024));
  const access: SwiftAccess[] = [];
  // A large receive buffer: a burst of log lines must not be dropped (the access log is an oracle of the tests).
  const udp: UdpSocket = createSocket({ type: 'udp4', recvBufferSize: 8 * 1024 * 1024 });
  const children: ChildProcess[] = [];
  let watchdog: ChildProcess | undefined;
  const killAll = async () => {
    // The watchdog first: it must not outlive the pids it would kill.
    for (const c of [...(watchdog ? [watchdog] : []), ...children]) {
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
    await Promise.all(
      [...(watchdog ? [watchdog] : []), ...children].map(
        (c) => new Promise<void>((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once('exit', () => r()))),
      ),
    );
    for (const c of children) running.delete(c);
    if (watchdog) running.delete(watchdog);
    children.length = 0;
    watchdog = undefined;
  };
  try {
    // Syslog lines (UDP, RFC 3164 with Swift's own text) from every server.
    udp.on('message', (m) => {
      const line = m.toString('utf8').replace(/\0$/, '');
      addLog(`${line}\n`);
      access.push(...parseAccessLog(line));
    });
    await new Promise<void>((resolve, reject) => {
      udp.once('error', reject);
      udp.bind(0, '127.0.0.1', () => resolve());
    });
    const logPort = udp.address().port;
    mkdirSync(join(dir, 'devices', 'd1'), { recursive: true });
    for (const d of [join(dir, 'devices'), join(dir, 'devices', 'd1')]) chownSync(d, swiftUser.uid, swiftUser.gid);
    writeFileSync(join(dir, 'dmaload_forwarded_host.py'), FORWARDED_HOST_PY);
    if (!exitHook) {
      exitHook = true;
      process.once('exit', () => {
        for (const c of running) c.kill('SIGKILL');
      });
    }

    // A port taken by another process between freePorts() and the bind: the servers give up after bind_timeout and
    // exit; start over with new ports (and rings that name them).
    for (let attempt = 1; ; attempt++) {
      const [memcached, account, container, object, proxy] = await freePorts(5);
      const ports: Ports = { memcached: memcached!, account: account!, container: container!, object: object!, proxy: proxy! };
      for (const f of ['account', 'container', 'object'].flatMap((s) => [`${s}.builder`, `${s}.ring.gz`])) rmSync(join(dir, f), { force: true });
      await buildRings(dir, ports);
      for (const s of SERVERS) writeFileSync(join(dir, `${s}-server.conf`), serverConf(dir, s, ports[s], logPort));
      writeFileSync(join(dir, 'proxy-server.conf'), proxyConf(dir, ports, logPort, opts));

      const env = toolEnv({ PYTHONPATH: dir, PYTHONDONTWRITEBYTECODE: '1' });
      const exited: string[] = [];
      const launch = (name: string, cmd: string, args: string[]) => {
        const c = spawn(cmd, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env });
        // Keep reading: a full pipe would block the server.
        c.stdout.setEncoding('utf8').on('data', (d: string) => addLog(`[${name}] ${d}`));
        c.stderr.setEncoding('utf8').on('data', (d: string) => addLog(`[${name}] ${d}`));
        c.once('error', (e) => addLog(`[${name}] ${e.message}\n`));
        c.once('exit', (code, signal) => exited.push(`${name} exited (${code ?? signal})`));
        children.push(c);
        running.add(c);
        return c;
      };
      const user = passwd('memcache') ? 'memcache' : 'nobody';
      launch('memcached', MEMCACHED, ['-l', '127.0.0.1', '-p', String(ports.memcached), '-U', '0', '-m', '64', '-u', user]);
      for (const s of SERVERS) launch(s, join(SWIFT_BIN, `swift-${s}-server`), [join(dir, `${s}-server.conf`)]);
      launch('proxy', join(SWIFT_BIN, 'swift-proxy-server'), [join(dir, 'proxy-server.conf')]);
      // Kills them all when its stdin closes: this process died without stop(). It ignores the signals a terminal
      // sends the whole process group, so that it outlives this process long enough to act.
      watchdog = spawn(
        'sh',
        ['-c', 'trap "" INT TERM HUP; while read -r _; do :; done; kill -KILL "$@" 2>/dev/null', 'sh', ...children.map((c) => String(c.pid))],
        {
          stdio: ['pipe', 'ignore', 'ignore'],
          env: toolEnv(),
        },
      );
      running.add(watchdog);

      const swift = handle({ dir, ports, log: () => log, access, children, killAll, udp });
      const deadline = Date.now() + 60_000;
      let last = '';
      for (;;) {
        if (exited.length) break;
        if (Date.now() > deadline) {
          await killAll();
          throw new Error(`Swift did not answer within 60 s (${last}); its log:\n${log.slice(-8192)}`);
        }
        last = await ready(swift, ports).catch((e: Error) => e.message);
        if (last === '') return swift;
        await new Promise((r) => setTimeout(r, 100));
      }
      await killAll();
      if (attempt < 3 && /Could not bind|Address already in use|failed to listen/i.test(log)) continue;
      throw new Error(`Swift did not start (${exited.join(', ')}); its log:\n${log.slice(-8192)}`);
    }
  } catch (e) {
    await killAll();
    try {
      udp.close();
    } catch {
      // never bound
    }
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/** '' once the proxy's /healthcheck answers OK and a signed ListBuckets 200; else what is not ready yet. */
async function ready(swift: Swift, ports: Ports): Promise<string> {
  for (const s of SERVERS) if (!(await accepts(ports[s]))) return `the ${s} server does not accept connections yet`;
  const health = await plain(`${swift.endpoint}/healthcheck`);
  if (health.status !== 200) return `/healthcheck answered ${health.status}`;
  const list = await swift.request('GET', '/');
  if (list.status !== 200) return `a signed ListBuckets answered ${list.status}: ${list.body.toString('utf8').slice(0, 200)}`;
  return '';
}

/** An unsigned GET. */
function plain(url: string): Promise<SwiftResponse> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.once('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
      res.once('error', reject);
    });
    req.once('error', reject);
    req.end();
  });
}

function handle(c: {
  dir: string;
  ports: Ports;
  log: () => string;
  access: SwiftAccess[];
  children: ChildProcess[];
  killAll: () => Promise<void>;
  udp: UdpSocket;
}): Swift {
  const endpoint = `http://127.0.0.1:${c.ports.proxy}`;
  const accessKey = 'test:tester';
  const secretKey = 'testing';
  const region = 'us-east-1';
  const signers = new Map<string, SignatureV4>();
  const signer = (secret: string) => {
    let s = signers.get(secret);
    if (!s) {
      s = new SignatureV4({
        service: 's3',
        region,
        credentials: { accessKeyId: accessKey, secretAccessKey: secret },
        sha256: Hash.bind(null, 'sha256'),
        uriEscapePath: false,
      });
      signers.set(secret, s);
    }
    return s;
  };
  let stopped = false;
  const swift: Swift = {
    endpoint,
    accessKey,
    secretKey,
    region,
    noAccess: { accessKey: 'test:reader', secretKey: 'reading' },
    dir: c.dir,
    pids: c.children.map((p) => p.pid!),
    async request(method, path, o = {}) {
      const body = o.body ?? new Uint8Array(0);
      const headers: Record<string, string> = {
        host: `127.0.0.1:${c.ports.proxy}`,
        'x-amz-content-sha256': createHash('sha256').update(body).digest('hex'),
        ...(body.length || method === 'PUT' ? { 'content-length': String(body.length) } : {}),
        ...(o.headers ?? {}),
      };
      const signed = await signer(o.secretKey ?? secretKey).sign({
        method,
        protocol: 'http:',
        hostname: '127.0.0.1',
        port: c.ports.proxy,
        path,
        query: o.query ?? {},
        headers,
      });
      // As SigV4's canonical query escapes them (URLSearchParams would write a space as '+').
      const qs = Object.entries(o.query ?? {})
        .map(([k, v]) => `${rfc3986(k)}=${rfc3986(v)}`)
        .join('&');
      return new Promise<SwiftResponse>((resolve, reject) => {
        const req = httpRequest(
          { host: '127.0.0.1', port: c.ports.proxy, method, path: `${path}${qs ? `?${qs}` : ''}`, headers: signed.headers, agent: false },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (d: Buffer) => chunks.push(d));
            res.once('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
            res.once('error', reject);
          },
        );
        req.once('error', reject);
        req.end(body.length ? body : undefined);
      });
    },
    async createBucket(bucket) {
      const r = await swift.request('PUT', `/${bucket}`);
      if (r.status !== 200 && !(r.status === 409 && /BucketAlreadyOwnedByYou/.test(r.body.toString('utf8'))))
        throw new Error(`PutBucket ${bucket}: ${r.status} ${r.body.toString('utf8').slice(0, 500)}`);
    },
    async put(bucket, key, bytes) {
      const r = await swift.request('PUT', `/${bucket}/${escapeKey(key)}`, { body: bytes });
      if (r.status !== 200) throw new Error(`PutObject ${bucket}/${key}: ${r.status} ${r.body.toString('utf8').slice(0, 500)}`);
      return String(r.headers.etag);
    },
    async remove(bucket, key) {
      const r = await swift.request('DELETE', `/${bucket}/${escapeKey(key)}`);
      if (r.status !== 204 && r.status !== 200) throw new Error(`DeleteObject ${bucket}/${key}: ${r.status} ${r.body.toString('utf8').slice(0, 500)}`);
    },
    logs: c.log,
    async accessLog({ atLeast = 0, timeoutMs = 5000 } = {}) {
      const deadline = Date.now() + timeoutMs;
      let last = c.access.length;
      for (;;) {
        await new Promise((r) => setTimeout(r, 50));
        const now = c.access.length;
        if ((now >= atLeast && now === last) || Date.now() > deadline) return [...c.access];
        last = now;
      }
    },
    clearAccessLog() {
      c.access.length = 0;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await c.killAll();
      await new Promise<void>((r) => c.udp.close(() => r()));
      rmSync(c.dir, { recursive: true, force: true });
    },
  };
  return swift;
}

/** Whether a pid is still a live process (not gone, not a zombie). */
export function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) Z/.test(stat);
  } catch {
    return false;
  }
}
