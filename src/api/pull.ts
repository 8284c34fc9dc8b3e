/**
 * pull(): a Hugging Face repository (or the files of it a glob selects) into the local hub cache, exactly where
 * huggingface_hub puts them, so that it and transformers find them offline afterwards. Each file is fetched by the
 * network source with a local copy (load()'s `cache`): parallel ranged GETs, verified against the hub's SHA-256
 * while they arrive, put in place only once complete, resumed from what an interrupted pull left on disk. Files
 * already in the cache at that commit are not fetched again.
 */
import { DmaloadError, invalidType } from '../core/errors.js';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { COMMIT_HEX, hubCacheDir, parseHubRef, repoFolderName, resolveInCache } from '../pipeline/sources/hubref.js';
import { hubDisplay, listHubRepo } from '../pipeline/sources/hub.js';
import type { SourceOptions } from '../pipeline/sources/resolve.js';
import { load } from './load.js';
import { functionOption, optionNames, optionsObject, signalOption, sourceOption } from './options.js';

export interface PullOptions {
  /** Globs of the files to fetch (`*` within a folder, `**` across folders, `?` one character); default: all. */
  include?: string[];
  /** The hub cache to fill (default HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub). */
  cacheDir?: string;
  /** Files fetched at once (default 2): each is held in memory while it loads. */
  concurrency?: number;
  source?: SourceOptions;
  signal?: AbortSignal;
  /** Bytes of all selected files, fetched or found. */
  onProgress?: (p: { bytes: number; total: number; file: string }) => void;
}

export interface PullResult {
  repo: string;
  commit: string | undefined;
  cacheDir: string;
  files: Array<{ file: string; path: string | undefined; size: number; fetched: boolean; sha256: string | undefined }>;
}

const PULL_OPTIONS = optionNames<PullOptions>()(['include', 'cacheDir', 'concurrency', 'source', 'signal', 'onProgress']);

/** A glob as a RegExp over '/'-separated names. */
export function globToRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*' && glob[i + 1] === '*') {
      re += '.*';
      i++;
      if (glob[i + 1] === '/') i++;
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

/** Fetches a repository's files (or those `include` selects) into the hub cache. */
export async function pull(repo: string, options: PullOptions = {}): Promise<PullResult> {
  if (typeof repo !== 'string') throw invalidType('repo', 'an hf:// reference', repo);
  const o = optionsObject(options, PULL_OPTIONS, 'pull()');
  const source = sourceOption(o.source);
  const signal = signalOption(o.signal);
  const onProgress = functionOption<NonNullable<PullOptions['onProgress']>>('onProgress', o.onProgress);
  if (o.include !== undefined && (!Array.isArray(o.include) || o.include.some((g) => typeof g !== 'string'))) {
    throw invalidType('include', 'an array of glob strings', o.include);
  }
  const cacheDir = o.cacheDir ?? hubCacheDir();
  const concurrency = Math.max(1, Math.min(16, Math.trunc(Number(o.concurrency ?? 2)) || 2));
  const r = parseHubRef(repo);
  const listed = await listHubRepo(repo, { ...source, ...(signal ? { signal } : {}) }, undefined, cacheDir);
  const globs = (o.include ?? []).map(globToRegExp);
  const files = listed.files.filter((f) => globs.length === 0 || globs.some((g) => g.test(f)));
  if (files.length === 0) {
    throw new DmaloadError('ERR_SOURCE_NOT_FOUND', `'${hubDisplay(r)}' has no file that ${o.include ? `matches ${o.include.join(', ')}` : 'can be pulled'}`, {
      path: repo,
    });
  }
  // Pinned to the commit the listing came from: every file of one pull is of one commit.
  const at = { ...r, revision: listed.commit ?? r.revision };
  const out: PullResult['files'] = files.map((file) => ({ file, path: undefined, size: 0, fetched: false, sha256: undefined }));
  const done = new Map<string, number>();
  let total = 0;
  const report = (file: string) => onProgress?.({ bytes: [...done.values()].reduce((a, b) => a + b, 0), total, file });
  let next = 0;
  // The first failure stops the other files' loads.
  const ac = new AbortController();
  const stop = signal ? AbortSignal.any([signal, ac.signal]) : ac.signal;
  const fetchOne = async (i: number): Promise<void> => {
    const file = files[i]!;
    stop.throwIfAborted();
    const cached = await resolveInCache({ ...at, file }, cacheDir);
    if (cached?.found) {
      out[i] = { file, path: cached.path, size: cached.size, fetched: false, sha256: cached.sha256 };
      total += cached.size;
      done.set(file, cached.size);
      report(file);
      return;
    }
    let counted = false;
    const b = await load(hubDisplay(at, file), {
      cache: cacheDir,
      source,
      signal: stop,
      onProgress: (p) => {
        if (!counted) {
          counted = true;
          total += p.total;
        }
        done.set(file, p.bytes);
        report(file);
      },
    });
    try {
      const placed = await resolveInCache({ ...at, file }, cacheDir);
      out[i] = { file, path: placed?.found ? placed.path : undefined, size: b.size, fetched: true, sha256: b.stats.verified?.sha256 };
    } finally {
      b.close();
    }
  };
  const worker = async () => {
    while (next < files.length && !ac.signal.aborted) {
      try {
        await fetchOne(next++);
      } catch (e) {
        ac.abort(e);
        throw e;
      }
    }
  };
  // Every worker settles before pull() does (no load is left running); the first failure is the error.
  const settled = await Promise.allSettled(Array.from({ length: Math.min(concurrency, files.length) }, worker));
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  // The first real failure (the others are its AbortErrors).
  if (failed) throw ac.signal.aborted ? ac.signal.reason : failed.reason;
  // The files were fetched at the commit; the revision asked for (a branch, a tag) points to it, as after
  // huggingface_hub's snapshot_download, so that it finds them offline by that name.
  if (listed.commit && r.revision !== listed.commit && !COMMIT_HEX.test(r.revision)) {
    const ref = join(cacheDir, repoFolderName(r.repoType, r.repoId), 'refs', ...r.revision.split('/'));
    await mkdir(dirname(ref), { recursive: true });
    const tmp = `${ref}.${process.pid}.tmp`;
    await writeFile(tmp, listed.commit);
    await rename(tmp, ref);
  }
  return { repo: hubDisplay(r), commit: listed.commit, cacheDir, files: out };
}
