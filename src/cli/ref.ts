/** What the CLI takes where a FILE is asked for: a path, a URL, an hf:// reference, or `ORG/NAME[@REV]`. */
import { existsSync } from 'node:fs';
import { formatHubRef, parseBareRepo } from '../pipeline/sources/hubref.js';
import { isReference } from '../pipeline/sources/resolve.js';

/**
 * A command-line argument as a reference: a path or a `scheme://` reference as given; `ORG/NAME[@REV]` (and
 * `datasets/ORG/NAME`, …) that is no path here becomes `hf://ORG/NAME[@REV]`, as huggingface-cli takes repo ids.
 */
export function cliRef(arg: string): string {
  if (isReference(arg) || existsSync(arg) || arg.startsWith('.') || arg.startsWith('/')) return arg;
  try {
    return formatHubRef(parseBareRepo(arg));
  } catch {
    return arg;
  }
}
