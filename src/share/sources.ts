/**
 * What a share server may fetch for its clients (`--allow-source`): references a client names instead of sending an
 * fd are fetched with the server's own network access and credentials, so only what the operator allowed is fetched
 * at all — no client can make the server reach another host, bucket or repository (server-side request forgery), or
 * read another tenant's bucket with the server's credentials.
 *
 * A rule is a prefix, compared by parsed parts, never as a string (`https://host` does not allow
 * `https://host.evil.example/`; `…/models` does not allow `…/models-private/`):
 * - `http://HOST[:PORT]/PATH` or `https://…`: the same scheme and host (and port), and the URL's path equal to PATH or
 *   under it (a PATH ending in `/` allows only what is under it). The path compared is the one URL parsing gives
 *   (dot segments, also percent-encoded, are resolved first).
 * - `s3://BUCKET[/KEY-PREFIX]`: that bucket, and keys under the prefix (the same rule as a path).
 * - `hf://ORG/` or `hf://ORG/NAME` (and `hf://datasets/…`, `hf://spaces/…`): the repositories of an organisation, or
 *   one repository, at any revision.
 * @module
 */
import { DmaloadError, invalidValue } from '../core/errors.js';
import { printable } from '../core/util.js';
import { parseHubRef } from '../pipeline/sources/hubref.js';
import { redact } from '../pipeline/sources/http.js';

/** One `--allow-source` rule, parsed. */
export type AllowRule =
  | { kind: 'url'; text: string; protocol: string; host: string; path: string }
  | { kind: 's3'; text: string; bucket: string; path: string }
  | { kind: 'hf'; text: string; repoType: string; org: string; name: string | undefined };

/** Whether `path` is `prefix` or lies under it, by whole segments. */
function under(path: string, prefix: string): boolean {
  if (prefix === '' || prefix === '/') return true;
  if (prefix.endsWith('/')) return path.startsWith(prefix);
  return path === prefix || path.startsWith(`${prefix}/`);
}

/** Parses one `--allow-source` value. @throws TypeError ERR_INVALID_ARG_VALUE naming the rule and the shapes taken */
export function allowRule(text: unknown, name = 'allowSources'): AllowRule {
  const bad = (why: string) => invalidValue(name, text, `${why}; a rule is an http(s):// URL prefix, s3://BUCKET[/PREFIX] or hf://ORG/[NAME]`);
  if (typeof text !== 'string' || text === '') throw bad('is not a reference prefix');
  const scheme = /^([a-z0-9]+):\/\//i.exec(text)?.[1]?.toLowerCase();
  if (scheme === 'http' || scheme === 'https') {
    let u: URL;
    try {
      u = new URL(text);
    } catch {
      throw bad('is not a URL');
    }
    if (u.username || u.password || u.search || u.hash) throw bad('must not hold credentials, a query or a fragment');
    return { kind: 'url', text, protocol: u.protocol, host: u.host, path: u.pathname };
  }
  if (scheme === 's3') {
    const m = /^s3:\/\/([^/]+)(\/.*)?$/i.exec(text);
    if (!m) throw bad('names no bucket');
    return { kind: 's3', text, bucket: m[1]!, path: m[2] ?? '' };
  }
  if (scheme === 'hf') {
    const m = /^hf:\/\/(?:(datasets|spaces|models)\/)?([^/@]+)(?:\/([^/@]*))?\/?$/.exec(text);
    if (!m) throw bad('is not hf://ORG/ or hf://ORG/NAME');
    const type = m[1] === 'datasets' ? 'dataset' : m[1] === 'spaces' ? 'space' : 'model';
    return { kind: 'hf', text, repoType: type, org: m[2]!, name: m[3] || undefined };
  }
  throw bad('has a scheme the server does not fetch');
}

/** Whether `ref` falls under one of `rules`. Anything that does not parse is not allowed. */
export function allowedBy(rules: readonly AllowRule[], ref: string): boolean {
  const scheme = /^([a-z0-9]+):\/\//i.exec(ref)?.[1]?.toLowerCase();
  try {
    if (scheme === 'http' || scheme === 'https') {
      const u = new URL(ref);
      return rules.some((r) => r.kind === 'url' && r.protocol === u.protocol && r.host === u.host && under(u.pathname, r.path));
    }
    if (scheme === 's3') {
      const m = /^s3:\/\/([^/]+)(\/.*)?$/i.exec(ref);
      if (!m) return false;
      const key = m[2] ?? '';
      // No dot segments in a key: a store may resolve them (as a URL would) out of the prefix.
      if (key.split('/').some((s) => s === '.' || s === '..' || /%2e/i.test(s))) return false;
      return rules.some((r) => r.kind === 's3' && r.bucket === m[1] && under(key, r.path));
    }
    if (scheme === 'hf') {
      const h = parseHubRef(ref);
      const [org, name] = h.repoId.includes('/') ? h.repoId.split('/') : [undefined, h.repoId];
      return rules.some((r) => r.kind === 'hf' && r.repoType === h.repoType && r.org === org && (r.name === undefined || r.name === name));
    }
  } catch {
    return false;
  }
  return false;
}

/** ERR_SHARE_SOURCE_NOT_ALLOWED for `ref`, naming what the operator allowed (the rules are not secrets). */
export function notAllowed(ref: string, rules: readonly AllowRule[]): DmaloadError {
  const shown = printable(/^https?:/i.test(ref) ? redact(ref) : ref.slice(0, 1000));
  const what =
    rules.length === 0
      ? 'this server fetches no references for its clients (its operator can allow some with --allow-source)'
      : `this server fetches only references under ${rules.map((r) => r.text).join(', ')} (--allow-source)`;
  return new DmaloadError('ERR_SHARE_SOURCE_NOT_ALLOWED', `'${shown}': ${what}; open the file yourself and send its fd, or ask the operator`, {
    path: shown,
  });
}
