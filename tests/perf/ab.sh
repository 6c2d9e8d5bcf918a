#!/usr/bin/env bash
# Interleaved A/B of two sluice builds: CPU µs per request of each, run after run, so the
# machine's drift over minutes falls on both alike. Release binaries and the perf tools
# must be built (tests/perf/run.sh builds them).
#   tests/perf/ab.sh NEW_BIN OLD_BIN   with MODE=fixed|wrk|h2load (default fixed),
#   H2UP=1 for an HTTP/2 upstream, REPS (default 6), FILTERS=1 to put CORS, a local rate
#   limit (enabled, never reached) and RBAC (allow) in front of the NEW build's router
#   (the OLD build keeps the router-only chain), SUPPRESS=1 to set the NEW router's
#   suppress_envoy_headers (no x-envoy-* headers: the chain's own cost), TRACING=P to trace
#   P % of the NEW build's requests (OpenTelemetry, spawn_upstream_span) to a collector
#   that is down (spans are built, exported, refused and dropped), ACCESS_LOG=1 to give
#   the NEW build Envoy's default access log to a file (ACCESS_LOG=otlp: the OpenTelemetry
#   logger, same fields, to the collector), COLLECTOR=live to run a counting OTLP
#   collector (perf's otlp-sink, on CPU 1) where it was down; RATE (default 10000) for
#   MODE=fixed.
# Each run: sluice pinned to CPU 0 with one worker, upstream and load on CPU 1, 5 s of load
# on loopback, CPU from /proc/PID/stat; every process is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
NEW=$1; OLD=$2
TARGET="${CARGO_TARGET_DIR:-target}/release"
PORT=19100; ADMIN=19101; UP=18081
CONFIG=$(mktemp); NEW_CONFIG=$(mktemp)
LOG=$(mktemp)
H2UP="${H2UP:-0}" FILTERS="${FILTERS:-0}" SUPPRESS="${SUPPRESS:-0}" TRACING="${TRACING:-}" \
ACCESS_LOG="${ACCESS_LOG:-0}" LOG="$LOG" python3 - "$CONFIG" "$NEW_CONFIG" <<PY
import json, os, sys
sys.path.insert(0, "tests/perf")
import bench
bench.UPSTREAM_H2 = os.environ["H2UP"] == "1"
config = bench.envoy_style_bootstrap($PORT, $ADMIN)
open(sys.argv[1], "w").write(json.dumps(config))
hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
if os.environ["SUPPRESS"] == "1":
    hcm["http_filters"][-1]["typed_config"]["suppress_envoy_headers"] = True
if os.environ["FILTERS"] == "1":
    hcm["http_filters"][:0] = bench.POLICY_FILTERS
    hcm["route_config"]["virtual_hosts"][0]["typed_per_filter_config"] = bench.POLICY_CORS
if os.environ["TRACING"]:
    hcm["tracing"] = bench.otel_tracing(float(os.environ["TRACING"]))
    config["static_resources"]["clusters"].append(bench.DOWN_COLLECTOR)
if os.environ["ACCESS_LOG"] == "1":
    hcm["access_log"] = [bench.file_access_log(os.environ["LOG"])]
if os.environ["ACCESS_LOG"] == "otlp":
    hcm["access_log"] = [bench.otlp_access_log()]
    if bench.DOWN_COLLECTOR not in config["static_resources"]["clusters"]:
        config["static_resources"]["clusters"].append(bench.DOWN_COLLECTOR)
open(sys.argv[2], "w").write(json.dumps(config))
PY
taskset -c 1 "$TARGET/perf-upstream" --listen "127.0.0.1:$UP" --threads 1 & UPSTREAM=$!
PROXY=; SINK=
if [ "${COLLECTOR:-down}" = live ]; then
  taskset -c 1 "$TARGET/otlp-sink" --listen 127.0.0.1:19199 & SINK=$!
fi
trap 'kill $UPSTREAM $PROXY $SINK 2>/dev/null; rm -f "$CONFIG" "$NEW_CONFIG" "$LOG"' EXIT
# sluice binds with SO_REUSEPORT: a proxy left on the port would share the load unseen.
if ss -ltn "sport = :$PORT" | grep -q LISTEN; then echo "port $PORT is in use" >&2; exit 1; fi
sleep 0.5
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for _ in $(seq 1 "${REPS:-6}"); do
  for name in new old; do
    bin=$NEW; config=$NEW_CONFIG; [ "$name" = old ] && bin=$OLD && config=$CONFIG
    taskset -c 0 "$bin" -c "$config" --concurrency 1 --log-level warn & PROXY=$!
    sleep 0.7
    before=$(cpu $PROXY)
    case "${MODE:-fixed}" in
      fixed) n=$(taskset -c 1 "$TARGET/loadgen" --addr "127.0.0.1:$PORT" --rate "${RATE:-10000}" --connections 50 --duration-s 5 \
                 | tee /dev/stderr | grep -o '"requests":[0-9]*' | grep -o '[0-9]*$') ;;
      wrk)   n=$(taskset -c 1 wrk -t1 -c50 -d5s "http://127.0.0.1:$PORT/" | grep -o '[0-9]* requests in' | grep -o '^[0-9]*') ;;
      h2load) n=$(taskset -c 1 h2load -c10 -m10 -n400000 -t1 --duration=5 --warm-up-time=1 "http://127.0.0.1:$PORT/" \
                 | grep -o 'requests: [0-9]* total' | grep -o '[0-9]*') ;;
    esac
    after=$(cpu $PROXY)
    kill $PROXY; wait $PROXY 2>/dev/null || true; PROXY=
    [ "${n:-0}" -gt 0 ] || { echo "$name answered no requests" >&2; exit 1; }
    python3 -c "print('$name', $n, round(($after - $before) * 1e6 / $(getconf CLK_TCK) / $n, 1), 'us/req')"
  done
done
if [ -n "$SINK" ]; then kill "$SINK"; wait "$SINK" 2>/dev/null || true; SINK=; fi
