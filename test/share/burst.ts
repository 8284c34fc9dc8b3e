/**
 * A second attacker for the share tests (not a test file itself; see attacker.ts for the first), run as another
 * user against a root server, speaking the protocol raw. Prints one JSON line, then waits for stdin to close; it
 * never closes what it opened (on a FUSE file whose daemon does not answer FLUSH, close() would hang it).
 *
 * - `send SOCKET FILE`: sends FILE's fd in a load request; { code } of the error, or { size, cached } of the reply.
 * - `burst SOCKET FILE CONNS MSGS`: opens FILE once and, over CONNS connections, sends MSGS status requests each
 *   carrying that fd 64 times (every attached copy is one more fd for the server to close); { sent, codes } with the
 *   count of each reply's type or code.
 */
import { constants as FS, openSync } from 'node:fs';
import { MessageType } from '../../src/share/protocol.js';
import { native } from '../../src/engine/binding.js';
import { connectRaw, frame, recvRaw } from './util.js';

const [cmd, socket, file, ...rest] = process.argv.slice(2);

async function main(): Promise<unknown> {
  const fd = openSync(file!, FS.O_RDONLY | FS.O_NONBLOCK);
  if (cmd === 'send') {
    const s = connectRaw(socket!);
    native.sendMsg(s, frame(MessageType.LoadRequest, 1, { path: 'attacker' }), [fd]);
    const r = await recvRaw(s, 20_000);
    if (r === 'eof') return { code: 'eof' };
    if (r.type === MessageType.Error) return { code: String(r.body.code) };
    return { size: r.body.size, cached: r.body.cached };
  }
  if (cmd === 'burst') {
    const [conns, msgs] = rest.map(Number) as [number, number];
    const codes: Record<string, number> = {};
    let sent = 0;
    const socks = Array.from({ length: conns }, () => connectRaw(socket!));
    for (let m = 0; m < msgs; m++) {
      for (const s of socks) {
        if (native.sendMsg(s, frame(MessageType.StatusRequest, m + 1, {}), Array<number>(64).fill(fd)) >= 0) sent += 64;
      }
    }
    for (const s of socks) {
      for (let m = 0; m < msgs; m++) {
        const r = await recvRaw(s, 10_000).catch(() => 'timeout' as const);
        const k = r === 'eof' || r === 'timeout' ? r : r.type === MessageType.Error ? String(r.body.code) : `type ${r.type}`;
        codes[k] = (codes[k] ?? 0) + 1;
        if (r === 'eof' || r === 'timeout') break;
      }
    }
    return { sent, codes };
  }
  throw new Error(`unknown command ${cmd}`);
}

const out = await main();
process.stdout.write(`${JSON.stringify(out)}\n`);
// Stays until told to go: the test decides when the FUSE daemon dies (which frees this process's closes).
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
