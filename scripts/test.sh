#!/usr/bin/env bash
# Runs the whole test suite: unit tests, integration tests with real server
# processes and real clients (rdkafka, kcat), then the Python client tests
# (confluent-kafka, kafka-python) from a virtualenv this script creates.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
venv="${SLUICE_VENV:-$CARGO_TARGET_DIR/venv}"

# One cargo invocation builds everything (the sluice binary included) with
# one feature resolution, so RocksDB compiles once.
cargo test --release --workspace --no-fail-fast

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
SLUICE_BIN="$CARGO_TARGET_DIR/release/sluice" "$venv/bin/python" -m pytest -q tests/python
