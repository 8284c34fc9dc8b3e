/** `dmaload cp SRC DST`: load then save, page-cache free on both sides, atomic. */
import { statSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { DmaloadError } from '../errors.js';
import type { IoMode } from '../file.js';
import { load } from '../load.js';
import { save } from '../save.js';
import { formatBytes } from '../util.js';
import { UsageError, progressBar } from './io.js';
import type { CliIO } from './io.js';
import { choice } from './load.js';

export const CP_HELP = `Usage: dmaload cp SRC DST [--io auto|direct|buffered] [--json]

Copy SRC to DST by direct I/O on both sides (no page cache), replacing DST atomically: a reader sees the old
DST or the new one, never a torn file. SRC is held in memory once (refused above the memory budget).
`;

export async function cpCommand(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { io: { type: 'string' }, json: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false } },
  });
  if (values.help) {
    io.stdout(CP_HELP);
    return 0;
  }
  if (positionals.length !== 2) throw new UsageError('cp takes SRC and DST');
  const [src, dst] = positionals as [string, string];
  const ioMode = choice<IoMode>('io', values.io, ['auto', 'direct', 'buffered'], 'auto');
  const s = statSync(src);
  const d = (() => {
    try {
      return statSync(dst);
    } catch {
      return undefined;
    }
  })();
  if (d && d.ino === s.ino && d.dev === s.dev) throw new DmaloadError('ERR_SAME_FILE', `'${src}' and '${dst}' are the same file`, { path: dst });
  if (d?.isDirectory()) throw new DmaloadError('ERR_IS_DIRECTORY', `'${dst}' is a directory; give the destination file's full path`, { path: dst });
  const ac = new AbortController();
  const onSigint = () => ac.abort();
  process.once('SIGINT', onSigint);
  const bar = progressBar(io, 'cp');
  const t0 = performance.now();
  try {
    await using buf = await load(src, { io: ioMode, signal: ac.signal, onProgress: (p) => bar.update(p.bytes / 2, p.total) });
    const w = await save(buf, dst, { io: ioMode, signal: ac.signal });
    bar.done();
    const ms = Math.round((performance.now() - t0) * 100) / 100;
    const out = { src, dst, size: buf.size, ms, bytesPerSec: ms > 0 ? Math.round(buf.size / (ms / 1000)) : 0, readIo: buf.stats.io, writeIo: w.io, loadMs: buf.stats.ms, saveMs: w.ms, cpuMs: Math.round(process.cpuUsage().user / 1000 + process.cpuUsage().system / 1000) };
    if (values.json) io.stdout(JSON.stringify(out) + '\n');
    else io.stdout(`${src} -> ${dst}: ${formatBytes(out.size)} in ${ms.toFixed(0)} ms (${(out.bytesPerSec / 1e6).toFixed(0)} MB/s), read ${out.readIo}, write ${out.writeIo}\n`);
    return 0;
  } finally {
    bar.done();
    process.off('SIGINT', onSigint);
  }
}
