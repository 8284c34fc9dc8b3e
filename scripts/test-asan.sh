#!/usr/bin/env bash
# Builds the addon with AddressSanitizer + UndefinedBehaviorSanitizer into build-asan/Release/dmaload.node (build/
# keeps the normal build) and runs the test suite against it. Fails on a non-zero exit or on any sanitizer report.
#   scripts/test-asan.sh              runs the host suite: node scripts/test.mjs
#   scripts/test-asan.sh CMD ARGS...  runs CMD instead (e.g. node some-script.mjs), with the same environment
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/build-asan"
work="$out/src"
san="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"

# node-gyp always builds in ./build, so build a copy of the addon's sources in build-asan/src.
rm -rf "$work"
mkdir -p "$work/node_modules" "$out/Release"
echo '*' >"$out/.gitignore"  # build output, never committed
cp -r "$root/native" "$root/binding.gyp" "$work/"
ln -s "$root/node_modules/node-addon-api" "$work/node_modules/node-addon-api"
gyp="$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js"
[ -f "$gyp" ] || gyp="$(command -v node-gyp)"
nodedir=()
[ -n "${npm_config_nodedir:-}" ] && nodedir=(--nodedir="$npm_config_nodedir")
[ ${#nodedir[@]} -eq 0 ] && [ -f /usr/include/node/node_api.h ] && nodedir=(--nodedir=/usr)
(cd "$work" && CXXFLAGS="$san -g -O1" LDFLAGS="$san" node "$gyp" rebuild "${nodedir[@]}" -j "$(nproc)" >"$out/build.log" 2>&1) || {
  cat "$out/build.log"
  echo "test-asan: build failed" >&2
  exit 1
}
cp "$work/build/Release/dmaload.node" "$out/Release/dmaload.node"

# Node itself is not instrumented: preload the runtimes, skip leak checks (V8 keeps memory to exit) and the
# link-order check, and stop at the first report.
export DMALOAD_ADDON="$out/Release/dmaload.node"
export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)${LD_PRELOAD:+ $LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:verify_asan_link_order=0:halt_on_error=1:abort_on_error=1:detect_odr_violation=0:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

log="$out/test.log"
cd "$root"
if [ $# -eq 0 ]; then set -- node scripts/test.mjs; fi
set +e
"$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if grep -qE "ERROR: AddressSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer" "$log"; then
  echo "test-asan: sanitizer report (see $log)" >&2
  exit 1
fi
if [ "$rc" -ne 0 ]; then
  echo "test-asan: exit code $rc" >&2
  exit "$rc"
fi
echo "test-asan: no sanitizer reports"
