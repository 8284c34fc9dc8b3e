/**
 * Hugging Face references, resolved the way huggingface_hub resolves them: the local hub cache first (HF_HUB_CACHE,
 * HF_HOME, ~/.cache/huggingface/hub; refs, snapshots and blobs as it lays them out), then the hub itself (HF_ENDPOINT,
 * default https://huggingface.co) through `/{repo}/resolve/{revision}/{file}`, whose answer (on its redirect) names
 * the commit (`X-Repo-Commit`), the LFS file's SHA-256 (`X-Linked-Etag`) and its size (`X-Linked-Size`). The SHA-256
 * becomes the load's expected hash; the size must match; the commit pins the rest of a sharded model.
 *
 * The hub's own JS library (@huggingface/hub) was read for this: it resolves through the same endpoint, but it
 * downloads through fetch() into a Blob (the whole file in memory) and has no cache of huggingface_hub's layout to
 * read; dmaload needs the opposite (ranged reads placed into its own memory, the cache read first), so the few
 * lines of resolution are written here against the hub's documented HTTP answers instead.
 */
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { DmaloadError } from '../../core/errors.js';
import { HttpObject, redact } from './http.js';
import { formatHubRef, hubCacheDir, hubOffline, listSnapshot, parseHubRef, resolveCommit, resolveInCache } from './hubref.js';
import type { HubRef } from './hubref.js';
import type { Resolved, SourceOptions } from './resolved.js';

/** The hub's address: the option, else HF_ENDPOINT, else the public hub; without a trailing slash. */
export function hubEndpoint(o: SourceOptions = {}): string {
  return (o.endpoint ?? process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
}

/** The token: the option, else HF_TOKEN, else the file huggingface_hub's login writes (HF_TOKEN_PATH, HF_HOME/token). */
export async function hubToken(o: SourceOptions = {}): Promise<string | undefined> {
  if (o.token !== undefined) return o.token || undefined;
  if (process.env.HF_TOKEN) return process.env.HF_TOKEN;
  const file = process.env.HF_TOKEN_PATH ?? join(process.env.HF_HOME ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'huggingface'), 'token');
  const t = await readFile(file, 'utf8').catch(() => '');
  return t.trim() || undefined;
}

/** HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE, as huggingface_hub reads them. */
const offline = () => hubOffline();

/** The repository's path on the hub: `ORG/NAME`, `datasets/ORG/NAME`, `spaces/ORG/NAME`. */
function repoPath(r: HubRef): string {
  return r.repoType === 'model' ? r.repoId : `${r.repoType}s/${r.repoId}`;
}

/** A display form of a hub file: `hf://ORG/NAME@REV/FILE`. */
export function hubDisplay(r: HubRef, file = r.file): string {
  return formatHubRef({ repoType: r.repoType, repoId: r.repoId, revision: r.revision, ...(file === undefined ? {} : { file }) });
}

/** Resolves `hf://…/FILE` to the cached file, or opens it on the hub with its promised SHA-256 and size. */
export async function resolveHubFile(
  ref: string,
  o: SourceOptions & { signal?: AbortSignal | undefined; hubCache?: string | undefined } = {},
): Promise<Resolved> {
  const r = parseHubRef(ref);
  if (!r.file) {
    throw new DmaloadError('ERR_SOURCE_NOT_FOUND', `'${ref}' names a repository, not a file: add the file (hf://${repoPath(r)}/model.safetensors)`, {
      path: ref,
    });
  }
  const hub = { repoType: r.repoType, repoId: r.repoId, revision: r.revision, file: r.file };
  const cacheDir = o.hubCache ?? hubCacheDir();
  const hit = await resolveInCache(r, cacheDir);
  if (hit?.found) return { kind: 'file', path: hit.path, hub: { ...hub, commit: hit.commit } };
  // huggingface_hub's marker: the hub said at this commit that the file does not exist.
  if (hit && !hit.found && (r.revision === hit.commit || offline())) {
    throw new DmaloadError('ERR_SOURCE_NOT_FOUND', `'${hubDisplay(r)}' does not exist at commit ${hit.commit} (the hub cache's .no_exist marker)`, {
      path: ref,
    });
  }
  if (offline()) {
    throw new DmaloadError('ERR_SOURCE_OFFLINE', `'${hubDisplay(r)}' is not in the hub cache (${cacheDir}) and HF_HUB_OFFLINE is set`, { path: ref });
  }
  const token = await hubToken(o);
  const url = `${hubEndpoint(o)}/${repoPath(r)}/resolve/${encodeURIComponent(r.revision)}/${r.file.split('/').map(encodeURIComponent).join('/')}`;
  const object = await HttpObject.open(url, { ...o, headers: { ...(o.headers ?? {}), ...(token ? { authorization: `Bearer ${token}` } : {}) } });
  const meta = object.info.meta;
  const linked = meta['x-linked-etag']?.replace(/^W\//, '').replace(/"/g, '').toLowerCase();
  const sha256 = linked && /^[0-9a-f]{64}$/.test(linked) ? linked : undefined;
  const size = meta['x-linked-size'];
  if (size !== undefined && Number(size) !== object.size) {
    await object.close();
    throw new DmaloadError(
      'ERR_SOURCE_SIZE_MISMATCH',
      `'${hubDisplay(r)}': the hub promised ${size} bytes (X-Linked-Size) but its file has ${object.size}; try again later`,
      { path: ref },
    );
  }
  return { kind: 'http', object, display: hubDisplay(r), sha256, hub: { ...hub, commit: meta['x-repo-commit'] } };
}

/**
 * The files of a repository at a revision, and the commit: from the cache's snapshot when the revision is there,
 * else from the hub's API (`/api/{models,datasets,spaces}/{repo}/revision/{rev}`).
 */
export async function listHubRepo(
  ref: string,
  o: SourceOptions & { signal?: AbortSignal | undefined } = {},
  enough?: (files: readonly string[]) => boolean,
  cacheDir?: string,
): Promise<{ ref: HubRef; commit: string | undefined; files: string[] }> {
  const r = parseHubRef(ref);
  const cache = cacheDir ?? hubCacheDir();
  // A snapshot in the cache may hold only some files (a config a tool fetched): online, the hub's listing is the
  // truth, unless the cached one has what `enough` looks for; the cache answers offline, or when the hub is out of reach.
  const fromCache = async () => {
    const files = await listSnapshot({ repoType: r.repoType, repoId: r.repoId, revision: r.revision }, cache);
    return files && files.length > 0 ? { ref: r, commit: (await resolveCommit(r, cache))?.commit, files } : undefined;
  };
  if (offline() || enough) {
    const cached = await fromCache();
    // Online, a cached listing is used only when it has what the caller looks for (a model).
    if (cached && (offline() || enough!(cached.files))) return cached;
  }
  if (offline()) {
    throw new DmaloadError('ERR_SOURCE_OFFLINE', `'${hubDisplay(r)}' is not in the hub cache (${cache}) and HF_HUB_OFFLINE is set`, { path: ref });
  }
  const token = await hubToken(o);
  const url = `${hubEndpoint(o)}/api/${r.repoType}s/${r.repoId}/revision/${encodeURIComponent(r.revision)}`;
  let body: unknown;
  try {
    body = await getJson(url, token, o);
  } catch (e) {
    // The hub out of reach (not an answer of it): what the cache has.
    const cached = !(e instanceof DmaloadError) || e.code === 'ERR_SOURCE_NETWORK' ? await fromCache() : undefined;
    if (cached) return cached;
    throw e;
  }
  const siblings = (body as { siblings?: unknown }).siblings;
  const sha = (body as { sha?: unknown }).sha;
  if (!Array.isArray(siblings)) throw new DmaloadError('ERR_SOURCE_PROTOCOL', `'${redact(url)}' did not list the repository's files`, { path: redact(url) });
  const names = siblings.map((s: { rfilename?: unknown }) => s.rfilename).filter((f): f is string => typeof f === 'string');
  return { ref: r, commit: typeof sha === 'string' ? sha : undefined, files: names };
}

/** A small JSON document from the hub (a repository's file list): bounded, with the token, errors coded. */
async function getJson(url: string, token: string | undefined, o: SourceOptions & { signal?: AbortSignal | undefined }): Promise<unknown> {
  const ca = o.ca ? { connect: { ca: typeof o.ca === 'string' ? o.ca : o.ca.toString('utf8') } } : {};
  const { Agent } = await import('undici');
  const agent = new Agent({ headersTimeout: o.stallMs ?? 15_000, bodyTimeout: o.stallMs ?? 15_000, ...ca });
  try {
    const u = new URL(url);
    const res = await agent.request({
      origin: u.origin,
      path: u.pathname + u.search,
      method: 'GET',
      headers: { accept: 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      signal: o.signal ?? null,
    });
    const text = await res.body.text();
    if (res.statusCode !== 200) {
      const code = res.headers['x-error-code'];
      const hub = typeof code === 'string' ? ` (${code})` : '';
      if (res.statusCode === 404)
        throw new DmaloadError('ERR_SOURCE_NOT_FOUND', `'${redact(url)}' answered 404${hub}: no such repository or revision`, { path: redact(url) });
      if (res.statusCode === 401 || res.statusCode === 403) {
        const why = token ? 'a token was sent and refused' : 'no token was sent: set HF_TOKEN';
        throw new DmaloadError('ERR_SOURCE_AUTH', `'${redact(url)}' answered ${res.statusCode}${hub}: not authorized (${why})`, { path: redact(url) });
      }
      throw Object.assign(new DmaloadError('ERR_SOURCE_HTTP', `'${redact(url)}' answered ${res.statusCode}${hub}`, { path: redact(url) }), {
        status: res.statusCode,
      });
    }
    if (text.length > 64 * 1024 * 1024) throw new DmaloadError('ERR_SOURCE_PROTOCOL', `'${redact(url)}' answered a listing over 64 MiB`, { path: redact(url) });
    try {
      return JSON.parse(text) as unknown;
    } catch {
      throw new DmaloadError('ERR_SOURCE_PROTOCOL', `'${redact(url)}' did not answer JSON`, { path: redact(url) });
    }
  } finally {
    await agent.close().catch(() => {});
  }
}
