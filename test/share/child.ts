/**
 * A client process for the share tests (not a test file itself): `node child.js load SOCKET FILE` connects, loads FILE
 * through the server and prints one JSON line { sha256, size, cached, ino, seals }; `hold` does the same and then waits
 * for stdin to close or a signal; `die SOCKET FILE` sends a raw load request and exits at once without reading the reply.
 */
import { createHash } from 'node:crypto';
import { constants as FS, fstatSync, openSync } from 'node:fs';
import { native } from '../../src/engine/binding.js';
import { connect } from '../../src/share/client.js';
import { MessageType } from '../../src/share/protocol.js';
import { frame } from './util.js';

const [cmd, socket, file] = process.argv.slice(2);

async function main(): Promise<void> {
  if (cmd === 'die') {
    const fd = native.unixConnect(socket!);
    const f = openSync(file!, FS.O_RDONLY);
    native.sendMsg(fd, frame(MessageType.LoadRequest, 1, { path: file }), [f]);
    process.exit(0); // the reply (and its fds) is never read
  }
  const c = await connect(socket!);
  const b = await c.load(file!);
  const h = createHash('sha256');
  for (const w of b.windows(64 << 20)) h.update(w);
  process.stdout.write(
    JSON.stringify({
      sha256: h.digest('hex'),
      size: b.size,
      cached: b.stats.served?.cached,
      ino: fstatSync(b.fd).ino,
      seals: native.seals(b.fd, 0),
      target: b.target,
    }) + '\n',
  );
  if (cmd === 'hold') await new Promise((r) => setTimeout(r, 60_000));
  b.close();
  c.close();
}

main().catch((e: Error & { code?: string }) => {
  process.stderr.write(`${e.code ?? ''} ${e.message}\n`);
  process.exit(1);
});
