/**
 * Running the Python client's own tests (clients/python/tests, unittest) from node:test: clients/python/tests/run.py
 * prints one line per Python test, and each becomes a subtest here, passed, failed (with the Python traceback) or
 * skipped (with the Python test's reason). The interpreter is DMALOAD_PYTHON (default python3), the client imported
 * from its source folder (PYTHONPATH), so nothing needs installing.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { delimiter, join } from 'node:path';
import type { TestContext } from 'node:test';
import { repoRoot } from '../helpers.js';

export const PYTHON = process.env.DMALOAD_PYTHON || 'python3';
export const CLIENT_DIR = join(repoRoot, 'clients', 'python');

/**
 * The interpreter's environment: the client importable from its source folder, and no sanitizer runtime preloaded
 * (scripts/test-asan.sh preloads one for the addon; Python loads no instrumented code, and torch under it is untested).
 */
export function pythonEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, PYTHONPATH: [CLIENT_DIR, process.env.PYTHONPATH].filter(Boolean).join(delimiter), ...extra };
  const preload = env.LD_PRELOAD?.split(/[\s:]+/).filter((l) => l && !/lib(a|ub)san\.so/.test(l));
  if (preload?.length) env.LD_PRELOAD = preload.join(' ');
  else delete env.LD_PRELOAD;
  return env;
}

/** Why the Python client cannot run here (no interpreter, or one older than 3.9), or undefined. */
export const pythonMissing: string | undefined = (() => {
  const r = spawnSync(PYTHON, ['-c', 'import sys, socket; assert sys.version_info >= (3, 9) and hasattr(socket, "recv_fds"); print(sys.version.split()[0])'], {
    encoding: 'utf8',
    env: pythonEnv(),
  });
  if (r.error) return `${PYTHON} is not installed (${(r.error as NodeJS.ErrnoException).code}); apt-get install python3, or set DMALOAD_PYTHON`;
  if (r.status !== 0) return `${PYTHON} is older than 3.9 (no socket.recv_fds): ${r.stderr.trim().split('\n').at(-1)}`;
  return undefined;
})();

/** Runs a Python command asynchronously (an in-process server can answer it meanwhile). */
export function runPython(
  args: string[],
  env: NodeJS.ProcessEnv = pythonEnv(),
  timeoutMs = 600_000,
): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(PYTHON, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d));
    p.stderr.on('data', (d: Buffer) => (err += d));
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

const MARK = '@@dmaload-test ';

/**
 * Runs Python test modules of clients/python/tests (e.g. 'test_client') and reports each Python test as a subtest
 * of `t`. Fails when the runner fails without a failed test to show for it, or runs no test at all.
 */
export async function pythonTests(t: TestContext, modules: string[], extraEnv: Record<string, string> = {}): Promise<void> {
  const r = await runPython([join(CLIENT_DIR, 'tests', 'run.py'), ...modules], pythonEnv(extraEnv));
  const results = r.out
    .split('\n')
    .filter((l) => l.startsWith(MARK))
    .map((l) => JSON.parse(l.slice(MARK.length)) as { id: string; outcome: 'pass' | 'fail' | 'skip'; detail: string });
  for (const res of results) {
    await t.test(res.id.replace(/^test_\w+\./, ''), (st) => {
      // CI installs numpy, torch, safetensors and gguf and sets DMALOAD_PYTHON_REQUIRED: there a test they would skip fails.
      if (res.outcome === 'skip' && process.env.DMALOAD_PYTHON_REQUIRED && /numpy|torch|safetensors|gguf/i.test(res.detail))
        assert.fail(`DMALOAD_PYTHON_REQUIRED is set but: ${res.detail}`);
      if (res.outcome === 'skip') return st.skip(res.detail);
      if (res.outcome === 'fail') assert.fail(res.detail);
    });
  }
  assert.ok(results.length > 0, `no Python test ran (exit ${r.code}):\n${r.out}\n${r.err}`);
  if (!results.some((x) => x.outcome === 'fail')) assert.equal(r.code, 0, `the Python runner failed:\n${r.err}`);
}
