#!/usr/bin/env node
// Formats the addon's C++ (native/*.cc, native/*.h) with clang-format from npm (the `clang-format` devDependency, a
// pinned binary: the same result on every machine). `--check` fails, listing the files, when one is not formatted.
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const bin = join(dirname(require.resolve('clang-format/package.json')), 'bin', `${process.platform}_${process.arch}`, 'clang-format');
const files = readdirSync(join(root, 'native'))
  .filter((f) => /\.(cc|h)$/.test(f))
  .map((f) => join('native', f));
const check = process.argv.includes('--check');
try {
  execFileSync(bin, [...(check ? ['--dry-run', '--Werror'] : ['-i']), ...files], { cwd: root, stdio: 'inherit' });
} catch {
  console.error(check ? "clang-format: native/ is not formatted; run 'npm run format'" : 'clang-format failed');
  process.exit(1);
}
