#!/usr/bin/env bash
# Builds the `sluice` Docker image (tag: ${SLUICE_IMAGE:-sluice:latest}) from
# the binary built on this host, and the ZooKeeper image that
# docker-compose.yml's `zk` profile runs (${SLUICE_ZOOKEEPER_IMAGE:-
# sluice-zookeeper:latest}, Debian's zookeeper package).
#
# The base is debian:bookworm-slim when it is present or can be pulled. A
# machine with no registry gets a base made here instead: Debian's
# debootstrap (minbase) into a folder, then `docker import` as
# sluice-base:bookworm. Either base is kept and reused by later runs.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${SLUICE_IMAGE:-sluice:latest}"
zookeeper_image="${SLUICE_ZOOKEEPER_IMAGE:-sluice-zookeeper:latest}"
local_base="sluice-base:bookworm"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

if have_image debian:bookworm-slim; then
  base=debian:bookworm-slim
elif have_image "$local_base"; then
  base="$local_base"
elif docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
  base=debian:bookworm-slim
else
  echo "no registry reachable: making $local_base with debootstrap" >&2
  if ! command -v debootstrap >/dev/null 2>&1; then
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq debootstrap
  fi
  root="$(mktemp -d)"
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase bookworm "$root" >/dev/null
  # What a slim image leaves out: package lists, caches, docs.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
  tar -C "$root" -c . | docker import - "$local_base" >/dev/null
  base="$local_base"
fi

# The binary goes in stripped: its line tables are most of its size.
# SLUICE_BIN names one already built (the tests pass the one under test).
binary="${SLUICE_BIN:-}"
if [ -z "$binary" ]; then
  cargo build --release --bin sluice
  binary="$CARGO_TARGET_DIR/release/sluice"
fi
context="$CARGO_TARGET_DIR/docker-context"
rm -rf "$context"
mkdir -p "$context"
cp Dockerfile "$context/Dockerfile"
strip -o "$context/sluice" "$binary"
# The classic builder: this engine may have no BuildKit (buildx) plugin.
DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE=$base" -t "$image" "$context" >/dev/null
# Docker's layer cache makes this quick after the first time.
DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE=$base" -t "$zookeeper_image" docker/zookeeper >/dev/null
echo "built $image and $zookeeper_image on $base"
