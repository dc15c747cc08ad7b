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

# Python clients run from virtualenvs made here: the current confluent-kafka
# and kafka-python 3.x, then kafka-python 2.x on its own.
python_env() {
  local dir="$1" requirements="$2"
  [ -x "$dir/bin/python" ] || python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check -r "$requirements"
}
python_env "$venv" tests/python/requirements.txt
python_env "$venv-kafka-python2" tests/python/requirements-kafka-python2.txt
export SLUICE_BIN="$CARGO_TARGET_DIR/release/sluice"
"$venv/bin/python" -m pytest -q tests/python
"$venv-kafka-python2/bin/python" -m pytest -q tests/python/test_kafka_python.py
