/**
 * `npm run bench:share`: N processes load the same cold file, each on its own (load(), target memory) and then through
 * one `dmaload serve` (connect().load()). While every process holds its buffer (each hashed it: its bytes are checked
 * and its pages touched), measured from outside:
 * - bytes read from storage: /proc/PID/io read_bytes summed over the processes (counted where bios are submitted, so
 *   direct reads from io_uring's workers count too), and the block device's own sectors-read counter over the phase
 *   (/sys/dev/block/MAJ:MIN/stat: every process on the machine, so noise from others shows there);
 * - memory: Pss from /proc/PID/smaps_rollup summed over the processes (a page mapped by k processes counts 1/k in each),
 *   in total and for the buffers alone (Pss_Anon + Pss_Shmem, without Node's own heap and code);
 * - the time of the first load, and of cached hits: one more client loads the file again and again (closing it each
 *   time) once every process holds its buffer.
 *
 * Usage: node dist/tools/bench/share.js [--size 1GiB] [--clients 4] [--hits 20] [--dir DIR]
 * DIR (default DMALOAD_BENCH_DIR, else .cache/bench-share in the checkout) must be on a file system with direct I/O.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { load } from '../../src/api/load.js';
import type { LoadedBuffer } from '../../src/api/buffer.js';
import { GiB, formatBytes, parseSize } from '../../src/core/util.js';
import { evictPath, pageCacheBytesOf } from '../../src/pipeline/cache.js';
import { connect } from '../../src/share/client.js';
import { writeSeededFile } from '../../src/bench/data.js';

const here = fileURLToPath(import.meta.url);
const root = resolve(dirname(here), '../../..');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

function hash(b: LoadedBuffer): string {
  const h = createHash('sha256');
  for (const w of b.windows(64 << 20)) h.update(w);
  return h.digest('hex');
}

/** Child: load FILE (locally, or through SOCKET), hash it, report, hold the buffer until stdin closes. */
async function childMain(mode: string, file: string, socket: string): Promise<void> {
  const t0 = performance.now();
  let buf: LoadedBuffer;
  let close = () => {};
  if (mode === 'local') {
    buf = await load(file);
  } else {
    const c = await connect(socket);
    buf = await c.load(file);
    close = () => c.close();
  }
  const loadMs = performance.now() - t0;
  const sha256 = hash(buf);
  process.stdout.write(JSON.stringify({ loadMs, sha256, cached: buf.stats.served?.cached ?? null }) + '\n');
  process.stdin.resume();
  await new Promise((r) => process.stdin.once('end', r));
  buf.close();
  close();
}

/** Times `n` loads of a cached file by one more client, once every process holds its buffer and the machine is quiet. */
async function hitTimes(socket: string, file: string, n: number): Promise<number[]> {
  const c = await connect(socket);
  try {
    const ms: number[] = [];
    for (let i = 0; i < n; i++) {
      const t = performance.now();
      const b = await c.load(file);
      ms.push(performance.now() - t);
      if (b.stats.served?.cached !== true) throw new Error('a repeated load was not a cache hit');
      b.close();
    }
    return ms;
  } finally {
    c.close();
  }
}

interface ProcStats {
  pss: number;
  pssBuffers: number;
  readBytes: number;
}

function procStats(pid: number): ProcStats {
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(rollup)?.[1] ?? 0) * 1024;
  const io = readFileSync(`/proc/${pid}/io`, 'utf8');
  return { pss: kb('Pss'), pssBuffers: kb('Pss_Anon') + kb('Pss_Shmem'), readBytes: Number(/^read_bytes: (\d+)/m.exec(io)?.[1] ?? 0) };
}

/** Sectors read by the block device holding `file` (its partition), in bytes. */
function deviceReadBytes(file: string): number {
  const st = statSync(file);
  const major = Math.floor(st.dev / 256) & 0xfff;
  const minor = (st.dev & 0xff) | ((st.dev >> 12) & 0xfff00);
  try {
    return Number(readFileSync(`/sys/dev/block/${major}:${minor}/stat`, 'utf8').trim().split(/\s+/)[2]) * 512;
  } catch {
    return NaN;
  }
}

interface Report {
  readBytes: number;
  deviceBytes: number;
  pss: number;
  pssBuffers: number;
  firstLoadMs: number;
  hitMs: number[];
  verified: boolean;
  pageCache: number;
}

function startChild(args: string[]): { p: ChildProcess; line: Promise<Record<string, unknown>> } {
  const p = spawn(process.execPath, [here, '--child', ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
  const line = new Promise<Record<string, unknown>>((res, rej) => {
    createInterface({ input: p.stdout }).once('line', (l) => res(JSON.parse(l) as Record<string, unknown>));
    p.once('exit', (code) => rej(new Error(`a bench child exited with ${code} before reporting`)));
  });
  return { p, line };
}

async function phase(kind: 'local' | 'served', file: string, sha: string, size: number, clients: number, hits: number, socket: string): Promise<Report> {
  evictPath(file);
  let server: ChildProcess | undefined;
  if (kind === 'served') {
    server = spawn(process.execPath, [join(root, 'bin', 'dmaload.js'), 'serve', '--socket', socket, '--budget', String(2 * size)], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    await new Promise<void>((res, rej) => {
      let err = '';
      server!.stderr!.on('data', (d: Buffer) => {
        err += d.toString();
        if (/listening/.test(err)) res();
      });
      server!.once('exit', (code) => rej(new Error(`dmaload serve exited with ${code}: ${err}`)));
    });
  }
  const dev0 = deviceReadBytes(file);
  const kids = Array.from({ length: clients }, () => startChild([kind, file, socket]));
  try {
    const lines = await Promise.all(kids.map((k) => k.line));
    const deviceBytes = deviceReadBytes(file) - dev0;
    const pids = [...(server ? [server.pid!] : []), ...kids.map((k) => k.p.pid!)];
    const stats = pids.map(procStats);
    const hitMs = kind === 'served' ? await hitTimes(socket, file, hits) : [];
    return {
      readBytes: stats.reduce((n, s) => n + s.readBytes, 0),
      deviceBytes,
      pss: stats.reduce((n, s) => n + s.pss, 0),
      pssBuffers: stats.reduce((n, s) => n + s.pssBuffers, 0),
      firstLoadMs: Math.max(...lines.map((l) => l.loadMs as number)),
      hitMs,
      verified: lines.every((l) => l.sha256 === sha),
      pageCache: pageCacheBytesOf(file, size) ?? NaN,
    };
  } finally {
    for (const k of kids) k.p.stdin!.end();
    await Promise.all(kids.map((k) => new Promise((r) => (k.p.exitCode !== null ? r(null) : k.p.once('exit', r)))));
    if (server) {
      server.kill('SIGTERM');
      await new Promise((r) => (server.exitCode !== null ? r(null) : server.once('exit', r)));
    }
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { size: { type: 'string' }, clients: { type: 'string' }, hits: { type: 'string' }, dir: { type: 'string' } } });
  const size = parseSize(values.size ?? '1GiB') ?? GiB;
  const clients = Number(values.clients ?? 4);
  const hits = Number(values.hits ?? 20);
  const base = values.dir ?? process.env.DMALOAD_BENCH_DIR ?? join(root, '.cache', 'bench-share');
  mkdirSync(base, { recursive: true });
  const dir = mkdtempSync(join(base, 'run-'));
  const sockDir = mkdtempSync(join(tmpdir(), 'dmaload-bench-sock-'));
  try {
    const free = statfsSync(dir).bavail * statfsSync(dir).bsize;
    if (free < size + GiB) throw new Error(`not enough space in ${dir} for a ${formatBytes(size)} file`);
    const file = join(dir, 'shared.bin');
    const sha = writeSeededFile(file, size, 15);
    const socket = join(sockDir, 'bench.sock');
    const local = await phase('local', file, sha, size, clients, hits, socket);
    const served = await phase('served', file, sha, size, clients, hits, socket);
    const g = (n: number) => (Number.isFinite(n) ? `${(n / GiB).toFixed(2)} GiB` : 'n/a');
    const rows: Array<[string, string, string]> = [
      ['bytes read from storage (read_bytes, summed)', g(local.readBytes), g(served.readBytes)],
      ['block device sectors read during the phase (whole machine)', g(local.deviceBytes), g(served.deviceBytes)],
      ['summed PSS of every process', g(local.pss), g(served.pss)],
      ['summed PSS of the buffers (Pss_Anon + Pss_Shmem)', g(local.pssBuffers), g(served.pssBuffers)],
      ['first load, slowest process', `${local.firstLoadMs.toFixed(0)} ms`, `${served.firstLoadMs.toFixed(0)} ms`],
      [
        `cached hit: another client loads it again (median of ${served.hitMs.length}; min–max)`,
        '–',
        `${median(served.hitMs).toFixed(2)} ms (${Math.min(...served.hitMs).toFixed(2)}–${Math.max(...served.hitMs).toFixed(2)})`,
      ],
      ['page cache left', g(local.pageCache), g(served.pageCache)],
      ['every process read the file’s SHA-256', local.verified ? 'yes' : 'NO', served.verified ? 'yes' : 'NO'],
    ];
    console.log(`${clients} processes load one cold ${formatBytes(size)} file (${file})\n`);
    console.log(`| | ${clients} separate load()s | dmaload serve + ${clients} clients |`);
    console.log('| --- | ---: | ---: |');
    for (const r of rows) console.log(`| ${r.join(' | ')} |`);
    if (!local.verified || !served.verified) process.exitCode = 1;
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(sockDir, { recursive: true, force: true });
  }
}

if (process.argv[2] === '--child') {
  const [, , , mode, file, socket] = process.argv;
  childMain(mode!, file!, socket!).catch((e: Error) => {
    process.stderr.write(`bench child: ${e.message}\n`);
    process.exit(1);
  });
} else {
  main().catch((e: Error) => {
    console.error(e.message);
    process.exit(1);
  });
}
