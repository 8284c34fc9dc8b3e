#!/usr/bin/env node
/**
 * dmaload's install script. The package ships a prebuilt addon (prebuilds/<platform>-<arch>/dmaload.<libc>.node,
 * made by scripts/prebuild.mjs); when one fits this system and loads, there is nothing to do. Otherwise (another
 * platform or CPU, musl, a glibc or libstdc++ older than the prebuilt needs) the addon is built from the shipped
 * native/ and binding.gyp with node-gyp into build/Release, which the library prefers at run time.
 *
 * Always builds:
 *   - in a git checkout (a .git beside package.json), so `npm install && npm test` compiles the sources you have;
 *   - when asked to: DMALOAD_BUILD_FROM_SOURCE=1, or `npm install --build-from-source` (npm_config_build_from_source).
 *
 * The script is also why npm does not run its implicit `node-gyp rebuild`: npm adds that to any package that has a
 * binding.gyp and no install script of its own.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { prebuiltFor } from './prebuilt.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const say = (msg) => process.stderr.write(`dmaload: ${msg}\n`);

const truthy = (v) => v !== undefined && v !== '' && v !== '0' && v !== 'false';

/** Why the prebuilt cannot be used, or undefined when it can. */
function prebuiltProblem() {
  if (existsSync(join(root, '.git'))) return 'a git checkout builds its own addon';
  if (truthy(process.env.DMALOAD_BUILD_FROM_SOURCE)) return 'DMALOAD_BUILD_FROM_SOURCE is set';
  if (truthy(process.env.npm_config_build_from_source)) return '--build-from-source was given';
  const { file, label } = prebuiltFor(root);
  if (!existsSync(file)) return `no prebuilt addon for ${label} in this package`;
  // In a child: a binary that needs a newer glibc or libstdc++ fails dlopen; one that crashes takes only the child.
  const r = spawnSync(process.execPath, ['-e', 'require(process.argv[1])', file], { encoding: 'utf8', timeout: 60_000 });
  if (r.status === 0) return undefined;
  const why = (r.stderr || r.error?.message || `exit ${r.status ?? r.signal}`).split('\n').find((l) => /Error|error:/.test(l)) ?? r.stderr.trim();
  return `the prebuilt addon ${relative(root, file)} does not load here (${why.trim()})`;
}

/**
 * A checkout whose addon is already built from its current sources (every file of native/ and binding.gyp older
 * than build/Release/dmaload.node): nothing to rebuild. `npm install ../dmaload` from another project runs this
 * script in the checkout, and would otherwise recompile it every time. DMALOAD_BUILD_FROM_SOURCE=1 rebuilds anyway.
 */
function upToDate() {
  const built = join(root, 'build', 'Release', 'dmaload.node');
  if (!existsSync(join(root, '.git')) || !existsSync(built) || truthy(process.env.DMALOAD_BUILD_FROM_SOURCE)) return false;
  const at = statSync(built).mtimeMs;
  const sources = [join(root, 'binding.gyp'), ...readdirSync(join(root, 'native'), { recursive: true }).map((f) => join(root, 'native', String(f)))];
  return sources.every((f) => !statSync(f).isFile() || statSync(f).mtimeMs <= at);
}

if (upToDate()) {
  say('the native addon in build/Release is newer than its sources: not rebuilt (DMALOAD_BUILD_FROM_SOURCE=1 rebuilds it)');
  process.exit(0);
}

const problem = prebuiltProblem();
if (problem === undefined) {
  // An earlier fallback build would shadow the prebuilt at run time (build/Release is preferred): drop it.
  rmSync(join(root, 'build'), { recursive: true, force: true });
  process.exit(0);
}

// Build from source with the node-gyp npm runs scripts with (npm_config_node_gyp), else whichever is on PATH.
say(`${problem}: building the native addon from source with node-gyp (needs a C++20 compiler, make and python3)`);
const gyp = process.env.npm_config_node_gyp;
const [cmd, args] = gyp && existsSync(gyp) ? [process.execPath, [gyp, 'rebuild']] : ['node-gyp', ['rebuild']];
const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
if (r.status !== 0) {
  const how = r.error?.code === 'ENOENT' ? 'node-gyp was not found' : `node-gyp exited with ${r.status ?? r.signal}`;
  const again = existsSync(join(root, '.git')) ? '`npm install` again' : '`npm rebuild dmaload`';
  say(
    `building the native addon failed (${how}). Install a C++ compiler with C++20 support, make and python3, then ` +
      `${again}; or set DMALOAD_ADDON to the path of a dmaload.node built elsewhere.`,
  );
  process.exit(r.status || 1);
}
