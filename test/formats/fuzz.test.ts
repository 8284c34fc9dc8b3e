import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fuzzFormats, seeds } from '../fuzz-formats.js';
import { parseModel } from '../../src/formats/index.js';

test('fuzz seeds are valid files', () => {
  for (const s of seeds()) assert.ok(parseModel(s).tensors.length > 0);
});

test('2,000 mutated headers: only DmaloadErrors, consistent results, incremental = whole', () => {
  const r = fuzzFormats({ cases: 2000, seed: 0x5eed });
  // Each outcome is reached: the mutations get past the first checks.
  assert.ok(r.accepted > 0, JSON.stringify(r));
  for (const code of ['ERR_MODEL_HEADER', 'ERR_MODEL_TRUNCATED', 'ERR_MODEL_RANGE', 'ERR_MODEL_FORMAT', 'ERR_MODEL_VERSION']) {
    assert.ok((r.refused[code] ?? 0) > 0, `${code}: ${JSON.stringify(r)}`);
  }
  assert.ok(r.slowestMs < 1000, `slowest case ${r.slowestMs} ms`);
});
