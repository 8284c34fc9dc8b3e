/**
 * Model file formats: pure parsers of safetensors and GGUF headers held in memory. No I/O and no imports from the
 * load pipeline; reading files is the API layer's job (api/inspect.ts).
 *
 * Error codes: see ./common.ts (ERR_MODEL_FORMAT, ERR_MODEL_TRUNCATED, ERR_MODEL_HEADER, ERR_MODEL_VERSION,
 * ERR_MODEL_RANGE, ERR_MODEL_DUPLICATE, ERR_MODEL_UTF8). Failed system calls (a missing shard, say) surface as
 * Node's own fs errors.
 * @module
 */
export type { MetadataValue, ModelFormat, ModelInfo, ModelTensor, ParsedModel, ParseOptions, TensorInfo } from './common.js';
export { detect, parseModel } from './detect.js';
export { GGML_TYPES, GGUF_MAX_ARRAY_ELEMENTS, GGUF_VALUE_TYPES, parseGguf, type GgmlType } from './gguf.js';
export { parseSafetensors, SAFETENSORS_DTYPE_BITS, SAFETENSORS_MAX_HEADER } from './safetensors.js';
