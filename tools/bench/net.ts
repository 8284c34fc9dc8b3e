/**
 * `npm run bench:net`: dmaload's network source against the peers, on one network, in one run, rounds alternating
 * (A B C A B C …), medians reported. The network is modelled the way object stores and CDNs limit it (this kernel
 * has no netem): the servers (nginx, and a proxy in front of it that delays each answer's first byte) live in a
 * network namespace made for the run, the clients outside it, and the link between them (a veth pair) is capped by
 * `tbf`; nginx's `limit_rate` caps each connection. The proxy talks to nginx over the namespace's own loopback, so
 * only the server-to-client hop crosses the capped link. Rows: `dmaload load URL` into memory (and with --verify on), one `curl`, `aria2c -x16 -s16 -k8M`, each
 * timed as a whole command with the CPU of its process tree (getrusage of the children).
 *
 * Usage (root, for the namespace and tbf): node dist/tools/bench/net.js [--size 1GiB] [--link 2gbit] [--per-conn 40m]
 *   [--ttfb 20] [--rounds 3] [--https] [--unshaped] [--faults] [--pull] [--rows REGEX (only the rows it matches)]
 * --pull: `dmaload pull` of a two-shard model from the hub-shaped site against huggingface_hub's snapshot_download.
 * --faults: dmaload alone, clean against 5 % 503s, 1 % resets and one 30 s stall (the issue's fault floor).
 * --unshaped: plain loopback, no namespace, no caps, no delay (the other figure of the issue's floors).
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { parseSize } from '../../src/core/util.js';
import { writeSeededFile } from '../../src/bench/data.js';
import { startNginx } from '../../test/net/nginx.js';
import { startFaultProxy } from '../../test/net/faultproxy.js';
import { CDN, SERVER, clientCommand, delayRelay, runShaped } from './shaped.js';

const here = fileURLToPath(import.meta.url);
const root = resolve(dirname(here), '../../..');
const bin = join(root, 'bin', 'dmaload.js');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
/** A full 1500-byte packet of a TCP stream with timestamps, as tbf counts it (with its Ethernet header), and its payload. */
const FRAME = 1514;
const TCP_PAYLOAD = 1448;

/**
 * The seconds dmaload's own call took (its `--json` answer's `ms`: from opening the source to the last byte placed),
 * without Node's start, the imports and the exit (which frees the target's pages); NaN for the peers' rows.
 */
function callSeconds(out: string): number {
  try {
    const ms = (JSON.parse(out) as { ms?: unknown }).ms;
    return typeof ms === 'number' ? ms / 1000 : NaN;
  } catch {
    return NaN;
  }
}

const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '1GiB' },
    link: { type: 'string', default: '2gbit' },
    'per-conn': { type: 'string', default: '40m' },
    ttfb: { type: 'string', default: '20' },
    rounds: { type: 'string', default: '3' },
    https: { type: 'boolean', default: false },
    unshaped: { type: 'boolean', default: false },
    faults: { type: 'boolean', default: false },
    pull: { type: 'boolean', default: false },
    inner: { type: 'boolean', default: false },
    'client-ns': { type: 'string' },
    rows: { type: 'string' },
  },
});

/**
 * Runs a command, timing it with the CPU of its whole process tree (python's getrusage of the children). Async: the
 * delaying proxy runs in this process and must keep answering meanwhile.
 */
function timed(cmd: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ s: number; cpu: number; rssKiB: number; out: string }> {
  const py = `import resource,subprocess,sys,time
t=time.time(); p=subprocess.run(sys.argv[1:],stdout=subprocess.PIPE); s=time.time()-t
r=resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stderr.write('%f %f %d\\n' % (s, r.ru_utime+r.ru_stime, r.ru_maxrss)); sys.stdout.write(p.stdout.decode()); sys.exit(p.returncode)`;
  return new Promise((resolve, reject) => {
    const p = spawn('/usr/bin/python3', ['-c', py, ...cmd], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => {
      if (code !== 0) return reject(new Error(`${cmd.join(' ')} failed: ${err}`));
      const [s, cpu, rss] = err.trim().split('\n').at(-1)!.split(' ').map(Number);
      resolve({ s: s!, cpu: cpu!, rssKiB: rss!, out });
    });
  });
}

async function inner(): Promise<void> {
  if (values.pull) return pullRows();
  const size = parseSize(values.size)!;
  const dir = mkdtempSync(join(tmpdir(), 'dmaload-bench-net-'));
  const shm = mkdtempSync('/dev/shm/dmaload-bench-net-');
  const sha = writeSeededFile(join(dir, 'data.bin'), size, 7);
  const shaped = !values.unshaped;
  const ng = await startNginx({ root: dir, tlsNames: [`IP:${SERVER}`], ...(shaped ? { limitRate: values['per-conn'] } : {}) });
  const base = values.https ? ng.urls.https : ng.urls.http;
  const proxy = shaped && !values.https ? await startFaultProxy({ target: ng.urls.http, ttfbMs: Number(values.ttfb), host: SERVER }) : undefined;
  // HTTPS across the link: a TCP relay on the server's address (TLS passes through it), each request delayed by
  // --ttfb as the HTTP proxy delays each answer's first byte.
  const relay = shaped && values.https ? await delayRelay(new URL(ng.urls.https), SERVER, { delayMs: Number(values.ttfb) }) : undefined;
  const url = `${proxy ? proxy.url : relay ? `https://${relay.host}:${relay.port}` : base}${shaped ? '/slow' : ''}/data.bin`;
  // The clients run in the namespace the bench started in: across the capped link.
  const client = (cmd: string[]) => clientCommand(values['client-ns'], cmd);
  const env = { ...process.env, NODE_EXTRA_CA_CERTS: ng.caPath };
  const rows: Record<string, string[]> = {
    'dmaload load': ['node', bin, 'load', url, '--json'],
    'dmaload load --verify on': ['node', bin, 'load', url, '--json', '--verify', 'on'],
    'dmaload cp (to /dev/shm)': ['node', bin, 'cp', url, join(shm, 'cp.bin'), '--json'],
    curl: ['curl', '-sS', '--fail', ...(values.https ? ['--cacert', ng.caPath] : []), '-o', join(shm, 'curl.bin'), url],
    'aria2c -x16 -s16 -k8M': [
      'aria2c',
      '-q',
      '-x16',
      '-s16',
      '-k8M',
      '--allow-overwrite=true',
      '--auto-file-renaming=false',
      ...(values.https ? [`--ca-certificate=${ng.caPath}`] : []),
      '-d',
      shm,
      '-o',
      'aria2.bin',
      url,
    ],
  };
  if (values.faults && proxy) {
    await faultRows(client(rows['dmaload load --verify on']!), proxy, size, Number(values.rounds), env, sha);
    await proxy.close();
    await ng.stop();
    rmSync(dir, { recursive: true, force: true });
    rmSync(shm, { recursive: true, force: true });
    return;
  }
  const have = (c: string) => spawnSync('sh', ['-c', `command -v ${c}`]).status === 0;
  const results: Record<string, Array<{ s: number; cpu: number; rssKiB: number; callS: number }>> = {};
  const rounds = Number(values.rounds);
  for (let k = 0; k < rounds; k++) {
    for (const [name, cmd] of Object.entries(rows)) {
      if (!have(cmd[0]!) || (values.rows && !new RegExp(values.rows).test(name))) continue;
      const r = await timed(client(cmd), env);
      (results[name] ??= []).push({ s: r.s, cpu: r.cpu, rssKiB: r.rssKiB, callS: callSeconds(r.out) });
      rmSync(join(shm, 'curl.bin'), { force: true });
      rmSync(join(shm, 'aria2.bin'), { force: true });
      rmSync(join(shm, 'cp.bin'), { force: true });
      process.stderr.write(`round ${k + 1} ${name}: ${(size / 1e6 / r.s).toFixed(0)} MB/s\n`);
    }
  }
  const linkBps = shaped ? (Number(values.link.replace(/gbit$/, '')) * 1e9) / 8 : NaN;
  const curl = results.curl ? size / median(results.curl.map((r) => r.s)) : NaN;
  const aria = results['aria2c -x16 -s16 -k8M'] ? size / median(results['aria2c -x16 -s16 -k8M'].map((r) => r.s)) : NaN;
  console.log(
    `\n${(size / 2 ** 30).toFixed(2)} GiB over ${shaped ? `${values.link} link, ${values['per-conn']}B/s per connection, ${values.ttfb} ms to first byte` : 'unshaped loopback'}${values.https ? ', HTTPS' : ', HTTP'}; medians of ${rounds} rounds`,
  );
  if (shaped) {
    console.log(
      `(The most TCP carries over this link: ${TCP_PAYLOAD}/${FRAME} of it, ${((linkBps * TCP_PAYLOAD) / FRAME / 1e6).toFixed(0)} MB/s, ${(TCP_PAYLOAD / FRAME).toFixed(3)}× — tbf counts each 1500-byte packet's headers too.)`,
    );
  }
  console.log(
    `| row | s | MB/s | CPU s/GiB | × link | call × link | × curl | × aria2c | max RSS − size (MiB) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |`,
  );
  for (const [name, rs] of Object.entries(results)) {
    const s = median(rs.map((r) => r.s));
    const cpu = median(rs.map((r) => r.cpu));
    const call = median(rs.map((r) => r.callS));
    const bps = size / s;
    const ofLink = (b: number) => (shaped && Number.isFinite(b) ? (b / linkBps).toFixed(2) : '-');
    console.log(
      `| ${name} | ${s.toFixed(2)} | ${(bps / 1e6).toFixed(0)} | ${((cpu / size) * 2 ** 30).toFixed(2)} | ${ofLink(bps)} | ${ofLink(size / call)} | ${(bps / curl).toFixed(2)} | ${(bps / aria).toFixed(2)} | ${((Math.max(...rs.map((r) => r.rssKiB)) * 1024 - (name.startsWith('dmaload load') ? size : 0)) / 2 ** 20).toFixed(0)} |`,
    );
  }
  await proxy?.close();
  await relay?.close();
  await ng.stop();
  rmSync(dir, { recursive: true, force: true });
  rmSync(shm, { recursive: true, force: true });
}

/**
 * `--pull`: a two-shard model of --size bytes on the hub-shaped nginx (its CDN host capped per connection like
 * /slow/), both hosts behind delaying proxies on the capped link; `dmaload pull` against huggingface_hub's
 * snapshot_download into empty hub caches, rounds alternating. HTTP only.
 */
async function pullRows(): Promise<void> {
  const size = parseSize(values.size)!;
  const shaped = !values.unshaped;
  const dir = mkdtempSync(join(tmpdir(), 'dmaload-bench-pull-'));
  const files = [1, 2].map((i) => ({ name: `model-0000${i}-of-00002.safetensors`, path: join(dir, `shard${i}.bin`), lfs: true }));
  for (const [i, f] of files.entries()) writeSeededFile(f.path, Math.floor(size / 2), 11 + i);
  writeFileSync(join(dir, 'config.json'), '{"model_type":"bench"}\n');
  const commit = 'b'.repeat(40);
  const ttfb = shaped ? Number(values.ttfb) : 0;
  const host = shaped ? SERVER : '127.0.0.1';
  // The CDN's proxy first: the hub's redirects name it; it learns nginx's blob port once nginx runs.
  const cdn = await startFaultProxy({ target: 'http://127.0.0.2:1', ttfbMs: ttfb, host: shaped ? CDN : '127.0.0.2' });
  const ng = await startNginx({
    hub: { repo: 'bench/model', commit, revs: { main: commit }, files: [...files, { name: 'config.json', path: join(dir, 'config.json'), lfs: false }] },
    cdnBase: cdn.url,
    ...(shaped ? { blobRate: values['per-conn'] } : {}),
  });
  cdn.setTarget(ng.urls.blobs);
  const hub = await startFaultProxy({ target: ng.urls.hub, ttfbMs: ttfb, host });
  const client = (cmd: string[]) => clientCommand(values['client-ns'], cmd);
  const python = process.env.DMALOAD_PYTHON ?? 'python3';
  const rows: Record<string, (cache: string) => string[]> = {
    'dmaload pull': () => ['node', bin, 'pull', 'bench/model', '--json'],
    'huggingface_hub snapshot_download': () => [python, '-c', "import huggingface_hub as h; h.snapshot_download('bench/model')"],
  };
  const results: Record<string, Array<{ s: number; cpu: number }>> = {};
  const rounds = Number(values.rounds);
  for (let k = 0; k < rounds; k++) {
    for (const [name, cmd] of Object.entries(rows)) {
      const cache = mkdtempSync(join(dir, 'hub-'));
      const env = {
        ...process.env,
        HF_ENDPOINT: hub.url,
        HF_HUB_CACHE: cache,
        HF_HOME: cache,
        HF_HUB_DISABLE_TELEMETRY: '1',
        HF_HUB_OFFLINE: '0',
        NO_PROXY: '*',
      };
      const r = await timed(client(cmd(cache)), env);
      rmSync(cache, { recursive: true, force: true });
      (results[name] ??= []).push({ s: r.s, cpu: r.cpu });
      process.stderr.write(`round ${k + 1} ${name}: ${(size / 1e6 / r.s).toFixed(0)} MB/s\n`);
    }
  }
  const hf = median(results['huggingface_hub snapshot_download']!.map((r) => r.s));
  console.log(
    `\n${(size / 2 ** 30).toFixed(2)} GiB in two shards from the hub-shaped site over ${shaped ? `${values.link} link, ${values['per-conn']}B/s per connection, ${values.ttfb} ms to first byte` : 'unshaped loopback'}; medians of ${rounds} rounds`,
  );
  console.log('| row | s | MB/s | CPU s/GiB | × snapshot_download |\n| --- | ---: | ---: | ---: | ---: |');
  for (const [name, rs] of Object.entries(results)) {
    const s = median(rs.map((r) => r.s));
    const cpu = median(rs.map((r) => r.cpu));
    console.log(`| ${name} | ${s.toFixed(2)} | ${(size / 1e6 / s).toFixed(0)} | ${((cpu / size) * 2 ** 30).toFixed(2)} | ${(hf / s).toFixed(2)} |`);
  }
  await hub.close();
  await cdn.close();
  await ng.stop();
  rmSync(dir, { recursive: true, force: true });
}

/** dmaload clean, then with faults injected by the proxy: 5 % 503 SlowDown, 1 % resets mid-body, one 30 s stall. */
async function faultRows(
  cmd: string[],
  proxy: Awaited<ReturnType<typeof startFaultProxy>>,
  size: number,
  rounds: number,
  env: NodeJS.ProcessEnv,
  sha: string,
): Promise<void> {
  const shas: Array<string | undefined> = [];
  const clean: number[] = [];
  const faulted: number[] = [];
  for (let k = 0; k < rounds; k++) {
    proxy.setPlan(undefined);
    clean.push((await timed(cmd, env)).s);
    let stalled = false;
    const start = proxy.stats.requests;
    proxy.setPlan((_req, n) => {
      if (!stalled && n - start === 20) {
        stalled = true;
        return { stall: 30_000 };
      }
      const x = Math.random();
      return x < 0.05 ? { status: 503, retryAfter: 0 } : x < 0.06 ? { reset: 256 * 1024 } : undefined;
    });
    const f0 = proxy.stats.faults;
    const r = await timed(cmd, env);
    const out = JSON.parse(r.out) as { sha256?: string; network?: { retries: number } };
    faulted.push(r.s);
    shas.push(out.sha256);
    process.stderr.write(
      `round ${k + 1}: clean ${clean.at(-1)!.toFixed(2)} s, faulted ${r.s.toFixed(2)} s (${proxy.stats.faults - f0} faults, ${out.network?.retries} retries, sha256 ${out.sha256})\n`,
    );
  }
  const c = median(clean);
  const f = median(faulted);
  console.log(
    `\n${(size / 2 ** 30).toFixed(2)} GiB, dmaload load --verify on: clean ${c.toFixed(2)} s, with 5 % 503s, 1 % resets and one 30 s stall ${f.toFixed(2)} s`,
  );
  console.log(
    `floor: ≤ 1.5 × clean + the 30 s stall = ${(1.5 * c + 30).toFixed(1)} s: ${f <= 1.5 * c + 30 ? 'met' : 'NOT met'} (the stall is cut at the 15 s stall timeout)`,
  );
  console.log(`every faulted load byte-exact: ${shas.every((h) => h === sha) ? 'yes' : 'NO'}`);
}

if (values.inner || values.unshaped) {
  await inner();
} else {
  process.exitCode = runShaped(
    here,
    values.link,
    process.argv.slice(2).filter((a) => a !== '--inner'),
  );
}
