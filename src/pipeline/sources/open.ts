/**
 * Opening a reference for reading: a path (or a hub reference found in the local cache, or a URL found in a `cache`
 * folder) through the file policy of ../source.ts; a network object as an OpenedFile whose reads go through its
 * {@link RemoteReader} (fd -1), which with `cache` also writes what it fetches to a local copy that resumes
 * (./store.ts) and is put in place once complete and verified. Callers above the pipeline never learn which.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { promises as fsp } from 'node:fs';
import { openFile } from '../source.js';
import type { IoMode, OpenedFile, ReadIntoOptions, RemoteReader } from '../source.js';
import type { Region } from '../../engine/binding.js';
import { resolveRef } from './resolve.js';
import type { HubInfo, Resolved, SourceOptions } from './resolve.js';
import type { HttpObject, HttpOptions } from './http.js';
import { commitToCache, hubCacheDir, normalizeEtag, repoFolderName } from './hubref.js';
import { PartialStore, splitByHave } from './store.js';
import { s3Endpoint } from './s3.js';

/** An opened reference: the file policy's OpenedFile, and what the hub said when it came from one. */
export type OpenedRef = OpenedFile & { hub?: HubInfo | undefined };

/** The `cache` option: true (the hub cache for hf://, ~/.cache/dmaload for URLs), a folder, or false. */
export type CacheOption = boolean | string;

export interface OpenRefOptions extends SourceOptions {
  signal?: AbortSignal | undefined;
  onRetry?: HttpOptions['onRetry'];
  cache?: CacheOption | undefined;
  redirectAllowed?: HttpOptions['redirectAllowed'];
}

/** Where URLs are cached with `cache: true`: $XDG_CACHE_HOME/dmaload, else ~/.cache/dmaload. */
export function urlCacheDir(): string {
  return join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'dmaload');
}

/** A URL's folder in a cache: named by the SHA-256 of its scheme, host and path (a signed query does not name it). */
function urlEntry(dir: string, url: string, o: SourceOptions = {}): string {
  const u = new URL(url);
  // The same bucket and key on another store is another object: an s3:// key includes the store's address.
  if (u.protocol === 's3:')
    return join(
      dir,
      createHash('sha256')
        .update(`${s3Endpoint(o).endpoint.href}|s3://${u.host}${u.pathname}`)
        .digest('hex'),
    );
  // Not u.origin: it is 'null' for s3:// (a non-special scheme), which would mix buckets.
  return join(dir, createHash('sha256').update(`${u.protocol}//${u.host}${u.pathname}`).digest('hex'));
}

/**
 * Opens `ref` (a path, a URL, a hub reference). `io` applies to files; a network object's bytes never pass through
 * the page cache, whatever it says.
 */
export async function openRef(ref: string, io: IoMode, o: OpenRefOptions = {}): Promise<OpenedRef> {
  // A URL already in the cache folder is a local file (huggingface_hub's cache serves hub references the same way).
  if (o.cache && /^(https?|s3):\/\//i.test(ref)) {
    const data = join(urlEntry(typeof o.cache === 'string' ? o.cache : urlCacheDir(), ref, o), 'data');
    if (existsSync(data)) return openFile(data, 'read', io);
  }
  const cacheDir = typeof o.cache === 'string' ? o.cache : undefined;
  const r = await resolveRef(ref, { ...o, ...(cacheDir && ref.startsWith('hf://') ? { hubCache: cacheDir } : {}) });
  if (r.kind === 'file') return Object.assign(await openFile(r.path, 'read', io), { hub: r.hub });
  const obj = r.object;
  let store: PartialStore | undefined;
  try {
    const where = o.cache ? storeFor(r, ref, o.cache, o) : undefined;
    if (where) {
      const id = { size: obj.size, etag: obj.info.etag, lastModified: obj.info.lastModified, sha256: r.sha256 };
      store = await PartialStore.open(where.partial, `${where.partial}.json`, id);
    }
  } catch (e) {
    await obj.close();
    throw e;
  }
  const remote: RemoteReader = {
    readInto: store ? (region, segments, ro) => readThrough(obj, store, region, segments, ro) : (region, segments, ro) => obj.readInto(region, segments, ro),
    readBytes: (offset, length, signal) => obj.readBytes(offset, length, signal),
    sha256: r.sha256,
    ...(r.sha256From ? { sha256From: r.sha256From } : {}),
    stats: obj.stats,
    identity: JSON.stringify([obj.size, obj.info.etag ?? obj.info.weakEtag ?? null, obj.info.lastModified ?? null, r.sha256 ?? null, r.hub?.commit ?? null]),
    ...(store
      ? {
          wantsHash: true,
          discard: () => store.discard(),
          complete: async (sha256: string | undefined) => {
            const where = storeFor(r, ref, o.cache!, o)!;
            if (sha256 === undefined) return false;
            return store.commit((partial) => where.place(partial, sha256));
          },
        }
      : {}),
  };
  return {
    path: r.display,
    fd: -1,
    directFd: -1,
    direct: false,
    align: { memAlign: 0, offsetAlign: 0 },
    rwFlags: 0,
    size: obj.size,
    stat: undefined,
    fallbackReason: undefined,
    hub: r.hub,
    remote,
    close: async () => {
      await store?.close();
      await obj.close();
    },
  };
}

/** Reads what the local copy has from disk and the rest from the network, writing each fetched chunk to disk too. */
async function readThrough(obj: HttpObject, store: PartialStore, region: Region, segments: readonly number[], o: ReadIntoOptions): Promise<number> {
  const { local, remote } = splitByHave(segments, store.have);
  let localDone = 0;
  let netDone = 0;
  const report = o.onProgress && (() => o.onProgress!(localDone + netDone));
  const jobs = [
    local.length > 0
      ? store.readBack(region, local, { signal: o.signal, hash: o.hash, onProgress: report && ((b) => ((localDone = b), report())) })
      : undefined,
    remote.length > 0
      ? obj.readInto(region, remote, {
          ...o,
          onProgress: report && ((b) => ((netDone = b), report())),
          onPiece: (fileOffset, bufOffset, length) => store.write(region, bufOffset, fileOffset, length),
        })
      : undefined,
  ];
  const results = await Promise.allSettled(jobs.map((j) => j ?? Promise.resolve(0)));
  // The disk writes read from the region: they end before the region can be freed.
  await store.drain();
  const failed = results.find((x): x is PromiseRejectedResult => x.status === 'rejected');
  if (failed) throw failed.reason;
  return results.reduce((n, x) => n + (x.status === 'fulfilled' ? x.value : 0), 0);
}

/** Where a network object's local copy goes, and how it is put in place; undefined when it cannot be cached. */
function storeFor(
  r: Extract<Resolved, { kind: 'http' }>,
  ref: string,
  cache: CacheOption,
  o: SourceOptions,
): { partial: string; place(partial: string, sha256: string): Promise<void> } | undefined {
  if (r.hub) {
    const hub = r.hub;
    const etag = r.sha256 ?? (r.object.info.meta.etag ? normalizeEtag(r.object.info.meta.etag) : undefined);
    // Without the commit or the blob's name there is no place for it in huggingface_hub's layout.
    if (!hub.commit || !etag) return undefined;
    const cacheDir = typeof cache === 'string' ? cache : hubCacheDir();
    const partial = join(cacheDir, repoFolderName(hub.repoType, hub.repoId), 'blobs', `${etag}.dmaload-partial`);
    return {
      partial,
      place: async (tempFile) => {
        await commitToCache({
          cacheDir,
          repoType: hub.repoType,
          repoId: hub.repoId,
          revision: hub.revision,
          commit: hub.commit!,
          file: hub.file,
          etag,
          tempFile,
        });
      },
    };
  }
  const entry = urlEntry(typeof cache === 'string' ? cache : urlCacheDir(), ref, o);
  return {
    partial: join(entry, 'data.dmaload-partial'),
    place: async (tempFile, sha256) => {
      await fsp.writeFile(join(entry, 'meta.json'), JSON.stringify({ url: r.display, size: r.object.size, etag: r.object.info.etag, sha256 }));
      await fsp.rename(tempFile, join(entry, 'data'));
    },
  };
}
