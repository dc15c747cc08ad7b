#!/usr/bin/env bash
# Starts a single-node Sluice cluster on 127.0.0.1:9092 (data in ./sluice-data).
# Extra arguments go to `sluice server`, e.g. --set num.partitions=3.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec cargo run --release --bin sluice -- server "$@"
