/** One bench row in a fresh process: `node child.js '<json {spec, path, size}>'` prints one JSON line. */
import { runRow } from './methods.js';
import type { RowSpec } from './methods.js';

const arg = JSON.parse(process.argv[2] ?? '{}') as { spec: RowSpec; path: string; size: number };
try {
  const m = await runRow(arg.spec, arg.path, arg.size);
  process.stdout.write(JSON.stringify(m) + '\n');
} catch (e) {
  const err = e as NodeJS.ErrnoException;
  process.stdout.write(
    JSON.stringify({ supported: false, reason: `${err.code ?? 'error'}: ${err.message}`, createMs: 0, ioMs: 0, closeMs: 0, cpuMs: 0, pageCacheBytes: 0 }) +
      '\n',
  );
}
