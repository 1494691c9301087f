#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy with -D warnings, and the whole test suite
# (unit, conformance and end-to-end tests against a real nats-server).
set -euo pipefail
cd "$(dirname "$0")/.."
. ops/lib.sh

ensure_nats_server
echo "nats-server: $(nats-server --version)"

# promtool lints every /metrics endpoint (tests/tests/metrics.rs); Debian's `prometheus`
# package provides /usr/bin/promtool.
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing promtool (Debian package prometheus)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } \
      || echo "installing promtool failed: the metrics lint will be skipped (it fails under CI=1)" >&2
  else
    echo "promtool not on PATH and not root: the metrics lint will be skipped (it fails under CI=1)" >&2
  fi
fi
if command -v promtool >/dev/null 2>&1; then
  echo "promtool: $(promtool --version 2>&1 | head -n1)"
fi

if docker compose version >/dev/null 2>&1; then
  docker compose -f compose.yaml config -q
  echo "compose.yaml: valid"
else
  echo "docker compose plugin not present: compose.yaml not checked"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The fault and attack suites run the service binaries as processes (tests/src/cluster.rs).
cargo build --workspace --bins --locked
cargo test --workspace --locked
