/**
 * loadModel(): a model's tensors (all, or the ones asked for) loaded into a target, each tensor a zero-copy view.
 *
 * The header comes from {@link inspect} (so a safetensors index or the first file of a GGUF split brings in every
 * shard); the data comes from {@link loadRanges}: per file, the byte ranges of the wanted tensors, neighbours
 * coalesced, each range placed so that a byte keeps its file alignment modulo 4096. Files load in parallel, one
 * {@link LoadedBuffer} each, and {@link LoadedModel.close} frees them all.
 *
 * Error codes, besides those of inspect() and load(): `ERR_MODEL_TENSOR_NOT_FOUND` (a requested name the model does
 * not have) and `ERR_MEMORY_BUDGET` (the files together need more than the budget). A rejection frees everything.
 * @module
 */
import { scrubbed } from '../pipeline/sources/resolve.js';
import { LoadedBuffer } from './buffer.js';
import { AbortError, DmaloadError, invalidType } from '../core/errors.js';
import { LOAD_OPTION_NAMES, loadRanges, type FileRange, type LoadOptions, type LoadProgress } from './load.js';
import { PAGE_SIZE } from '../engine/binding.js';
import { formatBytes, msSince, roundUp } from '../core/util.js';
import { budgetOption, byteCountOption, functionOption, optionNames, optionsObject, signalOption } from './options.js';
import { q, type ModelInfo, type ModelTensor } from '../formats/common.js';
import { inspect } from './inspect.js';
import { planRank, rankSpec, type RankSpec, type RankSplit, type RankTensor } from '../pipeline/ranks.js';
import { Model, Tensor, closeAll, type LoadedModel, type LoadedTensor, type LoadModelStats, type ModelFileStats, type Owner } from './tensors.js';

/**
 * Neighbouring tensors whose gap is at most this many bytes are read as one range, gap included (loadRanges already
 * merges ranges that share a block). Measured with direct I/O, queue depth 8 (512 MiB file, 4 KiB and 64 KiB ranges
 * with gaps from 8 KiB to 1 MiB): a separate range costs ~15-20 µs of request time, a gap byte ~0.8 ns, so merging
 * pays up to a gap of ~24 KiB. 16 KiB stays on the winning side (under-merging costs at most one request; over-merging
 * reads bytes nobody asked for) and bounds the waste to 16 KiB per range. In practice it reads through the small
 * tensors (norms, biases) between wanted ones, and the ≤ alignment padding between GGUF tensors.
 */
export const MODEL_COALESCE_GAP = 16 * 1024;

/** Files loaded at once (each with its own queue of requests in flight). */
const FILE_CONCURRENCY = 8;

export interface LoadModelOptions extends LoadOptions {
  /**
   * The tensors to load, by name or by a predicate called once per tensor name; default every tensor. A name the
   * model lacks rejects with ERR_MODEL_TENSOR_NOT_FOUND before anything is read.
   */
  tensors?: readonly string[] | ((name: string) => boolean);
  /** Merge neighbouring tensors whose gap is at most this many bytes into one read. Default {@link MODEL_COALESCE_GAP}. */
  coalesceGap?: number;
  /**
   * Per-rank loads: this process's rank in [0, worldSize). With `worldSize`, the process loads only its share of the
   * (selected) tensors, as `split` divides them; see {@link planRank}. The launcher (torchrun, Ray, MPI, Kubernetes)
   * that hands out ranks stays the caller's.
   */
  rank?: number;
  /** How many ranks share the model (an integer ≥ 1); required with `rank`. */
  worldSize?: number;
  /**
   * 'tensors' (default): whole tensors, balanced by bytes, each on exactly one rank. 'rows': every 2-D tensor cut by
   * rows (tensor parallelism), each rank holding one row slice; every other tensor whole on every rank.
   */
  split?: RankSplit;
}

/** Sorted, non-overlapping ranges of `tensors` (sorted by offset, non-empty), neighbours within `gap` merged. */
export function coalesce(tensors: readonly { offset: number; bytes: number }[], gap = MODEL_COALESCE_GAP): FileRange[] {
  const out: FileRange[] = [];
  for (const t of tensors) {
    const last = out.at(-1);
    const end = t.offset + t.bytes;
    if (last && t.offset - (last.offset + last.length) <= gap) last.length = Math.max(last.length, end - last.offset);
    else out.push({ offset: t.offset, length: t.bytes });
  }
  return out;
}

/** Which tensors the caller wants; unknown names are refused, naming a few of them and a few that exist. */
function select(all: readonly ModelTensor[], wanted: LoadModelOptions['tensors'], path: string): ModelTensor[] {
  if (wanted === undefined) return [...all];
  if (typeof wanted === 'function') return all.filter((t) => wanted(t.name) === true);
  if (!Array.isArray(wanted)) throw invalidType('tensors', 'an array of tensor names or a function (name) => boolean', wanted);
  const names = new Set<string>();
  for (const [i, n] of wanted.entries()) {
    if (typeof n !== 'string') throw invalidType(`tensors[${i}]`, 'a string', n);
    names.add(n);
  }
  const have = new Set(all.map((t) => t.name));
  const missing = [...names].filter((n) => !have.has(n));
  if (missing.length > 0) {
    const some = (list: readonly string[]) => list.slice(0, 3).map(q).join(', ') + (list.length > 3 ? `, … (${list.length - 3} more)` : '');
    const examples = all.length === 0 ? 'it has no tensors' : `it has ${all.length}, e.g. ${some(all.map((t) => t.name))}`;
    throw new DmaloadError('ERR_MODEL_TENSOR_NOT_FOUND', `'${path}' has no tensor ${some(missing)}; ${examples}`, { path });
  }
  return all.filter((t) => names.has(t.name));
}

interface FilePlan {
  file: string;
  tensors: ModelTensor[];
  ranges: FileRange[];
  /** Bytes the buffer will take, roughly (ranges rounded out to pages), for the up-front budget check. */
  estimate: number;
}

function plan(selected: readonly ModelTensor[], gap: number): FilePlan[] {
  const byFile = new Map<string, ModelTensor[]>();
  for (const t of selected) {
    if (t.bytes === 0) continue;
    const list = byFile.get(t.file);
    if (list) list.push(t);
    else byFile.set(t.file, [t]);
  }
  return [...byFile].map(([file, tensors]) => {
    tensors.sort((a, b) => a.offset - b.offset);
    const ranges = coalesce(tensors, gap);
    const estimate = ranges.reduce((n, r) => n + roundUp(r.offset + r.length, PAGE_SIZE) - Math.floor(r.offset / PAGE_SIZE) * PAGE_SIZE, 0);
    return { file, tensors, ranges, estimate };
  });
}

/** loadModel()'s option names: load()'s and its own (an unknown one is ERR_INVALID_ARG_VALUE). */
export const LOAD_MODEL_OPTIONS = optionNames<LoadModelOptions>()([...LOAD_OPTION_NAMES, 'tensors', 'coalesceGap', 'rank', 'worldSize', 'split']);

/**
 * Loads a safetensors or GGUF model (one file, a `*.safetensors.index.json` with its shards, or the first file of a
 * GGUF split with the rest) into the chosen target and resolves with every wanted tensor as a zero-copy view.
 *
 * Only the wanted tensors' byte ranges are read (neighbours within `coalesceGap` in one read), so
 * `stats.bytesRead` stays close to `stats.tensorBytes`. Views keep the file's alignment modulo 4096, so a tensor the
 * file aligns (GGUF: `general.alignment`; safetensors: as the writer padded its header) is aligned in memory too.
 *
 * Options are load()'s (`target`, `io`, `signal`, `onProgress`, `chunkSize`, `queueDepth`, `memoryBudget`, …) plus
 * `tensors`. `onProgress` reports bytes over all files. `memoryBudget` bounds the files together.
 *
 * Aborting rejects with an AbortError; any failure frees what was loaded (the other files' loads are stopped).
 * @throws DmaloadError ERR_MODEL_TENSOR_NOT_FOUND, ERR_MEMORY_BUDGET, inspect()'s ERR_MODEL_* and load()'s codes
 */

export async function loadModel(path: string, options: LoadModelOptions = {}): Promise<LoadedModel> {
  try {
    return await loadModelRef(path, options);
  } catch (e) {
    throw scrubbed(e, path);
  }
}

async function loadModelRef(path: string, options: LoadModelOptions): Promise<LoadedModel> {
  const t0 = performance.now();
  const {
    tensors: wanted,
    signal: givenSignal,
    onProgress: givenProgress,
    coalesceGap: givenGap,
    rank,
    worldSize,
    split,
    ...loadOptions
  } = optionsObject(options, LOAD_MODEL_OPTIONS, 'loadModel()');
  const partition = rankSpec({ rank, worldSize, split });
  const coalesceGap = byteCountOption('coalesceGap', givenGap) ?? MODEL_COALESCE_GAP;
  if (wanted !== undefined && typeof wanted !== 'function' && !Array.isArray(wanted)) {
    throw invalidType('tensors', 'an array of tensor names or a function (name) => boolean', wanted);
  }
  const signal = signalOption(givenSignal);
  const onProgress = functionOption<(p: LoadProgress) => void>('onProgress', givenProgress);
  // The files together, checked as load() checks its own (the loads below check it again per file).
  const budget = budgetOption(loadOptions.memoryBudget);
  signal?.throwIfAborted();

  const info = await inspect(path, { ...(loadOptions.source ? { source: loadOptions.source } : {}), ...(signal ? { signal } : {}) });
  signal?.throwIfAborted();
  const selected: RankTensor[] = partition ? planRank(info.format, select(info.tensors, wanted, path), partition) : select(info.tensors, wanted, path);
  const plans = plan(selected, coalesceGap);

  const need = plans.reduce((n, p) => n + p.estimate, 0);
  if (need > budget) {
    throw new DmaloadError(
      'ERR_MEMORY_BUDGET',
      `'${path}' needs ${formatBytes(need)} for ${selected.length} tensors in ${plans.length} files but the memory budget is ${formatBytes(budget)}; free memory, raise the memoryBudget option or load fewer tensors`,
      { path },
    );
  }

  const loaded = await loadFiles(plans, loadOptions, signal, onProgress);
  const buffers = loaded.map((l) => l.buffer);
  const { tensors, perFile, owner } = placeTensors(path, plans, loaded, selected);
  const stats = modelStats(t0, selected, perFile);
  return new Model(info.format, info.metadata, tensors, partition, stats, buffers, owner);
}

/** A file's ranges loaded: its buffer and, per range, where in it the range begins. */
type LoadedRanges = { buffer: LoadedBuffer; offsets: number[] };

/**
 * Loads every plan's ranges, FILE_CONCURRENCY files at once, under one controller: the caller's abort, or the first
 * failure, stops the others, and every buffer loaded is closed before the error (the first real one) is thrown.
 */
async function loadFiles(
  plans: readonly FilePlan[],
  loadOptions: LoadOptions,
  signal: AbortSignal | undefined,
  onProgress: ((p: LoadProgress) => void) | undefined,
): Promise<LoadedRanges[]> {
  // One controller for every file: the caller's abort, or the first failure, stops the others.
  const ac = new AbortController();
  const onAbort = () => ac.abort(signal?.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  const progress = onProgress && progressAggregator(plans, onProgress);
  const loaded: (LoadedRanges | undefined)[] = plans.map(() => undefined);
  let failure: { error: unknown } | undefined;
  try {
    let next = 0;
    const worker = async () => {
      while (failure === undefined && next < plans.length) {
        const i = next++;
        const p = plans[i]!;
        try {
          loaded[i] = await loadRanges(p.file, p.ranges, {
            ...loadOptions,
            signal: ac.signal,
            onProgress: progress && ((pr) => progress.update(i, pr)),
          });
        } catch (e) {
          // Keep the first real error; the AbortErrors it causes in the other files are its echoes.
          if (failure === undefined) {
            failure = { error: e };
            ac.abort(e);
          }
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(FILE_CONCURRENCY, plans.length) }, worker));
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
  const buffers = loaded.filter((l): l is LoadedRanges => l !== undefined).map((l) => l.buffer);
  if (failure !== undefined || signal?.aborted) {
    closeAll(buffers);
    if (signal?.aborted) throw failure?.error instanceof AbortError ? failure.error : new AbortError(undefined, { cause: signal.reason });
    throw failure!.error;
  }

  try {
    progress?.finish();
  } catch (e) {
    closeAll(buffers);
    throw e;
  }
  return loaded as LoadedRanges[];
}

/**
 * Each selected tensor as a view: its range's spot in the file's buffer plus its distance from the range's first
 * byte. A tensor of no bytes has no buffer.
 */
function placeTensors(
  path: string,
  plans: readonly FilePlan[],
  loaded: readonly LoadedRanges[],
  selected: readonly RankTensor[],
): { tensors: Map<string, LoadedTensor>; perFile: ModelFileStats[]; owner: Owner } {
  const where = new Map<ModelTensor, { buffer: LoadedBuffer; at: number }>();
  const perFile: ModelFileStats[] = [];
  plans.forEach((p, i) => {
    const { buffer, offsets } = loaded[i]!;
    let k = 0;
    for (const t of p.tensors) {
      while (t.offset >= p.ranges[k]!.offset + p.ranges[k]!.length) k++;
      where.set(t, { buffer, at: offsets[k]! + (t.offset - p.ranges[k]!.offset) });
    }
    perFile.push({ file: p.file, tensors: p.tensors.length, ranges: p.ranges.length, stats: buffer.stats });
  });
  const owner: Owner = { closed: false, path };
  const tensors = new Map<string, LoadedTensor>();
  for (const t of selected) {
    const w = where.get(t);
    tensors.set(t.name, new Tensor(t, w?.buffer, w?.at ?? 0, owner));
  }
  return { tensors, perFile, owner };
}

function modelStats(t0: number, selected: readonly ModelTensor[], perFile: ModelFileStats[]): LoadModelStats {
  const bytesRead = perFile.reduce((n, f) => n + f.stats.bytesRead, 0);
  const ms = msSince(t0);
  return {
    bytesRead,
    tensorBytes: selected.reduce((n, t) => n + t.bytes, 0),
    tensors: selected.length,
    files: perFile.length,
    ranges: perFile.reduce((n, f) => n + f.ranges, 0),
    ms,
    bytesPerSec: ms > 0 ? Math.round(bytesRead / (ms / 1000)) : 0,
    perFile,
  };
}

/** Sums the files' progress into one report, at most ~60 a second, and one exact report at the end. */
function progressAggregator(plans: readonly FilePlan[], onProgress: (p: LoadProgress) => void) {
  const bytes = plans.map(() => 0);
  // Until a file reports its exact total (blocks rounded out), count its ranges' page-rounded size.
  const totals = plans.map((p) => p.estimate);
  let last = 0;
  const report = () => onProgress({ bytes: bytes.reduce((a, b) => a + b, 0), total: totals.reduce((a, b) => a + b, 0) });
  return {
    update(i: number, p: LoadProgress) {
      bytes[i] = p.bytes;
      totals[i] = p.total;
      const now = performance.now();
      if (now - last >= 16) {
        last = now;
        report();
      }
    },
    finish() {
      report();
    },
  };
}

/**
 * @internal A model whose files are loaded whole by `loadFile` (the share client maps each one from a `dmaload serve`
 * server), every tensor a view at its file offset. `tensors` and `partition` select as in loadModel(): an unknown name is
 * ERR_MODEL_TENSOR_NOT_FOUND before anything is loaded; only files holding a selected tensor are loaded. A failure
 * closes what was loaded; a buffer shorter than a tensor's end (the file changed since its header was read) is
 * ERR_FILE_CHANGED.
 */
export async function modelFromFiles(
  path: string,
  wanted: LoadModelOptions['tensors'],
  loadFile: (file: string) => Promise<LoadedBuffer>,
  partition?: RankSpec,
  inspector: (path: string) => Promise<ModelInfo> = (p) => inspect(p),
): Promise<LoadedModel> {
  const t0 = performance.now();
  const info = await inspector(path);
  // The same plan as loadModel()'s: this rank's tensors and row slices, each a view into its whole shared file.
  const selected: RankTensor[] = partition ? planRank(info.format, select(info.tensors, wanted, path), partition) : select(info.tensors, wanted, path);
  const files = [...new Set(selected.filter((t) => t.bytes > 0).map((t) => t.file))];
  const results = await Promise.allSettled(files.map(loadFile));
  const buffers = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    closeAll(buffers);
    throw failed.reason;
  }
  const byFile = new Map(files.map((f, i) => [f, buffers[i]!]));
  const owner: Owner = { closed: false, path };
  const tensors = new Map<string, LoadedTensor>();
  for (const t of selected) {
    const b = t.bytes > 0 ? byFile.get(t.file) : undefined;
    if (b && t.offset + t.bytes > b.size) {
      closeAll(buffers);
      throw new DmaloadError(
        'ERR_FILE_CHANGED',
        `'${t.file}' is ${b.size} bytes now, too short for tensor ${q(t.name)} (ends at ${t.offset + t.bytes}); load it again`,
        { path: t.file },
      );
    }
    tensors.set(t.name, new Tensor(t, b, t.offset, owner));
  }
  const perFile = files.map((file, i) => ({
    file,
    tensors: selected.filter((t) => t.file === file && t.bytes > 0).length,
    ranges: 1,
    stats: buffers[i]!.stats,
  }));
  const stats = modelStats(t0, selected, perFile);
  return new Model(info.format, info.metadata, tensors, undefined, stats, buffers, owner);
}
