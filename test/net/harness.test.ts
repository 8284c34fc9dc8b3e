/**
 * The network test harness (./nginx.ts, ./faultproxy.ts) checked with clients that are not ours: curl fetches ranges
 * over HTTP and HTTPS and sees each injected fault as its own exit code, git computes the blob ids the hub site sends,
 * huggingface_hub downloads from the hub site, and nginx's access log is compared with what the clients asked for.
 * Skipped, with the reason, where nginx, openssl or curl is missing; the huggingface_hub test skips without a Python that has it
 * (DMALOAD_PYTHON, else python3) and fails then where DMALOAD_PYTHON_REQUIRED is set.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { Agent, request, type IncomingHttpHeaders } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { makeFile, seededBytes, sha256, tempDir } from '../helpers.js';
import { startFaultProxy, type FaultProxy } from './faultproxy.js';
import { huggingfaceHubPython, hubEnv, nginxMissing, startNginx, toolEnv, type Nginx } from './nginx.js';

const CURL = '/usr/bin/curl';
const skip = nginxMissing ?? (existsSync(CURL) ? undefined : `${CURL} is missing: apt-get install curl`);
const MiB = 1024 * 1024;
const { dir, cleanup } = tempDir('dmaload-net-');
after(cleanup);

// An odd size, so that no range lines up with a power of two by luck.
const MODEL_SIZE = 4 * MiB + 4321;
const model = makeFile(dir, 'model.safetensors', MODEL_SIZE, 7);
const modelBytes = readFileSync(model.path);
const configPath = join(dir, 'config.json');
writeFileSync(configPath, JSON.stringify({ architectures: ['Test'], hidden_size: 64, note: Buffer.from(seededBytes(600, 3)).toString('hex') }) + '\n');
const indexPath = join(dir, 'model.safetensors.index.json');
writeFileSync(indexPath, JSON.stringify({ metadata: { total_size: MODEL_SIZE }, weight_map: { w: 'model.safetensors' } }) + '\n');
const COMMIT = sha256(Buffer.from('dmaload test commit')).slice(0, 40);
const REPO = 'dmaload-test/tiny-model';

interface CurlResult {
  code: number | null;
  out: Buffer;
  err: string;
}

/** curl with no proxy (loopback must never go through one) and the transfer written to stdout. */
function curl(args: string[]): Promise<CurlResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(CURL, ['-sS', '--noproxy', '*', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: toolEnv() });
    const out: Buffer[] = [];
    let err = '';
    p.stdout.on('data', (d: Buffer) => out.push(d));
    p.stderr.on('data', (d: Buffer) => (err += d));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, out: Buffer.concat(out), err }));
  });
}

/** The status and headers (lower-cased names) that `curl -i` or `curl -I` printed before the body, and the body. */
function curlHeaders(out: Buffer): { status: number; headers: Map<string, string>; body: Buffer } {
  const end = out.indexOf('\r\n\r\n');
  const lines = out.subarray(0, end).toString('latin1').split('\r\n');
  const headers = new Map<string, string>();
  for (const l of lines.slice(1)) {
    const i = l.indexOf(':');
    headers.set(l.slice(0, i).toLowerCase(), l.slice(i + 1).trim());
  }
  return { status: Number(lines[0]!.split(' ')[1]), headers, body: out.subarray(end + 4) };
}

interface NodeResult {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** ms from the request to the headers */
  ttfb: number;
  /** the longest pause between body chunks, ms */
  maxGap: number;
  error: NodeJS.ErrnoException | undefined;
}

/** A GET with node:http that resolves with whatever came, and the error that ended it early if one did. */
function get(url: string, headers: Record<string, string> = {}, agent?: Agent): Promise<NodeResult> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let error: NodeJS.ErrnoException | undefined;
    // Once a response came, its 'close' says it is over (a reset reaches the request as 'error' first).
    let responded = false;
    const req = request(url, { headers, agent }, (res) => {
      responded = true;
      const ttfb = performance.now() - t0;
      const chunks: Buffer[] = [];
      let maxGap = 0;
      let last = performance.now();
      res.on('data', (c: Buffer) => {
        const now = performance.now();
        maxGap = Math.max(maxGap, now - last);
        last = now;
        chunks.push(c);
      });
      res.on('error', (e) => (error ??= e));
      res.on('close', () =>
        resolve({
          status: res.statusCode!,
          headers: res.headers,
          body: Buffer.concat(chunks),
          ttfb,
          maxGap,
          error: error ?? (res.complete ? undefined : new Error('body ended early')),
        }),
      );
    });
    req.on('error', (e) => {
      error ??= e;
      if (!responded) resolve({ status: 0, headers: {}, body: Buffer.alloc(0), ttfb: 0, maxGap: 0, error: e });
    });
    req.end();
  });
}

const slice = (from: number, to: number) => sha256(modelBytes.subarray(from, to + 1));

describe('nginx', { skip }, () => {
  let ng: Nginx;
  before(async () => {
    ng = await startNginx({
      root: dir,
      keepaliveRequests: 2,
      limitRate: '4m',
      http2: true,
      hub: {
        repo: REPO,
        commit: COMMIT,
        revs: { main: COMMIT },
        files: [
          { name: 'model.safetensors', path: model.path, lfs: true },
          { name: 'config.json', path: configPath, lfs: false },
          { name: 'model.safetensors.index.json', path: indexPath, lfs: false },
        ],
      },
    });
  });
  after(() => ng?.stop());

  test('a ranged GET over HTTP and over HTTPS (trusting the test CA) gets those bytes, and the access log says so', async () => {
    await ng.clearAccessLog();
    const [a, b] = [1_000_003, 3 * MiB + 17];
    const http = await curl(['-r', `${a}-${b}`, '-w', '%{stderr}%{http_code}', `${ng.urls.http}/model.safetensors`]);
    assert.equal(http.code, 0, http.err);
    assert.equal(http.err, '206');
    assert.equal(sha256(http.out), slice(a, b));
    const https = await curl(['--cacert', ng.caPath, '-r', `${a}-${b}`, '-w', '%{stderr}%{http_code} %{http_version}', `${ng.urls.https}/model.safetensors`]);
    assert.equal(https.code, 0, https.err);
    assert.equal(https.err, '206 2'); // curl offers h2 by ALPN and the listener has it
    assert.equal(sha256(https.out), slice(a, b));
    const h11 = await curl(['--http1.1', '--cacert', ng.caPath, '-r', `0-${b}`, `${ng.urls.https.replace('127.0.0.1', 'localhost')}/model.safetensors`]);
    assert.equal(h11.code, 0, h11.err);
    assert.equal(sha256(h11.out), slice(0, b));
    // Without the CA the certificate is refused: the clients' verification is really exercised.
    assert.equal((await curl(['-o', '/dev/null', `${ng.urls.https}/config.json`])).code, 60);
    const log = await ng.accessLog({ atLeast: 3 });
    assert.deepEqual(
      log.filter((e) => e.uri === '/model.safetensors').map((e) => [e.status, e.bytesSent, e.range]),
      [
        [206, b - a + 1, `bytes=${a}-${b}`],
        [206, b - a + 1, `bytes=${a}-${b}`],
        [206, b + 1, `bytes=0-${b}`],
      ],
    );
  });

  test('an ETag, and If-Range/If-Match against it, as a loader resumes', async () => {
    const head = await curl(['-I', `${ng.urls.http}/model.safetensors`]);
    const { headers } = curlHeaders(head.out);
    const etag = headers.get('etag')!;
    assert.match(etag, /^"[0-9a-f]+-[0-9a-f]+"$/);
    assert.equal(headers.get('content-length'), String(MODEL_SIZE));
    assert.equal(headers.get('accept-ranges'), 'bytes');
    const ok = await curl(['-H', `If-Range: ${etag}`, '-r', '10-19', '-w', '%{stderr}%{http_code}', `${ng.urls.http}/model.safetensors`]);
    assert.equal(ok.err, '206');
    assert.equal(sha256(ok.out), slice(10, 19));
    const stale = await curl([
      '-H',
      'If-Range: "0-0"',
      '-r',
      '10-19',
      '-o',
      '/dev/null',
      '-w',
      '%{stderr}%{http_code} %{size_download}',
      `${ng.urls.http}/model.safetensors`,
    ]);
    assert.equal(stale.err, `200 ${MODEL_SIZE}`);
    const refused = await curl(['-H', 'If-Match: "0-0"', '-r', '10-19', '-o', '/dev/null', '-w', '%{stderr}%{http_code}', `${ng.urls.http}/model.safetensors`]);
    assert.equal(refused.err, '412');
  });

  test('keepaliveRequests: the server closes a connection after that many requests', async () => {
    await ng.clearAccessLog();
    const url = `${ng.urls.http}/config.json`;
    const r = await curl(['-o', '/dev/null', '-o', '/dev/null', '-o', '/dev/null', '-w', '%{stderr}%{num_connects} ', url, url, url]);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.err, '1 0 1 '); // curl reused the first connection once, then needed a new one
    const log = await ng.accessLog({ atLeast: 3 });
    assert.deepEqual(
      log.map((e) => e.connectionRequests),
      [1, 2, 1],
    );
    assert.equal(new Set(log.map((e) => e.connection)).size, 2);
  });

  test('limitRate slows /slow/ and leaves / alone', async () => {
    const time = async (path: string) => {
      const r = await curl(['-o', '/dev/null', '-w', '%{stderr}%{time_total} %{size_download}', `${ng.urls.http}${path}`]);
      assert.equal(r.code, 0, r.err);
      const [t, n] = r.err.split(' ').map(Number);
      assert.equal(n, MODEL_SIZE);
      return t!;
    };
    const fast = await time('/model.safetensors');
    const slow = await time('/slow/model.safetensors');
    // 4 MiB at 4 MiB/s: a second, less what the socket buffers take at once (up to a few MiB on loopback).
    assert.ok(slow > 0.25, `/slow/ took ${slow} s`);
    assert.ok(fast < slow / 2, `/ took ${fast} s, /slow/ ${slow} s`);
  });

  test('the hub site: 302 to the blob host with the metadata on the redirect, 200 for small files, 404 codes, the API', async () => {
    for (const rev of ['main', COMMIT]) {
      const r = await curl(['-I', `${ng.urls.hub}/${REPO}/resolve/${rev}/model.safetensors`]);
      const { status, headers } = curlHeaders(r.out);
      assert.equal(status, 302);
      assert.equal(headers.get('location'), `${ng.urls.blobs}/blobs/${model.sha256}`);
      assert.equal(headers.get('x-repo-commit'), COMMIT);
      assert.equal(headers.get('x-linked-etag'), `"${model.sha256}"`);
      assert.equal(headers.get('x-linked-size'), String(MODEL_SIZE));
      assert.equal(headers.get('etag'), `"${model.sha256}"`);
    }
    // Following the redirect (another host, as the hub's CDN is) gives the file; ranges work there too.
    const all = await curl(['-L', `${ng.urls.hub}/${REPO}/resolve/main/model.safetensors`]);
    assert.equal(all.code, 0, all.err);
    assert.equal(sha256(all.out), model.sha256);
    const part = await curl(['-L', '-r', '5-4000000', `${ng.urls.hub}/${REPO}/resolve/main/model.safetensors`]);
    assert.equal(sha256(part.out), slice(5, 4_000_000));

    // git itself says what the blob ids are.
    const git = existsSync('/usr/bin/git');
    for (const path of [configPath, indexPath]) {
      const name = path.slice(dir.length + 1);
      const r = await curl(['-i', `${ng.urls.hub}/${REPO}/resolve/main/${name}`]);
      const { status, headers, body } = curlHeaders(r.out);
      assert.equal(status, 200);
      assert.deepEqual(body, readFileSync(path));
      assert.equal(headers.get('x-repo-commit'), COMMIT);
      const blob = ng.hubFiles.find((f) => f.name === name)!.gitSha1;
      if (git) assert.equal(blob, spawnSync('/usr/bin/git', ['hash-object', path], { encoding: 'utf8', env: toolEnv() }).stdout.trim());
      assert.equal(headers.get('etag'), `"${blob}"`);
    }

    for (const [path, code] of [
      [`/${REPO}/resolve/nope/config.json`, 'RevisionNotFound'],
      [`/${REPO}/resolve/main/missing.json`, 'EntryNotFound'],
      [`/${REPO}/resolve/${COMMIT}/sub/missing.json`, 'EntryNotFound'],
      [`/api/models/${REPO}/revision/nope`, 'RevisionNotFound'],
      ['/someone/else/resolve/main/config.json', 'RepoNotFound'],
    ] as const) {
      const r = await curl(['-i', `${ng.urls.hub}${path}`]);
      const { status, headers } = curlHeaders(r.out);
      assert.equal(status, 404, path);
      assert.equal(headers.get('x-error-code'), code, path);
    }

    const info = JSON.parse((await curl([`${ng.urls.hub}/api/models/${REPO}/revision/main?securityStatus=true`])).out.toString());
    assert.equal(info.id, REPO);
    assert.equal(info.sha, COMMIT);
    assert.deepEqual(info.siblings.map((s: { rfilename: string }) => s.rfilename).sort(), ['config.json', 'model.safetensors', 'model.safetensors.index.json']);
    const tree = JSON.parse((await curl([`${ng.urls.hub}/api/models/${REPO}/tree/${COMMIT}?recursive=true`])).out.toString());
    const lfs = tree.find((e: { path: string }) => e.path === 'model.safetensors');
    assert.deepEqual(lfs.lfs.oid, model.sha256);
    assert.equal(lfs.size, MODEL_SIZE);
  });

  test('huggingface_hub downloads byte-exact from the hub site (hf_hub_download, snapshot_download) and names its errors', async (t) => {
    const py = huggingfaceHubPython();
    if (py.missing !== undefined) {
      if (process.env.DMALOAD_PYTHON_REQUIRED) assert.fail(`DMALOAD_PYTHON_REQUIRED is set but: ${py.missing}`);
      return t.skip(py.missing);
    }
    const script = `
import hashlib, json, os, sys
from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError
cache = sys.argv[1]
digest = lambda p: hashlib.sha256(open(p, 'rb').read()).hexdigest()
out = {'files': {}, 'snapshot': {}}
for name in ['model.safetensors', 'config.json']:
    out['files'][name] = digest(hf_hub_download(sys.argv[2], name, cache_dir=os.path.join(cache, 'one')))
snap = snapshot_download(sys.argv[2], cache_dir=os.path.join(cache, 'all'))
out['snapshotDir'] = os.path.basename(snap)
for name in sorted(os.listdir(snap)):
    out['snapshot'][name] = digest(os.path.join(snap, name))
for kwargs in [dict(filename='config.json', revision='nope'), dict(filename='missing.json')]:
    try:
        hf_hub_download(sys.argv[2], cache_dir=os.path.join(cache, 'err'), **kwargs)
        out.setdefault('errors', []).append(None)
    except (RevisionNotFoundError, EntryNotFoundError) as e:
        out.setdefault('errors', []).append(type(e).__name__)
print(json.dumps(out))
`;
    const home = join(dir, 'hf-home');
    const r = await new Promise<{ code: number | null; out: string; err: string }>((resolve, reject) => {
      const p = spawn(py.python, ['-c', script, join(dir, 'hf-cache'), REPO], { env: hubEnv(ng.urls.hub, home), stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      p.stdout.on('data', (d: Buffer) => (out += d));
      p.stderr.on('data', (d: Buffer) => (err += d));
      p.on('error', reject);
      p.on('close', (code) => resolve({ code, out, err }));
    });
    assert.equal(r.code, 0, r.err);
    const got = JSON.parse(r.out);
    const want = { 'model.safetensors': model.sha256, 'config.json': sha256(readFileSync(configPath)) };
    assert.deepEqual(got.files, want);
    assert.equal(got.snapshotDir, COMMIT);
    assert.deepEqual(got.snapshot, { ...want, 'model.safetensors.index.json': sha256(readFileSync(indexPath)) });
    assert.deepEqual(got.errors, ['RevisionNotFoundError', 'RemoteEntryNotFoundError']);
  });
});

describe('fault proxy', { skip }, () => {
  let ng: Nginx;
  let proxy: FaultProxy;
  let url: string;
  before(async () => {
    ng = await startNginx({ root: dir });
    proxy = await startFaultProxy({ target: ng.urls.http });
    url = `${proxy.url}/model.safetensors`;
  });
  after(async () => {
    await proxy?.close();
    await ng?.stop();
  });

  test('without faults: ranges and If-Match pass through, and one upstream connection serves request after request', async () => {
    await ng.clearAccessLog();
    proxy.setPlan(undefined);
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const a = await get(url, { range: 'bytes=100-2000000' }, agent);
      assert.equal(a.status, 206);
      assert.equal(sha256(a.body), slice(100, 2_000_000));
      const b = await get(url, { range: 'bytes=0-99', 'if-match': String(a.headers.etag) }, agent);
      assert.equal(b.status, 206);
      assert.equal(sha256(b.body), slice(0, 99));
      const c = await get(url, { range: 'bytes=0-99', 'if-match': '"other"' }, agent);
      assert.equal(c.status, 412);
    } finally {
      agent.destroy();
    }
    const log = await ng.accessLog({ atLeast: 3 });
    assert.deepEqual(
      log.map((e) => [e.status, e.range]),
      [
        [206, 'bytes=100-2000000'],
        [206, 'bytes=0-99'],
        [412, 'bytes=0-99'],
      ],
    );
    assert.equal(new Set(log.map((e) => e.connection)).size, 1);
  });

  test('status faults: 503 SlowDown with Retry-After, 429, 500, 502, 504, then the real answer', async () => {
    const before = proxy.stats.faults;
    for (const status of [503, 429, 500, 502, 504]) {
      proxy.setPlan(() => ({ status, retryAfter: status === 503 ? 2 : undefined }));
      const r = await get(url);
      assert.equal(r.status, status);
      if (status === 503) {
        assert.equal(r.headers['retry-after'], '2');
        assert.match(r.body.toString(), /<Code>SlowDown<\/Code>/);
      }
    }
    proxy.setPlan((_req, n) => (n % 2 === 1 ? { status: 503, body: 'busy' } : undefined));
    const n0 = proxy.stats.requests;
    // The plan sees the proxy's request count: make the next one odd, so it is the one that fails.
    if (n0 % 2 === 1) await get(`${proxy.url}/config.json`);
    assert.equal((await get(url)).status, 503);
    const ok = await get(url);
    assert.equal(ok.status, 200);
    assert.equal(sha256(ok.body), model.sha256);
    assert.equal(proxy.stats.faults - before, 6);
    assert.equal(proxy.stats.byKind['status 429'], 1);
  });

  test('reset: curl sees the connection reset (exit 56) after at most that many bytes', async () => {
    proxy.setPlan(() => ({ reset: 100_000 }));
    const r = await curl(['-r', '0-2999999', url]);
    assert.equal(r.code, 56, r.err);
    assert.ok(r.out.length <= 100_000, `${r.out.length} bytes`);
    assert.equal(sha256(r.out), slice(0, r.out.length - 1));
    assert.equal(proxy.stats.log.at(-1)!.bytes, 100_000);
    // node:http sees it as an error mid-body too.
    const n = await get(url);
    assert.equal(n.status, 200);
    assert.equal(n.error?.code, 'ECONNRESET');
    assert.ok(n.body.length <= 100_000);
  });

  test('short: the full Content-Length, fewer bytes, then EOF: curl exits 18 with exactly those bytes', async () => {
    proxy.setPlan(() => ({ short: 123_457 }));
    const r = await curl(['-i', url]);
    assert.equal(r.code, 18, r.err);
    const { headers, body } = curlHeaders(r.out);
    assert.equal(headers.get('content-length'), String(MODEL_SIZE));
    assert.equal(body.length, 123_457);
    assert.equal(sha256(body), slice(0, 123_456));
    proxy.setPlan(() => ({ short: 0 }));
    const zero = await curl(['-r', '10-20', '-w', '%{stderr}%{http_code}', url]);
    assert.equal(zero.code, 18);
    assert.equal(zero.out.length, 0);
    assert.match(zero.err, /206$/);
  });

  test('stall: headers and the first bytes, a pause, then the rest intact', async () => {
    proxy.setPlan(() => ({ stall: 400, after: 50_000 }));
    const r = await get(url);
    assert.equal(r.error, undefined);
    assert.equal(sha256(r.body), model.sha256);
    assert.ok(r.maxGap >= 350, `longest gap ${r.maxGap} ms`);
    // A client with a low-speed limit gives up during the stall (curl: exit 28).
    proxy.setPlan(() => ({ stall: 3000, after: 0 }));
    const t0 = performance.now();
    const c = await curl(['-o', '/dev/null', '--speed-limit', '1000', '--speed-time', '1', url]);
    assert.equal(c.code, 28, c.err);
    assert.ok(performance.now() - t0 < 2900);
  });

  test('ignoreRange: 200 and the whole body for a ranged request', async () => {
    proxy.setPlan(() => ({ ignoreRange: true }));
    const r = await curl(['-r', '0-99', '-w', '%{stderr}%{http_code}', url]);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.err, '200');
    assert.equal(sha256(r.out), model.sha256);
  });

  test('replace: 412 for If-Match, else another ETag and other bytes of the same length', async () => {
    proxy.setPlan(undefined);
    const real = await get(url, { range: 'bytes=0-65535' });
    proxy.setPlan(() => ({ replace: true }));
    const refused = await get(url, { range: 'bytes=0-65535', 'if-match': String(real.headers.etag) });
    assert.equal(refused.status, 412);
    const changed = await get(url, { range: 'bytes=0-65535' });
    assert.equal(changed.status, 206);
    assert.notEqual(changed.headers.etag, real.headers.etag);
    assert.equal(changed.body.length, 65536);
    assert.notDeepEqual(changed.body, real.body);
  });

  test("a fault proxy as the hub's CDN (cdnBase): the redirects point at it, and it forwards to the blob host", async () => {
    // The proxy must exist before nginx (whose redirects name it) and learns its target after: a placeholder first.
    const cdn = await startFaultProxy({ target: 'http://127.0.0.2:9', host: '127.0.0.2' });
    const hub = await startNginx({
      hub: { repo: REPO, commit: COMMIT, files: [{ name: 'model.safetensors', path: model.path, lfs: true }] },
      cdnBase: cdn.url,
    });
    try {
      cdn.setTarget(hub.urls.blobs);
      cdn.setPlan((_req, n) => (n === 1 ? { status: 503 } : undefined));
      const resolve = `${hub.urls.hub}/${REPO}/resolve/${COMMIT}/model.safetensors`;
      const head = curlHeaders((await curl(['-I', resolve])).out);
      assert.equal(head.headers.get('location'), `${cdn.url}/blobs/${model.sha256}`);
      assert.equal((await curl(['-L', '-f', '-o', '/dev/null', resolve])).code, 22); // the 503
      const r = await curl(['-L', '-r', '1-1000000', resolve]);
      assert.equal(r.code, 0, r.err);
      assert.equal(sha256(r.out), slice(1, 1_000_000));
      assert.deepEqual(
        cdn.stats.log.map((e) => [e.status, e.range]),
        [
          [503, undefined],
          [206, 'bytes=1-1000000'],
        ],
      );
    } finally {
      await hub.stop();
      await cdn.close();
    }
  });

  test('ttfbMs delays every answer; close() ends connections in flight', async () => {
    proxy.setPlan(undefined);
    proxy.setTtfb(300);
    try {
      const r = await get(`${proxy.url}/config.json`);
      assert.equal(r.status, 200);
      assert.ok(r.ttfb >= 290, `first byte after ${r.ttfb} ms`);
    } finally {
      proxy.setTtfb(0);
    }
    const other = await startFaultProxy({ target: ng.urls.http, plan: () => ({ stall: 10_000, after: 1000 }) });
    const pending = get(`${other.url}/model.safetensors`);
    while (other.stats.log.at(-1)?.status === undefined) await new Promise((r) => setTimeout(r, 10));
    const t0 = performance.now();
    await other.close();
    const r = await pending;
    assert.ok(r.error, 'the request was not cut');
    assert.ok(performance.now() - t0 < 2000);
  });
});
