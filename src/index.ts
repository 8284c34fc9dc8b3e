/// <reference types="node" preserve="true" />
/// <reference lib="esnext.disposable" preserve="true" />
/** dmaload: load huge files into memory that CPUs and devices share, by direct I/O, without the page cache. */
export { load, loadRanges } from './api/load.js';
export type { FileRange, LoadOptions, LoadProgress } from './api/load.js';
export { LoadedBuffer } from './api/buffer.js';
export type { LoadStats, PartStats } from './api/buffer.js';
export { createPool } from './api/pool.js';
export type { BufferPool, PoolOptions } from './api/pool.js';
export { allocate } from './api/allocate.js';
export type { AllocateOptions } from './api/allocate.js';
export { readInto, writeFrom } from './api/rw.js';
export type { RwOptions } from './api/rw.js';
export { copy } from './api/copy.js';
export { pull } from './api/pull.js';
export type { PullOptions, PullResult } from './api/pull.js';
export { verifyFile } from './api/verify.js';
export type { VerifyFileOptions, VerifyFileResult } from './api/verify.js';
export type { VerifyOption } from './api/options.js';
export type { VerifiedStats } from './pipeline/verify.js';
export type { CopyOptions, CopyResult } from './api/copy.js';
export { save } from './api/save.js';
export type { SaveOptions, SaveSource } from './api/save.js';
export { createWriter } from './api/writer.js';
export type { Writer, WriterOptions, WriterResult } from './api/writer.js';
export { probe } from './api/probe.js';
export type { ProbeResult } from './api/probe.js';
export { AbortError, DmaloadError, DmaloadSystemError, ERROR_CODES } from './core/errors.js';
export type { ErrorCode } from './core/errors.js';
export { HugetlbPoolError } from './engine/hugetlb.js';
export type { HugetlbPool } from './engine/hugetlb.js';
export type { HugePages } from './api/options.js';
export type { NumaNode, NumaNodeInfo } from './engine/numa.js';
export type { IoMode } from './pipeline/source.js';
export type { Part, TargetName } from './targets/index.js';
export { inspect } from './api/inspect.js';
export {
  parseModel,
  parseSafetensors,
  parseGguf,
  GGML_TYPES,
  GGUF_VALUE_TYPES,
  SAFETENSORS_DTYPE_BITS,
  SAFETENSORS_MAX_HEADER,
  GGUF_MAX_ARRAY_ELEMENTS,
} from './formats/index.js';
export type { ModelInfo, ModelTensor, TensorInfo, ParsedModel, ParseOptions, MetadataValue, ModelFormat, GgmlType } from './formats/index.js';
export { loadModel, MODEL_COALESCE_GAP } from './api/model.js';
export type { LoadModelOptions } from './api/model.js';
export type { LoadedModel, LoadedTensor, LoadModelStats, ModelFileStats, TensorTypedArray, Float16ArrayLike } from './api/tensors.js';
export { planRank } from './pipeline/ranks.js';
export type { RankOptions, RankSpec, RankSplit, RankTensor, RowSlice } from './pipeline/ranks.js';
export { serve, connect } from './share/index.js';
export type {
  ServeOptions,
  ShareServer,
  ConnectOptions,
  ShareClient,
  ShareLoadOptions,
  ShareLoadModelOptions,
  ServerStatus,
  ShareTarget,
} from './share/index.js';
export type { ServedInfo } from './api/buffer.js';
