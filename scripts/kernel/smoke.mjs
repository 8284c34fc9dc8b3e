// Smoke test for the qemu tier (scripts/kernel/run.sh with no arguments runs this in the guest).
// Plain Node, no addon: checks the guest has what the dma-buf tests need and times the basics under TCG.
import { spawnSync } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

let failed = 0;
const check = (name, ok, detail = '') => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${detail ? ` — ${detail}` : ''}`);
  if (!ok) failed++;
};
const isChar = (p) => {
  try {
    return fs.statSync(p).isCharacterDevice();
  } catch {
    return false;
  }
};
const ms = (t0) => Number(process.hrtime.bigint() - t0) / 1e6;
const MiB = 1024 * 1024;

check('node runs', true, `${process.version} on ${os.release()}, ${os.cpus().length} CPUs, ${Math.round(os.totalmem() / MiB)} MiB`);
check('/dev/udmabuf', isChar('/dev/udmabuf'));
let limit = '';
try {
  limit = fs.readFileSync('/sys/module/udmabuf/parameters/size_limit_mb', 'utf8').trim();
} catch {
  /* no udmabuf module: reported just below */
}
check('udmabuf size_limit_mb readable', limit !== '', limit);
check('/dev/dma_heap/system', isChar('/dev/dma_heap/system'));
const mp = spawnSync('modprobe', ['vgem'], { encoding: 'utf8' });
check('modprobe vgem', mp.status === 0, (mp.stderr || '').trim());
const dri = fs.existsSync('/dev/dri') ? fs.readdirSync('/dev/dri') : [];
check(
  '/dev/dri/card* after vgem',
  dri.some((n) => n.startsWith('card')),
  dri.join(' '),
);

const tmp = os.tmpdir();
const mounts = fs
  .readFileSync('/proc/mounts', 'utf8')
  .split('\n')
  .map((l) => l.split(' '));
const best = mounts
  .filter((m) => m[1] && (tmp === m[1] || tmp.startsWith(m[1].endsWith('/') ? m[1] : m[1] + '/')))
  .sort((a, b) => b[1].length - a[1].length)[0];
check('os.tmpdir() is on ext4', best?.[2] === 'ext4', `${tmp} on ${best?.[1]} (${best?.[2]})`);

// Node start-up under TCG: the fixed cost of each test file the runner spawns.
const starts = [0, 1, 2].map(() => {
  const t = process.hrtime.bigint();
  spawnSync(process.execPath, ['-e', '0']);
  return ms(t);
});
check('node -e 0 start-up', true, starts.map((t) => `${t.toFixed(0)} ms`).join(', '));

// 64 MiB through ext4 on virtio-blk: write + fsync, drop the page cache, read back, compare hashes.
const file = path.join(tmp, 'smoke.bin');
const buf = randomFillSync(Buffer.allocUnsafe(64 * MiB));
let t = process.hrtime.bigint();
const want = createHash('sha256').update(buf).digest('hex');
const hashMs = ms(t);
t = process.hrtime.bigint();
const fd = fs.openSync(file, 'w');
for (let off = 0; off < buf.length;) off += fs.writeSync(fd, buf, off, Math.min(4 * MiB, buf.length - off));
fs.fsyncSync(fd);
fs.closeSync(fd);
const writeMs = ms(t);
try {
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
} catch {
  /* not root: the caches stay */
}
t = process.hrtime.bigint();
const back = fs.readFileSync(file);
const readMs = ms(t);
const got = createHash('sha256').update(back).digest('hex');
const rate = (ms) => `${(64 / (ms / 1000)).toFixed(0)} MiB/s`;
check(
  '64 MiB write+fsync / cold read on /data, same sha256',
  got === want,
  `write ${writeMs.toFixed(0)} ms (${rate(writeMs)}), read ${readMs.toFixed(0)} ms (${rate(readMs)}), sha256 ${hashMs.toFixed(0)} ms`,
);

// O_DIRECT must at least open on the data disk (a RAM file system would refuse it).
try {
  fs.closeSync(fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_DIRECT));
  check('O_DIRECT open on /data', true);
} catch (e) {
  check('O_DIRECT open on /data', false, e.code);
}
fs.unlinkSync(file);

console.log(failed ? `${failed} check(s) failed` : 'smoke: all checks passed');
process.exitCode = failed ? 1 : 0;
