/** Load once, share everywhere: `dmaload serve` (serve()) and its clients (connect()); the wire protocol is docs/protocol.md. */
export { serve } from './serve.js';
export { MAX_INFLIGHT } from './connections.js';
export type { ServeOptions } from './serve.js';
export type { ShareServer } from './server.js';
export { connect } from './client.js';
export type { ConnectOptions, ShareClient, ShareLoadOptions, ShareLoadModelOptions } from './client.js';
export type { ServerStatus, LoadReplyBody, ErrorBody, ServedLoadStats } from './protocol.js';
export type { ShareTarget } from './seal.js';
