/** `dmaload cp SRC DST`: load then save, page-cache free on both sides, atomic. */
import { cliRef } from './ref.js';
import { statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { copy } from '../api/copy.js';
import { IO_MODES } from '../api/options.js';
import type { IoMode } from '../pipeline/source.js';
import { cpuMsSince, formatBytes } from '../core/util.js';
import { UsageError, onInterrupt, progressBar } from './io.js';
import type { CliIO } from './io.js';
import { choice, verifyFlag } from './flags.js';

export const CP_HELP = `Usage: dmaload cp SRC DST [--io auto|direct|buffered|uncached] [--verify auto|on|off|sha256:HEX] [--json]

Copy SRC to DST by direct I/O on both sides (no page cache), streaming through a ring of aligned buffers
(reads run ahead of writes; memory use is the ring, whatever the size), replacing DST atomically: a reader sees
the old DST or the new one, never a torn file.

--verify checks SRC's SHA-256 while copying (the hash follows the reads on a native thread): auto (default)
against its Hugging Face hub-cache blob name, if it is one; on: also computes and prints it otherwise;
sha256:HEX: against that. A mismatch is ERR_CHECKSUM_MISMATCH, exit status 1, and DST is left as it was.
`;

export async function cpCommand(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      io: { type: 'string' },
      verify: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    io.stdout(CP_HELP);
    return 0;
  }
  if (positionals.length !== 2) throw new UsageError('cp takes SRC and DST');
  const [arg, dstArg] = positionals as [string, string];
  const src = cliRef(arg);
  // A folder as DST: the file goes into it under SRC's name, as coreutils' cp does (copy() itself refuses folders).
  const dst = statSync(dstArg, { throwIfNoEntry: false })?.isDirectory() ? join(dstArg, refBasename(src)) : dstArg;
  const ioMode = choice<IoMode>('io', values.io, IO_MODES, 'auto');
  const verify = verifyFlag(values.verify);
  const interrupt = onInterrupt();
  const bar = progressBar(io, 'cp');
  const c0 = process.cpuUsage();
  try {
    const r = await copy(src, dst, { io: ioMode, verify, signal: interrupt.signal, onProgress: (p) => bar.update(p.bytes, p.total) });
    bar.done();
    const out = {
      src,
      dst,
      size: r.bytes,
      ms: r.ms,
      bytesPerSec: r.bytesPerSec,
      readIo: r.readIo,
      writeIo: r.io,
      cpuMs: cpuMsSince(c0),
      ...(r.verified ? { sha256: r.verified.sha256, verified: r.verified } : {}),
    };
    if (values.json) io.stdout(JSON.stringify(out) + '\n');
    else
      io.stdout(
        `${src} -> ${dst}: ${formatBytes(out.size)} in ${out.ms.toFixed(0)} ms (${(out.bytesPerSec / 1e6).toFixed(0)} MB/s), read ${out.readIo}, write ${out.writeIo}${r.verified ? `, sha256 ${r.verified.sha256}${r.verified.source === 'computed' ? '' : ` (verified against ${r.verified.source === 'hub-cache' ? 'its hub-cache blob name' : '--verify'})`}` : ''}\n`,
      );
    return 0;
  } finally {
    bar.done();
    interrupt.dispose();
  }
}

/** The last name of a path or a reference's path (a URL's without its query), for a copy into a folder. */
function refBasename(ref: string): string {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(ref)) {
    const path = ref.replace(/[?#].*$/, '').replace(/\/+$/, '');
    let name: string;
    try {
      name = decodeURIComponent(path.slice(path.lastIndexOf('/') + 1));
    } catch {
      name = '';
    }
    // A name from a server never leaves the folder: its own last part only, never '.' or '..'.
    name = basename(name);
    return name && name !== '.' && name !== '..' ? name : 'download';
  }
  return basename(ref);
}
