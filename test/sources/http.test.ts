/**
 * The network source (src/pipeline/sources/http.ts) through the public API: load, loadRanges, loadModel, inspect,
 * copy and verifyFile of http(s) URLs, and the CLI's load and cp, against nginx on loopback (../net/nginx.ts), the
 * fault proxy in front of it (../net/faultproxy.ts), and tiny node:http servers written here where a server must
 * misbehave in a way nginx cannot (ignore Range, redirect, refuse).
 *
 * Oracles: the SHA-256 of the served files (and of their slices), the error codes and their fields, nginx's access
 * log and the proxy's own log for what went over the wire (bytes, ranges, connections, retries), the headers each
 * tiny server recorded, and leakCheck() (fds, mappings, memfds, native threads) after every load and failure.
 * Skipped, with the reason, where nginx or openssl is missing.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type OutgoingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { rootCertificates } from 'node:tls';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { copy, inspect, load, loadModel, loadRanges, verifyFile, type LoadedBuffer, type LoadedModel } from '../../src/index.js';
import { writeSafetensors, type Spec } from '../formats/model-files.js';
import { bufferSha256, fileSha256, leakCheck, makeFile, repoRoot, seededBytes, sha256, tempDir } from '../helpers.js';
import { LOOPBACK, clean, rejects } from './common.js';
import { startFaultProxy, type FaultProxy, type Plan } from '../net/faultproxy.js';
import { nginxMissing, startNginx, type AccessEntry, type Nginx } from '../net/nginx.js';

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
const skip = nginxMissing;

// Loopback never goes through a proxy, whatever the environment says (undici's EnvHttpProxyAgent reads these).
for (const k of ['NO_PROXY', 'no_proxy']) process.env[k] = process.env[k] ? `${process.env[k]},${LOOPBACK}` : LOOPBACK;

const { dir, cleanup } = tempDir('dmaload-http-');
after(cleanup);

// An odd size: no chunk or range lines up with a power of two by luck.
const BIG_SIZE = 32 * MiB + 4097;
const big = makeFile(dir, 'big.bin', BIG_SIZE, 41);
const bigBytes = readFileSync(big.path);
writeFileSync(join(dir, 'empty.bin'), '');
const MID_SIZE = 3 * MiB + 12_345;
const mid = makeFile(dir, 'mid.bin', MID_SIZE, 42);
const midBytes = readFileSync(mid.path);

/** A safetensors model of a few tensors of a few MiB (sizes not multiples of 4 KiB). */
const MODEL_SPECS: Spec[] = [
  { name: 'embed', dtype: 'F32', shape: [512, 1024], data: seededBytes(2 * MiB, 1) },
  { name: 'norm', dtype: 'F32', shape: [1000], data: seededBytes(4000, 2) },
  { name: 'layer.0.w', dtype: 'F32', shape: [768, 1024], data: seededBytes(3 * MiB, 3) },
  { name: 'layer.0.b', dtype: 'U8', shape: [12_345], data: seededBytes(12_345, 4) },
  { name: 'layer.1.w', dtype: 'F32', shape: [1000, 1024], data: seededBytes(4_096_000, 5) },
  { name: 'head', dtype: 'U8', shape: [3 * MiB + 17], data: seededBytes(3 * MiB + 17, 6) },
];
const modelPath = join(dir, 'model.safetensors');
const modelFile = writeSafetensors(modelPath, MODEL_SPECS);
const MODEL_HEADER = 8 + Number(modelFile.readBigUInt64LE(0));

const slice = (bytes: Buffer, offset: number, length: number) => sha256(bytes.subarray(offset, offset + length));

/** Checks a whole-file load: bytes, io 'network', no page cache, network stats present. */
function assertNetworkLoad(b: LoadedBuffer, sha: string, size: number): void {
  assert.equal(b.size, size);
  assert.equal(bufferSha256(b), sha, 'bytes differ from the served file');
  assert.equal(b.stats.io, 'network');
  assert.equal(b.stats.pageCacheBytes, 0);
  assert.ok(b.stats.network, 'stats.network');
  assert.ok(b.stats.network.requests >= 1);
}

/** The ranges ('bytes=A-B') of log entries, as [A, B] pairs. */
function ranges(entries: readonly { range: string | undefined }[]): Array<[number, number]> {
  return entries.map((e) => {
    const m = /^bytes=(\d+)-(\d+)$/.exec(e.range ?? '');
    assert.ok(m, `not a plain range: ${e.range}`);
    return [Number(m[1]), Number(m[2])];
  });
}

/** The access log's entries for one URI, once at least `atLeast` of them were written. */
async function logOf(ng: Nginx, uri: string, atLeast: number): Promise<AccessEntry[]> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const got = (await ng.accessLog()).filter((e) => e.uri === uri);
    if (got.length >= atLeast || Date.now() > deadline) return got;
    await new Promise((r) => setTimeout(r, 25));
  }
}

// ------------------------------------------------------------------------------------------------------------------
// Tiny servers: the misbehaviour nginx cannot be configured into.

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
}
interface Tiny {
  origin: string;
  seen: Seen[];
  close(): Promise<void>;
}

/** A server on `host` (HTTP, or HTTPS with `tls`) that records each request and hands it to `handler`. */
async function tiny(
  handler: (req: IncomingMessage, res: ServerResponse, n: number) => void,
  opts: { host?: string; tls?: { key: string; cert: string } } = {},
): Promise<Tiny> {
  const seen: Seen[] = [];
  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    seen.push({ method: req.method!, url: req.url!, headers: req.headers });
    res.on('error', () => {});
    handler(req, res, seen.length);
  };
  const server: Server = opts.tls ? createHttpsServer(opts.tls, onRequest) : createServer(onRequest);
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('error', () => {});
    s.once('close', () => sockets.delete(s));
  });
  server.on('clientError', (_e, s: Socket) => s.destroy());
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  return {
    origin: `${opts.tls ? 'https' : 'http'}://${host}:${port}`,
    seen,
    close: async () => {
      const closed = new Promise<void>((r) => server.close(() => r()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}

/** Answers a GET of `bytes` as a static server does: 206 for `Range: bytes=A-B`, else 200 with the whole body. */
function sendBytes(req: IncomingMessage, res: ServerResponse, bytes: Buffer, extra: OutgoingHttpHeaders = {}): void {
  const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
  if (!m) {
    res.writeHead(200, { 'content-length': bytes.length, 'accept-ranges': 'bytes', ...extra });
    res.end(bytes);
    return;
  }
  const from = Number(m[1]);
  const to = Math.min(Number(m[2]), bytes.length - 1);
  if (from > to) {
    res.writeHead(416, { 'content-range': `bytes */${bytes.length}`, 'content-length': 0 });
    res.end();
    return;
  }
  res.writeHead(206, { 'content-length': to - from + 1, 'content-range': `bytes ${from}-${to}/${bytes.length}`, ...extra });
  res.end(bytes.subarray(from, to + 1));
}

/** A port nothing listens on (it was free a moment ago). */
async function deadPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

/** `node bin/dmaload.js ARGS` from the repository root; resolves with the exit code and the output. */
async function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [join(repoRoot, 'bin', 'dmaload.js'), ...args], {
      cwd: repoRoot,
      env: { ...process.env, ...env },
      maxBuffer: 16 * MiB,
    });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof x.code === 'number' ? x.code : -1, stdout: x.stdout ?? '', stderr: x.stderr ?? '' };
  }
}

describe('http source', { skip }, () => {
  let ng: Nginx;
  before(async () => {
    // /slow/ at 256 KiB/s per request (nginx lets the first second's worth go at once), for the abort test; / is
    // unlimited.
    ng = await startNginx({ root: dir, limitRate: '256k' });
  });
  after(() => ng?.stop());
  const url = (name: string) => `${ng.urls.http}/${name}`;

  describe('load', () => {
    test('into memory and into a memfd: byte-exact, io network, no page cache; the ranges tile the file once', async () => {
      for (const target of ['memory', 'memfd'] as const) {
        await ng.clearAccessLog();
        const stats = await clean(async () => {
          const b = await load(url('big.bin'), { target });
          try {
            assertNetworkLoad(b, big.sha256, BIG_SIZE);
            assert.equal(b.target, target);
            assert.equal(b.stats.bytesRead, BIG_SIZE);
            assert.equal(b.stats.network!.retries, 0);
            assert.ok(b.stats.network!.connections >= 1 && b.stats.network!.connections <= 32, `connections ${b.stats.network!.connections}`);
            if (target === 'memfd') assert.ok(b.parts[0]!.fd >= 0, 'a memfd');
            return b.stats;
          } finally {
            b.close();
          }
        });
        // What went over the wire: one probe of byte 0, then ranges that cover the file exactly once.
        const log = await logOf(ng, '/big.bin', stats.network!.requests);
        assert.equal(log.length, stats.network!.requests, 'stats.network.requests equals the requests nginx served');
        assert.ok(
          log.every((e) => e.status === 206),
          `statuses ${log.map((e) => e.status).join(' ')}`,
        );
        const probe = log.filter((e) => e.range === 'bytes=0-0');
        assert.equal(probe.length, 1, 'one probe');
        const data = ranges(log.filter((e) => e !== probe[0])).sort((a, b) => a[0] - b[0]);
        let at = 0;
        for (const [a, z] of data) {
          assert.equal(a, at, `ranges leave a gap or overlap at ${at}`);
          at = z + 1;
        }
        assert.equal(at, BIG_SIZE, 'the ranges end at the end of the file');
        assert.equal(
          log.reduce((n, e) => n + e.bytesSent, 0),
          BIG_SIZE + 1,
          'bytes sent: the file once, and the probe byte',
        );
      }
    });

    test("verify: true reports the file's SHA-256; a wrong sha256 is ERR_CHECKSUM_MISMATCH and leaves nothing behind", async () => {
      await clean(async () => {
        const b = await load(url('big.bin'), { verify: true });
        try {
          assertNetworkLoad(b, big.sha256, BIG_SIZE);
          assert.equal(b.stats.verified?.sha256, big.sha256);
          assert.equal(b.stats.verified?.source, 'computed');
        } finally {
          b.close();
        }
      });
      const wrong = big.sha256.replace(/^./, (c) => (c === '0' ? '1' : '0'));
      for (const target of ['memory', 'memfd'] as const) {
        const e = await clean(() => rejects(load(url('big.bin'), { target, verify: { sha256: wrong } }), 'ERR_CHECKSUM_MISMATCH'));
        assert.equal(e.expected, wrong);
        assert.equal(e.actual, big.sha256);
      }
    });

    test('an empty object (nginx answers its probe with 416 bytes */0) loads as 0 bytes', async () => {
      for (const target of ['memory', 'memfd'] as const) {
        await clean(async () => {
          const b = await load(url('empty.bin'), { target, verify: true });
          try {
            assert.equal(b.size, 0);
            assert.equal(b.stats.io, 'network');
            assert.equal(b.stats.pageCacheBytes, 0);
            assert.equal(b.stats.verified?.sha256, sha256(new Uint8Array(0)));
          } finally {
            b.close();
          }
        });
      }
    });

    test('source.connections 1 and a fixed source.chunkSize: one connection, ranges of that size', async () => {
      await ng.clearAccessLog();
      const chunk = 4 * MiB;
      const stats = await clean(async () => {
        const b = await load(url('big.bin'), { source: { connections: 1, chunkSize: chunk } });
        try {
          assertNetworkLoad(b, big.sha256, BIG_SIZE);
          assert.equal(b.stats.network!.connections, 1);
          return b.stats;
        } finally {
          b.close();
        }
      });
      const log = await logOf(ng, '/big.bin', stats.network!.requests);
      assert.equal(log.length, Math.ceil(BIG_SIZE / chunk) + 1);
      // The probe and the ranges on the wire's one connection (src/pipeline/sources/wire.ts).
      assert.equal(new Set(log.map((e) => e.connection)).size, 1, 'the probe and every range on one kept-alive connection');
      const data = ranges(log.slice(1));
      assert.deepEqual(
        data,
        Array.from({ length: Math.ceil(BIG_SIZE / chunk) }, (_, i) => [i * chunk, Math.min(BIG_SIZE, (i + 1) * chunk) - 1]),
      );
    });

    test('partSize: a load in parts (each part read while the next is allocated) is byte-exact', async () => {
      // Two parts' reads are in flight at once, each a readInto() of the same HttpObject.
      for (const target of ['memory', 'memfd'] as const) {
        await clean(async () => {
          const b = await load(url('big.bin'), { target, partSize: 8 * MiB });
          try {
            assertNetworkLoad(b, big.sha256, BIG_SIZE);
            assert.equal(b.stats.parts.length, Math.ceil(BIG_SIZE / (8 * MiB)));
          } finally {
            b.close();
          }
        });
      }
    });
  });

  describe('https', () => {
    test('with source.ca: byte-exact', async () => {
      const ca = readFileSync(ng.caPath, 'utf8');
      await clean(async () => {
        const b = await load(`${ng.urls.https}/big.bin`, { source: { ca } });
        try {
          assertNetworkLoad(b, big.sha256, BIG_SIZE);
        } finally {
          b.close();
        }
      });
    });

    test('without the CA: ERR_SOURCE_NETWORK naming TLS, at once (no retries)', async () => {
      const t0 = performance.now();
      const e = await clean(() => rejects(load(`${ng.urls.https}/big.bin`), 'ERR_SOURCE_NETWORK'));
      const ms = performance.now() - t0;
      assert.match(e.message, /TLS/);
      assert.equal(e.attempts, 1, 'a refused certificate is not retried');
      assert.ok(ms < 2000, `rejected after ${ms.toFixed(0)} ms`);
    });

    test('the CLI trusts NODE_EXTRA_CA_CERTS: dmaload load URL --json --hash sha256', async () => {
      const r = await cli(['load', `${ng.urls.https}/big.bin`, '--json', '--hash', 'sha256'], { NODE_EXTRA_CA_CERTS: ng.caPath });
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout) as { size: number; io: string; sha256: string; pageCacheBytes: number; network?: { requests: number } };
      assert.equal(out.size, BIG_SIZE);
      assert.equal(out.io, 'network');
      assert.equal(out.sha256, big.sha256);
      assert.equal(out.pageCacheBytes, 0);
      assert.ok(out.network && out.network.requests >= 2);
      // And without it, the CLI refuses the certificate with the code.
      const no = await cli(['load', `${ng.urls.https}/big.bin`, '--json']);
      assert.notEqual(no.code, 0);
      // With --json the error is the one JSON document on stdout.
      assert.equal((JSON.parse(no.stdout) as { error: { code: string } }).error.code, 'ERR_SOURCE_NETWORK', no.stdout + no.stderr);
    });

    test('source.ca adds a CA to the ones Node trusts (NODE_EXTRA_CA_CERTS included), it does not replace them', async () => {
      // docs: "PEM of a CA to trust besides Node's own (which include NODE_EXTRA_CA_CERTS)". The server's CA comes
      // from NODE_EXTRA_CA_CERTS; source.ca is another CA (one of Mozilla's roots, which signed nothing here).
      const script = `
        import { load } from ${JSON.stringify(pathToFileURL(join(repoRoot, 'dist', 'src', 'index.js')).href)};
        import { rootCertificates } from 'node:tls';
        const out = {};
        for (const [name, source] of [['none', {}], ['other', { ca: rootCertificates[0] }]]) {
          try {
            const b = await load(process.argv[1], { source });
            out[name] = b.size;
            b.close();
          } catch (e) {
            out[name] = e.code + ': ' + e.message;
          }
        }
        console.log(JSON.stringify(out));`;
      assert.ok(rootCertificates.length > 0);
      const r = await run(process.execPath, ['--input-type=module', '-e', script, `${ng.urls.https}/mid.bin`], {
        env: { ...process.env, NODE_EXTRA_CA_CERTS: ng.caPath },
      });
      assert.deepEqual(JSON.parse(r.stdout), { none: MID_SIZE, other: MID_SIZE });
    });
  });

  test('loadRanges: the bytes at the returned offsets are the file slices; nginx sent only those ranges (rounded to 4 KiB)', async () => {
    const want = [
      { offset: 5, length: 1000 },
      { offset: 10 * MiB + 123, length: 3 * MiB + 7 },
      { offset: 30 * MiB + 1, length: 2 * MiB },
    ];
    await ng.clearAccessLog();
    const requests = await clean(async () => {
      const { buffer, offsets } = await loadRanges(url('big.bin'), want);
      try {
        assert.equal(offsets.length, want.length);
        want.forEach((r, i) => {
          const at = offsets[i]!;
          assert.equal(at % 4096, r.offset % 4096, 'file alignment kept');
          assert.equal(sha256(buffer.bytes.subarray(at, at + r.length)), slice(bigBytes, r.offset, r.length), `range ${i}`);
        });
        assert.equal(buffer.stats.io, 'network');
        assert.equal(buffer.stats.pageCacheBytes, 0);
        return buffer.stats.network!.requests;
      } finally {
        buffer.close();
      }
    });
    const rounded = want.map((r) => [Math.floor(r.offset / 4096) * 4096, Math.min(BIG_SIZE, Math.ceil((r.offset + r.length) / 4096) * 4096)] as const);
    const budget = rounded.reduce((n, [a, z]) => n + z - a, 0) + KiB;
    const log = await logOf(ng, '/big.bin', requests);
    assert.equal(log.length, requests);
    const sent = log.reduce((n, e) => n + e.bytesSent, 0);
    assert.ok(sent <= budget, `nginx sent ${sent} bytes, the ranges rounded out are ${budget - KiB} (+1 KiB for the probe)`);
    // Every range asked for lies inside one of the rounded ranges (or is the probe's byte 0).
    for (const [a, z] of ranges(log)) {
      assert.ok((a === 0 && z === 0) || rounded.some(([ra, rz]) => a >= ra && z < rz), `range ${a}-${z} outside the ranges`);
    }
  });

  describe('loadModel', () => {
    const tensorBytes = (m: LoadedModel) => [...m.tensors.values()].reduce((n, t) => n + t.byteLength, 0);

    /** Every tensor of `net` equals the same tensor of `local` (names, dtype, shape, bytes) and the file's slice. */
    function assertSameModel(net: LoadedModel, local: LoadedModel): void {
      assert.deepEqual([...net.tensors.keys()], [...local.tensors.keys()]);
      for (const [name, t] of net.tensors) {
        const l = local.tensors.get(name)!;
        assert.deepEqual([t.dtype, t.shape, t.offset, t.byteLength], [l.dtype, l.shape, l.offset, l.byteLength], name);
        assert.equal(sha256(t.bytes), sha256(l.bytes), `${name}: bytes differ from the local load`);
        assert.equal(sha256(t.bytes), slice(modelFile, t.offset, t.byteLength), `${name}: bytes differ from the file`);
        assert.equal(t.bufferOffset % 4096, t.offset % 4096);
      }
    }

    for (const [label, options] of [
      ['tensors: two names', { tensors: ['layer.0.w', 'head'] }],
      ['rank 1 of 2', { rank: 1, worldSize: 2 }],
    ] as const) {
      test(`${label}: the tensors equal the local file's; nginx sent the header and those tensors' bytes`, async () => {
        await ng.clearAccessLog();
        const { bound, requests } = await clean(async () => {
          const local = await loadModel(modelPath, { ...options });
          try {
            const net = await loadModel(url('model.safetensors'), { ...options });
            try {
              assert.ok(net.tensors.size > 0 && net.tensors.size < MODEL_SPECS.length, `${net.tensors.size} tensors`);
              assertSameModel(net, local);
              for (const f of net.stats.perFile) assert.equal(f.stats.io, 'network');
              // The header's read, and one per range: each may bring up to 64 KiB more than asked.
              return {
                bound: tensorBytes(net) + MODEL_HEADER + 64 * KiB * (net.stats.ranges + 1),
                // inspect(): its probe and the header's read; then the data's probe and ranges.
                requests: 2 + net.stats.perFile.reduce((n, f) => n + f.stats.network!.requests, 0),
              };
            } finally {
              net.close();
            }
          } finally {
            local.close();
          }
        });
        const log = await logOf(ng, '/model.safetensors', requests);
        assert.equal(log.length, requests);
        const sent = log.reduce((n, e) => n + e.bytesSent, 0);
        assert.ok(sent <= bound, `nginx sent ${sent} bytes for the model, at most ${bound} expected`);
        assert.ok(sent < modelFile.length * 0.8, `nginx sent ${sent} of ${modelFile.length} bytes: not a partial read`);
      });
    }

    test('inspect() of the URL equals inspect() of the file', async () => {
      const [net, local] = await clean(async () => [await inspect(url('model.safetensors')), await inspect(modelPath)] as const);
      assert.deepEqual(
        net.tensors.map((t) => [t.name, t.dtype, t.shape, t.offset, t.bytes]),
        local.tensors.map((t) => [t.name, t.dtype, t.shape, t.offset, t.bytes]),
      );
    });
  });

  describe('faults (the fault proxy in front of nginx)', () => {
    /** A load of big.bin through a proxy with `plan`; the proxy is opened and closed inside the leak check. */
    async function through(plan: Plan, body: (proxyUrl: string, proxy: FaultProxy) => Promise<void>): Promise<FaultProxy> {
      let used: FaultProxy | undefined;
      await clean(async () => {
        const proxy = await startFaultProxy({ target: ng.urls.http, plan });
        used = proxy;
        try {
          await body(`${proxy.url}/big.bin`, proxy);
        } finally {
          await proxy.close();
        }
      });
      return used!;
    }

    /** Loads through the proxy and checks the bytes and that every fault was retried. */
    async function survives(plan: Plan, source: Record<string, number> = {}): Promise<{ proxy: FaultProxy; ms: number; retries: number }> {
      let ms = 0;
      let retries = 0;
      const proxy = await through(plan, async (u, p) => {
        const t0 = performance.now();
        // verify: the hash is fed piece by piece, a broken piece's bytes before its retry's: it must still add up.
        const b = await load(u, { source, verify: true });
        ms = performance.now() - t0;
        try {
          assertNetworkLoad(b, big.sha256, BIG_SIZE);
          assert.equal(b.stats.verified?.sha256, big.sha256);
          retries = b.stats.network!.retries;
          assert.ok(p.stats.faults >= 1, 'the plan injected nothing');
          assert.ok(retries >= p.stats.faults, `${retries} retries for ${p.stats.faults} faults`);
          assert.equal(b.stats.network!.requests, p.stats.requests, 'stats.network.requests equals what the proxy saw');
        } finally {
          b.close();
        }
      });
      return { proxy, ms, retries };
    }

    test('503 with Retry-After: 1 on the 2nd and 5th requests: byte-exact, and the retries waited the second', async () => {
      const { proxy, ms } = await survives((_req, n) => (n === 2 || n === 5 ? { status: 503, retryAfter: 1 } : undefined));
      assert.equal(proxy.stats.byKind['status 503'], 2);
      assert.ok(ms >= 950, `the load took ${ms.toFixed(0)} ms: Retry-After: 1 was not honoured`);
    });

    test('429 on the 2nd and 3rd requests', async () => {
      const { proxy } = await survives((_req, n) => (n === 2 || n === 3 ? { status: 429 } : undefined));
      assert.equal(proxy.stats.byKind['status 429'], 2);
    });

    test('a reset mid-body: the range is asked for again from at most where it broke', async () => {
      const CUT = 100_000;
      const { proxy } = await survives((_req, n) => (n === 3 ? { reset: CUT } : undefined));
      const log = proxy.stats.log;
      const bad = log.find((e) => e.fault === 'reset')!;
      const [[a, z]] = ranges([bad]) as [[number, number]];
      const again = ranges(log.filter((e) => e.n > bad.n)).filter(([, zz]) => zz === z);
      assert.equal(again.length, 1, 'the rest of the broken range was asked for once');
      assert.ok(again[0]![0] >= a && again[0]![0] <= a + CUT, `retried from ${again[0]![0]}, the range began at ${a}`);
    });

    test('short bodies (FIN before Content-Length): the rest of each range is asked for, from exactly where it ended', async () => {
      const CUT = 200_000;
      const { proxy } = await survives((_req, n) => (n === 3 || n === 4 ? { short: CUT } : undefined));
      const log = proxy.stats.log;
      for (const bad of log.filter((e) => e.fault === 'short')) {
        const [[a, z]] = ranges([bad]) as [[number, number]];
        assert.ok(
          log.some((e) => e.n > bad.n && e.range === `bytes=${a + CUT}-${z}`),
          `no request for bytes=${a + CUT}-${z} after ${bad.range} ended short`,
        );
      }
    });

    test('a stall of 3 s with stallMs 500: retried long before the stall would have ended', async () => {
      const { ms } = await survives((_req, n) => (n === 3 ? { stall: 3000, after: 64 * KiB } : undefined), { stallMs: 500, attempts: 8 });
      assert.ok(ms < 2800, `the load took ${ms.toFixed(0)} ms: it waited for the stall`);
    });

    test('503 on every request: ERR_SOURCE_HTTP, status 503, attempts as the option (probe, and mid-load)', async () => {
      const p1 = await through(
        () => ({ status: 503 }),
        async (u) => {
          const e = await rejects(load(u, { source: { attempts: 3 } }), 'ERR_SOURCE_HTTP');
          assert.equal(e.status, 503);
          assert.equal(e.attempts, 3);
        },
      );
      assert.equal(p1.stats.requests, 3, 'the probe was tried three times, no more');
      await through(
        (_req, n) => (n === 1 ? undefined : { status: 503 }),
        async (u) => {
          const e = await rejects(load(u, { source: { attempts: 3 } }), 'ERR_SOURCE_HTTP');
          assert.equal(e.status, 503);
          assert.equal(e.attempts, 3);
        },
      );
    });

    test('a Range ignored mid-load (200 with the whole body): ERR_SOURCE_NO_RANGES, no buffer', async () => {
      const p = await through(
        (_req, n) => (n === 4 ? { ignoreRange: true } : undefined),
        async (u) => {
          await rejects(load(u), 'ERR_SOURCE_NO_RANGES');
        },
      );
      assert.equal(p.stats.log.find((e) => e.fault === 'ignoreRange')?.status, 200);
    });

    test('the object replaced mid-load (412 to If-Match, then another ETag and other bytes): ERR_FILE_CHANGED', async () => {
      const p = await through(
        (_req, n) => (n >= 4 ? { replace: true } : undefined),
        async (u) => {
          await rejects(load(u), 'ERR_FILE_CHANGED');
        },
      );
      const replaced = p.stats.log.find((e) => e.fault === 'replace')!;
      assert.equal(replaced.status, 412, 'the data requests carry If-Match');
    });

    test('one 412 alone (a server refusing its own ETag once): asked again without conditions, byte-exact', async () => {
      const { proxy } = await survives((_req, n) => (n === 4 ? { replace: true } : undefined));
      assert.equal(proxy.stats.log.find((e) => e.fault === 'replace')?.status, 412);
      // After the 412 the requests go without If-Match: each answer's ETag is compared instead.
      assert.ok(proxy.stats.log.some((e) => e.n > 4 && e.status === 206));
    });

    test('an object pinned by Last-Modified (weak ETag) replaced mid-load: ERR_FILE_CHANGED, never a mix of versions', async () => {
      // Version 1 until the 5th request, then version 2 (other bytes, a later Last-Modified, another weak ETag); the
      // server honours If-Unmodified-Since as nginx does (412 when the object is newer than the date).
      const v2 = Buffer.from(bigBytes.map((b) => b ^ 0xff));
      const dates = [new Date(Date.UTC(2024, 0, 1)), new Date(Date.UTC(2024, 5, 1))];
      await clean(async () => {
        const srv = await tiny((req, res, n) => {
          const v = n < 5 ? 0 : 1;
          const since = req.headers['if-unmodified-since'];
          if (since !== undefined && Date.parse(since) < dates[v]!.getTime()) {
            res.writeHead(412, { 'content-length': 0 });
            res.end();
            return;
          }
          sendBytes(req, res, v === 0 ? bigBytes : v2, { 'last-modified': dates[v]!.toUTCString(), etag: `W/"v${v + 1}"` });
        });
        try {
          let got: LoadedBuffer | undefined;
          try {
            // One connection: one request at a time, so the first 412 is the only one (no other pinned request in
            // flight to trip over the change by luck).
            got = await load(`${srv.origin}/big.bin`, { source: { connections: 1 } });
          } catch (e) {
            assert.equal((e as { code?: string }).code, 'ERR_FILE_CHANGED', String(e));
          }
          if (got) {
            const sha = bufferSha256(got);
            got.close();
            assert.fail(
              `the load succeeded although the object changed under it: ${sha === big.sha256 ? 'version 1' : sha === sha256(v2) ? 'version 2' : 'a mix of both versions'}`,
            );
          }
          assert.ok(
            srv.seen.slice(1, 4).every((s) => s.headers['if-unmodified-since'] === dates[0]!.toUTCString()),
            'the first data requests are pinned by If-Unmodified-Since',
          );
        } finally {
          await srv.close();
        }
      });
    });
  });

  describe('a server that ignores Range (200 and the whole body to every GET)', () => {
    const noRanges = (bytes: Buffer) => (_req: IncomingMessage, res: ServerResponse) => {
      res.writeHead(200, { 'content-length': bytes.length, etag: '"whole"' });
      res.end(bytes);
    };

    test('load() streams the object in one GET after the probe, byte-exact', async () => {
      await clean(async () => {
        const srv = await tiny(noRanges(bigBytes));
        try {
          const b = await load(`${srv.origin}/big.bin`, { verify: true });
          try {
            assertNetworkLoad(b, big.sha256, BIG_SIZE);
            assert.equal(b.stats.verified?.sha256, big.sha256);
            assert.equal(srv.seen.length, 2, 'the probe and one GET');
            assert.equal(b.stats.network!.requests, 2);
          } finally {
            b.close();
          }
        } finally {
          await srv.close();
        }
      });
    });

    test('an empty object loads', async () => {
      await clean(async () => {
        const srv = await tiny(noRanges(Buffer.alloc(0)));
        try {
          const b = await load(`${srv.origin}/empty.bin`);
          assert.equal(b.size, 0);
          b.close();
        } finally {
          await srv.close();
        }
      });
    });

    test('loadRanges: ERR_SOURCE_NO_RANGES, with every connection closed when it rejects', async () => {
      // Five times: whether the connection of the probe's abandoned 200 is still open when the call rejects depends on
      // timing (see the report of this test), so one try alone would pass by luck now and then.
      const left: string[] = [];
      for (let i = 0; i < 5; i++) {
        await new Promise((r) => setTimeout(r, 20));
        const leaks = leakCheck();
        const srv = await tiny(noRanges(bigBytes));
        try {
          await rejects(loadRanges(`${srv.origin}/big.bin`, [{ offset: MiB, length: 10 }]), 'ERR_SOURCE_NO_RANGES');
        } finally {
          await srv.close();
        }
        const leak = await leaks();
        if (leak !== undefined) left.push(`try ${i + 1}: ${leak}`);
      }
      assert.deepEqual(left, [], 'open when loadRanges() had rejected');
    });

    test("inspect() reads a model's header from the start of one GET", async () => {
      const info = await clean(async () => {
        const srv = await tiny(noRanges(modelFile));
        try {
          return await inspect(`${srv.origin}/model.safetensors`);
        } finally {
          await srv.close();
        }
      });
      assert.deepEqual(
        info.tensors.map((t) => t.name),
        MODEL_SPECS.map((s) => s.name),
      );
    });

    test('a GET cut off mid-body is tried again from the start, and the load is byte-exact', async () => {
      // The second request (the first GET after the probe) breaks after 1 MB; the third is whole.
      await clean(async () => {
        const srv = await tiny((_req, res, n) => {
          res.writeHead(200, { 'content-length': bigBytes.length, etag: '"whole"' });
          if (n === 2) res.write(bigBytes.subarray(0, 1_000_000), () => setTimeout(() => res.destroy(), 20));
          else res.end(bigBytes);
        });
        try {
          const b = await load(`${srv.origin}/big.bin`);
          try {
            assertNetworkLoad(b, big.sha256, BIG_SIZE);
            assert.equal(b.stats.network!.retries, 1);
            assert.equal(srv.seen.length, 3);
          } finally {
            b.close();
          }
        } finally {
          await srv.close();
        }
      });
    });

    test('copy() and verifyFile() read in parts: without ranges they are ERR_SOURCE_NO_RANGES (documented), no destination left', async () => {
      const dst = join(dir, 'norange-copy.bin');
      await clean(async () => {
        const srv = await tiny(noRanges(bigBytes));
        try {
          await assert.rejects(copy(`${srv.origin}/big.bin`, dst), { code: 'ERR_SOURCE_NO_RANGES', message: /only a load\(\) of the whole object/ });
          assert.equal(existsSync(dst), false, 'no destination');
          await assert.rejects(verifyFile(`${srv.origin}/big.bin`), { code: 'ERR_SOURCE_NO_RANGES' });
        } finally {
          await srv.close();
        }
      });
    });
  });

  describe('redirects', () => {
    /** A server whose /hop/N redirects to /hop/N-1 and whose /hop/0 is mid.bin with ranges. */
    const hops = (req: IncomingMessage, res: ServerResponse) => {
      const n = Number(/^\/hop\/(\d+)$/.exec(req.url ?? '')?.[1] ?? NaN);
      if (n > 0) {
        res.writeHead(302, { location: `/hop/${n - 1}`, 'content-length': 0 });
        res.end();
      } else if (n === 0) sendBytes(req, res, midBytes, { etag: '"mid"' });
      else {
        res.writeHead(404, { 'content-length': 0 });
        res.end();
      }
    };

    test('a chain of 3 (and of 10) 302s is followed; 11 is ERR_SOURCE_REDIRECT', async () => {
      await clean(async () => {
        const srv = await tiny(hops);
        try {
          for (const n of [3, 10]) {
            srv.seen.length = 0;
            const b = await load(`${srv.origin}/hop/${n}`);
            try {
              assertNetworkLoad(b, mid.sha256, MID_SIZE);
            } finally {
              b.close();
            }
            assert.equal(srv.seen.filter((s) => s.url !== '/hop/0').length, n, 'each hop asked once');
          }
          srv.seen.length = 0;
          const e = await rejects(load(`${srv.origin}/hop/11`), 'ERR_SOURCE_REDIRECT');
          assert.match(e.message, /redirected more than 10 times/);
          assert.equal(srv.seen.length, 11, 'no retry of a redirect loop');
        } finally {
          await srv.close();
        }
      });
    });

    test('https to http is refused: ERR_SOURCE_REDIRECT', async () => {
      const tls = { key: readFileSync(join(ng.prefix, 'tls', 'server.key'), 'utf8'), cert: readFileSync(join(ng.prefix, 'tls', 'server.pem'), 'utf8') };
      await clean(async () => {
        const srv = await tiny(
          (_req, res) => {
            res.writeHead(302, { location: `${ng.urls.http}/mid.bin`, 'content-length': 0 });
            res.end();
          },
          { tls },
        );
        try {
          await ng.clearAccessLog();
          const e = await rejects(load(`${srv.origin}/mid.bin`, { source: { ca: readFileSync(ng.caPath) } }), 'ERR_SOURCE_REDIRECT');
          assert.match(e.message, /https to http/);
          assert.equal(srv.seen.length, 1);
          assert.equal((await ng.accessLog()).length, 0, 'the http URL was never asked');
        } finally {
          await srv.close();
        }
      });
    });

    test('Authorization (and Cookie) go to the first origin, even across a same-origin hop, and never to another origin', async () => {
      await clean(async () => {
        const cdn = await tiny((req, res) => sendBytes(req, res, midBytes, { etag: '"mid"' }), { host: '127.0.0.2' });
        const api = await tiny((req, res) => {
          const location = req.url === '/start' ? '/file' : `${cdn.origin}/blob?sig=abc`;
          res.writeHead(302, { location, 'content-length': 0 });
          res.end();
        });
        try {
          const b = await load(`${api.origin}/start`, { source: { headers: { Authorization: 'Bearer tok', Cookie: 'c=1', 'X-Trace': 't1' } } });
          try {
            assertNetworkLoad(b, mid.sha256, MID_SIZE);
          } finally {
            b.close();
          }
          assert.deepEqual(
            api.seen.map((s) => [s.url, s.headers.authorization, s.headers.cookie]),
            [
              ['/start', 'Bearer tok', 'c=1'],
              ['/file', 'Bearer tok', 'c=1'],
            ],
          );
          assert.ok(cdn.seen.length >= 2, 'the probe and the data went to the CDN');
          for (const s of cdn.seen) {
            assert.equal(s.url, '/blob?sig=abc');
            assert.equal(s.headers.authorization, undefined, 'Authorization sent to another origin');
            assert.equal(s.headers.cookie, undefined, 'Cookie sent to another origin');
            assert.equal(s.headers['x-trace'], 't1', 'other headers are kept');
          }
        } finally {
          await api.close();
          await cdn.close();
        }
      });
    });
  });

  describe('answers that do not fit the request', () => {
    /** A server that answers every range but the probe with `answer(from, to)`'s Content-Range and body. */
    const lying = (answer: (from: number, to: number) => { range: string; body: Buffer }) => (req: IncomingMessage, res: ServerResponse) => {
      const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '')!;
      const [from, to] = [Number(m[1]), Number(m[2])];
      if (from === 0 && to === 0) return sendBytes(req, res, midBytes, { etag: '"mid"' });
      const a = answer(from, to);
      res.writeHead(206, { 'content-range': a.range, 'content-length': a.body.length, etag: '"mid"' });
      res.end(a.body);
    };

    test('206 with another range than the one asked for: ERR_SOURCE_PROTOCOL', async () => {
      await clean(async () => {
        const srv = await tiny(lying((from, to) => ({ range: `bytes ${from + 1}-${to + 1}/${MID_SIZE}`, body: midBytes.subarray(from + 1, to + 2) })));
        try {
          await rejects(load(`${srv.origin}/mid.bin`), 'ERR_SOURCE_PROTOCOL');
        } finally {
          await srv.close();
        }
      });
    });

    test('206 saying another total size than the probe: ERR_FILE_CHANGED', async () => {
      await clean(async () => {
        const srv = await tiny(lying((from, to) => ({ range: `bytes ${from}-${to}/${MID_SIZE + 1}`, body: midBytes.subarray(from, to + 1) })));
        try {
          await rejects(load(`${srv.origin}/mid.bin`), 'ERR_FILE_CHANGED');
        } finally {
          await srv.close();
        }
      });
    });
  });

  describe('errors', () => {
    test('404: ERR_SOURCE_NOT_FOUND', async () => {
      const e = await clean(() => rejects(load(url('missing.bin')), 'ERR_SOURCE_NOT_FOUND'));
      assert.equal(e.status, 404);
    });

    test('401 and 403: ERR_SOURCE_AUTH, saying whether a token was sent', async () => {
      for (const status of [401, 403]) {
        await clean(async () => {
          const proxy = await startFaultProxy({ target: ng.urls.http, plan: () => ({ status }) });
          try {
            const e = await rejects(load(`${proxy.url}/big.bin`), 'ERR_SOURCE_AUTH');
            assert.equal(e.status, status);
            assert.match(e.message, /no token was sent/);
            const t = await rejects(load(`${proxy.url}/big.bin`, { source: { headers: { authorization: 'Bearer x' } } }), 'ERR_SOURCE_AUTH');
            assert.match(t.message, /a token was sent and refused/);
            assert.equal(proxy.stats.requests, 2, 'no retries of an auth failure');
          } finally {
            await proxy.close();
          }
        });
      }
    });

    test('a scheme dmaload does not read: ERR_SOURCE_SCHEME (load, loadRanges, inspect, copy, verifyFile, loadModel)', async () => {
      await clean(async () => {
        await rejects(load('ftp://x/y'), 'ERR_SOURCE_SCHEME');
        await rejects(loadRanges('ftp://x/y', [{ offset: 0, length: 1 }]), 'ERR_SOURCE_SCHEME');
        await rejects(inspect('ftp://x/y'), 'ERR_SOURCE_SCHEME');
        await rejects(loadModel('ftp://x/y'), 'ERR_SOURCE_SCHEME');
        await rejects(copy('ftp://x/y', join(dir, 'never')), 'ERR_SOURCE_SCHEME');
        await rejects(verifyFile('ftp://x/y'), 'ERR_SOURCE_SCHEME');
      });
    });

    test('connection refused: ERR_SOURCE_NETWORK after the attempts asked for', async () => {
      const port = await deadPort();
      const e = await clean(() => rejects(load(`http://127.0.0.1:${port}/x`, { source: { attempts: 2 } }), 'ERR_SOURCE_NETWORK'));
      assert.equal(e.attempts, 2);
      assert.match(e.message, /ECONNREFUSED/);
    });

    test('errors of the network layer name the URL without user info and query (404, refused, scheme, redirect, 503)', async () => {
      const secretUrl = (base: string, path: string) => {
        const u = new URL(path, base);
        u.username = 'user';
        u.password = 'secret';
        u.searchParams.set('X-Amz-Signature', 'secret');
        return u.href;
      };
      const port = await deadPort();
      const errors: Array<Error & Record<string, unknown>> = [];
      await clean(async () => {
        errors.push(await rejects(load(secretUrl(ng.urls.http, '/missing.bin')), 'ERR_SOURCE_NOT_FOUND'));
        errors.push(await rejects(load(secretUrl(`http://127.0.0.1:${port}`, '/x'), { source: { attempts: 1 } }), 'ERR_SOURCE_NETWORK'));
        errors.push(await rejects(load('ftp://user:secret@x/y?X-Amz-Signature=secret'), 'ERR_SOURCE_SCHEME'));
        errors.push(await rejects(load(secretUrl(ng.urls.https, '/big.bin')), 'ERR_SOURCE_NETWORK'));
        const srv = await tiny((_req, res, n) => {
          res.writeHead(n === 1 ? 302 : 503, { location: `/x?X-Amz-Signature=secret&n=${n}`, 'content-length': 0 });
          res.end();
        });
        try {
          errors.push(await rejects(load(secretUrl(srv.origin, '/start'), { source: { attempts: 1 } }), 'ERR_SOURCE_HTTP'));
        } finally {
          await srv.close();
        }
      });
      for (const e of errors) {
        assert.ok(!e.message.includes('secret'), `${String(e.code)}: ${e.message}`);
        assert.ok(!String(e.path ?? '').includes('secret'), `${String(e.code)} path: ${String(e.path)}`);
        assert.ok(!e.message.includes('user:'), e.message);
      }
      assert.match(errors[0]!.message, /\?…/, 'the query is shown as ?…');
    });

    test('errors above the network layer name the URL redacted too (checksum mismatch, unknown tensor, not a model)', async () => {
      const q = '?X-Amz-Signature=secret';
      const errors: Array<Error & Record<string, unknown>> = [];
      await clean(async () => {
        errors.push(await rejects(load(url(`big.bin${q}`), { verify: { sha256: '0'.repeat(64) } }), 'ERR_CHECKSUM_MISMATCH'));
        errors.push(await rejects(loadModel(url(`model.safetensors${q}`), { tensors: ['nope'] }), 'ERR_MODEL_TENSOR_NOT_FOUND'));
        errors.push(await rejects(inspect(url(`mid.bin${q}`)), 'ERR_MODEL_FORMAT'));
      });
      const leaking = errors.filter((e) => e.message.includes('secret') || String(e.path ?? '').includes('secret'));
      assert.deepEqual(
        leaking.map((e) => `${String(e.code)}: ${e.message}`),
        [],
        'messages that show the query string',
      );
    });
  });

  test('abort mid-load (/slow/ at 256 KiB/s a request): AbortError soon after, nothing left behind', async () => {
    await clean(async () => {
      const ac = new AbortController();
      let progressed = 0;
      let abortedAt = 0;
      const p = load(`${ng.urls.http}/slow/big.bin`, {
        signal: ac.signal,
        onProgress: ({ bytes }) => {
          progressed = bytes;
          if (bytes > 0 && abortedAt === 0) {
            abortedAt = performance.now();
            setTimeout(() => ac.abort(), 200);
          }
        },
      });
      let caught: unknown;
      await assert.rejects(p, (e: unknown) => ((caught = e), true));
      const e = caught as Error;
      assert.equal(e.name, 'AbortError', `${e.name}: ${e.message}`);
      assert.ok(abortedAt > 0, 'no progress before the abort');
      assert.ok(progressed < BIG_SIZE, 'the load had finished');
      const ms = performance.now() - abortedAt - 200;
      assert.ok(ms < 1000, `rejected ${ms.toFixed(0)} ms after the abort`);
    });
  });

  test('copy(url, dst), dmaload cp URL DST, and verifyFile(url)', async () => {
    const dst = join(dir, 'copy.bin');
    await clean(async () => {
      const r = await copy(url('big.bin'), dst, { verify: true });
      assert.equal(r.readIo, 'network');
      assert.equal(r.verified?.sha256, big.sha256);
      assert.equal(fileSha256(dst), big.sha256);
      const v = await verifyFile(url('big.bin'));
      assert.equal(v.sha256, big.sha256);
      assert.equal(v.size, BIG_SIZE);
      assert.equal(v.io, 'network');
      assert.equal(v.pageCacheBytes, 0);
      assert.equal(v.ok, undefined, 'nothing to compare with');
      const ok = await verifyFile(url('big.bin'), { sha256: big.sha256 });
      assert.equal(ok.ok, true);
    });
    const dst2 = join(dir, 'cli-copy.bin');
    const c = await cli(['cp', url('big.bin'), dst2, '--json']);
    assert.equal(c.code, 0, c.stderr);
    const out = JSON.parse(c.stdout) as { size: number; readIo: string };
    assert.equal(out.size, BIG_SIZE);
    assert.equal(out.readIo, 'network');
    assert.equal(fileSha256(dst2), big.sha256);
  });

  test('keep-alive limited to 3 requests a connection: a 64 MiB load is byte-exact as nginx closes them under it', async () => {
    const file = makeFile(dir, 'k64.bin', 64 * MiB, 64);
    const ka = await startNginx({ root: dir, keepaliveRequests: 3 });
    try {
      const stats = await clean(async () => {
        const b = await load(`${ka.urls.http}/k64.bin`, { verify: true });
        try {
          assertNetworkLoad(b, file.sha256, 64 * MiB);
          assert.equal(b.stats.verified?.sha256, file.sha256);
          return b.stats;
        } finally {
          b.close();
        }
      });
      const log = await logOf(ka, '/k64.bin', stats.network!.requests);
      assert.equal(log.length, stats.network!.requests);
      assert.ok(Math.max(...log.map((e) => e.connectionRequests)) === 3, 'some connection served 3 requests and was closed');
      assert.ok(new Set(log.map((e) => e.connection)).size >= Math.ceil(log.length / 3), 'connections were closed after 3 requests');
      assert.equal(
        log.reduce((n, e) => n + e.bytesSent, 0),
        64 * MiB + 1,
        'every byte sent once (no retries needed)',
      );
    } finally {
      await ka.stop();
    }
  });
});
