/**
 * Issue #28 item 9: `dmaload bench` piped prints a line per finished row as it goes, says what its time depends on,
 * explains its I/O% column, and does not call fio a limit that dmaload then exceeds.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { CliIO } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';
import { cli } from './run.js';

describe('cli: bench', () => {
  test('piped: one plain line per finished row on stderr, each before the results', async () => {
    const events: Array<['out' | 'err', string]> = [];
    const io: CliIO = { stdout: (s) => void events.push(['out', s]), stderr: (s) => void events.push(['err', s]), isTTY: false };
    const code = await main(['bench', '--size', '2MiB', '--rounds', '2', '--targets', 'memory', '--methods', 'dmaload', '--io', 'direct,buffered'], io);
    const err = events
      .filter(([k]) => k === 'err')
      .map(([, s]) => s)
      .join('');
    assert.equal(code, 0, err);
    const rows = err.split('\n').filter((l) => /^\[\d+\/\d+\] round \d/.test(l));
    assert.equal(rows.length, 4, `2 rows × 2 rounds: ${err}`);
    assert.match(rows[0]!, /^\[1\/4\] round 1 memory direct dmaload: \d+ MB\/s, CPU \d+ ms, page cache [\d.]+%$/);
    assert.match(rows[3]!, /^\[4\/4\] round 2 /);
    assert.ok(!err.includes('\r') && !err.includes('\u001b'), 'no terminal control sequences when piped');
    // Each row line was written before the table: as the run went, not at the end.
    const firstOut = events.findIndex(([k]) => k === 'out');
    const lastRow = events.map(([k, s]) => k === 'err' && /^\[4\/4\]/.test(s)).lastIndexOf(true);
    assert.ok(lastRow >= 0 && lastRow < firstOut, 'row lines come before the results');
  });

  test('the table says what I/O% is; fio is a reference, not a limit', async () => {
    const r = await cli('bench', '--size', '2MiB', '--rounds', '1', '--targets', 'memory', '--methods', 'read,dmaload,fio', '--io', 'direct,buffered');
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^I\/O%: .*I\/O-MB\/s.*buffered read.*same target/m);
    assert.doesNotMatch(r.out, /limit/, 'fio is not called a limit');
    assert.match(r.out, /^ {2}vs fio \(.*\d+ MB\/s\): [\d.]+× fio's speed$|^ {2}vs fio: not measured/m);
    const md = await cli('bench', '--size', '1MiB', '--rounds', '1', '--targets', 'memory', '--methods', 'read,dmaload', '--md');
    assert.equal(md.code, 0, md.err);
    assert.match(md.out, /I\/O%: /);
  });

  test('--help says what the run time depends on instead of promising a minute', async () => {
    const r = await cli('bench', '--help');
    assert.equal(r.code, 0);
    assert.doesNotMatch(r.out, /about a minute/);
    assert.match(r.out, /rows × rounds/);
    assert.match(r.out, /--size/);
    assert.match(r.out, /I\/O%/);
    assert.doesNotMatch(r.out, /limit/);
  });
});
