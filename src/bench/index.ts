/** dmaload/bench: every way of loading a file, side by side (what `dmaload bench` prints), as data. */
export { bench, DEFAULT_TARGETS, label } from './bench.js';
export type { BenchOptions, BenchReport, BenchRow, CacheState } from './bench.js';
export { METHODS } from './methods.js';
export type { Method } from './methods.js';
export { markdown, svg, table } from './report.js';
