#!/usr/bin/env bash
# Installs every Debian package pghandoff's build, tests, demo and benchmarks
# use, and the npm test client. Debian 12, run as root. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  # build
  g++ cmake ninja-build pkg-config patch
  libboost1.81-dev libssl-dev libpq-dev libspdlog-dev libyaml-cpp-dev libpg-query-dev
  libprotobuf-c-dev  # header only: pg_query.pb-c.h needs it; the runtime is in libpg_query
  libgtest-dev libgmock-dev
  # fuzzing (clang's libFuzzer runtime)
  clang-14 libclang-rt-14-dev clang-format-14
  # servers and real clients for the tests
  postgresql-15 postgresql-client-15 postgresql-contrib openssl
  python3 python3-psycopg2 libpostgresql-jdbc-java openjdk-17-jdk-headless nodejs npm
  # benchmarks
  pgbouncer
  # process tools used by tests (runuser, ss, pkill)
  util-linux iproute2 procps curl
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node and npm may come from outside Debian on some images: do not fight them.
if command -v node >/dev/null && command -v npm >/dev/null; then
  filtered=()
  for p in "${missing[@]}"; do [[ $p == nodejs || $p == npm ]] || filtered+=("$p"); done
  missing=("${filtered[@]}")
fi
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's postgresql package creates and starts a default cluster; the tests
# start their own throwaway servers and need none of it.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
  pg_lsclusters -h | awk '$4=="online"{print $1, $2}' | while read -r v c; do
    pg_ctlcluster "$v" "$c" stop || true
  done
fi

# node-postgres for the integration tests (npm registry).
if [ ! -d tests/clients/node/node_modules/pg ]; then
  npm ci --prefix tests/clients/node --no-audit --no-fund --loglevel=error
fi
