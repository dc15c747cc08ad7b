#!/usr/bin/env bash
# Installs what building and testing Sluice needs on Debian/Ubuntu, skipping
# what is already there: clang + libclang (RocksDB bindings), protobuf-compiler
# (raft-rs), cmake + a C toolchain and the curl, OpenSSL and zlib headers
# (librdkafka for the tests), kcat, iproute2 and iptables (network namespaces
# for the partition test), ZooKeeper (Debian's `zookeeper`, 3.8: the
# ZooKeeper-mode tests run real ensembles) with a Java runtime to run it
# (default-jre-headless when no `java` is on PATH), and
# python3-venv when the python3 on PATH cannot make virtualenvs.
set -euo pipefail

packages=(clang libclang-dev protobuf-compiler cmake build-essential pkg-config kcat curl libcurl4-openssl-dev libssl-dev zlib1g-dev iproute2 iptables zookeeper)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install Rust from your distribution or rustup first" >&2
  exit 1
fi
# ZooKeeper runs on Java; Debian's zookeeper package pulls in a JRE, but a
# machine that had the package without one (or a trimmed image) needs it.
if ! command -v java >/dev/null 2>&1; then
  missing+=(default-jre-headless)
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
# What the ZooKeeper-mode tests start (src/zk_ensemble.rs): fail here, with
# the reason, rather than in the middle of the test run.
for jar in /usr/share/java/zookeeper.jar /usr/share/java/slf4j-log4j12.jar /usr/share/java/log4j-1.2.jar; do
  if [ ! -e "$jar" ] && [ -z "${SLUICE_ZOOKEEPER_CLASSPATH:-}" ]; then
    echo "ZooKeeper is not installed as expected: $jar is missing (install Debian's zookeeper package, or set SLUICE_ZOOKEEPER_CLASSPATH)" >&2
    exit 1
  fi
done
if ! java -version >/dev/null 2>&1; then
  echo "java does not run: ZooKeeper needs a Java runtime (default-jre-headless)" >&2
  exit 1
fi
