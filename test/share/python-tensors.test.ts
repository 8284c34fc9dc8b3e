/**
 * The Python client's load_safetensors() against a real server (clients/python/tests/test_tensors.py): numpy arrays and
 * torch tensors equal the safetensors library's own bit for bit (every dtype; whole files, selections, an index of two
 * shards), they are zero-copy views of the served memfd (the client's RSS grows by under 5 % of an 80 MiB file until
 * they are read), the mapping goes with the last of them, and bad files, unknown names and dtypes numpy lacks fail
 * with their codes. The interpreter is DMALOAD_PYTHON (default python3); the tests needing numpy, torch or safetensors
 * skip, with the reason, where that interpreter lacks them (CI points DMALOAD_PYTHON at a venv that has them).
 * Then safe_open() and load_file(), safetensors' own API over the server (clients/python/tests/test_safe_open.py),
 * bit-equal to the safetensors library's on every dtype, slice, shard and rank; and load_gguf() against gguf-py's own
 * reader (clients/python/tests/test_gguf.py).
 */
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { serve } from '../../src/index.js';
import { tempDir } from '../helpers.js';
import { pythonMissing as missing, pythonTests } from './python.js';
import { socketDir } from './util.js';

const { dir, cleanup } = tempDir('dmaload-share-pyt-');
after(cleanup);
const sockets = socketDir();
after(sockets.cleanup);

describe('Python client: load_safetensors', () => {
  test('tensors as zero-copy views of served files (clients/python/tests/test_tensors.py, test_safe_open.py, test_gguf.py)', async (t) => {
    if (missing) return t.skip(missing);
    const server = await serve({ socket: join(sockets.dir, 'pyt.sock') });
    try {
      await pythonTests(t, ['test_tensors', 'test_safe_open', 'test_gguf'], { DMALOAD_SOCKET: server.socket, DMALOAD_TEST_DATA: dir });
    } finally {
      await server.close();
    }
  });
});
