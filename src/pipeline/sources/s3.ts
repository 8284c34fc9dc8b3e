/**
 * `s3://BUCKET/KEY` references: the HTTP source (./http.ts: same ranges, retries, pinning, verification and cache)
 * with S3's addressing and SigV4 signatures. Signing is the AWS SDK's own signer (@smithy/signature-v4), credentials
 * its standard chain (@aws-sdk/credential-providers: environment, shared config and credentials files with
 * AWS_PROFILE, web identity, container and instance metadata); nothing of either is written here.
 *
 * - Region: `source.region`, else AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1.
 * - Endpoint: `source.s3Endpoint`, else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else AWS's; a custom endpoint is
 *   addressed path-style (`ENDPOINT/BUCKET/KEY`), AWS's virtual-hosted (`BUCKET.s3.REGION.amazonaws.com/KEY`) unless
 *   `source.pathStyle`.
 * - `source.unsigned` (or no credentials anywhere in the chain) sends unsigned requests: public buckets.
 * - The store's full-object SHA-256 (`x-amz-checksum-sha256`, asked for with `x-amz-checksum-mode: ENABLED`) is
 *   checked while loading where the store has one; a composite (multipart) checksum is not a whole-object hash.
 * - Errors keep the store's own code (`NoSuchKey`, `AccessDenied`, `SignatureDoesNotMatch`…) in `storeCode`.
 */
import type { SignatureV4 } from '@smithy/signature-v4';
import { DmaloadError } from '../../core/errors.js';
import { HttpObject, redact } from './http.js';
import type { HttpOptions } from './http.js';
import type { Resolved, SourceOptions } from './resolved.js';

/** S3's escaping of a key's path segments (RFC 3986: also ! ' ( ) *). */
function escapeKey(key: string): string {
  return key
    .split('/')
    .map((s) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`))
    .join('/');
}

/** `s3://BUCKET/KEY` → bucket and key (KEY may be empty or end in '/': a prefix). */
export function parseS3(ref: string): { bucket: string; key: string } {
  const m = /^s3:\/\/([^/]+)\/?(.*)$/i.exec(ref);
  if (!m || !/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(m[1]!)) {
    throw new DmaloadError('ERR_SOURCE_NOT_FOUND', `'${ref}' is not an s3://BUCKET/KEY reference (bucket names: 3-63 of a-z 0-9 . -)`, { path: ref });
  }
  return { bucket: m[1]!, key: m[2]! };
}

interface S3Context {
  region: string;
  endpoint: URL;
  pathStyle: boolean;
  signer: SignatureV4 | undefined;
}

/** The store's address for these options: the option, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS's. */
export function s3Endpoint(o: SourceOptions): { endpoint: URL; region: string; custom: boolean } {
  const region = o.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1';
  const custom = o.s3Endpoint ?? process.env.AWS_ENDPOINT_URL_S3 ?? process.env.AWS_ENDPOINT_URL;
  return { endpoint: new URL(custom ?? `https://s3.${region}.amazonaws.com`), region, custom: custom !== undefined };
}

async function context(o: SourceOptions): Promise<S3Context> {
  const { endpoint, region, custom: isCustom } = s3Endpoint(o);
  const custom = isCustom ? endpoint.href : undefined;
  let signer: SignatureV4 | undefined;
  if (!o.unsigned) {
    // The SDK's modules load on first use: local loads never pay for them.
    const [{ Hash }, { SignatureV4 }, { fromNodeProviderChain }] = await Promise.all([
      import('@smithy/hash-node'),
      import('@smithy/signature-v4'),
      import('@aws-sdk/credential-providers'),
    ]);
    const provider = fromNodeProviderChain();
    const creds = await provider().catch(() => undefined);
    // No credentials anywhere in the chain: unsigned requests (a public bucket); the store says if it is not.
    if (creds)
      signer = new SignatureV4({ service: 's3', region, credentials: provider, sha256: Hash.bind(null, 'sha256'), uriEscapePath: false, applyChecksum: false });
  }
  return { region, endpoint, pathStyle: o.pathStyle ?? custom !== undefined, signer };
}

/** The URL of a key (or of the bucket, for a listing). */
function urlOf(c: S3Context, bucket: string, key: string): URL {
  const u = new URL(c.endpoint.href);
  if (c.pathStyle) u.pathname = `${u.pathname.replace(/\/$/, '')}/${bucket}/${escapeKey(key)}`;
  else {
    u.hostname = `${bucket}.${u.hostname}`;
    u.pathname = `/${escapeKey(key)}`;
  }
  return u;
}

/** Signed headers for a GET of `u` (Range and If-Match are not signed: one signature serves every range). */
async function sign(c: S3Context, u: URL, extra: Record<string, string> = {}): Promise<Record<string, string>> {
  const headers: Record<string, string> = { host: u.host, 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD', ...extra };
  if (!c.signer) return headers;
  const query: Record<string, string> = {};
  u.searchParams.forEach((v, k) => (query[k] = v));
  const signed = await c.signer.sign({
    method: 'GET',
    protocol: u.protocol,
    hostname: u.hostname,
    ...(u.port ? { port: Number(u.port) } : {}),
    path: u.pathname,
    query,
    headers,
  });
  return signed.headers;
}

/**
 * Chunks for an object store: 8 MiB at first (the AWS SDKs' part size), growing to 32 MiB. Every GET costs the store
 * a signature check and a subrequest; against a local Swift, 1 MiB chunks growing to 16 MiB cost its proxy 1.5× the
 * CPU of 16–32 MiB ones and the load 1.4× the time (docs/benchmarks.md).
 */
const S3_CHUNKS = { min: 8 * 1024 * 1024, max: 32 * 1024 * 1024 };

/** An S3 object as an HTTP object: SigV4 headers renewed every four minutes (a signature lives fifteen). */
export async function resolveS3(ref: string, o: SourceOptions & { signal?: AbortSignal | undefined; onRetry?: HttpOptions['onRetry'] }): Promise<Resolved> {
  const { bucket, key } = parseS3(ref);
  if (key === '' || key.endsWith('/')) {
    throw new DmaloadError('ERR_SOURCE_NOT_FOUND', `'${ref}' names a prefix, not an object: add the object's name (loadModel and inspect take a prefix)`, {
      path: ref,
    });
  }
  const c = await context(o);
  const u = urlOf(c, bucket, key);
  const extra = { 'x-amz-checksum-mode': 'ENABLED' };
  const object = await HttpObject.open(u.href, { ...o, authorize: () => sign(c, u, extra), chunkRange: S3_CHUNKS });
  const b64 = object.info.meta['x-amz-checksum-sha256'];
  const type = object.info.meta['x-amz-checksum-type'];
  // A composite checksum (multipart uploads: "…-N", or type COMPOSITE) is not the object's SHA-256.
  const sha256 = b64 && !b64.includes('-') && type !== 'COMPOSITE' ? Buffer.from(b64, 'base64').toString('hex') : undefined;
  return { kind: 'http', object, display: ref, sha256: sha256?.length === 64 ? sha256 : undefined, sha256From: 'store' };
}

/** The keys under `s3://BUCKET/PREFIX/` (one level, ListObjectsV2), relative to the prefix. */
export async function listS3(ref: string, o: SourceOptions & { signal?: AbortSignal | undefined }): Promise<string[]> {
  const { bucket, key } = parseS3(ref);
  const prefix = key === '' || key.endsWith('/') ? key : `${key}/`;
  const c = await context(o);
  const names: string[] = [];
  let token: string | undefined;
  const { Agent } = await import('undici');
  const agent = new Agent({ headersTimeout: o.stallMs ?? 15_000, bodyTimeout: o.stallMs ?? 15_000 });
  try {
    do {
      const u = urlOf(c, bucket, '');
      u.searchParams.set('list-type', '2');
      u.searchParams.set('prefix', prefix);
      u.searchParams.set('delimiter', '/');
      if (token) u.searchParams.set('continuation-token', token);
      const res = await agent.request({ origin: u.origin, path: u.pathname + u.search, method: 'GET', headers: await sign(c, u), signal: o.signal ?? null });
      const text = await res.body.text();
      if (res.statusCode !== 200) throw s3Error(res.statusCode, text, `s3://${bucket}/${prefix}`);
      for (const m of text.matchAll(/<Key>([^<]*)<\/Key>/g)) names.push(unxml(m[1]!).slice(prefix.length));
      token = /<IsTruncated>true<\/IsTruncated>/.test(text) ? unxml(/<NextContinuationToken>([^<]*)</.exec(text)?.[1] ?? '') || undefined : undefined;
    } while (token);
  } finally {
    await agent.close().catch(() => {});
  }
  return names.filter((n) => n !== '' && !n.includes('/'));
}

function unxml(s: string): string {
  return s.replace(/&(lt|gt|amp|quot|apos);/g, (_, e: string) => ({ lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" })[e]!);
}

/** The coded error for a store's error answer, its own code kept. */
export function s3Error(status: number, body: string, ref: string): DmaloadError {
  const storeCode = /<Code>([^<]*)<\/Code>/.exec(body)?.[1];
  const auth = status === 401 || status === 403 || /AccessDenied|SignatureDoesNotMatch|InvalidAccessKeyId|ExpiredToken|InvalidToken/.test(storeCode ?? '');
  const missing = status === 404 || /NoSuchKey|NoSuchBucket/.test(storeCode ?? '');
  const code = auth ? 'ERR_SOURCE_AUTH' : missing ? 'ERR_SOURCE_NOT_FOUND' : 'ERR_SOURCE_HTTP';
  const hint = auth ? ': check the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID…) and the bucket policy' : missing ? ': check the bucket and the key' : '';
  return Object.assign(new DmaloadError(code, `'${redact(ref)}' answered ${status}${storeCode ? ` (${storeCode})` : ''}${hint}`, { path: ref }), {
    status,
    storeCode,
  });
}
