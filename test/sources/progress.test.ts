/**
 * Progress of a network load: onProgress carries the connections used so far and the retries, and the CLI's bar on a
 * terminal shows them. A node:http server on loopback answers ranged GETs of seeded bytes and fails a few of them
 * (503), so retries are counted; the bytes are checked against the source.
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { load } from '../../src/index.js';
import type { LoadProgress } from '../../src/index.js';
import { loadCommand } from '../../src/cli/load.js';
import { bufferSha256, seededBytes, sha256 } from '../helpers.js';
import { LOOPBACK } from './common.js';

const data = seededBytes(24 * 1024 * 1024 + 5, 1234);
let url = '';
let fail = 0;
const server = createServer((req, res) => {
  const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
  const from = m ? Number(m[1]) : 0;
  const to = m ? Math.min(Number(m[2]), data.length - 1) : data.length - 1;
  if (to > from && fail > 0) {
    fail--;
    res.writeHead(503, { 'retry-after': '0' });
    return void res.end();
  }
  res.writeHead(m ? 206 : 200, { etag: '"p"', 'content-length': to - from + 1, ...(m ? { 'content-range': `bytes ${from}-${to}/${data.length}` } : {}) });
  res.end(data.subarray(from, to + 1));
});
before(async () => {
  for (const k of ['NO_PROXY', 'no_proxy']) process.env[k] = LOOPBACK;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/model.bin`;
});
after(() => server.close());

test('onProgress of a URL: the connections used so far and the retries', async () => {
  fail = 2;
  const seen: LoadProgress[] = [];
  const b = await load(url, { onProgress: (p) => seen.push(p) });
  try {
    assert.equal(bufferSha256(b), sha256(data));
    const last = seen.at(-1)!;
    assert.equal(last.bytes, data.length);
    assert.ok(last.network && last.network.connections >= 1, JSON.stringify(last));
    assert.equal(last.network.retries, b.stats.network!.retries);
    assert.ok(last.network.retries >= 2, `retries ${last.network.retries}`);
  } finally {
    b.close();
  }
});

test("the CLI's progress bar on a terminal shows connections and retries", async () => {
  fail = 1;
  let err = '';
  const code = await loadCommand([url], { stdout: () => {}, stderr: (s) => (err += s), isTTY: true });
  assert.equal(code, 0, err);
  assert.match(err, /\d+ conns?(, \d+ retries)?/);
  assert.match(err, /1 retries|, \d+ retries/);
});
