/**
 * torchrun with 4 ranks (torch.distributed.run, gloo on CPU) loading a ~280 MiB safetensors model through a
 * `dmaload serve` process (clients/python/tests/torchrun_worker.py): every rank's tensors from
 * load_safetensors(path, framework="torch", rank=r, world_size=4, split=...) equal the same slices of
 * safetensors.torch.load_file() (the ranks all-reduce their mismatches), and the job holds about one copy of the
 * model: the PSS increase of the server and the 4 ranks together, measured while every rank holds its tensors, is at
 * most 1.25 × the file. (For comparison it reports what safetensors.torch.load_file() then adds to the ranks once
 * each has read its slices: it maps the file, so the ranks share the page cache's copy.) The server is a process of its
 * own so that its PSS is its own. The interpreter is DMALOAD_PYTHON; without torch and safetensors the test skips saying so, and
 * fails where DMALOAD_PYTHON_REQUIRED is set (CI).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { repoRoot, tempDir } from '../helpers.js';
import { CLIENT_DIR, pythonEnv, pythonMissing, runPython } from './python.js';
import { socketDir } from './util.js';

const { dir, cleanup } = tempDir('dmaload-torchrun-');
after(cleanup);
const sockets = socketDir();
after(sockets.cleanup);

const WORKER = join(CLIENT_DIR, 'tests', 'torchrun_worker.py');
const RANKS = 4;
const MiB = 1024 * 1024;

/** Why torchrun cannot run here, or undefined. */
async function torchMissing(): Promise<string | undefined> {
  if (pythonMissing) return pythonMissing;
  const r = await runPython(
    ['-c', 'import torch, safetensors, torch.distributed as d; assert d.is_available() and d.is_gloo_available(), "torch.distributed without gloo"'],
    pythonEnv(),
    60_000,
  );
  if (r.code === 0) return undefined;
  return `torch (with torch.distributed and gloo) and safetensors are not all importable by ${process.env.DMALOAD_PYTHON || 'python3'} (${r.err.trim().split('\n').at(-1)}): set DMALOAD_PYTHON to an interpreter that has them`;
}

interface TorchrunResult {
  world: number;
  split: string;
  fileSize: number;
  mismatches: number;
  bytesHeld: number;
  ranks: { rank: number; pssBefore: number; pssAfter: number; loadMs: number; tensors: number; bytes: number }[];
  server: { pssBefore: number; pssAfter: number };
  pssIncrease: number;
  pssLoadFileIncrease: number;
}

/** `dmaload serve` as a child process, resolved once it listens. */
async function startServer(socket: string): Promise<{ pid: number; stop(): Promise<void> }> {
  const p = spawn(process.execPath, [join(repoRoot, 'bin', 'dmaload.js'), 'serve', '--socket', socket], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  const exited = new Promise<number | null>((r) => p.once('close', (code) => r(code)));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server did not listen within 20 s: ${log}`)), 20_000);
    p.stderr.on('data', (d: Buffer) => {
      log += d;
      if (/listening/.test(log)) {
        clearTimeout(timer);
        resolve();
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`the server exited ${code}: ${log}`));
    });
  });
  return {
    pid: p.pid!,
    async stop() {
      p.kill('SIGTERM');
      const timer = setTimeout(() => p.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

describe('torchrun: every rank its share, one copy for all', () => {
  test(
    `${RANKS} ranks load their share of a ~280 MiB model through a server: equal to safetensors' slices, PSS of all ≤ 1.25 × the file`,
    { timeout: 150_000 },
    async (t) => {
      const missing = await torchMissing();
      if (missing) {
        if (process.env.DMALOAD_PYTHON_REQUIRED) assert.fail(`DMALOAD_PYTHON_REQUIRED is set but: ${missing}`);
        return t.skip(missing);
      }
      const model = join(dir, 'model.safetensors');
      const gen = await runPython([WORKER, 'generate', model], pythonEnv(), 60_000);
      assert.equal(gen.code, 0, `generating the model failed:\n${gen.err}`);
      const size = statSync(model).size;
      assert.ok(size >= 256 * MiB, `the model is ${size} bytes`);

      const server = await startServer(join(sockets.dir, 'torchrun.sock'));
      try {
        for (const split of ['rows', 'tensors'] as const) {
          await t.test(`split '${split}'`, async () => {
            const args = [
              '-m',
              'torch.distributed.run',
              '--standalone',
              '--nproc-per-node',
              String(RANKS),
              WORKER,
              'run',
              '--socket',
              join(sockets.dir, 'torchrun.sock'),
              '--model',
              model,
              '--server-pid',
              String(server.pid),
              '--split',
              split,
            ];
            const r = await runPython(args, pythonEnv({ OMP_NUM_THREADS: '1' }), 100_000);
            const line = r.out.split('\n').find((l) => l.startsWith('@@torchrun '));
            assert.ok(line, `torchrun printed no result (exit ${r.code}):\n${r.out}\n${r.err.slice(-4000)}`);
            const res = JSON.parse(line.slice('@@torchrun '.length)) as TorchrunResult;
            assert.equal(r.code, 0, `torchrun exited ${r.code}:\n${r.err.slice(-4000)}`);
            assert.equal(res.world, RANKS);
            assert.equal(res.mismatches, 0, 'every rank’s tensors equal the slices of safetensors.torch.load_file');
            // split rows: the row slices add up to the 2-D tensors, the rest is held by every rank; tensors: each once
            assert.ok(res.bytesHeld >= size - 64 * 1024, `the ranks hold ${res.bytesHeld} bytes of a ${size}-byte file`);
            const perRank = res.ranks.map((x) => `rank ${x.rank}: +${((x.pssAfter - x.pssBefore) / MiB).toFixed(1)} MiB in ${x.loadMs} ms`).join(', ');
            t.diagnostic(
              `split ${split}: PSS increase of the server and ${RANKS} ranks ${(res.pssIncrease / MiB).toFixed(1)} MiB for a ${(size / MiB).toFixed(1)} MiB file ` +
                `(${(res.pssIncrease / size).toFixed(3)}×; server +${((res.server.pssAfter - res.server.pssBefore) / MiB).toFixed(1)} MiB; ${perRank}); ` +
                `safetensors.torch.load_file() in each rank then added ${(res.pssLoadFileIncrease / MiB).toFixed(1)} MiB (${(res.pssLoadFileIncrease / size).toFixed(2)}×)`,
            );
            assert.ok(res.pssIncrease <= 1.25 * size, `the job holds ${res.pssIncrease} bytes (PSS) for a ${size}-byte file: more than 1.25 copies`);
            // populate=True: the tensors are resident while measured, so the sum is the model, not a handful of pages
            assert.ok(res.pssIncrease >= 0.9 * size, `the job's PSS grew by only ${res.pssIncrease} bytes for a ${size}-byte file`);
          });
        }
      } finally {
        await server.stop();
      }
    },
  );
});
