/** dmaload/bench: every way of loading a file, side by side (what `dmaload bench` prints), as data. */
export { bench } from './bench.js';
export { DEFAULT_TARGETS, label } from './rows.js';
export type { BenchOptions, BenchReport, BenchRow, CacheState } from './bench.js';
export { METHODS } from './methods.js';
export type { Method } from './methods.js';
export { markdown, svg, table } from './report.js';
