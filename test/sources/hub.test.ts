/**
 * Hugging Face references end to end: load(), loadRanges(), loadModel(), inspect(), copy(), verifyFile() and the CLI
 * given `hf://ORG/NAME[@REV]/FILE` (or `hf://ORG/NAME`, or a bare `ORG/NAME` on the command line), resolved against
 * a hub-shaped nginx site (test/net/nginx.ts: the /resolve/ endpoint that 302s LFS files to a blob host on 127.0.0.2
 * with X-Repo-Commit / X-Linked-Etag / X-Linked-Size, the /api/models/ listing) and against a local hub cache that
 * commitToCache() filled. The oracles are independent of dmaload: SHA-256 of the source files' bytes, the error
 * codes, nginx's access log for what went over the wire (and which byte ranges), and for tokens a node:http endpoint
 * and a recording proxy in front of the blob host that see the request headers. Skipped (with the reason) without
 * nginx or openssl.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, renameSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { inspect as utilInspect, promisify } from 'node:util';
import { copy, inspect, load, loadModel, loadRanges, verifyFile } from '../../src/index.js';
import { commitToCache } from '../../src/pipeline/sources/hubref.js';
import { raw, writeSafetensors, type Spec } from '../formats/model-files.js';
import { bufferSha256, leakCheck, repoRoot, seededBytes, sha256, tempDir } from '../helpers.js';
import { HF_VARS, LOOPBACK, failure, withVars } from './common.js';
import { startFaultProxy } from '../net/faultproxy.js';
import { gitBlobSha1, nginxMissing, startNginx, type AccessEntry, type Nginx } from '../net/nginx.js';

const skip = nginxMissing;
const KiB = 1024;
const MiB = 1024 * KiB;
const execFileP = promisify(execFile);

const { dir, cleanup } = tempDir('dmaload-hub-');
after(cleanup);

const commitFor = (name: string) => sha256(Buffer.from(`dmaload hub test ${name}`)).slice(0, 40);
const C = {
  model: commitFor('model'),
  tampered: commitFor('tampered'),
  sharded: commitFor('sharded'),
  twogguf: commitFor('twogguf'),
  mixed: commitFor('mixed'),
  empty: commitFor('empty'),
  private: commitFor('private'),
};

/** A file on disk with the oracle's view of it: its bytes' size and SHA-256. */
interface Src {
  path: string;
  bytes: Buffer;
  size: number;
  sha256: string;
}
const src = (path: string, bytes: Buffer): Src => ({ path, bytes, size: bytes.length, sha256: sha256(bytes) });
const writeSrc = (path: string, bytes: Uint8Array): Src => {
  writeFileSync(path, bytes);
  return src(path, Buffer.from(bytes));
};
const sub = (name: string) => {
  const d = join(dir, name);
  mkdirSync(d, { recursive: true });
  return d;
};

// org/model: one real safetensors file (one U8 tensor, an odd size) and a config.json stored in git.
const modelDir = sub('model');
const MODEL_TENSOR = seededBytes(6 * MiB + 4321, 7);
const modelFile = (() => {
  const path = join(modelDir, 'model.safetensors');
  return src(path, writeSafetensors(path, [{ name: 'w', dtype: 'U8', shape: [MODEL_TENSOR.length], data: MODEL_TENSOR }]));
})();
const configFile = writeSrc(join(modelDir, 'config.json'), Buffer.from(JSON.stringify({ architectures: ['Test'], hidden_size: 64 }) + '\n'));

// org/tampered: a file of its own (its blob is overwritten on the hub site by one test).
const tamperedFile = writeSrc(join(sub('tampered'), 'model.safetensors'), seededBytes(2 * MiB + 77, 9));

// org/sharded: an index, two shards (LFS) and a config.json.
const shardedDir = sub('sharded');
const f32 = (n: number, seed: number) => {
  const b = seededBytes(n * 4, seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (b[i * 4]! - 128) / 7 + i / n;
  return a;
};
const SHARD1: Spec[] = [
  { name: 'embed', dtype: 'F32', shape: [256, 256], data: raw(f32(65536, 11)) },
  { name: 'l0', dtype: 'U8', shape: [1536 * KiB], data: seededBytes(1536 * KiB, 12) },
];
const SHARD2: Spec[] = [
  { name: 'l1', dtype: 'U8', shape: [MiB + 40], data: seededBytes(MiB + 40, 13) },
  { name: 'head', dtype: 'F32', shape: [3, 100], data: raw(f32(300, 14)) },
  { name: 'l2', dtype: 'U8', shape: [768 * KiB], data: seededBytes(768 * KiB, 15) },
];
const SHARD_NAMES = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'] as const;
const shards = [SHARD1, SHARD2].map((specs, i) => {
  const path = join(shardedDir, SHARD_NAMES[i]!);
  return src(path, writeSafetensors(path, specs, { metadata: { format: 'pt' } }));
});
const weightMap: Record<string, string> = {};
for (const [i, specs] of [SHARD1, SHARD2].entries()) for (const t of specs) weightMap[t.name] = SHARD_NAMES[i]!;
const indexFile = writeSrc(
  join(shardedDir, 'model.safetensors.index.json'),
  Buffer.from(JSON.stringify({ metadata: { total_size: shards.reduce((n, s) => n + s.size, 0) }, weight_map: weightMap }, null, 2) + '\n'),
);
const shardedConfig = writeSrc(join(shardedDir, 'config.json'), Buffer.from('{"model_type":"test","n_layer":3}\n'));
const TENSOR_COUNT = SHARD1.length + SHARD2.length;

// Repositories that hold no single model: two GGUF files; a model.safetensors beside another index; nothing at all.
const twoDir = sub('twogguf');
const ggufA = writeSrc(join(twoDir, 'a.gguf'), seededBytes(4096, 21));
const ggufB = writeSrc(join(twoDir, 'b.gguf'), seededBytes(4096, 22));
const mixedDir = sub('mixed');
const mixedModel = writeSrc(join(mixedDir, 'model.safetensors'), seededBytes(4096, 23));
const mixedIndex = writeSrc(join(mixedDir, 'other.safetensors.index.json'), Buffer.from('{"weight_map":{"x":"other-00001-of-00001.safetensors"}}\n'));

const REF = 'hf://org/model/model.safetensors';

/** A fresh empty folder under the test folder. */
const fresh = (prefix: string) => mkdtempSync(join(dir, `${prefix}-`));

/**
 * Runs `fn` with the hub variables cleared, then: an empty HF_HOME (no token file), an empty HF_HUB_CACHE, loopback
 * never proxied, and `vars` on top (undefined unsets). Restores the variables afterwards.
 */
function withEnv<T>(vars: Record<string, string | undefined>, fn: () => Promise<T>): Promise<T> {
  return withVars({ HF_HOME: fresh('home'), HF_HUB_CACHE: fresh('cache'), NO_PROXY: LOOPBACK, no_proxy: LOOPBACK, ...vars }, fn);
}

/** [from, to] of a `bytes=FROM-TO` Range header. */
function rangeOf(e: AccessEntry): [number, number] {
  const m = /^bytes=(\d+)-(\d+)$/.exec(e.range ?? '');
  assert.ok(m, `request ${e.uri} has no closed Range (${e.range})`);
  return [Number(m[1]), Number(m[2])];
}

/** Puts `file` into the hub cache `cacheDir` as huggingface_hub would have downloaded it. */
async function cacheFile(cacheDir: string, repoId: string, commit: string, revision: string, name: string, file: Src, etag: string): Promise<string> {
  const tmp = join(cacheDir, `download-${Math.random().toString(36).slice(2)}.incomplete`);
  copyFileSync(file.path, tmp);
  const p = await commitToCache({ cacheDir, repoType: 'model', repoId, revision, commit, file: name, etag, tempFile: tmp, sync: false });
  return p.blob;
}

describe('hf:// references against a hub site (nginx)', { skip }, () => {
  let ng: Nginx;
  let blobHost = '';
  let hubHost = '';
  /** The blob host's requests for one blob. */
  const blobLog = (log: AccessEntry[], sha: string) => log.filter((e) => e.server === blobHost && e.uri === `/blobs/${sha}`);
  const hubLog = (log: AccessEntry[]) => log.filter((e) => e.server === hubHost);

  before(async () => {
    ng = await startNginx({
      hub: [
        {
          repo: 'org/model',
          commit: C.model,
          revs: { main: C.model, 'v1.0': C.model, dev: C.model, 'feature/x': C.model },
          files: [
            { name: 'model.safetensors', path: modelFile.path, lfs: true },
            { name: 'config.json', path: configFile.path, lfs: false },
          ],
        },
        { repo: 'org/tampered', commit: C.tampered, revs: { main: C.tampered }, files: [{ name: 'model.safetensors', path: tamperedFile.path, lfs: true }] },
        {
          repo: 'org/sharded',
          commit: C.sharded,
          revs: { main: C.sharded },
          files: [
            { name: 'config.json', path: shardedConfig.path, lfs: false },
            { name: 'model.safetensors.index.json', path: indexFile.path, lfs: false },
            { name: SHARD_NAMES[0], path: shards[0]!.path, lfs: true },
            { name: SHARD_NAMES[1], path: shards[1]!.path, lfs: true },
          ],
        },
        {
          repo: 'org/twogguf',
          commit: C.twogguf,
          revs: { main: C.twogguf },
          files: [
            { name: 'a.gguf', path: ggufA.path, lfs: true },
            { name: 'b.gguf', path: ggufB.path, lfs: true },
          ],
        },
        {
          repo: 'org/mixed',
          commit: C.mixed,
          revs: { main: C.mixed },
          files: [
            { name: 'model.safetensors', path: mixedModel.path, lfs: true },
            { name: 'other.safetensors.index.json', path: mixedIndex.path, lfs: false },
          ],
        },
        { repo: 'org/empty', commit: C.empty, revs: { main: C.empty }, files: [] },
      ],
    });
    blobHost = new URL(ng.urls.blobs).host;
    hubHost = new URL(ng.urls.hub).host;
  });
  after(() => ng?.stop());

  test('1. load(hf://org/model/model.safetensors) from HF_ENDPOINT: exact bytes, checked against X-Linked-Etag, every byte fetched once', async () => {
    await withEnv({ HF_ENDPOINT: ng.urls.hub }, async () => {
      for (const target of ['memory', 'memfd'] as const) {
        await ng.clearAccessLog();
        const leaks = leakCheck();
        const buf = await load(REF, { target });
        let requests: number;
        try {
          assert.equal(buf.size, modelFile.size);
          assert.equal(bufferSha256(buf), modelFile.sha256, `${target}: bytes differ from the file`);
          if (target === 'memfd') assert.match(readlinkSync(`/proc/self/fd/${buf.fd}`), /memfd:/);
          const s = buf.stats;
          assert.equal(s.io, 'network');
          assert.equal(s.pageCacheBytes, 0);
          assert.deepEqual(
            s.verified && { source: s.verified.source, sha256: s.verified.sha256, extraBytes: s.verified.extraBytes },
            { source: 'hub', sha256: modelFile.sha256, extraBytes: 0 },
            'verify auto checks the hub-promised hash',
          );
          assert.ok(s.network, 'stats.network');
          assert.equal(s.network.retries, 0);
          assert.ok(s.network.connections >= 1);
          assert.ok(s.network.requests >= 3, `requests ${s.network.requests}: the resolve, the blob probe and at least one range`);
          requests = s.network.requests;
        } finally {
          buf.close();
        }
        assert.equal(await leaks(), undefined, `${target}: leak`);

        const log = await ng.accessLog({ atLeast: requests });
        assert.equal(log.length, requests, 'stats.network.requests counts every request the servers saw');
        assert.deepEqual(
          hubLog(log).map((e) => [e.method, e.uri, e.status]),
          [['GET', '/org/model/resolve/main/model.safetensors', 302]],
        );
        const blob = blobLog(log, modelFile.sha256);
        assert.equal(blob.length, log.length - 1, 'everything else went to the blob host, for this blob');
        assert.ok(
          blob.every((e) => e.status === 206),
          'ranged GETs only',
        );
        const probes = blob.filter((e) => e.range === 'bytes=0-0');
        assert.equal(probes.length, 1, 'one probe of byte 0');
        assert.equal(probes[0]!.bytesSent, 1);
        // The other requests cover [0, size) exactly once, and nginx sent what each asked.
        const pieces = blob
          .filter((e) => e !== probes[0])
          .map((e) => ({ r: rangeOf(e), sent: e.bytesSent }))
          .sort((a, b) => a.r[0] - b.r[0]);
        let at = 0;
        for (const p of pieces) {
          assert.equal(p.r[0], at, `ranges contiguous and not overlapping (at ${at})`);
          assert.equal(p.sent, p.r[1] - p.r[0] + 1);
          at = p.r[1] + 1;
        }
        assert.equal(at, modelFile.size, 'the ranges end at the end of the file');
      }
    });
  });

  test('1b. loadRanges(hf://…) fetches the ranges (rounded to pages), not the file; verifyFile and copy take the reference too', async () => {
    await withEnv({ HF_ENDPOINT: ng.urls.hub }, async () => {
      await ng.clearAccessLog();
      const leaks = leakCheck();
      const ranges = [
        { offset: 100_003, length: 5000 },
        { offset: modelFile.size - 3001, length: 3001 },
      ];
      const { buffer, offsets } = await loadRanges(REF, ranges);
      try {
        for (const [i, r] of ranges.entries()) {
          assert.equal(sha256(buffer.bytes.subarray(offsets[i], offsets[i]! + r.length)), sha256(modelFile.bytes.subarray(r.offset, r.offset + r.length)));
        }
        assert.equal(buffer.stats.io, 'network');
        assert.equal(buffer.stats.verified, undefined, "verify 'auto' does not fetch the rest of the file to hash it");
      } finally {
        buffer.close();
      }
      assert.equal(await leaks(), undefined);
      const blob = blobLog(await ng.accessLog({ atLeast: 3 }), modelFile.sha256);
      const sent = blob.reduce((n, e) => n + e.bytesSent, 0);
      assert.ok(sent <= 5000 + 3001 + 4 * 4096 + 1, `${sent} bytes fetched for 8001 bytes of ranges`);

      // A file stored in git (config.json): answered by the hub itself, no X-Linked-Etag, so nothing to check against.
      const cfg = await load('hf://org/model/config.json', { verify: true });
      try {
        assert.equal(Buffer.from(cfg.bytes).toString(), configFile.bytes.toString());
        assert.equal(cfg.stats.io, 'network');
        assert.deepEqual([cfg.stats.verified?.source, cfg.stats.verified?.sha256], ['computed', configFile.sha256]);
      } finally {
        cfg.close();
      }

      // verifyFile: the hub's X-Linked-Etag is what it compares with.
      const v = await verifyFile(REF);
      assert.deepEqual([v.ok, v.source, v.sha256, v.expected, v.io, v.size], [true, 'hub', modelFile.sha256, modelFile.sha256, 'network', modelFile.size]);
      // copy: the destination holds the file's bytes, checked against the hub's hash on the way.
      const dst = join(fresh('copy'), 'copied.safetensors');
      const c = await copy(REF, dst);
      assert.equal(sha256(readFileSync(dst)), modelFile.sha256);
      assert.equal(c.readIo, 'network');
      assert.equal(c.verified?.source, 'hub');
      assert.equal(c.verified?.sha256, modelFile.sha256);
      assert.equal(await leaks(), undefined);
    });
  });

  test('2. a reference in the hub cache is loaded from the cache: no request, verified against the blob name', async () => {
    const cache = fresh('prefilled');
    await cacheFile(cache, 'org/model', C.model, 'main', 'model.safetensors', modelFile, modelFile.sha256);
    await cacheFile(cache, 'org/model', C.model, 'main', 'config.json', configFile, gitBlobSha1(configFile.bytes));
    for (const offline of [undefined, '1']) {
      await withEnv({ HF_ENDPOINT: ng.urls.hub, HF_HUB_CACHE: cache, HF_HUB_OFFLINE: offline }, async () => {
        await ng.clearAccessLog();
        for (const ref of [REF, `hf://org/model@${C.model}/model.safetensors`]) {
          const leaks = leakCheck();
          const buf = await load(ref);
          try {
            assert.equal(bufferSha256(buf), modelFile.sha256);
            assert.notEqual(buf.stats.io, 'network');
            assert.equal(buf.stats.network, undefined);
            assert.equal(buf.stats.verified?.source, 'hub-cache');
            assert.equal(buf.stats.verified?.sha256, modelFile.sha256);
          } finally {
            buf.close();
          }
          assert.equal(await leaks(), undefined);
        }
        // The repository's model is found in the cache's snapshot too.
        const info = await inspect('hf://org/model');
        assert.deepEqual(
          info.tensors.map((t) => [t.name, t.bytes]),
          [['w', MODEL_TENSOR.length]],
        );
        const m = await loadModel('hf://org/model');
        try {
          assert.equal(sha256(m.tensors.get('w')!.bytes), sha256(MODEL_TENSOR));
        } finally {
          m.close();
        }
        assert.deepEqual(await ng.accessLog(), [], `offline=${offline}: nothing was asked of the hub`);
      });
    }
  });

  test('2b. verifyFile and copy of a cached reference check it against its blob name, as load does', async () => {
    const cache = fresh('prefilled');
    await cacheFile(cache, 'org/model', C.model, 'main', 'model.safetensors', modelFile, modelFile.sha256);
    await withEnv({ HF_ENDPOINT: ng.urls.hub, HF_HUB_CACHE: cache }, async () => {
      await ng.clearAccessLog();
      const v = await verifyFile(REF);
      assert.equal(v.sha256, modelFile.sha256);
      assert.notEqual(v.io, 'network');
      const dst = join(fresh('copy'), 'c.safetensors');
      const c = await copy(REF, dst);
      assert.equal(sha256(readFileSync(dst)), modelFile.sha256);
      assert.notEqual(c.readIo, 'network');
      assert.deepEqual(await ng.accessLog(), []);
      // What load() reports for the same reference (test 2): 'hub-cache', checked against the blob's name.
      assert.deepEqual(
        { verifyFile: [v.source, v.expected, v.ok], copy: [c.verified?.source, c.verified?.sha256] },
        { verifyFile: ['hub-cache', modelFile.sha256, true], copy: ['hub-cache', modelFile.sha256] },
        "verifyFile and copy (verify 'auto') of a cached hf:// reference compare it with its blob name",
      );
    });
  });

  test('2c. a damaged blob in the cache: ERR_CHECKSUM_MISMATCH, nothing returned, nothing leaked', async () => {
    const cache = fresh('damaged');
    const blob = await cacheFile(cache, 'org/model', C.model, 'main', 'model.safetensors', modelFile, modelFile.sha256);
    const bad = Buffer.from(modelFile.bytes);
    bad[bad.length >> 1] = bad[bad.length >> 1]! ^ 0x20;
    writeFileSync(blob, bad);
    await withEnv({ HF_ENDPOINT: ng.urls.hub, HF_HUB_CACHE: cache }, async () => {
      for (const target of ['memory', 'memfd'] as const) {
        const leaks = leakCheck();
        const e = await failure(load(REF, { target }));
        assert.equal(e.code, 'ERR_CHECKSUM_MISMATCH', e.message);
        assert.equal(e.expected, modelFile.sha256);
        assert.equal(e.actual, sha256(bad));
        assert.equal(await leaks(), undefined);
      }
    });
  });

  test('2d. copy and verifyFile of a damaged cached blob: refused / reported, as load() refuses it (2c)', async () => {
    const cache = fresh('damaged');
    const blob = await cacheFile(cache, 'org/model', C.model, 'main', 'model.safetensors', modelFile, modelFile.sha256);
    const bad = Buffer.from(modelFile.bytes);
    bad[12345] = bad[12345]! ^ 0x01;
    writeFileSync(blob, bad);
    await withEnv({ HF_ENDPOINT: ng.urls.hub, HF_HUB_CACHE: cache }, async () => {
      const leaks = leakCheck();
      const dst = join(fresh('copy'), 'damaged-copy.safetensors');
      const copied = await copy(REF, dst).then(
        () => 'copied',
        (e: Error & { code?: string }) => e.code,
      );
      const v = await verifyFile(REF);
      assert.equal(v.sha256, sha256(bad));
      assert.equal(await leaks(), undefined);
      assert.deepEqual(
        { copy: copied, copyDestination: existsSync(dst), verifyOk: v.ok },
        { copy: 'ERR_CHECKSUM_MISMATCH', copyDestination: false, verifyOk: false },
        'a cached blob whose bytes are not its name: copy refuses it, verifyFile says so',
      );
    });
  });

  test('2e. a cache holding only part of a repository (config.json) does not hide the model the hub has', async () => {
    const cache = fresh('partial');
    await cacheFile(cache, 'org/sharded', C.sharded, 'main', 'config.json', shardedConfig, gitBlobSha1(shardedConfig.bytes));
    await withEnv({ HF_ENDPOINT: ng.urls.hub, HF_HUB_CACHE: cache }, async () => {
      const r = await inspect('hf://org/sharded').then(
        (info) => ({ tensors: info.tensors.length }),
        (e: Error & { code?: string }) => ({ code: e.code, message: e.message }),
      );
      assert.deepEqual(r, { tensors: TENSOR_COUNT }, 'inspect(hf://org/sharded) online with config.json alone in the cache');
    });
  });

  test('3. a blob the hub serves damaged (same size, other bytes): ERR_CHECKSUM_MISMATCH for load, copy and verifyFile; nothing leaked', async () => {
    const blobPath = join(ng.prefix, 'blobs', tamperedFile.sha256);
    assert.ok(existsSync(blobPath), 'the hub site serves the blob from its blobs folder');
    const bad = Buffer.from(tamperedFile.bytes);
    for (let i = 1000; i < 1064; i++) bad[i] = bad[i]! ^ 0xff;
    // A new file renamed over the blob: the source file (a hard link of the old blob) keeps its bytes.
    writeFileSync(`${blobPath}.new`, bad);
    renameSync(`${blobPath}.new`, blobPath);
    assert.equal(sha256(readFileSync(tamperedFile.path)), tamperedFile.sha256);
    const ref = 'hf://org/tampered/model.safetensors';
    await withEnv({ HF_ENDPOINT: ng.urls.hub }, async () => {
      for (const target of ['memory', 'memfd'] as const) {
        await ng.clearAccessLog();
        const leaks = leakCheck();
        const e = await failure(load(ref, { target }));
        assert.equal(e.code, 'ERR_CHECKSUM_MISMATCH', e.message);
        assert.equal(e.expected, tamperedFile.sha256);
        assert.equal(e.actual, sha256(bad));
        assert.match(e.message, /X-Linked-Etag/);
        assert.equal(await leaks(), undefined, `${target}: leak`);
        assert.ok(blobLog(await ng.accessLog({ atLeast: 3 }), tamperedFile.sha256).length >= 2, 'it was fetched');
      }
      const leaks = leakCheck();
      const dst = join(fresh('copy'), 'never.bin');
      assert.equal((await failure(copy(ref, dst))).code, 'ERR_CHECKSUM_MISMATCH');
      assert.equal(existsSync(dst), false, 'no destination appears');
      const v = await verifyFile(ref);
      assert.deepEqual([v.ok, v.source, v.expected, v.sha256], [false, 'hub', tamperedFile.sha256, sha256(bad)]);
      assert.equal(await leaks(), undefined);
    });
  });

  test('4. loadModel(hf://org/sharded): index + 2 shards pinned to the commit, tensors equal to the local folder; a selection fetches only its ranges', async () => {
    await withEnv({ HF_ENDPOINT: ng.urls.hub }, async () => {
      const local = await loadModel(shardedDir);
      try {
        await ng.clearAccessLog();
        const leaks = leakCheck();
        const hub = await loadModel('hf://org/sharded');
        try {
          assert.equal(hub.format, 'safetensors');
          assert.deepEqual(hub.metadata, local.metadata);
          assert.deepEqual([...hub.tensors.keys()], [...local.tensors.keys()]);
          assert.equal(hub.tensors.size, TENSOR_COUNT);
          const shardOf = new Map(shards.map((s, i) => [`hf://org/sharded@${C.sharded}/${SHARD_NAMES[i]}`, s]));
          for (const [name, t] of hub.tensors) {
            const l = local.tensors.get(name)!;
            assert.deepEqual([t.dtype, t.shape, t.offset, t.byteLength], [l.dtype, l.shape, l.offset, l.byteLength], name);
            assert.equal(sha256(t.bytes), sha256(l.bytes), `${name}: bytes differ from the local load`);
            const file = shardOf.get(t.file);
            assert.ok(file, `${name}: file ${t.file} is a shard pinned to the commit`);
            assert.equal(sha256(t.bytes), sha256(file.bytes.subarray(t.offset, t.offset + t.byteLength)), `${name}: bytes differ from the shard`);
          }
          assert.deepEqual(Array.from(hub.tensors.get('head')!.asTypedArray() as Float32Array), Array.from(f32(300, 14)));
          // Each shard read whole but its header: verify 'auto' checks it against the hub's hash.
          assert.deepEqual(
            hub.stats.perFile.map((f) => [f.stats.io, f.stats.verified?.source, f.stats.verified?.sha256]),
            shards.map((s) => ['network', 'hub', s.sha256]),
          );
        } finally {
          hub.close();
        }
        assert.equal(await leaks(), undefined);
        const log = await ng.accessLog({ atLeast: 6 });
        const hubUris = hubLog(log).map((e) => e.uri);
        assert.ok(hubUris.includes('/api/models/org/sharded/revision/main'), hubUris.join(' '));
        const resolves = hubUris.filter((u) => u.includes('/resolve/'));
        assert.ok(resolves.length >= 3, resolves.join(' '));
        assert.ok(
          resolves.every((u) => u.startsWith(`/org/sharded/resolve/${C.sharded}/`)),
          `the index and its shards come from the listed commit: ${resolves.join(' ')}`,
        );
        assert.equal(blobLog(log, shards[0]!.sha256).reduce((n, e) => n + e.bytesSent, 0) >= shards[0]!.size, true);
      } finally {
        local.close();
      }

      // One tensor: the other shard gives its header only, this one its header and the tensor's pages.
      await ng.clearAccessLog();
      const leaks = leakCheck();
      const one = await loadModel('hf://org/sharded', { tensors: ['head'] });
      let head: { offset: number; byteLength: number };
      try {
        assert.deepEqual([...one.tensors.keys()], ['head']);
        const t = one.tensors.get('head')!;
        head = { offset: t.offset, byteLength: t.byteLength };
        assert.equal(sha256(t.bytes), sha256(shards[1]!.bytes.subarray(t.offset, t.offset + t.byteLength)));
        assert.equal(one.stats.files, 1);
      } finally {
        one.close();
      }
      assert.equal(await leaks(), undefined);
      const log = await ng.accessLog({ atLeast: 5 });
      const HEADER_READ = 64 * KiB;
      const other = blobLog(log, shards[0]!.sha256);
      assert.ok(
        other.every((e) => rangeOf(e)[0] === 0 && rangeOf(e)[1] < HEADER_READ),
        `the other shard: its header only (${other.map((e) => e.range).join(', ')})`,
      );
      const mine = blobLog(log, shards[1]!.sha256);
      const lo = Math.floor(head.offset / 4096) * 4096;
      const hi = Math.ceil((head.offset + head.byteLength) / 4096) * 4096;
      for (const e of mine) {
        const [a, b] = rangeOf(e);
        assert.ok((a === 0 && b < HEADER_READ) || (a >= lo && b < hi), `shard 2: ${e.range} is neither the header nor the tensor's pages [${lo}, ${hi})`);
      }
      // At most: the tensor's pages, each shard's first read of its header (inspect reads up to 64 KiB at once), and
      // the one-byte probes.
      const sent = [...other, ...mine].reduce((n, e) => n + e.bytesSent, 0);
      const headerReads = shards.reduce((n, s) => n + Math.min(s.size, HEADER_READ), 0);
      assert.ok(sent <= hi - lo + headerReads + 16, `${sent} bytes fetched for a ${head.byteLength}-byte tensor (${hi - lo} bytes of pages)`);
      assert.ok(sent <= head.byteLength + 2 * (HEADER_READ + 8 * KiB), `${sent} bytes fetched for a ${head.byteLength}-byte tensor`);
      assert.equal(log.filter((e) => e.server === blobHost && !e.uri.endsWith(shards[0]!.sha256) && !e.uri.endsWith(shards[1]!.sha256)).length, 0);

      // inspect: the header alone.
      const info = await inspect('hf://org/sharded');
      assert.equal(info.tensors.length, TENSOR_COUNT);
      assert.deepEqual(
        info.tensors.map((t) => [t.name, t.dtype, t.shape]),
        [...SHARD1, ...SHARD2].map((s) => [s.name, s.dtype, s.shape]),
      );
      assert.equal(await leaks(), undefined);
    });
  });

  test('5. a repository with no single model: ERR_MODEL_AMBIGUOUS naming the candidates, ERR_MODEL_NOT_FOUND when empty', async () => {
    await withEnv({ HF_ENDPOINT: ng.urls.hub }, async () => {
      const leaks = leakCheck();
      for (const [repo, names] of [
        ['org/twogguf', ['a.gguf', 'b.gguf']],
        ['org/mixed', ['model.safetensors', 'other.safetensors.index.json']],
      ] as const) {
        for (const call of [inspect, loadModel] as const) {
          await ng.clearAccessLog();
          const e = await failure(call(`hf://${repo}`));
          assert.equal(e.code, 'ERR_MODEL_AMBIGUOUS', e.message);
          for (const n of names) assert.ok(e.message.includes(n), `${call.name}(hf://${repo}): '${n}' named in: ${e.message}`);
          assert.deepEqual(
            (await ng.accessLog({ atLeast: 1 })).map((l) => l.uri),
            [`/api/models/${repo}/revision/main`],
            'only the listing was asked for',
          );
        }
      }
      for (const call of [inspect, loadModel] as const) {
        const e = await failure(call('hf://org/empty'));
        assert.equal(e.code, 'ERR_MODEL_NOT_FOUND', e.message);
      }
      assert.equal(await leaks(), undefined);
    });
  });

  test("5b. ERR_MODEL_AMBIGUOUS's suggestion for a hub repository is a usable hf:// reference", async () => {
    await withEnv({ HF_ENDPOINT: ng.urls.hub }, async () => {
      const e = await failure(inspect('hf://org/twogguf'));
      assert.equal(e.code, 'ERR_MODEL_AMBIGUOUS');
      assert.doesNotMatch(e.message, /hf:\/[^/]/, `the suggested name has lost a slash of hf://: ${e.message}`);
    });
  });

  test('6. missing file or revision: ERR_SOURCE_NOT_FOUND; offline and uncached: ERR_SOURCE_OFFLINE; tag, branch and commit revisions load', async () => {
    await withEnv({ HF_ENDPOINT: ng.urls.hub }, async () => {
      const leaks = leakCheck();
      for (const ref of ['hf://org/model/nope.safetensors', 'hf://org/model@no-such-branch/model.safetensors', 'hf://org/nobody/model.safetensors']) {
        const e = await failure(load(ref));
        assert.equal(e.code, 'ERR_SOURCE_NOT_FOUND', `${ref}: ${e.message}`);
      }
      for (const call of [inspect, loadModel] as const) {
        const e = await failure(call('hf://org/model@no-such-branch'));
        assert.equal(e.code, 'ERR_SOURCE_NOT_FOUND', `${call.name}: ${e.message}`);
      }
      assert.equal(await leaks(), undefined);

      for (const rev of ['main', 'v1.0', 'dev', 'feature%2Fx', C.model]) {
        await ng.clearAccessLog();
        const buf = await load(`hf://org/model@${rev}/model.safetensors`);
        try {
          assert.equal(bufferSha256(buf), modelFile.sha256, rev);
          assert.equal(buf.stats.verified?.source, 'hub');
        } finally {
          buf.close();
        }
        const resolves = hubLog(await ng.accessLog({ atLeast: 3 })).map((e) => [e.uri, e.status]);
        assert.deepEqual(resolves, [[`/org/model/resolve/${rev}/model.safetensors`, 302]]);
      }
      // A repository reference at a tag: the listing at the tag, the file at the commit it names.
      await ng.clearAccessLog();
      const m = await loadModel('hf://org/model@v1.0');
      try {
        assert.equal(sha256(m.tensors.get('w')!.bytes), sha256(MODEL_TENSOR));
      } finally {
        m.close();
      }
      const uris = hubLog(await ng.accessLog({ atLeast: 4 })).map((e) => e.uri);
      assert.ok(uris.includes('/api/models/org/model/revision/v1.0'), uris.join(' '));
      assert.ok(uris.includes(`/org/model/resolve/${C.model}/model.safetensors`), uris.join(' '));
      assert.equal(await leaks(), undefined);
    });

    for (const value of ['1', 'true', 'YES']) {
      await withEnv({ HF_ENDPOINT: ng.urls.hub, HF_HUB_OFFLINE: value }, async () => {
        await ng.clearAccessLog();
        const leaks = leakCheck();
        for (const run of [() => load(REF), () => inspect('hf://org/model'), () => loadModel('hf://org/sharded')]) {
          const e = await failure(run());
          assert.equal(e.code, 'ERR_SOURCE_OFFLINE', `HF_HUB_OFFLINE=${value}: ${e.message}`);
        }
        assert.equal(await leaks(), undefined);
        assert.deepEqual(await ng.accessLog(), [], 'offline: no request');
      });
    }
  });

  test("6b. TRANSFORMERS_OFFLINE=1 (huggingface_hub's other offline switch, which hubOffline() reads) is offline too", async () => {
    await withEnv({ HF_ENDPOINT: ng.urls.hub, TRANSFORMERS_OFFLINE: '1' }, async () => {
      await ng.clearAccessLog();
      const r = await load(REF).then(
        (b) => (b.close(), 'loaded from the hub'),
        (e: Error & { code?: string }) => e.code,
      );
      assert.equal(r, 'ERR_SOURCE_OFFLINE');
      assert.deepEqual(await ng.accessLog(), [], 'offline: no request');
    });
  });

  describe('7. tokens', () => {
    const TOKEN = 'hf_dmaloadTestTokenA1b2C3d4E5f6G7h8';
    interface Seen {
      url: string;
      authorization: string | undefined;
    }
    /** What the endpoint answers: the hub's redirect (optionally with a wrong X-Linked-Size), or an error status. */
    let mode: { status?: number; linkedSize?: number } = {};

    /** An endpoint posing as the hub for org/private (302 to `blobBase`), and a recording proxy as its blob host. */
    async function servers(): Promise<{ endpoint: string; hubSeen: Seen[]; blobSeen: Seen[]; close(): Promise<void> }> {
      const hubSeen: Seen[] = [];
      const blobSeen: Seen[] = [];
      const proxy = await startFaultProxy({
        target: ng.urls.blobs,
        host: '127.0.0.2',
        plan: (req) => void blobSeen.push({ url: req.url!, authorization: req.headers.authorization }),
      });
      const answer = (req: IncomingMessage, res: ServerResponse) => {
        const url = req.url!;
        const json = (status: number, body: unknown, headers: Record<string, string> = {}) => {
          const text = JSON.stringify(body);
          res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
          res.end(text);
        };
        if (mode.status !== undefined) {
          return json(mode.status, { error: 'no' }, { 'x-error-code': mode.status === 403 ? 'GatedRepo' : 'RepoNotFound' });
        }
        if (url === '/api/models/org/private/revision/main') {
          return json(200, { id: 'org/private', sha: C.private, siblings: [{ rfilename: 'model.safetensors' }] });
        }
        if (url === '/org/private/resolve/main/model.safetensors' || url === `/org/private/resolve/${C.private}/model.safetensors`) {
          res.writeHead(302, {
            location: `${proxy.url}/blobs/${modelFile.sha256}`,
            'x-repo-commit': C.private,
            'x-linked-etag': `"${modelFile.sha256}"`,
            'x-linked-size': String(mode.linkedSize ?? modelFile.size),
            etag: `"${modelFile.sha256}"`,
            'content-length': '0',
          });
          return res.end();
        }
        json(404, { error: 'Entry not found' }, { 'x-error-code': 'EntryNotFound' });
      };
      const server = createServer((req, res) => {
        hubSeen.push({ url: req.url!, authorization: req.headers.authorization });
        req.resume();
        answer(req, res);
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      return {
        endpoint,
        hubSeen,
        blobSeen,
        async close() {
          server.closeAllConnections();
          await new Promise((r) => server.close(r));
          await proxy.close();
        },
      };
    }

    const PRIVATE = 'hf://org/private/model.safetensors';

    test('HF_TOKEN goes to the endpoint as a bearer token, never to the blob host it redirects to', async () => {
      mode = {};
      const leaks = leakCheck();
      const s = await servers();
      try {
        await withEnv({ HF_ENDPOINT: s.endpoint, HF_TOKEN: TOKEN }, async () => {
          const buf = await load(PRIVATE);
          try {
            assert.equal(bufferSha256(buf), modelFile.sha256);
            assert.equal(buf.stats.verified?.source, 'hub');
          } finally {
            buf.close();
          }
          const info = await inspect('hf://org/private');
          assert.equal(info.tensors.length, 1);
        });
        assert.ok(s.hubSeen.length >= 3, s.hubSeen.map((x) => x.url).join(' '));
        assert.ok(s.hubSeen.some((x) => x.url.startsWith('/api/models/org/private/')));
        for (const x of s.hubSeen) assert.equal(x.authorization, `Bearer ${TOKEN}`, `endpoint ${x.url}`);
        assert.ok(s.blobSeen.length >= 3, 'the blob host served probe and ranges');
        for (const x of s.blobSeen) assert.equal(x.authorization, undefined, `blob host ${x.url} got the token`);
      } finally {
        await s.close();
      }
      assert.equal(await leaks(), undefined);
    });

    test("source { endpoint, token } override HF_ENDPOINT and HF_TOKEN; token '' sends none; the token file is read", async () => {
      mode = {};
      const s = await servers();
      try {
        await withEnv({ HF_ENDPOINT: 'http://127.0.0.1:9', HF_TOKEN: TOKEN }, async () => {
          const buf = await load(PRIVATE, { source: { endpoint: s.endpoint, token: 'hf_fromTheOption' } });
          buf.close();
          assert.deepEqual(new Set(s.hubSeen.map((x) => x.authorization)), new Set(['Bearer hf_fromTheOption']));
          s.hubSeen.length = 0;
          (await load(PRIVATE, { source: { endpoint: s.endpoint, token: '' } })).close();
          assert.deepEqual(new Set(s.hubSeen.map((x) => x.authorization)), new Set([undefined]));
        });
        const tokenPath = join(fresh('token'), 'token');
        writeFileSync(tokenPath, 'hf_fromTheFile\n');
        s.hubSeen.length = 0;
        await withEnv({ HF_ENDPOINT: s.endpoint, HF_TOKEN_PATH: tokenPath }, async () => (await load(PRIVATE)).close());
        assert.deepEqual(new Set(s.hubSeen.map((x) => x.authorization)), new Set(['Bearer hf_fromTheFile']));
        assert.ok(s.blobSeen.every((x) => x.authorization === undefined));
      } finally {
        await s.close();
      }
    });

    test('401/403 from the endpoint: ERR_SOURCE_AUTH saying whether a token was sent, never showing it', async () => {
      // The servers' own sockets count as fds too: the check spans their life.
      const leaks = leakCheck();
      const s = await servers();
      try {
        for (const status of [401, 403]) {
          mode = { status };
          for (const token of [TOKEN, undefined]) {
            await withEnv({ HF_ENDPOINT: s.endpoint, HF_TOKEN: token, HF_TOKEN_PATH: join(dir, 'no-such-token') }, async () => {
              for (const [what, run] of [
                ['load', () => load(PRIVATE)],
                ['inspect (the listing)', () => inspect('hf://org/private')],
                ['loadModel (the listing)', () => loadModel('hf://org/private')],
              ] as const) {
                const e = await failure(run());
                const where = `${what}, ${status}, token ${token ? 'set' : 'unset'}`;
                assert.equal(e.code, 'ERR_SOURCE_AUTH', `${where}: ${e.message}`);
                if (token) assert.match(e.message, /a token was sent/, where);
                else assert.match(e.message, /no token was sent/, where);
                if (status === 403) assert.match(e.message, /GatedRepo/, where);
                assert.ok(!utilInspect(e, { depth: 8 }).includes(TOKEN), `${where}: the token shows in the error`);
                assert.ok(!JSON.stringify({ ...e, message: e.message, stack: e.stack }).includes(TOKEN), `${where}: the token shows in the error`);
              }
            });
          }
        }
        assert.ok(s.blobSeen.length === 0, 'nothing reached the blob host');
      } finally {
        mode = {};
        await s.close();
      }
      assert.equal(await leaks(), undefined);
    });

    test('X-Linked-Size unlike the size served: ERR_SOURCE_SIZE_MISMATCH, nothing leaked', async () => {
      const leaks = leakCheck();
      const s = await servers();
      try {
        mode = { linkedSize: modelFile.size + 1 };
        await withEnv({ HF_ENDPOINT: s.endpoint }, async () => {
          const e = await failure(load(PRIVATE));
          assert.equal(e.code, 'ERR_SOURCE_SIZE_MISMATCH', e.message);
        });
      } finally {
        mode = {};
        await s.close();
      }
      assert.equal(await leaks(), undefined);
    });
  });

  test('8. CLI: `dmaload load org/model --json --hash sha256` and `dmaload inspect hf://org/sharded --json` against HF_ENDPOINT', async () => {
    const cwd = fresh('cwd');
    const env: NodeJS.ProcessEnv = { ...process.env };
    for (const k of HF_VARS) delete env[k];
    Object.assign(env, { HF_ENDPOINT: ng.urls.hub, HF_HUB_CACHE: fresh('cache'), HF_HOME: fresh('home'), NO_PROXY: LOOPBACK, no_proxy: LOOPBACK });
    const bin = join(repoRoot, 'bin', 'dmaload.js');
    assert.equal(existsSync(join(cwd, 'org')), false);
    await ng.clearAccessLog();
    const r = await execFileP(process.execPath, [bin, 'load', 'org/model', '--json', '--hash', 'sha256'], { cwd, env, maxBuffer: 16 * MiB });
    const out = JSON.parse(r.stdout);
    assert.equal(out.sha256, modelFile.sha256);
    assert.equal(out.size, modelFile.size);
    assert.equal(out.io, 'network');
    assert.equal(out.verified?.source, 'hub');
    assert.equal(out.path, `hf://org/model@${C.model}/model.safetensors`);
    const uris = hubLog(await ng.accessLog({ atLeast: 3 })).map((e) => e.uri);
    assert.deepEqual(uris, ['/api/models/org/model/revision/main', `/org/model/resolve/${C.model}/model.safetensors`]);

    const i = await execFileP(process.execPath, [bin, 'inspect', 'hf://org/sharded', '--json'], { cwd, env, maxBuffer: 16 * MiB });
    const info = JSON.parse(i.stdout);
    assert.equal(info.format, 'safetensors');
    assert.equal(info.tensors.length, TENSOR_COUNT);
    assert.deepEqual(
      info.tensors.map((t: { name: string }) => t.name),
      [...SHARD1, ...SHARD2].map((s) => s.name),
    );
  });
});
