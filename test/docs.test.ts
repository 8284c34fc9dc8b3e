/**
 * The documentation's examples run. Every code block of README.md and docs/*.md marked runnable — a line
 * `<!-- runnable -->` right before its fence — is run as written, each in a fresh folder of its own:
 *
 * - ```js / ```mjs: saved as block.mjs and run by this node; ```ts: transpiled by TypeScript's transpileModule (no
 *   type check; `await using` is lowered, so it runs on Node 20), then run the same way;
 * - ```sh / ```bash: run by `bash -euo pipefail`.
 *
 * The folder is a project that installed dmaload: node_modules/dmaload links to this repository (so `import 'dmaload'`
 * resolves through package.json's exports to dist/, as an installed copy would), node_modules/onnxruntime-node to the
 * devDependency, and PATH starts with an `npx` that runs `node bin/dmaload.js` for `npx dmaload …` and refuses
 * anything else (a runnable block never goes to the network; the real npx may). Its inputs are small and generated:
 * model.bin (8 MiB), model.safetensors (lm_head.weight and two more tensors), model.onnx and model.onnx_data (a Gemm,
 * X float32 [4, 8192] → Y [4, 16]). A block fails the test if it exits non-zero or runs over 20 s; the test also
 * fails when no block is marked, so the marker cannot silently vanish, and when a ```js/```mjs block anywhere in the
 * docs uses `await using` (a SyntaxError in a .mjs on Node 20 and 22).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import ts from 'typescript';
import { makeFile, repoRoot, tempDir } from './helpers.js';
import { raw, writeSafetensors } from './formats/model-files.js';
import { writeGemmModel } from './onnx-writer.js';

interface Block {
  file: string;
  line: number;
  lang: string;
  code: string;
  runnable: boolean;
}

const MARKER = /^<!--\s*runnable\s*-->$/;
const RUNNERS = new Set(['js', 'mjs', 'ts', 'sh', 'bash']);

/** Every fenced code block of a Markdown file, with its language and whether the line before it is the marker. */
function blocksOf(file: string): Block[] {
  const lines = readFileSync(join(repoRoot, file), 'utf8').split('\n');
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)(`{3,}|~{3,})\s*([\w-]*)/.exec(lines[i]!);
    if (!open) continue;
    const fence = open[2]!;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && !lines[i]!.trim().startsWith(fence); i++) body.push(lines[i]!);
    blocks.push({
      file,
      line: start + 1,
      lang: open[3]!.toLowerCase(),
      code: body.join('\n') + '\n',
      runnable: start > 0 && MARKER.test(lines[start - 1]!.trim()),
    });
  }
  return blocks;
}

const docFiles = [
  'README.md',
  ...readdirSync(join(repoRoot, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .sort()
    .map((f) => `docs/${f}`),
];
const all = docFiles.flatMap(blocksOf);
const runnable = all.filter((b) => b.runnable);

/** A fresh folder set up as a project that installed dmaload, with the generated inputs. */
function project(): { dir: string; env: NodeJS.ProcessEnv; cleanup: () => void } {
  const { dir, cleanup } = tempDir('dmaload-docs-');
  mkdirSync(join(dir, 'node_modules'));
  symlinkSync(repoRoot, join(dir, 'node_modules', 'dmaload'));
  symlinkSync(join(repoRoot, 'node_modules', 'onnxruntime-node'), join(dir, 'node_modules', 'onnxruntime-node'));
  const bin = join(dir, '.bin');
  mkdirSync(bin);
  const npx = join(bin, 'npx');
  writeFileSync(
    npx,
    `#!/bin/sh\nif [ "$1" = dmaload ]; then shift; exec ${JSON.stringify(process.execPath)} ${JSON.stringify(join(repoRoot, 'bin', 'dmaload.js'))} "$@"; fi\n` +
      `echo "docs test: a runnable block may run only 'npx dmaload', not: npx $*" >&2; exit 127\n`,
  );
  chmodSync(npx, 0o755);
  makeFile(dir, 'model.bin', 8 << 20);
  const f16 = (n: number): Uint8Array => raw(Uint16Array.from({ length: n }, (_, i) => 0x3c00 + (i % 512))); // F16 around 1.0
  writeSafetensors(join(dir, 'model.safetensors'), [
    { name: 'lm_head.weight', dtype: 'F16', shape: [64, 128], data: f16(64 * 128) },
    { name: 'model.embed_tokens.weight', dtype: 'F16', shape: [64, 128], data: f16(64 * 128) },
    { name: 'model.norm.weight', dtype: 'F32', shape: [128], data: raw(new Float32Array(128).fill(1)) },
  ]);
  writeGemmModel(dir, { M: 4, K: 8192, N: 16 });
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${bin}:${join(repoRoot, 'node_modules', '.bin')}:${process.env.PATH ?? ''}` };
  delete env.NODE_OPTIONS; // a block runs as a user's script would, not under the test runner's options
  return { dir, env, cleanup };
}

/** The block as a file to run, and the command that runs it. */
function prepare(b: Block, dir: string): string[] {
  if (b.lang === 'sh' || b.lang === 'bash') {
    writeFileSync(join(dir, 'block.sh'), b.code);
    return ['bash', '-euo', 'pipefail', 'block.sh'];
  }
  let code = b.code;
  if (b.lang === 'ts') {
    const out = ts.transpileModule(code, {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, lib: ['lib.es2022.d.ts', 'lib.esnext.disposable.d.ts'] },
      reportDiagnostics: true,
    });
    const errors = (out.diagnostics ?? []).map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n'));
    assert.deepEqual(errors, [], `${b.file}:${b.line}: the TypeScript does not parse`);
    code = out.outputText;
  }
  writeFileSync(join(dir, 'block.mjs'), code);
  return [process.execPath, 'block.mjs'];
}

test('the docs mark runnable blocks (README.md among them)', () => {
  assert.ok(runnable.length > 0, 'no code block in README.md or docs/*.md is marked <!-- runnable -->');
  assert.ok(
    runnable.some((b) => b.file === 'README.md'),
    'README.md marks no code block runnable',
  );
  for (const b of runnable) assert.ok(RUNNERS.has(b.lang), `${b.file}:${b.line}: a runnable block must be js, mjs, ts, sh or bash, not '${b.lang}'`);
});

test('no js/mjs block uses `await using` (a SyntaxError in a .mjs on Node 20 and 22: fence it as ts)', () => {
  const files = [...docFiles, 'clients/python/README.md'];
  const bad = files
    .flatMap(blocksOf)
    .filter((b) => /^(js|mjs|javascript|cjs)$/.test(b.lang) && /\bawait\s+using\b/.test(b.code))
    .map((b) => `${b.file}:${b.line}`);
  assert.deepEqual(bad, []);
});

for (const b of runnable) {
  test(`${b.file}:${b.line} (${b.lang}) runs`, { timeout: 30_000 }, () => {
    const { dir, env, cleanup } = project();
    try {
      const argv = prepare(b, dir);
      const r = spawnSync(argv[0]!, argv.slice(1), { cwd: dir, env, encoding: 'utf8', timeout: 20_000, killSignal: 'SIGKILL' });
      const output = `--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
      assert.ifError(r.error);
      assert.equal(r.signal, null, `${b.file}:${b.line} was killed by ${r.signal} (over 20 s?)\n${output}`);
      assert.equal(r.status, 0, `${b.file}:${b.line} exited ${r.status} (run in ${dir}, removed since)\n${output}`);
    } finally {
      cleanup();
    }
  });
}
