/** Which parser a file's first bytes call for, and parsing a whole header held in memory. Pure: no I/O. */
import { fileSizeOf, modelError, type ParsedModel, type ParseOptions } from './common.js';
import { parseGguf } from './gguf.js';
import { parseSafetensors } from './safetensors.js';

/** Which parser a file's first bytes call for. */
export function detect(prefix: Uint8Array): 'gguf' | 'safetensors' | undefined {
  if (prefix.length >= 4 && prefix[0] === 0x47 && prefix[1] === 0x47 && prefix[2] === 0x55 && prefix[3] === 0x46) return 'gguf';
  // safetensors: a u64 length, then the JSON header's "{".
  if (prefix.length >= 9 && prefix[8] === 0x7b) return 'safetensors';
  return undefined;
}

/**
 * Parses a model header from a buffer holding the start of a file, choosing the format by content (GGUF magic,
 * else a safetensors length + "{"). The buffer must hold the whole header.
 * @throws DmaloadError ERR_MODEL_FORMAT and the codes of {@link parseGguf} and {@link parseSafetensors}
 */
export function parseModel(buf: Uint8Array, opts: ParseOptions = {}): ParsedModel {
  fileSizeOf(buf, opts);
  const format = detect(buf);
  if (format === 'gguf') return parseGguf(buf, opts);
  if (format === 'safetensors') return parseSafetensors(buf, opts);
  throw modelError('ERR_MODEL_FORMAT', 'not a GGUF or safetensors file', opts.path);
}
