/**
 * The Python client (clients/python, package dmaload_client, standard library only) against a real server: its SHA-256
 * of a served file, hashed from its own read-only mappings, must equal the file's; it sees the same sealed memfd as a
 * Node client; the server's coded errors reach it. Then its own tests against fake servers (clients/python/tests/
 * test_client.py): the server's uid checked before any fd leaves, malformed replies refused with every fd closed,
 * buffers of more than 64 parts, idle closes. It runs from the source folder (PYTHONPATH), not installed, with the
 * interpreter DMALOAD_PYTHON names (default python3). Skipped, with the reason, where that is missing or older than
 * 3.9.
 */
import assert from 'node:assert/strict';
import { fstatSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { C } from '../../src/engine/binding.js';
import { connect, serve } from '../../src/index.js';
import { makeFile, tempDir } from '../helpers.js';
import { pythonMissing as missing, pythonTests, runPython } from './python.js';
import { socketDir } from './util.js';

const MiB = 1024 * 1024;
const { dir, cleanup } = tempDir('dmaload-share-py-');
after(cleanup);
const sockets = socketDir();
after(sockets.cleanup);

/** Runs `python -m dmaload_client ARGS`. */
const py = (args: string[]) => runPython(['-m', 'dmaload_client', ...args]);

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
      const lines = r.out
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { path: string; size: number; sha256: string; cached: boolean; ino: number; seals: number; target: string });
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

  test('its own tests against fake servers (clients/python/tests/test_client.py)', async (t) => {
    if (missing) return t.skip(missing);
    await pythonTests(t, ['test_client']);
  });
});
