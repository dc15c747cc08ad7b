#!/usr/bin/env bash
# `sluice bench commits` against a ZooKeeper-mode cluster (3 ZooKeeper
# servers, 3 brokers), then against a KRaft cluster (3 controllers, 3
# brokers), one after the other on this machine. Each run reports its own
# OffsetFetch baseline; compare the commit/fetch ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
sluice="${SLUICE_BIN:-target/release/sluice}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
run() {
  local name="$1"; shift
  "$sluice" cluster up "$@" --brokers 3 --data-dir "$dir/$name" --port 39092 > "$dir/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 90); do
    grep -q "The cluster is up" "$dir/$name.log" && break
    sleep 2
  done
  grep -q "The cluster is up" "$dir/$name.log" || { cat "$dir/$name.log"; kill -TERM "$pid"; exit 1; }
  echo "== $name"
  "$sluice" bench commits -b 127.0.0.1:39092 --seconds 10 --groups 16 --partitions 16 2>/dev/null | tail -7
  kill -TERM "$pid"
  wait "$pid" || true
}
run zookeeper --mode zk --zookeepers 3 --zk-port 33181
run kraft --controllers 3
