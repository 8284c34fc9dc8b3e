/**
 * s3:// references against a real object store: OpenStack Swift with its S3 API on loopback (../net/swift.ts), which
 * checks every SigV4 signature itself. load (memory, memfd, an empty object, keys SigV4 must escape), loadRanges,
 * inspect and loadModel (an object; a prefix listed with ListObjectsV2 in pages of two keys; a sharded model through
 * its index), copy and verifyFile, the store's error codes (NoSuchKey, NoSuchBucket, SignatureDoesNotMatch,
 * AccessDenied, a wrong region's AuthorizationHeaderMalformed) with no secret in any error, the endpoint from
 * AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, the CLI, the `cache` option, and a 503 SlowDown from the fault proxy in
 * front of the store.
 *
 * Oracles: the SHA-256 of the bytes uploaded (and of their slices), the store's own error codes, the store's access log
 * (requests, statuses, bytes sent, continuation tokens) and the fault proxy's, and leakCheck() (fds, mappings, memfds,
 * native threads) after every load and failure. Credentials come from the AWS SDK's chain through the environment
 * only (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; no config file, no instance metadata). Skipped, with the reason,
 * where Swift or memcached is missing or the tests do not run as root.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { inspect as utilInspect, promisify } from 'node:util';
import { connect, copy, inspect, load, loadModel, loadRanges, serve, verifyFile, type LoadedModel } from '../../src/index.js';
import { pythonEnv, pythonMissing, runPython } from '../share/python.js';
import { writeSafetensors, type Spec } from '../formats/model-files.js';
import { bufferSha256, fileSha256, repoRoot, seededBytes, sha256, tempDir } from '../helpers.js';
import { LOOPBACK, clean, rejects } from './common.js';
import { startFaultProxy } from '../net/faultproxy.js';
import { alive, startSwift, swiftMissing, type Swift } from '../net/swift.js';

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
const skip = swiftMissing;

// Loopback never goes through a proxy, whatever the environment says (undici's EnvHttpProxyAgent reads these).
for (const k of ['NO_PROXY', 'no_proxy']) process.env[k] = process.env[k] ? `${process.env[k]},${LOOPBACK}` : LOOPBACK;

const BUCKET = 'dmaload-s3-test';
/** An odd size: no chunk or range lines up with a power of two by luck. */
const BIG_SIZE = 24 * MiB + 3;
const big = Buffer.from(seededBytes(BIG_SIZE, 2403));
const BIG_SHA = sha256(big);
const WRONG_SECRET = 'wrong-secret-DMALOAD-canary-9f3c1e';
/** An object for the cache tests (small: it is fetched a few times). */
const cached = Buffer.from(seededBytes(MiB + 5, 77));

const { dir, cleanup } = tempDir('dmaload-s3-');
after(cleanup);

/** A safetensors model of a few tensors (sizes not multiples of 4 KiB). */
const MODEL_SPECS: Spec[] = [
  { name: 'embed', dtype: 'F32', shape: [512, 1024], data: seededBytes(2 * MiB, 11) },
  { name: 'norm', dtype: 'F32', shape: [1000], data: seededBytes(4000, 12) },
  { name: 'layer.0.w', dtype: 'F32', shape: [768, 1024], data: seededBytes(3 * MiB, 13) },
  { name: 'layer.0.b', dtype: 'U8', shape: [12_345], data: seededBytes(12_345, 14) },
  { name: 'head', dtype: 'U8', shape: [MiB + 17], data: seededBytes(MiB + 17, 15) },
];
const modelPath = join(dir, 'model.safetensors');
const modelFile = writeSafetensors(modelPath, MODEL_SPECS, { metadata: { format: 'pt' } });
/** Two shards and their index (the index names the shards relative to itself). */
const SHARD_SPECS: Spec[][] = [
  [{ name: 's.a', dtype: 'U8', shape: [300_001], data: seededBytes(300_001, 21) }],
  [
    { name: 's.b', dtype: 'F32', shape: [70_000], data: seededBytes(280_000, 22) },
    { name: 's.c', dtype: 'U8', shape: [5], data: seededBytes(5, 23) },
  ],
];
const shardNames = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
const shardFiles = SHARD_SPECS.map((s, i) => writeSafetensors(join(dir, shardNames[i]!), s));
const shardIndex = Buffer.from(JSON.stringify({ metadata: {}, weight_map: { 's.a': shardNames[0], 's.b': shardNames[1], 's.c': shardNames[1] } }));

/** The bytes of each tensor equal the file's slice, and the names are the ones asked for. */
function assertTensors(m: LoadedModel, file: Buffer, specs: Spec[], names: string[]): void {
  assert.deepEqual([...m.tensors.keys()].sort(), [...names].sort());
  for (const name of names) {
    const t = m.tensors.get(name)!;
    const spec = specs.find((s) => s.name === name)!;
    assert.equal(t.byteLength, spec.data.length, name);
    assert.equal(sha256(t.bytes), sha256(spec.data), `${name}: bytes differ from the uploaded tensor`);
    assert.equal(sha256(t.bytes), sha256(file.subarray(t.offset, t.offset + t.byteLength)), `${name}: not the file's slice at its offset`);
  }
}

/** `node bin/dmaload.js ARGS` from the repository root; resolves with the exit code and the output. */
async function cli(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [join(repoRoot, 'bin', 'dmaload.js'), ...args], { cwd: repoRoot, env, maxBuffer: 16 * MiB });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof x.code === 'number' ? x.code : -1, stdout: x.stdout ?? '', stderr: x.stderr ?? '' };
  }
}

/** Every place a secret could show in an error: message, path, the inspected error (stack, cause, fields), its JSON. */
function assertNoSecret(e: Error & Record<string, unknown>, secret: string): void {
  for (const [what, text] of [
    ['message', e.message],
    ['path', String(e.path)],
    ['util.inspect', utilInspect(e, { depth: 8, showHidden: true })],
    ['JSON', JSON.stringify(e)],
    ['stack', String(e.stack)],
  ] as const)
    assert.ok(!text.includes(secret), `the secret is in the error's ${what}: ${text}`);
}

/** A tiny S3-shaped server (path-style GETs with Range, an MD5 ETag; no signature check) holding `objects` by path. */
async function otherStore(objects: Map<string, Buffer>): Promise<{ endpoint: string; close(): Promise<void> }> {
  const server = createServer((req, res) => {
    const obj = objects.get(decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname));
    if (!obj) {
      const body = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code></Error>';
      res.writeHead(404, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
      return void res.end(body);
    }
    const etag = `"${createHash('md5').update(obj).digest('hex')}"`;
    const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    if (!m) {
      res.writeHead(200, { etag, 'content-length': obj.length });
      return void res.end(obj);
    }
    const from = Number(m[1]);
    const to = Math.min(Number(m[2]), obj.length - 1);
    res.writeHead(206, { etag, 'content-range': `bytes ${from}-${to}/${obj.length}`, 'content-length': to - from + 1 });
    res.end(obj.subarray(from, to + 1));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

const AWS_VARS = [
  'AWS_ACCESS_KEY_ID',
  'AWS_SECRET_ACCESS_KEY',
  'AWS_SESSION_TOKEN',
  'AWS_PROFILE',
  'AWS_EC2_METADATA_DISABLED',
  'AWS_CONFIG_FILE',
  'AWS_SHARED_CREDENTIALS_FILE',
  'AWS_REGION',
  'AWS_DEFAULT_REGION',
  'AWS_ENDPOINT_URL_S3',
  'AWS_ENDPOINT_URL',
  'AWS_WEB_IDENTITY_TOKEN_FILE',
  'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI',
  'AWS_CONTAINER_CREDENTIALS_FULL_URI',
];

describe('s3:// against Swift', { skip }, () => {
  let swift: Swift;
  const saved: Record<string, string | undefined> = {};
  let startMs = 0;
  /** `source` for every call: the store's address (else the tests would ask AWS). */
  let source: { s3Endpoint: string };

  before(async () => {
    for (const k of AWS_VARS) saved[k] = process.env[k];
    for (const k of AWS_VARS) delete process.env[k];
    const t0 = performance.now();
    // Listings in pages of 2 keys: a prefix of 5 entries takes 3 ListObjectsV2 requests (continuation tokens).
    swift = await startSwift({ trustForwardedHost: true, maxBucketListing: 2 });
    startMs = performance.now() - t0;
    Object.assign(process.env, {
      AWS_ACCESS_KEY_ID: swift.accessKey,
      AWS_SECRET_ACCESS_KEY: swift.secretKey,
      AWS_REGION: swift.region,
      // Never the instance metadata address, never a real user's files.
      AWS_EC2_METADATA_DISABLED: 'true',
      AWS_CONFIG_FILE: join(dir, 'no-aws-config'),
      AWS_SHARED_CREDENTIALS_FILE: join(dir, 'no-aws-credentials'),
    });
    source = { s3Endpoint: swift.endpoint };
    await swift.createBucket(BUCKET);
    const etag = await swift.put(BUCKET, 'big.bin', big);
    assert.equal(etag, `"${createHash('md5').update(big).digest('hex')}"`, "Swift's ETag is the MD5");
    await swift.put(BUCKET, 'models/single/model.safetensors', modelFile);
    await swift.put(BUCKET, 'models/single/config.json', Buffer.from('{"architectures":["Test"]}'));
    await swift.put(BUCKET, 'models/single/README.md', Buffer.from('# a model\n'));
    await swift.put(BUCKET, 'models/single/tokenizer.json', Buffer.from('{}'));
    await swift.put(BUCKET, 'empty.bin', Buffer.alloc(0));
    await swift.put(BUCKET, 'cached.bin', cached);
    await swift.put(BUCKET, 'models/single/sub/model.safetensors', Buffer.from('not a model: a deeper level, never listed'));
    await swift.put(BUCKET, 'models/sharded/model.safetensors.index.json', shardIndex);
    for (const [i, f] of shardFiles.entries()) await swift.put(BUCKET, `models/sharded/${shardNames[i]!}`, f);
  });
  after(async () => {
    const pids = swift?.pids ?? [];
    await swift?.stop();
    for (const [k, v] of Object.entries(saved))
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    assert.deepEqual(
      pids.filter((p) => alive(p)),
      [],
      'stop() left processes running',
    );
  });

  test('Swift started and serves what was put (a signed ranged GET of its own)', async (t) => {
    t.diagnostic(`Swift started in ${startMs.toFixed(0)} ms`);
    const r = await swift.request('GET', `/${BUCKET}/big.bin`, { headers: { range: 'bytes=5-9' } });
    assert.equal(r.status, 206);
    assert.deepEqual(r.body, big.subarray(5, 10));
  });

  test('load of 24 MiB + 3 into memory and into a memfd: byte-exact, io network, no page cache; verify computes the same hash', async () => {
    for (const target of ['memory', 'memfd'] as const) {
      swift.clearAccessLog();
      const requests = await clean(async () => {
        const b = await load(`s3://${BUCKET}/big.bin`, { target, source, verify: target === 'memfd' });
        try {
          assert.equal(b.size, BIG_SIZE);
          assert.equal(b.target, target);
          assert.equal(bufferSha256(b), BIG_SHA, 'bytes differ from the uploaded object');
          assert.equal(b.stats.io, 'network');
          assert.equal(b.stats.pageCacheBytes, 0);
          assert.ok(b.stats.network && b.stats.network.requests >= 2, 'a probe and ranged GETs');
          assert.equal(b.stats.network.retries, 0);
          if (target === 'memfd') {
            assert.ok(b.parts[0]!.fd >= 0, 'a memfd');
            // Swift sends no x-amz-checksum-sha256: nothing from the store; the hash is computed.
            assert.equal(b.stats.verified?.source, 'computed');
            assert.equal(b.stats.verified?.sha256, BIG_SHA);
          }
          return b.stats.network.requests;
        } finally {
          b.close();
        }
      });
      // What the store sent: the probe's byte 0, then ranges that cover the object exactly once, all 206.
      const log = (await swift.accessLog({ atLeast: requests })).filter((e) => e.path === `/${BUCKET}/big.bin`);
      assert.equal(log.length, requests, 'stats.network.requests equals the GETs the store answered');
      assert.ok(
        log.every((e) => e.method === 'GET' && e.status === 206),
        `answers ${log.map((e) => `${e.method} ${e.status}`).join(', ')}`,
      );
      assert.equal(
        log.reduce((n, e) => n + e.bytesSent, 0),
        BIG_SIZE + 1,
        'every byte sent once (and the probe byte)',
      );
    }
  });

  test('loadRanges: the bytes at the returned offsets are the object slices', async () => {
    const want = [
      { offset: 0, length: 1 },
      { offset: 5, length: 1000 },
      { offset: 10 * MiB + 123, length: 3 * MiB + 7 },
      { offset: BIG_SIZE - 70_000, length: 70_000 },
    ];
    swift.clearAccessLog();
    const requests = await clean(async () => {
      const { buffer, offsets } = await loadRanges(`s3://${BUCKET}/big.bin`, want, { source });
      try {
        assert.equal(offsets.length, want.length);
        want.forEach((r, i) => {
          const at = offsets[i]!;
          assert.equal(at % 4096, r.offset % 4096, 'file alignment kept');
          assert.equal(sha256(buffer.bytes.subarray(at, at + r.length)), sha256(big.subarray(r.offset, r.offset + r.length)), `range ${i}`);
        });
        assert.equal(buffer.stats.io, 'network');
        return buffer.stats.network!.requests;
      } finally {
        buffer.close();
      }
    });
    // Only the ranges (rounded out to 4 KiB) and the probe's byte went over the wire.
    const rounded = want.map((r) => Math.min(BIG_SIZE, Math.ceil((r.offset + r.length) / 4096) * 4096) - Math.floor(r.offset / 4096) * 4096);
    const budget = rounded.reduce((n, x) => n + x, 0) + 1;
    const log = (await swift.accessLog({ atLeast: requests })).filter((e) => e.path === `/${BUCKET}/big.bin`);
    assert.equal(log.length, requests);
    const sent = log.reduce((n, e) => n + e.bytesSent, 0);
    assert.ok(sent <= budget, `the store sent ${sent} bytes, the ranges rounded out are ${budget - 1} (+1 for the probe)`);
  });

  test("keys with characters SigV4 escapes (space, + ! ' ( ) * % & = ~, non-ASCII): objects and a prefix, byte-exact", async () => {
    const names = ["odd/a b+c!(x)*'.bin", 'odd/per%cent&amp=eq~.bin', 'odd/ünïcödé ✓.bin', 'odd/semi;colon,comma:colon@at$.bin'];
    for (const [i, name] of names.entries()) await swift.put(BUCKET, name, Buffer.from(seededBytes(70_001 + i, 500 + i)));
    const dirName = "odd/model dir (v1)+ü!'*/";
    await swift.put(BUCKET, `${dirName}model.safetensors`, shardFiles[1]!);
    await clean(async () => {
      for (const [i, name] of names.entries()) {
        const b = await load(`s3://${BUCKET}/${name}`, { source });
        try {
          assert.equal(sha256(b.bytes), sha256(seededBytes(70_001 + i, 500 + i)), name);
        } finally {
          b.close();
        }
      }
      const m = await loadModel(`s3://${BUCKET}/${dirName}`, { source });
      try {
        assertTensors(m, shardFiles[1]!, SHARD_SPECS[1]!, ['s.b', 's.c']);
      } finally {
        m.close();
      }
    });
  });

  test('an empty object loads as 0 bytes (S3 answers a Range on it with 416 InvalidRange, no Content-Range)', async () => {
    // What the store says, checked first: the answer the probe has to understand.
    const r = await swift.request('GET', `/${BUCKET}/empty.bin`, { headers: { range: 'bytes=0-0' } });
    assert.equal(r.status, 416);
    assert.match(r.body.toString('utf8'), /<Code>InvalidRange<\/Code>/);
    assert.equal(r.headers['content-range'], undefined);
    for (const target of ['memory', 'memfd'] as const) {
      await clean(async () => {
        const b = await load(`s3://${BUCKET}/empty.bin`, { target, source, verify: true });
        try {
          assert.equal(b.size, 0);
          assert.equal(b.stats.io, 'network');
          assert.equal(b.stats.verified?.sha256, sha256(new Uint8Array(0)));
        } finally {
          b.close();
        }
      });
    }
  });

  describe('models', () => {
    const single = `s3://${BUCKET}/models/single/model.safetensors`;

    test('inspect() of the object equals inspect() of the local file (tensors, metadata)', async () => {
      const [net, local] = await clean(async () => [await inspect(single, { source }), await inspect(modelPath)] as const);
      assert.equal(net.format, 'safetensors');
      assert.deepEqual(net.metadata, local.metadata);
      assert.deepEqual(
        net.tensors.map((t) => [t.name, t.dtype, t.shape, t.offset, t.bytes]),
        local.tensors.map((t) => [t.name, t.dtype, t.shape, t.offset, t.bytes]),
      );
    });

    test('loadModel(object, { tensors }): exactly those tensors, byte-exact, and not the whole object read', async () => {
      const names = ['layer.0.w', 'norm'];
      await clean(async () => {
        const m = await loadModel(single, { tensors: names, source });
        try {
          assertTensors(m, modelFile, MODEL_SPECS, names);
          for (const f of m.stats.perFile) assert.equal(f.stats.io, 'network');
          const read = m.stats.perFile.reduce((n, f) => n + f.stats.bytesRead, 0);
          assert.ok(read < modelFile.length * 0.8, `read ${read} of ${modelFile.length} bytes for two tensors`);
        } finally {
          m.close();
        }
      });
    });

    test('loadModel(prefix/) and inspect(prefix/): ListObjectsV2, in pages, finds model.safetensors (one level only)', async () => {
      const prefix = `s3://${BUCKET}/models/single/`;
      swift.clearAccessLog();
      await clean(async () => {
        const info = await inspect(prefix, { source });
        assert.deepEqual(
          info.tensors.map((t) => t.name),
          MODEL_SPECS.map((s) => s.name),
        );
        assert.ok(
          info.tensors.every((t) => t.file === single),
          `files: ${[...new Set(info.tensors.map((t) => t.file))].join(', ')}`,
        );
        const m = await loadModel(prefix, { tensors: ['head', 'embed'], source });
        try {
          assertTensors(m, modelFile, MODEL_SPECS, ['head', 'embed']);
        } finally {
          m.close();
        }
      });
      // Five entries (config.json, model.safetensors, README.md, sub/, tokenizer.json) at two a page: each listing
      // took three requests, the 2nd and 3rd with the token the page before gave.
      const lists = (await swift.accessLog({ atLeast: 6 })).filter((e) => e.path.startsWith(`/${BUCKET}/?`) && e.path.includes('list-type=2'));
      assert.equal(lists.length, 6, lists.map((e) => e.path).join('\n'));
      assert.equal(lists.filter((e) => e.path.includes('continuation-token=')).length, 4);
      assert.ok(lists.every((e) => e.status === 200 && /[?&]prefix=models%2Fsingle%2F(&|$)/.test(e.path) && /[?&]delimiter=%2F(&|$)/.test(e.path)));
    });

    test('loadModel(prefix/) of a sharded model: the index is found, each shard read beside it', async () => {
      await clean(async () => {
        const m = await loadModel(`s3://${BUCKET}/models/sharded/`, { source });
        try {
          for (const [i, specs] of SHARD_SPECS.entries())
            for (const s of specs) {
              const t = m.tensors.get(s.name)!;
              assert.ok(t, `${s.name} loaded`);
              assert.equal(sha256(t.bytes), sha256(s.data), `${s.name}: bytes`);
              assert.equal(sha256(t.bytes), sha256(shardFiles[i]!.subarray(t.offset, t.offset + t.byteLength)), `${s.name}: the slice of its shard`);
            }
          assert.equal(m.tensors.size, 3);
          assert.equal(m.stats.files, 2);
        } finally {
          m.close();
        }
      });
    });

    test('a prefix that holds no model: ERR_MODEL_NOT_FOUND; a missing bucket: ERR_SOURCE_NOT_FOUND NoSuchBucket', async () => {
      await clean(async () => {
        await rejects(loadModel(`s3://${BUCKET}/nothing-here/`, { source }), 'ERR_MODEL_NOT_FOUND');
        const e = await rejects(inspect('s3://no-such-bucket-dmaload/models/', { source }), 'ERR_SOURCE_NOT_FOUND');
        assert.equal(e.storeCode, 'NoSuchBucket');
      });
    });
  });

  test('copy() to a file and verifyFile() of the object: the same SHA-256', async () => {
    const dst = join(dir, 'copy.bin');
    await clean(async () => {
      const r = await copy(`s3://${BUCKET}/big.bin`, dst, { verify: true, source });
      assert.equal(r.readIo, 'network');
      assert.equal(r.verified?.sha256, BIG_SHA);
      assert.equal(fileSha256(dst), BIG_SHA);
      const v = await verifyFile(`s3://${BUCKET}/big.bin`, { source });
      assert.equal(v.sha256, BIG_SHA);
      assert.equal(v.size, BIG_SIZE);
      assert.equal(v.io, 'network');
      assert.equal(v.ok, undefined, 'nothing to compare with: Swift has no checksum header');
      const ok = await verifyFile(`s3://${BUCKET}/big.bin`, { sha256: BIG_SHA, source });
      assert.equal(ok.ok, true);
      const bad = await verifyFile(`s3://${BUCKET}/big.bin`, { sha256: sha256(Buffer.from('other')), source });
      assert.equal(bad.ok, false);
    });
  });

  describe('errors', () => {
    test("a missing key: ERR_SOURCE_NOT_FOUND with storeCode 'NoSuchKey' (load, loadRanges, inspect, copy, verifyFile)", async () => {
      const ref = `s3://${BUCKET}/missing.bin`;
      await clean(async () => {
        for (const call of [
          () => load(ref, { source }),
          () => loadRanges(ref, [{ offset: 0, length: 10 }], { source }),
          () => inspect(ref, { source }),
          () => copy(ref, join(dir, 'never.bin'), { source }),
          () => verifyFile(ref, { source }),
        ]) {
          const e = await rejects(call(), 'ERR_SOURCE_NOT_FOUND');
          assert.equal(e.storeCode, 'NoSuchKey');
          assert.equal(e.status, 404);
        }
      });
    });

    test("a missing bucket: ERR_SOURCE_NOT_FOUND with storeCode 'NoSuchBucket'", async () => {
      await clean(async () => {
        const e = await rejects(load('s3://no-such-bucket-dmaload/big.bin', { source }), 'ERR_SOURCE_NOT_FOUND');
        assert.equal(e.storeCode, 'NoSuchBucket');
      });
    });

    test("a wrong secret: ERR_SOURCE_AUTH with storeCode 'SignatureDoesNotMatch', the secret in no error (object and prefix)", async () => {
      process.env.AWS_SECRET_ACCESS_KEY = WRONG_SECRET;
      try {
        await clean(async () => {
          // An object (the ranged-GET path) and a prefix (the ListObjectsV2 path).
          for (const call of [() => load(`s3://${BUCKET}/big.bin`, { source }), () => loadModel(`s3://${BUCKET}/models/single/`, { source })]) {
            const e = await rejects(call(), 'ERR_SOURCE_AUTH');
            assert.equal(e.storeCode, 'SignatureDoesNotMatch');
            assert.equal(e.status, 403);
            assertNoSecret(e, WRONG_SECRET);
          }
        });
      } finally {
        process.env.AWS_SECRET_ACCESS_KEY = swift.secretKey;
      }
    });

    test("a user the bucket does not grant: ERR_SOURCE_AUTH with storeCode 'AccessDenied' (object and prefix)", async () => {
      process.env.AWS_ACCESS_KEY_ID = swift.noAccess.accessKey;
      process.env.AWS_SECRET_ACCESS_KEY = swift.noAccess.secretKey;
      try {
        await clean(async () => {
          for (const call of [() => load(`s3://${BUCKET}/big.bin`, { source }), () => inspect(`s3://${BUCKET}/models/single/`, { source })]) {
            const e = await rejects(call(), 'ERR_SOURCE_AUTH');
            assert.equal(e.storeCode, 'AccessDenied');
            assert.equal(e.status, 403);
            assertNoSecret(e, swift.noAccess.secretKey);
          }
        });
      } finally {
        process.env.AWS_ACCESS_KEY_ID = swift.accessKey;
        process.env.AWS_SECRET_ACCESS_KEY = swift.secretKey;
      }
    });

    test("a region the store is not in: the store's code (AuthorizationHeaderMalformed) kept in storeCode, for an object as for a prefix", async () => {
      const wrong = { ...source, region: 'eu-west-1' };
      await clean(async () => {
        const listed = await rejects(inspect(`s3://${BUCKET}/models/single/`, { source: wrong }), 'ERR_SOURCE_HTTP');
        assert.equal(listed.status, 400);
        assert.equal(listed.storeCode, 'AuthorizationHeaderMalformed');
        const loaded = await rejects(load(`s3://${BUCKET}/big.bin`, { source: wrong }), 'ERR_SOURCE_HTTP');
        assert.equal(loaded.status, 400);
        assert.match(loaded.message, /AuthorizationHeaderMalformed/);
        assert.equal(loaded.storeCode, 'AuthorizationHeaderMalformed', "the store's code is in the message but not in storeCode");
      });
    });

    test('unsigned requests to a private bucket: refused with a coded error (Swift answers 400), nothing left', async () => {
      await clean(async () => {
        const e = await rejects(load(`s3://${BUCKET}/big.bin`, { source: { ...source, unsigned: true } }), 'ERR_SOURCE_HTTP');
        assert.equal(e.status, 400);
      });
    });
  });

  describe('the endpoint from the environment', () => {
    /** Sets the variables for the duration of `fn`, then puts the old values back. */
    async function withEnv<T>(vars: Record<string, string | undefined>, fn: () => Promise<T>): Promise<T> {
      const old = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
      const set = (v: Record<string, string | undefined>) => {
        for (const [k, x] of Object.entries(v))
          if (x === undefined) delete process.env[k];
          else process.env[k] = x;
      };
      set(vars);
      try {
        return await fn();
      } finally {
        set(old);
      }
    }
    /** A loopback port nothing listens on: an endpoint that must not be used (one attempt, refused at once). */
    const deadEndpoint = 'http://127.0.0.1:9';

    test('AWS_ENDPOINT_URL_S3 without the option; it wins over AWS_ENDPOINT_URL; the option wins over both', async () => {
      await clean(async () => {
        for (const [vars, opts] of [
          [{ AWS_ENDPOINT_URL_S3: swift.endpoint, AWS_ENDPOINT_URL: undefined }, { attempts: 1 }],
          [{ AWS_ENDPOINT_URL_S3: swift.endpoint, AWS_ENDPOINT_URL: deadEndpoint }, { attempts: 1 }],
          [{ AWS_ENDPOINT_URL_S3: undefined, AWS_ENDPOINT_URL: swift.endpoint }, { attempts: 1 }],
          [
            { AWS_ENDPOINT_URL_S3: deadEndpoint, AWS_ENDPOINT_URL: deadEndpoint },
            { attempts: 1, s3Endpoint: swift.endpoint },
          ],
        ] as const) {
          const b = await withEnv(vars, () => loadRanges(`s3://${BUCKET}/big.bin`, [{ offset: 12 * MiB, length: 100_000 }], { source: opts }));
          try {
            const at = b.offsets[0]!;
            assert.equal(
              sha256(b.buffer.bytes.subarray(at, at + 100_000)),
              sha256(big.subarray(12 * MiB, 12 * MiB + 100_000)),
              `with ${JSON.stringify(vars)} and ${JSON.stringify(opts)}`,
            );
          } finally {
            b.buffer.close();
          }
        }
      });
    });

    test('the CLI: dmaload load s3://… --json --hash sha256 with AWS_* and AWS_ENDPOINT_URL_S3 prints the right SHA-256', async () => {
      const r = await cli(['load', `s3://${BUCKET}/big.bin`, '--json', '--hash', 'sha256'], { ...process.env, AWS_ENDPOINT_URL_S3: swift.endpoint });
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout) as { sha256: string; size: number; io: string; network?: { requests: number } };
      assert.equal(out.sha256, BIG_SHA);
      assert.equal(out.size, BIG_SIZE);
      assert.equal(out.io, 'network');
      assert.ok((out.network?.requests ?? 0) >= 2);
      // A wrong secret in the CLI's environment: a coded failure, the secret not printed.
      const bad = await cli(['load', `s3://${BUCKET}/big.bin`, '--json'], {
        ...process.env,
        AWS_ENDPOINT_URL_S3: swift.endpoint,
        AWS_SECRET_ACCESS_KEY: WRONG_SECRET,
      });
      assert.notEqual(bad.code, 0);
      assert.match(bad.stdout + bad.stderr, /ERR_SOURCE_AUTH|SignatureDoesNotMatch/);
      assert.ok(!(bad.stdout + bad.stderr).includes(WRONG_SECRET), 'the secret printed');
    });
  });

  describe('cache: a local copy of the object', () => {
    const ref = `s3://${BUCKET}/cached.bin`;

    test('the first load fetches and keeps a copy; the next one reads the copy: both byte-exact', async () => {
      const cacheDir = join(dir, 'cache-a');
      await clean(async () => {
        const first = await load(ref, { source, cache: cacheDir });
        try {
          assert.equal(first.stats.io, 'network');
          assert.equal(bufferSha256(first), sha256(cached));
        } finally {
          first.close();
        }
        const second = await load(ref, { source, cache: cacheDir });
        try {
          assert.notEqual(second.stats.io, 'network', 'the copy was not used');
          assert.equal(bufferSha256(second), sha256(cached));
        } finally {
          second.close();
        }
      });
    });

    test("the same bucket and key at another endpoint is another object: not served from the first store's copy", async () => {
      const cacheDir = join(dir, 'cache-b');
      // A second store (a tiny S3-shaped server: ranged GETs, an ETag) holding other bytes under the same name.
      const theirs = Buffer.from(seededBytes(cached.length, 4242));
      await clean(async () => {
        const mine = await load(ref, { source, cache: cacheDir });
        try {
          assert.equal(bufferSha256(mine), sha256(cached));
        } finally {
          mine.close();
        }
        const other = await otherStore(new Map([[`/${BUCKET}/cached.bin`, theirs]]));
        try {
          const b = await load(ref, { source: { s3Endpoint: other.endpoint }, cache: cacheDir });
          try {
            assert.equal(bufferSha256(b), sha256(theirs), `the bytes of ${source.s3Endpoint} came back for ${other.endpoint} (io ${b.stats.io})`);
          } finally {
            b.close();
          }
        } finally {
          await other.close();
        }
      });
    });
  });

  test('a 503 SlowDown from a proxy in front of the store on the 2nd request: retried, byte-exact', async () => {
    await clean(async () => {
      const proxy = await startFaultProxy({ target: swift.endpoint, plan: (_req, n) => (n === 2 ? { status: 503 } : undefined) });
      try {
        // The proxy rewrites Host to the store's; the signature covers the Host the client saw (the proxy's), which
        // the store is told in X-Forwarded-Host (an unsigned header) as a reverse proxy's deployment does.
        const b = await load(`s3://${BUCKET}/big.bin`, {
          source: { s3Endpoint: proxy.url, headers: { 'x-forwarded-host': new URL(proxy.url).host } },
          verify: true,
        });
        try {
          assert.equal(bufferSha256(b), BIG_SHA);
          assert.equal(b.stats.verified?.sha256, BIG_SHA);
          assert.ok(b.stats.network!.retries >= 1, `retries ${b.stats.network!.retries}`);
          assert.equal(b.stats.network!.requests, proxy.stats.requests, 'stats.network.requests equals what the proxy saw');
        } finally {
          b.close();
        }
        assert.equal(proxy.stats.byKind['status 503'], 1);
        const statuses = proxy.stats.log.map((e) => e.status);
        assert.ok(
          statuses.every((s, i) => (i === 1 ? s === 503 : s === 206)),
          `statuses ${statuses.join(' ')}: every request but the faulted one must have verified (206)`,
        );
        // Without X-Forwarded-Host the store checks the signature against its own Host: it covers the Host.
        proxy.setPlan(undefined);
        const e = await rejects(load(`s3://${BUCKET}/big.bin`, { source: { s3Endpoint: proxy.url } }), 'ERR_SOURCE_AUTH');
        assert.equal(e.storeCode, 'SignatureDoesNotMatch');
      } finally {
        await proxy.close();
      }
    });
  });

  test('dmaload serve fetches s3:// for its clients: three clients (Node, Python) at once, the store sends the model once; other buckets are never asked', async (t) => {
    const sockDir = tempDir('dmaload-s3-serve-');
    const server = await serve({
      socket: join(sockDir.dir, 's.sock'),
      budget: 256 * MiB,
      allowSources: [`s3://${BUCKET}/models/`],
      source: { s3Endpoint: swift.endpoint },
    });
    try {
      swift.clearAccessLog();
      const ref = `s3://${BUCKET}/models/single/model.safetensors`;
      const a = await connect(server.socket);
      const b = await connect(server.socket);
      const script = `
import hashlib, json, sys
from dmaload_client import Client
with Client(sys.argv[1]) as c:
    t = c.load_safetensors(sys.argv[2], framework="bytes")
    print(json.dumps({k: hashlib.sha256(v).hexdigest() for k, v in t.items()}))
`;
      const py = pythonMissing ? undefined : runPython(['-c', script, server.socket, ref], pythonEnv());
      const [ma, mb] = await Promise.all([a.loadModel(ref), b.loadModel(ref)]);
      const names = MODEL_SPECS.map((x) => x.name);
      assertTensors(ma, modelFile, MODEL_SPECS, names);
      assertTensors(mb, modelFile, MODEL_SPECS, names);
      ma.close();
      mb.close();
      if (py) {
        const r = await py;
        assert.equal(r.code, 0, r.err);
        assert.deepEqual(JSON.parse(r.out), Object.fromEntries(MODEL_SPECS.map((x) => [x.name, sha256(x.data)])));
      } else t.diagnostic(`Python client not run: ${pythonMissing}`);
      assert.equal(server.status().loads, 1, 'one download for three clients');
      // Outside the allowed prefix, another bucket: refused before any request.
      for (const other of [`s3://${BUCKET}/big.bin`, `s3://other-bucket/models/x`, `s3://${BUCKET}/models/../big.bin`]) {
        const e = await rejects(a.load(other), 'ERR_SHARE_SOURCE_NOT_ALLOWED');
        assert.ok(!e.message.includes(swift.secretKey));
      }
      a.close();
      b.close();
      const log = (await swift.accessLog({ atLeast: 2 })).filter((e) => e.method === 'GET');
      const model = log.filter((e) => e.path === `/${BUCKET}/models/single/model.safetensors`);
      const bytes = model.reduce((n, e) => n + e.bytesSent, 0);
      // The file once, and one byte per request's probe of its version (three clients, each asked once or twice).
      assert.ok(bytes >= modelFile.length && bytes <= modelFile.length + 6, `the store sent ${bytes} bytes of a ${modelFile.length}-byte model`);
      assert.deepEqual(
        log.filter((e) => !e.path.startsWith(`/${BUCKET}/models/`)),
        [],
        'no request for anything outside the allowed prefix',
      );
    } finally {
      await server.close();
      sockDir.cleanup();
    }
  });
});
