/**
 * Finding the model in a folder or a repository: `loadModel(folder)`, `inspect('hf://ORG/NAME')`. The same rule for
 * both — the one file that is `model.safetensors`, a `*.safetensors.index.json`, or a `.gguf` (the first of a split)
 * — and a coded error that lists the candidates when there is not exactly one.
 */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { DmaloadError } from '../core/errors.js';
import { hubDisplay, listHubRepo } from '../pipeline/sources/hub.js';
import { isReference } from '../pipeline/sources/resolve.js';
import { listS3 } from '../pipeline/sources/s3.js';
import type { SourceOptions } from '../pipeline/sources/resolve.js';
import { parseHubRef } from '../pipeline/sources/hubref.js';

const GGUF_LATER_SPLIT = /-(\d{5})-of-\d{5}\.gguf$/;

/** The model among a folder's top-level file names, or the error saying why there is not exactly one. */
export function pickModel(files: readonly string[], where: string): string {
  const top = files.filter((f) => !f.includes('/'));
  const candidates = top.filter(
    (f) =>
      f === 'model.safetensors' ||
      f.endsWith('.safetensors.index.json') ||
      (f.endsWith('.gguf') && (!GGUF_LATER_SPLIT.test(f) || GGUF_LATER_SPLIT.exec(f)![1] === '00001')),
  );
  // An index beside model.safetensors describes it: the single file wins (transformers' order).
  const pick = candidates.includes('model.safetensors') && candidates.every((c) => c === 'model.safetensors' || c === 'model.safetensors.index.json');
  if (pick) return 'model.safetensors';
  if (candidates.length === 1) return candidates[0]!;
  if (candidates.length === 0) {
    const st = top.filter((f) => f.endsWith('.safetensors'));
    if (st.length === 1) return st[0]!;
    throw new DmaloadError(
      'ERR_MODEL_NOT_FOUND',
      `'${where}' holds no model: no model.safetensors, *.safetensors.index.json or .gguf${st.length > 1 ? ` (and ${st.length} .safetensors files: name one, or add their index)` : ''}`,
      { path: where },
    );
  }
  throw new DmaloadError(
    'ERR_MODEL_AMBIGUOUS',
    `'${where}' holds more than one model (${candidates.join(', ')}): name the one to load, e.g. '${isReference(where) ? `${where}/${candidates[0]!}` : join(where, candidates[0]!)}'`,
    {
      path: where,
    },
  );
}

/**
 * The model file a reference names: a folder's model, a hub repository's model (pinned to the commit its revision
 * points to), or the reference itself when it names a file.
 */
export async function locateModel(ref: string, o: SourceOptions & { signal?: AbortSignal | undefined } = {}): Promise<string> {
  if (ref.startsWith('hf://')) {
    const r = parseHubRef(ref);
    if (r.file !== undefined) return ref;
    const hasModel = (files: readonly string[]) => {
      try {
        pickModel(files, ref);
        return true;
      } catch {
        return false;
      }
    };
    const listed = await listHubRepo(ref, o, hasModel);
    const file = pickModel(listed.files, hubDisplay(r));
    // Pinned: the index and its shards then come from one commit, even if the branch moves meanwhile.
    return hubDisplay({ ...r, revision: listed.commit ?? r.revision }, file);
  }
  // An S3 prefix (s3://BUCKET/PREFIX/): its objects, one level, like a folder's files.
  if (/^s3:\/\/[^/]+(\/(.*\/)?)?$/i.test(ref)) {
    const base = ref.endsWith('/') ? ref : `${ref}/`;
    return `${base}${pickModel(await listS3(base, o), base)}`;
  }
  if (isReference(ref)) return ref;
  const st = await stat(ref).catch(() => undefined);
  if (!st?.isDirectory()) return ref;
  const names = (await readdir(ref, { withFileTypes: true })).filter((e) => e.isFile() || e.isSymbolicLink()).map((e) => e.name);
  return join(ref, pickModel(names, ref));
}
