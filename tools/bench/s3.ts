/**
 * `npm run bench:s3` (issue #27's floor): a --size object (default 1 GiB) from a local OpenStack Swift with its s3api
 * (the store the tests start), read by `dmaload load s3://…` into memory, by `aws s3 cp … -` (Debian's awscli) into
 * /dev/null, and by boto3's download_fileobj into a writer that drops the bytes; rounds alternate, medians reported,
 * each row a whole command (process start included) with the CPU of its process tree, and the store's own CPU over
 * the row (its proxy is Python: where it is the bottleneck, that column shows it).
 *
 * Usage (root: Swift runs as its own user): node dist/tools/bench/s3.js [--size 1GiB] [--rounds 3]
 *   [--shaped [--link 2gbit] [--per-conn 40m] [--ttfb 20]]
 * boto3 from DMALOAD_PYTHON (a python with boto3), else python3.
 * --shaped: the store behind the limited network of bench:net (./shaped.ts), reached through a relay on the link
 * that delays each request by --ttfb and paces each connection to --per-conn bytes/s.
 */
import { spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { parseSize } from '../../src/core/util.js';
import { startSwift } from '../../test/net/swift.js';
import { SERVER, clientCommand, delayRelay, runShaped } from './shaped.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const bin = join(root, 'bin', 'dmaload.js');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '1GiB' },
    rounds: { type: 'string', default: '3' },
    shaped: { type: 'boolean', default: false },
    link: { type: 'string', default: '2gbit' },
    'per-conn': { type: 'string', default: '40m' },
    ttfb: { type: 'string', default: '20' },
    inner: { type: 'boolean', default: false },
    'client-ns': { type: 'string' },
  },
});
if (values.shaped && !values.inner) {
  process.exitCode = runShaped(fileURLToPath(import.meta.url), values.link, process.argv.slice(2));
  process.exit();
}

/** CPU seconds the processes have used so far (utime + stime of /proc/PID/stat). */
function cpuOf(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
      ticks += Number(rest[11]) + Number(rest[12]);
    } catch {
      // gone
    }
  }
  return ticks / 100;
}

/** Runs a command with its process tree's CPU (getrusage of the children, by a small python wrapper). */
function timed(cmd: string[], env: NodeJS.ProcessEnv): Promise<{ s: number; cpu: number }> {
  const py = `import resource,subprocess,sys,time
t=time.time(); p=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL); s=time.time()-t
r=resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stderr.write('%f %f\\n' % (s, r.ru_utime+r.ru_stime)); sys.exit(p.returncode)`;
  return new Promise((res, rej) => {
    const p = spawn('/usr/bin/python3', ['-c', py, ...cmd], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', rej);
    p.on('close', (code) => {
      if (code !== 0) return rej(new Error(`${cmd.join(' ')} failed: ${err}`));
      const [s, cpu] = err.trim().split('\n').at(-1)!.split(' ').map(Number);
      res({ s: s!, cpu: cpu! });
    });
  });
}

const size = parseSize(values.size)!;
const swift = await startSwift();
try {
  await swift.createBucket('bench');
  const data = Buffer.alloc(size);
  for (let o = 0; o < size; o += 1 << 26) randomFillSync(data, o, Math.min(1 << 26, size - o));
  await swift.put('bench', 'big.bin', data);
  const store = new URL(swift.endpoint);
  const relay = values.shaped ? await delayRelay(store, SERVER, { delayMs: Number(values.ttfb), rate: parseSize(values['per-conn'])! }) : undefined;
  const endpoint = relay ? `http://${relay.host}:${relay.port}` : swift.endpoint;
  const env = {
    ...process.env,
    AWS_ACCESS_KEY_ID: swift.accessKey,
    AWS_SECRET_ACCESS_KEY: swift.secretKey,
    AWS_REGION: swift.region,
    AWS_DEFAULT_REGION: swift.region,
    AWS_ENDPOINT_URL_S3: endpoint,
    AWS_ENDPOINT_URL: endpoint,
    AWS_EC2_METADATA_DISABLED: 'true',
    NO_PROXY: `127.0.0.1,${SERVER}`,
  };
  const python = process.env.DMALOAD_PYTHON ?? 'python3';
  const boto = `import boto3, io
class Drop(io.RawIOBase):
    def writable(self): return True
    def write(self, b): return len(b)
boto3.client('s3', endpoint_url='${endpoint}').download_fileobj('bench', 'big.bin', Drop())`;
  const rows: Record<string, string[]> = {
    'dmaload load s3://': ['node', bin, 'load', 's3://bench/big.bin', '--json'],
    'aws s3 cp (to stdout, /dev/null)': ['aws', 's3', 'cp', 's3://bench/big.bin', '-', '--endpoint-url', endpoint],
    'boto3 download_fileobj': [python, '-c', boto],
  };
  const results: Record<string, Array<{ s: number; cpu: number; store: number }>> = {};
  for (let k = 0; k < Number(values.rounds); k++) {
    for (const [name, cmd] of Object.entries(rows)) {
      const c0 = cpuOf(swift.pids);
      const r = await timed(clientCommand(values['client-ns'], cmd), env);
      (results[name] ??= []).push({ ...r, store: cpuOf(swift.pids) - c0 });
      process.stderr.write(`round ${k + 1} ${name}: ${(size / 1e6 / r.s).toFixed(0)} MB/s\n`);
    }
  }
  const net = relay ? `over a ${values.link} link, ${values['per-conn']}B/s per connection, ${values.ttfb} ms to first byte` : 'on loopback';
  console.log(`\n${(size / 2 ** 30).toFixed(2)} GiB object from a local Swift (s3api, one proxy process) ${net}; medians of ${values.rounds} rounds`);
  await relay?.close();
  console.log('| row | s | MB/s | CPU s/GiB | store CPU s/GiB | × aws s3 cp | × boto3 |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
  const sOf = (n: string) => median(results[n]!.map((r) => r.s));
  for (const [name, rs] of Object.entries(results)) {
    const s = median(rs.map((r) => r.s));
    const perGiB = (x: number) => ((x / size) * 2 ** 30).toFixed(2);
    console.log(
      `| ${name} | ${s.toFixed(2)} | ${(size / 1e6 / s).toFixed(0)} | ${perGiB(median(rs.map((r) => r.cpu)))} | ${perGiB(median(rs.map((r) => r.store)))} | ${(sOf('aws s3 cp (to stdout, /dev/null)') / s).toFixed(2)} | ${(sOf('boto3 download_fileobj') / s).toFixed(2)} |`,
    );
  }
} finally {
  await swift.stop();
}
