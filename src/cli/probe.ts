/** `dmaload probe [FILE]`: what this kernel offers. */
import { parseArgs } from 'node:util';
import { probe } from '../api/probe.js';
import { formatBytes } from '../core/util.js';
import { UsageError } from './io.js';
import type { CliIO } from './io.js';

export const PROBE_HELP = `Usage: dmaload probe [FILE] [--first-touch] [--json]

Show the kernel facts dmaload depends on: io_uring, direct-I/O alignment of FILE's file system and whether it takes
uncached buffered I/O (RWF_DONTCACHE), transparent huge pages, the hugetlb pools (per page size: total, free,
reserved, surplus), /dev/udmabuf and its size limit, DMA heaps, the memlock limit, and whether fresh memory gets
huge pages.

  --first-touch   measure now (and cache) what faulting in a GiB of fresh memory costs with and without
                  huge pages; loads decide by it (a few seconds)
`;

export async function probeCommand(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      json: { type: 'boolean', default: false },
      'first-touch': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    io.stdout(PROBE_HELP);
    return 0;
  }
  if (positionals.length > 1) throw new UsageError('probe takes at most one FILE');
  const p = await probe(positionals[0], { firstTouch: values['first-touch'] });
  if (values.json) {
    io.stdout(JSON.stringify(p) + '\n');
    return 0;
  }
  const rows: Array<[string, string]> = [
    ['kernel', p.kernel],
    ['io_uring', p.ioUring.usable ? 'usable' : `not usable (${p.ioUring.reason})`],
  ];
  if (p.file) {
    rows.push([
      `direct I/O (${p.file.path})`,
      p.file.directIo ? `yes: memory align ${p.file.memAlign}, offset align ${p.file.offsetAlign}` : 'no (file system does not support it)',
    ]);
    rows.push([`uncached I/O (${p.file.path})`, p.file.uncached.supported ? 'yes (RWF_DONTCACHE)' : `no (RWF_DONTCACHE: ${p.file.uncached.error})`]);
  }
  rows.push(
    ['transparent huge pages', p.thp],
    ...p.hugetlb.map((h): [string, string] => [
      `hugetlb pool ${formatBytes(h.pageSize)}${h.default ? ' (default)' : ''}`,
      `${h.total} pages, ${h.free} free, ${h.reserved} reserved, ${h.surplus} surplus${h.overcommit ? `, overcommit ${h.overcommit}` : ''}: ${h.available} available (${formatBytes(h.available * h.pageSize)})`,
    ]),
    [
      'NUMA nodes',
      p.numa.available
        ? p.numa.nodes.map((n) => `${n.node}: ${formatBytes(n.freeBytes)} free of ${formatBytes(n.totalBytes)}`).join('; ')
        : 'none (a kernel without NUMA: all memory is node 0)',
    ],
    [
      'huge pages for fresh memory',
      p.firstTouch
        ? `${p.firstTouch.hugePages ? 'yes' : 'no'}: ${p.firstTouch.summary}`
        : 'not measured yet (--first-touch measures; a load of 256 MiB or more does once)',
    ],
    [
      'udmabuf',
      p.udmabuf.present
        ? `${p.udmabuf.device}, size_limit_mb ${p.udmabuf.sizeLimitMb ?? '?'}, list_limit ${p.udmabuf.listLimit ?? '?'}`
        : `absent (${p.udmabuf.device})`,
    ],
    ['DMA heaps', p.dmaHeaps.length ? p.dmaHeaps.join(', ') : 'none (/dev/dma_heap)'],
    ['memlock limit', p.memlock === 'unlimited' ? 'unlimited' : formatBytes(p.memlock)],
    ['cpus / memory', `${p.cpus} / ${formatBytes(p.memoryBytes)}`],
  );
  const w = Math.max(...rows.map((r) => r[0].length));
  io.stdout(rows.map(([k, v]) => `${k.padEnd(w)}  ${v}\n`).join(''));
  return 0;
}
