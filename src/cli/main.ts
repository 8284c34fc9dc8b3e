/** The dmaload CLI. Takes its argv as a parameter so tests can call it. */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { UsageError, errorJson, errorReport, errorText, parseErrorMessage, processIO, reportUsage, takeInterrupt, wantsJson } from './io.js';
import type { CliIO } from './io.js';
import { OPTION_FLAGS, flagError } from './flags.js';

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

Sizes are written 4096, 4k, 32MiB, 32MB or 1.5g: B, K, M, G, T with or without B or iB, any case, each a power
of 1024 (1MB = 1MiB). With --json a command prints one JSON document, an error too ({ "error": { code, message,
path } }). Exit status: 0 done, 1 failed, 2 usage error (a flag, argument or DMALOAD_ variable), 128 + N after
signal N.

Run 'dmaload <command> --help' for a command's options.
`;

/** The version in dmaload's own package.json (three folders above dist/src/cli). */
export function version(): string {
  return (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
}

type Command = (argv: string[], io: CliIO) => Promise<number>;

// Each command's module is loaded when it runs: a command starts without the others' (bench's, serve's) start-up.
const commands: Record<string, () => Promise<Command>> = {
  load: async () => (await import('./load.js')).loadCommand,
  probe: async () => (await import('./probe.js')).probeCommand,
  bench: async () => (await import('./bench.js')).benchCommand,
  inspect: async () => (await import('./inspect.js')).inspectCommand,
  cp: async () => (await import('./cp.js')).cpCommand,
  serve: async () => (await import('./serve.js')).serveCommand,
  verify: async () => (await import('./verify.js')).verifyCommand,
  pull: async () => (await import('./pull.js')).pullCommand,
};

/** The commands that take --json: with it, whatever happens, one JSON document on stdout. */
const JSON_COMMANDS: ReadonlySet<string> = new Set(['load', 'cp', 'verify', 'probe', 'inspect', 'bench', 'pull']);

/**
 * Runs the CLI; resolves with the exit status: 0 ok, 1 failure, 2 usage error (a flag, argument or DMALOAD_ variable
 * that is not right, named as the CLI spells it), 128 + n after signal n (SIGINT, SIGTERM, SIGHUP) interrupted a
 * command, which removed what it had made. With --json, a failure is one JSON document on stdout, `{ "error": { code,
 * message, path } }`, instead of text on stderr. Never throws.
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
  const which = Object.hasOwn(commands, cmd) ? commands[cmd] : undefined;
  if (!which) {
    io.stderr(`dmaload: unknown command '${cmd}'\n\n${HELP}`);
    return 2;
  }
  const run = await which();
  takeInterrupt();
  // Whether the command printed its results: an error after them (a chart that cannot be written) is then text.
  let printed = false;
  const json = JSON_COMMANDS.has(cmd) && wantsJson(rest);
  try {
    return await run(rest, {
      ...io,
      stdout: (s) => {
        printed = true;
        io.stdout(s);
      },
    });
  } catch (e) {
    return await failed(cmd, run, e, io, json && !printed);
  }
}

/** Reports why command `cmd` failed; resolves with the exit status. */
async function failed(cmd: string, run: Command, e: unknown, io: CliIO, json: boolean): Promise<number> {
  const sig = takeInterrupt();
  if (process.env.DMALOAD_DEBUG === '1') io.stderr(`${(e as Error)?.stack}\n`);
  if (sig) {
    // The shell's convention for a command a signal ended, after it cleaned up.
    const r = { code: 'ABORT_ERR', message: `interrupted (${sig})` };
    io[json ? 'stdout' : 'stderr'](json ? errorJson(r) : `dmaload ${cmd}: ${r.message}\n`);
    return 128 + os.constants.signals[sig];
  }
  const usage = await usageError(e, cmd, run);
  if (usage) return reportUsage(io, cmd, usage, json);
  const r = errorReport(e);
  if (json) io.stdout(errorJson(r));
  else io.stderr(`dmaload ${cmd}: ${errorText(r)}\n`);
  return 1;
}

/**
 * The error as a usage error, if it is one: the CLI's own, the argument parser's (an unknown flag named with the
 * nearest known one), or the library's refusal of a value that came from this command's flags or a variable.
 */
async function usageError(e: unknown, cmd: string, run: Command): Promise<UsageError | undefined> {
  if (e instanceof UsageError) return e;
  const err = e as Error & { code?: unknown };
  if (typeof err?.code === 'string' && err.code.startsWith('ERR_PARSE_ARGS'))
    return new UsageError(/UNKNOWN_OPTION$/.test(err.code) ? parseErrorMessage(err, await helpOf(run)) : err.message);
  return flagError(e, OPTION_FLAGS[cmd] ?? {});
}

/** A command's --help text: the one list of its flags. */
async function helpOf(run: Command): Promise<string> {
  let help = '';
  await run(['--help'], { ...processIO, stdout: (s: string) => void (help += s), stderr: () => {}, isTTY: false });
  return help;
}
