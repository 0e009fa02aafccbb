#!/usr/bin/env bash
# Measures the agent's footprint: stripped release binary size, RSS after a
# few heartbeats against a local server, and CPU time per heartbeat.
# Loopback only; bounded in time; stops what it started by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
HEARTBEATS=${HEARTBEATS:-20}

cargo build --profile agent -p oneprotect-agent --quiet
cargo build --release -p oneprotect-server --quiet
AGENT="$target_dir/agent/oneprotect-agent"
SERVER="$target_dir/release/oneprotect-server"
WORK=$(mktemp -d)
cleanup() {
  [ -n "${AGENT_PID:-}" ] && kill "$AGENT_PID" 2>/dev/null || true
  [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cp "$AGENT" "$WORK/agent" && strip "$WORK/agent"
SIZE=$(stat -c %s "$WORK/agent")

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export ONEPROTECT_ADMIN_JWT_SECRET=footprint-fixture-admin-secret-000000000000
export ONEPROTECT_TOKEN_HASH_KEY=footprint-fixture-hash-key-0000000000000000
export ONEPROTECT_AGENT_RUNTIME_TOKEN_SECRET=footprint-fixture-runtime-secret-000000000
ONEPROTECT_LOG=warn "$SERVER" serve --listen "127.0.0.1:$PORT" --database-url "$WORK/platform.db" 2>/dev/null &
SERVER_PID=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
ADMIN=$("$SERVER" admin-token --tenant footprint)
TOKEN=$(curl -sf -X POST "http://127.0.0.1:$PORT/api/v1/agent-enrollment/tokens" -H "authorization: Bearer $ADMIN" \
  -H 'content-type: application/json' -d '{"ttl_seconds": 600}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["enrollment_token"])')
cat > "$WORK/agent.yaml" <<YAML
platform_url: http://127.0.0.1:$PORT
enrollment_token: $TOKEN
state_dir: $WORK/state
heartbeat_interval: 1
log_level: warn
YAML
"$WORK/agent" --config "$WORK/agent.yaml" enroll 2>/dev/null
"$WORK/agent" --config "$WORK/agent.yaml" run 2>/dev/null &
AGENT_PID=$!
count() { curl -sf "http://127.0.0.1:$PORT/api/v1/events?limit=200" -H "authorization: Bearer $ADMIN" | python3 -c 'import json,sys; print(sum(1 for e in json.load(sys.stdin)["items"] if e["type"]=="asset.telemetry.received"))'; }
cpu_ns() { awk '{print $1}' "/proc/$AGENT_PID/schedstat"; }
# Let the collector settle (first samples), then measure a window.
until [ "$(count)" -ge 3 ]; do sleep 0.2; done
START_BEATS=$(count); START_NS=$(cpu_ns)
until [ "$(count)" -ge $((START_BEATS + HEARTBEATS)) ]; do sleep 0.2; done
END_BEATS=$(count); END_NS=$(cpu_ns)
RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$AGENT_PID/status")
BEATS=$((END_BEATS - START_BEATS))
python3 - "$SIZE" "$RSS_KB" "$((END_NS - START_NS))" "$BEATS" <<'PY'
import sys
size, rss_kb, cpu_ns, beats = map(int, sys.argv[1:])
cpu_ms = cpu_ns / 1e6 / beats
print("| measure | value | target |")
print("| --- | --- | --- |")
print(f"| stripped release binary | {size/1e6:.2f} MB | <= 6 MB |")
print(f"| RSS after {beats + 3} heartbeats | {rss_kb/1024:.1f} MiB | <= 8 MB |")
print(f"| CPU time per heartbeat | {cpu_ms:.2f} ms (on-CPU time over {beats} heartbeats, /proc/<pid>/schedstat) | negligible |")
PY
