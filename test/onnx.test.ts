/**
 * ONNX Runtime in Node (onnxruntime-node, a devDependency): a session whose external initializer comes from a dmaload
 * buffer (`externalData: [{ path, data: buf.bytes }]`) computes bit for bit what a session made from the file path
 * computes, and leaves the weights out of the page cache. The model (Gemm with a 256 MiB float32 weight in
 * model.onnx_data) is written by test/onnx-writer.ts. Oracles: the path session's output, a float64 dot product in JS
 * for a sample of outputs, and mincore for the page cache.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import ort from 'onnxruntime-node';
import { load } from '../src/index.js';
import { cachedBytes, evictFile, needsDirect, tempDir } from './helpers.js';
import { encodeModel, seededFloats, writeGemmModel } from './onnx-writer.js';

const MiB = 1024 * 1024;
const { dir, cleanup } = tempDir('dmaload-onnx-');
after(cleanup);

/** The bytes of a float32 tensor's data, for a bitwise comparison. */
function bits(t: ort.Tensor): Uint8Array {
  const d = t.data as Float32Array;
  assert.ok(d instanceof Float32Array, 'float32 output');
  return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
}

test('an ORT session from a dmaload buffer: output bit-identical to the path session, weights not left in the page cache', async (t) => {
  if (needsDirect(t)) return;
  // 8192 × 8192 float32 = 256 MiB of weight; 4 rows of input.
  const m = writeGemmModel(dir, { M: 4, K: 8192, N: 8192 }, 7);
  assert.ok(m.weightBytes >= 256 * MiB);
  const X = new ort.Tensor('float32', seededFloats(m.M * m.K, 99), [m.M, m.K]);
  const opts = { intraOpNumThreads: 2 };

  // ORT's one-time start-up (library, environment, thread pool) is paid here, by neither of the measured ways.
  const tiny = await ort.InferenceSession.create(
    encodeModel({
      nodes: [{ opType: 'Gemm', inputs: ['A', 'B'], outputs: ['Z'] }],
      initializers: [{ name: 'B', dims: [2, 2], raw: new Uint8Array(new Float32Array([1, 2, 3, 4]).buffer) }],
      inputs: [{ name: 'A', dims: [1, 2] }],
      outputs: [{ name: 'Z', dims: [1, 2] }],
    }),
    opts,
  );
  assert.deepEqual([...((await tiny.run({ A: new ort.Tensor('float32', new Float32Array([1, 1]), [1, 2]) })).Z!.data as Float32Array)], [4, 6]);
  await tiny.release();

  // 1. From the path: ORT opens model.onnx and maps model.onnx_data beside it (through the page cache).
  assert.equal(evictFile(m.dataPath), 0, 'the data file is cold');
  let t0 = performance.now();
  const byPath = await ort.InferenceSession.create(m.onnxPath, opts);
  const pathReadyMs = performance.now() - t0;
  const pathCacheReady = cachedBytes(m.dataPath, m.weightBytes);
  t0 = performance.now();
  const yPath = (await byPath.run({ X })).Y!;
  const pathRunMs = performance.now() - t0;
  const pathCacheRun = cachedBytes(m.dataPath, m.weightBytes);
  await byPath.release();

  // 2. From a dmaload buffer: direct I/O into memory, handed to ORT as the external data file's contents.
  assert.equal(evictFile(m.dataPath), 0, 'the data file is cold again');
  t0 = performance.now();
  const buf = await load(m.dataPath);
  const loadMs = performance.now() - t0;
  const byBuffer = await ort.InferenceSession.create(m.onnx, { ...opts, externalData: [{ path: m.dataLocation, data: buf.bytes }] });
  const bufReadyMs = performance.now() - t0;
  const bufCacheReady = cachedBytes(m.dataPath, m.weightBytes);

  // A float64 dot product in JS for a sample of outputs, from the loaded weights (so a session that read nothing, or
  // the wrong bytes, cannot pass by agreeing with the other).
  const W = new Float32Array(buf.bytes.buffer, buf.bytes.byteOffset, m.K * m.N);
  const x = X.data;
  const expect = (i: number, j: number): { y: number; scale: number } => {
    let y = m.bias[j]!;
    let scale = Math.abs(y);
    for (let k = 0; k < m.K; k++) {
      const p = x[i * m.K + k]! * W[k * m.N + j]!;
      y += p;
      scale += Math.abs(p);
    }
    return { y, scale };
  };
  const sample: [number, number][] = [
    [0, 0],
    [0, m.N - 1],
    [1, 4097],
    [2, 123],
    [3, m.N >> 1],
    [3, m.N - 2],
  ];
  const want = sample.map(([i, j]) => expect(i, j));

  // ORT copied the external data during create(): overwriting the dmaload buffer changes nothing, so the buffer may
  // be closed as soon as the session is ready (closing it first also gives its memory back before the session runs).
  const stats = buf.stats;
  buf.bytes.fill(0);
  buf.close();
  t0 = performance.now();
  const yBuf = (await byBuffer.run({ X })).Y!;
  const bufRunMs = performance.now() - t0;
  const bufCacheRun = cachedBytes(m.dataPath, m.weightBytes);
  await byBuffer.release();

  const gib = (n: number) => `${(n / MiB).toFixed(1)} MiB (${((100 * n) / m.weightBytes).toFixed(1)} %)`;
  t.diagnostic(`weights ${m.weightBytes / MiB} MiB, cold (evicted before each way)`);
  t.diagnostic(
    `path:    ready ${pathReadyMs.toFixed(0)} ms, first run ${pathRunMs.toFixed(0)} ms; page cache left: ${gib(pathCacheReady)} at ready, ${gib(pathCacheRun)} after the run`,
  );
  t.diagnostic(
    `dmaload: ready ${bufReadyMs.toFixed(0)} ms (load ${loadMs.toFixed(0)} ms, io ${stats.io}, memory ${stats.memory}, huge pages ${stats.hugePages}), first run ${bufRunMs.toFixed(0)} ms; ` +
      `page cache left: ${gib(bufCacheReady)} at ready, ${gib(bufCacheRun)} after the run`,
  );

  assert.deepEqual(yPath.dims, [m.M, m.N]);
  assert.deepEqual(yBuf.dims, [m.M, m.N]);
  assert.ok(Buffer.from(bits(yBuf)).equals(bits(yPath)), 'the dmaload session computes bit for bit what the path session computes');
  const y = yBuf.data as Float32Array;
  for (const [n, [i, j]] of sample.entries()) {
    const { y: ref, scale } = want[n]!;
    assert.ok(Math.abs(y[i * m.N + j]! - ref) <= 1e-4 * scale + 1e-6, `Y[${i}][${j}] = ${y[i * m.N + j]}, float64 reference ${ref}`);
  }
  assert.ok(bufCacheReady <= m.weightBytes / 100, `dmaload way: ${gib(bufCacheReady)} of the weights in the page cache at ready (≤ 1 %)`);
  assert.ok(bufCacheRun <= m.weightBytes / 100, `dmaload way: ${gib(bufCacheRun)} of the weights in the page cache after the run (≤ 1 %)`);
  assert.equal(stats.io, 'direct', 'the dmaload way read the weights by direct I/O');
});
