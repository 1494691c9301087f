#!/usr/bin/env bash
# Runs the whole pipeline on this machine: nats-server (JetStream, data under the data dir),
# one ingest worker, one fanout worker and one edge on the embedded SQLite store.
# Prints the URL, a demo token and `ready`; Ctrl-C stops everything.
#
#   LEGATO_DATA_DIR  data directory (default ./.data)
#   JWT_SECRET       HS256 secret (default legato-dev-secret)
#   NATS_PORT        broker port (default 4222)
#   LEGATO_PROFILE   cargo profile: release (default) or dev
set -euo pipefail
cd "$(dirname "$0")/.."
. ops/lib.sh

export LEGATO_DATA_DIR="${LEGATO_DATA_DIR:-./.data}"
if [ -z "${JWT_SECRET:-}" ]; then
  export JWT_SECRET=legato-dev-secret
  echo "JWT_SECRET not set: using the development secret 'legato-dev-secret'"
fi
NATS_PORT="${NATS_PORT:-4222}"
export NATS_URL="${NATS_URL:-nats://127.0.0.1:$NATS_PORT}"
# Every process here is of one build: envelopes in the positional form (README, "Upgrading").
export LEGATO_NATS__ENVELOPES="${LEGATO_NATS__ENVELOPES:-positional}"
PROFILE="${LEGATO_PROFILE:-release}"

ensure_nats_server
cargo build --profile "$PROFILE" --bins
case "$PROFILE" in dev) BIN=target/debug ;; *) BIN="target/$PROFILE" ;; esac

mkdir -p "$LEGATO_DATA_DIR/nats" "$LEGATO_DATA_DIR/logs"
pids=()
cleanup() {
  trap - INT TERM EXIT
  echo "stopping..."
  # Edge and workers first (they drain into the broker), the broker last.
  for ((i=${#pids[@]}-1; i>0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
  for ((i=${#pids[@]}-1; i>0; i--)); do wait "${pids[$i]}" 2>/dev/null || true; done
  kill "${pids[0]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

# Own session: Ctrl-C reaches the services first; the broker is stopped last, by cleanup.
setsid nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$LEGATO_DATA_DIR/nats" \
  >"$LEGATO_DATA_DIR/logs/nats.log" 2>&1 &
pids+=($!)
"$BIN/legato-ingest" 2> >(tee -a "$LEGATO_DATA_DIR/logs/ingest.log" >&2) &
pids+=($!)
"$BIN/legato-fanout" 2> >(tee -a "$LEGATO_DATA_DIR/logs/fanout.log" >&2) &
pids+=($!)
"$BIN/legato-edge" 2> >(tee -a "$LEGATO_DATA_DIR/logs/edge.log" >&2) &
pids+=($!)

EDGE="http://127.0.0.1:8787"
for _ in $(seq 1 300); do
  if curl -fsS "$EDGE/readyz" >/dev/null 2>&1; then break; fi
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "a process exited during start-up; see $LEGATO_DATA_DIR/logs" >&2; exit 1; }
  done
  sleep 0.1
done
curl -fsS "$EDGE/readyz" >/dev/null || { echo "edge not ready after 30 s" >&2; exit 1; }

TOKEN=$("$BIN/legato-edge" gen-token demo-user)
cat <<INFO
Legato is running.
  HTTP + WebSocket: $EDGE   (admin: edge :9787, ingest :9788, fanout :9789)
  NATS:             $NATS_URL
  data:             $LEGATO_DATA_DIR
  demo token (user demo-user):
    $TOKEN
ready
INFO
wait -n "${pids[@]}"
echo "a process exited; stopping the rest" >&2
