/**
 * Opening a reference for reading: a path (or a hub reference found in the local cache) through the file policy of
 * ../source.ts, a network object as an OpenedFile whose reads go through its {@link RemoteReader} (fd -1). Callers
 * above the pipeline never learn which.
 */
import { openFile } from '../source.js';
import type { IoMode, OpenedFile } from '../source.js';
import { resolveRef } from './resolve.js';
import type { HubInfo, SourceOptions } from './resolve.js';
import type { HttpOptions } from './http.js';

/** An opened reference: the file policy's OpenedFile, and what the hub said when it came from one. */
export type OpenedRef = OpenedFile & { hub?: HubInfo | undefined };

/**
 * Opens `ref` (a path, a URL, a hub reference). `io` applies to files; a network object's bytes never pass through
 * the page cache, whatever it says.
 */
export async function openRef(
  ref: string,
  io: IoMode,
  o: SourceOptions & { signal?: AbortSignal | undefined; onRetry?: HttpOptions['onRetry'] } = {},
): Promise<OpenedRef> {
  const r = await resolveRef(ref, o);
  if (r.kind === 'file') return Object.assign(await openFile(r.path, 'read', io), { hub: r.hub });
  const obj = r.object;
  return {
    path: r.display,
    fd: -1,
    directFd: -1,
    direct: false,
    align: { memAlign: 0, offsetAlign: 0 },
    rwFlags: 0,
    size: obj.size,
    stat: undefined,
    fallbackReason: undefined,
    hub: r.hub,
    remote: {
      readInto: (region, segments, ro) => obj.readInto(region, segments, ro),
      readBytes: (offset, length, signal) => obj.readBytes(offset, length, signal),
      sha256: r.sha256,
      stats: obj.stats,
    },
    close: () => obj.close(),
  };
}
