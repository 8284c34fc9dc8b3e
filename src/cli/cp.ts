/** `dmaload cp SRC DST`: load then save, page-cache free on both sides, atomic. */
import { parseArgs } from 'node:util';
import { copy } from '../api/copy.js';
import { IO_MODES } from '../api/options.js';
import type { IoMode } from '../pipeline/source.js';
import { cpuMsSince, formatBytes } from '../core/util.js';
import { UsageError, onInterrupt, progressBar } from './io.js';
import type { CliIO } from './io.js';
import { choice } from './load.js';

export const CP_HELP = `Usage: dmaload cp SRC DST [--io auto|direct|buffered|uncached] [--json]

Copy SRC to DST by direct I/O on both sides (no page cache), streaming through a ring of aligned buffers
(reads run ahead of writes; memory use is the ring, whatever the size), replacing DST atomically: a reader sees
the old DST or the new one, never a torn file.
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
  const ioMode = choice<IoMode>('io', values.io, IO_MODES, 'auto');
  const interrupt = onInterrupt();
  const bar = progressBar(io, 'cp');
  const c0 = process.cpuUsage();
  try {
    const r = await copy(src, dst, { io: ioMode, signal: interrupt.signal, onProgress: (p) => bar.update(p.bytes, p.total) });
    bar.done();
    const out = { src, dst, size: r.bytes, ms: r.ms, bytesPerSec: r.bytesPerSec, readIo: r.readIo, writeIo: r.io, cpuMs: cpuMsSince(c0) };
    if (values.json) io.stdout(JSON.stringify(out) + '\n');
    else io.stdout(`${src} -> ${dst}: ${formatBytes(out.size)} in ${out.ms.toFixed(0)} ms (${(out.bytesPerSec / 1e6).toFixed(0)} MB/s), read ${out.readIo}, write ${out.writeIo}\n`);
    return 0;
  } finally {
    bar.done();
    interrupt.dispose();
  }
}
