#!/usr/bin/env bash
# The README's main command: a migration on two throwaway PostgreSQL 15
# servers (source and target) with pgbench writing through pghandoff the whole
# time it is allowed to: source-only, a seed of the target, then mirror ->
# mirror-read-target -> reverse-mirror under load, the two databases compared
# row by row, target-only, and what the proxy counted.
# `pghandoff seed` and `verify` are issue 4: until then the demo seeds with
# pg_dump | pg_restore while no client writes, and compares with psql.
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
phase() {  # phase NAME: flip and print the reply (with the pause the clients saw)
  printf '   phase %-19s -> ' "$1"
  curl -s -H "Authorization: Bearer $token" -X POST -d "{\"phase\":\"$1\"}" \
    "http://127.0.0.1:$aport/phase"
  echo
}
bench() {  # bench MODE SECONDS
  PGPASSWORD="$app_pw" "$PGBIN/pgbench" -n -M "$1" -c 8 -j 2 -T "$2" \
    -h 127.0.0.1 -p "$pport" -U app postgres 2>&1 | grep -E '^tps|latency average|failed trans'
}
sql() {  # sql PORT QUERY
  PGPASSWORD="$src_pw" "$PGBIN/psql" -X -At -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2"
}

echo "== 1. source-only: pgbench through pghandoff (TPC-B-like, -M simple, 8 clients, ${SECONDS_TO_RUN}s)"
bench simple "$SECONDS_TO_RUN"

echo "== 2. seeding the target (pg_dump | pg_restore while no client writes; pghandoff seed is issue 4)"
PGPASSWORD="$src_pw" "$PGBIN/pg_dump" -Fc -h 127.0.0.1 -p "$sport" -U postgres postgres > "$work/dump"
PGPASSWORD="$src_pw" "$PGBIN/pg_restore" --no-owner --no-acl -h 127.0.0.1 -p "$tport" -U postgres \
  -d postgres "$work/dump"

echo "== 3. mirror at once (writes made between the seed and this flip would reach the source only)"
phase mirror
echo "== 4. the phases under load: pgbench -M simple for $((SECONDS_TO_RUN * 3))s while flipping"
bench simple $((SECONDS_TO_RUN * 3)) > "$work/bench.out" &
bench_pid=$!
sleep "$SECONDS_TO_RUN"
phase mirror-read-target
sleep "$SECONDS_TO_RUN"
phase reverse-mirror
wait "$bench_pid"
cat "$work/bench.out"

echo "== 5. are the two databases the same? (row checksums, history timestamps included)"
q="SELECT v FROM (SELECT 1 k, md5(string_agg(aid||':'||abalance, ',' ORDER BY aid)) v FROM pgbench_accounts"
q="$q UNION ALL SELECT 2, md5(string_agg(tid||':'||tbalance, ',' ORDER BY tid)) FROM pgbench_tellers"
q="$q UNION ALL SELECT 3, md5(string_agg(bid||':'||bbalance, ',' ORDER BY bid)) FROM pgbench_branches"
q="$q UNION ALL SELECT 4, count(*)||' history rows '||md5(string_agg(tid||':'||bid||':'||aid||':'||delta||':'||mtime, ',' ORDER BY tid,bid,aid,delta,mtime)) FROM pgbench_history) s ORDER BY k"
src_sum=$(sql "$sport" "$q"); tgt_sum=$(sql "$tport" "$q")
echo "   source: $(echo "$src_sum" | tr '\n' ' ')"
echo "   target: $(echo "$tgt_sum" | tr '\n' ' ')"
if [ "$src_sum" = "$tgt_sum" ]; then echo "   IDENTICAL"; else echo "   DIFFERENT"; fi
echo "   (pgbench's history.mtime is CURRENT_TIMESTAMP: pghandoff gave the target the source's value)"

echo "== 6. target-only: the source gets no more writes"
phase target-only
before=$(sql "$sport" "SELECT count(*) FROM pgbench_history")
bench simple 2
echo "   history rows: source $(sql "$sport" "SELECT count(*) FROM pgbench_history") (was $before)," \
  "target $(sql "$tport" "SELECT count(*) FROM pgbench_history")"

echo "== what pghandoff counted (/metrics, non-zero series)"
curl -s -H "Authorization: Bearer $token" "http://127.0.0.1:$aport/metrics" |
  grep -vE '^#|_bucket' | awk '$NF != "0"'
echo "== pghandoff status"
PGHANDOFF_ADMIN_TOKEN="$token" "$BIN" status --admin "http://127.0.0.1:$aport" | head -c 900; echo
echo "== stopping (SIGTERM: graceful)"
kill -TERM "$proxy_pid"; wait "$proxy_pid" || true; proxy_pid=""
tail -3 "$work/proxy.log"
