// scripts/consumer-check.sh: load a file of random bytes with the installed package (by O_DIRECT, and with the
// default io 'auto') and compare SHA-256 of buffer.bytes with node's crypto over the file.
// Usage: node load.mjs DIR... — the first DIR whose files can be opened with O_DIRECT is used.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, constants, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { load } from 'dmaload';

function supportsDirect(dir) {
  const probe = join(dir, `.dmaload-direct-probe-${process.pid}`);
  try {
    closeSync(openSync(probe, constants.O_CREAT | constants.O_RDWR | constants.O_DIRECT, 0o600));
    return true;
  } catch {
    return false;
  } finally {
    rmSync(probe, { force: true });
  }
}

const dirs = process.argv.slice(2);
const dir = dirs.find(supportsDirect);
if (!dir) {
  console.error(`no folder that supports O_DIRECT among ${dirs.join(', ')} (tmpfs does not); set DMALOAD_CHECK_DIR`);
  process.exit(1);
}

const size = 5 * 1024 * 1024 + 12345; // a few MiB with a tail that is not a whole direct-I/O block
const file = join(dir, `dmaload-consumer-${process.pid}.bin`);
try {
  writeFileSync(file, randomBytes(size));
  const sha = (bytes) => createHash('sha256').update(bytes).digest('hex');
  const expected = sha(readFileSync(file));
  for (const io of ['direct', 'auto']) {
    const buf = await load(file, { io });
    try {
      assert.equal(buf.size, size, `load(io '${io}') size`);
      assert.equal(buf.bytes.length, size, `load(io '${io}') bytes.length`);
      assert.equal(sha(buf.bytes), expected, `load(io '${io}'): sha256 of buffer.bytes differs from the file's`);
      if (io === 'direct') assert.equal(buf.stats.io, 'direct', `load(io 'direct') read ${buf.stats.io}`);
      console.log(`load(io '${io}'): ${size} bytes from ${dir}, stats.io ${buf.stats.io}, sha256 ${expected.slice(0, 16)}… matches`);
    } finally {
      buf.close();
    }
  }
} finally {
  rmSync(file, { force: true });
}
