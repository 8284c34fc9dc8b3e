/** save(): buffers to a file, crash-safe by default (an unnamed file, fsync, link and rename, fsync of the folder). */
import { LoadedBuffer } from './buffer.js';
import { AbortError, invalidType } from '../core/errors.js';
import { openWriter } from './writer.js';
import type { WriterOptions, WriterResult } from './writer.js';
import { optionNames, optionsObject } from './options.js';

export type SaveSource = LoadedBuffer | Uint8Array | ReadonlyArray<LoadedBuffer | Uint8Array>;

export interface SaveOptions extends Omit<WriterOptions, 'atomic'> {
  /** Replace the destination atomically: readers see the old file or the new one, never a torn one. Default true. */
  atomic?: boolean;
}

/**
 * Writes `source` (one buffer or several, concatenated) to `path` by direct I/O where the file system allows.
 * On any error or abort the temporary file is removed and the destination is untouched. Resolves with bytes, ms
 * and MB/s.
 */
const SAVE_OPTIONS = optionNames<SaveOptions>()(['io', 'queueDepth', 'chunkSize', 'bufferSize', 'atomic', 'fsync', 'expectedSize', 'mode', 'signal']);

export async function save(source: SaveSource, path: string, options: SaveOptions = {}): Promise<WriterResult> {
  optionsObject(options, SAVE_OPTIONS, 'save()');
  // Array.isArray() narrows a ReadonlyArray to any[]: name the element type again.
  const list: readonly (LoadedBuffer | Uint8Array)[] = Array.isArray(source)
    ? (source as readonly (LoadedBuffer | Uint8Array)[])
    : [source as LoadedBuffer | Uint8Array];
  for (const [i, s] of list.entries()) {
    if (!(s instanceof LoadedBuffer) && !(s instanceof Uint8Array))
      throw invalidType(Array.isArray(source) ? `source[${i}]` : 'source', 'a LoadedBuffer or a Uint8Array', s);
  }
  // Borrow every buffer first: a closed one is refused before anything is written.
  const leases = list.map((s) => (s instanceof LoadedBuffer ? s.borrow('the buffer to save') : undefined));
  try {
    const total = list.reduce((n, x) => n + (x instanceof LoadedBuffer ? x.size : x.length), 0);
    const writer = await openWriter(path, { ...options, expectedSize: total });
    try {
      for (const [i, s] of list.entries()) {
        options.signal?.throwIfAborted();
        const lease = leases[i];
        // Mappings direct I/O cannot read from (dma-heap) go through the writer's staging slots.
        if (!(s instanceof LoadedBuffer)) await writer.write(s);
        else if (s.size > 0) await writer.writeRegion(lease!.region!, 0, s.size, { copy: !lease!.directInto });
      }
      return await writer.close();
    } catch (e) {
      await writer.abort(e);
      if (options.signal?.aborted && !(e instanceof AbortError)) throw new AbortError(undefined, { cause: options.signal.reason });
      throw e;
    }
  } finally {
    for (const l of leases) l?.release();
  }
}
