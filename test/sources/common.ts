/** What the network-source tests share (not a test file itself): loopback, the hub's variables, errors, leaks. */
import assert from 'node:assert/strict';
import { leakCheck } from '../helpers.js';

/** Hosts that must never go through a proxy of the environment. */
export const LOOPBACK = '127.0.0.1,127.0.0.2,localhost';

/** The environment variables a hub reference, a load or a pull reads; each test sets its own and gets the old ones back. */
export const HF_VARS = [
  'HF_ENDPOINT',
  'HF_HUB_CACHE',
  'HUGGINGFACE_HUB_CACHE',
  'HF_HOME',
  'XDG_CACHE_HOME',
  'HF_HUB_OFFLINE',
  'TRANSFORMERS_OFFLINE',
  'HF_TOKEN',
  'HF_TOKEN_PATH',
  'HUGGING_FACE_HUB_TOKEN',
  'NO_PROXY',
  'no_proxy',
];

/**
 * Runs `fn` with {@link HF_VARS} cleared and `env` set on top (undefined unsets); restores every variable it
 * touched afterwards.
 */
export async function withVars<T>(env: Record<string, string | undefined>, fn: () => Promise<T>): Promise<T> {
  const keys = [...new Set([...HF_VARS, ...Object.keys(env)])];
  const saved = new Map(keys.map((k) => [k, process.env[k]]));
  for (const k of keys) {
    const v = env[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  try {
    return await fn();
  } finally {
    for (const [k, v] of saved) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

/** The error `p` rejects with (the test fails if it resolves; what it resolved with is closed first, if it can be). */
export type Failure = Error & { code?: string; expected?: unknown; actual?: unknown };
export async function failure(p: Promise<unknown>): Promise<Failure> {
  let value: unknown;
  try {
    value = await p;
  } catch (e) {
    return e as Failure;
  }
  (value as { close?: () => void } | undefined)?.close?.();
  assert.fail('expected a rejection, but it resolved');
}

/** Awaits `p`, which must reject with a DmaloadError of `code`; returns the error. */
export async function rejects(p: Promise<unknown>, code: string): Promise<Error & Record<string, unknown>> {
  let caught: unknown;
  await assert.rejects(p, (e: unknown) => ((caught = e), true));
  const e = caught as Error & Record<string, unknown>;
  assert.equal(e.code, code, `expected ${code}, got ${String(e.code)}: ${e.message}`);
  return e;
}

/** Runs `fn` between a leakCheck baseline and its check: whatever fn opened (servers included) must be closed by it. */
export async function clean<T>(fn: () => Promise<T>): Promise<T> {
  // What an earlier test left closing (a server's socket) must not count against this one.
  await new Promise((r) => setTimeout(r, 20));
  const leaks = leakCheck();
  const out = await fn();
  assert.equal(await leaks(), undefined, 'leak');
  return out;
}
