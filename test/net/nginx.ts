/**
 * nginx on loopback for tests that load over HTTP(S): a real server's range requests, keep-alive limits, rate limits
 * and TLS, and a site shaped like the Hugging Face Hub (a /resolve/ endpoint that redirects LFS files to a CDN on
 * another host, the JSON API that snapshot_download calls). It runs /usr/sbin/nginx (DMALOAD_NGINX) as a child in
 * the foreground with everything (config, logs, temp folders, certificates, blobs) in a fresh temp folder, and never
 * listens anywhere but 127.0.0.1 and 127.0.0.2.
 *
 * One process (master_process off): stop() signals that pid and nothing is left behind, and no worker switches user,
 * so it reads the caller's files (in 0700 temp folders) as root and as any other user alike; `user root;` is written
 * for root only, so that turning master_process on would not make root's workers `nobody`. Files of the hub site are
 * hard links to the caller's files where the file system allows (copies elsewhere): rewriting a source file in place
 * changes what nginx serves, not the hashes.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, promises as fsp, linkSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const NGINX = process.env.DMALOAD_NGINX || '/usr/sbin/nginx';

/**
 * The environment for the tools the tests run (nginx, openssl, curl, Python): without the sanitizer runtimes that
 * scripts/test-asan.sh preloads for the addon. Those tools are not instrumented, and nginx with libasan preloaded
 * stops answering (seen: curl waited 10 minutes). `node` children keep the preload: they load the ASan addon.
 */
export function toolEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  const preload = env.LD_PRELOAD?.split(/[\s:]+/).filter((l) => l && !/lib(a|ub)san\.so/.test(l));
  if (preload?.length) env.LD_PRELOAD = preload.join(' ');
  else delete env.LD_PRELOAD;
  return env;
}

/** Why nginx cannot run here (tests skip with it), or undefined; the certificates need the openssl command too. */
export const nginxMissing: string | undefined = !existsSync(NGINX)
  ? `${NGINX} is missing: apt-get install nginx-light (or set DMALOAD_NGINX to an nginx binary)`
  : spawnSync('openssl', ['version'], { env: toolEnv() }).status !== 0
    ? 'the openssl command is missing (it makes the HTTPS certificates): apt-get install openssl'
    : undefined;

/** A file of a hub repository: `name` is its path in the repo, `path` the local file with its bytes. */
export interface HubFile {
  name: string;
  path: string;
  /** LFS files redirect to the blob host; the others (config.json, *.index.json) are answered by the hub itself. */
  lfs: boolean;
}

/** A model repository on the hub site. */
export interface HubRepo {
  /** 'org/name' */
  repo: string;
  /** 40 hex digits: what X-Repo-Commit and the API's "sha" say. */
  commit: string;
  /** Branch or tag names that resolve (to the value, sent as X-Repo-Commit); the commit itself always resolves. */
  revs?: Record<string, string>;
  files: HubFile[];
}

/** What the hub site serves for one file, computed from its bytes. */
export interface HubEntry {
  repo: string;
  name: string;
  lfs: boolean;
  size: number;
  sha256: string;
  /** The git blob id: sha1 of `blob <size>\0` + bytes (of the LFS pointer for an LFS file, as git stores it). */
  gitSha1: string;
  /** The ETag the hub sends, quoted: the sha256 for LFS files, the git blob sha1 for the others. */
  etag: string;
  /** Where the redirect of an LFS file points (undefined for the others). */
  blobUrl: string | undefined;
}

export interface NginxOptions {
  /** The folder served at / (and /slow/) over HTTP and HTTPS; an empty folder when omitted. */
  root?: string;
  /** keepalive_requests of every server (http block): connections close after this many requests. */
  keepaliveRequests?: number;
  /** keepalive_timeout of every server (nginx time, e.g. '5s'); nginx's 75s when omitted. */
  keepaliveTimeout?: string;
  /** limit_rate (per request, bytes/s: 40m, 512k or a number) of /slow/ on the HTTP and HTTPS servers only; / stays unlimited. */
  limitRate?: string | number;
  /** limit_rate of the blob host (the hub's CDN), per request as `limitRate`; unlimited when omitted. */
  blobRate?: string | number;
  /** More names of the HTTPS certificate (`IP:10.77.0.2`, `DNS:cdn.test`): a relay on another address. */
  tlsNames?: string[];
  /** HTTP/2 on the HTTPS listener too (ALPN h2), besides HTTP/1.1. */
  http2?: boolean;
  /** Repositories of the hub site. */
  hub?: HubRepo | HubRepo[];
  /**
   * Base URL the hub's redirects point to (e.g. a fault proxy in front of `urls.blobs`, which must then listen on
   * another host than 127.0.0.1, as a CDN does); `urls.blobs` when omitted.
   */
  cdnBase?: string;
}

/** One request of the access log (a line is written when nginx has finished a request, aborted ones included). */
export interface AccessEntry {
  /** 'ADDR:PORT' of the listener that served it. */
  server: string;
  /** nginx's serial number of the connection, and which request on it this was (1 = the first). */
  connection: number;
  connectionRequests: number;
  method: string;
  uri: string;
  status: number;
  /** Body bytes nginx sent ($body_bytes_sent: fewer than the length when the client went away). */
  bytesSent: number;
  /** The Range header, undefined when there was none. */
  range: string | undefined;
  /** Seconds from the first byte of the request to the log write. */
  requestTime: number;
}

export interface Nginx {
  urls: {
    /** http://127.0.0.1:PORT (the root folder; /slow/ is the same folder at limitRate) */
    http: string;
    /** https://127.0.0.1:PORT2 (the same content; trust `caPath`) */
    https: string;
    /** http://127.0.0.1:PORT3, the hub endpoint (HF_ENDPOINT) */
    hub: string;
    /** http://127.0.0.2:PORT4, the blob host the hub redirects LFS files to (/blobs/<sha256>) */
    blobs: string;
  };
  /** PEM of the CA that signed the HTTPS server's certificate (curl --cacert, NODE_EXTRA_CA_CERTS, SSL_CERT_FILE). */
  caPath: string;
  /** The temp folder with the config, logs, certificates and blobs; removed by stop(). */
  prefix: string;
  /** The hub site's files, with their hashes. */
  hubFiles: HubEntry[];
  pid: number;
  /** What nginx wrote to its error log (stderr) so far. */
  errors(): string;
  /**
   * The access log of every listener. Waits until it holds at least `atLeast` entries and has stopped growing for a
   * moment, since nginx logs a request only after its last byte went out, a little after a client has it.
   */
  accessLog(opts?: { atLeast?: number; timeoutMs?: number }): Promise<AccessEntry[]>;
  /** Empties the access log (nginx appends to the same file). */
  clearAccessLog(): Promise<void>;
  /** Kills nginx and removes the folder. */
  stop(): Promise<void>;
}

const LOG_FORMAT =
  '$server_addr:$server_port\\t$connection\\t$connection_requests\\t$request_method\\t$request_uri\\t$status\\t$body_bytes_sent\\t"$http_range"\\t$request_time';

/** A file name, revision or repo id that goes into the config and regexes unquoted. */
const SAFE = /^[A-Za-z0-9._-][A-Za-z0-9._/-]*$/;

/** nginx children alive, killed if the test process exits without stopping them. */
const running = new Set<ChildProcess>();
let exitHook = false;

/**
 * Starts nginx serving `opts.root` over HTTP and HTTPS and the hub site, on free loopback ports. Resolves once every
 * listener accepts connections.
 */
export async function startNginx(opts: NginxOptions = {}): Promise<Nginx> {
  if (nginxMissing) throw new Error(nginxMissing);
  const prefix = mkdtempSync(join(tmpdir(), 'dmaload-nginx-'));
  try {
    for (const d of ['conf', 'logs', 'tls', 'www', 'blobs', 'git', 'api', 'tmp/body', 'tmp/proxy', 'tmp/fastcgi', 'tmp/uwsgi', 'tmp/scgi'])
      mkdirSync(join(prefix, d), { recursive: true });
    const root = opts.root ?? join(prefix, 'www');
    for (const p of [prefix, root]) if (/["$\\\n;{}]/.test(p)) throw new Error(`path ${JSON.stringify(p)} cannot go into an nginx config`);
    const caPath = makeCertificates(join(prefix, 'tls'), opts.tlsNames);
    const repos = opts.hub === undefined ? [] : Array.isArray(opts.hub) ? opts.hub : [opts.hub];
    const prepared = await Promise.all(repos.map((r) => prepareRepo(r, prefix)));

    // The ports are free when Node lets them go; another process may take one before nginx binds it, so a start that
    // fails on a bound address is tried again with new ports.
    for (let attempt = 1; ; attempt++) {
      const [http, https, hub, blobs] = await freePorts(['127.0.0.1', '127.0.0.1', '127.0.0.1', '127.0.0.2']);
      const ports = { http: http!, https: https!, hub: hub!, blobs: blobs! };
      const urls = {
        http: `http://127.0.0.1:${ports.http}`,
        https: `https://127.0.0.1:${ports.https}`,
        hub: `http://127.0.0.1:${ports.hub}`,
        blobs: `http://127.0.0.2:${ports.blobs}`,
      };
      const cdn = (opts.cdnBase ?? urls.blobs).replace(/\/$/, '');
      const hubFiles = prepared.flatMap((p) => p.entries.map((e) => ({ ...e, blobUrl: e.lfs ? `${cdn}/blobs/${e.sha256}` : undefined })));
      const conf = join(prefix, 'conf', 'nginx.conf');
      writeFileSync(conf, config({ prefix, root, caPath, ports, opts, cdn, repos: prepared }));
      const started = await launch(prefix, conf, [
        ['127.0.0.1', ports.http],
        ['127.0.0.1', ports.https],
        ['127.0.0.1', ports.hub],
        ['127.0.0.2', ports.blobs],
      ]);
      if ('child' in started) return handle(started.child, started.log, { urls, caPath, prefix, hubFiles });
      if (attempt < 5 && /Address already in use/.test(started.log())) continue;
      throw new Error(`nginx did not start: ${started.log().trim()}`);
    }
  } catch (e) {
    rmSync(prefix, { recursive: true, force: true });
    throw e;
  }
}

/** Ports that were free on these hosts a moment ago, all different (each is held until all are found). */
async function freePorts(hosts: string[]): Promise<number[]> {
  const servers = hosts.map(() => createServer());
  try {
    return await Promise.all(
      servers.map(
        (s, i) =>
          new Promise<number>((resolve, reject) => {
            s.once('error', reject);
            s.listen(0, hosts[i], () => resolve((s.address() as { port: number }).port));
          }),
      ),
    );
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => (s.listening ? s.close(r) : r(undefined)))));
  }
}

/** A CA and a server certificate for 127.0.0.1, 127.0.0.2 and localhost (EC P-256: generated in milliseconds). */
function makeCertificates(dir: string, names: string[] = []): string {
  const run = (args: string[]) => {
    const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8', env: toolEnv() });
    if (r.error) throw new Error(`openssl: ${r.error.message}`);
    if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.stderr}`);
  };
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  run(['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=dmaload test CA']);
  run(['req', '-new', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost']);
  writeFileSync(
    join(dir, 'server.ext'),
    `subjectAltName = ${['IP:127.0.0.1', 'IP:127.0.0.2', 'DNS:localhost', ...names].join(', ')}\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n`,
  );
  run([
    'x509',
    '-req',
    '-in',
    'server.csr',
    '-CA',
    'ca.pem',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-days',
    '2',
    '-extfile',
    'server.ext',
    '-out',
    'server.pem',
  ]);
  return join(dir, 'ca.pem');
}

interface PreparedRepo {
  repo: HubRepo;
  /** rev name (or the commit) -> the commit it resolves to */
  revs: Map<string, string>;
  entries: Omit<HubEntry, 'blobUrl'>[];
  /** entry name -> the file nginx serves for a non-LFS entry */
  gitFiles: Map<string, string>;
  info: string;
  tree: string;
}

/** Hashes a repo's files, puts LFS files under blobs/<sha256> and the others under git/<sha1>, and writes the API's JSON. */
async function prepareRepo(repo: HubRepo, prefix: string): Promise<PreparedRepo> {
  if (!/^[A-Za-z0-9._-]+\/[A-Za-z0-9._-]+$/.test(repo.repo)) throw new Error(`repo id '${repo.repo}' is not org/name`);
  if (!/^[0-9a-f]{40}$/.test(repo.commit)) throw new Error(`commit '${repo.commit}' is not 40 hex digits`);
  const revs = new Map<string, string>([[repo.commit, repo.commit], ...Object.entries(repo.revs ?? {})]);
  for (const [rev, commit] of revs) {
    if (!SAFE.test(rev) || rev.includes('//') || rev.endsWith('/')) throw new Error(`revision '${rev}' has characters the config cannot hold`);
    if (!/^[0-9a-f]{40}$/.test(commit)) throw new Error(`revision '${rev}' resolves to '${commit}', not 40 hex digits`);
  }
  const entries: PreparedRepo['entries'] = [];
  const gitFiles = new Map<string, string>();
  const pointerSizes = new Map<string, number>();
  for (const f of repo.files) {
    if (!SAFE.test(f.name) || f.name.includes('//') || f.name.split('/').includes('..'))
      throw new Error(`file name '${f.name}' has characters the config cannot hold`);
    const h = await hashFile(f.path, !f.lfs);
    let gitSha1: string;
    let pointerSize = 0;
    if (f.lfs) {
      const pointer = `version https://git-lfs.github.com/spec/v1\noid sha256:${h.sha256}\nsize ${h.size}\n`;
      gitSha1 = gitBlobSha1(Buffer.from(pointer));
      pointerSize = pointer.length;
      place(f.path, join(prefix, 'blobs', h.sha256));
    } else {
      gitSha1 = h.sha1!;
      place(f.path, join(prefix, 'git', gitSha1));
      gitFiles.set(f.name, join(prefix, 'git', gitSha1));
    }
    entries.push({ repo: repo.repo, name: f.name, lfs: f.lfs, size: h.size, sha256: h.sha256, gitSha1, etag: `"${f.lfs ? h.sha256 : gitSha1}"` });
    pointerSizes.set(f.name, pointerSize);
  }
  const info = JSON.stringify({
    _id: repo.commit.slice(0, 24),
    id: repo.repo,
    modelId: repo.repo,
    author: repo.repo.split('/')[0],
    sha: repo.commit,
    private: false,
    gated: false,
    disabled: false,
    siblings: entries.map((e) => ({ rfilename: e.name })),
  });
  // The tree lists folders too (snapshot_download keeps only the files); a folder's oid is made up.
  const folders = [
    ...new Set(
      entries.flatMap((e) =>
        e.name
          .split('/')
          .slice(0, -1)
          .map((_, i, parts) => parts.slice(0, i + 1).join('/')),
      ),
    ),
  ];
  const tree = JSON.stringify([
    ...folders.map((path) => ({ type: 'directory', oid: createHash('sha1').update(`tree ${path}`).digest('hex'), size: 0, path })),
    ...entries.map((e) => ({
      type: 'file',
      oid: e.gitSha1,
      size: e.size,
      path: e.name,
      ...(e.lfs ? { lfs: { oid: e.sha256, size: e.size, pointerSize: pointerSizes.get(e.name) } } : {}),
    })),
  ]);
  return { repo, revs, entries, gitFiles, info, tree };
}

/** sha256 of a file (and its git blob sha1 when `git`), read in pieces: model files may be large. */
async function hashFile(path: string, git: boolean): Promise<{ size: number; sha256: string; sha1: string | undefined }> {
  const fh = await fsp.open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const s256 = createHash('sha256');
    const s1 = git ? createHash('sha1').update(`blob ${size}\0`) : undefined;
    const buf = Buffer.alloc(8 << 20);
    for (let pos = 0; pos < size;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) throw new Error(`${path} shrank while it was hashed`);
      s256.update(buf.subarray(0, bytesRead));
      s1?.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
    return { size, sha256: s256.digest('hex'), sha1: s1?.digest('hex') };
  } finally {
    await fh.close();
  }
}

/** git's blob id of `bytes`. */
export function gitBlobSha1(bytes: Uint8Array): string {
  return createHash('sha1').update(`blob ${bytes.length}\0`).update(bytes).digest('hex');
}

/** A hard link (no copy of a big file), else a copy (another file system, or a file this user may not link). */
function place(from: string, to: string): void {
  if (existsSync(to)) return; // the same bytes under another name
  try {
    linkSync(from, to);
  } catch {
    copyFileSync(from, to);
  }
}

const escapeRegex = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

function config(c: {
  prefix: string;
  root: string;
  caPath: string;
  ports: { http: number; https: number; hub: number; blobs: number };
  opts: NginxOptions;
  cdn: string;
  repos: PreparedRepo[];
}): string {
  const { prefix, root, ports, opts } = c;
  const tls = join(prefix, 'tls');
  const rate = opts.limitRate === undefined ? '' : `limit_rate ${opts.limitRate};`;
  const site = `
    root "${root}";
    location / { }
    location /slow/ { alias "${root}/"; ${rate} }`;
  const hub: string[] = [];
  const codes: string[] = [];
  for (const [i, p] of c.repos.entries()) {
    const id = p.repo.repo;
    const revs = [...p.revs.keys()].map(escapeRegex).join('|');
    const api = join(prefix, 'api');
    writeFileSync(join(api, `${i}-info.json`), p.info);
    writeFileSync(join(api, `${i}-tree.json`), p.tree);
    // Most specific first: the map takes the first regex that matches.
    codes.push(
      `"~^/${escapeRegex(id)}/resolve/(${revs})/" EntryNotFound;`,
      `"~^/${escapeRegex(id)}/resolve/" RevisionNotFound;`,
      `"~^/api/models/${escapeRegex(id)}/tree/(${revs})/" EntryNotFound;`,
      `"~^/api/models/${escapeRegex(id)}/(revision|tree)/" RevisionNotFound;`,
    );
    hub.push(`location = "/api/models/${id}" { alias "${join(api, `${i}-info.json`)}"; }`);
    for (const [rev, commit] of p.revs) {
      hub.push(`location = "/api/models/${id}/revision/${rev}" { alias "${join(api, `${i}-info.json`)}"; }`);
      hub.push(`location = "/api/models/${id}/tree/${rev}" { alias "${join(api, `${i}-tree.json`)}"; }`);
      for (const e of p.entries) {
        const loc = `location = "/${id}/resolve/${rev}/${e.name}"`;
        // The hub sends the file's metadata on the redirect itself (huggingface_hub reads it there and does not follow
        // a HEAD's redirect to another host); `always` because add_header skips 3xx otherwise.
        if (e.lfs)
          hub.push(`${loc} {
      add_header X-Repo-Commit ${commit} always;
      add_header X-Linked-Etag '"${e.sha256}"' always;
      add_header X-Linked-Size ${e.size} always;
      add_header ETag '"${e.sha256}"' always;
      return 302 "${c.cdn}/blobs/${e.sha256}";
    }`);
        else
          hub.push(`${loc} {
      alias "${p.gitFiles.get(e.name)}";
      etag off;
      add_header X-Repo-Commit ${commit} always;
      add_header ETag '"${e.gitSha1}"' always;
    }`);
      }
    }
  }
  const user = process.getuid?.() === 0 ? 'user root;' : '';
  return `# Written by test/net/nginx.ts for one test run.
${user}
daemon off;
master_process off;
worker_processes 1;
pid "${prefix}/logs/nginx.pid";
lock_file "${prefix}/logs/nginx.lock";
error_log stderr warn;
events { worker_connections 1024; }
http {
  types { application/json json; text/plain txt; text/html html; }
  default_type application/octet-stream;
  client_body_temp_path "${prefix}/tmp/body";
  proxy_temp_path "${prefix}/tmp/proxy";
  fastcgi_temp_path "${prefix}/tmp/fastcgi";
  uwsgi_temp_path "${prefix}/tmp/uwsgi";
  scgi_temp_path "${prefix}/tmp/scgi";
  log_format dmaload '${LOG_FORMAT}';
  access_log "${prefix}/logs/access.log" dmaload;
  sendfile on;
  etag on;
  ${opts.keepaliveRequests === undefined ? '' : `keepalive_requests ${opts.keepaliveRequests};`}
  ${opts.keepaliveTimeout === undefined ? '' : `keepalive_timeout ${opts.keepaliveTimeout};`}
  map $uri $hub_error {
    ${codes.join('\n    ')}
    default RepoNotFound;
  }
  map $hub_error $hub_message {
    EntryNotFound "Entry not found";
    RevisionNotFound "Invalid rev id";
    default "Repository not found";
  }
  server {
    listen 127.0.0.1:${ports.http};
    ${site}
  }
  server {
    listen 127.0.0.1:${ports.https} ssl${opts.http2 ? ' http2' : ''};
    ssl_certificate "${tls}/server.pem";
    ssl_certificate_key "${tls}/server.key";
    ${site}
  }
  server {
    listen 127.0.0.1:${ports.hub};
    default_type application/json;
    ${hub.join('\n    ')}
    location / {
      add_header X-Error-Code $hub_error always;
      add_header X-Error-Message $hub_message always;
      return 404 '{"error":"$hub_message"}';
    }
  }
  server {
    listen 127.0.0.2:${ports.blobs};
    location /blobs/ { root "${prefix}"; ${opts.blobRate === undefined ? '' : `limit_rate ${opts.blobRate};`} }
  }
}
`;
}

/** Whether this nginx knows -e (1.19.5 and later); older ones open their built-in error log path first. */
const knowsDashE = (() => {
  const m = /nginx\/(\d+)\.(\d+)\.(\d+)/.exec(spawnSync(NGINX, ['-v'], { encoding: 'utf8', env: toolEnv() }).stderr ?? '');
  if (!m) return false;
  const v = [Number(m[1]), Number(m[2]), Number(m[3])] as const;
  return v[0] > 1 || (v[0] === 1 && (v[1] > 19 || (v[1] === 19 && v[2] >= 5)));
})();

/** Runs nginx; resolves once every port accepts a connection, or with its log when it exits before. */
async function launch(
  prefix: string,
  conf: string,
  listeners: [string, number][],
): Promise<{ child: ChildProcess; log: () => string } | { log: () => string }> {
  const args = ['-p', `${prefix}/`, '-c', conf, ...(knowsDashE ? ['-e', 'stderr'] : [])];
  const child = spawn(NGINX, args, { stdio: ['ignore', 'ignore', 'pipe'], env: toolEnv() });
  // Keep reading the error log: a full pipe would block nginx. Keep its last 256 KiB.
  let text = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (text = (text + d).slice(-256 * 1024)));
  const log = () => text;
  let exited = false;
  const gone = new Promise<void>((r) => child.once('exit', () => ((exited = true), r())));
  child.once('error', (e) => (text += `\n${e.message}`));
  const deadline = Date.now() + 15_000;
  for (const [host, port] of listeners) {
    while (!(await accepts(host, port))) {
      if (exited) return { log };
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        await gone;
        return { log: () => `${text}\n(no listener on ${host}:${port} after 15 s)` };
      }
      await Promise.race([gone, new Promise((r) => setTimeout(r, 20))]);
    }
  }
  return { child, log };
}

function accepts(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

function handle(child: ChildProcess, log: () => string, base: Pick<Nginx, 'urls' | 'caPath' | 'prefix' | 'hubFiles'>): Nginx {
  running.add(child);
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => {
      for (const c of running) c.kill('SIGKILL');
    });
  }
  const logPath = join(base.prefix, 'logs', 'access.log');
  const exited = new Promise<void>((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.once('exit', () => r())));
  let stopped = false;
  const read = async () => parseAccessLog(await fsp.readFile(logPath, 'utf8').catch(() => ''));
  return {
    ...base,
    pid: child.pid!,
    errors: log,
    async accessLog({ atLeast = 0, timeoutMs = 5000 } = {}) {
      const deadline = Date.now() + timeoutMs;
      let last = await read();
      for (;;) {
        await new Promise((r) => setTimeout(r, 25));
        const now = await read();
        if ((now.length >= atLeast && now.length === last.length) || Date.now() > deadline) return now;
        last = now;
      }
    },
    async clearAccessLog() {
      await fsp.truncate(logPath, 0);
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      // SIGTERM is nginx's fast shutdown; one that hangs gets SIGKILL.
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
      running.delete(child);
      rmSync(base.prefix, { recursive: true, force: true });
    },
  };
}

export function parseAccessLog(text: string): AccessEntry[] {
  const out: AccessEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const f = line.split('\t');
    if (f.length !== 9) throw new Error(`unexpected access log line: ${line}`);
    const range = f[7]!.slice(1, -1);
    out.push({
      server: f[0]!,
      connection: Number(f[1]),
      connectionRequests: Number(f[2]),
      method: f[3]!,
      uri: f[4]!,
      status: Number(f[5]),
      bytesSent: Number(f[6]),
      range: range === '-' ? undefined : range,
      requestTime: Number(f[8]),
    });
  }
  return out;
}

/**
 * A Python that can import huggingface_hub: DMALOAD_PYTHON, else python3. `missing` says why there is none (and how
 * to get one). Asked once per process.
 */
export function huggingfaceHubPython(): { python: string; version: string; missing?: undefined } | { python: string; missing: string } {
  if (hfPython) return hfPython;
  const python = process.env.DMALOAD_PYTHON || 'python3';
  const r = spawnSync(python, ['-c', 'import huggingface_hub; print(huggingface_hub.__version__)'], { encoding: 'utf8', env: toolEnv() });
  if (r.error) hfPython = { python, missing: `${python} cannot be run (${(r.error as NodeJS.ErrnoException).code}); set DMALOAD_PYTHON` };
  else if (r.status !== 0)
    hfPython = {
      python,
      missing: `${python} cannot import huggingface_hub (${r.stderr.trim().split('\n').at(-1)}): pip install huggingface_hub, or set DMALOAD_PYTHON to an interpreter that has it`,
    };
  else hfPython = { python, version: r.stdout.trim() };
  return hfPython;
}
let hfPython: ReturnType<typeof huggingfaceHubPython> | undefined;

/**
 * The environment for huggingface_hub against `endpoint`: its own HF_HOME (no token, no cache of a real user), no
 * telemetry, no proxy for loopback, no Xet.
 */
export function hubEnv(endpoint: string, home: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...toolEnv(),
    HF_ENDPOINT: endpoint,
    HF_HOME: home,
    HF_HUB_DISABLE_TELEMETRY: '1',
    HF_HUB_DISABLE_IMPLICIT_TOKEN: '1',
    HF_HUB_DISABLE_PROGRESS_BARS: '1',
    HF_HUB_DISABLE_XET: '1',
    HF_HUB_ETAG_TIMEOUT: '30',
    NO_PROXY: '127.0.0.1,127.0.0.2,localhost',
    no_proxy: '127.0.0.1,127.0.0.2,localhost',
  };
  for (const k of ['HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN', 'HF_HUB_OFFLINE', 'HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE']) delete env[k];
  return env;
}
