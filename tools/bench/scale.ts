/**
 * `npm run bench:scale`: M machines × R ranks pulling one safetensors model from one S3 object store, counted by the
 * store. Each "machine" is a network namespace of its own with a veth link to the store's namespace; the store is a
 * real OpenStack Swift with its S3 API (test/net/swift.ts, imported as net.ts imports the test servers). Three ways,
 * for each M×R:
 * - A `serve`: each machine runs `dmaload serve --allow-source s3://BUCKET/` (AWS credentials and
 *   AWS_ENDPOINT_URL_S3 in its environment); its R ranks `connect()` and `client.loadModel(ref, { rank, worldSize:
 *   M·R, split: 'rows' })`: the server downloads the file once and every local rank maps it.
 * - B `slices`: the same ranks without a server, each `loadModel(ref, { rank, worldSize, split: 'rows' })`: only its
 *   own row slices (and the tensors every rank needs whole) by ranged GETs.
 * - C `whole`: each rank `load(ref)`s the whole file.
 *
 * What is counted, independently of dmaload: every S3 request the store answered and its body bytes (Swift's proxy
 * access log), the bytes each machine received over its link (the relay below counts them per link), Pss summed
 * from /proc/PID/smaps_rollup over machine 0's ranks (and its server) while every rank holds its share and has
 * hashed it, and the wall time from the start signal to the last rank's model. Every rank's bytes are checked: the
 * whole file's SHA-256 (C), or the tensors' names, file offsets and lengths against the row split computed here from
 * the generator's layout, and the SHA-256 of those bytes (A, B).
 *
 * The relay: Swift's test harness binds every server to 127.0.0.1 of its namespace, which no other namespace can
 * reach; a TCP relay in the store's namespace listens on the store's end of every link and passes bytes unchanged
 * (the Host a client signed for arrives as it was signed) to the proxy on loopback.
 *
 * Usage (root): node dist/tools/bench/scale.js [--size 256MiB (below 2 GiB)] [--configs 1x4,2x2,2x4,4x2,4x4]
 *   [--scenarios serve,slices,whole] [--link RATE (tbf on each link, store → machine; default none)] [--json]
 * @module
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { cpus, loadavg, release, tmpdir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { connect, load, loadModel, type LoadedModel } from '../../src/index.js';
import { seededBytes } from '../../src/bench/data.js';
import { formatBytes, MiB, parseSize } from '../../src/core/util.js';
import { startSwift, swiftMissing, type Swift } from '../../test/net/swift.js';

const here = fileURLToPath(import.meta.url);
const root = resolve(dirname(here), '../../..');
const bin = join(root, 'bin', 'dmaload.js');
const BUCKET = 'scale';
const KEY = 'llm/model.safetensors';
const REF = `s3://${BUCKET}/${KEY}`;
const TAG = `dsc${process.pid % 100000}`;
const storeNs = (tag: string) => `${tag}-store`;
const machineNs = (tag: string, i: number) => `${tag}-m${i}`;
/** The store's end of machine i's link (the machine's end is .1). */
const storeAddr = (i: number) => `10.79.${i + 1}.2`;

const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '256MiB' },
    configs: { type: 'string', default: '1x4,2x2,2x4,4x2,4x4' },
    scenarios: { type: 'string', default: 'serve,slices,whole' },
    link: { type: 'string' },
    json: { type: 'boolean', default: false },
    // Internal: the run inside the store's namespace, and one rank.
    inner: { type: 'boolean', default: false },
    tag: { type: 'string' },
    rank: { type: 'string' },
    world: { type: 'string' },
    mode: { type: 'string' },
    socket: { type: 'string' },
  },
});

// ---------------------------------------------------------------------------------------------------------------
// The model: a decoder's layout (embeddings, L layers of attention and MLP weights with their norms, a head), BF16
// matrices and F32 norms, seeded bytes.

interface TensorSpec {
  name: string;
  dtype: 'BF16' | 'F32';
  shape: number[];
  /** Absolute file offset and length of its data. */
  offset: number;
  bytes: number;
}

function buildModel(target: number): { file: Buffer; tensors: TensorSpec[] } {
  const d = target >= 96 * MiB ? 1024 : 256;
  const vocab = 16 * d;
  const layers = Math.max(1, Math.round((target - 64 * d * d) / (32 * d * d)));
  const shapes: Array<[string, 'BF16' | 'F32', number[]]> = [['model.embed_tokens.weight', 'BF16', [vocab, d]]];
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    shapes.push([`${p}.input_layernorm.weight`, 'F32', [d]]);
    for (const x of ['q', 'k', 'v', 'o']) shapes.push([`${p}.self_attn.${x}_proj.weight`, 'BF16', [d, d]]);
    shapes.push([`${p}.post_attention_layernorm.weight`, 'F32', [d]]);
    shapes.push([`${p}.mlp.gate_proj.weight`, 'BF16', [4 * d, d]], [`${p}.mlp.up_proj.weight`, 'BF16', [4 * d, d]]);
    shapes.push([`${p}.mlp.down_proj.weight`, 'BF16', [d, 4 * d]]);
  }
  shapes.push(['model.norm.weight', 'F32', [d]], ['lm_head.weight', 'BF16', [vocab, d]]);
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let at = 0;
  const sized = shapes.map(([name, dtype, shape]) => {
    const bytes = shape.reduce((a, b) => a * b, 1) * (dtype === 'BF16' ? 2 : 4);
    header[name] = { dtype, shape, data_offsets: [at, at + bytes] };
    at += bytes;
    return { name, dtype, shape, bytes, rel: at - bytes };
  });
  let json = JSON.stringify(header);
  while ((8 + json.length) % 8 !== 0) json += ' ';
  const start = 8 + Buffer.byteLength(json);
  const file = Buffer.allocUnsafe(start + at);
  file.writeBigUInt64LE(BigInt(Buffer.byteLength(json)), 0);
  file.write(json, 8);
  const tensors = sized.map((t, i) => {
    file.set(seededBytes(t.bytes, i + 1), start + t.rel);
    return { name: t.name, dtype: t.dtype, shape: t.shape, offset: start + t.rel, bytes: t.bytes };
  });
  return { file, tensors };
}

/** Rank r's share under split 'rows', from the layout (docs/api.md's rule): 2-D tensors cut by rows, the rest whole. */
function expectedShare(tensors: TensorSpec[], rank: number, world: number): Array<[string, number, number]> {
  return tensors.map((t) => {
    if (t.shape.length !== 2) return [t.name, t.offset, t.bytes];
    const rows = t.shape[0]!;
    const rowBytes = t.bytes / rows;
    const s = Math.floor((rank * rows) / world);
    const e = Math.floor(((rank + 1) * rows) / world);
    return [t.name, t.offset + s * rowBytes, (e - s) * rowBytes];
  });
}

function shareDigest(file: Buffer, share: Array<[string, number, number]>): string {
  const h = createHash('sha256');
  for (const [, off, len] of [...share].sort((a, b) => a[1] - b[1])) h.update(file.subarray(off, off + len));
  return h.digest('hex');
}

// ---------------------------------------------------------------------------------------------------------------
// One rank (in its machine's namespace): ready, wait for 'go', load, report, hold its share until stdin ends.

interface RankReport {
  pid: number;
  start: number;
  end: number;
  requests: number | null;
  retries: number | null;
  sha256: string;
  share?: Array<[string, number, number]>;
}

async function rankMain(): Promise<void> {
  const mode = values.mode!;
  const rank = Number(values.rank);
  const worldSize = Number(values.world);
  const lines = createInterface({ input: process.stdin });
  const next = (() => {
    const it = lines[Symbol.asyncIterator]();
    return async () => (await it.next()).value as string | undefined;
  })();
  const client = mode === 'serve' ? await connect(values.socket!) : undefined;
  process.stdout.write('ready\n');
  if ((await next()) !== 'go') return;
  const start = Date.now();
  const report: RankReport = { pid: process.pid, start, end: 0, requests: null, retries: null, sha256: '' };
  let close: () => void;
  if (mode === 'whole') {
    const buf = await load(REF);
    report.end = Date.now();
    report.requests = buf.stats.network?.requests ?? null;
    report.retries = buf.stats.network?.retries ?? null;
    const h = createHash('sha256');
    for (const w of buf.windows(64 * MiB)) h.update(w);
    report.sha256 = h.digest('hex');
    close = () => buf.close();
  } else {
    const opts = { rank, worldSize, split: 'rows' as const };
    const model: LoadedModel = client ? await client.loadModel(REF, opts) : await loadModel(REF, opts);
    report.end = Date.now();
    const net = model.stats.perFile.map((f) => f.stats.network?.requests);
    report.requests = client ? null : net.reduce<number>((a, b) => a + (b ?? 0), 0);
    report.retries = client ? null : model.stats.perFile.reduce((a, f) => a + (f.stats.network?.retries ?? 0), 0);
    const ts = [...model.tensors.values()].sort((a, b) => a.offset - b.offset);
    const h = createHash('sha256');
    for (const t of ts) for (let at = 0; at < t.byteLength; at += 64 * MiB) h.update(t.view(at, Math.min(64 * MiB, t.byteLength - at)));
    report.sha256 = h.digest('hex');
    report.share = ts.map((t) => [t.name, t.offset, t.byteLength]);
    close = () => model.close();
  }
  process.stdout.write(JSON.stringify(report) + '\n');
  while ((await next()) !== undefined);
  close();
  client?.close();
}

// ---------------------------------------------------------------------------------------------------------------
// The store's side: Swift, the relay, the machines' servers and ranks.

interface Relay {
  port: number;
  /** Bytes from the store to each machine (responses, headers included), by machine index. */
  down: Map<number, number>;
  up: Map<number, number>;
  connections: number;
  close(): Promise<void>;
}

async function startRelay(target: number): Promise<Relay> {
  const down = new Map<number, number>();
  const up = new Map<number, number>();
  const sockets = new Set<Socket>();
  const relay = { port: 0, down, up, connections: 0 } as Relay;
  const server: Server = createServer((client) => {
    relay.connections++;
    const m = Number(/^(?:::ffff:)?10\.79\.(\d+)\.2$/.exec(client.localAddress ?? '')?.[1] ?? 0) - 1;
    const store = netConnect({ host: '127.0.0.1', port: target });
    for (const s of [client, store]) {
      sockets.add(s);
      s.setNoDelay(true);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        client.destroy();
        store.destroy();
      });
    }
    store.on('data', (b: Buffer) => down.set(m, (down.get(m) ?? 0) + b.length));
    client.on('data', (b: Buffer) => up.set(m, (up.get(m) ?? 0) + b.length));
    client.pipe(store);
    store.pipe(client);
  });
  await new Promise<void>((r) => server.listen(0, '0.0.0.0', r));
  relay.port = (server.address() as { port: number }).port;
  relay.close = () => {
    for (const s of sockets) s.destroy();
    return new Promise((r) => server.close(() => r()));
  };
  return relay;
}

/** The environment of a machine's processes: the store's credentials and its address on that machine's link. */
function machineEnv(swift: Swift, relay: Relay, i: number, dir: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of Object.keys(env)) if (/^(AWS_|HF_)|^(https?|no|all)_proxy$/i.test(k)) delete env[k];
  delete env.LD_PRELOAD;
  return {
    ...env,
    AWS_ACCESS_KEY_ID: swift.accessKey,
    AWS_SECRET_ACCESS_KEY: swift.secretKey,
    AWS_REGION: swift.region,
    AWS_ENDPOINT_URL_S3: `http://${storeAddr(i)}:${relay.port}`,
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_CONFIG_FILE: join(dir, 'no-aws-config'),
    AWS_SHARED_CREDENTIALS_FILE: join(dir, 'no-aws-credentials'),
  };
}

function inNs(tag: string, i: number, cmd: string[], env: NodeJS.ProcessEnv): ChildProcess {
  // nsenter execs the command itself: the child's pid is the command's.
  return spawn('nsenter', [`--net=/run/netns/${machineNs(tag, i)}`, '--', ...cmd], { env, stdio: ['pipe', 'pipe', 'pipe'] });
}

interface Pss {
  pss: number;
  shmem: number;
  anon: number;
}

function pssOf(pid: number): Pss {
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(rollup)?.[1] ?? 0) * 1024;
  return { pss: kb('Pss'), shmem: kb('Pss_Shmem'), anon: kb('Pss_Anon') };
}

interface ServeProc {
  p: ChildProcess;
  pid: number;
  log: string;
}

async function startServe(tag: string, i: number, env: NodeJS.ProcessEnv, dir: string): Promise<ServeProc> {
  const socket = join(dir, `serve-${i}.sock`);
  const p = inNs(tag, i, [process.execPath, bin, 'serve', '--socket', socket, '--allow-source', `s3://${BUCKET}/`], env);
  const s: ServeProc = { p, pid: 0, log: '' };
  p.stdout!.setEncoding('utf8').on('data', (d: string) => (s.log += d));
  await new Promise<void>((resolve, reject) => {
    p.stderr!.setEncoding('utf8').on('data', (d: string) => {
      s.log += d;
      const m = /listening on .* \(pid (\d+)/.exec(s.log);
      if (m && !s.pid) {
        s.pid = Number(m[1]);
        resolve();
      }
    });
    p.once('exit', (code) => reject(new Error(`dmaload serve on machine ${i} exited (${code}): ${s.log}`)));
  });
  return s;
}

async function stopServe(s: ServeProc): Promise<number | undefined> {
  if (s.p.exitCode === null && s.p.signalCode === null) {
    const exited = new Promise((r) => s.p.once('exit', r));
    s.p.kill('SIGTERM');
    await exited;
  }
  const m = /stopped \(\d+ hits, \d+ misses, (\d+) loads/.exec(s.log);
  return m ? Number(m[1]) : undefined;
}

interface RankProc {
  p: ChildProcess;
  machine: number;
  rank: number;
  out: AsyncIterator<string>;
  report?: RankReport;
}

function spawnRank(tag: string, machine: number, rank: number, world: number, mode: string, env: NodeJS.ProcessEnv, socket: string): RankProc {
  const p = inNs(tag, machine, [process.execPath, here, '--mode', mode, '--rank', String(rank), '--world', String(world), '--socket', socket], env);
  let err = '';
  p.stderr!.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-4000)));
  p.once('exit', (code) => {
    if (code) process.stderr.write(`rank ${rank} (machine ${machine}) exited ${code}: ${err}\n`);
  });
  return { p, machine, rank, out: createInterface({ input: p.stdout! })[Symbol.asyncIterator]() };
}

async function expectLine(r: RankProc): Promise<string> {
  const n = await r.out.next();
  if (n.done) throw new Error(`rank ${r.rank} (machine ${r.machine}) ended without a word (exit ${r.p.exitCode})`);
  return n.value;
}

interface Result {
  scenario: string;
  machines: number;
  ranks: number;
  fileBytes: number;
  storeGets: number;
  storeBytes: number;
  storeOther: number;
  storeErrors: number;
  /** The statuses of the answers that were not 2xx, and how many of each. */
  storeErrorStatuses: Record<string, number>;
  /** Retries the ranks made, summed (B, C). */
  rankRetries: number | null;
  /** The GETs by body size (bins of SIZE_BINS). */
  getSizes: Record<string, number>;
  perMachineBytes: number[];
  relayConnections: number;
  wallMs: number;
  rankMs: { min: number; max: number };
  rankRequests: number[] | null;
  serverDownloads: Array<number | undefined> | null;
  pssMachine0: { ranks: Pss; server: Pss | null; total: number };
  /** Bytes machine 0's server holds (status().used): its copy of the file. */
  heldMachine0: number | null;
  /** Machine 0's memory: the processes' PSS, with the server's whole copy counted in place of the pages ranks mapped. */
  memoryMachine0: number;
  exact: boolean;
  loadavg: [number, number];
}

async function runOne(
  ctx: { tag: string; swift: Swift; relay: Relay; dir: string; file: Buffer; sha: string; tensors: TensorSpec[] },
  scenario: string,
  M: number,
  R: number,
): Promise<Result> {
  const { tag, swift, relay, dir } = ctx;
  const world = M * R;
  const la0 = loadavg()[0]!;
  const envs = Array.from({ length: M }, (_, i) => machineEnv(swift, relay, i, dir));
  const servers = scenario === 'serve' ? await Promise.all(envs.map((e, i) => startServe(tag, i, e, dir))) : [];
  const ranks: RankProc[] = [];
  try {
    for (let i = 0; i < M; i++) for (let j = 0; j < R; j++) ranks.push(spawnRank(tag, i, i * R + j, world, scenario, envs[i]!, join(dir, `serve-${i}.sock`)));
    for (const r of ranks) if ((await expectLine(r)) !== 'ready') throw new Error(`rank ${r.rank} did not get ready`);
    // What came before (start-up, the last run's stragglers) is not this run's.
    await swift.accessLog();
    swift.clearAccessLog();
    relay.down.clear();
    relay.up.clear();
    const conns0 = relay.connections;
    const go = Date.now();
    for (const r of ranks) r.p.stdin!.write('go\n');
    for (const r of ranks) r.report = JSON.parse(await expectLine(r)) as RankReport;
    const wallMs = Math.max(...ranks.map((r) => r.report!.end)) - go;
    const here0 = ranks.filter((r) => r.machine === 0).map((r) => pssOf(r.report!.pid));
    const sum = (xs: Pss[]): Pss =>
      xs.reduce((a, b) => ({ pss: a.pss + b.pss, shmem: a.shmem + b.shmem, anon: a.anon + b.anon }), { pss: 0, shmem: 0, anon: 0 });
    const server = servers[0] ? pssOf(servers[0].pid) : null;
    const rankPss = sum(here0);
    // What the server holds (its memfd, whether or not a local rank touched every page of it).
    let held: number | null = null;
    if (scenario === 'serve') {
      const c = await connect(join(dir, 'serve-0.sock'));
      held = (await c.status()).used;
      c.close();
    }
    let exact = true;
    for (const r of ranks) {
      const rep = r.report!;
      if (scenario === 'whole') exact &&= rep.sha256 === ctx.sha;
      else {
        // Names, file offsets and lengths as the layout says, then the bytes.
        const key = (xs: Array<[string, number, number]>) => JSON.stringify(xs.filter((t) => t[2] > 0).sort((a, b) => a[1] - b[1] || a[0].localeCompare(b[0])));
        const want = expectedShare(ctx.tensors, r.rank, world);
        exact &&= key(rep.share ?? []) === key(want) && rep.sha256 === shareDigest(ctx.file, want);
      }
    }
    for (const r of ranks) r.p.stdin!.end();
    await Promise.all(ranks.map((r) => new Promise((res) => (r.p.exitCode !== null ? res(0) : r.p.once('exit', res)))));
    const downloads = servers.length ? await Promise.all(servers.map(stopServe)) : null;
    // Access lines are sent once a request has ended; give the last ones a moment.
    await new Promise((r) => setTimeout(r, 300));
    const log = await swift.accessLog();
    const gets = log.filter((e) => e.method === 'GET');
    const rms = ranks.map((r) => r.report!.end - r.report!.start);
    return {
      scenario,
      machines: M,
      ranks: R,
      fileBytes: ctx.file.length,
      storeGets: gets.length,
      storeBytes: log.reduce((n, e) => n + e.bytesSent, 0),
      storeOther: log.length - gets.length,
      storeErrors: log.filter((e) => e.status >= 300).length,
      storeErrorStatuses: log.filter((e) => e.status >= 300).reduce<Record<string, number>>((o, e) => ({ ...o, [e.status]: (o[e.status] ?? 0) + 1 }), {}),
      rankRetries: scenario === 'serve' ? null : ranks.reduce((n, r) => n + (r.report!.retries ?? 0), 0),
      getSizes: Object.fromEntries(SIZE_BINS.map(([name, lo, hi]) => [name, gets.filter((e) => e.bytesSent > lo && e.bytesSent <= hi).length] as const)),
      perMachineBytes: Array.from({ length: M }, (_, i) => relay.down.get(i) ?? 0),
      relayConnections: relay.connections - conns0,
      wallMs,
      rankMs: { min: Math.min(...rms), max: Math.max(...rms) },
      rankRequests: scenario === 'serve' ? null : ranks.map((r) => r.report!.requests ?? NaN),
      serverDownloads: downloads,
      pssMachine0: { ranks: rankPss, server, total: rankPss.pss + (server?.pss ?? 0) },
      heldMachine0: held,
      memoryMachine0: rankPss.pss + (server?.pss ?? 0) + (held === null ? 0 : held - rankPss.shmem - (server?.shmem ?? 0)),
      exact,
      loadavg: [la0, loadavg()[0]!],
    };
  } finally {
    for (const r of ranks) if (r.p.exitCode === null) r.p.kill('SIGKILL');
    for (const s of servers) if (s.p.exitCode === null) s.p.kill('SIGKILL');
  }
}

const SIZE_BINS: Array<[string, number, number]> = [
  ['≤64KiB', -1, 64 * 1024],
  ['≤1MiB', 64 * 1024, MiB],
  ['≤4MiB', MiB, 4 * MiB],
  ['≤16MiB', 4 * MiB, 16 * MiB],
  ['>16MiB', 16 * MiB, Infinity],
];

const NAMES: Record<string, string> = { serve: 'A serve per machine', slices: 'B per-rank slices', whole: 'C whole file per rank' };

function printTable(results: Result[], file: number): void {
  const x = (n: number) => `${(n / file).toFixed(3)}×`;
  const mib = (n: number) => (n / MiB).toFixed(1);
  console.log(
    '| way | M×R | store GETs | store bytes (MiB) | × file | max per machine (MiB) | × file | PSS machine 0 (MiB) | × file | memory machine 0 × file | wall s | GET/s | exact |',
  );
  console.log('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |');
  for (const r of results) {
    const per = Math.max(...r.perMachineBytes);
    console.log(
      `| ${NAMES[r.scenario]} | ${r.machines}×${r.ranks} | ${r.storeGets} | ${mib(r.storeBytes)} | ${x(r.storeBytes)} | ${mib(per)} | ${x(per)} | ${mib(r.pssMachine0.total)} | ${x(r.pssMachine0.total)} | ${x(r.memoryMachine0)} | ${(r.wallMs / 1000).toFixed(2)} | ${((r.storeGets / r.wallMs) * 1000).toFixed(0)} | ${r.exact ? 'yes' : 'NO'} |`,
    );
  }
}

async function inner(): Promise<void> {
  const tag = values.tag!;
  const size = parseSize(values.size);
  if (!size) throw new Error(`--size ${values.size}: not a size`);
  const configs = values.configs.split(',').map((c) => {
    const m = /^(\d+)x(\d+)$/.exec(c.trim());
    if (!m) throw new Error(`--configs: '${c}' is not MxR`);
    return [Number(m[1]), Number(m[2])] as const;
  });
  const scenarios = values.scenarios.split(',').map((s) => s.trim());
  for (const s of scenarios) if (!NAMES[s]) throw new Error(`--scenarios: '${s}' is not serve, slices or whole`);
  const dir = mkdtempSync(join(tmpdir(), 'dmaload-bench-scale-'));
  const { file, tensors } = buildModel(size);
  // The harness puts the object in one signed PUT, its payload hashed in one call: below 2 GiB.
  if (file.length >= 2 ** 31 - 1) throw new Error(`--size ${values.size}: the model must stay below 2 GiB (one signed PutObject of test/net/swift.ts)`);
  const sha = createHash('sha256').update(file).digest('hex');
  const swift = await startSwift();
  const relay = await startRelay(Number(new URL(swift.endpoint).port));
  const results: Result[] = [];
  try {
    await swift.createBucket(BUCKET);
    await swift.put(BUCKET, KEY, file);
    const split = tensors.filter((t) => t.shape.length === 2);
    const whole = tensors.filter((t) => t.shape.length !== 2).reduce((n, t) => n + t.bytes, 0);
    process.stderr.write(
      `model: ${formatBytes(file.length)} (${file.length} bytes), ${tensors.length} tensors (${split.length} split by rows, ${tensors.length - split.length} whole on every rank: ${whole} bytes), in ${REF}\n`,
    );
    for (const [M, R] of configs) {
      for (const s of scenarios) {
        const r = await runOne({ tag, swift, relay, dir, file, sha, tensors }, s, M, R);
        results.push(r);
        process.stderr.write(
          `${s} ${M}x${R}: store ${r.storeGets} GETs, ${(r.storeBytes / file.length).toFixed(3)}× file; per machine ${r.perMachineBytes.map((b) => (b / file.length).toFixed(3)).join(' ')}× file; PSS m0 ${(r.pssMachine0.total / file.length).toFixed(3)}× file; ${(r.wallMs / 1000).toFixed(2)} s; exact ${r.exact}; load ${r.loadavg.map((l) => l.toFixed(1)).join('→')}\n`,
        );
      }
    }
  } finally {
    await relay.close();
    await swift.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const meta = {
    date: new Date().toISOString(),
    kernel: release(),
    cpus: cpus().length,
    memoryBytes: totalmem(),
    node: process.version,
    link: values.link ?? 'unshaped veth',
    file: { bytes: file.length, sha256: sha, tensors: tensors.length, splitTensors: tensors.filter((t) => t.shape.length === 2).length },
  };
  if (values.json) {
    console.log(JSON.stringify({ meta, results }, null, 2));
    return;
  }
  console.log(
    `\n${formatBytes(file.length)} safetensors model (${tensors.length} tensors) in one Swift S3 store; each machine a network namespace on a veth link (${meta.link}); ${meta.cpus} CPUs, kernel ${meta.kernel}, Node ${meta.node}`,
  );
  printTable(results, file.length);
  console.log('\nper rank: requests it made (B, C: stats.network.requests) and time to its model (ms, min–max)');
  for (const r of results) {
    const rq = r.rankRequests
      ? `${Math.min(...r.rankRequests)}–${Math.max(...r.rankRequests)} requests per rank`
      : `downloads per server ${r.serverDownloads?.join(',')}`;
    console.log(
      `${r.scenario} ${r.machines}x${r.ranks}: ${rq}; ${r.rankMs.min}–${r.rankMs.max} ms; PSS m0 ranks ${(r.pssMachine0.ranks.pss / MiB).toFixed(1)} MiB (shmem ${(r.pssMachine0.ranks.shmem / MiB).toFixed(1)}, anon ${(r.pssMachine0.ranks.anon / MiB).toFixed(1)}), server ${r.pssMachine0.server ? (r.pssMachine0.server.pss / MiB).toFixed(1) : '-'} MiB, holding ${r.heldMachine0 === null ? '-' : (r.heldMachine0 / MiB).toFixed(1)} MiB; GETs by size ${Object.entries(
        r.getSizes,
      )
        .map(([k, v]) => `${k} ${v}`)
        .join(
          ', ',
        )}; store non-GET ${r.storeOther}, not 2xx ${r.storeErrors} ${JSON.stringify(r.storeErrorStatuses)}, rank retries ${r.rankRetries ?? '-'}; relay connections ${r.relayConnections}; 1-min load ${r.loadavg.map((l) => l.toFixed(1)).join('→')}`,
    );
  }
}

// ---------------------------------------------------------------------------------------------------------------

function outer(): void {
  if (process.getuid?.() !== 0) throw new Error('bench:scale needs root (network namespaces, veth links)');
  if (swiftMissing) throw new Error(swiftMissing);
  const machines = Math.max(
    ...values.configs.split(',').map((c) => {
      const n = Number(/^(\d+)x/.exec(c.trim())?.[1]);
      if (!Number.isInteger(n) || n < 1 || n > 200) throw new Error(`--configs: '${c}' is not MxR`);
      return n;
    }),
  );
  const store = storeNs(TAG);
  const made: string[] = [];
  const ip = (...a: string[]) => {
    const r = spawnSync('ip', a, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`ip ${a.join(' ')}: ${r.stderr}`);
  };
  try {
    ip('netns', 'add', store);
    made.push(store);
    ip('-n', store, 'link', 'set', 'lo', 'up');
    for (let i = 0; i < machines; i++) {
      const ns = machineNs(TAG, i);
      ip('netns', 'add', ns);
      made.push(ns);
      ip('-n', ns, 'link', 'set', 'lo', 'up');
      const a = `${TAG}m${i}`;
      const b = `${TAG}s${i}`;
      ip('link', 'add', a, 'netns', ns, 'type', 'veth', 'peer', 'name', b, 'netns', store);
      ip('-n', ns, 'addr', 'add', `10.79.${i + 1}.1/24`, 'dev', a);
      ip('-n', ns, 'link', 'set', a, 'up');
      ip('-n', store, 'addr', 'add', `${storeAddr(i)}/24`, 'dev', b);
      ip('-n', store, 'link', 'set', b, 'up');
      // Store to machine is the direction a download fills.
      if (values.link) {
        const r = spawnSync(
          'ip',
          ['netns', 'exec', store, 'tc', 'qdisc', 'replace', 'dev', b, 'root', 'tbf', 'rate', values.link, 'burst', '1mb', 'latency', '50ms'],
          {
            encoding: 'utf8',
          },
        );
        if (r.status !== 0) throw new Error(`tc: ${r.stderr}`);
      }
    }
    const args = process.argv.slice(2);
    const r = spawnSync('ip', ['netns', 'exec', store, process.execPath, here, '--inner', '--tag', TAG, ...args], { stdio: 'inherit' });
    process.exitCode = r.status ?? 1;
  } finally {
    // Deleting a namespace deletes the veth ends in it, and so both ends of each pair.
    for (const ns of made.reverse()) spawnSync('ip', ['netns', 'del', ns]);
  }
}

if (values.mode) await rankMain();
else if (values.inner) await inner();
else outer();
