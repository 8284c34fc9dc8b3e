import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { bench } from '../../tools/bench/index.js';
import { planRows } from '../../tools/bench/bench.js';
import { makeFile, tempDir } from '../helpers.js';
import { cli } from '../cli/run.js';

const { dir, cleanup } = tempDir();
after(cleanup);
const MiB = 1024 * 1024;
const bin = join(resolve(fileURLToPath(import.meta.url), '../../../..'), 'bin/dmaload.js');

describe('bench', () => {
  test('a small run: every supported row verified, unsupported rows say why, JSON shaped as documented', async () => {
    const f = makeFile(dir, 'b', 8 * MiB + 5);
    const rep = await bench({ file: f.path, rounds: 2, targets: ['memory', 'memfd', 'udmabuf'], methods: ['read', 'read-write', 'copy_file_range', 'dmaload', 'node-readFile'] });
    assert.equal(rep.size, 8 * MiB + 5);
    assert.equal(rep.rounds, 2);
    assert.equal(typeof rep.machine.kernel, 'string');
    assert.match(rep.machine.fs, / on /);
    for (const r of rep.rows) {
      for (const k of ['method', 'target', 'io', 'supported', 'createMs', 'ioMs', 'closeMs', 'mbps', 'pct', 'cpuMs', 'pageCacheBytes', 'verified', 'min', 'max']) assert.ok(k in r, k);
      if (r.supported) assert.equal(r.verified, true, `${r.target} ${r.io} ${r.method}`);
      else assert.ok(r.reason && r.reason.length > 0, `${r.method} says why`);
    }
    const row = (m: string, t: string, io: string) => rep.rows.find((r) => r.method === m && r.target === t && r.io === io)!;
    assert.equal(row('read', 'memory', 'buffered').pct, 100);
    assert.equal(row('dmaload', 'memory', 'direct').supported, true);
    assert.ok(row('dmaload', 'memory', 'direct').pageCacheBytes <= 0.01 * rep.size, 'direct rows leave no page cache');
    assert.match(row('copy_file_range', 'memory', 'direct').reason!, /file descriptor/);
    const cfr = row('copy_file_range', 'memfd', 'direct');
    if (!cfr.supported) assert.match(cfr.reason!, /^copy_file_range failed with E[A-Z]+/, 'measured by trying: the errno');
    if (!existsSync('/dev/udmabuf')) assert.match(row('dmaload', 'udmabuf', 'direct').reason!, /udmabuf/);
  });

  test('planRows: method × target × io, peers once', () => {
    const rows = planRows(['read', 'dmaload', 'fio', 'node-readFile'], ['memory', 'memfd']);
    assert.equal(rows.filter((r) => r.method === 'fio').length, 1);
    assert.equal(rows.filter((r) => r.method === 'node-readFile').length, 1);
    assert.equal(rows.filter((r) => r.method === 'dmaload').length, 6);
    assert.equal(rows.filter((r) => r.method === 'read').length, 4);
  });

  test('CLI: --json, --md and --svg on a generated file; the file is removed afterwards', async () => {
    const svg = join(dir, 'chart.svg');
    const j = await cli('bench', '--size', '4MiB', '--rounds', '1', '--targets', 'memory', '--methods', 'read,dmaload,fio', '--json', '--svg', svg);
    assert.equal(j.code, 0, j.err);
    const rep = JSON.parse(j.out);
    assert.equal(rep.size, 4 * MiB);
    assert.ok(rep.rows.some((r: { method: string }) => r.method === 'fio'), 'fio row present (measured, or unavailable with the reason)');
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
    assert.equal((await cli('bench', '--rounds', '0')).code, 2);
    const huge = await cli('bench', '--size', '100TiB', '--methods', 'dmaload');
    assert.equal(huge.code, 1);
    assert.match(huge.err, /ERR_BENCH_NO_SPACE|ERR_MEMORY_BUDGET/);
  });

  test('Ctrl-C mid-run: children killed, temporary file removed', async () => {
    const child = spawn(process.execPath, [bin, 'bench', '--size', '64MiB', '--rounds', '20', '--targets', 'memory', '--methods', 'read,dmaload'], { env: { ...process.env, TMPDIR: dir }, stdio: 'ignore' });
    // Wait for the generated file, then interrupt.
    for (let i = 0; i < 200 && !readdirSync(dir).some((n) => n.startsWith('dmaload-bench-')); i++) await new Promise((r) => setTimeout(r, 25));
    await new Promise((r) => setTimeout(r, 300));
    child.kill('SIGINT');
    const code = await new Promise((r) => child.on('exit', (c) => r(c)));
    assert.equal(code, 1, 'interrupted, not completed');
    assert.deepEqual(readdirSync(dir).filter((n) => n.startsWith('dmaload-bench-')), []);
  });
});
