/**
 * The benches' limited network (this kernel has no netem): the servers run in a network namespace made for the run,
 * the clients in the namespace the bench started in, and the link between them (a veth pair) is capped by `tbf` in
 * the server-to-client direction, the one a download fills. Per-connection caps and the time to first byte come from
 * the servers' side: nginx's limit_rate and the fault proxy for HTTP, {@link delayRelay} for anything else.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';

/** The servers' address on the capped link (the clients' end is .1). */
export const SERVER = '10.77.0.2';
/** Another host on the same link (the hub's CDN). */
export const CDN = '10.77.0.3';

/**
 * Runs `script` again as root inside a new namespace behind a link capped at `link` (tc's notation: 2gbit), with
 * `--inner --client-ns PATH` added to `args`: PATH is this namespace, where the clients run (`clientCommand`).
 * Returns its exit status; the namespace and the link are gone afterwards.
 */
export function runShaped(script: string, link: string, args: string[]): number {
  if (process.getuid?.() !== 0) throw new Error('the shaped network needs root (a network namespace and tbf)');
  const NS = `dmaload-bench-${process.pid}`;
  execFileSync('ip', ['netns', 'add', NS]);
  const veth = `dmb${process.pid % 100000}`;
  try {
    const ns = (...a: string[]) => execFileSync('ip', ['netns', 'exec', NS, ...a]);
    ns('ip', 'link', 'set', 'lo', 'up');
    ns('ip', 'addr', 'add', '127.0.0.2/8', 'dev', 'lo');
    execFileSync('ip', ['link', 'add', `${veth}a`, 'type', 'veth', 'peer', 'name', `${veth}b`]);
    execFileSync('ip', ['link', 'set', `${veth}b`, 'netns', NS]);
    execFileSync('ip', ['addr', 'add', '10.77.0.1/24', 'dev', `${veth}a`]);
    execFileSync('ip', ['link', 'set', `${veth}a`, 'up']);
    ns('ip', 'addr', 'add', `${SERVER}/24`, 'dev', `${veth}b`);
    // The hub's CDN on an address of its own, as the real one: on the hub's address (another port), huggingface_hub's
    // metadata request came back without X-Repo-Commit.
    ns('ip', 'addr', 'add', `${CDN}/24`, 'dev', `${veth}b`);
    ns('ip', 'link', 'set', `${veth}b`, 'up');
    ns('tc', 'qdisc', 'replace', 'dev', `${veth}b`, 'root', 'tbf', 'rate', link, 'burst', '1mb', 'latency', '50ms');
    const clientNs = `/proc/${process.pid}/ns/net`;
    const r = spawnSync('ip', ['netns', 'exec', NS, process.execPath, script, '--inner', '--client-ns', clientNs, ...args], { stdio: 'inherit' });
    return r.status ?? 1;
  } finally {
    spawnSync('ip', ['link', 'del', `${veth}a`]);
    execFileSync('ip', ['netns', 'del', NS]);
  }
}

/** `cmd` run in the clients' namespace (`--client-ns`), or as it is without one. */
export function clientCommand(clientNs: string | undefined, cmd: string[]): string[] {
  return clientNs ? ['nsenter', `--net=${clientNs}`, '--', ...cmd] : cmd;
}

/**
 * A TCP relay on `host` to `target` (TLS passes through it): each chunk from the client is held `delayMs` first
 * (order kept: a request's answer starts that much later), and each connection's answers are paced to `rate`
 * bytes/s when given (a per-connection cap, as object stores and CDNs have).
 */
export async function delayRelay(
  target: { hostname: string; port: string },
  host: string,
  o: { delayMs: number; rate?: number | undefined },
): Promise<{ host: string; port: number; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((c) => {
    const up = connect(Number(target.port), target.hostname);
    for (const s of [c, up]) {
      sockets.add(s);
      s.on('error', () => (c.destroy(), up.destroy()));
      s.on('close', () => (sockets.delete(s), c.destroy(), up.destroy()));
    }
    c.on('data', (d: Buffer) => void setTimeout(() => up.write(d), o.delayMs));
    if (!o.rate) return void up.pipe(c);
    // Paced: each chunk may leave once the bytes before it have had their time at `rate`.
    let free = performance.now();
    up.on('data', (d: Buffer) => {
      c.write(d);
      free = Math.max(free, performance.now()) + (d.length / o.rate!) * 1000;
      const wait = free - performance.now();
      if (wait > 1) {
        up.pause();
        setTimeout(() => up.resume(), wait);
      }
    });
    up.on('end', () => c.end());
  });
  await new Promise<void>((r) => server.listen(0, host, r));
  return {
    host,
    port: (server.address() as AddressInfo).port,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}
