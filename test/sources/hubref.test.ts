/**
 * Hub references and the Hugging Face hub cache (src/pipeline/sources/hubref.ts), with huggingface_hub itself as the
 * oracle: a cache commitToCache() wrote is read by huggingface_hub offline (try_to_load_from_cache, hf_hub_download
 * and snapshot_download with local_files_only, scan_cache_dir), and a cache huggingface_hub wrote (hf_hub_download
 * against a fake hub served here) is read by resolveInCache() and listSnapshot(); hubCacheDir() equals its
 * constants.HF_HUB_CACHE under every environment tried, and parseHubRef() its parse_hf_uri() where it has one.
 * The interpreter is DMALOAD_PYTHON (default python3); where it lacks huggingface_hub those tests skip saying so,
 * and fail where DMALOAD_PYTHON_REQUIRED is set (CI).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, readdirSync, mkdtempSync, readFileSync, readlinkSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import type { TestContext } from 'node:test';
import {
  cachePaths,
  commitToCache,
  formatHubRef,
  hubCacheDir,
  hubOffline,
  isHubRef,
  listSnapshot,
  normalizeEtag,
  parseBareRepo,
  parseHubRef,
  repoFolderName,
  resolveCommit,
  resolveInCache,
} from '../../src/pipeline/sources/hubref.js';
import type { CachedFile, HubRef, RepoType } from '../../src/pipeline/sources/hubref.js';
import { seededBytes, sha256 } from '../helpers.js';

// realpath: huggingface_hub before 1.x reports blob paths resolved; a /tmp behind a symlink would differ.
const dir = realpathSync(mkdtempSync(join(tmpdir(), 'dmaload-hubref-')));
after(() => rmSync(dir, { recursive: true, force: true }));

const VALUE = { name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' };
const C1 = '1111111111111111111111111111111111111111';
const C2 = '2222222222222222222222222222222222222222';
const C3 = 'abcdef0123456789abcdef0123456789abcdef01';

/** The git blob SHA-1 the hub sends as the ETag of a file stored in git. */
function gitSha1(bytes: Uint8Array): string {
  return createHash('sha1').update(`blob ${bytes.length}\0`).update(bytes).digest('hex');
}

// ---------------------------------------------------------------------------------------------------------------
// Python with huggingface_hub

const PYTHON = process.env.DMALOAD_PYTHON || 'python3';

/** A copy of this environment for Python: no sanitizer runtime preloaded, no proxy, huggingface_hub quiet. */
function pyEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of Object.keys(env)) if (/^(https?|all|no)_proxy$/i.test(k) || /^(HF_|HUGGINGFACE_|TRANSFORMERS_OFFLINE$)/.test(k)) delete env[k];
  const preload = env.LD_PRELOAD?.split(/[\s:]+/).filter((l) => l && !/lib(a|ub)san\.so/.test(l));
  if (preload?.length) env.LD_PRELOAD = preload.join(' ');
  else delete env.LD_PRELOAD;
  Object.assign(env, {
    HF_HOME: join(dir, 'hf-home'),
    HF_HUB_DISABLE_TELEMETRY: '1',
    HF_HUB_DISABLE_UPDATE_CHECK: '1',
    HF_HUB_DISABLE_PROGRESS_BARS: '1',
    HF_HUB_DISABLE_XET: '1',
    NO_PROXY: '*',
    no_proxy: '*',
  });
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

/** huggingface_hub's version, or why the oracle cannot run here. */
const hf: { version: string; missing: undefined } | { version: undefined; missing: string } = (() => {
  const r = spawnSync(PYTHON, ['-c', 'import huggingface_hub; print(huggingface_hub.__version__)'], { encoding: 'utf8', env: pyEnv() });
  if (r.error)
    return { missing: `${PYTHON} is not installed (${(r.error as NodeJS.ErrnoException).code}); set DMALOAD_PYTHON to a Python with huggingface_hub` };
  if (r.status !== 0)
    return { missing: `${PYTHON} cannot import huggingface_hub (pip install huggingface_hub, or set DMALOAD_PYTHON): ${r.stderr.trim().split('\n').at(-1)}` };
  return { version: r.stdout.trim(), missing: undefined };
})();

/** Skips the test (failing it where DMALOAD_PYTHON_REQUIRED is set) when there is no huggingface_hub. */
function needsHf(t: TestContext): boolean {
  if (hf.missing === undefined) return true;
  if (process.env.DMALOAD_PYTHON_REQUIRED) assert.fail(`DMALOAD_PYTHON_REQUIRED is set but: ${hf.missing}`);
  t.skip(hf.missing);
  return false;
}

/** The oracle: one Python run that answers the requests in `req` (see the script) with JSON. */
const ORACLE = String.raw`
import hashlib, importlib, json, os, sys
req = json.load(sys.stdin)
out = {}

def sha(p):
    h = hashlib.sha256()
    with open(p, 'rb') as f:
        for b in iter(lambda: f.read(1 << 20), b''):
            h.update(b)
    return h.hexdigest()

def err(e):
    return {'error': type(e).__name__, 'message': str(e)[:400]}

if 'env_cases' in req:
    import huggingface_hub.constants as constants
    res = []
    for case in req['env_cases']:
        os.environ.clear()
        os.environ.update(case)
        importlib.reload(constants)
        res.append({'cache': constants.HF_HUB_CACHE, 'offline': constants.HF_HUB_OFFLINE})
    out['env_cases'] = res
    print(json.dumps(out))
    sys.exit(0)

import huggingface_hub as hh
from huggingface_hub import file_download as fd
C = req.get('cache_dir')

if 'uris' in req:
    try:
        from huggingface_hub.utils._hf_uris import parse_hf_uri
    except ImportError:
        out['uris'] = None
    else:
        res = []
        for u in req['uris']:
            try:
                p = parse_hf_uri(u)
                res.append({'type': p.type, 'id': p.id, 'revision': p.revision, 'path': p.path_in_repo})
            except Exception as e:
                res.append(err(e))
        out['uris'] = res

if 'folder_names' in req:
    out['folder_names'] = [fd.repo_folder_name(repo_id=q['repo_id'], repo_type=q['repo_type']) for q in req['folder_names']]

if 'downloads' in req:
    res = []
    for q in req['downloads']:
        try:
            res.append({'path': hh.hf_hub_download(q['repo_id'], q['filename'], repo_type=q['repo_type'], revision=q['revision'], cache_dir=C)})
        except Exception as e:
            res.append(err(e))
    out['downloads'] = res

if 'files' in req:
    res = []
    for q in req['files']:
        r = {}
        t = hh.try_to_load_from_cache(q['repo_id'], q['filename'], cache_dir=C, revision=q['revision'], repo_type=q['repo_type'])
        r['try'] = 'NO_EXIST' if t is fd._CACHED_NO_EXIST else t
        try:
            p = hh.hf_hub_download(q['repo_id'], q['filename'], repo_type=q['repo_type'], revision=q['revision'], cache_dir=C, local_files_only=True)
            r['download'] = {'path': p, 'sha256': sha(p)}
        except Exception as e:
            r['download'] = err(e)
        res.append(r)
    out['files'] = res

if 'snapshots' in req:
    res = []
    for q in req['snapshots']:
        try:
            p = hh.snapshot_download(q['repo_id'], repo_type=q['repo_type'], revision=q['revision'], cache_dir=C, local_files_only=True)
            files = sorted(os.path.relpath(os.path.join(d, f), p).replace(os.sep, '/') for d, _, fs in os.walk(p) for f in fs)
            res.append({'path': p, 'files': files})
        except Exception as e:
            res.append(err(e))
    out['snapshots'] = res

if req.get('scan'):
    info = hh.scan_cache_dir(C)
    repos = []
    for repo in sorted(info.repos, key=lambda r: (r.repo_type, r.repo_id)):
        revs = []
        for rev in sorted(repo.revisions, key=lambda r: r.commit_hash):
            files = sorted(
                ({'name': os.path.relpath(str(f.file_path), str(rev.snapshot_path)).replace(os.sep, '/'), 'blob': str(f.blob_path), 'size': f.size_on_disk} for f in rev.files),
                key=lambda f: f['name'],
            )
            revs.append({'commit': rev.commit_hash, 'refs': sorted(rev.refs), 'files': files})
        repos.append({'repo_id': repo.repo_id, 'repo_type': repo.repo_type, 'revisions': revs})
    out['scan'] = {'repos': repos, 'warnings': [str(w) for w in info.warnings]}

print(json.dumps(out))
`;

/** What JSON.parse() returns: the oracle's answers are read as JSON, and the assertions check them. */
type Json = ReturnType<typeof JSON.parse>;

/** Runs the oracle asynchronously (the fake hub in this process answers it meanwhile). */
function oracle(req: object, env: NodeJS.ProcessEnv = pyEnv({ HF_HUB_OFFLINE: '1' })): Promise<Json> {
  return new Promise((resolve, reject) => {
    const p = spawn(PYTHON, ['-c', ORACLE], { stdio: ['pipe', 'pipe', 'pipe'], env });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d));
    p.stderr.on('data', (d: Buffer) => (err += d));
    const timer = setTimeout(() => p.kill('SIGKILL'), 120_000);
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(timer);
      if (code !== 0) return reject(new Error(`the huggingface_hub oracle failed (exit ${code}):\n${err}`));
      try {
        resolve(JSON.parse(out));
      } catch {
        reject(new Error(`the huggingface_hub oracle printed no JSON:\n${out}\n${err}`));
      }
    });
    p.stdin.end(JSON.stringify(req));
  });
}

// ---------------------------------------------------------------------------------------------------------------
// References

describe('parseHubRef', () => {
  const good: Array<[string, HubRef]> = [
    ['hf://org/name', { repoType: 'model', repoId: 'org/name', revision: 'main' }],
    ['hf://org/name/model.safetensors', { repoType: 'model', repoId: 'org/name', revision: 'main', file: 'model.safetensors' }],
    ['hf://org/name@v1.0/sub/dir/w.bin', { repoType: 'model', repoId: 'org/name', revision: 'v1.0', file: 'sub/dir/w.bin' }],
    [`hf://org/name@${C1}/config.json`, { repoType: 'model', repoId: 'org/name', revision: C1, file: 'config.json' }],
    ['hf://org/name@refs%2Fpr%2F1/a.bin', { repoType: 'model', repoId: 'org/name', revision: 'refs/pr/1', file: 'a.bin' }],
    ['hf://org/name@refs/pr/12/a.bin', { repoType: 'model', repoId: 'org/name', revision: 'refs/pr/12', file: 'a.bin' }],
    ['hf://datasets/org/data@refs/convert/parquet', { repoType: 'dataset', repoId: 'org/data', revision: 'refs/convert/parquet' }],
    ['hf://org/name@feature%2Fx/f', { repoType: 'model', repoId: 'org/name', revision: 'feature/x', file: 'f' }],
    ['hf://datasets/org/data/train/0.parquet', { repoType: 'dataset', repoId: 'org/data', revision: 'main', file: 'train/0.parquet' }],
    ['hf://spaces/org/app@dev', { repoType: 'space', repoId: 'org/app', revision: 'dev' }],
    ['hf://models/org/name/f', { repoType: 'model', repoId: 'org/name', revision: 'main', file: 'f' }],
    ['hf://gpt2', { repoType: 'model', repoId: 'gpt2', revision: 'main' }],
    ['hf://gpt2@main/config.json', { repoType: 'model', repoId: 'gpt2', revision: 'main', file: 'config.json' }],
    // Without '@' the first two segments are the repository, as for the hub.
    ['hf://gpt2/config.json', { repoType: 'model', repoId: 'gpt2/config.json', revision: 'main' }],
    ['hf://datasets/squad', { repoType: 'dataset', repoId: 'squad', revision: 'main' }],
    // An '@' past the repository is part of a file name.
    ['hf://org/name/a@b.txt', { repoType: 'model', repoId: 'org/name', revision: 'main', file: 'a@b.txt' }],
    ['hf://org/name/', { repoType: 'model', repoId: 'org/name', revision: 'main' }],
    ['hf://Org_1/Name-2.x/f%20g', { repoType: 'model', repoId: 'Org_1/Name-2.x', revision: 'main', file: 'f%20g' }],
  ];
  for (const [ref, want] of good) test(`reads ${ref}`, () => assert.deepEqual(parseHubRef(ref), want));

  const bad: Array<[string, RegExp]> = [
    ['org/name', /must start with hf:\/\//],
    ['hf://', /nothing after/],
    ['hf://datasets', /no repository after 'datasets'/],
    ['hf://datasets/', /no repository/],
    ['hf://dataset/org/data', /plural: 'datasets\/'/],
    ['hf://model/org/x', /plural/],
    ['hf://kernels/org/k', /not supported/],
    ['hf://buckets/org/b', /not supported/],
    ['hf://org/name@', /empty revision/],
    ['hf://org/name@/f', /empty revision/],
    ['hf://@main/f', /no repository before '@'/],
    ['hf://org/name@%E0%A4%A/f', /malformed %-escape/],
    ['hf://org/name@..%2Fx/f', /'\.\.' segment/],
    ['hf://org/name@a%2F%2Fb', /empty, '\.' or '\.\.' segment/],
    ['hf://org/name@a%00b', /control character/],
    ['hf://org/name/a//b', /the file 'a\/\/b'/],
    ['hf://org/name/a/../../b', /'\.\.' segment/],
    ['hf://org/name/a/./b', /'\.' or '\.\.' segment/],
    ['hf://org/name/a\\..\\b', /'\.\.' segment/],
    ['hf://org/name/a\nb', /control character/],
    ['hf://org/na--me', /'--'/],
    ['hf://org/na..me', /not a repository name|'\.\.'/],
    ['hf://org/name.git', /'\.git'/],
    ['hf://org/-name', /not a repository name/],
    ['hf://org/name-', /not a repository name/],
    ['hf://org/caf\u00e9', /not a repository name/],
    [`hf://org/${'x'.repeat(97)}`, /not a repository name/],
  ];
  for (const [ref, message] of bad)
    test(`refuses ${JSON.stringify(ref)}`, () => {
      assert.throws(() => parseHubRef(ref), { ...VALUE, message });
      assert.throws(() => parseHubRef(ref), { message: /expected hf:\/\/\[datasets\/\|spaces\/\]ORG\/NAME\[@REV\]\[\/FILE\]/ });
    });

  test('the error names the argument it was given as', () => {
    assert.throws(() => parseHubRef('hf://org/name@', 'MODEL'), { ...VALUE, message: /^The "MODEL" option .*Received "hf:\/\/org\/name@"$/ });
  });

  test('formatHubRef writes what parseHubRef reads back', () => {
    for (const [, ref] of good) assert.deepEqual(parseHubRef(formatHubRef(ref)), ref, formatHubRef(ref));
    assert.equal(formatHubRef(parseHubRef('hf://org/name@refs/pr/1/a.bin')), 'hf://org/name@refs%2Fpr%2F1/a.bin');
    assert.equal(formatHubRef({ repoType: 'dataset', repoId: 'o/d', revision: 'main', file: 'x' }), 'hf://datasets/o/d/x');
  });

  test('isHubRef checks the prefix only, so a malformed reference gets its error', () => {
    assert.equal(isHubRef('hf://org/name'), true);
    assert.equal(isHubRef('hf://'), true);
    for (const s of ['org/name', './hf://x', 'HF://org/name', '', 42, undefined]) assert.equal(isHubRef(s), false, String(s));
  });

  test("agrees with huggingface_hub's parse_hf_uri where it has one", async (t) => {
    if (!needsHf(t)) return;
    const refs = good.map(([r]) => r).filter((r) => parseHubRef(r).repoId.includes('/') && !r.includes('gpt2'));
    const bads = ['hf://org/name@', 'hf://dataset/org/data', 'hf://org/name/a//b', 'hf://org/na--me', 'hf://org/name.git'];
    const res = await oracle({ uris: [...refs, ...bads] });
    if (res.uris === null) return t.skip(`huggingface_hub ${hf.version} has no parse_hf_uri`);
    refs.forEach((r, i) => {
      const p = parseHubRef(r);
      const u = res.uris[i];
      assert.deepEqual({ ...u, revision: u.revision ?? 'main' }, { type: p.repoType, id: p.repoId, revision: p.revision, path: p.file ?? '' }, r);
    });
    bads.forEach((r, i) => assert.equal(typeof res.uris[refs.length + i].error, 'string', `${r}: ${JSON.stringify(res.uris[refs.length + i])}`));
  });
});

describe('parseBareRepo', () => {
  test('reads [datasets/|spaces/]ORG/NAME[@REV]', () => {
    assert.deepEqual(parseBareRepo('org/name'), { repoType: 'model', repoId: 'org/name', revision: 'main' });
    assert.deepEqual(parseBareRepo('org/name@v2'), { repoType: 'model', repoId: 'org/name', revision: 'v2' });
    assert.deepEqual(parseBareRepo('org/name@refs/pr/3'), { repoType: 'model', repoId: 'org/name', revision: 'refs/pr/3' });
    assert.deepEqual(parseBareRepo('org/name@feature%2Fx'), { repoType: 'model', repoId: 'org/name', revision: 'feature/x' });
    assert.deepEqual(parseBareRepo('datasets/org/data'), { repoType: 'dataset', repoId: 'org/data', revision: 'main' });
    assert.deepEqual(parseBareRepo('spaces/org/app@dev'), { repoType: 'space', repoId: 'org/app', revision: 'dev' });
  });
  test('refuses anything else, naming the expected shape', () => {
    for (const s of ['', 'gpt2', 'org/name/file', 'hf://org/name', 'org/name@', 'org/na--me', 'org/name@a/../b', 'org/name@%ZZ', 'kernels/org/k', '/org/name'])
      assert.throws(() => parseBareRepo(s), { ...VALUE, message: /expected \[datasets\/\|spaces\/\]ORG\/NAME\[@REV\]/ }, s);
  });
});

describe('hubCacheDir and hubOffline', () => {
  const HOME = '/home/someone';
  test("huggingface_hub's precedence: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME/hub, XDG_CACHE_HOME, ~/.cache", () => {
    assert.equal(hubCacheDir({ HOME }), '/home/someone/.cache/huggingface/hub');
    assert.equal(hubCacheDir({ HOME: '/home/someone/' }), '/home/someone/.cache/huggingface/hub');
    assert.equal(hubCacheDir({ HOME, XDG_CACHE_HOME: '/xdg' }), '/xdg/huggingface/hub');
    assert.equal(hubCacheDir({ HOME, XDG_CACHE_HOME: '/xdg', HF_HOME: '/hfhome' }), '/hfhome/hub');
    assert.equal(hubCacheDir({ HOME, HF_HOME: '/hfhome', HUGGINGFACE_HUB_CACHE: '/legacy' }), '/legacy');
    assert.equal(hubCacheDir({ HOME, HF_HOME: '/hfhome', HUGGINGFACE_HUB_CACHE: '/legacy', HF_HUB_CACHE: '/hubcache' }), '/hubcache');
    assert.equal(hubCacheDir({ HOME, HF_HOME: '~/hf' }), '/home/someone/hf/hub');
    assert.equal(hubCacheDir({ HOME, HF_HUB_CACHE: '$HOME/c/${X}/$UNSET' }), '/home/someone/c/${X}/$UNSET');
    assert.equal(hubCacheDir({ HOME, X: 'x', HF_HUB_CACHE: '${X}/c' }), 'x/c');
    // Set but empty counts, as os.getenv() returns it.
    assert.equal(hubCacheDir({ HOME, HF_HOME: '' }), 'hub');
    assert.equal(hubCacheDir({ HOME: '' }), '/.cache/huggingface/hub');
    assert.equal(hubCacheDir({}), join(userInfo().homedir, '.cache/huggingface/hub'));
    assert.equal(hubCacheDir({ HOME, HF_HOME: `~${userInfo().username}/x` }), `${userInfo().homedir.replace(/\/$/, '')}/x/hub`);
    assert.equal(hubCacheDir({ HOME, HF_HOME: '~nosuchuser-dmaload/x' }), '~nosuchuser-dmaload/x/hub');
  });

  test('HF_HUB_OFFLINE, else TRANSFORMERS_OFFLINE: 1, on, yes or true', () => {
    for (const v of ['1', 'ON', 'yes', 'True']) assert.equal(hubOffline({ HF_HUB_OFFLINE: v }), true, v);
    for (const v of ['0', 'off', '', 'no', '2']) assert.equal(hubOffline({ HF_HUB_OFFLINE: v }), false, v);
    assert.equal(hubOffline({ TRANSFORMERS_OFFLINE: '1' }), true);
    assert.equal(hubOffline({ HF_HUB_OFFLINE: '', TRANSFORMERS_OFFLINE: '1' }), true);
    assert.equal(hubOffline({ HF_HUB_OFFLINE: '0', TRANSFORMERS_OFFLINE: '1' }), false);
    assert.equal(hubOffline({}), false);
  });

  test("equal to huggingface_hub's constants.HF_HUB_CACHE and HF_HUB_OFFLINE, environment by environment", async (t) => {
    if (!needsHf(t)) return;
    const me = userInfo();
    const cases: Array<Record<string, string>> = [
      { HOME },
      { HOME: '/home/someone/' },
      { HOME: '' },
      { HOME: '/' },
      {},
      { HOME, XDG_CACHE_HOME: '/xdg' },
      { HOME, XDG_CACHE_HOME: '' },
      { HOME, XDG_CACHE_HOME: '~/xdg' },
      { HOME, XDG_CACHE_HOME: '/xdg', HF_HOME: '/hfhome/' },
      { HOME, HF_HOME: '' },
      { HOME, HF_HOME: '~' },
      { HOME, HF_HOME: `~${me.username}/h` },
      { HOME, HF_HOME: '~nosuchuser-dmaload/h' },
      { HOME, HF_HOME: '$HOME/h/$NOPE/${HOME}x/${}/$' },
      { HOME, HF_HOME: '/a', HUGGINGFACE_HUB_CACHE: '/legacy' },
      { HOME, HF_HOME: '/a', HUGGINGFACE_HUB_CACHE: '~/legacy' },
      { HOME, HUGGINGFACE_HUB_CACHE: '', HF_HUB_CACHE: '/new' },
      { HOME, HF_HUB_CACHE: '' },
      { HOME, HF_HUB_CACHE: 'relative/$HOME' },
      { HOME, HF_HUB_OFFLINE: '1' },
      { HOME, HF_HUB_OFFLINE: 'yes' },
      { HOME, HF_HUB_OFFLINE: '0', TRANSFORMERS_OFFLINE: '1' },
      { HOME, HF_HUB_OFFLINE: '', TRANSFORMERS_OFFLINE: 'TRUE' },
    ];
    // Each case is Python's whole environment while constants.py is read again.
    const res = await oracle({ env_cases: cases });
    cases.forEach((env, i) => assert.deepEqual({ cache: hubCacheDir(env), offline: hubOffline(env) }, res.env_cases[i], JSON.stringify(env)));
  });
});

describe('cache paths', () => {
  test('repoFolderName', () => {
    assert.equal(repoFolderName('model', 'org/name'), 'models--org--name');
    assert.equal(repoFolderName('dataset', 'org/data'), 'datasets--org--data');
    assert.equal(repoFolderName('space', 'org/app'), 'spaces--org--app');
    assert.equal(repoFolderName('model', 'gpt2'), 'models--gpt2');
  });

  test('cachePaths: blobs/<etag>, a relative link with one ../ per folder, refs only for a revision that is no commit', () => {
    const p = cachePaths('/c', 'model', 'org/name', C1, 'a/b/w.bin', 'W/"abc"', 'refs/pr/1');
    assert.equal(p.repo, '/c/models--org--name');
    assert.equal(p.blob, '/c/models--org--name/blobs/abc');
    assert.equal(p.snapshot, `/c/models--org--name/snapshots/${C1}/a/b/w.bin`);
    assert.equal(p.linkTarget, '../../../../blobs/abc');
    assert.equal(p.ref, '/c/models--org--name/refs/refs/pr/1');
    assert.equal(p.noExist, `/c/models--org--name/.no_exist/${C1}/a/b/w.bin`);
    assert.match(p.incomplete, /^\/c\/models--org--name\/blobs\/abc\.[0-9a-f]{8}\.incomplete$/);
    assert.notEqual(cachePaths('/c', 'model', 'o/n', C1, 'f', 'abc').incomplete, cachePaths('/c', 'model', 'o/n', C1, 'f', 'abc').incomplete);
    assert.equal(cachePaths('/c', 'dataset', 'o/d', C1, 'f', 'e').linkTarget, '../../blobs/e');
    assert.equal(cachePaths('/c', 'model', 'o/n', C1, 'f', 'e', C1).ref, undefined);
    assert.equal(cachePaths('/c', 'model', 'o/n', C1, 'f', 'e').ref, undefined);
    assert.equal(normalizeEtag('W/"0123abcd"'), '0123abcd');
    assert.equal(normalizeEtag('"0123abcd"'), '0123abcd');
    assert.equal(normalizeEtag('0123abcd'), '0123abcd');
  });

  test('cachePaths refuses what could climb out of the repository folder', () => {
    const cases: Array<[() => unknown, RegExp]> = [
      [() => cachePaths('/c', 'model', 'o/n', C1, '../../../etc/passwd', 'e'), /"file"/],
      [() => cachePaths('/c', 'model', 'o/n', C1, '/abs', 'e'), /"file"/],
      [() => cachePaths('/c', 'model', 'o/n', C1, '', 'e'), /"file"/],
      [() => cachePaths('/c', 'model', 'o/n', 'main', 'f', 'e'), /"commit"/],
      [() => cachePaths('/c', 'model', 'o/n', '../x', 'f', 'e'), /"commit"/],
      [() => cachePaths('/c', 'model', 'o/n', C1, 'f', '../x'), /"etag"/],
      [() => cachePaths('/c', 'model', 'o/n', C1, 'f', '""'), /"etag"/],
      [() => cachePaths('/c', 'model', 'o/n', C1, 'f', 'e.incomplete'), /"etag"/],
      [() => cachePaths('/c', 'model', 'o/n', C1, 'f', 'e', '../../x'), /"revision"/],
      [() => cachePaths('/c', 'model', '../x', C1, 'f', 'e'), /"repoId"/],
      [() => cachePaths('/c', 'models' as RepoType, 'o/n', C1, 'f', 'e'), /"repoType"/],
    ];
    for (const [fn, message] of cases) assert.throws(fn, { ...VALUE, message });
  });
});

// ---------------------------------------------------------------------------------------------------------------
// The cache: written here, read by huggingface_hub

interface Put {
  repoType: RepoType;
  repoId: string;
  revision: string;
  commit: string;
  file: string;
  bytes: Uint8Array;
  lfs: boolean;
}

/** Commits `put` to `cache` as a downloader would: written to the incomplete name, then commitToCache(). */
async function put(cache: string, p: Put): Promise<{ etag: string; paths: Awaited<ReturnType<typeof commitToCache>> }> {
  const etag = p.lfs ? sha256(p.bytes) : gitSha1(p.bytes);
  const tmp = cachePaths(cache, p.repoType, p.repoId, p.commit, p.file, etag).incomplete;
  mkdirSync(join(tmp, '..'), { recursive: true });
  writeFileSync(tmp, p.bytes, { mode: 0o600 });
  const paths = await commitToCache({ cacheDir: cache, ...p, etag: p.lfs ? `"${etag}"` : `W/"${etag}"`, tempFile: tmp });
  return { etag, paths };
}

describe('commitToCache', () => {
  const cache = join(dir, 'ours');
  const files: Put[] = [
    { repoType: 'model', repoId: 'org/tiny', revision: 'main', commit: C1, file: 'config.json', bytes: Buffer.from('{"a": 1}\n'), lfs: false },
    { repoType: 'model', repoId: 'org/tiny', revision: 'main', commit: C1, file: 'model.safetensors', bytes: seededBytes(1 << 20, 1), lfs: true },
    { repoType: 'model', repoId: 'org/tiny', revision: 'main', commit: C1, file: 'sub/dir/w.bin', bytes: seededBytes(65_537, 2), lfs: true },
    { repoType: 'model', repoId: 'org/tiny', revision: 'v1', commit: C2, file: 'model.safetensors', bytes: seededBytes(300_001, 3), lfs: true },
    { repoType: 'model', repoId: 'org/tiny', revision: C3, commit: C3, file: 'only-by-commit.bin', bytes: seededBytes(1000, 4), lfs: true },
    { repoType: 'model', repoId: 'org/tiny', revision: 'refs/pr/1', commit: C3, file: 'pr.bin', bytes: seededBytes(999, 5), lfs: true },
    { repoType: 'dataset', repoId: 'org/data', revision: 'main', commit: C2, file: 'train/part-0.csv', bytes: Buffer.from('a,b\n1,2\n'), lfs: false },
    { repoType: 'space', repoId: 'org/app', revision: 'main', commit: C1, file: 'app.py', bytes: Buffer.from('print(1)\n'), lfs: false },
    { repoType: 'model', repoId: 'gpt2', revision: 'main', commit: C2, file: 'config.json', bytes: Buffer.from('{}'), lfs: false },
  ];
  const written: Array<{ etag: string; paths: Awaited<ReturnType<typeof commitToCache>> }> = [];

  test('lays files out as huggingface_hub does', async () => {
    for (const f of files) written.push(await put(cache, f));
    const [config, model, sub] = written;
    assert.equal(readlinkSync(config!.paths.snapshot), `../../blobs/${gitSha1(files[0]!.bytes)}`);
    assert.equal(readlinkSync(model!.paths.snapshot), `../../blobs/${sha256(files[1]!.bytes)}`);
    assert.equal(readlinkSync(sub!.paths.snapshot), `../../../../blobs/${sha256(files[2]!.bytes)}`);
    assert.ok(lstatSync(model!.paths.blob).isFile());
    assert.deepEqual(readFileSync(sub!.paths.snapshot), Buffer.from(files[2]!.bytes));
    // The commit, no newline; no ref for a revision that is the commit itself.
    assert.equal(readFileSync(join(cache, 'models--org--tiny', 'refs', 'main'), 'utf8'), C1);
    assert.equal(readFileSync(join(cache, 'models--org--tiny', 'refs', 'v1'), 'utf8'), C2);
    assert.equal(readFileSync(join(cache, 'models--org--tiny', 'refs', 'refs', 'pr', '1'), 'utf8'), C3);
    assert.equal(written[4]!.paths.ref, undefined);
    // The blob has the mode of a new file there (0666 less the umask), not the download's 0600.
    const probe = join(cache, 'probe');
    writeFileSync(probe, '');
    assert.equal(statSync(model!.paths.blob).mode & 0o777, statSync(probe).mode & 0o777);
    rmSync(probe);
    assert.match(readFileSync(join(cache, 'CACHEDIR.TAG'), 'utf8'), /^Signature: 8a477f597d28d172789f06886806bc55\n/);
    // Nothing temporary left behind.
    const leftovers = (d: string): string[] =>
      (statSync(d).isDirectory() ? readdirSync(d).flatMap((n) => leftovers(join(d, n))) : []).concat(/\.tmp$|\.incomplete$/.test(d) ? [d] : []);
    assert.deepEqual(leftovers(cache), []);
  });

  test('committing again (the same bytes, a moved ref, a stale .no_exist marker) replaces atomically', async () => {
    const f = files[1]!;
    const marker = cachePaths(cache, f.repoType, f.repoId, f.commit, f.file, 'x').noExist;
    mkdirSync(join(marker, '..'), { recursive: true });
    writeFileSync(marker, '');
    const again = await put(cache, f);
    assert.equal(again.paths.blob, written[1]!.paths.blob);
    assert.throws(() => statSync(marker), { code: 'ENOENT' });
    const r = await resolveInCache(parseHubRef('hf://org/tiny/model.safetensors'), cache);
    assert.equal(r?.found && r.sha256, sha256(f.bytes));
  });

  test('a download on another file system is copied beside the blob, then renamed (EXDEV)', async (t) => {
    const cacheDir = join(dir, 'exdev');
    mkdirSync(cacheDir);
    const other = ['/dev/shm', tmpdir()].find((d) => {
      try {
        return statSync(d).dev !== statSync(cacheDir).dev;
      } catch {
        return false;
      }
    });
    if (!other) return t.skip(`no file system other than the cache's (${cacheDir}) to download to`);
    const tmp = mkdtempSync(join(other, 'dmaload-hubref-'));
    try {
      const bytes = seededBytes(100_003, 21);
      const tempFile = join(tmp, 'download');
      writeFileSync(tempFile, bytes);
      const p = await commitToCache({
        cacheDir,
        repoType: 'model',
        repoId: 'org/exdev',
        revision: 'main',
        commit: C1,
        file: 'w.bin',
        etag: sha256(bytes),
        tempFile,
      });
      assert.deepEqual(readFileSync(p.snapshot), Buffer.from(bytes));
      assert.ok(lstatSync(p.blob).isFile());
      assert.deepEqual(readdirSync(tmp), [], 'the download is gone from where it was written');
      assert.deepEqual(readdirSync(join(p.blob, '..')), [sha256(bytes)], 'no temporary left beside the blob');
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  test('resolveInCache and listSnapshot read it back', async () => {
    const tiny = (s: string): Promise<CachedFile | { found: false } | undefined> => resolveInCache(parseHubRef(`hf://org/tiny${s}`), cache);
    const cfg = await tiny('/config.json');
    assert.ok(cfg?.found);
    assert.deepEqual(cfg, {
      found: true,
      commit: C1,
      path: join(cache, 'models--org--tiny', 'snapshots', C1, 'config.json'),
      blobPath: join(cache, 'models--org--tiny', 'blobs', gitSha1(files[0]!.bytes)),
      sha256: undefined,
      size: files[0]!.bytes.length,
    });
    assert.equal(((await tiny('@v1/model.safetensors')) as CachedFile).sha256, sha256(files[3]!.bytes));
    assert.equal(((await tiny(`@${C3}/only-by-commit.bin`)) as CachedFile).commit, C3);
    assert.equal(((await tiny('@refs%2Fpr%2F1/pr.bin')) as CachedFile).sha256, sha256(files[5]!.bytes));
    assert.equal(await tiny('/only-by-commit.bin'), undefined); // not at main's commit
    assert.equal(await tiny('@nope/config.json'), undefined);
    assert.equal(await tiny(`@${C2.replace(/2/g, '9')}/config.json`), undefined);
    assert.equal(await resolveInCache(parseHubRef('hf://org/absent/config.json'), cache), undefined);
    assert.deepEqual(await resolveCommit(parseHubRef('hf://org/tiny@v1'), cache), { commit: C2, snapshot: join(cache, 'models--org--tiny', 'snapshots', C2) });
    assert.deepEqual(await listSnapshot(parseHubRef('hf://org/tiny'), cache), ['config.json', 'model.safetensors', 'sub/dir/w.bin']);
    assert.deepEqual(await listSnapshot(parseHubRef('hf://org/tiny/sub'), cache), ['sub/dir/w.bin']);
    assert.deepEqual(await listSnapshot(parseHubRef('hf://datasets/org/data'), cache), ['train/part-0.csv']);
    assert.equal(await listSnapshot(parseHubRef('hf://org/tiny@nope'), cache), undefined);
    await assert.rejects(resolveInCache(parseHubRef('hf://org/tiny'), cache), { ...VALUE, message: /names no file/ });
    await assert.rejects(resolveInCache({ repoType: 'model', repoId: 'org/tiny', revision: 'main', file: '../../x' }, cache), {
      ...VALUE,
      message: /"ref\.file"/,
    });
  });

  test('huggingface_hub finds every file offline, at the same path, with the same bytes', async (t) => {
    if (!needsHf(t)) return;
    const q = (f: { repoType: RepoType; repoId: string; file: string; revision: string }): object => ({
      repo_id: f.repoId,
      repo_type: f.repoType,
      filename: f.file,
      revision: f.revision,
    });
    const missing = { repoType: 'model' as const, repoId: 'org/tiny', file: 'only-by-commit.bin', revision: 'main' };
    const res = await oracle({
      cache_dir: cache,
      files: [...files.map(q), q(missing)],
      snapshots: [q({ ...files[0]!, file: '' }), q({ ...files[3]!, file: '' }), q({ ...files[6]!, file: '' })],
      scan: true,
    });
    files.forEach((f, i) => {
      const r = res.files[i];
      const snapshot = written[i]!.paths.snapshot;
      assert.equal(r.try, snapshot, `try_to_load_from_cache ${f.repoId} ${f.file}@${f.revision}`);
      assert.deepEqual(r.download, { path: snapshot, sha256: sha256(f.bytes) }, `hf_hub_download ${f.repoId} ${f.file}@${f.revision}`);
    });
    assert.equal(res.files[files.length].try, null);
    assert.equal(res.files[files.length].download.error, 'LocalEntryNotFoundError');
    assert.deepEqual(res.snapshots, [
      { path: join(cache, 'models--org--tiny', 'snapshots', C1), files: ['config.json', 'model.safetensors', 'sub/dir/w.bin'] },
      { path: join(cache, 'models--org--tiny', 'snapshots', C2), files: ['model.safetensors'] },
      { path: join(cache, 'datasets--org--data', 'snapshots', C2), files: ['train/part-0.csv'] },
    ]);
    for (const s of res.snapshots)
      assert.deepEqual(
        s.files,
        await listSnapshot(parseHubRef(`hf://${s.path.includes('datasets--') ? 'datasets/org/data' : 'org/tiny'}@${s.path.slice(-40)}`), cache),
      );
    // scan_cache_dir: no warnings; every repository, revision, ref and file where this module put them.
    assert.deepEqual(res.scan.warnings, []);
    const want = new Map<
      string,
      { repo_id: string; repo_type: string; revisions: Map<string, { refs: Set<string>; files: Map<string, { name: string; blob: string; size: number }> }> }
    >();
    files.forEach((f, i) => {
      const key = `${f.repoType}:${f.repoId}`;
      if (!want.has(key)) want.set(key, { repo_id: f.repoId, repo_type: f.repoType, revisions: new Map() });
      const revs = want.get(key)!.revisions;
      if (!revs.has(f.commit)) revs.set(f.commit, { refs: new Set(), files: new Map() });
      const rev = revs.get(f.commit)!;
      if (f.revision !== f.commit) rev.refs.add(f.revision);
      rev.files.set(f.file, { name: f.file, blob: written[i]!.paths.blob, size: f.bytes.length });
    });
    const expected = [...want.values()]
      .sort((a, b) => (a.repo_type + a.repo_id < b.repo_type + b.repo_id ? -1 : 1))
      .map((r) => ({
        repo_id: r.repo_id,
        repo_type: r.repo_type,
        revisions: [...r.revisions.entries()]
          .sort(([a], [b]) => (a < b ? -1 : 1))
          .map(([commit, v]) => ({ commit, refs: [...v.refs].sort(), files: [...v.files.values()].sort((a, b) => (a.name < b.name ? -1 : 1)) })),
      }));
    assert.deepEqual(res.scan.repos, expected);
  });

  test('and agrees with repo_folder_name', async (t) => {
    if (!needsHf(t)) return;
    const names: Array<[RepoType, string]> = [
      ['model', 'org/name'],
      ['dataset', 'Org_1/data.set-2'],
      ['space', 'o/app'],
      ['model', 'gpt2'],
    ];
    const res = await oracle({ folder_names: names.map(([repo_type, repo_id]) => ({ repo_type, repo_id })) });
    assert.deepEqual(
      res.folder_names,
      names.map(([type, id]) => repoFolderName(type, id)),
    );
  });
});

// ---------------------------------------------------------------------------------------------------------------
// The cache: written by huggingface_hub (downloading from a fake hub served here), read here

describe('a cache huggingface_hub downloaded into', () => {
  const cache = join(dir, 'theirs');
  /** repo (with its type prefix) → revisions (branch, tag, special ref or commit) → commit; commit → file → bytes. */
  const hub = {
    'org/tiny': {
      refs: { main: C1, 'v1.0': C2, 'refs/pr/1': C3, [C1]: C1, [C2]: C2, [C3]: C3 } as Record<string, string>,
      commits: {
        [C1]: { 'config.json': Buffer.from('{"x": 2}\n'), 'model.safetensors': seededBytes(512 * 1024 + 3, 11), 'sub/dir/w.bin': seededBytes(70_001, 12) },
        [C2]: { 'config.json': Buffer.from('{"x": 1}\n') },
        [C3]: { 'pr.bin': seededBytes(4097, 13) },
      } as Record<string, Record<string, Uint8Array>>,
    },
    'datasets/org/data': {
      refs: { main: C2 } as Record<string, string>,
      commits: { [C2]: { 'train/part-0.csv': Buffer.from('a,b\n') } } as Record<string, Record<string, Uint8Array>>,
    },
  } as const;
  const isLfs = (file: string): boolean => /\.(bin|safetensors)$/.test(file);
  const etagOf = (file: string, bytes: Uint8Array): string => (isLfs(file) ? sha256(bytes) : gitSha1(bytes));

  /** The hub's resolve endpoint, as far as hf_hub_download uses it: HEAD and GET of /[TYPE/]ID/resolve/REV/FILE. */
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const i = url.pathname.indexOf('/resolve/');
    const repo = hub[url.pathname.slice(1, i) as keyof typeof hub] as (typeof hub)['org/tiny'] | undefined;
    const [rawRev = '', ...rest] = url.pathname.slice(i + '/resolve/'.length).split('/');
    const commit = repo?.refs[decodeURIComponent(rawRev)];
    if (i < 0 || !repo || !commit) {
      res.writeHead(404, { 'X-Error-Code': i < 0 || !repo ? 'RepoNotFound' : 'RevisionNotFound' }).end();
      return;
    }
    const file = decodeURIComponent(rest.join('/'));
    const bytes = repo.commits[commit]?.[file];
    if (!bytes) {
      res.writeHead(404, { 'X-Error-Code': 'EntryNotFound', 'X-Repo-Commit': commit }).end();
      return;
    }
    const etag = `"${etagOf(file, bytes)}"`;
    res.writeHead(200, { 'X-Repo-Commit': commit, ETag: etag, ...(isLfs(file) ? { 'X-Linked-Etag': etag } : {}), 'Content-Length': bytes.length });
    res.end(req.method === 'HEAD' ? undefined : bytes);
  });
  after(() => server.close());

  test('resolveInCache and listSnapshot find what hf_hub_download put there, its .no_exist markers and refs included', async (t) => {
    if (!needsHf(t)) return;
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const downloads = [
      { repo_id: 'org/tiny', repo_type: 'model', filename: 'config.json', revision: 'main' },
      { repo_id: 'org/tiny', repo_type: 'model', filename: 'model.safetensors', revision: 'main' },
      { repo_id: 'org/tiny', repo_type: 'model', filename: 'sub/dir/w.bin', revision: 'main' },
      { repo_id: 'org/tiny', repo_type: 'model', filename: 'config.json', revision: 'v1.0' },
      { repo_id: 'org/tiny', repo_type: 'model', filename: 'pr.bin', revision: 'refs/pr/1' },
      { repo_id: 'org/tiny', repo_type: 'model', filename: 'config.json', revision: C2 },
      { repo_id: 'org/tiny', repo_type: 'model', filename: 'missing.txt', revision: 'main' },
      { repo_id: 'org/data', repo_type: 'dataset', filename: 'train/part-0.csv', revision: 'main' },
    ];
    const res = await oracle({ cache_dir: cache, downloads }, pyEnv({ HF_ENDPOINT: endpoint }));
    const paths: Array<string | undefined> = res.downloads.map((d: { path?: string }) => d.path);
    assert.equal(typeof res.downloads[6].error, 'string', 'missing.txt is not on the fake hub');
    for (const [i, d] of downloads.entries())
      if (i !== 6) assert.equal(typeof paths[i], 'string', `${d.filename}@${d.revision}: ${JSON.stringify(res.downloads[i])}`);
    // huggingface_hub's own layout, as this module writes it.
    assert.equal(readFileSync(join(cache, 'models--org--tiny', 'refs', 'main'), 'utf8'), C1);
    assert.equal(readlinkSync(paths[2]!), `../../../../blobs/${sha256(hub['org/tiny'].commits[C1]!['sub/dir/w.bin']!)}`);

    const find = (ref: string): Promise<CachedFile | { found: false; commit: string; marker: string } | undefined> => resolveInCache(parseHubRef(ref), cache);
    const expectFile = async (ref: string, commit: string, file: string, path: string | undefined): Promise<void> => {
      const bytes = hub[ref.startsWith('hf://datasets/') ? 'datasets/org/data' : 'org/tiny'].commits[commit]![file]!;
      const r = await find(ref);
      assert.ok(r?.found, ref);
      assert.equal(r.commit, commit, ref);
      assert.equal(r.path, path, ref);
      assert.equal(r.blobPath, join(r.path, '..', readlinkSync(r.path)), ref);
      assert.equal(r.blobPath.slice(r.blobPath.lastIndexOf('/') + 1), etagOf(file, bytes), ref);
      assert.equal(r.sha256, isLfs(file) ? sha256(bytes) : undefined, ref);
      assert.equal(r.size, bytes.length, ref);
      assert.deepEqual(readFileSync(r.path), Buffer.from(bytes), ref);
    };
    await expectFile('hf://org/tiny/config.json', C1, 'config.json', paths[0]);
    await expectFile('hf://org/tiny/model.safetensors', C1, 'model.safetensors', paths[1]);
    await expectFile('hf://org/tiny/sub/dir/w.bin', C1, 'sub/dir/w.bin', paths[2]);
    await expectFile('hf://org/tiny@v1.0/config.json', C2, 'config.json', paths[3]);
    await expectFile(`hf://org/tiny@${C2}/config.json`, C2, 'config.json', paths[5]);
    await expectFile('hf://org/tiny@refs%2Fpr%2F1/pr.bin', C3, 'pr.bin', paths[4]);
    await expectFile('hf://org/tiny@refs/pr/1/pr.bin', C3, 'pr.bin', paths[4]);
    await expectFile('hf://datasets/org/data/train/part-0.csv', C2, 'train/part-0.csv', paths[7]);
    // Known missing: the hub said so, and huggingface_hub left its marker.
    assert.deepEqual(await find('hf://org/tiny/missing.txt'), {
      found: false,
      commit: C1,
      marker: join(cache, 'models--org--tiny', '.no_exist', C1, 'missing.txt'),
    });
    assert.equal(await find('hf://org/tiny@v1.0/missing.txt'), undefined);
    // Never downloaded: not in the cache, and not known missing.
    assert.equal(await find('hf://org/tiny@v1.0/model.safetensors'), undefined);
    assert.equal(await find('hf://org/tiny@nope/config.json'), undefined);
    assert.deepEqual(await listSnapshot(parseHubRef('hf://org/tiny'), cache), ['config.json', 'model.safetensors', 'sub/dir/w.bin']);
    assert.deepEqual(await listSnapshot(parseHubRef('hf://org/tiny@v1.0'), cache), ['config.json']);
    assert.deepEqual(await listSnapshot(parseHubRef('hf://datasets/org/data'), cache), ['train/part-0.csv']);

    // And this module's commit of one more file at main reads back through huggingface_hub's own cache.
    const extra = seededBytes(2049, 14);
    await put(cache, { repoType: 'model', repoId: 'org/tiny', revision: 'main', commit: C1, file: 'extra.bin', bytes: extra, lfs: true });
    const back = await oracle({
      cache_dir: cache,
      files: [{ repo_id: 'org/tiny', repo_type: 'model', filename: 'extra.bin', revision: 'main' }],
      snapshots: [{ repo_id: 'org/tiny', repo_type: 'model', revision: 'main' }],
      scan: true,
    });
    assert.deepEqual(back.files[0].download, { path: join(cache, 'models--org--tiny', 'snapshots', C1, 'extra.bin'), sha256: sha256(extra) });
    assert.deepEqual(back.snapshots[0].files, ['config.json', 'extra.bin', 'model.safetensors', 'sub/dir/w.bin']);
    assert.deepEqual(back.scan.warnings, []);
  });
});
