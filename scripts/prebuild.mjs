#!/usr/bin/env node
/**
 * `npm run prebuilds`: builds the native addon from this checkout's binding.gyp and native/ with node-gyp, and puts it
 * where the package loads it with no install step: prebuilds/<platform>-<arch>/dmaload.<libc>.node (on the CI
 * machine prebuilds/linux-x64/dmaload.glibc.node). The naming follows prebuildify's layout, so node-gyp-build would
 * find the file too.
 *
 * Nothing is downloaded. node-gyp is the one bundled with npm (npm_config_node_gyp, set by `npm run`); the Node
 * headers come from npm_config_nodedir if set, else from the running node's own installation (official tarballs and
 * Debian's nodejs-dev ship include/node/), else from node-gyp's header cache; if none has them the script stops
 * instead of letting node-gyp fetch them. The addon uses only Node-API (NAPI_VERSION=8), so one binary serves every
 * Node version from 20 on; the script checks that: every symbol it takes from the host is napi_* / node_api_*.
 *
 * The build runs in .cache/prebuild (a copy of binding.gyp and native/), so the checkout's build/ is left alone.
 * The result is loaded in a fresh node process before it is put in place.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, realpathSync, renameSync, rmSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { prebuiltFor } from './prebuilt.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const say = (msg) => process.stderr.write(`prebuild: ${msg}\n`);
function fail(msg) {
  say(`error: ${msg}`);
  process.exit(1);
}

/** npm's own node-gyp: the one `npm run` names, else the one bundled with the npm beside this node or on PATH. */
function nodeGyp() {
  const gypOf = (npmCli) => join(dirname(npmCli), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  const npmOnPath = (process.env.PATH ?? '')
    .split(':')
    .map((d) => join(d || '.', 'npm'))
    .find((f) => existsSync(f));
  const candidates = [
    process.env.npm_config_node_gyp,
    process.env.npm_execpath && gypOf(process.env.npm_execpath),
    join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    npmOnPath && gypOf(realpathSync(npmOnPath)),
  ];
  for (const c of candidates) if (c && existsSync(c)) return c;
  fail(`cannot find npm's node-gyp (looked at ${candidates.filter(Boolean).join(', ')}); run this as 'npm run prebuilds'`);
}

/** A folder with this node's headers, as node-gyp's --nodedir, or undefined when node-gyp's cache already has them. */
function nodeDir() {
  const fromNpm = process.env.npm_config_nodedir;
  if (fromNpm) {
    if (!existsSync(join(fromNpm, 'include', 'node', 'node_api.h')) && !existsSync(join(fromNpm, 'src', 'node_api.h')))
      fail(`npm_config_nodedir=${fromNpm} holds no Node headers (include/node/node_api.h)`);
    return fromNpm;
  }
  const prefix = resolve(dirname(realpathSync(process.execPath)), '..');
  if (existsSync(join(prefix, 'include', 'node', 'node_api.h')) && existsSync(join(prefix, 'include', 'node', 'common.gypi'))) return prefix;
  const version = process.version.slice(1);
  const cache = process.env.npm_config_devdir || join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'node-gyp');
  if (existsSync(join(cache, version, 'include', 'node', 'node_api.h'))) return undefined;
  fail(
    `no Node ${process.version} headers here (not in ${prefix}/include/node, not in ${cache}/${version}) and this script ` +
      'downloads nothing: set npm_config_nodedir to a Node installation or source tree that has them',
  );
}

/** Runs a tool, or returns undefined when it is not installed (binutils are optional: only the checks use them). */
function tool(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 16 << 20 });
  if (r.error?.code === 'ENOENT') return undefined;
  if (r.status !== 0) fail(`${cmd} ${args.join(' ')} failed: ${r.stderr || r.error?.message}`);
  return r.stdout;
}

const { dir: outDir, file: out } = prebuiltFor(root);
const stage = join(root, '.cache', 'prebuild');

// 1. Stage the sources the build needs and build there (node-gyp rebuild: configure from scratch, Release).
rmSync(stage, { recursive: true, force: true });
mkdirSync(stage, { recursive: true });
copyFileSync(join(root, 'binding.gyp'), join(stage, 'binding.gyp'));
cpSync(join(root, 'native'), join(stage, 'native'), { recursive: true });
if (!existsSync(join(root, 'node_modules', 'node-addon-api'))) fail('node-addon-api is not installed: run npm ci first');

const gyp = nodeGyp();
const dir = nodeDir();
const args = [gyp, 'rebuild', ...(dir ? [`--nodedir=${dir}`] : [])];
const env = { ...process.env };
for (const k of ['npm_config_debug', 'npm_config_build_from_source', 'DMALOAD_ADDON']) delete env[k];
say(`node-gyp ${args.slice(1).join(' ')} (${gyp}, Node ${process.version}) in ${relative(root, stage)}`);
const t0 = Date.now();
const built = spawnSync(process.execPath, args, { cwd: stage, env, stdio: ['ignore', 'inherit', 'inherit'] });
if (built.status !== 0) fail(`node-gyp failed (${built.error?.message ?? `exit ${built.status ?? built.signal}`})`);
const addon = join(stage, 'build', 'Release', 'dmaload.node');
if (!existsSync(addon)) fail(`node-gyp succeeded but made no ${relative(root, addon)}`);

// 2. It must be a pure Node-API addon: nothing taken from the host but napi_* / node_api_* (no V8 or libuv ABI).
const undef = tool('nm', ['-D', '--undefined-only', addon]);
if (undef === undefined) say('nm not found: skipping the Node-API-only symbol check');
else {
  const foreign = undef
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter(([kind, name]) => kind === 'U' && name && !name.includes('@') && !/^(napi_|node_api_)/.test(name))
    .map(([, name]) => name);
  if (foreign.length) fail(`the addon uses host symbols outside Node-API, so it would be tied to one Node ABI: ${foreign.join(', ')}`);
}

// 3. It must load in a fresh node, and export the functions the library calls.
const probe = spawnSync(
  process.execPath,
  [
    '-e',
    "const a = require(process.argv[1]); if (typeof a.strerror !== 'function' || typeof a.constants !== 'object') throw new Error('unexpected exports: ' + Object.keys(a).join(', '))",
    addon,
  ],
  { encoding: 'utf8' },
);
if (probe.status !== 0) fail(`the built addon does not load: ${probe.stderr.trim()}`);

// 4. Put it in place atomically, say what the binary needs from the system, drop the staging folder.
mkdirSync(outDir, { recursive: true });
copyFileSync(addon, `${out}.tmp`);
renameSync(`${out}.tmp`, out);
rmSync(stage, { recursive: true, force: true });
const versions = tool('objdump', ['-T', out]);
const floor = (prefix) => {
  const v = [...(versions ?? '').matchAll(new RegExp(`\\(${prefix}_([0-9.]+)\\)`, 'g'))].map((m) => m[1].split('.').map(Number));
  v.sort((a, b) => {
    for (let i = 0; i < Math.max(a.length, b.length); i++) if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) - (b[i] ?? 0);
    return 0;
  });
  return v.length ? v[v.length - 1].join('.') : undefined;
};
const needs =
  versions === undefined
    ? ' (objdump not found: symbol versions not checked)'
    : `, needs ${[
        ['GLIBC', floor('GLIBC')],
        ['GLIBCXX', floor('GLIBCXX')],
      ]
        .filter(([, v]) => v)
        .map(([n, v]) => `${n} ${v}`)
        .join(', ')}`;
say(`${relative(root, out)}: ${statSync(out).size} bytes in ${((Date.now() - t0) / 1000).toFixed(1)} s${needs}`);
