/**
 * scripts/install.mjs in a checkout: an addon built from the current sources is not rebuilt (so `npm install
 * ../dmaload` from another project is quick); a source newer than the addon, or DMALOAD_BUILD_FROM_SOURCE, builds.
 * Run on a copy of the script in a folder shaped like a checkout (.git, native/, binding.gyp, build/Release), with no
 * node-gyp to be found: "building" shows as the attempt and its coded failure, never as a real compile.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, utimesSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { repoRoot, tempDir } from './helpers.js';

const { dir, cleanup } = tempDir('dmaload-install-');
after(cleanup);

test('install.mjs in a checkout: an up-to-date addon is kept; a newer source, or DMALOAD_BUILD_FROM_SOURCE, rebuilds', () => {
  for (const d of ['.git', 'native', 'scripts', 'build/Release']) mkdirSync(join(dir, d), { recursive: true });
  for (const f of ['install.mjs', 'prebuilt.mjs']) copyFileSync(join(repoRoot, 'scripts', f), join(dir, 'scripts', f));
  const old = new Date(Date.now() - 3_600_000);
  for (const f of ['native/engine.cc', 'binding.gyp']) {
    writeFileSync(join(dir, f), '// source\n');
    utimesSync(join(dir, f), old, old);
  }
  writeFileSync(join(dir, 'build/Release/dmaload.node'), 'not a real addon');
  const run = (env: Record<string, string> = {}) =>
    spawnSync(process.execPath, [join(dir, 'scripts', 'install.mjs')], {
      encoding: 'utf8',
      // No npm_config_node_gyp and no node-gyp on PATH: a build attempt fails at once, saying so.
      env: { PATH: dirname(process.execPath), ...env },
    });
  const kept = run();
  assert.equal(kept.status, 0, kept.stderr);
  assert.match(kept.stderr, /newer than its sources: not rebuilt/);
  const forced = run({ DMALOAD_BUILD_FROM_SOURCE: '1' });
  assert.notEqual(forced.status, 0);
  assert.match(forced.stderr, /building the native addon from source/);
  const now = new Date(Date.now() + 1000);
  utimesSync(join(dir, 'native/engine.cc'), now, now);
  const stale = run();
  assert.notEqual(stale.status, 0);
  assert.match(stale.stderr, /building the native addon from source[\s\S]*node-gyp was not found/);
});
