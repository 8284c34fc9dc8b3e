/** save(): buffers to a file, crash-safe by default (temporary file, fsync, rename, fsync of the folder). */
import { LoadedBuffer } from '../core/buffer.js';
import { AbortError, invalidType } from '../core/errors.js';
import { createWriter } from './writer.js';
import type { WriterOptions, WriterResult } from './writer.js';

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
export async function save(source: SaveSource, path: string, options: SaveOptions = {}): Promise<WriterResult> {
  const list = Array.isArray(source) ? source : [source];
  for (const [i, s] of list.entries()) {
    if (!(s instanceof LoadedBuffer) && !(s instanceof Uint8Array)) throw invalidType(Array.isArray(source) ? `source[${i}]` : 'source', 'a LoadedBuffer or a Uint8Array', s);
  }
  // Borrow every buffer first: a closed one is refused before anything is written.
  const leases = list.map((s) => (s instanceof LoadedBuffer ? s.borrow('the buffer to save') : undefined));
  try {
    const total = list.reduce((n, x) => n + (x instanceof LoadedBuffer ? x.size : x.length), 0);
    const writer = await createWriter(path, { ...options, atomic: options.atomic ?? true, expectedSize: total });
    try {
      for (const [i, s] of list.entries()) {
        options.signal?.throwIfAborted();
        const lease = leases[i];
        const bytes = s instanceof LoadedBuffer ? (lease!.mapping ? new Uint8Array(lease!.mapping, 0, s.size) : new Uint8Array(0)) : s;
        // Mappings direct I/O cannot read from (dma-heap) go through the writer's staging buffers.
        await writer.write(bytes, { copy: lease !== undefined && !lease.directInto });
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
