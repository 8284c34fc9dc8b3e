/**
 * Issue #28 item 4: every usage error exits 2 and names the CLI's flag or variable, not the library's option; a
 * runtime error (a missing file, a file that is not a model) stays exit 1.
 */
import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { invalidType, invalidValue, outOfRange } from '../../src/core/errors.js';
import { flagError } from '../../src/cli/flags.js';
import { makeFile, tempDir } from '../helpers.js';
import { cli } from './run.js';

const { dir, cleanup } = tempDir();
after(cleanup);
const model = resolve(fileURLToPath(import.meta.url), '../../../../test/fixtures/safetensors-samples/overall.safetensors');
/** A node number no machine that runs these tests has (the highest Linux allows). */
const NO_SUCH_NODE = '1023';

/** Runs the CLI with `env` set for the call only. */
async function withEnv(env: Record<string, string>, ...argv: string[]) {
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    return await cli(...argv);
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

describe('cli: exit statuses', () => {
  test("a flag's value the library refuses: exit 2, named as the flag, with the library's code", async () => {
    const f = makeFile(dir, 'numa', 64 * 1024);
    for (const [argv, flag, code] of [
      [['load', f.path, '--numa-node', NO_SUCH_NODE], '--numa-node', 'ERR_OUT_OF_RANGE'],
      [['load', f.path, '--target', 'dma-heap', '--numa-node', '0'], '--numa-node', 'ERR_INVALID_ARG_VALUE'],
      [['bench', f.path, '--numa-node', NO_SUCH_NODE, '--rounds', '1'], '--numa-node', 'ERR_OUT_OF_RANGE'],
      [['inspect', model, '--rank', '2', '--world-size', '2'], '--rank', 'ERR_OUT_OF_RANGE'],
    ] as const) {
      const r = await cli(...argv);
      assert.equal(r.code, 2, `${argv.join(' ')}: ${r.err}`);
      assert.match(r.err, new RegExp(`^dmaload ${argv[0]}: ${code}: ${flag} `), argv.join(' '));
      assert.doesNotMatch(r.err, /"numaNode"|"worldSize"|"rank"|worldSize/, `${argv.join(' ')}: the library's option name`);
      assert.match(r.err, new RegExp(`Run 'dmaload ${argv[0]} --help' for usage`));
      assert.equal(r.out, '');
    }
  });

  test('inspect --rank without --world-size (and the reverse): exit 2 naming both flags', async () => {
    for (const argv of [
      ['--rank', '1'],
      ['--world-size', '2'],
      ['--split', 'rows'],
    ]) {
      const r = await cli('inspect', model, ...argv);
      assert.equal(r.code, 2, argv.join(' '));
      assert.match(r.err, /--rank/);
      assert.match(r.err, /--world-size/);
      assert.doesNotMatch(r.err, /worldSize|"rank"/);
    }
  });

  test('a bad environment variable: exit 2, named as the variable', async () => {
    const f = makeFile(dir, 'env', 64 * 1024);
    for (const [env, value] of [
      ['DMALOAD_HUGE_PAGES', 'sometimes'],
      ['DMALOAD_CHUNK_SIZE', '5'],
      ['DMALOAD_QUEUE_DEPTH', '100000'],
      ['DMALOAD_NUMA_NODE', NO_SUCH_NODE],
    ] as const) {
      const r = await withEnv({ [env]: value }, 'load', f.path);
      assert.equal(r.code, 2, `${env}=${value}: ${r.err}`);
      assert.match(r.err, new RegExp(`^dmaload load: ERR_[A-Z_]+: ${env} `), env);
      assert.doesNotMatch(r.err, /The "|The value of "/, `${env}: in the CLI's words`);
    }
  });

  test('runtime errors stay exit 1: a missing file, a file that is not a model', async () => {
    const missing = await cli('load', `${dir}/missing`, '--numa-node', '0');
    assert.equal(missing.code, 1, missing.err);
    assert.match(missing.err, /ENOENT/);
    const notModel = await cli('inspect', makeFile(dir, 'not-a-model', 100).path, '--rank', '0', '--world-size', '1');
    assert.equal(notModel.code, 1, notModel.err);
    assert.match(notModel.err, /ERR_MODEL_FORMAT/);
  });

  test("flagError maps the library's three argument errors of a command's flags and variables, nothing else", () => {
    const flags = { numaNode: '--numa-node', worldSize: '--world-size', rank: '--rank' };
    const cases: Array<[Error, string | undefined]> = [
      [outOfRange('numaNode', 'a node with memory', 3), '--numa-node is out of range: it must be a node with memory (got 3)'],
      [invalidType('numaNode', 'a number', 'x'), '--numa-node must be a number (got "x")'],
      [invalidValue('numaNode', 0, 'applies to targets memory, memfd'), '--numa-node applies to targets memory, memfd (got 0)'],
      [outOfRange('rank', 'an integer >= 0 and < worldSize (2)', 2), '--rank is out of range: it must be an integer >= 0 and < --world-size (2) (got 2)'],
      [
        invalidValue('DMALOAD_HUGE_PAGES', 'x', 'must be 1, 0, hugetlb or hugetlb-or-small'),
        'DMALOAD_HUGE_PAGES must be 1, 0, hugetlb or hugetlb-or-small (got "x")',
      ],
      [outOfRange('DMALOAD_CHUNK_SIZE', 'an integer >= 4096', 5), 'DMALOAD_CHUNK_SIZE is out of range: it must be an integer >= 4096 (got 5)'],
      // Not a flag this command passed: an argument the CLI never gives (a bug), stays a runtime error.
      [outOfRange('ranges[0].offset', 'an integer >= 0', -1), undefined],
      [invalidValue('partSize', 4096, 'cannot be given with into'), undefined],
      // Not an argument error at all.
      [Object.assign(new Error('The "numaNode" option x'), { code: 'ENOENT' }), undefined],
    ];
    for (const [e, want] of cases) assert.equal(flagError(e, flags)?.message, want, e.message);
  });
});
