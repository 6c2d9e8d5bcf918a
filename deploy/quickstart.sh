#!/usr/bin/env bash
# Runs the whole system on this machine: sluice-cp with its embedded store (./sluice-data),
# the demo upstream on 127.0.0.1:18080, one sluice attached to the control plane over ADS
# (listener 127.0.0.1:10000, admin 127.0.0.1:9901), and the demo config applied with
# sluicectl. Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p sluice -p sluice-cp -p sluice-tests --bins
bin="${CARGO_TARGET_DIR:-target}/release"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT INT TERM

"$bin/sluice-cp" --store file:sluice-data --xds-listen 127.0.0.1:18000 --api-listen 127.0.0.1:18001 &
pids+=($!)
# sluice-cp writes a write token for its API into its store on first start.
export SLUICE_SERVER=http://127.0.0.1:18001 SLUICE_TOKEN_FILE="$PWD/sluice-data/admin-token"
"$bin/demo-upstream" 127.0.0.1:18080 &
pids+=($!)
"$bin/sluice" -c deploy/demo/sluice-ads.yaml --log-level info &
pids+=($!)

for _ in $(seq 100); do
  "$bin/sluicectl" history >/dev/null 2>&1 && break
  sleep 0.1
done
"$bin/sluicectl" apply -f deploy/demo/resources.yaml
for _ in $(seq 100); do
  curl -fsS http://127.0.0.1:10000/hello >/dev/null 2>&1 && break
  sleep 0.1
done

cat <<MSG

Sluice is up: sluice-cp (xDS 127.0.0.1:18000, API 127.0.0.1:18001), one sluice, a demo upstream.
Try:
  curl -i http://127.0.0.1:10000/hello              # direct response
  curl -i http://127.0.0.1:10000/api/anything?x=1    # proxied, /api/ rewritten to /
  curl -i http://127.0.0.1:10000/old/page            # redirect
  curl --http2-prior-knowledge http://127.0.0.1:10000/
  export SLUICE_TOKEN_FILE=$PWD/sluice-data/admin-token   # the API needs a token
  $bin/sluicectl nodes                     # which node ACKed which version (--watch: live)
  $bin/sluicectl get -o yaml               # the live config, as Envoy resources
  $bin/sluicectl history                   # revisions; rollback N restores one
  curl http://127.0.0.1:9901/stats                   # the node's Envoy-style stats
Edit deploy/demo/resources.yaml and run sluicectl apply -f on it to change the fleet.
Press Ctrl-C to stop.
MSG
wait
