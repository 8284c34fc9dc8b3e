/**
 * `dmaload serve` fetching references for its clients (`allowSources`): a client names `http://…` or `hf://…`
 * instead of sending an fd; the server fetches it once for everyone who asks, only if its operator allowed it.
 * Oracles independent of dmaload: SHA-256 of the files nginx serves, nginx's access log (what reached the web
 * server, and how many bytes), error codes; Python's view of the same buffers through clients/python.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { connect, serve } from '../../src/index.js';
import type { ShareServer } from '../../src/index.js';
import { writeSafetensors, type Spec } from '../formats/model-files.js';
import { bufferSha256, leakCheck, seededBytes, sha256, tempDir } from '../helpers.js';
import { LOOPBACK, failure } from '../sources/common.js';
import { nginxMissing, startNginx, type AccessEntry, type Nginx } from '../net/nginx.js';
import { pythonEnv, pythonMissing, runPython } from './python.js';
import { socketDir } from './util.js';

const MiB = 1024 * 1024;
const { dir, cleanup } = tempDir('dmaload-fetch-');
after(cleanup);
const sockets = socketDir();
after(sockets.cleanup);
let sockN = 0;
const sock = () => join(sockets.dir, `f${sockN++}.sock`);

// The web root: models/ (allowed), models-private/ and private/ (not).
const root = join(dir, 'www');
for (const d of ['models', 'models-private', 'private']) mkdirSync(join(root, d), { recursive: true });
const big = seededBytes(24 * MiB + 4097, 61);
writeFileSync(join(root, 'models', 'big.bin'), big);
writeFileSync(join(root, 'models-private', 'x.bin'), seededBytes(8192, 62));
writeFileSync(join(root, 'private', 'secret.bin'), seededBytes(8192, 63));
const specs: Spec[] = [
  { name: 'embed', dtype: 'F32', shape: [256, 64], data: seededBytes(256 * 64 * 4, 64) },
  { name: 'head', dtype: 'BF16', shape: [64, 128], data: seededBytes(64 * 128 * 2, 65) },
  { name: 'ids', dtype: 'I64', shape: [100], data: seededBytes(800, 66) },
];
const modelPath = join(dir, 'model.safetensors');
const modelBytes = writeSafetensors(modelPath, specs, { metadata: { format: 'pt' } });
const COMMIT = sha256(Buffer.from('dmaload fetch test')).slice(0, 40);

/** Requests nginx saw for `path` (a URI path). */
const hits = (log: AccessEntry[], path: string) => log.filter((e) => e.uri.split('?')[0] === path);
const sent = (log: AccessEntry[], path: string) => hits(log, path).reduce((n, e) => n + e.bytesSent, 0);

describe('serve fetches references for its clients', { skip: nginxMissing }, () => {
  let ng: Nginx;
  let models = '';
  const saved: Record<string, string | undefined> = {};

  before(async () => {
    ng = await startNginx({
      root,
      limitRate: '4m',
      hub: { repo: 'org/model', commit: COMMIT, revs: { main: COMMIT }, files: [{ name: 'model.safetensors', path: modelPath, lfs: true }] },
    });
    models = `${ng.urls.http}/models/`;
    // The server runs in this process: an empty hub cache and token, loopback never proxied.
    for (const [k, v] of Object.entries({
      HF_HUB_CACHE: mkdtempSync(join(dir, 'hub-')),
      HF_HOME: mkdtempSync(join(dir, 'home-')),
      HF_TOKEN: undefined,
      HF_HUB_OFFLINE: undefined,
      NO_PROXY: LOOPBACK,
      no_proxy: LOOPBACK,
    })) {
      saved[k] = process.env[k];
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });
  after(async () => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    await ng?.stop();
  });

  // At most 4 connections of 4 MB/s each (/slow/): a download of `big` takes over a second, long enough to leave it.
  const start = (o: { allow?: string[] } = {}): Promise<ShareServer> =>
    serve({
      socket: sock(),
      budget: 256 * MiB,
      allowSources: o.allow ?? [models, `${ng.urls.http}/slow/models/`, 'hf://org/'],
      source: { endpoint: ng.urls.hub, connections: 4 },
    });

  test('three clients (two Node, one Python) ask for one URL at once: exact bytes for each, fetched from the web server once', async (t) => {
    const leaks = leakCheck();
    await ng.clearAccessLog();
    const server = await start();
    const url = `${ng.urls.http}/slow/models/big.bin`;
    try {
      const a = await connect(server.socket);
      const b = await connect(server.socket);
      const script = `
import hashlib, json, sys
from dmaload_client import Client
with Client(sys.argv[1]) as c:
    with c.load(sys.argv[2]) as buf:
        print(json.dumps({"sha256": hashlib.sha256(buf.view()).hexdigest(), "size": len(buf.view()), "bytesRead": buf.stats.get("bytesRead", 0)}))
`;
      const py = pythonMissing ? undefined : runPython(['-c', script, server.socket, url], pythonEnv());
      const [x, y] = await Promise.all([a.load(url), b.load(url)]);
      assert.equal(bufferSha256(x), sha256(big));
      assert.equal(bufferSha256(y), sha256(big));
      assert.equal(x.size, big.length);
      // Whichever asked first fetched it (the Python client may be first), the others joined.
      let fetched = x.stats.bytesRead + y.stats.bytesRead;
      if (py) {
        const r = await py;
        assert.equal(r.code, 0, r.err);
        const out = JSON.parse(r.out) as { sha256: string; size: number; bytesRead: number };
        assert.deepEqual({ sha256: out.sha256, size: out.size }, { sha256: sha256(big), size: big.length });
        fetched += out.bytesRead;
      } else t.diagnostic(`Python client not run: ${pythonMissing}`);
      assert.equal(fetched, big.length, 'one client fetched it, the others joined');
      x.close();
      y.close();
      a.close();
      b.close();
      const st = server.status();
      assert.equal(st.loads, 1, 'one download');
      const log = await ng.accessLog({ atLeast: 2 });
      const bytes = sent(log, '/slow/models/big.bin');
      // One pass over the file, plus one byte for each request's probe of its version.
      assert.ok(bytes >= big.length && bytes <= big.length + 3, `nginx sent ${bytes} bytes for a file of ${big.length}`);
    } finally {
      await server.close();
    }
    assert.equal(await leaks(), undefined);
  });

  test('hf:// through the server: loadModel() in Node and load_safetensors() in Python get the file’s tensors', async (t) => {
    const server = await start();
    try {
      const c = await connect(server.socket);
      const model = await c.loadModel('hf://org/model/model.safetensors');
      for (const s of specs) assert.equal(sha256(model.tensors.get(s.name)!.bytes), sha256(s.data), s.name);
      const whole = await c.load('hf://org/model/model.safetensors');
      assert.equal(bufferSha256(whole), sha256(modelBytes));
      assert.equal(whole.stats.served?.cached, true, 'the second request is a hit');
      whole.close();
      model.close();
      c.close();
      if (pythonMissing) return t.diagnostic(`Python client not run: ${pythonMissing}`);
      const script = `
import hashlib, json, sys
from dmaload_client import Client
with Client(sys.argv[1]) as c:
    t = c.load_safetensors("hf://org/model/model.safetensors", framework="bytes")
    m = c.safetensors_metadata("hf://org/model/model.safetensors")
    print(json.dumps({"tensors": {k: hashlib.sha256(v).hexdigest() for k, v in t.items()}, "metadata": m}))
`;
      const r = await runPython(['-c', script, server.socket], pythonEnv());
      assert.equal(r.code, 0, r.err);
      const got = JSON.parse(r.out) as { tensors: Record<string, string>; metadata: Record<string, string> };
      assert.deepEqual(got.tensors, Object.fromEntries(specs.map((s) => [s.name, sha256(s.data)])));
      assert.deepEqual(got.metadata, { format: 'pt' }, 'the header’s __metadata__, read from the server’s copy');
      assert.equal(server.status().loads, 1, 'fetched once for Node and Python');
    } finally {
      await server.close();
    }
  });

  test('ranks of a referenced model: Python (the server plans from its own copy) and Node, rows split exactly', async (t) => {
    const server = await start();
    const ref = 'hf://org/model/model.safetensors';
    try {
      // The oracle: for split 'rows', ranks 0 and 1 of 2 hold rows [0, R/2) and [R/2, R) of each 2-D tensor, in
      // order; a 1-D tensor whole on both. So their bytes, concatenated, are the tensor's.
      const whole = (name: string) => specs.find((x) => x.name === name)!.data;
      const check = (got: Record<string, string>[], how: string) => {
        for (const s of specs) {
          if (s.shape.length === 2)
            assert.equal(
              sha256(Buffer.concat([Buffer.from(got[0]![s.name]!, 'hex'), Buffer.from(got[1]![s.name]!, 'hex')])),
              sha256(whole(s.name)),
              `${how}: ${s.name}`,
            );
          else for (const r of got) assert.equal(r[s.name], Buffer.from(whole(s.name)).toString('hex'), `${how}: ${s.name} replicated`);
        }
      };
      const c = await connect(server.socket);
      const node: Record<string, string>[] = [];
      for (const rank of [0, 1]) {
        const m = await c.loadModel(ref, { rank, worldSize: 2, split: 'rows' });
        node.push(Object.fromEntries([...m.tensors].map(([k, v]) => [k, Buffer.from(v.bytes).toString('hex')])));
        m.close();
      }
      c.close();
      check(node, 'Node');
      if (pythonMissing) return t.diagnostic(`Python client not run: ${pythonMissing}`);
      const script = `
import json, sys
from dmaload_client import Client
out = []
with Client(sys.argv[1]) as c:
    for rank in (0, 1):
        t = c.load_safetensors(sys.argv[2], framework="bytes", rank=rank, world_size=2, split="rows")
        out.append({k: bytes(v).hex() for k, v in t.items()})
print(json.dumps(out))
`;
      const r = await runPython(['-c', script, server.socket, ref], pythonEnv());
      assert.equal(r.code, 0, r.err);
      check(JSON.parse(r.out) as Record<string, string>[], 'Python');
      assert.equal(server.status().loads, 1, 'one download for every rank of both clients');
    } finally {
      await server.close();
    }
  });

  test('a reference outside --allow-source is ERR_SHARE_SOURCE_NOT_ALLOWED, and nothing reaches the web server', async () => {
    await ng.clearAccessLog();
    const host = new URL(ng.urls.http).host;
    const server = await start();
    const none = await serve({ socket: sock(), budget: 64 * MiB });
    try {
      const c = await connect(server.socket);
      for (const ref of [
        `${ng.urls.http}/private/secret.bin`,
        `${ng.urls.http}/models-private/x.bin`,
        `${ng.urls.http}/models/../private/secret.bin`,
        `${ng.urls.http}/models/%2e%2e/private/secret.bin`,
        `http://${host}@127.0.0.2:${new URL(ng.urls.http).port}/models/big.bin`,
        `${ng.urls.https}/models/big.bin`,
        'hf://other/model/model.safetensors',
        's3://bucket/models/big.bin',
      ]) {
        const e = await failure(c.load(ref));
        assert.equal(e.code, 'ERR_SHARE_SOURCE_NOT_ALLOWED', `${ref}: ${e.message}`);
        assert.match(e.message, /--allow-source/);
      }
      // A file name that leaves the repository is refused too (by the reference's own rules).
      const e = await failure(c.load('hf://org/model/../../etc/passwd'));
      assert.ok(e.code === 'ERR_SHARE_SOURCE_NOT_ALLOWED' || e.code === 'ERR_INVALID_ARG_VALUE', `${e.code}: ${e.message}`);
      c.close();
      const d = await connect(none.socket);
      const off = await failure(d.load(`${models}big.bin`));
      assert.equal(off.code, 'ERR_SHARE_SOURCE_NOT_ALLOWED');
      assert.match(off.message, /fetches no references/);
      d.close();
      await new Promise((r) => setTimeout(r, 300));
      assert.deepEqual(await ng.accessLog({ atLeast: 0, timeoutMs: 300 }), [], 'no request reached nginx');
    } finally {
      await server.close();
      await none.close();
    }
  });

  test('a redirect that leaves what is allowed is refused before the new address is asked', async () => {
    const redirector = createServer((req, res) => {
      res.writeHead(302, { location: `${ng.urls.http}${req.url === '/in' ? '/models/big.bin' : '/private/secret.bin'}` });
      res.end();
    });
    await new Promise<void>((r) => redirector.listen(0, '127.0.0.1', r));
    const port = (redirector.address() as AddressInfo).port;
    await ng.clearAccessLog();
    const server = await start({ allow: [models, `http://127.0.0.1:${port}/`] });
    try {
      const c = await connect(server.socket);
      const e = await failure(c.load(`http://127.0.0.1:${port}/out`));
      assert.equal(e.code, 'ERR_SHARE_SOURCE_NOT_ALLOWED', e.message);
      const ok = await c.load(`http://127.0.0.1:${port}/in`);
      assert.equal(bufferSha256(ok), sha256(big), 'a redirect into what is allowed is followed');
      ok.close();
      c.close();
      const log = await ng.accessLog({ atLeast: 1 });
      assert.deepEqual(hits(log, '/private/secret.bin'), [], 'the refused address was never asked');
    } finally {
      await server.close();
      redirector.close();
    }
  });

  test('a client that goes away does not cancel a download another waits for; the last one leaving aborts it', async () => {
    // A web server whose bodies wait for a gate: the download is in progress for as long as the test wants.
    let open = false;
    const waiting: Array<() => void> = [];
    let dataRequests = 0;
    let aborted = 0;
    let bodyBytes = 0;
    const web = createServer((req, res) => {
      const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
      const from = m ? Number(m[1]) : 0;
      const to = m ? Math.min(Number(m[2]), big.length - 1) : big.length - 1;
      const send = () => {
        res.writeHead(m ? 206 : 200, {
          etag: '"v1"',
          'content-length': to - from + 1,
          ...(m ? { 'content-range': `bytes ${from}-${to}/${big.length}` } : {}),
        });
        if (to > from) bodyBytes += to - from + 1; // not the probe's byte
        res.end(big.subarray(from, to + 1));
      };
      if (to - from < 1 || open) return send();
      dataRequests++;
      res.on('close', () => !res.writableFinished && aborted++);
      waiting.push(send);
    });
    await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
    const base = `http://127.0.0.1:${(web.address() as AddressInfo).port}`;
    const until = async (what: () => boolean, why: string) => {
      const deadline = Date.now() + 5000;
      while (!what()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${why}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    const server = await start({ allow: [`${base}/`] });
    try {
      // Two waiters; the first leaves: the second still gets every byte.
      const a = await connect(server.socket);
      const b = await connect(server.socket);
      const pa = a.load(`${base}/one`).catch((e: unknown) => e);
      const pb = b.load(`${base}/one`);
      await until(() => dataRequests > 0 && server.status().misses + server.status().hits >= 2, 'both requests and the download');
      a.close();
      assert.equal(((await pa) as { code?: string }).code, 'ERR_SHARE_CLOSED');
      await new Promise((r) => setTimeout(r, 100));
      open = true;
      for (const f of waiting.splice(0)) f();
      const y = await pb;
      assert.equal(bufferSha256(y), sha256(big));
      y.close();
      b.close();
      assert.equal(aborted, 0, 'nothing of that download was abandoned');
      // One waiter, which leaves: its download is aborted (its requests cut off) and nothing stays charged.
      open = false;
      dataRequests = 0;
      bodyBytes = 0;
      const c = await connect(server.socket);
      const pc = c.load(`${base}/two`).catch((e: unknown) => e);
      await until(() => dataRequests > 0, 'the second download');
      c.close();
      await pc;
      await until(() => aborted >= dataRequests, `the download's ${dataRequests} requests to be cut off (${aborted} so far)`);
      await until(() => server.status().used === server.status().cachedBytes, 'the reservation to be released');
      const st = server.status();
      assert.equal(st.entries, 1, 'only the first download is cached');
      assert.equal(st.loads, 1);
      assert.equal(bodyBytes, 0, 'no body byte of the abandoned download was sent');
    } finally {
      await server.close();
      for (const f of waiting.splice(0)) f();
      web.closeAllConnections();
      web.close();
    }
  });

  test('a changed file is fetched again; an unchanged one is a hit', async () => {
    const path = join(root, 'models', 'changing.bin');
    writeFileSync(path, seededBytes(MiB, 70));
    const server = await start();
    try {
      const c = await connect(server.socket);
      const first = await c.load(`${models}changing.bin`);
      assert.equal(bufferSha256(first), sha256(seededBytes(MiB, 70)));
      const again = await c.load(`${models}changing.bin`);
      assert.equal(again.stats.served?.cached, true);
      // nginx's ETag is mtime and size: a new mtime is a new version.
      await new Promise((r) => setTimeout(r, 1100));
      writeFileSync(path, seededBytes(MiB, 71));
      const changed = await c.load(`${models}changing.bin`);
      assert.equal(bufferSha256(changed), sha256(seededBytes(MiB, 71)));
      assert.equal(changed.stats.served?.cached, false);
      assert.equal(bufferSha256(first), sha256(seededBytes(MiB, 70)), 'a client keeps the version it got');
      for (const x of [first, again, changed]) x.close();
      c.close();
    } finally {
      await server.close();
    }
  });

  test('bad allowSources are coded errors naming the rule', async () => {
    for (const bad of ['ftp://x/', 'https://user:pw@h/', 'https://h/?q=1', 'hf://', 's3://', '', 5]) {
      await assert.rejects(serve({ socket: sock(), allowSources: [bad as string] }), (e: Error & { code?: string }) => {
        assert.equal(e.code, 'ERR_INVALID_ARG_VALUE', `${String(bad)}: ${e.message}`);
        assert.match(e.message, /allowSources\[0\]/);
        return true;
      });
    }
  });
});
