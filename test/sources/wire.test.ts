/**
 * The network source's own connections for ranged GETs (src/pipeline/sources/wire.ts), against a raw TCP server
 * written here that answers ranged GETs the way real servers may: heads split over many writes, 103 Early Hints
 * first, kept-alive connections closed between requests, more bytes than the body, 206 answers framed by chunked
 * encoding (then undici reads them), and through a CONNECT proxy named by HTTP_PROXY (then undici goes through it).
 *
 * Oracles: the SHA-256 of the served bytes, the server's own count of requests and connections, the proxy's count of
 * tunnels, error codes, and leakCheck() (fds, mappings, threads) around every load.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { copy, load } from '../../src/index.js';
import type { LoadStats } from '../../src/api/buffer.js';
import { noProxyFor } from '../../src/pipeline/sources/http.js';
import { bufferSha256, seededBytes, sha256, tempDir } from '../helpers.js';
import { LOOPBACK, clean, rejects, withVars } from './common.js';

// Loopback never goes through a proxy of the environment (the proxy test sets its own).
for (const k of ['NO_PROXY', 'no_proxy']) process.env[k] = process.env[k] ? `${process.env[k]},${LOOPBACK}` : LOOPBACK;

const MiB = 1024 * 1024;
const SIZE = 6 * MiB + 4097;
const data = seededBytes(SIZE, 77);
const want = sha256(data);

type NetworkStats = NonNullable<LoadStats['network']>;
type Quirk = 'split-head' | 'early-hints' | 'close-after' | 'extra-bytes' | 'chunked' | 'plain';

interface RawServer {
  url: string;
  requests: number;
  connections: number;
  /** The most connections open at once. */
  maxOpen: number;
  close(): Promise<void>;
}

/** A raw HTTP/1.1 server of `data` (or `body`) with one quirk; ranged GETs only (the probe asks for bytes=0-0). */
async function rawServer(quirk: Quirk, body: Uint8Array = data): Promise<RawServer> {
  const sockets = new Set<Socket>();
  const state = { requests: 0, connections: 0, maxOpen: 0 };
  const size = body.length;
  const server: Server = createServer((s) => {
    sockets.add(s);
    state.connections++;
    state.maxOpen = Math.max(state.maxOpen, sockets.size);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    let pending = Buffer.alloc(0);
    s.on('data', (d) => {
      pending = Buffer.concat([pending, d]);
      for (let end = pending.indexOf('\r\n\r\n'); end >= 0; end = pending.indexOf('\r\n\r\n')) {
        const head = pending.subarray(0, end).toString('latin1');
        pending = pending.subarray(end + 4);
        state.requests++;
        void answer(s, head);
      }
    });
  });
  async function answer(s: Socket, head: string): Promise<void> {
    const m = /\r\nrange: bytes=(\d+)-(\d+)/i.exec(head);
    const [from, to] = m ? [Number(m[1]), Math.min(size - 1, Number(m[2]))] : [0, size - 1];
    const part = body.subarray(from, to + 1);
    const status = m ? '206 Partial Content' : '200 OK';
    const fields = [`HTTP/1.1 ${status}`, 'etag: "v1"', 'accept-ranges: bytes', `content-range: bytes ${from}-${to}/${size}`];
    if (quirk === 'chunked') {
      s.write(`${fields.join('\r\n')}\r\ntransfer-encoding: chunked\r\n\r\n${part.length.toString(16)}\r\n`);
      s.write(part);
      s.write('\r\n0\r\n\r\n');
      return;
    }
    const whole = Buffer.concat([Buffer.from(`${fields.join('\r\n')}\r\ncontent-length: ${part.length}\r\n\r\n`), part]);
    if (quirk === 'early-hints') s.write('HTTP/1.1 103 Early Hints\r\nlink: </x>; rel=preload\r\n\r\n');
    if (quirk === 'split-head') {
      // The head a few bytes at a time, each its own segment.
      const headLen = whole.indexOf('\r\n\r\n') + 4;
      for (let i = 0; i < headLen; i += 7) {
        s.write(whole.subarray(i, Math.min(headLen, i + 7)));
        await new Promise((r) => setTimeout(r, 1));
      }
      s.write(whole.subarray(headLen));
      return;
    }
    s.write(whole);
    if (quirk === 'extra-bytes') s.write('garbage after the body');
    // Kept alive as far as the head says, then closed: the client's next request on it finds it gone.
    if (quirk === 'close-after') s.end();
  }
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/object.bin`,
    get requests() {
      return state.requests;
    },
    get connections() {
      return state.connections;
    },
    get maxOpen() {
      return state.maxOpen;
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

const source = { connections: 2, chunkSize: 1 * MiB };
const RANGES = Math.ceil(SIZE / MiB);

/**
 * Loads the object from a raw server with `quirk` (nothing leaked: clean()), byte-exact by SHA-256, `check`ed with
 * the load's stats while the buffer is open; resolves to the server's counts once the load is closed.
 */
async function loadFrom(quirk: Quirk, o: { connections: number; chunkSize: number }, check: (net: NetworkStats, srv: RawServer) => void = () => {}) {
  const srv = await rawServer(quirk);
  try {
    await clean(async () => {
      const b = await load(srv.url, { source: o });
      try {
        assert.equal(bufferSha256(b), want);
        check(b.stats.network!, srv);
      } finally {
        b.close();
      }
    });
    return { requests: srv.requests, connections: srv.connections };
  } finally {
    await srv.close();
  }
}

describe('the wire: ranged GETs on connections of their own', () => {
  before(() => {
    delete process.env.DMALOAD_HTTP_WIRE;
  });

  for (const quirk of ['plain', 'split-head', 'early-hints'] as const) {
    test(`${quirk}: byte-exact, no retries`, async () => {
      const srv = await loadFrom(quirk, source, (net) => assert.equal(net.retries, 0));
      // The probe and one GET per MiB.
      assert.equal(srv.requests, 1 + RANGES);
      // Kept alive: the probe's connection goes on to the ranges, and at most one more.
      assert.ok(srv.connections <= 2, `${srv.connections} connections`);
    });
  }

  test('more bytes than the body: byte-exact; the connection is never used again', async () => {
    const srv = await loadFrom('extra-bytes', source, (net, s) => {
      // The body is read in place up to its length; what follows arrives later, either on an idle connection
      // (dropped) or as the head of the next answer (not HTTP: that range is asked again on a new connection).
      assert.ok(net.retries <= RANGES, `${net.retries} retries`);
      assert.equal(s.requests, 1 + RANGES + net.retries);
    });
    // No connection carries two answers: each is out of step after its first (a request sent on it before that
    // showed fails and is asked again on a new one). So: the probe's, and one per range.
    assert.equal(srv.connections, 1 + RANGES);
  });

  test('a kept-alive connection the server closed is replaced without a retry', async () => {
    const srv = await loadFrom('close-after', { connections: 1, chunkSize: 1 * MiB }, (net) => assert.equal(net.retries, 0));
    // Every range on a new connection (the server closed each after its answer); a request sent before the close
    // was seen is sent again on a new one.
    assert.equal(srv.connections, 1 + RANGES);
  });

  test('206 answers framed by chunked encoding: undici reads them, byte-exact', async () => {
    const srv = await loadFrom('chunked', source, (net) => assert.equal(net.retries, 0));
    // The wire's requests in flight (one per connection) saw the framing and gave their ranges to undici.
    assert.ok(srv.requests >= 2 + RANGES && srv.requests <= 1 + source.connections + RANGES, `${srv.requests} requests`);
  });

  test('copy() of a URL: its slots, read at once, share one cap on the connections; byte-exact on disk', async () => {
    // 40 MiB: three 16 MiB slots of the copy's ring read at once, each a ranged read of its own.
    const body = seededBytes(40 * MiB + 5, 78);
    const srv = await rawServer('plain', body);
    const { dir, cleanup } = tempDir('dmaload-wire-copy-');
    try {
      const dst = join(dir, 'copy.bin');
      await clean(async () => {
        const r = await copy(srv.url, dst, { source: { connections: 2, chunkSize: MiB } });
        assert.equal(r.bytes, body.length);
      });
      assert.equal(sha256(readFileSync(dst)), sha256(body));
      assert.ok(srv.maxOpen <= 2, `${srv.maxOpen} connections open at once for a cap of 2`);
    } finally {
      cleanup();
      await srv.close();
    }
  });

  test('a load of a URL with no proxy in the way never loads undici (its import was the largest part of the start)', async () => {
    const srv = await rawServer('plain');
    // In a child process (this one has loaded undici long ago): undici is CommonJS, so once imported it is in
    // require.cache, whichever way it was imported.
    const child = `const { load } = await import(process.argv[1]);
      const { createRequire } = await import('node:module');
      const b = await load(process.argv[2], { source: { connections: 2, chunkSize: 1048576 } });
      const undici = Object.keys(createRequire(import.meta.url).cache).some((k) => /[\\/]undici[\\/]/.test(k));
      console.log(JSON.stringify({ undici, size: b.size, requests: b.stats.network.requests }));
      b.close();`;
    // Asynchronously: the server answers from this process.
    const run = async (env: NodeJS.ProcessEnv) => {
      const args = ['--input-type=module', '-e', child, new URL('../../src/index.js', import.meta.url).href, srv.url];
      const { stdout } = await promisify(execFile)(process.execPath, args, { env: { ...process.env, ...env }, encoding: 'utf8' });
      return JSON.parse(stdout) as { undici: boolean; size: number; requests: number };
    };
    try {
      assert.deepEqual(await run({}), { undici: false, size: SIZE, requests: 1 + RANGES });
      // The oracle sees undici when it is used.
      assert.equal((await run({ DMALOAD_HTTP_WIRE: 'off' })).undici, true);
    } finally {
      await srv.close();
    }
  });

  test('DMALOAD_HTTP_WIRE=off: every request through undici, byte-exact; another value is refused', async () => {
    const srv = await rawServer('plain');
    try {
      await withVars({ DMALOAD_HTTP_WIRE: 'off', NO_PROXY: '*' }, async () => {
        const b = await load(srv.url, { source });
        assert.equal(bufferSha256(b), want);
        b.close();
      });
      await withVars({ DMALOAD_HTTP_WIRE: 'sometimes', NO_PROXY: '*' }, async () => {
        const e = await rejects(load(srv.url, { source }), 'ERR_INVALID_ARG_VALUE');
        assert.match(e.message, /DMALOAD_HTTP_WIRE/);
      });
    } finally {
      await srv.close();
    }
  });

  test("the wire goes around no proxy: undici's rules for HTTP(S)_PROXY and NO_PROXY, case by case", async () => {
    const cases: Array<[Record<string, string>, string, boolean]> = [
      [{}, 'https://h.example/x', true],
      [{ HTTP_PROXY: 'http://p:3128' }, 'http://h.example/x', false],
      // https falls back to HTTP_PROXY, as undici's EnvHttpProxyAgent does
      [{ HTTP_PROXY: 'http://p:3128' }, 'https://h.example/x', false],
      [{ HTTPS_PROXY: 'http://p:3128' }, 'http://h.example/x', true],
      [{ https_proxy: 'http://p:3128' }, 'https://h.example/x', false],
      [{ HTTP_PROXY: 'http://p:3128', NO_PROXY: '*' }, 'http://h.example/x', true],
      [{ HTTP_PROXY: 'http://p:3128', NO_PROXY: 'other.example, h.example' }, 'http://h.example/x', true],
      [{ HTTP_PROXY: 'http://p:3128', NO_PROXY: '.example' }, 'http://h.example/x', true],
      [{ HTTP_PROXY: 'http://p:3128', NO_PROXY: '*.example' }, 'http://a.h.example/x', true],
      [{ HTTP_PROXY: 'http://p:3128', NO_PROXY: 'xh.example' }, 'http://h.example/x', false],
      [{ HTTP_PROXY: 'http://p:3128', NO_PROXY: 'h.example:8080' }, 'http://h.example:8080/x', true],
      [{ HTTP_PROXY: 'http://p:3128', NO_PROXY: 'h.example:8080' }, 'http://h.example/x', false],
      [{ HTTPS_PROXY: 'http://p:3128', NO_PROXY: 'h.example:443' }, 'https://h.example/x', true],
      [{ HTTP_PROXY: 'http://p:3128', no_proxy: 'H.EXAMPLE' }, 'http://h.example/x', true],
    ];
    const vars = { HTTP_PROXY: undefined, http_proxy: undefined, HTTPS_PROXY: undefined, https_proxy: undefined };
    for (const [env, url, direct] of cases) {
      await withVars({ ...vars, ...env }, async () => {
        assert.equal(noProxyFor(url), direct, `${JSON.stringify(env)} ${url}`);
      });
    }
  });

  test('with HTTP_PROXY set, ranged reads go through the proxy (undici), not around it', async () => {
    const srv = await rawServer('plain');
    let tunnels = 0;
    let bytes = 0;
    const proxy = createHttpServer((_q, r) => r.writeHead(405).end());
    const open = new Set<Socket>();
    proxy.on('connect', (req, client: Socket, head: Buffer) => {
      tunnels++;
      const [host, port] = String(req.url).split(':');
      const up = connect(Number(port), host, () => {
        client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        up.write(head);
        up.on('data', (d: Buffer) => (bytes += d.length));
        up.pipe(client);
        client.pipe(up);
      });
      for (const s of [up, client]) {
        open.add(s);
        s.on('error', () => {});
        s.on('close', () => open.delete(s));
      }
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    try {
      const proxyUrl = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
      await withVars({ HTTP_PROXY: proxyUrl, http_proxy: proxyUrl }, async () => {
        const b = await load(srv.url, { source });
        try {
          assert.equal(bufferSha256(b), want);
        } finally {
          b.close();
        }
      });
      assert.ok(tunnels >= 1, 'no tunnel through the proxy');
      // Every byte of the object came through the proxy.
      assert.ok(bytes >= SIZE, `${bytes} bytes through the proxy`);
    } finally {
      for (const s of open) s.destroy();
      await new Promise((r) => proxy.close(r));
      await srv.close();
    }
  });
});

after(() => {
  delete process.env.DMALOAD_HTTP_WIRE;
});
