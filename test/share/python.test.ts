/**
 * The Python client (clients/python, package dmaload_client, standard library only) against a real server: its SHA-256
 * of a served file, hashed from its own read-only mappings, must equal the file's; it sees the same sealed memfd as a
 * Node client; the server's coded errors reach it. It runs from the source folder (PYTHONPATH), not installed, with
 * the interpreter DMALOAD_PYTHON names (default python3). Skipped, with the reason, where that is missing or older
 * than 3.9.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { fstatSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { after, describe, test } from 'node:test';
import { C } from '../../src/engine/binding.js';
import { connect, serve } from '../../src/index.js';
import { makeFile, repoRoot, tempDir } from '../helpers.js';
import { socketDir } from './util.js';

const MiB = 1024 * 1024;
const PYTHON = process.env.DMALOAD_PYTHON || 'python3';
const CLIENT_DIR = join(repoRoot, 'clients', 'python');
/** The interpreter's environment: the client importable from its source folder. */
const pyEnv = { ...process.env, PYTHONPATH: [CLIENT_DIR, process.env.PYTHONPATH].filter(Boolean).join(delimiter) };
const { dir, cleanup } = tempDir('dmaload-share-py-');
after(cleanup);
const sockets = socketDir();
after(sockets.cleanup);

/** Why the Python tests cannot run here, or undefined. */
const missing = (() => {
  const r = spawnSync(PYTHON, ['-c', 'import sys, socket; assert sys.version_info >= (3, 9) and hasattr(socket, "recv_fds"); print(sys.version.split()[0])'], { encoding: 'utf8' });
  if (r.error) return `${PYTHON} is not installed (${(r.error as NodeJS.ErrnoException).code}); apt-get install python3, or set DMALOAD_PYTHON`;
  if (r.status !== 0) return `${PYTHON} is older than 3.9 (no socket.recv_fds): ${r.stderr.trim().split('\n').at(-1)}`;
  return undefined;
})();

/** Runs `python -m dmaload_client ARGS`, asynchronously so that the in-process server can answer it. */
function py(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(PYTHON, ['-m', 'dmaload_client', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: pyEnv });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d));
    p.stderr.on('data', (d: Buffer) => (err += d));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, out, err }));
  });
}

describe('Python client', () => {
  test('its SHA-256 of served files equals the files’; it maps the same sealed memfd a Node client does', async (t) => {
    if (missing) return t.skip(missing);
    const files = [0, 4097, 5 * MiB + 3].map((s) => makeFile(dir, `py-${s}`, s));
    const server = await serve({ socket: join(sockets.dir, 'py.sock') });
    const c = await connect(server.socket);
    try {
      const node = await c.load(files[2]!.path);
      const r = await py([server.socket, ...files.map((f) => f.path), '--sha256']);
      assert.equal(r.code, 0, r.err);
      const lines = r.out.trim().split('\n').map((l) => JSON.parse(l) as { path: string; size: number; sha256: string; cached: boolean; ino: number; seals: number; target: string });
      assert.equal(lines.length, files.length);
      for (const [i, f] of files.entries()) {
        assert.equal(lines[i]!.sha256, f.sha256, f.path);
        assert.equal(lines[i]!.target, 'memfd');
        const want = C.F_SEAL_SHRINK | C.F_SEAL_GROW | C.F_SEAL_WRITE;
        assert.equal(lines[i]!.seals & want, want);
      }
      assert.equal(lines[2]!.cached, true, 'the Node client loaded it first');
      assert.equal(lines[2]!.ino, fstatSync(node.fd).ino, 'one memfd for both languages');
      node.close();
      const st = await py([server.socket, '--status']);
      assert.equal(st.code, 0, st.err);
      assert.equal((JSON.parse(st.out) as { loads: number }).loads, 3);
    } finally {
      c.close();
      await server.close();
    }
  });

  test('the server’s coded errors reach it; it refuses what is not a regular file itself', async (t) => {
    if (missing) return t.skip(missing);
    const big = makeFile(dir, 'py-big', 3 * MiB);
    const server = await serve({ socket: join(sockets.dir, 'py-err.sock'), budget: MiB });
    try {
      const r = await py([server.socket, big.path]);
      assert.equal(r.code, 1);
      assert.match(r.err, /ERR_MEMORY_BUDGET/);
      const d = await py([server.socket, dir]);
      assert.equal(d.code, 1);
      assert.match(d.err, /EISDIR/);
      assert.equal(server.status().misses, 1);
    } finally {
      await server.close();
    }
  });
});
