/**
 * The Python client with no server named (no socket=, no DMALOAD_SOCKET): the user's own server is started on demand
 * at the per-user socket, once however many processes ask at the same moment, and exits by itself once idle, leaving
 * no socket behind. Run as a throwaway uid with its own XDG_RUNTIME_DIR, as a fresh user would. The oracle: each
 * tensor's bytes against those written, the processes found running `dmaload serve` for that socket, the folder's
 * contents.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { writeSafetensors, type Spec } from '../formats/model-files.js';
import { repoRoot, seededBytes, sha256 } from '../helpers.js';
import { CLIENT_DIR, PYTHON, pythonMissing } from './python.js';

const UID = 61_000 + (process.pid % 3000);
const base = mkdtempSync('/tmp/dmaload-auto-');
after(() => rmSync(base, { recursive: true, force: true }));

/** Why this cannot run here, or undefined. */
function cannotRun(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (to become a throwaway uid)';
  if (pythonMissing) return pythonMissing;
  chmodSync(base, 0o755);
  const probe = spawnSync(
    PYTHON,
    ['-c', `import os, numpy; open(${JSON.stringify(join(repoRoot, 'bin', 'dmaload.js'))}).close(); os.listdir(${JSON.stringify(CLIENT_DIR)})`],
    { uid: UID, gid: UID, env: { PATH: process.env.PATH } },
  );
  if (probe.status !== 0) return `uid ${UID} cannot run ${PYTHON} with numpy or read this checkout: ${probe.stderr.toString().trim().split('\n').at(-1)}`;
  return undefined;
}

/** Server processes serving `socket` (from /proc: their command lines). */
function serversOf(socket: string): number[] {
  const out: number[] = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (argv.includes('serve') && argv.includes(socket)) out.push(Number(pid));
    } catch {
      /* gone */
    }
  }
  return out;
}

test('no server named: the first use starts the user’s own, two processes at once share one, it exits when idle', async (t) => {
  const why = cannotRun();
  if (why) return t.skip(why);
  const xdg = join(base, 'run');
  mkdirSync(xdg, { mode: 0o700 });
  chownSync(xdg, UID, UID);
  const specs: Spec[] = [
    { name: 'w', dtype: 'F32', shape: [64, 32], data: seededBytes(64 * 32 * 4, 81) },
    { name: 'ids', dtype: 'I64', shape: [50], data: seededBytes(400, 82) },
  ];
  const file = join(base, 'model.safetensors');
  writeSafetensors(file, specs);
  chmodSync(file, 0o644);
  const env = {
    PATH: `${dirname(process.execPath)}:/usr/bin:/bin`,
    XDG_RUNTIME_DIR: xdg,
    DMALOAD_CLI: join(repoRoot, 'bin', 'dmaload.js'),
    DMALOAD_IDLE_EXIT: '2s',
    PYTHONPATH: CLIENT_DIR,
  };
  const script = `
import hashlib, json, sys
from dmaload_client import load_file
t = load_file(sys.argv[1], framework="np")
print(json.dumps({k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in t.items()}))
`;
  const run = () =>
    new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
      const p = spawn(PYTHON, ['-c', script, file], { uid: UID, gid: UID, env, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      p.stdout.on('data', (d: Buffer) => (out += d));
      p.stderr.on('data', (d: Buffer) => (err += d));
      p.on('close', (code) => resolve({ code, out, err }));
    });
  const socket = join(xdg, 'dmaload', 'serve.sock');
  try {
    const [a, b] = await Promise.all([run(), run()]);
    const want = Object.fromEntries(specs.map((s) => [s.name, sha256(s.data)]));
    for (const r of [a, b]) {
      assert.equal(r.code, 0, r.err);
      assert.deepEqual(JSON.parse(r.out), want);
    }
    const servers = serversOf(socket);
    assert.equal(servers.length, 1, `one server for both processes (found ${servers.length})`);
    assert.ok(existsSync(socket));
    // Idle for 2 s: it exits, its socket gone, nothing but its log left in the folder.
    const deadline = Date.now() + 10_000;
    while (serversOf(socket).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(serversOf(socket), [], 'the server exited once idle');
    assert.deepEqual(readdirSync(join(xdg, 'dmaload')), ['serve.log']);
    // The next use starts it again.
    const c = await run();
    assert.equal(c.code, 0, c.err);
    assert.deepEqual(JSON.parse(c.out), want);
  } finally {
    for (const pid of serversOf(socket)) process.kill(pid, 'SIGKILL');
  }
});

test('a per-user folder another user owns or can enter is refused, not used', async (t) => {
  const why = cannotRun();
  if (why) return t.skip(why);
  const xdg = join(base, 'run2');
  mkdirSync(xdg, { mode: 0o700 });
  chownSync(xdg, UID, UID);
  // The dmaload folder inside made by root and open to others: the client must not put or trust a socket there.
  mkdirSync(join(xdg, 'dmaload'), { mode: 0o755 });
  const r = spawnSync(PYTHON, ['-c', 'from dmaload_client import load_file; load_file("/nonexistent.safetensors", framework="np")'], {
    uid: UID,
    gid: UID,
    env: { PATH: `${dirname(process.execPath)}:/usr/bin:/bin`, XDG_RUNTIME_DIR: xdg, PYTHONPATH: CLIENT_DIR, DMALOAD_CLI: join(repoRoot, 'bin', 'dmaload.js') },
    encoding: 'utf8',
  });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /ERR_SHARE_UNSAFE_FOLDER/);
});
