import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { inspectCommand } from '../../src/cli/inspect.js';
import { encodeGgufHeader } from '../gguf-writer.js';
import { cli } from '../cli/run.js';
import { writeSafetensors } from './model-files.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const overall = resolve(repoRoot, 'test', 'fixtures', 'safetensors-samples', 'overall.safetensors');
const dir = mkdtempSync(join(tmpdir(), 'dmaload-inspect-cli-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

async function run(...argv: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const status = await inspectCommand(argv, { stdout: (s) => void (stdout += s), stderr: (s) => void (stderr += s) });
  return { status, stdout, stderr };
}

test('--help prints usage and succeeds', async () => {
  const r = await run('--help');
  assert.equal(r.status, 0);
  assert.match(r.stdout, /^Usage: dmaload inspect FILE \[--json\]/);
  assert.equal((await run('-h')).status, 0);
});

test('usage errors return 2 with a message', async () => {
  for (const argv of [[], ['a', 'b'], ['--bogus', overall], ['--json=yes', overall]]) {
    const r = await run(...argv);
    assert.equal(r.status, 2, argv.join(' '));
    assert.match(r.stderr, /^dmaload inspect: .+\nRun 'dmaload inspect --help' for usage\.\n$/);
    assert.equal(r.stdout, '');
  }
});

test('a table of tensors with totals', async () => {
  const r = await run(overall);
  assert.equal(r.status, 0);
  assert.equal(r.stderr, '');
  const lines = r.stdout.split('\n');
  // The summary comes first.
  assert.deepEqual(lines.slice(0, 5), [
    'format   safetensors',
    'tensors  9',
    'size     168 B (168 bytes)',
    'dtypes   F16 1, F32 1, F64 1, I16 1, I32 1, I8 1, U16 1, U32 1, U8 1',
    'shards   1',
  ]);
  assert.ok(lines.includes('  test = "a"'));
  const head = lines.findIndex((l) => l.startsWith('name'));
  assert.match(lines[head] ?? '', /^name\s+dtype\s+shape\s+size\s+offset$/);
  assert.match(lines[head + 1] ?? '', /^B\s+U8\s+\[6\]\s+6 B\s+534$/);
  assert.match(lines[head + 5] ?? '', /^d\s+F64\s+\[6\]\s+48 B\s+582$/);
  assert.match(r.stdout, /\n9 tensors, 168 B \(168 bytes\)\n$/);
});

test('--json prints the inspect object, 64-bit integers as strings', async () => {
  const header = encodeGgufHeader({
    metadata: [
      ['big', { type: 'UINT64', value: 2n ** 63n }],
      ['small', { type: 'UINT64', value: 5n }],
      ['vocab', { type: 'ARRAY', elementType: 'STRING', value: Array.from({ length: 10 }, (_, i) => ({ type: 'STRING', value: `t${i}` })) }],
    ],
    tensors: [{ name: 'w', dims: [2, 3], type: 0, offset: 0 }],
  });
  const p = join(dir, 'm.gguf');
  writeFileSync(p, Buffer.concat([header, Buffer.alloc(24)]));
  const r = await run(p, '--json');
  assert.equal(r.status, 0);
  assert.deepEqual(JSON.parse(r.stdout), {
    format: 'gguf',
    metadata: { big: '9223372036854775808', small: 5, vocab: Array.from({ length: 10 }, (_, i) => `t${i}`) },
    tensors: [{ name: 'w', dtype: 'F32', shape: [2, 3], offset: header.length, bytes: 24, file: p }],
  });
  const t = await run(p);
  assert.match(t.stdout, / {2}big = 9223372036854775808\n/);
  assert.match(t.stdout, / {2}vocab = \["t0", "t1", "t2", "t3", … 10 items\]\n/);
});

test('errors reading the model are thrown to the caller', async () => {
  const p = join(dir, 'bad.safetensors');
  writeFileSync(p, 'this is not a model');
  await assert.rejects(run(p), { code: 'ERR_MODEL_FORMAT', path: p });
  await assert.rejects(run(join(dir, 'missing.gguf')), { code: 'ENOENT' });
});

test('a FIFO (or one named .json): exit 1 with ERR_NOT_REGULAR_FILE at once, not a hang', async () => {
  // A process of its own, killed if it hangs: an open() blocked on a FIFO holds a libuv thread nothing can end.
  for (const name of ['fifo.safetensors', 'fifo.json']) {
    const fifo = join(dir, name);
    execFileSync('mkfifo', [fifo]);
    const r = await promisify(execFile)(process.execPath, [join(repoRoot, 'bin', 'dmaload.js'), 'inspect', fifo], {
      timeout: 10_000,
      killSignal: 'SIGKILL',
    }).then(
      () => assert.fail('inspect of a FIFO succeeded'),
      (e: { code: number | null; killed: boolean; stderr: string }) => e,
    );
    assert.equal(r.killed, false, `inspect ${name} still hung after 10 s`);
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`^dmaload inspect: ERR_NOT_REGULAR_FILE: '${fifo}' is a FIFO`));
  }
});

test('control characters from the file are printed escaped, never raw (names, metadata, shard names, errors)', async () => {
  // C0 (ESC, CR, BEL), DEL and C1 (CSI): a name like this would clear the screen or recolor the terminal.
  const name = 'w\u001b[2J\r';
  const data = new Uint8Array(16);
  const shard = join(dir, 'ctl-\u009b1m.safetensors');
  writeSafetensors(
    shard,
    [
      { name, dtype: 'F32', shape: [4], data },
      { name: 'odd\u0007', dtype: 'F32', shape: [4], data },
    ],
    {
      metadata: { 'k\u001b[31m': 'v\u009b2J\u007f', plain: 'p' },
    },
  );
  writeSafetensors(join(dir, 'ctl-other.safetensors'), [{ name: 'o', dtype: 'F32', shape: [4], data }]);
  const index = join(dir, 'ctl.safetensors.index.json');
  writeFileSync(index, JSON.stringify({ weight_map: { [name]: basename(shard), 'odd\u0007': basename(shard), o: 'ctl-other.safetensors' } }));
  // eslint-disable-next-line no-control-regex -- the control characters the output must not hold
  const raw = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/;
  const runs = [await cli('inspect', shard), await cli('inspect', index), await cli('inspect', index, '--rank', '0', '--world-size', '1')];
  for (const r of runs) {
    assert.equal(r.code, 0, r.err);
    assert.doesNotMatch(r.out, raw);
    assert.ok(r.out.includes('w\\x1b[2J\\x0d'), 'the name, escaped');
    assert.ok(r.out.includes('odd\\x07'));
  }
  assert.ok(runs[0]!.out.includes('k\\x1b[31m = "v\\x9b2J\\x7f"'), 'the metadata key and value, escaped');
  assert.ok(runs[1]!.out.includes('ctl-\\x9b1m.safetensors'), 'the shard name, escaped');
  // --json stays JSON: the names round-trip.
  assert.equal(JSON.parse((await cli('inspect', shard, '--json')).out).tensors[0].name, name);
  // Errors name the file's strings too.
  writeFileSync(index, JSON.stringify({ weight_map: { [name]: 'gone-\u009b2J.safetensors' } }));
  const e = await cli('inspect', index);
  assert.equal(e.code, 1);
  assert.match(e.err, /ENOENT.*gone-\\x9b2J/);
  assert.doesNotMatch(e.err, raw);
});
