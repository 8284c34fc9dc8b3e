/** Runs the CLI in-process and captures what it prints. */
import { main } from '../../src/cli/main.js';
import type { CliIO } from '../../src/cli/io.js';

export async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const io: CliIO = { stdout: (s) => void (out += s), stderr: (s) => void (err += s), isTTY: false };
  const code = await main(argv, io);
  return { code, out, err };
}
