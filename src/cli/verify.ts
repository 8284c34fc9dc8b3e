/** `dmaload verify FILE...`: each file's SHA-256 at the device's speed, checked against what is expected. */
import { cliRef } from './ref.js';
import { parseArgs } from 'node:util';
import { IO_MODES } from '../api/options.js';
import { verifyFile } from '../api/verify.js';
import type { VerifyFileResult } from '../api/verify.js';
import type { IoMode } from '../pipeline/source.js';
import { formatBytes } from '../core/util.js';
import { UsageError, errorReport, errorText, onInterrupt, printable, progressBar } from './io.js';
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

--json prints one JSON document: for one FILE, its result ({ path, sha256, ok, expected, source, size, ms, … },
or { path, error: { code, message, path } }); for several, { "files": [ … ] } with one such object per FILE.
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
  const results: Array<VerifyFileResult | { path: string; error: ReturnType<typeof errorReport> }> = [];
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
        status = 1;
        const error = errorReport(e);
        results.push({ path, error });
        if (!values.json) io.stderr(`dmaload verify: ${errorText(error)}\n`);
        continue;
      }
      bar.done();
      if (r.ok === false) status = 1;
      results.push(r);
      if (!values.json) io.stdout(resultLine(path, r));
    }
  } finally {
    interrupt.dispose();
  }
  // One document, whatever happened: the one file's result, or every file's.
  if (values.json) io.stdout(JSON.stringify(results.length === 1 ? results[0] : { files: results }) + '\n');
  return status;
}

/** The line a verified file gets: OK, MISMATCH or -, the hash, the file, and what it was compared with. */
function resultLine(path: string, r: VerifyFileResult): string {
  const tag = r.ok === true ? 'OK      ' : r.ok === false ? 'MISMATCH' : '-       ';
  const why =
    r.ok === undefined
      ? 'nothing to compare with'
      : r.ok
        ? `matches ${r.source === 'hub-cache' ? 'its hub-cache blob name' : '--sha256'}`
        : `expected ${r.expected} (${r.source === 'hub-cache' ? 'hub-cache blob name' : '--sha256'})`;
  return printable(
    `${tag}  ${r.sha256}  ${path}  (${formatBytes(r.size)} in ${r.ms.toFixed(0)} ms, ${(r.bytesPerSec / 1e6).toFixed(0)} MB/s, io ${r.io}; ${why})\n`,
    '\n',
  );
}
