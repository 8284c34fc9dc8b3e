/**
 * The `cache` option of load() for network sources, and pull(): what a network load fetches is also written to a
 * local copy (src/pipeline/sources/store.ts: a partial file and a record of the ranges on disk), which an interrupted
 * load resumes from and which is put in place (a URL cache entry's `data`, or the hub cache exactly as
 * huggingface_hub lays it out) only once complete and verified; the next load is a local file load.
 *
 * Oracles, all independent of dmaload: the SHA-256 of the source files' bytes; nginx's access log (test/net/nginx.ts)
 * and the fault proxy's log (test/net/faultproxy.ts) for what went over the wire; the partial file's own bytes
 * compared with the source at every range its record vouches for; huggingface_hub itself, offline
 * (try_to_load_from_cache, hf_hub_download and snapshot_download with local_files_only), for the hub cache's layout;
 * the error codes. Skipped (with the reason) without nginx or openssl; the huggingface_hub checks are skipped with
 * the reason where DMALOAD_PYTHON (default python3) lacks it, and fail where DMALOAD_PYTHON_REQUIRED is set.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  realpathSync,
  renameSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { createServer, get as httpGet } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { TestContext } from 'node:test';
import { promisify } from 'node:util';
import { load, pull } from '../../src/index.js';
import { native } from '../../src/engine/binding.js';
import { bufferSha256, leakCheck, openFds, repoRoot, seededBytes, sha256, tempDir } from '../helpers.js';
import { HF_VARS, LOOPBACK, failure, withVars, type Failure } from './common.js';
import { startFaultProxy, type FaultProxy, type ProxyLogEntry } from '../net/faultproxy.js';
import { huggingfaceHubPython, hubEnv, nginxMissing, startNginx, type AccessEntry, type Nginx } from '../net/nginx.js';

const skip = nginxMissing;
const KiB = 1024;
const MiB = 1024 * KiB;
const execFileP = promisify(execFile);
const BIN = join(repoRoot, 'bin', 'dmaload.js');

const { dir, cleanup } = tempDir('dmaload-srccache-');
after(cleanup);
/** The test folder as /proc/self/fd names it (a /tmp behind a symlink would differ). */
const realDir = realpathSync(dir);

/** A fresh empty folder under the test folder. */
const fresh = (prefix: string) => mkdtempSync(join(dir, `${prefix}-`));
const sub = (name: string) => {
  const d = join(dir, name);
  mkdirSync(d, { recursive: true });
  return d;
};

/** A file on disk with the oracle's view of it. */
interface Src {
  path: string;
  bytes: Buffer;
  size: number;
  sha256: string;
}
function writeSrc(path: string, bytes: Uint8Array): Src {
  writeFileSync(path, bytes);
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { path, bytes: b, size: b.length, sha256: sha256(b) };
}

// The plain web site (nginx's root; /slow/ is the same folder at limitRate).
const www = sub('www');
const small = writeSrc(join(www, 'small.bin'), seededBytes(5 * MiB + 4321, 101));
const big = writeSrc(join(www, 'big.bin'), seededBytes(64 * MiB, 102));
const flaky = writeSrc(join(www, 'flaky.bin'), seededBytes(12 * MiB + 777, 103));
const versioned = writeSrc(join(www, 'versioned.bin'), seededBytes(8 * MiB + 99, 104));
writeFileSync(join(www, 'mark.txt'), 'mark\n');

// The hub site's repositories.
const commitFor = (name: string) => sha256(Buffer.from(`dmaload cache test ${name}`)).slice(0, 40);
const C = { m: commitFor('m'), p: commitFor('p'), t: commitFor('t'), r: commitFor('r') };
const mFiles = { model: writeSrc(join(sub('hub/m'), 'model.safetensors'), seededBytes(6 * MiB + 4321, 201)) };
const mConfig = writeSrc(join(sub('hub/m'), 'config.json'), Buffer.from('{"model_type":"m"}\n'));
const pConfig = writeSrc(join(sub('hub/p'), 'config.json'), Buffer.from(JSON.stringify({ architectures: ['P'], hidden_size: 8 }) + '\n'));
const pA = writeSrc(join(sub('hub/p'), 'a.safetensors'), seededBytes(24 * MiB + 11, 202));
const pB = writeSrc(join(sub('hub/p'), 'b.safetensors'), seededBytes(20 * MiB + 13, 203));
const tModel = writeSrc(join(sub('hub/t'), 'model.safetensors'), seededBytes(3 * MiB + 5, 204));
const rModel = writeSrc(join(sub('hub/r'), 'model.safetensors'), seededBytes(3 * MiB + 7, 205));

/**
 * Runs `fn` with the hub variables cleared, then: an empty HF_HOME, an empty HF_HUB_CACHE, an empty XDG_CACHE_HOME
 * (`cache: true` never touches a real home), loopback never proxied, and `vars` on top. Restores them afterwards.
 */
function withEnv<T>(vars: Record<string, string | undefined>, fn: () => Promise<T>): Promise<T> {
  const env = { HF_HOME: fresh('home'), HF_HUB_CACHE: fresh('env-hub-cache'), XDG_CACHE_HOME: fresh('xdg'), NO_PROXY: LOOPBACK, no_proxy: LOOPBACK };
  return withVars({ ...env, ...vars }, fn);
}

/** The environment of a CLI child: this one without the hub variables, then `vars`. */
function childEnv(vars: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of HF_VARS) delete env[k];
  return { ...env, HF_HOME: fresh('home'), XDG_CACHE_HOME: fresh('xdg'), NO_PROXY: LOOPBACK, no_proxy: LOOPBACK, ...vars };
}

/** What a cache entry's record says (store.ts's Record). */
interface RecordFile {
  version: number;
  size: number;
  etag?: string;
  lastModified?: string;
  sha256?: string;
  ranges: Array<[number, number]>;
}
const readRecord = (path: string): RecordFile => JSON.parse(readFileSync(path, 'utf8')) as RecordFile;
const covered = (r: RecordFile) => r.ranges.reduce((n, [s, e]) => n + (e - s), 0);

/** Asserts that every range a record vouches for holds the source's bytes in the partial file. */
function assertRecordTrue(record: RecordFile, partial: string, source: Src, what: string): void {
  const part = readFileSync(partial);
  for (const [s, e] of record.ranges) {
    assert.ok(s >= 0 && s < e && e <= source.size, `${what}: range [${s}, ${e}) inside the object`);
    assert.ok(part.length >= e, `${what}: the record lists [${s}, ${e}) but the partial file has ${part.length} bytes`);
    assert.equal(sha256(part.subarray(s, e)), sha256(source.bytes.subarray(s, e)), `${what}: the partial file's bytes [${s}, ${e}) differ from the source`);
  }
}

/** A URL's entry in a `cache` folder: named by the SHA-256 of its origin and path. */
function urlEntry(cache: string, url: string): string {
  const u = new URL(url);
  return join(cache, createHash('sha256').update(`${u.origin}${u.pathname}`).digest('hex'));
}

/**
 * What the local copy leaves open: files under the test folder that this process holds (the partial file, the
 * record, the data), and the addon's jobs and queues. Sockets are not counted: the fault proxies run in this process
 * and keep their connections for a while.
 */
function storeLeaks(): () => string | undefined {
  const l0 = native.live();
  return () => {
    const open = [...openFds().values()].filter((p) => p.startsWith(realDir));
    if (open.length > 0) return `files left open: ${open.join(', ')}`;
    const l = native.live();
    for (const k of ['jobs', 'queues'] as const) if (l[k] !== l0[k]) return `live ${k} ${l0[k]} -> ${l[k]}`;
    return undefined;
  };
}

/** Sum of the body bytes a fault proxy forwarded for requests after `from` (an index into its log) to `path`. */
const proxyBytes = (p: FaultProxy, from: number, path: (url: string) => boolean) =>
  p.stats.log.slice(from).reduce((n, e: ProxyLogEntry) => n + (path(e.url) ? e.bytes : 0), 0);

/** Every file and symlink under `root`, relative, sorted (folders left out). */
function walk(root: string): string[] {
  const out: string[] = [];
  const rec = (d: string, prefix: string) => {
    if (!existsSync(d)) return;
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) rec(join(d, e.name), `${prefix}${e.name}/`);
      else out.push(`${prefix}${e.name}`);
    }
  };
  rec(root, '');
  return out.sort();
}

// ---------------------------------------------------------------------------------------------------------------
// huggingface_hub, offline, as the oracle of the hub cache's layout

const ORACLE = String.raw`
import hashlib, json, os, sys
import huggingface_hub as hh
req = json.load(sys.stdin)

def sha(p):
    h = hashlib.sha256()
    with open(p, 'rb') as f:
        for b in iter(lambda: f.read(1 << 20), b''):
            h.update(b)
    return h.hexdigest()

out = {'files': [], 'snapshots': []}
for q in req.get('files', []):
    r = {}
    t = hh.try_to_load_from_cache(q['repo'], q['file'], cache_dir=q['cache'], revision=q.get('revision'))
    r['try'] = t if isinstance(t, str) else (None if t is None else repr(t))
    try:
        p = hh.hf_hub_download(q['repo'], q['file'], cache_dir=q['cache'], revision=q.get('revision'), local_files_only=True)
        r['path'] = p
        r['sha256'] = sha(p)
    except Exception as e:
        r['error'] = type(e).__name__
    out['files'].append(r)
for q in req.get('snapshots', []):
    try:
        p = hh.snapshot_download(q['repo'], cache_dir=q['cache'], revision=q.get('revision'), local_files_only=True)
        files = {}
        for d, _, fs in os.walk(p):
            for f in fs:
                full = os.path.join(d, f)
                files[os.path.relpath(full, p).replace(os.sep, '/')] = sha(full)
        out['snapshots'].append({'path': p, 'files': files})
    except Exception as e:
        out['snapshots'].append({'error': type(e).__name__ + ': ' + str(e)[:300]})
print(json.dumps(out))
`;

interface OracleAnswer {
  files: Array<{ try: string | null; path?: string; sha256?: string; error?: string }>;
  snapshots: Array<{ path?: string; files?: Record<string, string>; error?: string }>;
}

/**
 * Asks huggingface_hub (offline, HF_HUB_OFFLINE=1) about files and snapshots in a cache; undefined (the test marked
 * skipped with the reason) where there is no Python with it, a failure where DMALOAD_PYTHON_REQUIRED is set.
 */
function askHuggingfaceHub(
  t: TestContext,
  endpoint: string,
  req: {
    files?: Array<{ repo: string; file: string; cache: string; revision?: string }>;
    snapshots?: Array<{ repo: string; cache: string; revision?: string }>;
  },
): OracleAnswer | undefined {
  const hf = huggingfaceHubPython();
  if (hf.missing !== undefined) {
    if (process.env.DMALOAD_PYTHON_REQUIRED) assert.fail(`DMALOAD_PYTHON_REQUIRED is set but: ${hf.missing}`);
    t.skip(`the huggingface_hub checks: ${hf.missing}`);
    return undefined;
  }
  const env: NodeJS.ProcessEnv = { ...hubEnv(endpoint, fresh('py-home')), HF_HUB_OFFLINE: '1' };
  // No sanitizer runtime preloaded into Python (the ASan run of the suite sets LD_PRELOAD).
  const preload = env.LD_PRELOAD?.split(/[\s:]+/).filter((l) => l && !/lib(a|ub)san\.so/.test(l));
  if (preload?.length) env.LD_PRELOAD = preload.join(' ');
  else delete env.LD_PRELOAD;
  const r = spawnSync(hf.python, ['-c', ORACLE], { input: JSON.stringify(req), encoding: 'utf8', env, timeout: 60_000 });
  assert.equal(r.status, 0, `huggingface_hub oracle failed: ${r.error?.message ?? ''} ${r.stderr}`);
  return JSON.parse(r.stdout) as OracleAnswer;
}

describe('cache option: a local copy of what a network load fetches, resumed, put in place once verified', { skip }, () => {
  let ng: Nginx;
  /** The CDN the hub's redirects point to: a fault proxy on 127.0.0.2 in front of nginx's blob host. */
  let cdn: FaultProxy;
  /** A fault proxy in front of nginx's plain site (127.0.0.1). */
  let site: FaultProxy;
  let hubHost = '';

  before(async () => {
    // The proxy must exist before nginx (its address goes into the redirects); its target is known only after.
    cdn = await startFaultProxy({ target: 'http://127.0.0.1:9', host: '127.0.0.2' });
    ng = await startNginx({
      root: www,
      limitRate: '20m',
      cdnBase: cdn.url,
      hub: [
        {
          repo: 'org/m',
          commit: C.m,
          revs: { main: C.m },
          files: [
            { name: 'model.safetensors', path: mFiles.model.path, lfs: true },
            { name: 'config.json', path: mConfig.path, lfs: false },
          ],
        },
        {
          repo: 'org/p',
          commit: C.p,
          revs: { main: C.p },
          files: [
            { name: 'config.json', path: pConfig.path, lfs: false },
            { name: 'a.safetensors', path: pA.path, lfs: true },
            { name: 'b.safetensors', path: pB.path, lfs: true },
          ],
        },
        { repo: 'org/t', commit: C.t, revs: { main: C.t }, files: [{ name: 'model.safetensors', path: tModel.path, lfs: true }] },
        { repo: 'org/r', commit: C.r, revs: { main: C.r }, files: [{ name: 'model.safetensors', path: rModel.path, lfs: true }] },
      ],
    });
    cdn.setTarget(ng.urls.blobs);
    site = await startFaultProxy({ target: ng.urls.http });
    hubHost = new URL(ng.urls.hub).host;
  });
  after(async () => {
    await site?.close();
    await cdn?.close();
    await ng?.stop();
  });

  /**
   * nginx logs a request only once it ended, and a request a client gave up may be logged late: a marker request on
   * a connection of its own, made now, numbers the connections that came before it. Resolves with its number.
   */
  async function logMark(): Promise<number> {
    const uri = `/mark.txt?${Math.random().toString(36).slice(2)}`;
    await new Promise<void>((resolve, reject) => {
      httpGet(`${ng.urls.http}${uri}`, { agent: false }, (res) => {
        res.resume();
        res.once('end', resolve);
        res.once('error', reject);
      }).once('error', reject);
    });
    for (const deadline = Date.now() + 5000; Date.now() < deadline;) {
      const e = (await ng.accessLog()).find((x) => x.uri === uri);
      if (e) return e.connection;
    }
    throw new Error('the marker request was never logged');
  }

  /** The log entries for `uri` on connections opened after the mark; waits until there are at least `atLeast`. */
  async function logSince(mark: number, uri: string, atLeast: number): Promise<AccessEntry[]> {
    let got: AccessEntry[] = [];
    for (const deadline = Date.now() + 5000; Date.now() < deadline;) {
      got = (await ng.accessLog()).filter((e) => e.connection > mark && e.uri === uri);
      if (got.length >= atLeast) break;
    }
    return got;
  }

  test('1. URL with cache: DIR: fetched once (exact, io network), put in place as DIR/<key>/data; the next load makes no request', async () => {
    await withEnv({}, async () => {
      const cache = fresh('url-cache');
      const url = `${ng.urls.http}/small.bin`;
      const entry = urlEntry(cache, url);
      await ng.clearAccessLog();
      const leaks = leakCheck();
      const b1 = await load(url, { cache });
      let requests: number;
      try {
        assert.equal(b1.size, small.size);
        assert.equal(bufferSha256(b1), small.sha256, 'the first load: bytes differ from the file');
        assert.equal(b1.stats.io, 'network');
        assert.ok(b1.stats.network, 'stats.network');
        requests = b1.stats.network.requests;
        // The copy is put in place only with the object's SHA-256: computed while it loaded.
        assert.equal(b1.stats.verified?.sha256, small.sha256);
      } finally {
        b1.close();
      }
      assert.equal(await leaks(), undefined);
      const log1 = await ng.accessLog({ atLeast: requests });
      assert.equal(
        log1.reduce((n, e) => n + e.bytesSent, 0),
        small.size + 1,
        'every byte fetched once (and the probe of byte 0)',
      );

      assert.deepEqual(readdirSync(entry).sort(), ['data', 'meta.json'], 'the entry: data and meta.json, no partial file or record left');
      assert.equal(sha256(readFileSync(join(entry, 'data'))), small.sha256, "the entry's data");
      const meta = JSON.parse(readFileSync(join(entry, 'meta.json'), 'utf8'));
      assert.equal(meta.size, small.size);
      assert.equal(meta.sha256, small.sha256);

      await ng.clearAccessLog();
      const b2 = await load(url, { cache });
      try {
        assert.equal(bufferSha256(b2), small.sha256, 'the second load: bytes differ from the file');
        assert.notEqual(b2.stats.io, 'network', 'the second load reads the local copy');
        assert.equal(b2.stats.network, undefined);
      } finally {
        b2.close();
      }
      assert.deepEqual(await ng.accessLog({ timeoutMs: 500 }), [], 'the second load sent no request');
      assert.equal(await leaks(), undefined);

      // cache: true is $XDG_CACHE_HOME/dmaload.
      const url2 = `${ng.urls.http}/small.bin?signed=1`;
      const b3 = await load(url2, { cache: true });
      b3.close();
      const entry2 = urlEntry(join(process.env.XDG_CACHE_HOME!, 'dmaload'), url2);
      assert.equal(sha256(readFileSync(join(entry2, 'data'))), small.sha256, 'cache: true puts the copy under $XDG_CACHE_HOME/dmaload');
    });
  });

  test('2. an aborted load of /slow/ keeps its partial file and a true record; the next load fetches only the rest', async () => {
    await withEnv({}, async () => {
      const cache = fresh('resume');
      const url = `${ng.urls.http}/slow/big.bin`;
      const entry = urlEntry(cache, url);
      const partial = join(entry, 'data.dmaload-partial');
      const record = `${partial}.json`;
      const leaks = leakCheck();
      // Aborted after 0.5 s or once a quarter of the file has arrived, whichever comes first: nginx's limit_rate
      // grants each request a second's worth up front, so pieces of up to 16 MiB at 20m are hardly slowed.
      const ac = new AbortController();
      const timer = setTimeout(() => ac.abort(), 500);
      const onProgress = (p: { bytes: number }) => void (p.bytes >= big.size / 4 && ac.abort());
      const e = await failure(load(url, { cache, signal: ac.signal, onProgress, source: { connections: 2 } }));
      clearTimeout(timer);
      assert.equal(e.name, 'AbortError', e.message);
      assert.equal(await leaks(), undefined);

      assert.ok(existsSync(partial), 'the partial file stays');
      assert.ok(existsSync(record), 'the record stays');
      assert.equal(existsSync(join(entry, 'data')), false, 'nothing under the final name');
      const rec = readRecord(record);
      assert.equal(rec.version, 1);
      assert.equal(rec.size, big.size);
      assert.equal(typeof rec.etag, 'string', 'nginx sends an ETag: the record keeps it');
      const recorded = covered(rec);
      assert.ok(recorded > 0 && recorded < big.size, `the record covers ${recorded} of ${big.size} bytes`);
      assertRecordTrue(rec, partial, big, 'after the abort');

      const mark = await logMark();
      const b = await load(url, { cache, source: { connections: 2 } });
      let requests: number;
      try {
        assert.equal(bufferSha256(b), big.sha256, 'the resumed load: bytes differ from the file');
        assert.equal(b.stats.io, 'network');
        requests = b.stats.network!.requests;
      } finally {
        b.close();
      }
      assert.equal(await leaks(), undefined);
      const fetched = (await logSince(mark, '/slow/big.bin', requests)).reduce((n, x) => n + x.bytesSent, 0);
      const bound = (big.size - recorded) * 1.1 + MiB;
      assert.ok(fetched <= bound, `the resumed load fetched ${fetched} bytes; ${big.size - recorded} were missing (bound ${Math.round(bound)})`);
      assert.deepEqual(readdirSync(entry).sort(), ['data', 'meta.json'], 'completed: no partial file or record left');
      assert.equal(sha256(readFileSync(join(entry, 'data'))), big.sha256);
    });
  });

  test('3. a network failure (resets after request N, attempts 1): coded error, a true record; the next load fetches only the rest', async () => {
    await withEnv({}, async () => {
      const cache = fresh('netfail');
      const url = `${site.url}/flaky.bin`;
      const entry = urlEntry(cache, url);
      const partial = join(entry, 'data.dmaload-partial');
      const N = 6;
      const source = { connections: 2, chunkSize: MiB };
      const leaks = storeLeaks();
      const from = site.stats.log.length;
      site.setPlan((_req, n) => (n - from > N ? { reset: 32 * KiB } : undefined));
      let e: Failure;
      try {
        e = await failure(load(url, { cache, source: { ...source, attempts: 1 } }));
      } finally {
        site.setPlan(undefined);
      }
      assert.equal(e.code, 'ERR_SOURCE_NETWORK', e.message);
      assert.equal(leaks(), undefined);
      assert.ok(existsSync(`${partial}.json`), 'the record stays after a network failure');
      const rec = readRecord(`${partial}.json`);
      const recorded = covered(rec);
      // Requests 2…N were ranges of 1 MiB; the first reset stops the others.
      assert.ok(recorded > 0 && recorded <= (N - 1) * MiB, `the record covers ${recorded} bytes`);
      assertRecordTrue(rec, partial, flaky, 'after the failure');

      const mark = site.stats.log.length;
      const b = await load(url, { cache, source });
      try {
        assert.equal(bufferSha256(b), flaky.sha256);
      } finally {
        b.close();
      }
      assert.equal(leaks(), undefined);
      const fetched = proxyBytes(site, mark, (u) => u === '/flaky.bin');
      const missing = flaky.size - recorded;
      assert.ok(fetched <= missing * 1.1 + 1, `the resumed load fetched ${fetched} bytes; ${missing} were missing`);
      assert.deepEqual(readdirSync(entry).sort(), ['data', 'meta.json']);
      assert.equal(sha256(readFileSync(join(entry, 'data'))), flaky.sha256);
    });
  });

  test('4. a record of another version (the file rewritten: another ETag) is thrown away: the next load has the new bytes, never a mix', async () => {
    await withEnv({}, async () => {
      const cache = fresh('version');
      const url = `${site.url}/versioned.bin`;
      const partial = join(urlEntry(cache, url), 'data.dmaload-partial');
      const from = site.stats.log.length;
      site.setPlan((_req, n) => (n - from > 4 ? { reset: 16 * KiB } : undefined));
      try {
        const e = await failure(load(url, { cache, source: { connections: 2, chunkSize: MiB, attempts: 1 } }));
        assert.equal(e.code, 'ERR_SOURCE_NETWORK', e.message);
      } finally {
        site.setPlan(undefined);
      }
      const old = readRecord(`${partial}.json`);
      assert.ok(covered(old) > 0, 'the first version left ranges on disk');

      // The same size, other bytes, another mtime: nginx's ETag (mtime-size) changes.
      const next = seededBytes(versioned.size, 999);
      writeFileSync(`${versioned.path}.new`, next);
      const t = statSync(versioned.path).mtime.getTime() / 1000 + 1000;
      utimesSync(`${versioned.path}.new`, t, t);
      renameSync(`${versioned.path}.new`, versioned.path);
      const head = await fetch(`${ng.urls.http}/versioned.bin`, { method: 'HEAD' });
      assert.notEqual(head.headers.get('etag'), old.etag, 'precondition: the server now sends another ETag');

      const mark = site.stats.log.length;
      const b = await load(url, { cache, source: { connections: 2, chunkSize: MiB } });
      try {
        assert.equal(bufferSha256(b), sha256(next), 'the load after the rewrite: not the new bytes (a mix with the old record?)');
      } finally {
        b.close();
      }
      assert.ok(proxyBytes(site, mark, (u) => u === '/versioned.bin') >= versioned.size, 'every byte of the new version was fetched');
      assert.equal(sha256(readFileSync(join(urlEntry(cache, url), 'data'))), sha256(next), 'the entry holds the new version');
    });
  });

  test('4b. a server without ETag or Last-Modified: a record cannot prove the object is the same, so it is not resumed from (never a mix)', async () => {
    const A = seededBytes(6 * MiB + 333, 301);
    const B = seededBytes(A.length, 302);
    let body = A;
    let requests = 0;
    let failAfter = Infinity;
    const server = createServer((req, res) => {
      requests++;
      if (requests > failAfter) return void req.socket.destroy();
      const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
      if (!m) {
        res.writeHead(200, { 'content-length': body.length, 'accept-ranges': 'bytes' });
        return void res.end(body);
      }
      const s = Number(m[1]);
      const e = m[2] ? Math.min(Number(m[2]), body.length - 1) : body.length - 1;
      res.writeHead(206, { 'content-range': `bytes ${s}-${e}/${body.length}`, 'content-length': e - s + 1, 'accept-ranges': 'bytes' });
      res.end(body.subarray(s, e + 1));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      await withEnv({}, async () => {
        const cache = fresh('novalidator');
        const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/obj.bin`;
        failAfter = 4;
        const e = await failure(load(url, { cache, source: { connections: 2, chunkSize: MiB, attempts: 1 } }));
        assert.equal(e.code, 'ERR_SOURCE_NETWORK', e.message);
        const rec = readRecord(join(urlEntry(cache, url), 'data.dmaload-partial.json'));
        assert.ok(covered(rec) > 0, 'precondition: the first version left ranges on disk');
        // Another object of the same size at the same URL, as a server without validators cannot tell.
        body = B;
        failAfter = Infinity;
        const got = await load(url, { cache, source: { connections: 2, chunkSize: MiB } }).then(
          (b) => {
            const h = bufferSha256(b);
            b.close();
            return h;
          },
          (err: Failure) => `${err.code}: ${err.message}`,
        );
        const data = join(urlEntry(cache, url), 'data');
        const placed = existsSync(data) ? sha256(readFileSync(data)) : undefined;
        assert.equal(
          got,
          sha256(B),
          got === sha256(A)
            ? 'the old version came back'
            : `the load is neither version: ${covered(rec)} bytes of the old one from disk mixed with new bytes` +
                (placed === got ? ', and that mix is now the cache entry every later load returns' : ''),
        );
        assert.equal(placed, sha256(B), 'the cache entry');
      });
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  test('5. hf:// with cache: DIR lays the file out as huggingface_hub does (its offline calls find it); the next load makes no request', async (t) => {
    await withEnv({ HF_ENDPOINT: ng.urls.hub }, async () => {
      const cache = fresh('hub-dir');
      const ref = 'hf://org/m/model.safetensors';
      const sha = mFiles.model.sha256;
      const leaks = storeLeaks();
      const b1 = await load(ref, { cache });
      try {
        assert.equal(bufferSha256(b1), sha);
        assert.equal(b1.stats.io, 'network');
        assert.equal(b1.stats.verified?.source, 'hub');
        assert.equal(b1.stats.verified?.sha256, sha);
      } finally {
        b1.close();
      }
      assert.equal(leaks(), undefined);
      const repo = join(cache, 'models--org--m');
      assert.deepEqual(
        walk(repo),
        [`blobs/${sha}`, 'refs/main', `snapshots/${C.m}/model.safetensors`],
        'the repository folder: no partial file or record left',
      );
      assert.equal(readlinkSync(join(repo, 'snapshots', C.m, 'model.safetensors')), `../../blobs/${sha}`);
      assert.equal(readFileSync(join(repo, 'refs', 'main'), 'utf8'), C.m);
      assert.equal(sha256(readFileSync(join(repo, 'blobs', sha))), sha);

      // The next load: a local file, checked against the blob's name; nothing reaches the hub or the CDN.
      await ng.clearAccessLog();
      const cdn0 = cdn.stats.requests;
      const b2 = await load(ref, { cache });
      try {
        assert.equal(bufferSha256(b2), sha);
        assert.notEqual(b2.stats.io, 'network');
        assert.equal(b2.stats.network, undefined);
        assert.equal(b2.stats.verified?.source, 'hub-cache');
      } finally {
        b2.close();
      }
      assert.deepEqual(await ng.accessLog({ timeoutMs: 500 }), [], 'the second load sent no request');
      assert.equal(cdn.stats.requests, cdn0, 'nor to the CDN');

      // cache: true is the hub cache (HF_HUB_CACHE).
      const b3 = await load('hf://org/m/config.json', { cache: true });
      try {
        assert.equal(sha256(b3.bytes), mConfig.sha256);
      } finally {
        b3.close();
      }
      const envCache = process.env.HF_HUB_CACHE!;
      assert.ok(existsSync(join(envCache, 'models--org--m', 'snapshots', C.m, 'config.json')), 'cache: true wrote into HF_HUB_CACHE');

      const hf = askHuggingfaceHub(t, ng.urls.hub, {
        files: [
          { repo: 'org/m', file: 'model.safetensors', cache },
          { repo: 'org/m', file: 'model.safetensors', cache, revision: C.m },
          { repo: 'org/m', file: 'config.json', cache: envCache },
        ],
      });
      if (!hf) return;
      for (const [i, want] of [sha, sha, mConfig.sha256].entries()) {
        const f: OracleAnswer['files'][number] = hf.files[i]!;
        assert.equal(f.error, undefined, `hf_hub_download #${i} offline: ${f.error}`);
        assert.equal(f.sha256, want, `hf_hub_download #${i}: the bytes of the path it returns`);
        assert.equal(f.try, f.path, `try_to_load_from_cache #${i} agrees with hf_hub_download`);
      }
      assert.equal(realpathSync(hf.files[0]!.path!), realpathSync(join(repo, 'snapshots', C.m, 'model.safetensors')));
    });
  });

  test('6. pull(hf://org/p, { cacheDir }): all 3 files, found by snapshot_download offline; a second pull fetches nothing', async (t) => {
    await withEnv({ HF_ENDPOINT: ng.urls.hub }, async () => {
      const cacheDir = fresh('pull');
      await ng.clearAccessLog();
      const leaks = storeLeaks();
      const r = await pull('hf://org/p', { cacheDir });
      assert.equal(leaks(), undefined);
      assert.equal(r.commit, C.p);
      const want = new Map([
        ['config.json', pConfig],
        ['a.safetensors', pA],
        ['b.safetensors', pB],
      ]);
      assert.deepEqual(r.files.map((f) => f.file).sort(), [...want.keys()].sort());
      for (const f of r.files) {
        const src = want.get(f.file)!;
        assert.equal(f.fetched, true, `${f.file} fetched`);
        assert.equal(f.size, src.size, `${f.file} size`);
        assert.equal(f.sha256, src.sha256, `${f.file} sha256`);
        assert.equal(f.path, join(cacheDir, 'models--org--p', 'snapshots', C.p, f.file));
        assert.equal(sha256(readFileSync(f.path)), src.sha256, `${f.file}: bytes`);
      }
      const repo = join(cacheDir, 'models--org--p');
      assert.equal(readFileSync(join(repo, 'refs', 'main'), 'utf8'), C.p);
      assert.deepEqual(
        walk(join(repo, 'blobs')).filter((n) => n.includes('dmaload')),
        [],
        'no partial file or record left',
      );

      // A second pull: the listing, nothing else.
      await ng.clearAccessLog();
      const cdn0 = cdn.stats.requests;
      const r2 = await pull('hf://org/p', { cacheDir });
      assert.deepEqual(
        r2.files.map((f) => [f.file, f.fetched]).sort(),
        [...want.keys()].sort().map((f) => [f, false]),
      );
      const uris = (await ng.accessLog({ atLeast: 1 })).map((e) => e.uri);
      assert.deepEqual(
        uris.filter((u) => !u.startsWith('/api/')),
        [],
        'the second pull fetched no file',
      );
      assert.equal(cdn.stats.requests, cdn0, 'nor asked the CDN anything');

      const hf = askHuggingfaceHub(t, ng.urls.hub, { snapshots: [{ repo: 'org/p', cache: cacheDir }] });
      if (!hf) return;
      const snap = hf.snapshots[0]!;
      assert.equal(snap.error, undefined, `snapshot_download offline: ${snap.error}`);
      assert.deepEqual(snap.files, Object.fromEntries([...want].map(([n, s]) => [n, s.sha256])), 'snapshot_download: the 3 files, byte-exact');
      assert.equal(realpathSync(snap.path!), realpathSync(join(repo, 'snapshots', C.p)));
    });
  });

  test("6b. CLI `dmaload pull org/p --include '*.json' --cache-dir DIR --json` fetches config.json only", async () => {
    const cacheDir = fresh('pull-json');
    const env = childEnv({ HF_ENDPOINT: ng.urls.hub, HF_HUB_CACHE: fresh('env-hub-cache') });
    await ng.clearAccessLog();
    const cdn0 = cdn.stats.requests;
    const r = await execFileP(process.execPath, [BIN, 'pull', 'org/p', '--include', '*.json', '--cache-dir', cacheDir, '--json'], { env, maxBuffer: 16 * MiB });
    const out = JSON.parse(r.stdout);
    assert.deepEqual(
      out.files.map((f: { file: string; fetched: boolean }) => [f.file, f.fetched]),
      [['config.json', true]],
    );
    assert.equal(out.fetchedBytes, pConfig.size);
    assert.equal(out.commit, C.p);
    const resolves = (await ng.accessLog({ atLeast: 2 })).filter((e) => e.server === hubHost && e.uri.includes('/resolve/')).map((e) => e.uri);
    assert.deepEqual([...new Set(resolves)], [`/org/p/resolve/${C.p}/config.json`], 'only config.json was asked for');
    assert.equal(cdn.stats.requests, cdn0, 'no LFS file was fetched');
    const snap = join(cacheDir, 'models--org--p', 'snapshots', C.p);
    assert.deepEqual(walk(snap), ['config.json']);
    assert.equal(sha256(readFileSync(join(snap, 'config.json'))), pConfig.sha256);
  });

  test('6c. a pull after a partial one (--include) fetches the rest: the cache snapshot does not stand in for the listing', async () => {
    await withEnv({ HF_ENDPOINT: ng.urls.hub }, async () => {
      const all = ['a.safetensors', 'b.safetensors', 'config.json'];
      // (i) The default cache (HF_HUB_CACHE), as `dmaload pull org/p --include '*.json'` then `dmaload pull org/p`.
      await pull('hf://org/p', { include: ['*.json'] });
      const first = await pull('hf://org/p');
      // (ii) cacheDir given: HF_HUB_CACHE (holding that partial snapshot now) is another cache, not the one to fill.
      const cacheDir = fresh('pull-other');
      const second = await pull('hf://org/p', { cacheDir });
      const names = (r: Awaited<ReturnType<typeof pull>>) => r.files.map((f) => f.file).sort();
      assert.deepEqual(
        { defaultCache: names(first), cacheDir: names(second) },
        { defaultCache: all, cacheDir: all },
        'pull lists the repository from a partial snapshot in HF_HUB_CACHE instead of the hub',
      );
      assert.deepEqual(walk(join(cacheDir, 'models--org--p', 'snapshots', C.p)), all);
    });
  });

  test('6c2. offline (HF_HUB_OFFLINE=1), pull(hf://org/p, { cacheDir }) of a complete cacheDir: every file found there, no request', async () => {
    const cacheDir = fresh('pull-offline');
    await withEnv({ HF_ENDPOINT: ng.urls.hub }, () => pull('hf://org/p', { cacheDir }));
    // HF_HUB_CACHE is another (empty) cache: cacheDir is the one pull was told to use, as snapshot_download's cache_dir.
    await withEnv({ HF_ENDPOINT: ng.urls.hub, HF_HUB_OFFLINE: '1' }, async () => {
      await ng.clearAccessLog();
      const r = await pull('hf://org/p', { cacheDir }).then(
        (x) => x.files.map((f) => [f.file, f.fetched]).sort(),
        (e: Failure) => `${e.code}: ${e.message}`,
      );
      assert.deepEqual(
        r,
        [
          ['a.safetensors', false],
          ['b.safetensors', false],
          ['config.json', false],
        ],
        'offline pull of a cacheDir that holds the whole snapshot',
      );
      assert.deepEqual(await ng.accessLog({ timeoutMs: 500 }), [], 'offline: no request');
    });
  });

  /**
   * Runs `dmaload pull org/p --cache-dir DIR --json` with the CDN stalling every range in the second half of each LFS
   * file, waits until the first halves are in the partial files (their bytes compared with the sources), kills the
   * child with `signal`, and runs the pull again. Resolves with what the oracle needs.
   */
  async function killAndResume(signal: NodeJS.Signals) {
    const cacheDir = fresh(`pull-${signal}`);
    const env = childEnv({ HF_ENDPOINT: ng.urls.hub, HF_HUB_CACHE: fresh('env-hub-cache') });
    const lfs = [pA, pB].map((s) => ({ src: s, half: Math.floor(s.size / 2), url: `/blobs/${s.sha256}` }));
    const blobsDir = join(cacheDir, 'models--org--p', 'blobs');
    const rangeStart = (e: { range?: string | undefined }) => Number(/^bytes=(\d+)-/.exec(e.range ?? '')?.[1] ?? NaN);
    const mark1 = cdn.stats.log.length;
    cdn.setPlan((req) => {
      const f = lfs.find((x) => x.url === req.url);
      return f && rangeStart(req.headers) >= f.half ? { stall: 30_000, after: 0 } : undefined;
    });
    const child = spawn(process.execPath, [BIN, 'pull', 'org/p', '--cache-dir', cacheDir, '--json'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-8192)));
    child.stdout.resume();
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('exit', (code, sig) => r({ code, signal: sig })));
    /** How far from 0 the ranges the CDN delivered whole reach, for one file. */
    const reach = (f: (typeof lfs)[number]) => {
      const done = cdn.stats.log
        .slice(mark1)
        .filter((e) => e.url === f.url && e.status === 206)
        .map((e) => {
          const m = /^bytes=(\d+)-(\d+)$/.exec(e.range ?? '');
          return m ? [Number(m[1]), Number(m[2]) + 1, e.bytes] : [0, 0, 0];
        })
        .filter(([s, end, bytes]) => bytes === end! - s!)
        .sort((x, y) => x[0]! - y[0]!);
      let at = 0;
      for (const [s, end] of done) if (s! <= at) at = Math.max(at, end!);
      return at;
    };
    const onDisk = new Map<string, number>();
    let killed = false;
    try {
      for (const deadline = Date.now() + 20_000; ;) {
        assert.ok(Date.now() < deadline, `the first halves never reached the partial files (${[...onDisk]}); the child said: ${stderr}`);
        assert.equal(child.exitCode, null, `the pull ended before it was killed: ${stderr}`);
        onDisk.clear();
        for (const f of lfs) {
          const at = reach(f);
          const partial = join(blobsDir, `${f.src.sha256}.dmaload-partial`);
          if (at < f.half || !existsSync(partial)) continue;
          const part = readFileSync(partial);
          // The record is written at most a second behind the bytes (a kill before it loses that second's bytes):
          // wait until it vouches for the first half too, so the test measures resuming, not that race.
          let recorded = 0;
          try {
            const rec = JSON.parse(readFileSync(`${partial}.json`, 'utf8')) as { ranges: Array<[number, number]> };
            recorded = rec.ranges.find((x) => x[0] === 0)?.[1] ?? 0;
          } catch {
            recorded = 0;
          }
          if (recorded >= f.half && part.length >= at && sha256(part.subarray(0, at)) === sha256(f.src.bytes.subarray(0, at))) onDisk.set(f.url, at);
        }
        if (onDisk.size === lfs.length) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      child.kill(signal);
      killed = true;
    } finally {
      // A child that outlives its signal (or a test that failed before sending it) is killed for good.
      const guard = setTimeout(() => child.kill('SIGKILL'), killed ? 10_000 : 0);
      await exited;
      clearTimeout(guard);
      cdn.setPlan(undefined);
    }
    const end = await exited;
    if (signal === 'SIGINT') assert.equal(end.code, 130, `SIGINT: the pull unwinds and exits 128 + 2 (${stderr})`);
    else assert.equal(end.signal, 'SIGKILL');
    const records = lfs.map((f) => {
      const path = join(blobsDir, `${f.src.sha256}.dmaload-partial.json`);
      return existsSync(path) ? covered(readRecord(path)) : undefined;
    });

    const mark2 = cdn.stats.log.length;
    const r = await execFileP(process.execPath, [BIN, 'pull', 'org/p', '--cache-dir', cacheDir, '--json'], { env, maxBuffer: 16 * MiB });
    const out = JSON.parse(r.stdout);
    const fetched = lfs.reduce((n, f) => n + proxyBytes(cdn, mark2, (u) => u === f.url), 0);
    const total = lfs.reduce((n, f) => n + f.src.size, 0);
    const kept = [...onDisk.values()].reduce((a, b) => a + b, 0);
    return { cacheDir, lfs, out, fetched, total, kept, records, onDisk };
  }

  for (const signal of ['SIGINT', 'SIGKILL'] as const) {
    test(`6d. a CLI pull killed half way (${signal}) resumes: the second run fetches at most 1.1 × what was missing + 2 MiB`, async () => {
      const r = await killAndResume(signal);
      const snap = join(r.cacheDir, 'models--org--p', 'snapshots', C.p);
      assert.deepEqual(walk(snap), ['a.safetensors', 'b.safetensors', 'config.json'], 'the second run completed');
      for (const s of [pA, pB, pConfig]) assert.equal(sha256(readFileSync(join(snap, s.path.slice(s.path.lastIndexOf('/') + 1)))), s.sha256);
      assert.deepEqual(
        walk(join(r.cacheDir, 'models--org--p', 'blobs')).filter((n) => n.includes('dmaload')),
        [],
        'no partial file or record left',
      );
      assert.deepEqual(
        r.out.files.filter((f: { fetched: boolean }) => f.fetched).map((f: { file: string }) => f.file),
        ['a.safetensors', 'b.safetensors'],
        'config.json was complete before the kill: not fetched again',
      );
      const missing = r.total - r.kept;
      const bound = missing * 1.1 + 2 * MiB;
      assert.ok(
        r.fetched <= bound,
        `after ${signal}, ${r.kept} of ${r.total} bytes were in the partial files (checked byte for byte) yet the second run fetched ${r.fetched} ` +
          `(bound ${Math.round(bound)}); the records left by the killed run covered ${JSON.stringify(r.records)} bytes (undefined: no record)`,
      );
    });
  }

  test('7. a blob the hub serves damaged, with cache: ERR_CHECKSUM_MISMATCH and nothing under snapshots/ (nothing unverified visible)', async (t) => {
    const blobPath = join(ng.prefix, 'blobs', tModel.sha256);
    const bad = Buffer.from(tModel.bytes);
    for (let i = 4096; i < 4096 + 64; i++) bad[i] = bad[i]! ^ 0xff;
    writeFileSync(`${blobPath}.new`, bad);
    renameSync(`${blobPath}.new`, blobPath);
    await withEnv({ HF_ENDPOINT: ng.urls.hub }, async () => {
      const cache = fresh('tampered');
      const ref = 'hf://org/t/model.safetensors';
      const leaks = storeLeaks();
      for (const attempt of [1, 2]) {
        const e = await failure(load(ref, { cache }));
        assert.equal(e.code, 'ERR_CHECKSUM_MISMATCH', `load ${attempt}: ${e.message}`);
        assert.equal(e.expected, tModel.sha256);
        assert.equal(e.actual, sha256(bad));
        assert.equal(leaks(), undefined);
      }
      const pe = await pull('hf://org/t', { cacheDir: cache }).then(
        () => 'resolved',
        (err: Failure) => err.code,
      );
      assert.equal(pe, 'ERR_CHECKSUM_MISMATCH', 'pull');
      const repo = join(cache, 'models--org--t');
      assert.deepEqual(walk(join(repo, 'snapshots')), [], 'no file under snapshots/');
      assert.equal(existsSync(join(repo, 'blobs', tModel.sha256)), false, 'no blob under its final name');
      for (const n of walk(repo)) assert.ok(!lstatSync(join(repo, n)).isSymbolicLink(), `${n}: a link`);

      const hf = askHuggingfaceHub(t, ng.urls.hub, { files: [{ repo: 'org/t', file: 'model.safetensors', cache }] });
      if (!hf) return;
      assert.equal(hf.files[0]!.try, null, 'try_to_load_from_cache finds nothing');
      assert.equal(hf.files[0]!.error, 'LocalEntryNotFoundError', 'hf_hub_download offline finds nothing');
    });
  });

  test('7b. after a checksum mismatch the local copy is not trusted: once the CDN serves the right bytes (same ETag), the next load succeeds', async () => {
    const blobPath = join(ng.prefix, 'blobs', rModel.sha256);
    const st = statSync(blobPath);
    const etagOf = async () => (await fetch(`${ng.urls.blobs}/blobs/${rModel.sha256}`, { method: 'HEAD' })).headers.get('etag');
    const etag0 = await etagOf();
    /** Serves `bytes` as the blob, with the blob's mtime (so nginx's ETag and Last-Modified stay as they were). */
    const serve = (bytes: Uint8Array) => {
      writeFileSync(`${blobPath}.new`, bytes);
      utimesSync(`${blobPath}.new`, st.atime, st.mtime);
      renameSync(`${blobPath}.new`, blobPath);
    };
    const bad = Buffer.from(rModel.bytes);
    for (let i = MiB; i < MiB + 64; i++) bad[i] = bad[i]! ^ 0x5a;
    serve(bad);
    assert.equal(await etagOf(), etag0, 'precondition: the damaged bytes go out under the same ETag (a corrupting CDN edge)');
    try {
      await withEnv({ HF_ENDPOINT: ng.urls.hub }, async () => {
        const cache = fresh('recover');
        const ref = 'hf://org/r/model.safetensors';
        const e = await failure(load(ref, { cache }));
        assert.equal(e.code, 'ERR_CHECKSUM_MISMATCH', e.message);
        const record = join(cache, 'models--org--r', 'blobs', `${rModel.sha256}.dmaload-partial.json`);
        const left = existsSync(record) ? `a record covering ${covered(readRecord(record))} bytes` : 'no record';
        serve(rModel.bytes);
        const mark = cdn.stats.log.length;
        const got = await load(ref, { cache }).then(
          (b) => {
            const h = bufferSha256(b);
            b.close();
            return h;
          },
          (err: Failure) => `${err.code}: ${err.message}`,
        );
        const asked = proxyBytes(cdn, mark, () => true);
        assert.equal(got, rModel.sha256, `the load after the CDN was fixed: it fetched ${asked} bytes from the CDN; the mismatch had left ${left}`);
        const repo = join(cache, 'models--org--r');
        assert.equal(sha256(readFileSync(join(repo, 'snapshots', C.r, 'model.safetensors'))), rModel.sha256);
      });
    } finally {
      serve(rModel.bytes);
    }
  });
});
