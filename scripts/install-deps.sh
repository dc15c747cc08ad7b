#!/usr/bin/env bash
# Installs what building and testing Sluice needs on Debian/Ubuntu, skipping
# what is already there: clang + libclang (RocksDB bindings), protobuf-compiler
# (raft-rs), cmake + a C toolchain and the curl, OpenSSL and zlib headers
# (librdkafka for the tests), kcat, iproute2 and iptables (network namespaces
# for the partition test), and
# python3-venv when the python3 on PATH cannot make virtualenvs.
set -euo pipefail

packages=(clang libclang-dev protobuf-compiler cmake build-essential pkg-config kcat curl libcurl4-openssl-dev libssl-dev zlib1g-dev iproute2 iptables)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install Rust from your distribution or rustup first" >&2
  exit 1
fi
# Debian's own python3 needs python3-venv for `python3 -m venv`.
if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
fi
