import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { inspect, loadModel, type LoadedModel } from '../../src/index.js';
import { inspectCommand } from '../../src/cli/inspect.js';
import { assertSlices, writeGguf, writeSafetensors, type Spec } from './model-files.js';
import { leakCheck, seededBytes, sha256, tempDir } from '../helpers.js';

const { dir, cleanup } = tempDir('dmaload-ranks-');
after(cleanup);

const KiB = 1024;

/** A safetensors model of tensors of uneven sizes, 1-D to 3-D, a few of them big enough to span several pages. */
function unevenSpecs(): Spec[] {
  const sizes = [300 * KiB, 7, 64 * KiB, 4096, 1, 900 * KiB, 12 * KiB, 33, 250 * KiB, 0, 128 * KiB, 5000, 40 * KiB, 77 * KiB, 3];
  return sizes.map((n, i) => ({ name: `t${String(i).padStart(2, '0')}`, dtype: 'U8', shape: i % 3 === 0 ? [n] : [1, n], data: seededBytes(n, 100 + i) }));
}

async function cli(...argv: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const status = await inspectCommand(argv, { stdout: (s) => void (stdout += s), stderr: (s) => void (stderr += s) });
  return { status, stdout, stderr };
}

test("split 'tensors': every tensor on exactly one rank, balanced by bytes, each rank reading about its own bytes", async () => {
  const path = join(dir, 'uneven.safetensors');
  const file = writeSafetensors(path, unevenSpecs());
  const info = await inspect(path);
  const total = info.tensors.reduce((n, t) => n + t.bytes, 0);
  const largest = Math.max(...info.tensors.map((t) => t.bytes));
  for (const worldSize of [1, 2, 3, 5, 16, 40]) {
    const seen = new Map<string, number>();
    let read = 0;
    for (let rank = 0; rank < worldSize; rank++) {
      const leaks = leakCheck();
      const model = await loadModel(path, { rank, worldSize, split: 'tensors' });
      try {
        assert.deepEqual(model.partition, { rank, worldSize, split: 'tensors' });
        assertSlices(model, file);
        let bytes = 0;
        for (const t of model.tensors.values()) {
          assert.equal(seen.get(t.name), undefined, `${t.name} on ranks ${seen.get(t.name)} and ${rank}`);
          seen.set(t.name, rank);
          bytes += t.byteLength;
          assert.equal(t.rows, undefined);
        }
        // Balanced: no rank holds more than its share plus one tensor.
        assert.ok(bytes <= total / worldSize + largest, `rank ${rank}/${worldSize} holds ${bytes} of ${total}`);
        // Reads its own bytes: at most a page either side of each range besides.
        assert.ok(model.stats.bytesRead <= bytes + model.stats.ranges * 2 * 4096, `rank ${rank}/${worldSize} read ${model.stats.bytesRead} for ${bytes}`);
        read += model.stats.bytesRead;
      } finally {
        model.close();
      }
      assert.equal(await leaks(), undefined);
    }
    // The union is exactly the model, and the ranks together read about the model once.
    assert.deepEqual([...seen.keys()].sort(), info.tensors.map((t) => t.name).sort(), `world size ${worldSize}`);
    assert.ok(read <= file.length + worldSize * 2 * 4096, `world size ${worldSize}: ${read} bytes read for a ${file.length}-byte file`);
    // Ranks hold consecutive runs of the file (each rank reads a few long ranges).
    const owners = info.tensors.map((t) => seen.get(t.name)!);
    assert.deepEqual(
      owners,
      [...owners].sort((a, b) => a - b),
    );
  }
});

test("split 'rows': each rank holds a row slice of every 2-D tensor; the slices concatenate to the tensor", async () => {
  const st = join(dir, 'tp.safetensors');
  const stSpecs: Spec[] = [
    { name: 'embed', dtype: 'F32', shape: [10, 33], data: seededBytes(10 * 33 * 4, 1) },
    { name: 'norm', dtype: 'F32', shape: [33], data: seededBytes(33 * 4, 2) },
    { name: 'few_rows', dtype: 'BF16', shape: [2, 100], data: seededBytes(2 * 100 * 2, 3) },
    { name: 'packed_ok', dtype: 'F4', shape: [6, 4], data: seededBytes(12, 4) }, // a row is 2 bytes
    { name: 'packed_odd', dtype: 'F4', shape: [4, 3], data: seededBytes(6, 5) }, // a row is 1.5 bytes: not split
    { name: 'three_d', dtype: 'U8', shape: [4, 3, 2], data: seededBytes(24, 6) },
    { name: 'future', dtype: 'F2_E1M0', shape: [8, 8], data: seededBytes(16, 7) }, // unknown dtype: not split
    { name: 'big', dtype: 'F16', shape: [1000, 300], data: seededBytes(1000 * 300 * 2, 8) },
  ];
  const gg = join(dir, 'tp.gguf');
  const ggSpecs: Spec[] = [
    { name: 'q', dtype: 'Q4_0', shape: [64, 7], data: seededBytes(7 * 2 * 18, 9) }, // ne0 = 64: a row is 2 blocks
    { name: 'f', dtype: 'F32', shape: [3, 5], data: seededBytes(60, 10) },
    { name: 'b', dtype: 'F32', shape: [5], data: seededBytes(20, 11) },
  ];
  const files = new Map([
    [st, writeSafetensors(st, stSpecs)],
    [gg, writeGguf(gg, ggSpecs)],
  ]);
  for (const [path, specs, rowDim] of [
    [st, stSpecs, 0],
    [gg, ggSpecs, 1],
  ] as const) {
    const file = files.get(path)!;
    const info = await inspect(path);
    for (const worldSize of [1, 2, 3, 4, 7]) {
      const models: LoadedModel[] = [];
      const leaks = leakCheck();
      try {
        for (let rank = 0; rank < worldSize; rank++) models.push(await loadModel(path, { rank, worldSize, split: 'rows' }));
        for (const whole of info.tensors) {
          const spec = specs.find((s) => s.name === whole.name)!;
          const oracle = file.subarray(whole.offset, whole.offset + whole.bytes);
          assert.equal(sha256(oracle), sha256(spec.data), `${whole.name}: the file holds what was written`);
          const parts = models.map((m) => m.tensors.get(whole.name)!);
          const splittable = whole.shape.length === 2 && !whole.unknownType && Number.isInteger(whole.bytes / whole.shape[rowDim]!);
          if (!splittable) {
            for (const p of parts) {
              assert.equal(p.replicated, true, whole.name);
              assert.equal(sha256(p.bytes), sha256(oracle), `${whole.name}: whole on every rank`);
            }
            continue;
          }
          const rows = whole.shape[rowDim]!;
          let next = 0;
          for (const [rank, p] of parts.entries()) {
            assert.ok(p.rows, `${whole.name} rank ${rank}`);
            assert.equal(p.rows.start, next, `${whole.name} rank ${rank}: slices are consecutive`);
            assert.deepEqual(p.rows.shape, whole.shape);
            assert.equal(p.rows.dim, rowDim);
            assert.equal(p.shape[rowDim], p.rows.end - p.rows.start);
            // Balanced: the row counts differ by at most one.
            assert.ok(Math.abs(p.rows.end - p.rows.start - rows / worldSize) < 1, `${whole.name} rank ${rank}: ${p.rows.start}..${p.rows.end} of ${rows}`);
            next = p.rows.end;
          }
          assert.equal(next, rows, `${whole.name}: the slices cover every row`);
          const joined = Buffer.concat(parts.map((p) => p.bytes));
          assert.equal(sha256(joined), sha256(oracle), `${whole.name}: slices in rank order are the tensor`);
        }
        for (const m of models) assertSlices(m, file);
      } finally {
        for (const m of models) m.close();
      }
      assert.equal(await leaks(), undefined);
    }
  }
  // A big tensor's slice is read alone: rank 1 of 4 reads about a quarter of it, not all of it.
  const m = await loadModel(st, { rank: 1, worldSize: 4, split: 'rows', tensors: ['big'] });
  try {
    const slice = m.tensors.get('big')!;
    assert.equal(slice.byteLength, 250 * 300 * 2);
    assert.ok(m.stats.bytesRead <= slice.byteLength + 2 * 4096, `read ${m.stats.bytesRead}`);
  } finally {
    m.close();
  }
});

test('hostile rank options are refused with their codes before anything is read', async () => {
  const path = join(dir, 'small.safetensors');
  writeSafetensors(path, unevenSpecs().slice(0, 3));
  const cases: [Record<string, unknown>, string][] = [
    [{ rank: 0 }, 'ERR_INVALID_ARG_VALUE'],
    [{ worldSize: 2 }, 'ERR_INVALID_ARG_VALUE'],
    [{ split: 'rows' }, 'ERR_INVALID_ARG_VALUE'],
    [{ rank: 0, worldSize: 0 }, 'ERR_OUT_OF_RANGE'],
    [{ rank: 0, worldSize: -1 }, 'ERR_OUT_OF_RANGE'],
    [{ rank: 0, worldSize: 1.5 }, 'ERR_OUT_OF_RANGE'],
    [{ rank: 0, worldSize: NaN }, 'ERR_OUT_OF_RANGE'],
    [{ rank: 0, worldSize: Infinity }, 'ERR_OUT_OF_RANGE'],
    [{ rank: 0, worldSize: 2 ** 53 }, 'ERR_OUT_OF_RANGE'],
    [{ rank: 0, worldSize: '2' }, 'ERR_INVALID_ARG_TYPE'],
    [{ rank: 2, worldSize: 2 }, 'ERR_OUT_OF_RANGE'],
    [{ rank: -1, worldSize: 2 }, 'ERR_OUT_OF_RANGE'],
    [{ rank: 0.5, worldSize: 2 }, 'ERR_OUT_OF_RANGE'],
    [{ rank: -0.0001, worldSize: 2 }, 'ERR_OUT_OF_RANGE'],
    [{ rank: null, worldSize: 2 }, 'ERR_INVALID_ARG_TYPE'],
    [{ rank: 1n, worldSize: 2 }, 'ERR_INVALID_ARG_TYPE'],
    [{ rank: 0, worldSize: 2, split: 'cols' }, 'ERR_INVALID_ARG_VALUE'],
    [{ rank: 0, worldSize: 2, split: '' }, 'ERR_INVALID_ARG_VALUE'],
  ];
  const leaks = leakCheck();
  for (const [opts, code] of cases) {
    await assert.rejects(
      loadModel(path, opts),
      { code },
      JSON.stringify(opts, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v)),
    );
  }
  assert.equal(await leaks(), undefined);
  // The CLI: usage errors (status 2) naming the problem.
  for (const argv of [
    ['--rank', '1'],
    ['--world-size', '2'],
    ['--rank', '2', '--world-size', '2'],
    ['--rank', '-1', '--world-size', '2'],
    ['--rank', '0', '--world-size', '0'],
    ['--rank', '0.5', '--world-size', '2'],
    ['--rank', 'one', '--world-size', '2'],
    ['--rank', '0', '--world-size', '2', '--split', 'cols'],
  ]) {
    const r = await cli(path, ...argv);
    assert.equal(r.status, 2, argv.join(' '));
    assert.match(r.stderr, /^dmaload inspect: .*(rank|world-size|worldSize|split).*\n/s, argv.join(' '));
    assert.equal(r.stdout, '');
  }
});

test('dmaload inspect --rank R --world-size N --json prints the plan loadModel follows', async () => {
  const path = join(dir, 'plan.safetensors');
  const file = writeSafetensors(path, unevenSpecs());
  for (const split of ['tensors', 'rows'] as const) {
    for (let rank = 0; rank < 3; rank++) {
      const r = await cli(path, '--rank', String(rank), '--world-size', '3', '--split', split, '--json');
      assert.equal(r.status, 0, r.stderr);
      const plan = JSON.parse(r.stdout) as {
        rank: number;
        worldSize: number;
        split: string;
        bytes: number;
        tensors: { name: string; offset: number; bytes: number }[];
        files: { file: string; bytes: number; ranges: { offset: number; length: number }[] }[];
      };
      assert.deepEqual([plan.rank, plan.worldSize, plan.split], [rank, 3, split]);
      const model = await loadModel(path, { rank, worldSize: 3, split });
      try {
        assert.deepEqual(
          plan.tensors.map((t) => [t.name, t.offset, t.bytes]),
          [...model.tensors.values()].map((t) => [t.name, t.offset, t.byteLength]),
        );
        assert.equal(plan.bytes, model.stats.tensorBytes);
        assert.equal(
          plan.files.reduce((n, f) => n + f.ranges.length, 0),
          model.stats.ranges,
        );
        // Each planned range, read straight from the file, holds the tensors it claims.
        for (const t of plan.tensors) {
          if (t.bytes === 0) continue;
          const range = plan.files[0]!.ranges.find((g) => g.offset <= t.offset && t.offset + t.bytes <= g.offset + g.length);
          assert.ok(range, `${t.name} is inside a planned range`);
        }
        assert.equal(
          sha256(Buffer.concat(plan.tensors.map((t) => file.subarray(t.offset, t.offset + t.bytes)))),
          sha256(Buffer.concat([...model.tensors.values()].map((t) => t.bytes))),
        );
      } finally {
        model.close();
      }
    }
  }
  // The table form names the rank and its share.
  const t = await cli(path, '--rank', '1', '--world-size', '2');
  assert.equal(t.status, 0);
  assert.match(t.stdout, /^format {3}safetensors$/m);
  assert.match(t.stdout, /^rank 1 of 2, split by tensors: \d+ tensors, .+ in \d+ ranges from 1 file$/m);
  assert.deepEqual(readFileSync(path), file);
});
