#!/usr/bin/env bash
# The README's main command. Today (issue 2, pass-through): starts two
# throwaway PostgreSQL 15 servers (source and target), pghandoff in front of
# the source in phase source-only, runs pgbench through it for a few seconds,
# prints what the proxy's /metrics counted, and stops everything.
# The full migration demo (seed, mirror, verify, flips) arrives with issue 4.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] && scripts/install-deps.sh
scripts/build.sh release >/dev/null
BIN="$PWD/build/release/cli/pghandoff"
PGBIN=/usr/lib/postgresql/15/bin
SECONDS_TO_RUN="${DEMO_SECONDS:-5}"

work=$(mktemp -d /tmp/pghandoff-demo.XXXXXX)
chmod 755 "$work"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

proxy_pid=""
cleanup() {
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null || true
  for c in source target; do
    [ -d "$work/$c" ] && as_pg "$PGBIN/pg_ctl" -D "$work/$c" -m immediate stop >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

src_pw=$(openssl rand -hex 12); app_pw=$(openssl rand -hex 12); token=$(openssl rand -hex 16)
echo "$src_pw" > "$work/pw"; [ "$(id -u)" = 0 ] && chown postgres "$work/pw"
start_cluster() {  # name port
  as_pg "$PGBIN/initdb" -D "$work/$1" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --pwfile="$work/pw" -E UTF8 --locale=C.UTF-8 >/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$work/$1" -l "$work/$1.log" -w -o \
    "-p $2 -k $work -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off" start >/dev/null
}
sport=$(free_port); tport=$(free_port)
echo "== starting source (port $sport) and target (port $tport)"
start_cluster source "$sport"
start_cluster target "$tport"
PGPASSWORD="$src_pw" "$PGBIN/pgbench" -i -q -s 2 -h 127.0.0.1 -p "$sport" -U postgres postgres 2>&1 | tail -1

pport=$(free_port); aport=$(free_port)
cat > "$work/pghandoff.yaml" <<YAML
listen: 127.0.0.1:$pport
source: { url: "postgres://postgres:\${SOURCE_PASSWORD}@127.0.0.1:$sport/postgres?sslmode=disable" }
target: { url: "postgres://postgres:\${SOURCE_PASSWORD}@127.0.0.1:$tport/postgres?sslmode=disable" }
client_tls: { mode: disable }
auth: { method: scram-sha-256, users: [{ name: app, password: "\${APP_PASSWORD}" }] }
admin: { listen: 127.0.0.1:$aport, token: "\${PGHANDOFF_ADMIN_TOKEN}" }
state: { dir: $work/state }
log: { level: info, format: text }
YAML
echo "== starting pghandoff on port $pport (admin $aport), phase source-only"
SOURCE_PASSWORD="$src_pw" APP_PASSWORD="$app_pw" PGHANDOFF_ADMIN_TOKEN="$token" \
  "$BIN" proxy --config "$work/pghandoff.yaml" 2> "$work/proxy.log" &
proxy_pid=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$aport/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

for mode in simple extended prepared; do
  echo "== pgbench through pghandoff: TPC-B-like, -M $mode, 8 clients, ${SECONDS_TO_RUN}s"
  PGPASSWORD="$app_pw" "$PGBIN/pgbench" -n -M "$mode" -c 8 -j 2 -T "$SECONDS_TO_RUN" \
    -h 127.0.0.1 -p "$pport" -U app postgres 2>&1 | grep -E 'tps|latency average|failed'
done

echo "== what pghandoff counted (/metrics, non-zero series)"
curl -s -H "Authorization: Bearer $token" "http://127.0.0.1:$aport/metrics" |
  grep -vE '^#|_bucket' | awk '$NF != "0"'
echo "== pghandoff status"
PGHANDOFF_ADMIN_TOKEN="$token" "$BIN" status --admin "http://127.0.0.1:$aport" | head -c 600; echo
echo "== stopping (SIGTERM: graceful)"
kill -TERM "$proxy_pid"; wait "$proxy_pid" || true; proxy_pid=""
tail -3 "$work/proxy.log"
