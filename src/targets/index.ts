/** The registry of targets: one file each. */
import { memfd } from './memfd.js';
import { memory } from './memory.js';
import type { Target, TargetName } from './types.js';

export const targets: Partial<Record<TargetName, Target>> = { memory, memfd };
export const TARGET_NAMES = Object.keys(targets) as TargetName[];
export type { Allocation, Part, Target, TargetName } from './types.js';
