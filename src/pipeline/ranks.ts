/**
 * Per-rank plans: which bytes of a model each of `worldSize` processes reads, so that every rank reads only its own
 * share and the shares together are exactly the model. Pure: every rank computes the same plan from the same header,
 * with no communication (the launcher — torchrun, Ray, MPI, Kubernetes — only hands out rank and world size).
 *
 * - `split: 'tensors'`: whole tensors, balanced by bytes. The model's tensors, in file order, are cut into
 *   `worldSize` consecutive runs: a tensor goes to the rank whose equal share of the total bytes holds its midpoint.
 *   Each rank thus reads a few long ranges, and no rank has more than its share plus one tensor.
 * - `split: 'rows'`: tensor parallelism. Every 2-D tensor is cut by rows (safetensors: the first dimension; GGUF: ne1,
 *   the outer one), rank r taking rows [⌊r·R/N⌋, ⌊(r+1)·R/N⌋): one contiguous byte range. A row is whole blocks in
 *   GGUF (ne0 is a multiple of the block size) and whole bytes in safetensors, else the tensor is not split. Every
 *   other tensor (1-D norms and biases, 3-D and 4-D, tensors of a type this library does not know, 2-D tensors whose
 *   rows are not whole bytes) is loaded whole on every rank, as tensor-parallel layers need them.
 * @module
 */
import { invalidType, invalidValue, outOfRange } from '../core/errors.js';
import type { ModelFormat, ModelTensor } from '../formats/common.js';

/** How a model is divided among ranks. */
export type RankSplit = 'tensors' | 'rows';

export interface RankOptions {
  /** This process's rank: an integer in [0, worldSize). */
  rank: number;
  /** How many ranks share the model: an integer ≥ 1. */
  worldSize: number;
  /** Default 'tensors'. */
  split?: RankSplit;
}

/** The row slice a rank holds of a tensor split by rows. */
export interface RowSlice {
  /** Index in the full `shape` of the dimension that was cut (safetensors 0, GGUF 1). */
  dim: number;
  /** First row held. */
  start: number;
  /** One past the last row held (start === end: this rank holds no row of it). */
  end: number;
  /** The whole tensor's shape. */
  shape: number[];
  /** The whole tensor's file offset and length. */
  offset: number;
  bytes: number;
}

/** A tensor as one rank loads it: whole, or (split 'rows') a row slice, `shape`/`offset`/`bytes` then the slice's. */
export interface RankTensor extends ModelTensor {
  /** Present for a row slice. */
  rows?: RowSlice;
  /** Present (true) for a tensor every rank loads whole (split 'rows' only). */
  replicated?: true;
}

/** The checked rank options. */
export interface RankSpec {
  rank: number;
  worldSize: number;
  split: RankSplit;
}

/**
 * Checks rank options; returns undefined when none of rank, worldSize and split is given.
 * @throws TypeError ERR_INVALID_ARG_TYPE; RangeError ERR_OUT_OF_RANGE; ERR_INVALID_ARG_VALUE (rank without worldSize…)
 */
export function rankSpec(o: { rank?: unknown; worldSize?: unknown; split?: unknown }): RankSpec | undefined {
  const { rank, worldSize, split } = o;
  if (rank === undefined && worldSize === undefined && split === undefined) return undefined;
  if (worldSize === undefined || rank === undefined) {
    throw invalidValue(
      rank === undefined ? 'rank' : 'worldSize',
      undefined,
      'is required when rank, worldSize or split is given: pass both rank and worldSize',
    );
  }
  if (typeof worldSize !== 'number') throw invalidType('worldSize', 'of type number', worldSize);
  if (!Number.isSafeInteger(worldSize) || worldSize < 1) throw outOfRange('worldSize', 'an integer >= 1', worldSize);
  if (typeof rank !== 'number') throw invalidType('rank', 'of type number', rank);
  if (!Number.isSafeInteger(rank) || rank < 0 || rank >= worldSize) throw outOfRange('rank', `an integer >= 0 and < worldSize (${worldSize})`, rank);
  if (split !== undefined && split !== 'tensors' && split !== 'rows') throw invalidValue('split', split, "must be 'tensors' or 'rows'");
  return { rank, worldSize, split: split ?? 'tensors' };
}

/**
 * The tensors rank `options.rank` loads, in file order. `tensors` are the model's (or the caller's selection of
 * them), as inspect() lists them; `format` says which dimension holds the rows.
 * @throws the codes of {@link rankSpec}
 */
export function planRank(format: ModelFormat, tensors: readonly ModelTensor[], options: RankOptions): RankTensor[] {
  if (options === null || typeof options !== 'object') throw invalidType('options', 'an object { rank, worldSize, split }', options);
  const spec = rankSpec(options) ?? rankSpec({ ...options, rank: options.rank ?? 0 })!; // the second names what is missing
  const ordered = fileOrder(tensors);
  return spec.split === 'rows' ? byRows(format, ordered, spec) : byTensors(ordered, spec);
}

/** Files in order of first appearance, tensors within a file by offset: the order that keeps each rank's reads long. */
function fileOrder(tensors: readonly ModelTensor[]): ModelTensor[] {
  const fileIndex = new Map<string, number>();
  for (const t of tensors) if (!fileIndex.has(t.file)) fileIndex.set(t.file, fileIndex.size);
  return [...tensors].sort((a, b) => fileIndex.get(a.file)! - fileIndex.get(b.file)! || a.offset - b.offset);
}

function byTensors(ordered: readonly ModelTensor[], { rank, worldSize }: RankSpec): RankTensor[] {
  const total = ordered.reduce((n, t) => n + t.bytes, 0);
  const out: RankTensor[] = [];
  let before = 0;
  for (const t of ordered) {
    // Twice the midpoint, to stay in integers (BigInt: the products pass 2^53); a model of zero bytes goes to rank 0.
    const mid2 = BigInt(2 * before + t.bytes);
    const owner = total === 0 ? 0 : Math.min(worldSize - 1, Number((mid2 * BigInt(worldSize)) / BigInt(2 * total)));
    if (owner === rank) out.push({ ...t });
    before += t.bytes;
  }
  return out;
}

function byRows(format: ModelFormat, ordered: readonly ModelTensor[], { rank, worldSize }: RankSpec): RankTensor[] {
  const dim = format === 'gguf' ? 1 : 0;
  return ordered.map((t) => {
    const rows = t.shape.length === 2 ? (t.shape[dim] as number) : 0;
    const rowBytes = rows > 0 ? t.bytes / rows : 0;
    if (t.unknownType || rows === 0 || !Number.isInteger(rowBytes)) return { ...t, replicated: true };
    const cut = (r: number) => Number((BigInt(r) * BigInt(rows)) / BigInt(worldSize)); // exact past 2^53
    const start = cut(rank);
    const end = cut(rank + 1);
    const shape = [...t.shape];
    shape[dim] = end - start;
    return {
      ...t,
      shape,
      offset: t.offset + start * rowBytes,
      bytes: (end - start) * rowBytes,
      rows: { dim, start, end, shape: t.shape, offset: t.offset, bytes: t.bytes },
    };
  });
}
