/**
 * `npm run bench:first-touch -- SEQUENCE [GAP_MS] [SIZE]`: what faulting in fresh anonymous memory costs, one round
 * per letter of SEQUENCE (`h` with MADV_HUGEPAGE, `s` without), each mapped, populated (MADV_POPULATE_WRITE, no I/O)
 * and unmapped in turn, GAP_MS apart (default 0), SIZE each (default 1GiB). Shows what `probe --first-touch` cannot:
 * how the cost depends on how recently memory was freed, e.g. `h,h,h,s,s,s 0` against `h,s,h,s 5000`.
 */
import { anonymous } from '../../src/engine/memory.js';
import { native } from '../../src/engine/binding.js';
import { GiB, parseSize } from '../../src/core/util.js';

const seq = (process.argv[2] ?? 'h,s').split(',');
const gap = Number(process.argv[3] ?? 0);
const size = parseSize(process.argv[4] ?? '1GiB') ?? GiB;
if (seq.some((r) => r !== 'h' && r !== 's') || !(gap >= 0)) {
  console.error('usage: first-touch.js h,s,… [GAP_MS] [SIZE]');
  process.exit(2);
}
for (const r of seq) {
  const region = anonymous(size, r === 'h');
  try {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const rc = await native.populate(region, 0, size);
    if (rc < 0) throw new Error(`madvise(MADV_POPULATE_WRITE) failed (${rc})`);
    const c = process.cpuUsage(c0);
    console.log(`${r} ${Math.round((c.user + c.system) / 1000)} ms CPU, ${Math.round(performance.now() - t0)} ms wall`);
  } finally {
    native.munmap(region);
  }
  if (gap) await new Promise((res) => setTimeout(res, gap));
}
