/**
 * References: what a caller may name instead of a path. One place turns a reference into a source — a local path
 * (a plain path, or a Hugging Face reference found in the local hub cache) or a network object (an http(s) URL, or
 * a hub reference resolved against HF_ENDPOINT) — so that load, loadRanges, loadModel, inspect, copy and verify
 * take all of them without a branch per scheme.
 *
 * - `/path/to/file` or `relative/path`: a file (as always).
 * - `http://…`, `https://…`: an object on a web server, read by ranged GETs (./http.ts).
 * - `hf://ORG/NAME[@REV]/FILE` (and `hf://datasets/…`, `hf://spaces/…`): a file of a Hugging Face repository
 *   (./hub.ts): the local hub cache first, then the hub.
 * Any other `scheme://` is ERR_SOURCE_SCHEME.
 */
import { DmaloadError } from '../../core/errors.js';
import { HttpObject, redact } from './http.js';
import type { HttpOptions } from './http.js';
import { resolveHubFile } from './hub.js';
import { resolveS3 } from './s3.js';
import type { Resolved, SourceOptions } from './resolved.js';

// resolved.ts holds the types so that hub.ts and s3.ts need not import this module; callers keep naming them here.
export type { HubInfo, Resolved, SourceOptions } from './resolved.js';

/** The schemes a reference may have. */
export const SCHEMES = ['http', 'https', 'hf', 's3'] as const;

/** Whether `s` names something other than a local path: it starts with `scheme://`. */
export function isReference(s: string): boolean {
  return /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\//.test(s);
}

/** ERR_SOURCE_SCHEME for a scheme dmaload does not read. */
export function checkScheme(ref: string): void {
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\//.exec(ref)?.[1]?.toLowerCase();
  if (scheme === undefined || (SCHEMES as readonly string[]).includes(scheme)) return;
  throw new DmaloadError(
    'ERR_SOURCE_SCHEME',
    `'${redact(ref)}': dmaload does not read ${scheme}:// references; it reads paths, ${SCHEMES.map((s) => `${s}://`).join(', ')}`,
    { path: redact(ref) },
  );
}

/**
 * Resolves `ref` to a local file or an opened network object. A path comes back as it is, unopened; the caller
 * closes an http object (`object.close()`).
 */
export async function resolveRef(
  ref: string,
  o: SourceOptions & {
    signal?: AbortSignal | undefined;
    onRetry?: HttpOptions['onRetry'];
    hubCache?: string | undefined;
    redirectAllowed?: HttpOptions['redirectAllowed'];
  } = {},
): Promise<Resolved> {
  if (!isReference(ref)) return { kind: 'file', path: ref };
  checkScheme(ref);
  const scheme = ref.slice(0, ref.indexOf(':')).toLowerCase();
  if (scheme === 'hf') return resolveHubFile(ref, o);
  if (scheme === 's3') return resolveS3(ref, o);
  const object = await HttpObject.open(ref, o);
  return { kind: 'http', object, display: redact(ref) };
}

/**
 * The reference of a file beside `ref` (a safetensors index's shard, a GGUF split): a path beside the path, a URL
 * relative to the URL, the same repository and commit for a hub reference. `name` must stay inside ref's folder.
 */
export function sibling(ref: string, name: string): string | undefined {
  if (name === '' || name.startsWith('/') || name.split('/').some((p) => p === '..' || p === '.' || p === '') || name.includes('\\')) return undefined;
  if (/^https?:\/\//i.test(ref)) {
    const u = new URL(ref);
    u.search = '';
    u.hash = '';
    const next = new URL(name.split('/').map(encodeURIComponent).join('/'), u);
    return next.href;
  }
  const cut = ref.lastIndexOf('/');
  return cut < 0 ? name : `${ref.slice(0, cut + 1)}${name}`;
}

/**
 * The error with a URL's secrets (user info, a signed query) taken out of its message and path: parsers name the
 * file they were given, which for a URL is the whole URL.
 */
export function scrubbed(e: unknown, ref: string): unknown {
  if (typeof ref !== 'string' || !/^https?:\/\//i.test(ref) || !(e instanceof Error)) return e;
  const shown = redact(ref);
  if (shown === ref) return e;
  const err = e as Error & { path?: string };
  err.message = err.message.split(ref).join(shown);
  if (typeof err.path === 'string') Object.defineProperty(err, 'path', { value: err.path.split(ref).join(shown) });
  return err;
}
