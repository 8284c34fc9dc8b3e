/** A probe shared by the share attack tests: how fast the server answers status while an attack runs. */
import { connect } from '../../src/index.js';

/** Asks the server for its status every 100 ms until `stop` settles; resolves with the slowest answer, ms. */
export async function statusLatency(socket: string, stop: Promise<unknown>): Promise<number> {
  const c = await connect(socket);
  let worst = 0;
  let done = false;
  void stop.finally(() => (done = true));
  try {
    while (!done) {
      const t0 = performance.now();
      await c.status({ signal: AbortSignal.timeout(5000) });
      worst = Math.max(worst, performance.now() - t0);
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    c.close();
  }
  return worst;
}
