/** `dmaload inspect FILE [--json]`: a model file's tensors, read from its header alone. */
import { basename } from 'node:path';
import { parseArgs } from 'node:util';
import { inspect } from '../api/inspect.js';
import type { MetadataValue, ModelInfo } from '../formats/index.js';
import { formatBytes } from '../core/util.js';

export const INSPECT_HELP = `Usage: dmaload inspect FILE [--json]

List the tensors of a safetensors or GGUF model file (name, dtype, shape, size, offset) and its metadata, reading
only the header. FILE may be a safetensors index (model.safetensors.index.json) or the first of a GGUF split
(model-00001-of-00003.gguf): every shard is listed.

Options:
  --json      print the inspect() object as JSON (64-bit integers beyond 2^53 as strings)
  -h, --help  show this help
`;

/**
 * Runs `dmaload inspect`; `argv` holds the arguments after the command name. Resolves with the exit status: 0, or 2
 * for a usage error (message on stderr). Errors reading the model are thrown for the main CLI to report.
 */
export async function inspectCommand(argv: string[], io: { stdout(s: string): void; stderr(s: string): void }): Promise<number> {
  let values: { json?: boolean; help?: boolean };
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      options: { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
    }));
  } catch (e) {
    return usage(io, (e as Error).message);
  }
  if (values.help) {
    io.stdout(INSPECT_HELP);
    return 0;
  }
  const [file, ...extra] = positionals;
  if (file === undefined) return usage(io, 'missing FILE');
  if (extra.length > 0) return usage(io, `unexpected argument '${extra[0]}'`);

  const info = await inspect(file);
  io.stdout(values.json ? JSON.stringify(info, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2) + '\n' : table(info));
  return 0;
}

function usage(io: { stderr(s: string): void }, message: string): number {
  io.stderr(`dmaload inspect: ${message}\nRun 'dmaload inspect --help' for usage.\n`);
  return 2;
}

function table(info: ModelInfo): string {
  const files = [...new Set(info.tensors.map((t) => t.file))];
  const header = ['name', 'dtype', 'shape', 'size', 'offset', ...(files.length > 1 ? ['file'] : [])];
  const rows = info.tensors.map((t) => [
    t.name,
    t.dtype,
    `[${t.shape.join(', ')}]`,
    formatBytes(t.bytes),
    String(t.offset),
    ...(files.length > 1 ? [basename(t.file)] : []),
  ]);
  const right = new Set([3, 4]); // numbers line up on the right
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] as string).length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (right.has(i) ? c.padStart(widths[i] as number) : c.padEnd(widths[i] as number))).join('  ').trimEnd() + '\n';

  let out = `format: ${info.format}\n`;
  const meta = Object.entries(info.metadata);
  if (meta.length > 0) {
    out += `metadata (${meta.length}):\n`;
    for (const [k, v] of meta) out += `  ${k} = ${summary(v)}\n`;
  }
  out += '\n' + line(header) + rows.map(line).join('');
  const total = info.tensors.reduce((a, t) => a + t.bytes, 0);
  const count = info.tensors.length;
  out += `\n${count} tensor${count === 1 ? '' : 's'}, ${formatBytes(total)} (${total} bytes)`;
  out += files.length > 1 ? ` in ${files.length} files\n` : '\n';
  return out;
}

/** One line per metadata value: long strings cut, arrays (vocabularies) counted rather than printed. */
function summary(v: MetadataValue): string {
  if (Array.isArray(v)) {
    const shown = v.slice(0, 4).map(summary).join(', ');
    return v.length <= 4 ? `[${shown}]` : `[${shown}, … ${v.length} items]`;
  }
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? v.slice(0, 60) + '…' : v);
  if (typeof v === 'object' && v !== null) return JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x)).slice(0, 80);
  return String(v);
}
