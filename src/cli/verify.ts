/** `dmaload verify FILE...`: each file's SHA-256 at the device's speed, checked against what is expected. */
import { cliRef } from './ref.js';
import { parseArgs } from 'node:util';
import { IO_MODES } from '../api/options.js';
import { verifyFile } from '../api/verify.js';
import type { VerifyFileResult } from '../api/verify.js';
import type { IoMode } from '../pipeline/source.js';
import { formatBytes } from '../core/util.js';
import { UsageError, onInterrupt, printable, progressBar } from './io.js';
import type { CliIO } from './io.js';
import { choice } from './flags.js';

export const VERIFY_HELP = `Usage: dmaload verify FILE... [--sha256 HEX] [--io auto|direct|buffered|uncached] [--json]

Hash each FILE (SHA-256) by direct I/O, without the page cache, the hash running beside the reads, and check it:
against --sha256 (one FILE), or against the name of the Hugging Face hub cache blob the path resolves to
(models--ORG--NAME/blobs/<sha256>, what snapshots/<rev>/<file> links to). Prints one line per file:
  OK        HASH  FILE   the hash is the expected one
  MISMATCH  HASH  FILE   it is not (the expected hash follows)
  -         HASH  FILE   nothing to compare with
Exit status 1 when any file does not match or cannot be read, else 0.
`;

export async function verifyCommand(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      sha256: { type: 'string' },
      io: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    io.stdout(VERIFY_HELP);
    return 0;
  }
  if (positionals.length === 0) throw new UsageError('verify takes at least one FILE');
  if (values.sha256 !== undefined && positionals.length !== 1) throw new UsageError('--sha256 checks one FILE; give exactly one');
  if (values.sha256 !== undefined && !/^[0-9a-fA-F]{64}$/.test(values.sha256)) throw new UsageError(`--sha256 must be 64 hex digits (got '${values.sha256}')`);
  const ioMode = choice<IoMode>('io', values.io, IO_MODES, 'auto');
  const interrupt = onInterrupt();
  let status = 0;
  try {
    for (const path of positionals) {
      const bar = progressBar(io, 'verify');
      let r: VerifyFileResult;
      try {
        r = await verifyFile(cliRef(path), {
          io: ioMode,
          signal: interrupt.signal,
          onProgress: (p) => bar.update(p.bytes, p.total),
          ...(values.sha256 ? { sha256: values.sha256 } : {}),
        });
      } catch (e) {
        bar.done();
        if (interrupt.signal.aborted) throw e;
        // One unreadable file does not stop the others: say why, count it as a failure.
        const err = e as Error & { code?: string };
        status = 1;
        if (values.json) io.stdout(JSON.stringify({ path, error: { code: err.code, message: err.message } }) + '\n');
        else io.stderr(printable(`dmaload verify: ${err.code ? `${err.code}: ` : ''}${err.message}\n`, '\n'));
        continue;
      }
      bar.done();
      if (r.ok === false) status = 1;
      if (values.json) {
        io.stdout(JSON.stringify(r) + '\n');
      } else {
        const tag = r.ok === true ? 'OK      ' : r.ok === false ? 'MISMATCH' : '-       ';
        const why =
          r.ok === undefined
            ? 'nothing to compare with'
            : r.ok
              ? `matches ${r.source === 'hub-cache' ? 'its hub-cache blob name' : '--sha256'}`
              : `expected ${r.expected} (${r.source === 'hub-cache' ? 'hub-cache blob name' : '--sha256'})`;
        io.stdout(
          printable(
            `${tag}  ${r.sha256}  ${path}  (${formatBytes(r.size)} in ${r.ms.toFixed(0)} ms, ${(r.bytesPerSec / 1e6).toFixed(0)} MB/s, io ${r.io}; ${why})\n`,
            '\n',
          ),
        );
      }
    }
  } finally {
    interrupt.dispose();
  }
  return status;
}
