/** dmaload: load huge files into memory that CPUs and devices share, by direct I/O, without the page cache. */
export { load, loadRanges } from './load.js';
export type { FileRange, LoadOptions, LoadProgress } from './load.js';
export { LoadedBuffer } from './buffer.js';
export type { LoadStats } from './buffer.js';
export { probe } from './probe.js';
export type { ProbeResult } from './probe.js';
export { AbortError, DmaloadError, DmaloadSystemError } from './errors.js';
export type { IoMode } from './file.js';
export type { Part, TargetName } from './targets/index.js';
export { inspect, parseModel, parseSafetensors, parseGguf, GGML_TYPES, GGUF_VALUE_TYPES, SAFETENSORS_DTYPE_BITS, SAFETENSORS_MAX_HEADER, GGUF_MAX_ARRAY_ELEMENTS } from './formats/index.js';
export type { ModelInfo, ModelTensor, TensorInfo, ParsedModel, ParseOptions, MetadataValue, ModelFormat, GgmlType } from './formats/index.js';
export { bench } from './bench/bench.js';
export type { BenchOptions, BenchReport, BenchRow } from './bench/bench.js';
