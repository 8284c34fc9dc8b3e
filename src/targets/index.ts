/** The registry of targets: one file each. */
import { dmaHeap } from './dma-heap.js';
import { memfd } from './memfd.js';
import { memory } from './memory.js';
import type { Target, TargetName } from './types.js';
import { udmabuf } from './udmabuf.js';

export const targets: Record<TargetName, Target> = { memory, memfd, udmabuf, 'dma-heap': dmaHeap };
export const TARGET_NAMES = Object.keys(targets) as TargetName[];
export type { Allocation, Part, Target, TargetName } from './types.js';
