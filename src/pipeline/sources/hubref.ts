/**
 * Hugging Face hub references and the hub's local cache, laid out exactly as huggingface_hub lays it out, so that a
 * file either side put there is found by the other: huggingface_hub offline (`try_to_load_from_cache`,
 * `hf_hub_download(…, local_files_only=True)`, `snapshot_download(…, local_files_only=True)`, `scan_cache_dir`)
 * accepts what {@link commitToCache} writes, and {@link resolveInCache} finds what huggingface_hub downloaded.
 *
 * ```
 * <cache>/models--ORG--NAME/            (datasets--…, spaces--…; a legacy NAME without ORG: models--NAME)
 *   blobs/<etag>                        the bytes; <etag> is the sha256 (LFS files) or the git blob sha1
 *   snapshots/<commit>/<file>           a relative symlink: ../../blobs/<etag> (one more ../ per subfolder)
 *   refs/<revision>                     a branch or tag name → its commit (40 hex digits, no newline)
 *   .no_exist/<commit>/<file>           an empty file: the hub said <file> does not exist at <commit>
 * ```
 *
 * The references are huggingface_hub's `hf://` URIs (as `parse_hf_uri` and HfFileSystem read them); see
 * {@link parseHubRef}.
 */
import { randomBytes } from 'node:crypto';
import { constants as FS, promises as fsp } from 'node:fs';
import { userInfo } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { asSystemError, invalidValue } from '../../core/errors.js';

/** A hub repository's type: `hf://ORG/NAME` is a model, `hf://datasets/…` a dataset, `hf://spaces/…` a space. */
export type RepoType = 'model' | 'dataset' | 'space';

/** A parsed hub reference: a repository, a revision, and optionally a file in it. */
export interface HubRef {
  repoType: RepoType;
  /** `ORG/NAME`, or `NAME` for the legacy repositories that have no organisation (`gpt2`). */
  repoId: string;
  /** A branch, a tag, a 40-hex commit, or a special ref (`refs/pr/1`); 'main' when the reference names none. */
  revision: string;
  /** The path of a file in the repository, '/'-separated (absent: the reference names the repository). */
  file?: string;
}

/** What {@link parseHubRef} accepts, for messages. */
export const HUB_REF_SHAPE = 'hf://[datasets/|spaces/]ORG/NAME[@REV][/FILE] (or hf://NAME@REV/FILE for a legacy repository without ORG)';
/** What {@link parseBareRepo} accepts, for messages. */
export const BARE_REPO_SHAPE = '[datasets/|spaces/]ORG/NAME[@REV]';

const PREFIX = 'hf://';
/** A commit: what huggingface_hub's REGEX_COMMIT_HASH matches, and the only names {@link commitToCache} writes. */
export const COMMIT_HEX = /^[0-9a-f]{40}$/;
const SHA256_HEX = /^[0-9a-f]{64}$/;
const TYPE_PREFIXES: Readonly<Record<string, RepoType>> = { models: 'model', datasets: 'dataset', spaces: 'space' };
// huggingface_hub knows these too; the cache of neither is the one this module reads (buckets are not versioned).
const UNSUPPORTED_PREFIXES = new Set(['kernels', 'buckets']);
const SINGULAR = new Set(['model', 'dataset', 'space', 'kernel', 'bucket']);
// Refs that contain '/' which huggingface_hub takes literally after '@' (pull requests, conversions). Unlike
// huggingface_hub, the ref must end at a '/' or the end: 'refs/pr/10abc' is not 'refs/pr/10' and a file 'abc'.
const SPECIAL_REF = /^refs\/(?:convert\/[\w.-]+|pr\/\d+)(?=\/|$)/;
// huggingface_hub's validate_repo_id: ASCII word characters, '-' and '.', 1 to 96 of them, starting and ending with
// a word character; no '--' or '..' anywhere, no '.git' at the end.
const REPO_PART = /^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?$/;
// The blob names this module writes: ETags are hex digests on the hub; anything a mirror sends must at least be one
// harmless file name.
const ETAG_NAME = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}$/;

/**
 * Whether `s` is meant as a hub reference: it starts with `hf://`. Only the prefix is checked, so that a malformed
 * reference reaches {@link parseHubRef} and its error rather than being taken for a local path.
 */
export function isHubRef(s: unknown): s is string {
  return typeof s === 'string' && s.startsWith(PREFIX);
}

/**
 * Parses a hub reference, as huggingface_hub's `parse_hf_uri` (HfFileSystem's paths) reads it:
 *
 * `hf://[models/|datasets/|spaces/]ID[@REV][/FILE]`, ID being `ORG/NAME` or a legacy `NAME`.
 *
 * - Without `@`, the first two segments are the repository and the rest the file: `hf://gpt2/config.json` is the
 *   repository `gpt2/config.json`, as for the hub. A legacy `NAME` carries a file only after a revision:
 *   `hf://gpt2@main/config.json`.
 * - An `@` after at most one `/` starts the revision (a later one is part of a file name: `hf://o/n/a@b.txt`).
 *   REV ends at the next `/` and is then percent-decoded: a branch with a `/` is written `feature%2Fx`, a pull
 *   request `refs%2Fpr%2F1`. As in huggingface_hub, `refs/pr/N` and `refs/convert/NAME` are also taken literally.
 *   Without `@`, the revision is 'main'.
 * - FILE is taken literally (no percent-decoding, as huggingface_hub); `/` at either end of the reference is ignored.
 *
 * Type prefixes are plural (`model/…` is refused with a hint, as huggingface_hub does); `kernels/` and `buckets/`
 * are refused. Repository names follow huggingface_hub's `validate_repo_id`; a revision or file that could leave its
 * folder in the cache (an empty, `.` or `..` segment, a NUL or control character) is refused.
 *
 * @param name what the reference is called in the error (an option or argument name)
 * @throws TypeError ERR_INVALID_ARG_VALUE naming what is wrong and the expected shape ({@link HUB_REF_SHAPE})
 */
export function parseHubRef(ref: string, name = 'ref'): HubRef {
  const bad = (why: string): TypeError => invalidValue(name, ref, `is not a Hugging Face hub reference (${why}): expected ${HUB_REF_SHAPE}`);
  if (typeof ref !== 'string' || !ref.startsWith(PREFIX)) throw bad(`it must start with ${PREFIX}`);
  const body = ref.slice(PREFIX.length);
  if (body.replace(/^\/+|\/+$/g, '') === '') throw bad(`nothing after ${PREFIX}`);
  const { repoType, rest } = splitType(body, bad);
  const location = rest.replace(/^\/+|\/+$/g, '');
  if (location === '') throw bad('no repository after the type');

  let repoId: string;
  let revision: string | undefined;
  let file: string;
  const at = location.indexOf('@');
  if (at < 0 || countSlashes(location.slice(0, at)) > 1) {
    const parts = location.split('/');
    repoId = parts.length === 1 ? parts[0]! : `${parts[0]}/${parts[1]}`;
    file = parts.slice(2).join('/');
  } else {
    repoId = location.slice(0, at);
    if (repoId === '') throw bad("no repository before '@'");
    const revAndPath = location.slice(at + 1);
    const special = SPECIAL_REF.exec(revAndPath);
    const raw = special ? special[0] : revAndPath.split('/', 1)[0]!;
    file = revAndPath.slice(raw.length + 1);
    if (raw === '') throw bad("empty revision after '@'");
    revision = decodeRevision(raw, bad);
  }
  const out: HubRef = { repoType, repoId, revision: revision ?? 'main' };
  checkRepoId(repoId, bad);
  checkRevision(out.revision, bad);
  if (file !== '') {
    checkFile(file, bad);
    out.file = file;
  }
  return out;
}

/**
 * Parses the CLI's repository form `[datasets/|spaces/]ORG/NAME[@REV]` (no `hf://`, no file). REV is everything after
 * the `@`, percent-decoded; as nothing follows it, it may contain `/` as is (`org/name@refs/pr/1`). The repository
 * must have an ORG: a legacy repository without one is `hf://NAME`, which a local path cannot be mistaken for.
 *
 * @throws TypeError ERR_INVALID_ARG_VALUE naming what is wrong and the expected shape ({@link BARE_REPO_SHAPE})
 */
export function parseBareRepo(s: string, name = 'repo'): HubRef {
  const bad = (why: string): TypeError => invalidValue(name, s, `is not a Hugging Face repository (${why}): expected ${BARE_REPO_SHAPE}`);
  if (typeof s !== 'string' || s === '') throw bad('it is empty');
  if (s.startsWith(PREFIX)) throw bad(`a ${PREFIX} reference is parsed as one, not as a bare repository`);
  const at = s.indexOf('@');
  let repo = at < 0 ? s : s.slice(0, at);
  let repoType: RepoType = 'model';
  const first = repo.split('/', 1)[0]!;
  if (countSlashes(repo) === 2 && TYPE_PREFIXES[first] !== undefined) {
    repoType = TYPE_PREFIXES[first];
    repo = repo.slice(first.length + 1);
  }
  if (countSlashes(repo) !== 1) throw bad(`'${repo}' is not ORG/NAME`);
  checkRepoId(repo, bad);
  let revision = 'main';
  if (at >= 0) {
    const raw = s.slice(at + 1);
    if (raw === '') throw bad("empty revision after '@'");
    revision = decodeRevision(raw, bad);
  }
  checkRevision(revision, bad);
  return { repoType, repoId: repo, revision };
}

/**
 * The reference as {@link parseHubRef} reads it back (`parseHubRef(formatHubRef(r))` equals `r`): the type prefix
 * for datasets and spaces, `@REV` percent-encoded unless it is 'main' (kept when a legacy NAME carries a file).
 */
export function formatHubRef(ref: HubRef): string {
  const type = ref.repoType === 'model' ? '' : `${ref.repoType}s/`;
  const legacy = !ref.repoId.includes('/');
  const rev = ref.revision !== 'main' || (legacy && ref.file !== undefined) ? `@${encodeURIComponent(ref.revision)}` : '';
  return `${PREFIX}${type}${ref.repoId}${rev}${ref.file === undefined ? '' : `/${ref.file}`}`;
}

function splitType(body: string, bad: (why: string) => TypeError): { repoType: RepoType; rest: string } {
  const slash = body.indexOf('/');
  const first = slash < 0 ? body : body.slice(0, slash);
  if (TYPE_PREFIXES[first] !== undefined) {
    if (slash < 0) throw bad(`no repository after '${first}'`);
    return { repoType: TYPE_PREFIXES[first], rest: body.slice(slash + 1) };
  }
  if (UNSUPPORTED_PREFIXES.has(first)) throw bad(`${first} are not supported; models, datasets and spaces are`);
  if (SINGULAR.has(first)) throw bad(`the type prefix is plural: '${first}s/'`);
  return { repoType: 'model', rest: body };
}

function countSlashes(s: string): number {
  let n = 0;
  for (let i = s.indexOf('/'); i >= 0; i = s.indexOf('/', i + 1)) n++;
  return n;
}

function decodeRevision(raw: string, bad: (why: string) => TypeError): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw bad(`the revision '${raw}' has a malformed %-escape`);
  }
}

function checkRepoId(repoId: string, bad: (why: string) => TypeError): void {
  const parts = repoId.split('/');
  if (parts.length > 2 || !parts.every((p) => REPO_PART.test(p)))
    throw bad(`'${repoId}' is not a repository name: 1 to 96 of A-Z a-z 0-9 _ - . each side of one '/', starting and ending with a letter, digit or _`);
  if (repoId.includes('--') || repoId.includes('..')) throw bad(`'${repoId}' contains '--' or '..'`);
  if (repoId.endsWith('.git')) throw bad(`'${repoId}' ends with '.git'`);
}

// Characters no revision or file name in the cache may hold: NUL and the other C0 controls, DEL.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

/** A revision names a file under refs/ (and a commit a folder): no segment may climb out of it. */
function checkRevision(revision: string, bad: (why: string) => TypeError): void {
  if (CONTROL.test(revision)) throw bad('the revision contains a control character');
  if (revision.split('/').some((s) => s === '' || s === '.' || s === '..')) throw bad(`the revision '${revision}' has an empty, '.' or '..' segment`);
}

/** A file is joined onto snapshots/<commit>/: as huggingface_hub, refuse '..' (with either slash) and more. */
function checkFile(file: string, bad: (why: string) => TypeError): void {
  if (CONTROL.test(file)) throw bad('the file name contains a control character');
  if (file.split('/').some((s) => s === '' || s === '.') || file.split(/[/\\]/).includes('..'))
    throw bad(`the file '${file}' has an empty, '.' or '..' segment`);
}

/** Checks a reference built by hand (not by the parsers) before any of it becomes a path; `prefix` names its fields. */
function checkRef(ref: HubRef, prefix: string): void {
  const bad =
    (field: keyof HubRef, value: unknown) =>
    (why: string): TypeError =>
      invalidValue(`${prefix}${field}`, value, `cannot name a hub repository's file in the cache (${why})`);
  if (ref.repoType !== 'model' && ref.repoType !== 'dataset' && ref.repoType !== 'space')
    throw bad('repoType', ref.repoType)("it must be 'model', 'dataset' or 'space'");
  for (const field of ['repoId', 'revision', 'file'] as const)
    if (typeof ref[field] !== 'string' && (field !== 'file' || ref.file !== undefined)) throw bad(field, ref[field])('it must be a string');
  checkRepoId(ref.repoId, bad('repoId', ref.repoId));
  checkRevision(ref.revision, bad('revision', ref.revision));
  if (ref.file !== undefined) checkFile(ref.file, bad('file', ref.file));
}

// ---------------------------------------------------------------------------------------------------------------
// Where the cache is

/**
 * The hub cache folder, by huggingface_hub's precedence (its constants.py): `HF_HUB_CACHE`, else the legacy
 * `HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
 * `~/.cache/huggingface/hub`. As there, a variable that is set counts even when empty, and `~` and `$VAR` / `${VAR}`
 * are expanded (from `env`); unlike there, `~user` is expanded only for the current user. huggingface_hub's staging
 * mode (HUGGINGFACE_CO_STAGING) is not followed. The result is joined as Python joins (not normalised), so it
 * equals huggingface_hub's `constants.HF_HUB_CACHE` string for string.
 */
export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const expand = (p: string): string => expandVars(expandUser(p, env), env);
  const defaultHome = pyJoin(expandUser('~', env), '.cache');
  const hfHome = expand(env.HF_HOME ?? pyJoin(env.XDG_CACHE_HOME ?? defaultHome, 'huggingface'));
  return expand(env.HF_HUB_CACHE ?? env.HUGGINGFACE_HUB_CACHE ?? pyJoin(hfHome, 'hub'));
}

/**
 * Whether huggingface_hub runs offline: `HF_HUB_OFFLINE` (or, when that is unset or empty, `TRANSFORMERS_OFFLINE`)
 * is 1, ON, YES or TRUE in any case. A downloader honours it by reading only the cache.
 */
export function hubOffline(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env.HF_HUB_OFFLINE || env.TRANSFORMERS_OFFLINE;
  return v !== undefined && ['1', 'ON', 'YES', 'TRUE'].includes(v.toUpperCase());
}

/** Python's os.path.join of two parts: an absolute second part replaces the first; no normalisation. */
function pyJoin(a: string, b: string): string {
  if (b.startsWith('/')) return b;
  return a === '' || a.endsWith('/') ? a + b : `${a}/${b}`;
}

/** Python's posixpath.expanduser: `~` and `~/…` from HOME (else the password database); `~user` for this user only. */
function expandUser(p: string, env: NodeJS.ProcessEnv): string {
  if (!p.startsWith('~')) return p;
  let i = p.indexOf('/', 1);
  if (i < 0) i = p.length;
  let home: string;
  if (i === 1) {
    const h = env.HOME ?? safeUserInfo()?.homedir;
    if (h === undefined) return p; // no password entry either: Python leaves it as written
    home = h;
  } else {
    const me = safeUserInfo();
    if (!me || p.slice(1, i) !== me.username) return p;
    home = me.homedir;
  }
  return home.replace(/\/+$/, '') + p.slice(i) || '/';
}

function safeUserInfo(): { username: string; homedir: string } | undefined {
  try {
    return userInfo();
  } catch {
    return undefined; // a uid without a password entry
  }
}

/** Python's posixpath.expandvars: `$NAME` and `${NAME}` that are set are replaced; the rest stays as written. */
function expandVars(p: string, env: NodeJS.ProcessEnv): string {
  if (!p.includes('$')) return p;
  return p.replace(/\$([A-Za-z0-9_]+|\{[^}]*\})/g, (m, n: string) => {
    const key = n.startsWith('{') ? n.slice(1, -1) : n;
    // Own keys only: a plain object's inherited names ('constructor') are no variables.
    return Object.hasOwn(env, key) ? (env[key] ?? m) : m;
  });
}

/** The repository's folder in the cache: `models--ORG--NAME` (`datasets--…`, `spaces--…`), as huggingface_hub names it. */
export function repoFolderName(repoType: RepoType, repoId: string): string {
  return [`${repoType}s`, ...repoId.split('/')].join('--');
}

// ---------------------------------------------------------------------------------------------------------------
// Reading the cache

/** A file the cache holds. */
export interface CachedFile {
  found: true;
  /** The commit the revision resolved to. */
  commit: string;
  /** `snapshots/<commit>/<file>`: the path huggingface_hub returns for it (usually a symlink to the blob). */
  path: string;
  /** What that path points to, one link deep (`blobs/<etag>`), or the path itself when it is no symlink. */
  blobPath: string;
  /** The blob's name when it is a SHA-256 (an LFS file): what the bytes must hash to. */
  sha256: string | undefined;
  /** The file's size. */
  size: number;
}

/** A file the hub said does not exist at that commit (huggingface_hub's `.no_exist` marker, its `_CACHED_NO_EXIST`). */
export interface KnownMissing {
  found: false;
  commit: string;
  /** The marker: `.no_exist/<commit>/<file>`. */
  marker: string;
}

/**
 * The commit a reference's revision names in the cache and its snapshot folder: a 40-hex revision is the commit
 * itself (as `hf_hub_download` takes it); any other is looked up in `refs/<revision>` (a branch, tag or special
 * ref), whose content is the commit. Undefined when there is no such ref or no `snapshots/<commit>` folder.
 *
 * @throws a system error for a cache it may not read (EACCES); a missing one is undefined
 */
export async function resolveCommit(ref: HubRef, cacheDir: string): Promise<{ commit: string; snapshot: string } | undefined> {
  checkRef(ref, 'ref.');
  const repo = join(cacheDir, repoFolderName(ref.repoType, ref.repoId));
  const commit = await commitOf(repo, ref.revision);
  if (commit === undefined) return undefined;
  const snapshot = join(repo, 'snapshots', commit);
  const st = await fsp.stat(snapshot).catch(absent);
  return st?.isDirectory() ? { commit, snapshot } : undefined;
}

async function commitOf(repo: string, revision: string): Promise<string | undefined> {
  if (COMMIT_HEX.test(revision)) return revision;
  const path = join(repo, 'refs', revision);
  const text = await fsp.readFile(path, 'utf8').catch(absent);
  // huggingface_hub uses the content as it is (no strip): a ref it could not follow is not followed here either.
  if (text === undefined || text === '' || text === '.' || text === '..' || text.includes('/') || CONTROL.test(text)) return undefined;
  return text;
}

/** Undefined for what is not there (or not what was expected on the way); any other failure is thrown. */
function absent(e: unknown): undefined {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR' || code === 'ELOOP') return undefined;
  throw e;
}

/**
 * Finds a reference's file in the cache (`snapshots/<commit>/<file>`, a regular file or a symlink to one), as
 * `hf_hub_download(…, local_files_only=True)` would return it; else a `.no_exist` marker for it at that commit
 * (known missing: the hub said so); else undefined. Where a cache holds both (which huggingface_hub never writes),
 * the file wins. The blob's SHA-256 is reported when the blob is named by one.
 *
 * @throws TypeError ERR_INVALID_ARG_VALUE for a reference without a file (or an invalid one built by hand)
 */
export async function resolveInCache(ref: HubRef, cacheDir: string): Promise<CachedFile | KnownMissing | undefined> {
  if (ref.file === undefined) throw invalidValue('ref', formatHubRef(ref), 'names no file in the repository');
  checkRef(ref, 'ref.');
  const repo = join(cacheDir, repoFolderName(ref.repoType, ref.repoId));
  const commit = await commitOf(repo, ref.revision);
  if (commit === undefined) return undefined;
  const path = join(repo, 'snapshots', commit, ...ref.file.split('/'));
  const st = await fsp.stat(path).catch(absent);
  if (st?.isFile()) {
    const link = await fsp.readlink(path).catch((e: NodeJS.ErrnoException) => (e.code === 'EINVAL' ? undefined : Promise.reject(e)));
    // One hop, as scan_cache_dir counts it: a blob may itself link into huggingface_hub's shared store.
    const blobPath = link === undefined ? path : isAbsolute(link) ? link : join(path, '..', link);
    const blobs = join(repo, 'blobs');
    const name = blobPath.slice(blobs.length + 1);
    const sha256 = blobPath.startsWith(blobs + '/') && SHA256_HEX.test(name) ? name : undefined;
    return { found: true, commit, path, blobPath, sha256, size: st.size };
  }
  const marker = join(repo, '.no_exist', commit, ...ref.file.split('/'));
  const m = await fsp.stat(marker).catch(absent);
  return m?.isFile() ? { found: false, commit, marker } : undefined;
}

/**
 * The files of the snapshot a reference's revision resolves to (what `snapshot_download(…, local_files_only=True)`
 * returns the folder of), as sorted '/'-separated names relative to it; with a file in the reference, only those at
 * or under that path. Symlinks count when they lead to a regular file (a broken one is left out); folders that are
 * symlinks are not followed. Undefined when the revision is not in the cache.
 */
export async function listSnapshot(ref: HubRef, cacheDir: string): Promise<string[] | undefined> {
  const r = await resolveCommit(ref, cacheDir);
  if (!r) return undefined;
  const out: string[] = [];
  const walk = async (dir: string, prefix: string): Promise<void> => {
    const entries = await fsp.readdir(dir, { withFileTypes: true }).catch(absent);
    for (const e of entries ?? []) {
      const rel = prefix + e.name;
      if (e.isDirectory()) await walk(join(dir, e.name), `${rel}/`);
      else if (e.isFile() || (e.isSymbolicLink() && (await fsp.stat(join(dir, e.name)).catch(absent))?.isFile())) out.push(rel);
    }
  };
  await walk(r.snapshot, '');
  const under = ref.file;
  const files = under === undefined ? out : out.filter((f) => f === under || f.startsWith(`${under}/`));
  return files.sort();
}

// ---------------------------------------------------------------------------------------------------------------
// Writing the cache

/** Where one file of one commit goes in the cache. */
export interface CachePaths {
  /** The repository's folder: `<cache>/models--ORG--NAME`. */
  repo: string;
  /** `blobs/<etag>`: the bytes. */
  blob: string;
  /** `snapshots/<commit>/<file>`: the symlink to the blob. */
  snapshot: string;
  /** What the snapshot symlink holds: `../../blobs/<etag>`, with one more `../` per folder in the file's path. */
  linkTarget: string;
  /** `refs/<revision>`, when a revision other than the commit itself was given. */
  ref: string | undefined;
  /** `.no_exist/<commit>/<file>`: where huggingface_hub marks the file as known missing. */
  noExist: string;
  /**
   * A fresh temporary name beside the blob (`blobs/<etag>.<8 hex>.incomplete`, as huggingface_hub names its own) to
   * download into: on the blob's file system, so committing is a rename, and recognised by huggingface_hub's
   * `scan_cache_dir` (and `hf cache`) as a partial download to clean up if the process dies.
   */
  incomplete: string;
}

/**
 * An ETag as huggingface_hub turns it into a blob name: without a weak `W/` prefix and without quotes. For an LFS
 * file it is the file's SHA-256, for a file stored in git the git blob SHA-1.
 */
export function normalizeEtag(etag: string): string {
  return etag.replace(/^W\//, '').replace(/^"+|"+$/g, '');
}

/**
 * The paths of one file in the cache (nothing is touched). `commit` must be 40 hex digits (the only snapshot names
 * huggingface_hub resolves offline); `etag` is normalised ({@link normalizeEtag}) and must then be a plain file
 * name; `file` and `revision` are checked as {@link parseHubRef} checks them, so no name from a hub can climb out of
 * the repository's folder.
 *
 * @throws TypeError ERR_INVALID_ARG_VALUE for a value that cannot be a cache path
 */
export function cachePaths(cacheDir: string, repoType: RepoType, repoId: string, commit: string, file: string, etag: string, revision?: string): CachePaths {
  if (typeof file !== 'string' || file === '') throw invalidValue('file', file, 'must be the path of a file in the repository');
  if (typeof commit !== 'string' || !COMMIT_HEX.test(commit)) throw invalidValue('commit', commit, 'must be a commit hash: 40 lowercase hex digits');
  checkRef({ repoType, repoId, revision: revision ?? commit, file }, '');
  const name = typeof etag === 'string' ? normalizeEtag(etag) : '';
  if (!ETAG_NAME.test(name) || name.endsWith('.incomplete')) throw invalidValue('etag', etag, 'must be an ETag that names a blob (a SHA-256 or git SHA-1)');
  const repo = join(cacheDir, repoFolderName(repoType, repoId));
  const parts = file.split('/');
  return {
    repo,
    blob: join(repo, 'blobs', name),
    snapshot: join(repo, 'snapshots', commit, ...parts),
    linkTarget: `${'../'.repeat(parts.length + 1)}blobs/${name}`,
    ref: revision === undefined || revision === commit ? undefined : join(repo, 'refs', ...revision.split('/')),
    noExist: join(repo, '.no_exist', commit, ...parts),
    incomplete: join(repo, 'blobs', `${name}.${randomBytes(4).toString('hex')}.incomplete`),
  };
}

/** What {@link commitToCache} puts in the cache. */
export interface CommitToCacheOptions {
  cacheDir: string;
  repoType: RepoType;
  repoId: string;
  /** The revision asked for (a branch, tag or the commit itself): a ref is written unless it is the commit. */
  revision: string;
  /** The commit the hub resolved it to (its X-Repo-Commit). */
  commit: string;
  /** The file's path in the repository. */
  file: string;
  /** The file's ETag (X-Linked-Etag, else ETag): its blob's name. */
  etag: string;
  /** The fully written and verified file, best on the cache's file system ({@link CachePaths.incomplete}). */
  tempFile: string;
  /**
   * The blob's permissions. Default: huggingface_hub's choice, those of a new file in the blobs folder (0666 less
   * the umask), so a cache shared by a group stays readable by it whatever mode the download was written with.
   */
  mode?: number;
  /** fsync the blob before it gets its name, and each folder after a name changes in it (default true). */
  sync?: boolean;
}

/**
 * Moves a downloaded file into the cache as huggingface_hub would have put it, each step atomic, in an order that
 * leaves no reader a name that leads nowhere:
 * 1. `tempFile` is renamed to `blobs/<etag>` (replacing an older copy of the same bytes; across file systems it is
 *    copied to a temporary beside the blob first);
 * 2. `snapshots/<commit>/<file>` becomes a relative symlink to it (made under a temporary name, then renamed over);
 * 3. `refs/<revision>` gets the commit (no newline, as huggingface_hub writes it; unchanged refs are not rewritten,
 *    for a read-only cache that is already right), through a temporary file and a rename.
 * A stale `.no_exist` marker for the file at that commit is removed, and the cache folder gets huggingface_hub's
 * CACHEDIR.TAG if it has none (both best effort). Folders are created as needed.
 *
 * @returns the file's paths in the cache
 * @throws TypeError ERR_INVALID_ARG_VALUE (see {@link cachePaths}); a system error when a step fails (the cache
 *   then lacks the file, or has the blob without the symlink, which the next commit completes)
 */
export async function commitToCache(o: CommitToCacheOptions): Promise<CachePaths> {
  const p = cachePaths(o.cacheDir, o.repoType, o.repoId, o.commit, o.file, o.etag, o.revision);
  const sync = o.sync ?? true;
  const blobs = join(p.repo, 'blobs');
  const snapDir = join(p.snapshot, '..');
  await step(blobs, () => fsp.mkdir(blobs, { recursive: true }));
  await step(snapDir, () => fsp.mkdir(snapDir, { recursive: true }));

  // 1. The blob.
  const st = await step(o.tempFile, () => fsp.lstat(o.tempFile));
  if (!st.isFile()) throw invalidValue('tempFile', o.tempFile, 'must be a regular file');
  const mode = o.mode ?? (await freshFileMode(blobs));
  if (mode !== undefined && (st.mode & 0o7777) !== mode) await step(o.tempFile, () => fsp.chmod(o.tempFile, mode));
  if (sync) await fsyncPath(o.tempFile, 'r');
  try {
    await fsp.rename(o.tempFile, p.blob);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw asSystemError(e, p.blob);
    await copyAcross(o.tempFile, p.blob, sync);
  }
  if (sync) await fsyncPath(blobs, 'r');

  // 2. The snapshot's symlink.
  await replaceAtomically(p.snapshot, (tmp) => fsp.symlink(p.linkTarget, tmp));
  if (sync) await fsyncPath(snapDir, 'r');
  await fsp.unlink(p.noExist).catch(() => {});

  // 3. The ref, last: a reader that follows it finds the snapshot's file already there.
  if (p.ref !== undefined) {
    const ref = p.ref;
    const current = await fsp.readFile(ref, 'utf8').catch(() => undefined);
    if (current !== o.commit) {
      const refDir = join(ref, '..');
      await step(refDir, () => fsp.mkdir(refDir, { recursive: true }));
      await replaceAtomically(ref, async (tmp) => {
        const fh = await fsp.open(tmp, 'wx', 0o666);
        try {
          await fh.writeFile(o.commit);
          if (sync) await fh.sync();
        } finally {
          await fh.close();
        }
      });
      if (sync) await fsyncPath(refDir, 'r');
    }
  }
  await writeCachedirTag(o.cacheDir);
  return p;
}

/** Runs one file system step; its failure becomes dmaload's system error naming `path`. */
async function step<T>(path: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw asSystemError(e, path);
  }
}

/** A hidden temporary name beside `path`, as destination.ts names them (`.NAME.dmaload-PID-RANDOM.tmp`). */
function tempBeside(path: string): string {
  return join(path, '..', `.${path.slice(path.lastIndexOf('/') + 1)}.dmaload-${process.pid}-${randomBytes(4).toString('hex')}.tmp`);
}

/** Makes `path` with `make(tmp)` under a temporary name, then renames it over `path`; the temporary never stays. */
async function replaceAtomically(path: string, make: (tmp: string) => Promise<void>): Promise<void> {
  const tmp = tempBeside(path);
  try {
    await step(tmp, () => make(tmp));
    await step(path, () => fsp.rename(tmp, path));
  } catch (e) {
    await fsp.unlink(tmp).catch(() => {});
    throw e;
  }
}

/** The blob lands on another file system than the download: copy beside it, then rename (never a torn blob). */
async function copyAcross(from: string, to: string, sync: boolean): Promise<void> {
  await replaceAtomically(to, async (tmp) => {
    await fsp.copyFile(from, tmp, FS.COPYFILE_FICLONE);
    if (sync) await fsyncPath(tmp, 'r');
  });
  await fsp.unlink(from).catch(() => {});
}

/** The mode a new file gets in `dir` (0666 less the umask), found as huggingface_hub finds it: by making one. */
async function freshFileMode(dir: string): Promise<number | undefined> {
  const probe = tempBeside(join(dir, 'mode-probe'));
  try {
    const fh = await fsp.open(probe, 'wx', 0o666);
    try {
      return (await fh.stat()).mode & 0o777;
    } finally {
      await fh.close();
      await fsp.unlink(probe).catch(() => {});
    }
  } catch {
    return undefined; // as huggingface_hub: keep the file's own mode
  }
}

async function fsyncPath(path: string, flags: string): Promise<void> {
  await step(path, async () => {
    const fh = await fsp.open(path, flags);
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  });
}

/** The Cache Directory Tagging Standard's tag huggingface_hub puts in the cache folder (backup tools skip it). */
const CACHEDIR_TAG =
  'Signature: 8a477f597d28d172789f06886806bc55\n' +
  '# This file is a cache directory tag created by huggingface_hub.\n' +
  '# For information about cache directory tags, see:\n' +
  '#\thttps://bford.info/cachedir/\n';

async function writeCachedirTag(cacheDir: string): Promise<void> {
  await fsp.writeFile(join(cacheDir, 'CACHEDIR.TAG'), CACHEDIR_TAG, { flag: 'wx' }).catch(() => {});
}
