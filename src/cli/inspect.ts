/** `dmaload inspect FILE [--json] [--rank R --world-size N [--split …]]`: a model's tensors, read from its header alone. */
import { cliRef } from './ref.js';
import { UsageError, parseErrorMessage, reportUsage, wantsJson } from './io.js';
import { OPTION_FLAGS, flagError } from './flags.js';
import { basename } from 'node:path';
import { parseArgs } from 'node:util';
import { inspect } from '../api/inspect.js';
import { coalesce, MODEL_COALESCE_GAP } from '../api/model.js';
import type { MetadataValue, ModelInfo } from '../formats/index.js';
import { formatBytes } from '../core/util.js';
import { planRank, rankSpec, type RankSpec, type RankTensor } from '../pipeline/ranks.js';
import { printable } from './io.js';

export const INSPECT_HELP = `Usage: dmaload inspect FILE [--json] [--rank R --world-size N [--split tensors|rows]]

Summarise a safetensors or GGUF model (format, tensor count, total size, tensors by dtype, shards), then list its
metadata and tensors (name, dtype, shape, size, offset), reading only the header. FILE may be a safetensors index
(model.safetensors.index.json) or the first of a GGUF split (model-00001-of-00003.gguf): every shard is listed.

With --rank and --world-size, print the plan of that rank of a per-rank load (what loadModel(FILE, { rank,
worldSize, split }) reads): its tensors or row slices and the byte ranges it reads from each file.

Options:
  --json              print the inspect() object (or the rank's plan) as JSON (64-bit integers beyond 2^53 as strings)
  --rank R            this rank, 0 <= R < N
  --world-size N      how many ranks share the model
  --split HOW         'tensors' (default): whole tensors balanced by bytes; 'rows': 2-D tensors cut by rows, other
                      tensors whole on every rank
  -h, --help          show this help
`;

type Io = { stdout(s: string): void; stderr(s: string): void };

/**
 * Runs `dmaload inspect`; `argv` holds the arguments after the command name. Resolves with the exit status: 0, or 2
 * for a usage error (message on stderr; with --json, a JSON error document on stdout). Errors reading the model are
 * thrown for the main CLI to report.
 */
export async function inspectCommand(argv: string[], io: Io): Promise<number> {
  let values: { json?: boolean; help?: boolean; rank?: string; 'world-size'?: string; split?: string };
  let positionals: string[];
  const usage = (e: unknown) => reportUsage(io, 'inspect', e instanceof UsageError ? e : new UsageError((e as Error).message), wantsJson(argv));
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        rank: { type: 'string' },
        'world-size': { type: 'string' },
        split: { type: 'string' },
      },
    }));
  } catch (e) {
    return usage(new UsageError(parseErrorMessage(e, INSPECT_HELP)));
  }
  if (values.help) {
    io.stdout(INSPECT_HELP);
    return 0;
  }
  const [file, ...extra] = positionals;
  if (file === undefined) return usage(new UsageError('missing FILE'));
  if (extra.length > 0) return usage(new UsageError(`unexpected argument '${extra[0]}'`));
  let spec: RankSpec | undefined;
  try {
    spec = rankFlags(values.rank, values['world-size'], values.split);
  } catch (e) {
    // The library's words for rank, worldSize and split, as the flags --rank, --world-size and --split.
    return usage(flagError(e, OPTION_FLAGS.inspect!) ?? e);
  }

  const info = await inspect(cliRef(file));
  if (spec) {
    const plan = rankPlan(info, spec);
    io.stdout(values.json ? json(plan) : summary(info) + rankTable(plan));
    return 0;
  }
  io.stdout(values.json ? json(info) : summary(info) + table(info));
  return 0;
}

/** The rank spec of --rank, --world-size and --split (given together), or undefined when none is given. */
function rankFlags(rank: string | undefined, worldSize: string | undefined, split: string | undefined): RankSpec | undefined {
  if ((rank === undefined) !== (worldSize === undefined) || (split !== undefined && rank === undefined)) {
    throw new UsageError(`--rank R and --world-size N go together${split === undefined ? '' : ' (and --split needs them)'}: give both`);
  }
  const int = (flag: string, v: string | undefined) => {
    if (v !== undefined && !/^\d+$/.test(v)) throw new UsageError(`${flag} must be a non-negative integer, not '${v}'`);
    return v === undefined ? undefined : Number(v);
  };
  return rankSpec({ rank: int('--rank', rank), worldSize: int('--world-size', worldSize), split });
}

const json = (v: unknown) => JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x), 2) + '\n';

/** What one rank of a per-rank load reads: the same plan loadModel() follows (no tensor selection). */
export interface RankPlan extends RankSpec {
  format: ModelInfo['format'];
  /** Bytes of the rank's tensors (or slices). */
  bytes: number;
  tensors: RankTensor[];
  /** Per file read: its tensors' bytes and the ranges read, neighbours within the coalescing gap merged. */
  files: { file: string; tensors: number; bytes: number; ranges: { offset: number; length: number }[] }[];
}

function rankPlan(info: ModelInfo, spec: RankSpec): RankPlan {
  const tensors = planRank(info.format, info.tensors, spec);
  const byFile = new Map<string, RankTensor[]>();
  for (const t of tensors) {
    if (t.bytes === 0) continue;
    byFile.set(t.file, [...(byFile.get(t.file) ?? []), t]);
  }
  const files = [...byFile].map(([file, ts]) => ({
    file,
    tensors: ts.length,
    bytes: ts.reduce((n, t) => n + t.bytes, 0),
    ranges: coalesce(
      [...ts].sort((a, b) => a.offset - b.offset),
      MODEL_COALESCE_GAP,
    ),
  }));
  return { format: info.format, ...spec, bytes: tensors.reduce((n, t) => n + t.bytes, 0), tensors, files };
}

/** What a person wants first: format, count, size, dtypes, shards. */
function summary(info: ModelInfo): string {
  const total = info.tensors.reduce((a, t) => a + t.bytes, 0);
  const dtypes = new Map<string, number>();
  for (const t of info.tensors) dtypes.set(t.dtype, (dtypes.get(t.dtype) ?? 0) + 1);
  const shards = new Map<string, { tensors: number; bytes: number }>();
  for (const t of info.tensors) {
    const s = shards.get(t.file) ?? { tensors: 0, bytes: 0 };
    s.tensors++;
    s.bytes += t.bytes;
    shards.set(t.file, s);
  }
  const unknown = info.tensors.filter((t) => t.unknownType).length;
  let out = `format   ${info.format}\n`;
  out += `tensors  ${info.tensors.length}${unknown > 0 ? ` (${unknown} of a type this dmaload does not know: loaded as raw bytes)` : ''}\n`;
  out += `size     ${formatBytes(total)} (${total} bytes)\n`;
  out += `dtypes   ${
    [...dtypes]
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
      .map(([d, n]) => `${printable(d)} ${n}`)
      .join(', ') || '-'
  }\n`;
  out += `shards   ${shards.size}\n`;
  if (shards.size > 1) {
    for (const [file, s] of shards) out += `  ${printable(basename(file))}  ${s.tensors} tensors, ${formatBytes(s.bytes)}\n`;
  }
  return out;
}

function rankTable(plan: RankPlan): string {
  const multi = plan.files.length > 1 || new Set(plan.tensors.map((t) => t.file)).size > 1;
  const header = ['name', 'dtype', 'shape', 'rows', 'size', 'offset', ...(multi ? ['file'] : [])];
  const rows = plan.tensors.map((t) => [
    t.name,
    t.dtype,
    `[${t.shape.join(', ')}]`,
    t.rows ? `${t.rows.start}:${t.rows.end} of ${t.rows.shape[t.rows.dim]}` : t.replicated ? 'all (replicated)' : 'whole',
    formatBytes(t.bytes),
    String(t.offset),
    ...(multi ? [basename(t.file)] : []),
  ]);
  const ranges = plan.files.reduce((n, f) => n + f.ranges.length, 0);
  let out = `\nrank ${plan.rank} of ${plan.worldSize}, split by ${plan.split}: ${plan.tensors.length} tensors, ${formatBytes(plan.bytes)} (${plan.bytes} bytes) in ${ranges} ranges from ${plan.files.length} file${plan.files.length === 1 ? '' : 's'}\n\n`;
  out += columns(header, rows, new Set([4, 5]));
  return out;
}

function table(info: ModelInfo): string {
  const files = [...new Set(info.tensors.map((t) => t.file))];
  const header = ['name', 'dtype', 'shape', 'size', 'offset', ...(files.length > 1 ? ['file'] : [])];
  const rows = info.tensors.map((t) => [
    t.name,
    t.dtype,
    `[${t.shape.join(', ')}]`,
    formatBytes(t.bytes) + (t.bytesInferred ? ' (inferred)' : ''),
    String(t.offset),
    ...(files.length > 1 ? [basename(t.file)] : []),
  ]);
  let out = '';
  const meta = Object.entries(info.metadata);
  if (meta.length > 0) {
    out += `\nmetadata (${meta.length}):\n`;
    for (const [k, v] of meta) out += `  ${printable(k)} = ${printable(metaValue(v))}\n`;
  }
  out += '\n' + columns(header, rows, new Set([3, 4]));
  const total = info.tensors.reduce((a, t) => a + t.bytes, 0);
  const count = info.tensors.length;
  out += `\n${count} tensor${count === 1 ? '' : 's'}, ${formatBytes(total)} (${total} bytes)`;
  out += files.length > 1 ? ` in ${files.length} files\n` : '\n';
  return out;
}

/** Aligned columns; the numeric ones (`right`) line up on the right. Cells (names from the file) are escaped. */
function columns(header: string[], cells: string[][], right: Set<number>): string {
  const rows = cells.map((r) => r.map((c) => printable(c)));
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] as string).length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (right.has(i) ? c.padStart(widths[i] as number) : c.padEnd(widths[i] as number)))
      .join('  ')
      .trimEnd() + '\n';
  return line(header) + rows.map(line).join('');
}

/** One line per metadata value: long strings cut, arrays (vocabularies) counted rather than printed. */
function metaValue(v: MetadataValue): string {
  if (Array.isArray(v)) {
    const shown = v.slice(0, 4).map(metaValue).join(', ');
    return v.length <= 4 ? `[${shown}]` : `[${shown}, … ${v.length} items]`;
  }
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? v.slice(0, 60) + '…' : v);
  if (typeof v === 'object' && v !== null) return JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x)).slice(0, 80);
  return String(v);
}
