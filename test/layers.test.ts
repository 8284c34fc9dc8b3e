/**
 * The layer rule of ARCHITECTURE.md, checked: every import in src/**\/*.ts (static, type-only, re-exports and
 * dynamic `import()`) goes to its own layer or one below it, never up, and never out of src/. formats/ is pure: no
 * I/O modules. The order lives in LAYERS below and, word for word, in ARCHITECTURE.md; a test keeps the two equal.
 */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

// Not helpers.ts's repoRoot: that module loads the addon, and this test reads only text.
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * Bottom to top: a file in one layer may import files of its own layer and of the layers before it. A layer is a
 * folder of src/ (src/index.ts, the package's root re-exports, is the layer 'index').
 */
const LAYERS = ['core', 'formats', 'engine', 'targets', 'pipeline', 'api', 'share', 'index', 'bench', 'cli'] as const;

/** Node modules that do I/O: formats/ parses bytes already in memory and must not reach for any of them. */
const IO_MODULES = new Set(['fs', 'fs/promises', 'net', 'dgram', 'child_process', 'worker_threads', 'http', 'https', 'http2', 'tls', 'cluster']);

interface Import {
  specifier: string | undefined; // undefined: a dynamic import of a computed name, which no reader can check
  line: number;
}

/** Every module a source file names: import/export … from, import x = require(), import() and require(). */
function importsOf(fileName: string, text: string): Import[] {
  const sf = ts.createSourceFile(fileName, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const out: Import[] = [];
  const add = (node: ts.Node, spec: ts.Expression | undefined): void => {
    const line = sf.getLineAndCharacterOfPosition(node.getStart(sf)).line + 1;
    out.push({ specifier: spec && ts.isStringLiteralLike(spec) ? spec.text : undefined, line });
  };
  const visit = (node: ts.Node): void => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier) add(node, node.moduleSpecifier);
    else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) add(node, node.moduleReference.expression);
    else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) add(node, node.arguments[0]);
    else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument)) add(node, node.argument.literal);
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

/** The layer of a file under src/ (a path relative to src/, '/'-separated), or undefined if the table lacks it. */
function layerOf(rel: string): string | undefined {
  const name = rel === 'index.ts' ? 'index' : rel.includes('/') ? rel.slice(0, rel.indexOf('/')) : undefined;
  return name !== undefined && (LAYERS as readonly string[]).includes(name) ? name : undefined;
}

/** What is wrong with one file's imports: one line per broken import, `file:line → import: rule`. */
function violations(srcDir: string, file: string, text: string): string[] {
  const rel = relative(srcDir, file).split(sep).join('/');
  const from = layerOf(rel);
  if (from === undefined) return [`src/${rel}: not in any layer (add its folder to LAYERS and to ARCHITECTURE.md)`];
  const out: string[] = [];
  for (const { specifier, line } of importsOf(file, text)) {
    const where = `src/${rel}:${line}`;
    if (specifier === undefined) {
      out.push(`${where} → import(<computed>): a module name must be a string literal, so that its layer can be checked`);
      continue;
    }
    if (!specifier.startsWith('.')) {
      const builtin = specifier.replace(/^node:/, '');
      if (from === 'formats' && IO_MODULES.has(builtin)) out.push(`${where} → ${specifier}: formats/ are pure parsers and do no I/O`);
      continue;
    }
    const target = relative(srcDir, resolve(dirname(file), specifier))
      .split(sep)
      .join('/');
    if (target.startsWith('../')) {
      out.push(`${where} → ${specifier}: src/ imports nothing outside src/ (tools/ and test/ build on src/, not under it)`);
      continue;
    }
    const to = layerOf(target.replace(/\.js$/, '.ts'));
    if (to === undefined) {
      out.push(`${where} → ${specifier}: the target is in no layer`);
      continue;
    }
    if (LAYERS.indexOf(to as (typeof LAYERS)[number]) > LAYERS.indexOf(from as (typeof LAYERS)[number])) {
      out.push(`${where} → ${specifier}: ${from} imports ${to}, a layer above it (order, bottom up: ${LAYERS.join(' ← ')})`);
    }
  }
  return out;
}

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    return e.isDirectory() ? sources(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

const srcDir = join(repoRoot, 'src');

test('the checker finds every kind of import, and each kind of climb', () => {
  // A made-up engine file: the rule must catch each of these, or the empty list below would prove nothing.
  const file = join(srcDir, 'engine', 'made-up.ts');
  const text = [
    "import { a } from '../core/util.js';", // down: fine
    "import type { B } from '../api/load.js';", // up, type-only
    "export { c } from '../pipeline/plan.js';", // up, a re-export
    "const d = await import('../share/client.js');", // up, dynamic
    'const e = await import(name);', // computed
    "import { f } from '../../tools/bench/x.js';", // out of src
    "type G = import('../cli/main.js').G;", // up, an import type
    "import { h } from './memory.js';", // same layer: fine
    "import { readFileSync } from 'node:fs';", // fine outside formats
  ].join('\n');
  const found = violations(srcDir, file, text);
  assert.deepEqual(
    found.map((v) => v.slice(0, v.indexOf(': '))),
    [
      'src/engine/made-up.ts:2 → ../api/load.js',
      'src/engine/made-up.ts:3 → ../pipeline/plan.js',
      'src/engine/made-up.ts:4 → ../share/client.js',
      'src/engine/made-up.ts:5 → import(<computed>)',
      'src/engine/made-up.ts:6 → ../../tools/bench/x.js',
      'src/engine/made-up.ts:7 → ../cli/main.js',
    ],
  );
  assert.match(found[0]!, /→ \.\.\/api\/load\.js: engine imports api, a layer above it/);
  assert.match(found[4]!, /outside src/);
  // formats/ may not do I/O, with or without the node: prefix.
  const pure = violations(srcDir, join(srcDir, 'formats', 'made-up.ts'), "import { readFileSync } from 'node:fs';\nimport { open } from 'fs/promises';");
  assert.equal(pure.length, 2);
  assert.deepEqual(violations(srcDir, join(srcDir, 'made-up.ts'), '').length, 1, 'a file outside every layer');
});

test('no import in src/ climbs a layer', () => {
  const files = sources(srcDir);
  assert.ok(files.length > 40, `found only ${files.length} source files under ${srcDir}`);
  const broken = files.flatMap((f) => violations(srcDir, f, readFileSync(f, 'utf8')));
  assert.deepEqual(broken, [], `imports that break the layer order:\n${broken.join('\n')}`);
  const layersSeen = new Set(files.map((f) => layerOf(relative(srcDir, f).split(sep).join('/'))));
  for (const l of LAYERS) assert.ok(layersSeen.has(l), `no file in layer ${l}: drop it from the table or the docs are stale`);
});

test('ARCHITECTURE.md states the same layer order', () => {
  const doc = readFileSync(join(repoRoot, 'ARCHITECTURE.md'), 'utf8');
  const line = LAYERS.map((l) => `\`${l}\``).join(' ← ');
  assert.ok(doc.includes(line), `ARCHITECTURE.md should state the order as: ${line}`);
});
