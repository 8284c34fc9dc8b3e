/**
 * What resolving a reference takes and gives: the network options (`source`) and a reference resolved to a file or a
 * network object. Its own module so that resolve.ts and the schemes it dispatches to (hub.ts, s3.ts) share the types
 * without importing each other; resolve.ts re-exports them.
 */
import type { HttpObject, HttpOptions } from './http.js';

/** Network options every call that takes a reference accepts (`source` option). */
export interface SourceOptions extends Omit<HttpOptions, 'signal' | 'onRetry' | 'authorize' | 'redirectAllowed' | 'chunkRange'> {
  /** A bearer token for hf:// references (default: HF_TOKEN, else the token file huggingface_hub writes). */
  token?: string | undefined;
  /** The hub's address (default: HF_ENDPOINT, else https://huggingface.co). */
  endpoint?: string | undefined;
  /** s3://: the region (default AWS_REGION, AWS_DEFAULT_REGION, us-east-1). */
  region?: string | undefined;
  /** s3://: the store's address (default AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS's). */
  s3Endpoint?: string | undefined;
  /** s3://: path-style addressing (default: for a custom endpoint). */
  pathStyle?: boolean | undefined;
  /** s3://: unsigned requests (a public bucket). */
  unsigned?: boolean | undefined;
}

/** A reference resolved: a local file, or an object on the network with what its server promised. */
export type Resolved =
  | { kind: 'file'; path: string; hub?: HubInfo | undefined }
  | { kind: 'http'; object: HttpObject; display: string; sha256?: string | undefined; sha256From?: 'hub' | 'store'; hub?: HubInfo | undefined };

/** What the hub said about a file: the commit its revision pointed to, and the file's own name there. */
export interface HubInfo {
  repoType: 'model' | 'dataset' | 'space';
  repoId: string;
  revision: string;
  commit: string | undefined;
  file: string;
}
