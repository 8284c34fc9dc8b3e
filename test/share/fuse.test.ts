/**
 * The FUSE harness (test/share/fuse.ts, fuse_daemon.py) that the serve tests use to attack the server: checked by
 * real results, not by the daemon's word. 'ok' serves the bytes fuseBytes() computes (SHA-256 of a whole read, ranges
 * read at odd offsets, and read by uid 65534 through allow_other); 'hang-flush' blocks close(2) in the kernel, past
 * even SIGKILL, until stop(); 'eio-flush' makes close(2) fail with EIO; 'hang-after-open' blocks an fstat and a read
 * of the open fd (the read past SIGKILL too). Every mount is gone after stop() (/proc/self/mountinfo). Skipped, with
 * the reason, where it cannot mount (not root, no /dev/fuse, no python3, mount(2) refused).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync, readdirSync, statSync } from 'node:fs';
import { describe, test } from 'node:test';
import { sha256 } from '../helpers.js';
import { fuseBytes, startFuse } from './fuse.js';
import type { FuseFs } from './fuse.js';

const MiB = 1024 * 1024;

/** A child process's state letter from /proc/PID/stat (R, S, D, Z...), or undefined once it is reaped. */
function procState(pid: number): string | undefined {
  try {
    return /^\d+ \(.*\) (\S)/s.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'))?.[1];
  } catch {
    return undefined;
  }
}

/** Whether the mount is still in this process's mount table. */
function mounted(dir: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === dir);
}

/**
 * Runs `node -e script file` in a child: a process of its own, because what it does to the file may block in the
 * kernel. `line(s)` resolves when the child printed that line; `done` when it ended.
 */
function nodeChild(script: string, file: string) {
  const p = spawn(process.execPath, ['-e', script, file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const waiters: Array<() => void> = [];
  p.stdout.on('data', (d: Buffer) => {
    out += d;
    waiters.forEach((w) => w());
  });
  p.stderr.on('data', (d: Buffer) => (err += d));
  const done = new Promise<{ code: number | null; signal: string | null; out: string; err: string }>((res) =>
    p.on('close', (code, signal) => res({ code, signal, out, err })),
  );
  let ended = false;
  void done.then(() => (ended = true));
  return {
    pid: p.pid!,
    done,
    get ended() {
      return ended;
    },
    kill: (sig: NodeJS.Signals) => p.kill(sig),
    line(s: string, ms = 5000): Promise<void> {
      return new Promise((res, rej) => {
        const timer = setTimeout(() => rej(new Error(`child did not print ${s} within ${ms} ms: ${out}${err}`)), ms);
        const check = () => {
          if (out.split('\n').includes(s)) {
            clearTimeout(timer);
            res();
          }
        };
        waiters.push(check);
        check();
      });
    },
  };
}

/** Opens the file, says so, closes it and prints what close() did: `closed` or `close CODE`. */
const OPEN_CLOSE = `const fs = require('node:fs');
const fd = fs.openSync(process.argv[1], 'r');
console.log('opened');
try { fs.closeSync(fd); console.log('closed'); } catch (e) { console.log('close ' + e.code); }`;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs `body` with a mount, then checks that stop() left no mount and no folder behind. */
async function withFuse(
  t: { skip(msg: string): void },
  mode: Parameters<typeof startFuse>[0],
  size: number,
  body: (fs: FuseFs) => Promise<void>,
): Promise<void> {
  const fs = await startFuse(mode, size);
  if (typeof fs === 'string') return t.skip(fs);
  try {
    assert.ok(mounted(fs.dir), 'mounted');
    await body(fs);
  } finally {
    await fs.stop();
  }
  assert.equal(mounted(fs.dir), false, 'unmounted by stop()');
  assert.equal(existsSync(fs.dir), false, 'mount point removed by stop()');
}

describe('FUSE harness', () => {
  test('ok: node reads the bytes fuseBytes() computes, whole and in ranges; uid 65534 reads them too', async (t) => {
    const size = 3 * MiB + 1234;
    await withFuse(t, 'ok', size, async (fs) => {
      assert.deepEqual(readdirSync(fs.dir), ['data']);
      const st = statSync(fs.file);
      assert.ok(st.isFile());
      assert.equal(st.size, size);
      const whole = readFileSync(fs.file);
      assert.equal(whole.length, size);
      assert.equal(sha256(whole), fs.sha256);
      const fd = openSync(fs.file, 'r');
      try {
        assert.equal(fstatSync(fd).size, size);
        for (const [at, n] of [
          [0, 7],
          [511, 20],
          [MiB - 3, 70_001],
          [size - 100, 100],
          [size - 5, 50],
        ] as const) {
          const buf = Buffer.alloc(n);
          const got = readSync(fd, buf, 0, n, at);
          assert.equal(got, Math.min(n, size - at));
          assert.deepEqual(new Uint8Array(buf.subarray(0, got)), fuseBytes(at, at + got), `bytes at ${at}`);
        }
        assert.equal(readSync(fd, Buffer.alloc(10), 0, 10, size), 0, 'EOF');
      } finally {
        closeSync(fd);
      }
      // allow_other: another user reads the mount root made. cat, not node or python3, whose paths may be under /root.
      const cat = spawn('cat', [fs.file], { uid: 65534, gid: 65534, stdio: ['ignore', 'pipe', 'pipe'] });
      const chunks: Buffer[] = [];
      cat.stdout.on('data', (d: Buffer) => chunks.push(d));
      let err = '';
      cat.stderr.on('data', (d: Buffer) => (err += d));
      const code = await new Promise((res) => cat.on('close', res));
      assert.equal(code, 0, err);
      assert.equal(sha256(Buffer.concat(chunks)), fs.sha256);
    });
  });

  test('hang-flush: close() blocks, past SIGKILL (D state), until stop(); then it fails and returns', async (t) => {
    await withFuse(t, 'hang-flush', 10_000, async (fs) => {
      const waiting = nodeChild(OPEN_CLOSE, fs.file);
      const killed = nodeChild(OPEN_CLOSE, fs.file);
      try {
        await Promise.all([waiting.line('opened'), killed.line('opened')]);
        await sleep(1000);
        assert.equal(waiting.ended, false, 'close() returned although FLUSH was never answered');
        assert.equal(killed.ended, false);
        // The first wait is interruptible (the kernel sends FUSE_INTERRUPT, which the daemon ignores); FLUSH is a
        // forced request, so after a signal the kernel waits it out uninterruptibly: D, and SIGKILL stays pending.
        killed.kill('SIGKILL');
        await sleep(500);
        assert.equal(killed.ended, false, 'SIGKILL ended a close() blocked on FLUSH');
        assert.equal(procState(killed.pid), 'D');
      } finally {
        await fs.stop();
      }
      const [w, k] = await Promise.all([waiting.done, killed.done]);
      assert.equal(k.signal, 'SIGKILL');
      assert.equal(w.code, 0, w.err);
      // The aborted connection fails the FLUSH; close() reports it (the fd is closed all the same).
      assert.equal(w.out, 'opened\nclose ECONNABORTED\n');
    });
  });

  test('eio-flush: closeSync() throws EIO, and the fd is closed all the same', async (t) => {
    await withFuse(t, 'eio-flush', 4096, async (fs) => {
      const fd = openSync(fs.file, 'r');
      assert.equal(readFileSync(fd).length, 4096, 'reads work');
      assert.throws(() => closeSync(fd), { code: 'EIO', syscall: 'close' });
      assert.throws(() => fstatSync(fd), { code: 'EBADF' });
      const c = nodeChild(OPEN_CLOSE, fs.file);
      const r = await c.done;
      assert.equal(r.out, 'opened\nclose EIO\n', r.err);
    });
  });

  test('hang-after-open: open succeeds, then fstat of the fd blocks until stop()', async (t) => {
    const script = `const fs = require('node:fs');
const fd = fs.openSync(process.argv[1], 'r');
console.log('opened');
try { console.log('size ' + fs.fstatSync(fd).size); } catch (e) { console.log('fstat ' + e.code); }`;
    await withFuse(t, 'hang-after-open', 10_000, async (fs) => {
      const c = nodeChild(script, fs.file);
      try {
        await c.line('opened');
        await sleep(1000);
        assert.equal(c.ended, false, 'fstat returned although the daemon answers nothing after the open');
        assert.equal(procState(c.pid), 'S', 'waiting interruptibly until a signal comes');
      } finally {
        await fs.stop();
      }
      const r = await c.done;
      assert.equal(r.out, 'opened\nfstat ECONNABORTED\n', r.err);
    });
  });

  test('hang-after-open: a read() the daemon holds is not freed by SIGKILL either (D state) until stop()', async (t) => {
    // Its own mount: after the first open the daemon answers nothing, not even a second open's LOOKUP.
    const script = `const fs = require('node:fs');
const fd = fs.openSync(process.argv[1], 'r');
console.log('opened');
fs.readSync(fd, Buffer.alloc(100), 0, 100, 0);
console.log('read');`;
    await withFuse(t, 'hang-after-open', 10_000, async (fs) => {
      const c = nodeChild(script, fs.file);
      try {
        await c.line('opened');
        await sleep(300);
        assert.equal(c.ended, false, 'read() returned although the daemon answers nothing after the open');
        // READ is not a forced request, unlike FLUSH, but the daemon has already taken it: after a signal the kernel
        // sends FUSE_INTERRUPT and then waits the answer out, uninterruptibly.
        c.kill('SIGKILL');
        await sleep(300);
        assert.equal(c.ended, false, 'SIGKILL ended a read() the daemon holds');
        assert.equal(procState(c.pid), 'D');
      } finally {
        await fs.stop();
      }
      const r = await c.done;
      assert.equal(r.signal, 'SIGKILL');
      assert.equal(r.out, 'opened\n');
    });
  });
});
