#!/usr/bin/env bash
# Builds the release binaries and runs the benchmark harness against them.
#   ops/bench/run.sh [all|throughput|latency|propagation|idle|fanout]
# Environment: BENCH_RUNS (3), BENCH_SECONDS (3), BENCH_SESSIONS (10000), BENCH_PROCESSES (4);
# BENCH_ONLY=100x128,1x64 runs only those throughput shapes; BENCH_MAX_RATE=7700 gives
# `latency` its 100 % rate instead of measuring it; BENCH_LOADS=50 runs only that load;
# BENCH_DIAG=1 prints the services' histogram means (and >5 / >10 ms counts) after each
# latency run and throughput shape; BENCH_TRACE=FILE writes each latency request's number
# and latency (µs).
set -euo pipefail
cd "$(dirname "$0")/../.."
. ops/lib.sh
ensure_nats_server
cargo build --release --locked -p legato-edge -p legato-ingest -p legato-fanout -p legato-bench
exec target/release/legato-bench "$@"
