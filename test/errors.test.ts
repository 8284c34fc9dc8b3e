/**
 * One list of error codes: ERROR_CODES (the type ErrorCode is made from it) equals docs/api.md's table, row for row,
 * and the codes that src/ and native/ name in their string literals, no more and no fewer.
 */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ERROR_CODES, isErrorCode } from '../src/core/errors.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Node's own codes that dmaload reads but never throws (the CLI tells parseArgs' errors apart by this prefix). */
const READ_ONLY = new Set(['ERR_PARSE_ARGS']);

function files(dir: string, ends: string[]): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    return e.isDirectory() ? files(p, ends) : ends.some((x) => e.name.endsWith(x)) ? [p] : [];
  });
}

/** Each code named by a quoted string (not a comment's mention) in a file, with where. */
function codesIn(path: string): { code: string; where: string }[] {
  let text = readFileSync(path, 'utf8');
  // The list itself would prove every code used: leave it out.
  if (path.endsWith(join('core', 'errors.ts'))) text = text.replace(/export const ERROR_CODES = \[[^\]]*\] as const;/, '');
  const out: { code: string; where: string }[] = [];
  for (const m of text.matchAll(/(['"`])(ERR_[A-Z0-9_]+)\1/g)) {
    const line = text.slice(0, m.index).split('\n').length;
    out.push({ code: m[2]!, where: `${relative(root, path)}:${line}` });
  }
  return out;
}

test('ERROR_CODES has no duplicates, and isErrorCode knows exactly them', () => {
  assert.equal(new Set(ERROR_CODES).size, ERROR_CODES.length);
  for (const c of ERROR_CODES) assert.ok(isErrorCode(c), c);
  for (const c of ['ERR_MODEL', 'err_usage', 'ENOENT', 'ERR_PARSE_ARGS', '', 42, undefined]) assert.equal(isErrorCode(c), false, String(c));
});

test('every ERR_ code in src/ and native/ is in ERROR_CODES, and every listed code is used', () => {
  const found = [...files(join(root, 'src'), ['.ts']), ...files(join(root, 'native'), ['.cc', '.h'])].flatMap(codesIn);
  assert.ok(found.length > 100, `only ${found.length} codes found: is the source where this test looks (${root})?`);
  const unlisted = found.filter((f) => !isErrorCode(f.code) && !READ_ONLY.has(f.code)).map((f) => `${f.where}: ${f.code}`);
  assert.deepEqual(unlisted, [], 'codes thrown but missing from ERROR_CODES (src/core/errors.ts)');
  const used = new Set(found.map((f) => f.code));
  assert.deepEqual(
    ERROR_CODES.filter((c) => !used.has(c)),
    [],
    'codes listed but used nowhere',
  );
});

test("docs/api.md's error table lists ERROR_CODES, in order", () => {
  const doc = readFileSync(join(root, 'docs', 'api.md'), 'utf8');
  const section = doc.slice(doc.indexOf('\n## Errors'));
  assert.ok(section.length > 1, 'docs/api.md has no "## Errors" section');
  const end = section.indexOf('\n## ', 1);
  const rows = [...(end < 0 ? section : section.slice(0, end)).matchAll(/^\| `(ERR_[A-Z0-9_]+)` \|/gm)].map((m) => m[1]);
  assert.deepEqual(rows, [...ERROR_CODES]);
});
