/** Assertions for the model parsers' errors: a DmaloadError with the exact code (and path). */
import assert from 'node:assert/strict';
import { DmaloadError } from '../../src/core/errors.js';

export function throwsCode(fn: () => unknown, code: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof DmaloadError, `not a DmaloadError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    return true;
  });
}

export async function rejectsCode(p: Promise<unknown>, code: string, path?: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof DmaloadError, `not a DmaloadError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (path !== undefined) assert.equal(e.path, path);
    return true;
  });
}
