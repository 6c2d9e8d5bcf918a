#!/usr/bin/env bash
# Runs the demo on this machine: the demo upstream on 127.0.0.1:18080 and `sluice` on
# 127.0.0.1:10000 (admin 127.0.0.1:9901) with deploy/demo/bootstrap.yaml.
# Ctrl-C stops both. Later issues add the control plane (`sluice-cp`) here.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p sluice -p sluice-tests --bins
target="${CARGO_TARGET_DIR:-target}/release"

"$target/demo-upstream" 127.0.0.1:18080 &
upstream_pid=$!
"$target/sluice" -c deploy/demo/bootstrap.yaml --log-level info,access=info &
sluice_pid=$!
trap 'kill "$sluice_pid" "$upstream_pid" 2>/dev/null; wait 2>/dev/null' EXIT INT TERM

for _ in $(seq 50); do
  curl -fsS http://127.0.0.1:9901/ready >/dev/null 2>&1 && break
  sleep 0.1
done

cat <<'MSG'

Sluice demo is up. Try:
  curl -i http://127.0.0.1:10000/hello            # direct response
  curl -i http://127.0.0.1:10000/api/anything?x=1  # proxied to the demo upstream, /api/ rewritten to /
  curl -i http://127.0.0.1:10000/old/page          # redirect
  curl --http2-prior-knowledge http://127.0.0.1:10000/  # HTTP/2 cleartext
  curl http://127.0.0.1:9901/stats                 # Envoy-style stats (also /stats/prometheus, /config_dump, /clusters)
  kill -HUP <sluice pid>                           # re-read deploy/demo/bootstrap.yaml without dropping connections
Press Ctrl-C to stop.
MSG
wait "$sluice_pid"
