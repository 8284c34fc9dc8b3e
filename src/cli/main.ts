/** The dmaload CLI. Takes its argv as a parameter so tests can call it. */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { DmaloadError } from '../core/errors.js';
import { UsageError, parseErrorMessage, printable, processIO, takeInterrupt } from './io.js';
import type { CliIO } from './io.js';
import { benchCommand } from './bench.js';
import { cpCommand } from './cp.js';
import { inspectCommand } from './inspect.js';
import { loadCommand } from './load.js';
import { probeCommand } from './probe.js';
import { pullCommand } from './pull.js';
import { serveCommand } from './serve.js';
import { verifyCommand } from './verify.js';

export const HELP = `Usage: dmaload <command> [options]

Commands:
  load FILE     load a file into memory or a memfd by direct I/O, without the page cache
  probe [FILE]  show what this kernel offers (io_uring, direct I/O, udmabuf, DMA heaps)
  cp SRC DST    copy by direct I/O on both sides, replacing DST atomically
  inspect FILE  list a model file's tensors (safetensors, GGUF) from its header
  bench [FILE]  measure every way of loading a file, side by side (makes its own file when given none)
  serve         load files once and share their sealed buffers with local processes (Unix socket)
  verify FILE.. check files' SHA-256 at the device's speed (against --sha256 or their hub-cache blob names)
  pull REPO     fetch a Hugging Face repository into the local hub cache (verified, resumable)

FILE, SRC and REF may be a path, a model folder, an http(s):// URL, hf://ORG/NAME[@REV][/FILE] or ORG/NAME[@REV].

Options:
  -h, --help     this help
  -v, --version  the version of dmaload

Run 'dmaload <command> --help' for a command's options.
`;

/** The version in dmaload's own package.json (three folders above dist/src/cli). */
export function version(): string {
  return (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
}

type Command = (argv: string[], io: CliIO) => Promise<number>;

const commands: Record<string, Command> = {
  load: loadCommand,
  probe: probeCommand,
  bench: benchCommand,
  inspect: inspectCommand,
  cp: cpCommand,
  serve: serveCommand,
  verify: verifyCommand,
  pull: pullCommand,
};

/**
 * Runs the CLI; resolves with the exit status: 0 ok, 1 failure, 2 usage error, 128 + n after signal n (SIGINT,
 * SIGTERM, SIGHUP) interrupted a command, which removed what it had made. Never throws.
 */
export async function main(argv: string[], io: CliIO = processIO): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === '-h' || cmd === '--help' || cmd === 'help') {
    io[cmd === undefined ? 'stderr' : 'stdout'](HELP);
    return cmd === undefined ? 2 : 0;
  }
  if (cmd === '-v' || cmd === '--version') {
    io.stdout(`${version()}\n`);
    return 0;
  }
  const run = commands[cmd];
  if (!run) {
    io.stderr(`dmaload: unknown command '${cmd}'\n\n${HELP}`);
    return 2;
  }
  takeInterrupt();
  try {
    return await run(rest, io);
  } catch (e) {
    const err = e as Error & { code?: string };
    const sig = takeInterrupt();
    if (sig) {
      // The shell's convention for a command a signal ended, after it cleaned up.
      io.stderr(`dmaload ${cmd}: interrupted (${sig})\n`);
      return 128 + os.constants.signals[sig];
    }
    const usage = e instanceof UsageError || (typeof err.code === 'string' && err.code.startsWith('ERR_PARSE_ARGS'));
    if (process.env.DMALOAD_DEBUG === '1') io.stderr(`${err.stack}\n`);
    if (usage) {
      const message = /UNKNOWN_OPTION$/.test(err.code ?? '') ? parseErrorMessage(err, await helpOf(run)) : err.message;
      io.stderr(`dmaload ${cmd}: ${message}\nRun 'dmaload ${cmd} --help' for usage.\n`);
      return 2;
    }
    const code = err.code && !err.message.startsWith(err.code) ? `${err.code}: ` : '';
    const path = e instanceof DmaloadError && err.message.indexOf(e.path ?? '\0') < 0 && e.path ? ` (${e.path})` : '';
    // Messages quote names and paths from files (tensor names, an index's shard names): escaped for the terminal.
    io.stderr(printable(`dmaload ${cmd}: ${code}${err.message}${path}\n`, '\n'));
    return 1;
  }
}

/** A command's --help text: the one list of its flags. */
async function helpOf(run: Command): Promise<string> {
  let help = '';
  await run(['--help'], { ...processIO, stdout: (s: string) => void (help += s), stderr: () => {}, isTTY: false });
  return help;
}
