/**
 * `npm run bench:model [-- --shards 8 --shard-size 512MiB --rounds 3 --format safetensors|gguf --dir DIR]`: a
 * sharded model of generated data (a safetensors index and its N shards, or N GGUF splits), loaded cold by loadModel() in a fresh process, against fio reading the
 * same files with one job per shard (O_DIRECT, io_uring, the same request size and depth as dmaload's defaults),
 * alternating rounds. Prints each round, the medians, the ratio, and the loader's peak RSS against the model's bytes.
 *
 * The loader's child verifies every tensor's bytes against the generator's hashes once, outside the timed rounds.
 * @module
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, mkdtempSync, openSync, rmSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { seededBytes } from '../../src/bench/data.js';
import { evictPath } from '../../src/pipeline/cache.js';
import { loadModel } from '../../src/api/model.js';
import { DEFAULTS } from '../../src/api/options.js';
import { formatBytes, MiB, parseSize } from '../../src/core/util.js';

const run = promisify(execFile);
const TMPFS_MAGIC = 0x01021994;
const TENSORS_PER_SHARD = 4;

interface ChildResult {
  ms: number;
  cpuMs: number;
  maxRssBytes: number;
  bytesRead: number;
  tensorBytes: number;
  files: number;
  hashes?: Record<string, string>;
}

/** In the child: one cold load of the whole model; optionally the sha256 of every tensor. */
async function child(index: string, verify: boolean): Promise<void> {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const model = await loadModel(index);
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const out: ChildResult = {
    ms,
    cpuMs: (cpu.user + cpu.system) / 1000,
    maxRssBytes: process.resourceUsage().maxRSS * 1024,
    bytesRead: model.stats.bytesRead,
    tensorBytes: model.stats.tensorBytes,
    files: model.stats.files,
  };
  if (verify) {
    out.hashes = {};
    for (const t of model.tensors.values()) {
      const h = createHash('sha256');
      for (let at = 0; at < t.byteLength; at += 256 * MiB) h.update(t.view(at, Math.min(256 * MiB, t.byteLength - at)));
      out.hashes[t.name] = h.digest('hex');
    }
  }
  model.close();
  process.stdout.write(JSON.stringify(out) + '\n');
}

/** A GGUF v3 split header: split.* metadata, 1-D I8 tensors back to back (sizes multiples of 32), padded to 32. */
function ggufHeader(names: string[], sizes: number[], no: number, count: number, total: number): Buffer {
  const parts: Buffer[] = [];
  const u32 = (n: number) => parts.push(Buffer.from(new Uint32Array([n]).buffer));
  const u64 = (n: number) => parts.push(Buffer.from(new BigUint64Array([BigInt(n)]).buffer));
  const str = (t: string) => {
    u64(Buffer.byteLength(t));
    parts.push(Buffer.from(t));
  };
  parts.push(Buffer.from('GGUF'));
  u32(3);
  u64(names.length);
  u64(3);
  str('split.no');
  u32(2);
  parts.push(Buffer.from(new Uint16Array([no]).buffer));
  str('split.count');
  u32(2);
  parts.push(Buffer.from(new Uint16Array([count]).buffer));
  str('split.tensors.count');
  u32(5);
  parts.push(Buffer.from(new Int32Array([total]).buffer));
  let at = 0;
  names.forEach((name, k) => {
    str(name);
    u32(1);
    u64(sizes[k]!);
    u32(24); // GGML_TYPE_I8
    u64(at);
    at += sizes[k]!;
  });
  const head = Buffer.concat(parts);
  return Buffer.concat([head, Buffer.alloc((32 - (head.length % 32)) % 32)]);
}

/**
 * Writes shard `i` of `count`: a header (safetensors padded to 4096 bytes; a GGUF split's padded to its 32-byte
 * alignment, as real GGUFs are), then TENSORS_PER_SHARD seeded tensors of one byte per element.
 */
function writeShard(path: string, format: 'safetensors' | 'gguf', i: number, count: number, shardSize: number, hashes: Record<string, string>): string[] {
  const dataSize = shardSize - 4096;
  const each = Math.floor(dataSize / TENSORS_PER_SHARD / 4096) * 4096;
  const sizes = Array.from({ length: TENSORS_PER_SHARD }, (_, k) => (k === TENSORS_PER_SHARD - 1 ? dataSize - each * k : each));
  const names = sizes.map((_, k) => `layers.${i}.w${k}`);
  let head: Buffer;
  if (format === 'gguf') {
    head = ggufHeader(names, sizes, i, count, count * TENSORS_PER_SHARD);
  } else {
    const header: Record<string, unknown> = {};
    let at = 0;
    sizes.forEach((n, k) => {
      header[names[k]!] = { dtype: 'U8', shape: [n], data_offsets: [at, at + n] };
      at += n;
    });
    const json = JSON.stringify(header).padEnd(4096 - 8, ' ');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    head = Buffer.concat([len, Buffer.from(json)]);
  }
  const fd = openSync(path, 'w');
  try {
    writeSync(fd, head);
    sizes.forEach((n, k) => {
      const h = createHash('sha256');
      for (let off = 0, piece = 0; off < n; off += 16 * MiB, piece++) {
        const b = seededBytes(Math.min(16 * MiB, n - off), i * 1000 + k * 100 + piece + 1);
        h.update(b);
        writeSync(fd, b);
      }
      hashes[names[k]!] = h.digest('hex');
    });
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return names;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      shards: { type: 'string', default: '8' },
      'shard-size': { type: 'string', default: '512MiB' },
      rounds: { type: 'string', default: '3' },
      dir: { type: 'string' },
      format: { type: 'string', default: 'safetensors' },
      child: { type: 'string' },
      verify: { type: 'boolean' },
    },
  });
  if (values.child) return child(values.child, values.verify === true);
  const shards = Number(values.shards);
  const shardSize = parseSize(values['shard-size']);
  const rounds = Number(values.rounds);
  const format = values.format;
  if (format !== 'safetensors' && format !== 'gguf') throw new Error('--format is safetensors or gguf');
  if (!Number.isInteger(shards) || shards < 1 || !shardSize || shardSize < 64 * 1024 || !(rounds >= 1))
    throw new Error('bad --shards, --shard-size or --rounds');
  const base = values.dir ?? process.env.DMALOAD_BENCH_DIR ?? (statfsSync(tmpdir()).type === TMPFS_MAGIC ? process.cwd() : tmpdir());
  const dir = mkdtempSync(join(base, 'dmaload-bench-model-'));
  const self = fileURLToPath(import.meta.url);
  try {
    const need = shards * shardSize;
    const fs = statfsSync(dir);
    if (fs.bavail * fs.bsize < need + 1024 * MiB) throw new Error(`not enough space in ${dir} for ${formatBytes(need)}`);
    console.log(`generating ${shards} ${format} shards of ${formatBytes(shardSize)} in ${dir} …`);
    const hashes: Record<string, string> = {};
    const files: string[] = [];
    const weightMap: Record<string, string> = {};
    for (let i = 0; i < shards; i++) {
      const name = `model-${String(i + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.${format}`;
      files.push(join(dir, name));
      for (const t of writeShard(join(dir, name), format, i, shards, shardSize, hashes)) weightMap[t] = name;
    }
    // What loadModel is given: the index, or the first GGUF split (which brings in the others).
    let index = files[0]!;
    if (format === 'safetensors') {
      index = join(dir, 'model.safetensors.index.json');
      writeFileSync(index, JSON.stringify({ metadata: { total_size: need }, weight_map: weightMap }));
    }

    const evict = () => files.forEach((f) => evictPath(f));
    const loadOnce = async (verify: boolean): Promise<ChildResult> => {
      evict();
      const { stdout } = await run(process.execPath, [self, '--child', index, ...(verify ? ['--verify'] : [])], { maxBuffer: 64 * MiB });
      return JSON.parse(stdout) as ChildResult;
    };
    const { chunkSize, queueDepth } = DEFAULTS.read;
    const fioOnce = async (): Promise<number> => {
      evict();
      const jobs = files.flatMap((f, i) => [`--name=shard${i}`, `--filename=${f}`]);
      const { stdout } = await run(
        'fio',
        [
          '--ioengine=io_uring',
          '--direct=1',
          '--rw=read',
          `--bs=${chunkSize}`,
          `--iodepth=${queueDepth}`,
          '--group_reporting',
          '--output-format=json',
          ...jobs,
        ],
        { maxBuffer: 64 * MiB },
      );
      const j = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: { read: { bw_bytes: number } }[] };
      return j.jobs[0]!.read.bw_bytes;
    };

    // Correctness first, untimed: every tensor's bytes against the generator's.
    const checked = await loadOnce(true);
    const bad = Object.entries(hashes)
      .filter(([n, h]) => checked.hashes?.[n] !== h)
      .map(([n]) => n);
    if (bad.length > 0) throw new Error(`tensor bytes differ from the generated data: ${bad.slice(0, 5).join(', ')}`);
    console.log(`verified: ${Object.keys(hashes).length} tensors in ${files.length} shards equal the generated bytes (sha256)\n`);

    const dm: ChildResult[] = [];
    const fio: number[] = [];
    let fioMissing: string | undefined;
    console.log('round  dmaload MB/s  fio MB/s  ratio  loader CPU  peak RSS');
    for (let r = 0; r < rounds; r++) {
      const d = await loadOnce(false);
      dm.push(d);
      let f = NaN;
      if (!fioMissing) {
        try {
          f = await fioOnce();
          fio.push(f);
        } catch (e) {
          fioMissing = (e as Error).message.split('\n')[0];
        }
      }
      const mbs = d.bytesRead / 1e6 / (d.ms / 1000);
      console.log(
        `${String(r + 1).padStart(5)}  ${mbs.toFixed(0).padStart(12)}  ${Number.isNaN(f) ? 'n/a'.padStart(8) : (f / 1e6).toFixed(0).padStart(8)}  ${Number.isNaN(f) ? '  n/a' : (mbs / (f / 1e6)).toFixed(2).padStart(5)}  ${d.cpuMs.toFixed(0).padStart(7)} ms  ${formatBytes(d.maxRssBytes).padStart(9)}`,
      );
    }
    const mbs = median(dm.map((d) => d.bytesRead / 1e6 / (d.ms / 1000)));
    const rss = Math.max(...dm.map((d) => d.maxRssBytes));
    const model = dm[0]!.tensorBytes;
    console.log(`\n${shards} cold ${format} shards, ${formatBytes(model)} of tensors, median of ${rounds} alternating rounds:`);
    console.log(`  dmaload loadModel(index): ${mbs.toFixed(0)} MB/s, CPU ${median(dm.map((d) => d.cpuMs)).toFixed(0)} ms`);
    if (fio.length > 0) {
      const f = median(fio) / 1e6;
      console.log(`  fio, one O_DIRECT job per shard (bs ${formatBytes(chunkSize)}, depth ${queueDepth}): ${f.toFixed(0)} MB/s`);
      console.log(`  ratio: ${(mbs / f).toFixed(2)}× fio`);
    } else {
      console.log(`  fio: not run (${fioMissing ?? 'no rounds'})`);
    }
    console.log(`  peak RSS of the loader: ${formatBytes(rss)} = the model's ${formatBytes(model)} + ${formatBytes(rss - model)}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
