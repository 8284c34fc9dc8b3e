import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { bench } from '../../src/bench/index.js';
import { fitRounds } from '../../src/bench/bench.js';
import { native } from '../../src/engine/binding.js';
import { DEFAULT_TARGETS, label, planRows } from '../../src/bench/rows.js';
import { METHODS } from '../../src/bench/methods.js';
import { makeFile, tempDir } from '../helpers.js';
import { cli } from '../cli/run.js';

const { dir, cleanup } = tempDir();
after(cleanup);
const MiB = 1024 * 1024;
const bin = join(resolve(fileURLToPath(import.meta.url), '../../../..'), 'bin/dmaload.js');

describe('bench', () => {
  test('a small run: every supported row verified, unsupported rows say why, JSON shaped as documented', async () => {
    const f = makeFile(dir, 'b', 8 * MiB + 5);
    const rep = await bench({
      file: f.path,
      rounds: 2,
      targets: ['memory', 'memfd', 'udmabuf'],
      methods: ['read', 'read-write', 'copy_file_range', 'dmaload', 'node-readFile'],
    });
    assert.equal(rep.size, 8 * MiB + 5);
    assert.equal(rep.rounds, 2);
    assert.equal(typeof rep.machine.kernel, 'string');
    assert.match(rep.machine.fs, / on /);
    for (const r of rep.rows) {
      for (const k of [
        'method',
        'target',
        'io',
        'supported',
        'createMs',
        'ioMs',
        'closeMs',
        'mbps',
        'pct',
        'cpuMs',
        'pageCacheBytes',
        'verified',
        'min',
        'max',
      ])
        assert.ok(k in r, k);
      if (r.supported) assert.equal(r.verified, true, `${r.target} ${r.io} ${r.method}`);
      else assert.ok(r.reason && r.reason.length > 0, `${r.method} says why`);
    }
    const row = (m: string, t: string, io: string) => rep.rows.find((r) => r.method === m && r.target === t && r.io === io)!;
    assert.equal(row('read', 'memory', 'buffered').pct, 100);
    assert.equal(row('dmaload', 'memory', 'direct').supported, true);
    assert.ok(row('dmaload', 'memory', 'direct').pageCacheBytes! <= 0.01 * rep.size, 'direct rows leave no page cache');
    assert.match(row('copy_file_range', 'memory', 'direct').reason!, /file descriptor/);
    const cfr = row('copy_file_range', 'memfd', 'direct');
    if (!cfr.supported) assert.match(cfr.reason!, /^copy_file_range failed with E[A-Z]+/, 'measured by trying: the errno');
    if (!existsSync('/dev/udmabuf')) assert.match(row('dmaload', 'udmabuf', 'direct').reason!, /udmabuf/);
  });

  test('a time budget: after the first round only the rounds that fit run, and the run says so as it starts', async () => {
    const f = makeFile(dir, 'budget', 4 * MiB + 1);
    const said: string[] = [];
    const common = { file: f.path, rounds: 3, targets: ['memory'] as ['memory'], methods: ['dmaload'] as ['dmaload'], onStatus: (m: string) => said.push(m) };
    const rep = await bench({ ...common, timeBudgetMs: 1 });
    assert.equal(rep.rounds, 1);
    assert.ok(
      said.some((m) => /^about \d+ s in all here/.test(m)),
      said.join('\n'),
    );
    assert.ok(
      said.some((m) => /1 of 3 rounds keep the default run within its time \(--rounds 3 runs them all\)/.test(m)),
      said.join('\n'),
    );
    for (const r of rep.rows.filter((x) => x.supported)) assert.equal(r.verified, true);
    // With room for every round, every round runs.
    assert.equal((await bench({ ...common, timeBudgetMs: 3600e3 })).rounds, 3);
    assert.deepEqual([fitRounds(30e3, 55e3, 3).rounds, fitRounds(20e3, 70e3, 3).rounds, fitRounds(50e3, -5e3, 3).rounds], [2, 3, 1]);
  });

  test("--verify: a load verified while reading and verifyFile, both hashing the source right; neither is the summary's best", async () => {
    const f = makeFile(dir, 'v', 6 * MiB + 3);
    const rep = await bench({ file: f.path, rounds: 1, targets: ['memory'], methods: ['dmaload'], verify: true });
    const rows = rep.rows.filter((r) => r.verify !== undefined);
    assert.deepEqual(rows.map((r) => label(r)).sort(), ['memory direct dmaload +verify', 'memory direct dmaload verifyFile']);
    for (const r of rows) assert.deepEqual([r.supported, r.verified], [true, true], label(r));
    assert.equal(rep.summary.best?.verify, undefined);
    // The sanity bound: the hash's time inside the load, beside this machine's SHA-256 alone.
    const v = rows.find((r) => r.verify === 'load')!;
    assert.ok(v.hashMs! > 0, `hashMs ${v.hashMs}`);
    assert.ok(rep.hashAlone!.gbps > 0.05 && rep.hashAlone!.gbps < 100, `alone ${rep.hashAlone!.gbps}`);
    assert.equal(rep.hashAlone!.impl, native.sha256Impl);
    const r = await cli('bench', f.path, '--verify', '--rounds', '1', '--targets', 'memory', '--methods', 'dmaload');
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /dmaload \+verify/);
    assert.match(r.out, /dmaload verifyFile/);
    assert.match(r.out, /hash inside the verified load: [\d.]+ GB\/s \(\d+ ms\); this machine's SHA-256 alone \((openssl|sha-ni|portable)\): [\d.]+ GB\/s/);
  });

  test('planRows: method × target × io, peers once; the default rows are few', () => {
    const rows = planRows(['read', 'dmaload', 'fio', 'node-readFile'], ['memory', 'memfd']);
    assert.equal(rows.filter((r) => r.method === 'fio').length, 1);
    assert.equal(rows.filter((r) => r.method === 'node-readFile').length, 1);
    assert.equal(rows.filter((r) => r.method === 'dmaload').length, 8);
    assert.equal(rows.filter((r) => r.method === 'read').length, 6);
    const dflt = planRows(METHODS, DEFAULT_TARGETS, false);
    assert.ok(dflt.length <= 12, `${dflt.length} default rows`);
    for (const want of ['fio', 'node-readFile', 'memory direct dmaload', 'memory uncached dmaload', 'memory auto dmaload reload']) {
      assert.ok(
        dflt.some((r) => label(r) === want),
        want,
      );
    }
  });

  test('the default run answers first: summary at the top and the bottom, reload row verified, JSON summary', async () => {
    const f = makeFile(dir, 'sum', 4 * MiB + 3);
    const r = await cli('bench', f.path, '--rounds', '1', '--targets', 'memory');
    assert.equal(r.code, 0, r.err);
    const lines = r.out.split('\n');
    assert.match(lines[1]!, /^dmaload's best: memory .* dmaload.*: \d+ MB\/s, CPU \d+ ms, page cache left 0\.0%$/);
    assert.match(r.out, /^ {2}vs fio \(O_DIRECT, io_uring, 4 MiB × 32 in flight: \d+ MB\/s\): [\d.]+× fio's speed$|^ {2}vs fio: not measured/m);
    assert.match(r.out, /^ {2}vs Node's readFile \(\d+ MB\/s, CPU \d+ ms, page cache left 100\.0%\): [\d.]+× its speed, [\d.]+× its CPU$/m);
    const top = lines.slice(0, lines.indexOf('')).slice(1);
    const bottom = lines.slice(lines.length - 1 - top.length, lines.length - 1);
    assert.deepEqual(bottom, top, 'the same summary at the bottom');
    assert.match(r.out, /memory auto dmaload reload \(direct\) .* yes$/m);
    assert.doesNotMatch(r.out, /memory direct read-write/, 'not in the default rows');
    const j = await cli('bench', f.path, '--rounds', '1', '--targets', 'memory', '--methods', 'dmaload,dmaload-reload', '--json');
    const rep = JSON.parse(j.out);
    assert.equal(rep.summary.best.method, 'dmaload');
    assert.equal(rep.summary.reload.memory, 'reused');
    assert.equal(rep.summary.reload.verified, true);
    assert.deepEqual(rep.summary.notCold, []);
    assert.ok(
      rep.rows.every((x: { startCacheBytes: number }) => x.startCacheBytes === 0),
      'every cold round started cold (mincore)',
    );
    assert.ok(
      rep.rows.some((x: { io: string; supported: boolean }) => x.io === 'uncached'),
      'uncached row present (measured, or unsupported with the reason)',
    );
  });

  test('CLI: --json, --md and --svg on a generated file; the file is removed afterwards', async () => {
    const svg = join(dir, 'chart.svg');
    const j = await cli('bench', '--size', '4MiB', '--rounds', '1', '--targets', 'memory', '--methods', 'read,dmaload,fio', '--json', '--svg', svg);
    assert.equal(j.code, 0, j.err);
    const rep = JSON.parse(j.out);
    assert.equal(rep.size, 4 * MiB);
    assert.ok(
      rep.rows.some((r: { method: string }) => r.method === 'fio'),
      'fio row present (measured, or unavailable with the reason)',
    );
    assert.ok(!existsSync(rep.file), 'generated file removed');
    assert.ok(!existsSync(dirname(rep.file)), 'and its folder');
    assert.match(readFileSync(svg, 'utf8'), /^<svg[^>]*>[\s\S]*MB\/s[\s\S]*<\/svg>\n$/);
    const md = await cli('bench', '--size', '1MiB', '--rounds', '1', '--targets', 'memfd', '--methods', 'dmaload', '--md', '--cache', 'warm');
    assert.equal(md.code, 0, md.err);
    assert.match(md.out, /\| # \| row \|[\s\S]*\| memfd direct dmaload \|/);
  });

  test('CLI bad input: unknown method or target lists the valid ones; empty or missing FILE; bad size and rounds', async () => {
    const m = await cli('bench', '--methods', 'read,teleport');
    assert.equal(m.code, 2);
    assert.match(m.err, /teleport.*valid: read, read-write, sendfile/);
    const t = await cli('bench', '--targets', 'gpu');
    assert.equal(t.code, 2);
    assert.match(t.err, /gpu.*memory, memfd, udmabuf, dma-heap/);
    const empty = makeFile(dir, 'empty', 0);
    const e = await cli('bench', empty.path);
    assert.equal(e.code, 1);
    assert.match(e.err, /ERR_BENCH_FILE_TOO_SMALL/);
    assert.match((await cli('bench', join(dir, 'missing'))).err, /ENOENT/);
    assert.equal((await cli('bench', '--size', 'big')).code, 2);
    // A chart into a missing folder is refused before the run, not after it.
    const nosvg = await cli('bench', '--size', '1MiB', '--svg', join(dir, 'no-such-folder', 'x.svg'));
    assert.equal(nosvg.code, 2, nosvg.err);
    assert.match(nosvg.err, /no-such-folder/);
    assert.equal((await cli('bench', '--rounds', '0')).code, 2);
    const huge = await cli('bench', '--size', '100TiB', '--methods', 'dmaload');
    assert.equal(huge.code, 1);
    assert.match(huge.err, /ERR_BENCH_NO_SPACE|ERR_MEMORY_BUDGET/);
  });

  test('Ctrl-C mid-run: children killed, temporary file removed, exit 130', async () => {
    const child = spawn(process.execPath, [bin, 'bench', '--size', '64MiB', '--rounds', '20', '--targets', 'memory', '--methods', 'read,dmaload'], {
      env: { ...process.env, TMPDIR: dir },
      stdio: 'ignore',
    });
    // Wait for the generated file, then interrupt.
    for (let i = 0; i < 200 && !readdirSync(dir).some((n) => n.startsWith('dmaload-bench-')); i++) await new Promise((r) => setTimeout(r, 25));
    await new Promise((r) => setTimeout(r, 300));
    child.kill('SIGINT');
    const code = await new Promise((r) => child.on('exit', (c) => r(c)));
    assert.equal(code, 130, 'interrupted (128 + SIGINT), not completed');
    assert.deepEqual(
      readdirSync(dir).filter((n) => n.startsWith('dmaload-bench-')),
      [],
    );
  });

  test('SIGTERM, SIGINT, SIGHUP while the data is written: exit 128 + the signal number, none of the data left', async () => {
    for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
      // The bench writes its data under TMPDIR, or the working folder when TMPDIR is tmpfs: both are `d`.
      const d = join(dir, `sig-${sig}`);
      mkdirSync(d);
      const child = spawn(process.execPath, [bin, 'bench', '--size', '256MiB', '--methods', 'dmaload', '--targets', 'memory', '--rounds', '1'], {
        cwd: d,
        env: { ...process.env, TMPDIR: d },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (b: Buffer) => void (stderr += b));
      const exited = new Promise<{ code: number | null; signal: string | null }>((res) => child.on('exit', (code, signal) => res({ code, signal })));
      const t0 = Date.now();
      while (!readdirSync(d).some((n) => n.startsWith('dmaload-bench-')) && Date.now() - t0 < 30_000) await new Promise((r) => setTimeout(r, 5));
      assert.ok(readdirSync(d).length > 0, `${sig}: the bench made no data folder in 30 s: ${stderr}`);
      child.kill(sig);
      const { code, signal } = await exited;
      assert.deepEqual({ code, signal }, { code: 128 + os.constants.signals[sig], signal: null }, `${sig}: ${stderr}`);
      assert.match(stderr, new RegExp(`interrupted \\(${sig}\\)`), sig);
      assert.deepEqual(readdirSync(d), [], `${sig}: left behind`);
    }
  });
});
