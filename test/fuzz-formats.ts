/**
 * Seeded fuzzing of the model-header parsers: mutates valid safetensors and GGUF files and checks that each either
 * parses into a self-consistent result or is refused with a DmaloadError — never another exception, never a hang.
 * GGUF cases also go through the incremental reader (parse, read more, parse again) and must match the whole-buffer
 * parse exactly.
 *
 *   node dist/test/fuzz-formats.js [--cases 100000] [--seed 1]
 *
 * The test suite runs {@link fuzzFormats} with a smaller count.
 */
import { isDeepStrictEqual, parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { DmaloadError } from '../src/core/errors.js';
import { NeedMore, parseGgufPrefix } from '../src/formats/gguf.js';
import { encodeGgufHeader, type GgufTypedValue } from './gguf-writer.js';
import { parseModel, type ParsedModel } from '../src/formats/index.js';

export interface FuzzReport {
  cases: number;
  seed: number;
  /** Cases that parsed (and passed the consistency checks). */
  accepted: number;
  /** Refusals by error code. */
  refused: Record<string, number>;
  ms: number;
  /** The slowest single case. */
  slowestMs: number;
}

/** mulberry32: small, fast, and the same sequence everywhere for a seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function safetensors(header: object | string, dataBytes: number): Buffer {
  const h = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([len, h, Buffer.alloc(dataBytes, 0x5a)]);
}

function gguf(alignment: number): Buffer {
  const s = (value: string): GgufTypedValue => ({ type: 'STRING', value });
  const header = encodeGgufHeader({
    alignment,
    metadata: [
      ['general.architecture', s('llama')],
      ['general.alignment', { type: 'UINT32', value: alignment }],
      ['a.u8', { type: 'UINT8', value: 7 }],
      ['a.i16', { type: 'INT16', value: -2 }],
      ['a.f32', { type: 'FLOAT32', value: 0.5 }],
      ['a.bool', { type: 'BOOL', value: true }],
      ['a.u64', { type: 'UINT64', value: 2n ** 60n }],
      ['a.i64', { type: 'INT64', value: -1n }],
      ['a.f64', { type: 'FLOAT64', value: 2.5 }],
      ['tok', { type: 'ARRAY', elementType: 'STRING', value: ['<s>', '</s>', 'a', 'b'].map(s) }],
      ['ids', { type: 'ARRAY', elementType: 'INT32', value: [1, 2, 3].map((value) => ({ type: 'INT32', value })) }],
      ['nest', { type: 'ARRAY', elementType: 'ARRAY', value: [{ type: 'ARRAY', elementType: 'UINT16', value: [{ type: 'UINT16', value: 9 }] }] }],
    ],
    tensors: [
      { name: 'tok_embd', dims: [32, 2], type: 8 /* Q8_0 */, offset: 0 },
      { name: 'norm', dims: [4], type: 0 /* F32 */, offset: alignment * 3 },
      { name: 'q4k', dims: [256], type: 12 /* Q4_K */, offset: alignment * 4 },
    ],
  });
  return Buffer.concat([header, Buffer.alloc(alignment * 4 + 144, 0x33)]);
}

/** Valid files to start from. */
export function seeds(): Buffer[] {
  return [
    safetensors(
      {
        __metadata__: { format: 'pt', note: 'é' },
        a: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] },
        b: { dtype: 'BF16', shape: [3], data_offsets: [16, 22] },
        c: { dtype: 'U8', shape: [0], data_offsets: [22, 22] },
        d: { dtype: 'F4', shape: [4], data_offsets: [22, 24] },
        e: { dtype: 'I64', shape: [1, 1], data_offsets: [24, 32] },
      },
      32,
    ),
    safetensors({ x: { dtype: 'U8', shape: [6], data_offsets: [0, 6] } }, 6),
    gguf(32),
    gguf(64),
  ];
}

const INTERESTING_BYTES = [0, 1, 2, 3, 4, 0x20, 0x7f, 0x80, 0xff, 0xc0, 0xed, ...Buffer.from('{}[]",:\\-.0123456789eE')];
const INTERESTING_INTS = [
  0n,
  1n,
  2n,
  3n,
  4n,
  5n,
  12n,
  13n,
  31n,
  32n,
  33n,
  255n,
  256n,
  2n ** 16n,
  2n ** 31n,
  2n ** 32n - 1n,
  2n ** 32n,
  2n ** 40n,
  2n ** 53n,
  2n ** 62n,
  2n ** 63n,
  2n ** 64n - 1n,
];
const JSON_NUMBERS = ['-1', '0', '1', '1.5', '-0', '1e309', '9007199254740993', '18446744073709551616', '1e3', '"1"', 'null', '[]', '{}', 'true'];

/** One to four random mutations, mostly inside the header (where the parsers look). */
function mutate(seed: Buffer, rnd: () => number): Buffer {
  let b = Buffer.from(seed);
  const int = (n: number) => Math.floor(rnd() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)] as T;
  const headerEnd = b.subarray(0, 4).toString('latin1') === 'GGUF' ? Math.min(b.length, 700) : Math.min(b.length, 8 + Number(b.readBigUInt64LE(0)));
  const pos = () => (rnd() < 0.9 ? int(headerEnd) : int(b.length));
  for (let n = 1 + int(4); n > 0; n--) {
    switch (int(9)) {
      case 0: {
        const p = pos();
        b[p] = (b[p] as number) ^ (1 << int(8));
        break;
      }
      case 1:
        b[pos()] = pick(INTERESTING_BYTES);
        break;
      case 2: {
        // An interesting integer over a u32 or u64 field.
        const p = pos();
        const v = pick(INTERESTING_INTS);
        if (rnd() < 0.5 && p + 8 <= b.length) b.writeBigUInt64LE(v & (2n ** 64n - 1n), p);
        else if (p + 4 <= b.length) b.writeUInt32LE(Number(v & 0xffffffffn), p);
        break;
      }
      case 3:
        b = b.subarray(0, int(b.length + 1));
        break;
      case 4: {
        const p = pos();
        b = Buffer.concat([b.subarray(0, p), Buffer.from(Array.from({ length: 1 + int(8) }, () => int(256))), b.subarray(p)]);
        break;
      }
      case 5: {
        const p = pos();
        b = Buffer.concat([b.subarray(0, p), b.subarray(p + 1 + int(16))]);
        break;
      }
      case 6: {
        // Copy a run of the header elsewhere: repeats keys, names, whole entries.
        const from = pos();
        const run = b.subarray(from, from + 1 + int(40));
        const to = pos();
        b = Buffer.concat([b.subarray(0, to), run, b.subarray(to)]);
        break;
      }
      case 7: {
        // JSON-aware: swap a number for an odd one, keeping the header length right.
        if (b.length < 9 || b[8] !== 0x7b) break;
        const text = b.subarray(8, headerEnd).toString('latin1');
        const numbers = [...text.matchAll(/-?\d+/g)];
        const m = numbers.length ? pick(numbers) : undefined;
        if (!m || m.index === undefined) break;
        const json = text.slice(0, m.index) + pick(JSON_NUMBERS) + text.slice(m.index + m[0].length);
        b = Buffer.concat([Buffer.alloc(8), Buffer.from(json, 'latin1'), b.subarray(headerEnd)]);
        b.writeBigUInt64LE(BigInt(json.length), 0);
        break;
      }
      case 8: {
        // Grow or shrink the data area: ranges past the end, uncovered bytes.
        const delta = int(64) - 32;
        b = delta < 0 ? b.subarray(0, Math.max(0, b.length + delta)) : Buffer.concat([b, Buffer.alloc(delta)]);
        break;
      }
    }
  }
  return b;
}

/** Throws a plain Error (a fuzz failure) when an accepted result is not self-consistent. */
function checkConsistent(m: ParsedModel, fileSize: number): void {
  const fail = (what: string) => {
    throw new Error(`inconsistent result: ${what}`);
  };
  const names = new Set<string>();
  let end = 0;
  for (const t of [...m.tensors].sort((a, b) => a.offset - b.offset || a.bytes - b.bytes)) {
    if (names.has(t.name)) fail(`duplicate ${t.name}`);
    names.add(t.name);
    if (!Number.isSafeInteger(t.offset) || !Number.isSafeInteger(t.bytes) || t.bytes < 0) fail(`offset/bytes of ${t.name}`);
    if (t.offset < m.dataOffset || t.offset + t.bytes > fileSize) fail(`range of ${t.name}`);
    if (t.bytes > 0 && t.offset < end) fail(`overlap at ${t.name}`);
    if (t.bytes > 0) end = t.offset + t.bytes;
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) fail(`shape of ${t.name}`);
  }
}

/** Parses GGUF as inspect() does: a small first read, then more whenever the parser asks. */
function parseIncrementally(b: Buffer, first: number): ParsedModel {
  let have = Math.min(b.length, first);
  for (;;) {
    try {
      return parseGgufPrefix(b.subarray(0, have), b.length, undefined);
    } catch (e) {
      if (!(e instanceof NeedMore)) throw e;
      if (e.end <= have || e.end > b.length) throw new Error(`NeedMore(${e.end}) with ${have} of ${b.length} bytes`);
      have = Math.min(b.length, Math.max(e.end, have * 2));
    }
  }
}

const outcome = (f: () => ParsedModel): ParsedModel | string => {
  try {
    return f();
  } catch (e) {
    if (e instanceof DmaloadError) return e.code;
    throw e;
  }
};

/**
 * Runs `cases` mutated files through the parsers. Throws (with the seed and case number) on any exception that is
 * not a DmaloadError, on an inconsistent accepted result, or when the incremental and whole-buffer GGUF parses
 * disagree.
 */
export function fuzzFormats({ cases, seed = 1 }: { cases: number; seed?: number }): FuzzReport {
  const rnd = prng(seed);
  const base = seeds();
  const report: FuzzReport = { cases, seed, accepted: 0, refused: {}, ms: 0, slowestMs: 0 };
  const t0 = performance.now();
  for (let i = 0; i < cases; i++) {
    const input = mutate(base[i % base.length] as Buffer, rnd);
    const t = performance.now();
    try {
      const whole = outcome(() => parseModel(input));
      if (typeof whole === 'string') report.refused[whole] = (report.refused[whole] ?? 0) + 1;
      else {
        checkConsistent(whole, input.length);
        report.accepted++;
      }
      if (input.subarray(0, 4).toString('latin1') === 'GGUF') {
        const step = outcome(() => parseIncrementally(input, 1 + Math.floor(rnd() * 64)));
        if (!isDeepStrictEqual(step, whole))
          throw new Error(
            `incremental parse gave ${typeof step === 'string' ? step : 'a result'}, whole-buffer parse ${typeof whole === 'string' ? whole : 'a result'}`,
          );
      }
    } catch (e) {
      throw new Error(`fuzz case ${i} (seed ${seed}, input ${input.toString('base64')}): ${(e as Error).stack ?? String(e)}`);
    }
    report.slowestMs = Math.max(report.slowestMs, performance.now() - t);
  }
  report.ms = performance.now() - t0;
  return report;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({ options: { cases: { type: 'string', default: '100000' }, seed: { type: 'string', default: '1' } } });
  const r = fuzzFormats({ cases: Number(values.cases), seed: Number(values.seed) });
  const codes = Object.entries(r.refused)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([c, n]) => `  ${c.padEnd(20)} ${n}`)
    .join('\n');
  console.log(
    `${r.cases} cases (seed ${r.seed}) in ${(r.ms / 1000).toFixed(2)} s: ${Math.round(r.cases / (r.ms / 1000))} cases/s, slowest ${r.slowestMs.toFixed(2)} ms\n` +
      `  accepted             ${r.accepted}\n${codes}`,
  );
}
