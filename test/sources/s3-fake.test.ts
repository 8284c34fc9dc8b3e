/**
 * s3:// references against a small S3-shaped server of the test's own on loopback: path-style addressing, SigV4
 * headers present and shaped as SigV4 says (the signature itself is the AWS SDK signer's; a real store's check of it
 * is the Swift test's), the store's error codes kept, the full-object x-amz-checksum-sha256 checked while loading,
 * ListObjectsV2 for a model under a prefix, unsigned requests. Bytes are checked by SHA-256 against what the server
 * holds; nothing leaks.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { inspect as utilInspect } from 'node:util';
import { load, loadModel } from '../../src/index.js';
import { leakCheck, seededBytes, sha256 } from '../helpers.js';

const SECRET = 'wJalrXUtnFEMI-test-secret-never-shown';
const objects = new Map<string, Buffer>();
const seen: Array<{ url: string; headers: IncomingMessage['headers'] }> = [];
let base = '';
let server: Server;
let badChecksum = false;

function xmlError(res: ServerResponse, status: number, code: string): void {
  const body = `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>x</Message></Error>`;
  res.writeHead(status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function handle(req: IncomingMessage, res: ServerResponse): void {
  seen.push({ url: req.url ?? '', headers: req.headers });
  const u = new URL(req.url ?? '/', 'http://x');
  const [, bucket, ...rest] = u.pathname.split('/');
  const key = decodeURIComponent(rest.join('/'));
  if (bucket === 'denied') return xmlError(res, 403, 'SignatureDoesNotMatch');
  if (bucket !== 'bucket') return xmlError(res, 404, 'NoSuchBucket');
  if (u.searchParams.get('list-type') === '2') {
    const prefix = u.searchParams.get('prefix') ?? '';
    const keys = [...objects.keys()].filter((k) => k.startsWith(prefix));
    const body = `<ListBucketResult>${keys.map((k) => `<Contents><Key>${k}</Key></Contents>`).join('')}<IsTruncated>false</IsTruncated></ListBucketResult>`;
    res.writeHead(200, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
    return void res.end(body);
  }
  const obj = objects.get(key);
  if (!obj) return xmlError(res, 404, 'NoSuchKey');
  const etag = `"${createHash('md5').update(obj).digest('hex')}"`;
  const headers: Record<string, string> = { etag, 'accept-ranges': 'bytes' };
  if (req.headers['x-amz-checksum-mode'] === 'ENABLED') {
    const sum = createHash('sha256')
      .update(badChecksum ? Buffer.from('other') : obj)
      .digest('base64');
    Object.assign(headers, { 'x-amz-checksum-sha256': sum, 'x-amz-checksum-type': 'FULL_OBJECT' });
  }
  const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
  if (!m) {
    res.writeHead(200, { ...headers, 'content-length': obj.length });
    return void res.end(obj);
  }
  const from = Number(m[1]);
  const to = Math.min(Number(m[2]), obj.length - 1);
  res.writeHead(206, { ...headers, 'content-range': `bytes ${from}-${to}/${obj.length}`, 'content-length': to - from + 1 });
  res.end(obj.subarray(from, to + 1));
}

/** A safetensors file of two F32 tensors. */
function safetensors(): Buffer {
  const a = Buffer.from(seededBytes(4096, 1));
  const b = Buffer.from(seededBytes(8192, 2));
  const header = Buffer.from(
    JSON.stringify({ a: { dtype: 'F32', shape: [1024], data_offsets: [0, 4096] }, b: { dtype: 'F32', shape: [2048], data_offsets: [4096, 12288] } }).padEnd(
      128,
      ' ',
    ),
  );
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  return Buffer.concat([len, header, a, b]);
}

const saved: Record<string, string | undefined> = {};
before(async () => {
  for (const k of [
    'AWS_ACCESS_KEY_ID',
    'AWS_SECRET_ACCESS_KEY',
    'AWS_SESSION_TOKEN',
    'AWS_PROFILE',
    'AWS_EC2_METADATA_DISABLED',
    'AWS_CONFIG_FILE',
    'AWS_SHARED_CREDENTIALS_FILE',
    'AWS_REGION',
    'AWS_ENDPOINT_URL_S3',
    'AWS_ENDPOINT_URL',
  ])
    saved[k] = process.env[k];
  Object.assign(process.env, {
    AWS_ACCESS_KEY_ID: 'AKIDDMALOADTEST',
    AWS_SECRET_ACCESS_KEY: SECRET,
    // Never the instance metadata address, never a real user's files.
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_CONFIG_FILE: '/nonexistent/config',
    AWS_SHARED_CREDENTIALS_FILE: '/nonexistent/credentials',
    AWS_REGION: 'eu-test-1',
  });
  delete process.env.AWS_SESSION_TOKEN;
  delete process.env.AWS_PROFILE;
  objects.set('obj.bin', Buffer.from(seededBytes(6 * 1024 * 1024 + 3, 9)));
  objects.set('models/m/model.safetensors', safetensors());
  objects.set('models/m/config.json', Buffer.from('{}'));
  server = createServer(handle);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address() as { port: number };
  base = `http://127.0.0.1:${addr.port}`;
  process.env.AWS_ENDPOINT_URL_S3 = base;
});
after(async () => {
  for (const [k, v] of Object.entries(saved))
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

describe('s3:// against an S3-shaped server', () => {
  test('load: path-style, SigV4 headers on every request, bytes exact, the store checksum checked', async () => {
    seen.length = 0;
    const leaks = leakCheck();
    const b = await load('s3://bucket/obj.bin', { target: 'memfd' });
    try {
      assert.equal(sha256(b.bytes), sha256(objects.get('obj.bin')!));
      assert.equal(b.stats.io, 'network');
      assert.equal(b.stats.verified?.source, 'store', "the store's full-object SHA-256 was checked");
    } finally {
      b.close();
    }
    assert.equal(await leaks(), undefined);
    assert.ok(seen.length >= 2);
    for (const s of seen) {
      assert.match(s.url, /^\/bucket\/obj\.bin$/, 'path-style for a custom endpoint');
      const auth = String(s.headers.authorization ?? '');
      assert.match(
        auth,
        /^AWS4-HMAC-SHA256 Credential=AKIDDMALOADTEST\/\d{8}\/eu-test-1\/s3\/aws4_request, SignedHeaders=[a-z0-9;-]+, Signature=[0-9a-f]{64}$/,
      );
      const signed = /SignedHeaders=([^,]+)/.exec(auth)![1]!.split(';');
      for (const h of ['host', 'x-amz-content-sha256', 'x-amz-date', 'x-amz-checksum-mode']) assert.ok(signed.includes(h), `${h} signed`);
      assert.ok(!signed.includes('range'), 'Range is not signed: one signature serves every range');
      assert.equal(s.headers['x-amz-content-sha256'], 'UNSIGNED-PAYLOAD');
    }
  });

  test('a checksum the bytes do not have: ERR_CHECKSUM_MISMATCH, nothing left', async () => {
    badChecksum = true;
    const leaks = leakCheck();
    try {
      await assert.rejects(load('s3://bucket/obj.bin'), { code: 'ERR_CHECKSUM_MISMATCH', message: /x-amz-checksum-sha256/ });
    } finally {
      badChecksum = false;
    }
    assert.equal(await leaks(), undefined);
  });

  test("the store's error codes: NoSuchKey, NoSuchBucket, SignatureDoesNotMatch; the secret never shown", async () => {
    await assert.rejects(load('s3://bucket/missing.bin'), { code: 'ERR_SOURCE_NOT_FOUND', storeCode: 'NoSuchKey' });
    await assert.rejects(load('s3://nobucket/x'), { code: 'ERR_SOURCE_NOT_FOUND', storeCode: 'NoSuchBucket' });
    const e = await load('s3://denied/x').then(
      () => assert.fail('loaded'),
      (err: unknown) => err as Error & { code?: string; storeCode?: string },
    );
    assert.equal(e.code, 'ERR_SOURCE_AUTH');
    assert.equal(e.storeCode, 'SignatureDoesNotMatch');
    assert.ok(!utilInspect(e).includes(SECRET) && !JSON.stringify(e).includes(SECRET), 'no secret in the error');
  });

  test('a model under a prefix: listed, found, the wanted tensor loaded alone', async () => {
    const m = await loadModel('s3://bucket/models/m/', { tensors: ['b'] });
    try {
      const file = objects.get('models/m/model.safetensors')!;
      const hlen = Number(file.readBigUInt64LE(0));
      assert.equal(sha256(m.tensors.get('b')!.bytes), sha256(file.subarray(8 + hlen + 4096, 8 + hlen + 12288)));
      assert.equal(m.tensors.has('a'), false);
    } finally {
      m.close();
    }
  });

  test('unsigned requests (a public bucket): no Authorization sent', async () => {
    seen.length = 0;
    const b = await load('s3://bucket/obj.bin', { source: { unsigned: true } });
    b.close();
    assert.ok(seen.length > 0 && seen.every((s) => s.headers.authorization === undefined));
  });
});
