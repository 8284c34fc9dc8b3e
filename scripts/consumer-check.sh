#!/usr/bin/env bash
# The package as a user gets it: `npm pack`, then the tarball installed into a new project where no C++ compiler is
# on PATH, and there:
#   (a) test/consumer/types.ts.in (importing { load, loadModel, inspect } from 'dmaload') type-checks with
#       tsc --strict --module nodenext --moduleResolution nodenext against the shipped .d.ts;
#   (b) test/consumer/require.cjs: require('dmaload') from CommonJS;
#   (c) test/consumer/load.mjs: a few MiB of random bytes loaded with load(), sha256 of buffer.bytes = the file's;
#   (d) `npx dmaload --version` prints the package's version, `npx dmaload --help` exits 0.
# It also checks the tarball's file list, that the install used the prebuilt (no build/ in the package), and (e) that
# an install whose scripts do not run (--ignore-scripts, or npm's allowScripts denying them) loads just the same.
#
# Usage: scripts/consumer-check.sh (from anywhere; packs the repo it sits in)
#   NODE=/path/to/node      run the install and the checks with this node (default: node on PATH)
#   TARBALL=/path/to.tgz    check this tarball instead of packing (e.g. one packed for an earlier run)
#   CONSUMER_TS, CONSUMER_TYPES_NODE   versions for the consumer (default: the repo's installed typescript and
#                                      @types/node)
#   DMALOAD_CHECK_DIR       the folder for (c)'s file; it must support O_DIRECT (default: the first of the
#                           consumer's temp folder, /var/tmp, the repo's .cache/ that does)
#   KEEP=1                  keep the temp folders (their path is printed)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FIXTURES=$ROOT/test/consumer
START=$SECONDS
step() { printf '\n== %s (%ds)\n' "$*" $((SECONDS - START)); }
fail() { printf '\nconsumer-check: FAIL: %s\n' "$*" >&2; exit 1; }

# Nothing from the caller may steer the install or the addon choice (npm run exports its config as npm_*).
while read -r v; do unset "$v"; done < <(compgen -e | grep -E '^(npm_|NPM_CONFIG_|INIT_CWD$)' || true)
unset DMALOAD_ADDON DMALOAD_BUILD_FROM_SOURCE

NODE=${NODE:-$(command -v node || true)}
[[ -n $NODE ]] && NODE=$(command -v "$NODE" || true)
[[ -n $NODE && -x $NODE ]] || fail "no node binary (set NODE)"
NODE=$(readlink -f "$NODE")
NPM_CLI=$(readlink -f "$(command -v npm)") || fail "npm is not on PATH"
NPX_CLI=$(dirname "$NPM_CLI")/npx-cli.js
[[ -f $NPX_CLI ]] || fail "no npx-cli.js beside $NPM_CLI"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dmaload-consumer.XXXXXX")
cleanup() { if [[ ${KEEP:-} == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
APP=$WORK/app
BIN=$WORK/bin  # the only PATH the install and the checks get: node, npm, npx, sh
mkdir -p "$APP" "$BIN" "$WORK/pack"

# 0. The tarball.
if [[ -n ${TARBALL:-} ]]; then
  TARBALL=$(readlink -f "$TARBALL")
  [[ -f $TARBALL ]] || fail "TARBALL=$TARBALL does not exist"
else
  step "npm pack (prepack: TypeScript build + prebuilt addon)"
  if ! (cd "$ROOT" && npm pack --pack-destination "$WORK/pack" >"$WORK/pack.log" 2>&1); then
    tail -n 40 "$WORK/pack.log" >&2
    fail "npm pack failed (log above)"
  fi
  TARBALL=$(ls "$WORK"/pack/*.tgz)
fi
echo "tarball: $TARBALL ($(du -k "$TARBALL" | cut -f1) KiB)"
VERSION=$(tar -xOzf "$TARBALL" package/package.json | "$NODE" -p 'JSON.parse(require("fs").readFileSync(0, "utf8")).version')

step "tarball contents"
tar -tzf "$TARBALL" | sort >"$WORK/files"
for f in package/package.json package/README.md package/bin/dmaload.js package/dist/src/index.js \
  package/dist/src/index.d.ts package/dist/src/cli/main.js package/dist/src/bench/bench.js \
  package/prebuilds/linux-x64/dmaload.glibc.node package/native/addon.cc package/binding.gyp \
  package/scripts/install.mjs package/scripts/prebuilt.mjs; do
  grep -qxF "$f" "$WORK/files" || fail "the tarball lacks $f"
done
if grep -E '^package/(dist/test/|test/|src/|build/|\.cache/|node_modules/|scripts/kernel/)|\.map$|\.tgz$' "$WORK/files"; then
  fail "the tarball holds files a user must not get (listed above)"
fi
echo "$(wc -l <"$WORK/files") files, version $VERSION"

# 1. The consumer project and its TypeScript toolchain, from the registry, while the normal PATH still applies.
ln -s "$NODE" "$BIN/node"
ln -s "$NPM_CLI" "$BIN/npm"
ln -s "$NPX_CLI" "$BIN/npx"
ln -s "$(command -v sh)" "$BIN/sh" # npm runs lifecycle scripts (dmaload's install script) with sh
repo_version() { "$NODE" -p "try { require('$ROOT/node_modules/$1/package.json').version } catch { '$2' }"; }
TS=${CONSUMER_TS:-typescript@$(repo_version typescript 5)}
TYPES_NODE=${CONSUMER_TYPES_NODE:-@types/node@$(repo_version @types/node 20)}
CONSUMER_JSON='{ "name": "dmaload-consumer", "version": "1.0.0", "private": true, "type": "module" }'
echo "$CONSUMER_JSON" >"$APP/package.json"
step "consumer: npm install $TS $TYPES_NODE (node $("$NODE" --version), npm $(PATH="$BIN:$PATH" npm --version))"
(cd "$APP" && PATH="$BIN:$PATH" npm install --no-audit --no-fund --save-dev "$TS" "$TYPES_NODE" >"$WORK/tools.log" 2>&1) ||
  { cat "$WORK/tools.log" >&2; fail "installing $TS $TYPES_NODE failed"; }

# 2. From here on PATH is $BIN alone: no compiler, no make.
run() { (cd "$APP" && PATH="$BIN" "$@"); }
for c in g++ gcc cc c++ clang clang++ make; do
  if found=$(run sh -c "command -v $c"); then fail "$c is reachable ($found) though PATH is $BIN"; fi
done
echo "no g++/gcc/cc/c++/clang/make on PATH=$BIN"

step "consumer: npm install the tarball with no compiler on PATH"
run npm install --no-audit --no-fund --foreground-scripts "$TARBALL" >"$WORK/install.log" 2>&1 ||
  { cat "$WORK/install.log" >&2; fail "npm install of the tarball failed without a compiler"; }
sed 's/^/  | /' "$WORK/install.log"
PKG=$APP/node_modules/dmaload
[[ -f $PKG/prebuilds/linux-x64/dmaload.glibc.node ]] || fail "the installed package has no prebuilt addon"
[[ ! -e $PKG/build ]] || fail "the install built the addon ($PKG/build exists) instead of using the prebuilt"

cp "$FIXTURES/types.ts.in" "$APP/check.ts"
cp "$FIXTURES/require.cjs" "$FIXTURES/load.mjs" "$APP/"

step "(a) tsc --strict --module nodenext --moduleResolution nodenext --noEmit check.ts (typescript $(run node -p 'require("typescript/package.json").version'))"
run node_modules/.bin/tsc --strict --module nodenext --moduleResolution nodenext --noEmit check.ts ||
  fail "(a) the shipped types do not type-check in a consumer"
echo "ok"

step "(b) require('dmaload') from CommonJS"
run node require.cjs || fail "(b) require('dmaload') from CommonJS failed"

step "(c) load() of random bytes, sha256 compared"
if [[ -n ${DMALOAD_CHECK_DIR:-} ]]; then DIRS=("$DMALOAD_CHECK_DIR"); else DIRS=("$WORK" /var/tmp "$ROOT/.cache"); mkdir -p "$ROOT/.cache"; fi
run node load.mjs "${DIRS[@]}" || fail "(c) a load from the installed package failed or returned the wrong bytes"

step "(d) npx dmaload --version / --help"
# As a user types it; the local bin must be there, or npx would fetch a 'dmaload' from the registry instead.
[[ -x $APP/node_modules/.bin/dmaload ]] || fail "(d) the install linked no node_modules/.bin/dmaload"
got=$(run npx dmaload --version) || fail "(d) npx dmaload --version exited non-zero"
[[ $got =~ ^(dmaload[[:space:]]+)?v?${VERSION//./\\.}$ ]] || fail "(d) npx dmaload --version printed '$got', expected $VERSION"
echo "--version: $got"
help=$(run npx dmaload --help) || fail "(d) npx dmaload --help exited non-zero"
grep -q '^Usage: dmaload' <<<"$help" || fail "(d) npx dmaload --help printed no usage: $help"
echo "--help: $(head -n 1 <<<"$help")"

step "(e) installed with --ignore-scripts: the prebuilt needs no install step"
mkdir -p "$WORK/bare"
echo "$CONSUMER_JSON" >"$WORK/bare/package.json"
cp "$FIXTURES/load.mjs" "$WORK/bare/"
(cd "$WORK/bare" && PATH="$BIN" npm install --no-audit --no-fund --ignore-scripts "$TARBALL" >"$WORK/bare.log" 2>&1) ||
  { cat "$WORK/bare.log" >&2; fail "(e) npm install --ignore-scripts of the tarball failed"; }
(cd "$WORK/bare" && PATH="$BIN" node load.mjs "${DIRS[@]}") || fail "(e) with no install script run, load() failed"

printf '\nconsumer-check: OK (node %s, dmaload %s) in %ds\n' "$("$NODE" --version)" "$VERSION" $((SECONDS - START))
