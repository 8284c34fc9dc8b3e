/**
 * Issue #28 item 6: with --json every command prints exactly one JSON document on stdout, errors included
 * ({ error: { code, message, path } }), and exits with the documented status (1 error, 2 usage error).
 */
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { makeFile, tempDir } from '../helpers.js';
import { cli } from './run.js';

const { dir, cleanup } = tempDir();
after(cleanup);
const model = resolve(fileURLToPath(import.meta.url), '../../../../test/fixtures/safetensors-samples/overall.safetensors');

interface ErrorDoc {
  error: { code: string; message: string; path?: string };
}

/** stdout is one JSON document (one line) and nothing else is printed; returns it. */
function oneDocument(r: { out: string; err: string }, what: string): unknown {
  assert.equal(r.err, '', `${what}: nothing on stderr`);
  assert.match(r.out, /^[^\n]+\n$/, `${what}: one line on stdout`);
  return JSON.parse(r.out);
}

describe('cli: --json errors', () => {
  test('every command with --json: a runtime error is one JSON document with code, message and path, exit 1', async () => {
    const missing = join(dir, 'missing');
    const notModel = makeFile(dir, 'not-a-model', 100).path;
    for (const [argv, code, path] of [
      [['load', missing, '--json'], 'ENOENT', missing],
      [['cp', missing, join(dir, 'copy'), '--json'], 'ENOENT', missing],
      [['verify', missing, '--json'], 'ENOENT', missing],
      [['probe', missing, '--json'], 'ENOENT', missing],
      [['inspect', notModel, '--json'], 'ERR_MODEL_FORMAT', notModel],
      [['bench', missing, '--json'], 'ENOENT', missing],
    ] as const) {
      const r = await cli(...argv);
      assert.equal(r.code, 1, `${argv.join(' ')}: ${r.err}`);
      const doc = oneDocument(r, argv.join(' ')) as ErrorDoc & { path?: string };
      assert.equal(doc.error.code, code, argv.join(' '));
      assert.equal(typeof doc.error.message, 'string');
      assert.equal(doc.error.path ?? doc.path, path, argv.join(' '));
    }
  });

  test('pull --json: an error from the hub (offline, not cached) is one JSON document, exit 1', async () => {
    const saved = process.env.HF_HUB_OFFLINE;
    process.env.HF_HUB_OFFLINE = '1';
    try {
      const cache = join(dir, 'hub');
      mkdirSync(cache);
      const r = await cli('pull', 'org/not-cached', '--cache-dir', cache, '--json');
      assert.equal(r.code, 1, r.err);
      const doc = oneDocument(r, 'pull') as ErrorDoc;
      assert.equal(doc.error.code, 'ERR_SOURCE_OFFLINE');
    } finally {
      if (saved === undefined) delete process.env.HF_HUB_OFFLINE;
      else process.env.HF_HUB_OFFLINE = saved;
    }
  });

  test('usage errors with --json: one JSON document, exit 2 (ERR_USAGE, or the code of the value refused)', async () => {
    const f = makeFile(dir, 'usage', 4096);
    for (const [argv, code] of [
      [['load', f.path, '--bogus', '--json'], 'ERR_USAGE'],
      [['load', '--json'], 'ERR_USAGE'],
      [['load', f.path, '--target', 'gpu', '--json'], 'ERR_USAGE'],
      [['load', f.path, '--numa-node', '1023', '--json'], 'ERR_OUT_OF_RANGE'],
      [['cp', f.path, '--json'], 'ERR_USAGE'],
      [['verify', '--json'], 'ERR_USAGE'],
      [['probe', 'a', 'b', '--json'], 'ERR_USAGE'],
      [['inspect', '--json'], 'ERR_USAGE'],
      [['inspect', model, '--rank', '1', '--json'], 'ERR_USAGE'],
      [['inspect', model, '--rank', '3', '--world-size', '2', '--json'], 'ERR_OUT_OF_RANGE'],
      [['bench', '--rounds', '0', '--json'], 'ERR_USAGE'],
      [['pull', 'https://example.com/x', '--json'], 'ERR_USAGE'],
    ] as const) {
      const r = await cli(...argv);
      assert.equal(r.code, 2, `${argv.join(' ')}: ${r.err}`);
      const doc = oneDocument(r, argv.join(' ')) as ErrorDoc;
      assert.equal(doc.error.code, code, argv.join(' '));
      assert.ok(doc.error.message.length > 0);
    }
  });

  test('verify --json with several files: one document listing each, the unreadable one with its error; exit 1', async () => {
    const a = makeFile(dir, 'a', 5000);
    const missing = join(dir, 'gone');
    const r = await cli('verify', '--json', a.path, missing);
    assert.equal(r.code, 1);
    const doc = oneDocument(r, 'verify') as { files: Array<{ path: string; sha256?: string; error?: { code: string; path?: string } }> };
    assert.equal(doc.files.length, 2);
    assert.deepEqual([doc.files[0]!.path, doc.files[0]!.sha256], [a.path, a.sha256]);
    assert.equal(doc.files[1]!.path, missing);
    assert.equal(doc.files[1]!.error?.code, 'ENOENT');
    const ok = await cli('verify', '--json', a.path);
    assert.equal(ok.code, 0);
    assert.equal((oneDocument(ok, 'verify one') as { sha256: string }).sha256, a.sha256);
  });

  test('without --json, errors stay text on stderr', async () => {
    const r = await cli('load', join(dir, 'missing'));
    assert.equal(r.code, 1);
    assert.equal(r.out, '');
    assert.match(r.err, /^dmaload load: ENOENT: /);
  });
});
