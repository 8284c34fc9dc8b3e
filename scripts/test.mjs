#!/usr/bin/env node
// Runs the host suite: every dist/test/**/*.test.js except the real-kernel tier (dist/test/kernel/, run in a qemu
// guest by `npm run test:kernel`), with node's test runner, one file at a time (the tests measure the page cache
// and count fds, which parallel files would disturb). Uses the node that runs this script.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const files = [];
(function walk(dir) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      if (relative(root, p) !== join('dist', 'test', 'kernel')) walk(p);
    } else if (e.name.endsWith('.test.js')) files.push(relative(root, p));
  }
})(join(root, 'dist', 'test'));
files.sort();
// io 'auto' chooses by rates measured on this machine, which the suite's own loads would keep and change as it runs:
// tests of what auto does with cached ranges pin the rule (off); test/io-rates.test.ts turns the rates on for itself.
const env = { ...process.env, DMALOAD_IO_RATES: process.env.DMALOAD_IO_RATES ?? 'off' };
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', ...process.argv.slice(2), ...files], { cwd: root, stdio: 'inherit', env });
process.exit(r.status ?? 1);
