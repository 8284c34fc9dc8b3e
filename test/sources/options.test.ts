/**
 * The network options are checked before anything is opened: each wrong `source`, `cache` or pull() option is its
 * code, naming the option, with nothing left open.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { inspect, load, loadModel, pull } from '../../src/index.js';
import { leakCheck } from '../helpers.js';

const URL_ = 'http://127.0.0.1:9/never-asked.bin';

test('wrong source, cache and pull() options: coded errors naming the option, nothing asked of the network', async () => {
  const leaks = leakCheck();
  const cases: Array<[Record<string, unknown>, string, RegExp]> = [
    [{ source: { connections: 0 } }, 'ERR_OUT_OF_RANGE', /source\.connections/],
    [{ source: { connections: 1.5 } }, 'ERR_OUT_OF_RANGE', /source\.connections/],
    [{ source: { chunkSize: 1024 } }, 'ERR_OUT_OF_RANGE', /source\.chunkSize/],
    [{ source: { attempts: 0 } }, 'ERR_OUT_OF_RANGE', /source\.attempts/],
    [{ source: { stallMs: 1 } }, 'ERR_OUT_OF_RANGE', /source\.stallMs/],
    [{ source: { ca: 5 } }, 'ERR_INVALID_ARG_TYPE', /source\.ca/],
    [{ source: { headers: { a: 1 } } }, 'ERR_INVALID_ARG_TYPE', /source\.headers/],
    [{ source: { token: 1 } }, 'ERR_INVALID_ARG_TYPE', /source\.token/],
    [{ source: { endpoint: 'ftp://hub' } }, 'ERR_INVALID_ARG_VALUE', /source\.endpoint/],
    [{ source: { s3Endpoint: 'not a url' } }, 'ERR_INVALID_ARG_VALUE', /source\.s3Endpoint/],
    [{ source: { unsigned: 'yes' } }, 'ERR_INVALID_ARG_TYPE', /source\.unsigned/],
    [{ source: { conections: 4 } }, 'ERR_INVALID_ARG_VALUE', /connections/],
    [{ source: 'fast' }, 'ERR_INVALID_ARG_TYPE', /options/],
    [{ cache: 5 }, 'ERR_INVALID_ARG_TYPE', /cache/],
    [{ cache: '' }, 'ERR_INVALID_ARG_TYPE', /cache/],
  ];
  for (const [opts, code, message] of cases) {
    await assert.rejects(load(URL_, opts), (e: Error & { code?: string }) => e.code === code && message.test(e.message), JSON.stringify(opts));
  }
  await assert.rejects(loadModel(URL_, { source: { attempts: -1 } }), { code: 'ERR_OUT_OF_RANGE' });
  await assert.rejects(inspect(URL_, { source: { connections: 1000 } }), { code: 'ERR_OUT_OF_RANGE' });
  await assert.rejects(inspect(URL_, { sourc: {} } as never), { code: 'ERR_INVALID_ARG_VALUE' });
  await assert.rejects(pull('hf://org/name', { include: '*.json' } as never), { code: 'ERR_INVALID_ARG_TYPE' });
  await assert.rejects(pull('hf://org/name', { includes: [] } as never), { code: 'ERR_INVALID_ARG_VALUE' });
  await assert.rejects(load('gopher://x/y'), { code: 'ERR_SOURCE_SCHEME' });
  assert.equal(await leaks(), undefined);
});
