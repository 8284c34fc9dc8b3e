/** `dmaload pull ORG/NAME[@REV]`: a Hugging Face repository into the local hub cache, verified, resumable. */
import { parseArgs } from 'node:util';
import { pull } from '../api/pull.js';
import { formatBytes } from '../core/util.js';
import { UsageError, onInterrupt, progressBar } from './io.js';
import type { CliIO } from './io.js';
import { cliRef } from './ref.js';

export const PULL_HELP = `Usage: dmaload pull ORG/NAME[@REV] [--include GLOB]... [--cache-dir DIR] [--json]

Fetch a Hugging Face repository (or the files --include selects: * within a folder, ** across folders) into the
local hub cache (HF_HUB_CACHE, HF_HOME/hub or ~/.cache/huggingface/hub; --cache-dir to choose), exactly where
huggingface_hub puts them: it and transformers then find them offline. Files are fetched two at a time by parallel
ranged GETs, verified against the hub's SHA-256 while they arrive, and put in place only once complete; an
interrupted pull resumes from what is on disk. Files already in the cache are not fetched again. The hub is
HF_ENDPOINT (default https://huggingface.co), with HF_TOKEN as the token.
`;

export async function pullCommand(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      include: { type: 'string', multiple: true },
      'cache-dir': { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    io.stdout(PULL_HELP);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError('pull takes exactly one repository (ORG/NAME[@REV] or hf://ORG/NAME[@REV])');
  const ref = cliRef(positionals[0]!);
  if (!ref.startsWith('hf://')) throw new UsageError(`pull takes a Hugging Face repository, not '${positionals[0]!}'`);
  const interrupt = onInterrupt();
  const bar = progressBar(io, 'pull');
  const t0 = performance.now();
  try {
    const r = await pull(ref, {
      ...(values.include ? { include: values.include } : {}),
      ...(values['cache-dir'] ? { cacheDir: values['cache-dir'] } : {}),
      signal: interrupt.signal,
      onProgress: (p) => bar.update(p.bytes, p.total),
    });
    bar.done();
    const ms = performance.now() - t0;
    const fetched = r.files.filter((f) => f.fetched).reduce((n, f) => n + f.size, 0);
    if (values.json) io.stdout(JSON.stringify({ ...r, ms: Math.round(ms), fetchedBytes: fetched }) + '\n');
    else {
      for (const f of r.files) io.stdout(`${f.fetched ? 'fetched' : 'cached '} ${formatBytes(f.size).padStart(10)}  ${f.file}\n`);
      io.stdout(
        `${r.repo}@${r.commit ?? '?'}: ${r.files.length} files, ${formatBytes(fetched)} fetched in ${ms.toFixed(0)} ms (${(fetched / 1e6 / (ms / 1000)).toFixed(0)} MB/s) into ${r.cacheDir}\n`,
      );
    }
    return 0;
  } finally {
    bar.done();
    interrupt.dispose();
  }
}
