/**
 * `npm run bench:hugetlb -- FILE [ROUNDS]`: a cold load of FILE with memory from the hugetlb pool against small pages
 * and Node's readFile, and a reload into each kind of buffer (`load(path, { into })`), wall and CPU ms, each in a
 * fresh process, FILE evicted before every load, rounds alternating, medians with min–max. Needs a pool with a
 * buffer's worth of free pages (as root: sysctl vm.nr_hugepages=N), used once before (the first use after reserving
 * is slow: the host backs the pages then); it says so when the pool is short.
 */
import { execFileSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { defaultPool } from '../../src/engine/hugetlb.js';

const dist = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = join(dist, '..', 'bin', 'dmaload.js');
const api = JSON.stringify(join(dist, 'src', 'index.js'));
const cache = JSON.stringify(join(dist, 'src', 'pipeline', 'cache.js'));

interface Cost {
  wall: number;
  cpu: number;
}

const file = process.argv[2];
const rounds = Number(process.argv[3] ?? 5);
if (!file) {
  process.stderr.write('usage: npm run bench:hugetlb -- FILE [ROUNDS]\n');
  process.exit(2);
}
const size = statSync(file).size;
const pool = defaultPool();
const need = pool ? Math.ceil(size / pool.pageSize) : 0;
if (!pool || pool.available < need) {
  process.stderr.write(
    `the hugetlb pool has ${pool?.available ?? 0} free pages, ${need || 'some'} needed: as root, sysctl vm.nr_hugepages=${(pool?.total ?? 0) + need}\n`,
  );
  process.exit(1);
}

const node = (code: string): Cost => JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', code]).toString()) as Cost;
const evict = () => node(`import { evictPath } from ${cache}; evictPath(${JSON.stringify(file)}); console.log('{}');`);

function load(hugePages: string): Cost {
  evict();
  const j = JSON.parse(execFileSync(process.execPath, [bin, 'load', file!, '--json', '--io', 'direct', '--huge-pages', hugePages]).toString()) as {
    ms: number;
    cpuMs: number;
  };
  return { wall: j.ms, cpu: j.cpuMs };
}

function readFile(): Cost {
  evict();
  return node(
    `import { readFile } from 'node:fs/promises'; const c0 = process.cpuUsage(); const t0 = performance.now(); await readFile(${JSON.stringify(file)}); ` +
      `const c = process.cpuUsage(c0); console.log(JSON.stringify({ wall: performance.now() - t0, cpu: (c.user + c.system) / 1000 }));`,
  );
}

function reload(hugePages: 'hugetlb' | false): Cost {
  return node(
    `import { load } from ${api}; import { evictPath } from ${cache}; const f = ${JSON.stringify(file)};` +
      `const first = await load(f, { io: 'direct', hugePages: ${JSON.stringify(hugePages)} }); evictPath(f);` +
      `const c0 = process.cpuUsage(); const t0 = performance.now(); const b = await load(f, { io: 'direct', into: first });` +
      `const c = process.cpuUsage(c0); b.close(); console.log(JSON.stringify({ wall: performance.now() - t0, cpu: (c.user + c.system) / 1000 }));`,
  );
}

const rows: Array<[string, () => Cost]> = [
  ['hugetlb', () => load('hugetlb')],
  ['small pages', () => load('off')],
  ['node readFile', readFile],
  ['reload into hugetlb', () => reload('hugetlb')],
  ['reload into small pages', () => reload(false)],
];
// Used once: the first use of a pool after reserving it pays for the host backing it.
const first = load('hugetlb');
process.stderr.write(
  `first hugetlb load (not counted; slow when it is the pool's first use since it was reserved): ${first.wall.toFixed(0)} ms, CPU ${first.cpu.toFixed(0)} ms\n`,
);
const got = rows.map((): Cost[] => []);
for (let r = 0; r < rounds; r++) {
  rows.forEach(([, run], i) => got[i]!.push(run()));
  process.stderr.write(`round ${r + 1}/${rounds}\n`);
}
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const fmt = (xs: number[]) => `${median(xs).toFixed(0)} (${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)})`;
process.stdout.write(`${file}: ${size} bytes, cold, io direct, median (min–max) of ${rounds}\n| | wall ms | CPU ms |\n| --- | --- | --- |\n`);
rows.forEach(([name], i) => process.stdout.write(`| ${name} | ${fmt(got[i]!.map((c) => c.wall))} | ${fmt(got[i]!.map((c) => c.cpu))} |\n`));
