/**
 * The layer rule of ARCHITECTURE.md, checked: every import in src/**\/*.ts (static, type-only, re-exports and
 * dynamic `import()`) goes to its own layer or one below it, never up, and never out of src/. formats/ is pure: no
 * I/O modules. The order lives in LAYERS below and, word for word, in ARCHITECTURE.md; a test keeps the two equal.
 * Within a layer too, files import each other one way only (no import cycle), and no function is over
 * MAX_FUNCTION_LINES lines.
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

/** The src/ file (relative to src/, '/'-separated) that a relative import names, or undefined for any other import. */
function importedFile(srcDir: string, file: string, specifier: string | undefined): string | undefined {
  if (specifier === undefined || !specifier.startsWith('.')) return undefined;
  const target = relative(srcDir, resolve(dirname(file), specifier))
    .split(sep)
    .join('/');
  return target.startsWith('../') ? undefined : target.replace(/\.js$/, '.ts');
}

/** Who imports whom under src/: every kind of import, as for the layers, each edge with the importing line. */
function importGraph(srcDir: string, files: ReadonlyMap<string, string>): Map<string, Array<{ to: string; line: number }>> {
  const graph = new Map<string, Array<{ to: string; line: number }>>();
  for (const [file, text] of files) {
    const rel = relative(srcDir, file).split(sep).join('/');
    const edges = importsOf(file, text).flatMap(({ specifier, line }) => {
      const to = importedFile(srcDir, file, specifier);
      return to === undefined ? [] : [{ to, line }];
    });
    graph.set(rel, edges);
  }
  return graph;
}

/**
 * The import cycles of a graph, one line each: `src/a.ts:3 → src/b.ts:7 → src/a.ts`, one cycle per strongly connected
 * group of files (Tarjan), the shortest one through the group's first file. A type-only import counts like any other:
 * two files that name each other's types still cannot be read, moved or split one without the other.
 */
function importCycles(graph: ReadonlyMap<string, ReadonlyArray<{ to: string; line: number }>>): string[] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const groups: string[][] = [];
  const connect = (v: string): void => {
    index.set(v, index.size);
    low.set(v, index.get(v)!);
    stack.push(v);
    onStack.add(v);
    for (const { to } of graph.get(v) ?? []) {
      if (!graph.has(to)) continue;
      if (!index.has(to)) {
        connect(to);
        low.set(v, Math.min(low.get(v)!, low.get(to)!));
      } else if (onStack.has(to)) low.set(v, Math.min(low.get(v)!, index.get(to)!));
    }
    if (low.get(v) !== index.get(v)) return;
    const group: string[] = [];
    let w: string;
    do {
      w = stack.pop()!;
      onStack.delete(w);
      group.push(w);
    } while (w !== v);
    if (group.length > 1 || (graph.get(v) ?? []).some((e) => e.to === v)) groups.push(group.sort());
  };
  for (const v of [...graph.keys()].sort()) if (!index.has(v)) connect(v);
  return groups
    .sort((a, b) => (a[0]! < b[0]! ? -1 : 1))
    .map((group) => {
      // Breadth first from the group's first file, inside the group, back to that file.
      const start = group[0]!;
      const inGroup = new Set(group);
      const via = new Map<string, { from: string; line: number }>();
      const queue = [start];
      for (let i = 0; i < queue.length && !via.has(start); i++) {
        for (const { to, line } of graph.get(queue[i]!) ?? []) {
          if (!inGroup.has(to) || via.has(to)) continue;
          via.set(to, { from: queue[i]!, line });
          queue.push(to);
        }
      }
      const steps: string[] = [];
      let at = start;
      do {
        const { from, line } = via.get(at)!;
        steps.unshift(`src/${from}:${line}`);
        at = from;
      } while (at !== start);
      return `${steps.join(' → ')} → src/${start} (files in cycles with each other: ${group.map((f) => `src/${f}`).join(', ')})`;
    });
}

/** Longest a function may be, counted from its first line (`function …`, `name(…) {`, `(…) => {`) to its last. */
const MAX_FUNCTION_LINES = 100;

/**
 * The functions of a file (declarations, methods, accessors, constructors, function expressions and arrow
 * functions, nested ones on their own) over `max` lines, one line each: `src/file.ts:line name: N lines`. The
 * TypeScript parser finds where each ends, so braces in strings, templates, comments and regexes do not count; the
 * code is prettier-formatted (npm run lint), so these are the formatted lines.
 */
function longFunctions(srcDir: string, file: string, text: string, max = MAX_FUNCTION_LINES): string[] {
  const rel = relative(srcDir, file).split(sep).join('/');
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const out: string[] = [];
  const lineOf = (pos: number) => sf.getLineAndCharacterOfPosition(pos).line + 1;
  const visit = (node: ts.Node): void => {
    if (ts.isFunctionLike(node) && 'body' in node && node.body !== undefined) {
      const first = lineOf(node.getStart(sf));
      const lines = lineOf(node.getEnd()) - first + 1;
      if (lines > max) out.push(`src/${rel}:${first} ${functionName(node, sf)}: ${lines} lines (at most ${max})`);
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

/** A function's name as a reader finds it: its own, the variable or property it is assigned to, or its kind. */
function functionName(node: ts.SignatureDeclaration, sf: ts.SourceFile): string {
  if (ts.isConstructorDeclaration(node)) return 'constructor';
  if (node.name !== undefined) return node.name.getText(sf);
  const parent = node.parent;
  if ((ts.isVariableDeclaration(parent) || ts.isPropertyAssignment(parent) || ts.isPropertyDeclaration(parent)) && parent.name !== undefined) {
    return parent.name.getText(sf);
  }
  return ts.isArrowFunction(node) ? '(arrow function)' : '(function expression)';
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

test('the cycle checker finds a cycle of any length, a type-only one and a file importing itself', () => {
  const file = (rel: string) => join(srcDir, ...rel.split('/'));
  const texts = new Map([
    [file('api/a.ts'), "import { b } from './b.js';\nimport { x } from '../core/x.js';"],
    [file('api/b.ts'), "\nexport { c } from '../cli/c.js';"],
    [file('cli/c.ts'), "const a = await import('../api/a.js');"],
    [file('core/x.ts'), "import type { Y } from './y.js';"],
    [file('core/y.ts'), "import type { X } from './x.js';"],
    [file('core/z.ts'), "import { z } from './z.js';\nimport { x } from './x.js';"],
    [file('core/w.ts'), "import { x } from './x.js';\nimport { readFileSync } from 'node:fs';"],
  ]);
  assert.deepEqual(importCycles(importGraph(srcDir, texts)), [
    'src/api/a.ts:1 → src/api/b.ts:2 → src/cli/c.ts:1 → src/api/a.ts (files in cycles with each other: src/api/a.ts, src/api/b.ts, src/cli/c.ts)',
    'src/core/x.ts:1 → src/core/y.ts:1 → src/core/x.ts (files in cycles with each other: src/core/x.ts, src/core/y.ts)',
    'src/core/z.ts:1 → src/core/z.ts (files in cycles with each other: src/core/z.ts)',
  ]);
  texts.delete(file('core/y.ts'));
  texts.set(file('cli/c.ts'), "import { a } from '../api/a.js';\nimport { b } from '../api/b.js';");
  texts.set(file('api/b.ts'), '');
  texts.set(file('core/z.ts'), "import { x } from './x.js';");
  assert.deepEqual(importCycles(importGraph(srcDir, texts)), [], 'imports one way only: no cycle');
});

test('no import cycle in src/', () => {
  const files = new Map(sources(srcDir).map((f) => [f, readFileSync(f, 'utf8')]));
  const cycles = importCycles(importGraph(srcDir, files));
  assert.deepEqual(cycles, [], `import cycles (move what both files need to a third module):\n${cycles.join('\n')}`);
});

/**
 * The Python client's module graph: `from .X import …` and `from . import X, Y`, at the top of a file or inside a
 * function alike (a deferred import is still a cycle, only a hidden one), in the same shape importCycles() reads.
 */
function pythonGraph(dir: string): Map<string, Array<{ to: string; line: number }>> {
  const graph = new Map<string, Array<{ to: string; line: number }>>();
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.py'))) {
    const from = join(dir, f);
    const edges: Array<{ to: string; line: number }> = [];
    readFileSync(from, 'utf8')
      .split('\n')
      .forEach((text, i) => {
        const m = /^\s*from \.(\w*) import ([\w, ]+)/.exec(text);
        if (!m) return;
        const names = m[1] ? [m[1]] : m[2]!.split(',').map((x) => x.trim().split(' ')[0]!);
        for (const n of names) if (n && readdirSync(dir).includes(`${n}.py`)) edges.push({ to: join(dir, `${n}.py`), line: i + 1 });
      });
    graph.set(from, edges);
  }
  return graph;
}

test('no import cycle in the Python client', () => {
  const cycles = importCycles(pythonGraph(join(repoRoot, 'clients', 'python', 'dmaload_client')));
  assert.deepEqual(cycles, [], `import cycles (move what both modules need to a third):\n${cycles.join('\n')}`);
});

test('the length checker counts every kind of function, to its real end', () => {
  const file = join(srcDir, 'core', 'made-up.ts');
  const body = (n: number) => Array.from({ length: n }, (_, i) => `  const v${i} = '}'; // }`).join('\n');
  const text = [
    `export function fits() {\n${body(98)}\n}`, // 100 lines: fine
    `async function tooLong(a = { b: 1 }) {\n${body(99)}\n}`, // 101
    `class K {\n  method(): void {\n${body(99)}\n  }\n  constructor() {\n${body(99)}\n  }\n}`,
    `const arrow = async () => {\n  const re = /[{]/;\n  const t = \`\${'{'}\`;\n${body(97)}\n};`,
    `run(function () {\n${body(99)}\n});`,
    `const o = { get g() {\n${body(99)}\n} };`,
  ].join('\n');
  const found = longFunctions(srcDir, file, text, 100).map((l) => l.replace(/ \(at most 100\)$/, ''));
  const lineOf = (needle: string) => text.slice(0, text.indexOf(needle)).split('\n').length;
  assert.deepEqual(found, [
    `src/core/made-up.ts:${lineOf('async function tooLong')} tooLong: 101 lines`,
    `src/core/made-up.ts:${lineOf('method()')} method: 101 lines`,
    `src/core/made-up.ts:${lineOf('constructor()')} constructor: 101 lines`,
    `src/core/made-up.ts:${lineOf('const arrow')} arrow: 101 lines`,
    `src/core/made-up.ts:${lineOf('run(function')} (function expression): 101 lines`,
    `src/core/made-up.ts:${lineOf('get g()')} g: 101 lines`,
  ]);
});

test(`no function in src/ is over ${MAX_FUNCTION_LINES} lines`, () => {
  const long = sources(srcDir).flatMap((f) => longFunctions(srcDir, f, readFileSync(f, 'utf8')));
  assert.deepEqual(long, [], `functions to split into named helpers:\n${long.join('\n')}`);
});

test('ARCHITECTURE.md states the same layer order', () => {
  const doc = readFileSync(join(repoRoot, 'ARCHITECTURE.md'), 'utf8');
  const line = LAYERS.map((l) => `\`${l}\``).join(' ← ');
  assert.ok(doc.includes(line), `ARCHITECTURE.md should state the order as: ${line}`);
});
