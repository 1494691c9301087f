#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy with -D warnings, and the whole test suite
# (unit, conformance and end-to-end tests against a real nats-server).
set -euo pipefail
cd "$(dirname "$0")/.."
. ops/lib.sh

ensure_nats_server
echo "nats-server: $(nats-server --version)"

if docker compose version >/dev/null 2>&1; then
  docker compose -f compose.yaml config -q
  echo "compose.yaml: valid"
else
  echo "docker compose plugin not present: compose.yaml not checked"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
