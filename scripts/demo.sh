#!/usr/bin/env bash
# The README's main command (also `pghandoff demo`): the whole migration on
# two throwaway PostgreSQL 15 servers, with clients writing through pghandoff
# all the time:
#   sample data on the source (customers, orders with foreign keys, serial
#   ids, timestamps; DEMO_ROWS orders, ~100 MB per million), pghandoff in front
#   of it, a live write workload (pgbench with an order-taking script, and a
#   psycopg2 client that counts every write acknowledged to it),
#   pghandoff check -> pghandoff seed (snapshot, dump, restore, catch-up
#   journal, mirror) -> pghandoff verify -> mirror-read-target ->
#   reverse-mirror -> pghandoff verify -> target-only,
# then a summary: writes acknowledged, lost, divergences, each flip's pause.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] && scripts/install-deps.sh
[ -x build/release/cli/pghandoff ] && [ -n "${DEMO_NO_BUILD:-}" ] || scripts/build.sh release >/dev/null
BIN="$PWD/build/release/cli/pghandoff"
PGBIN=/usr/lib/postgresql/15/bin
ROWS="${DEMO_ROWS:-2000000}"
STEP="${DEMO_STEP_SECONDS:-4}"

work=$(mktemp -d /tmp/pghandoff-demo.XXXXXX)
chmod 755 "$work"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

proxy_pid=""; load_pids=""
cleanup() {
  for p in $load_pids; do kill "$p" 2>/dev/null || true; done
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
    "-p $2 -k $work -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_wal_size=4GB" \
    start >/dev/null
}
sql() {  # sql PORT QUERY
  PGPASSWORD="$src_pw" "$PGBIN/psql" -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -d shop -c "$2"
}
sport=$(free_port); tport=$(free_port)
echo "== two throwaway servers: source (port $sport) and an empty target (port $tport)"
start_cluster source "$sport"
start_cluster target "$tport"
for p in "$sport" "$tport"; do
  PGPASSWORD="$src_pw" "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$p" -U postgres -d postgres -c "CREATE DATABASE shop"
done

echo "== sample data on the source: customers, orders ($ROWS), order lines; serial ids, timestamps, foreign keys"
t0=$(date +%s)
sql "$sport" "
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE,
  created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int NOT NULL REFERENCES customers,
  status text NOT NULL DEFAULT 'new', total numeric(12,2) NOT NULL, note text,
  created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz);
CREATE TABLE order_lines (order_id bigint NOT NULL REFERENCES orders, line int NOT NULL,
  sku text NOT NULL, qty int NOT NULL, PRIMARY KEY (order_id, line));
CREATE INDEX orders_customer ON orders (customer_id);
CREATE TABLE ledger (id bigserial PRIMARY KEY, client text, k int, amount numeric, note text,
  created_at timestamptz DEFAULT now(), u uuid DEFAULT gen_random_uuid());
INSERT INTO customers (name, email, created_at)
  SELECT 'customer ' || g, 'c' || g || '@example.com', now() - g * interval '1 minute'
  FROM generate_series(1, 100000) g;
INSERT INTO orders (customer_id, status, total, note, created_at)
  SELECT 1 + g % 100000, (ARRAY['new','paid','shipped'])[1 + g % 3], (g % 10000) / 100.0,
         repeat(md5(g::text), 1 + g % 2), now() - g * interval '1 second'
  FROM generate_series(1, $ROWS) g;
INSERT INTO order_lines SELECT id, l, 'sku-' || (id * l) % 5000, 1 + l FROM orders, generate_series(1, 2) l
  WHERE id % 4 = 0;
ANALYZE;" >/dev/null
echo "   $(sql "$sport" "SELECT pg_size_pretty(pg_database_size('shop'))") in $(( $(date +%s) - t0 )) s"

pport=$(free_port); aport=$(free_port)
cat > "$work/pghandoff.yaml" <<YAML
listen: 127.0.0.1:$pport
source: { url: "postgres://postgres:\${SOURCE_PASSWORD}@127.0.0.1:$sport/shop?sslmode=disable" }
target: { url: "postgres://postgres:\${SOURCE_PASSWORD}@127.0.0.1:$tport/shop?sslmode=disable" }
client_tls: { mode: disable }
auth: { method: scram-sha-256, users: [{ name: app, password: "\${APP_PASSWORD}" }] }
admin: { listen: 127.0.0.1:$aport, token: "\${PGHANDOFF_ADMIN_TOKEN}" }
state: { dir: $work/state }
log: { level: info, format: text }
YAML
export SOURCE_PASSWORD="$src_pw" APP_PASSWORD="$app_pw" PGHANDOFF_ADMIN_TOKEN="$token"
echo "== pghandoff in front of the source (port $pport, admin $aport): phase source-only"
"$BIN" proxy --config "$work/pghandoff.yaml" 2> "$work/proxy.log" &
proxy_pid=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$aport/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
api() { curl -s -H "Authorization: Bearer $token" "$@"; }
pauses=""
phase() {  # phase NAME: flip; print the reply with the pause the clients saw
  local reply
  reply=$(api -X POST -d "{\"phase\":\"$1\"}" "http://127.0.0.1:$aport/phase")
  printf '   phase %-19s -> %s\n' "$1" "$reply"
  pauses="$pauses $1:$(echo "$reply" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("pause_ms","?"))')ms"
}

echo "== a live write workload through pghandoff, from now to the end"
cat > "$work/orders.sql" <<'SQL'
\set c random(1, 100000)
\set t random(1, 100000)
BEGIN;
INSERT INTO orders (customer_id, total, note) VALUES (:c, :t / 100.0, 'live') RETURNING id \gset
INSERT INTO order_lines VALUES (:id, 1, 'sku-live', 1);
UPDATE customers SET email = 'c' || id || '@example.org' WHERE id = :c;
COMMIT;
SQL
stop="$work/stop"
( while [ ! -e "$stop" ]; do
    PGPASSWORD="$app_pw" "$PGBIN/pgbench" -n -M prepared -c 4 -j 2 -R 150 -T 5 -f "$work/orders.sql" \
      -h 127.0.0.1 -p "$pport" -U app shop 2>&1 | grep -E 'failed transactions|actually processed' || true
  done ) > "$work/pgbench.out" &
load_pids="$!"
PGHANDOFF_DSN="host=127.0.0.1 port=$pport user=app password=$app_pw dbname=shop sslmode=disable" \
  PGHANDOFF_LEDGER_TABLE=ledger PGHANDOFF_LEDGER_SECONDS=100000 PGHANDOFF_LEDGER_CLIENT=psycopg2 \
  PGHANDOFF_LEDGER_STOP_FILE="$stop" \
  /usr/bin/python3 tests/clients/psycopg2_client.py --scenario ledger --timeout 100000 > "$work/ledger.out" 2>&1 &
load_pids="$load_pids $!"
sleep 2
echo "   pgbench: new orders with their lines and a customer update per transaction (4 clients, 150 tx/s)"
echo "   psycopg2: ledger rows (bigserial, now(), gen_random_uuid()), counting every write acknowledged"

echo "== pghandoff check"
"$BIN" check --config "$work/pghandoff.yaml" | sed 's/^/   /' || true
echo "== pghandoff seed --jobs 2 (the clients keep writing: the proxy journals what the dump misses)"
"$BIN" seed --config "$work/pghandoff.yaml" --jobs 2 | sed 's/^/   /'
echo "== pghandoff verify (a consistent cut: writes paused a few ms while both sides export snapshots)"
"$BIN" verify --config "$work/pghandoff.yaml" | tail -6 | sed 's/^/   /'
sleep "$STEP"
echo "== reads move to the target, then the target becomes authoritative"
phase mirror-read-target
sleep "$STEP"
phase reverse-mirror
sleep "$STEP"
echo "== pghandoff verify at reverse-mirror"
verify_rc=0
"$BIN" verify --config "$work/pghandoff.yaml" > "$work/verify.out" || verify_rc=$?
tail -6 "$work/verify.out" | sed 's/^/   /'
echo "== target-only: the source gets no more writes"
phase target-only
sleep 2
touch "$stop"
for p in $load_pids; do wait "$p" 2>/dev/null || true; done
load_pids=""

echo "== summary"
acked=$(grep -oE 'acked=[0-9]+' "$work/ledger.out" | tail -1 | cut -d= -f2 || true)
[ -n "$acked" ] || { echo "   the psycopg2 client did not report:"; tail -5 "$work/ledger.out" | sed 's/^/     /'; }
client_errors=$(grep -c '^FAIL' "$work/ledger.out" || true)
on_target=$(sql "$tport" "SELECT count(*) FROM ledger WHERE client = 'psycopg2'")
status=$(api "http://127.0.0.1:$aport/status")
divergences=$(echo "$status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["divergences"])')
pgb_failed=$(grep -oE 'failed transactions: [0-9]+' "$work/pgbench.out" | awk '{s += $NF} END {print s + 0}')
pgb_done=$(grep -oE 'actually processed: [0-9]+' "$work/pgbench.out" | awk '{s += $NF} END {print s + 0}')
echo "   psycopg2 writes acknowledged: ${acked:-?}, on the target: $on_target, lost: $(( ${acked:-0} - on_target < 0 ? 0 : ${acked:-0} - on_target )), client errors: $client_errors"
echo "   pgbench transactions: $pgb_done, failed: $pgb_failed"
echo "   divergences: $divergences"
echo "   flip pauses:$pauses"
echo "   verify at reverse-mirror: $([ "$verify_rc" = 0 ] && echo identical || echo "DIFFERENT (exit $verify_rc)")"
echo "   orders: source $(sql "$sport" "SELECT count(*) FROM orders"), target $(sql "$tport" "SELECT count(*) FROM orders") (the source froze at target-only)"
echo "== stopping pghandoff (SIGTERM: graceful)"
kill -TERM "$proxy_pid"; wait "$proxy_pid" || true; proxy_pid=""
[ "$verify_rc" = 0 ] && [ "$divergences" = 0 ] && [ "${acked:-0}" -gt 0 ] && [ "$on_target" -ge "${acked:-0}" ] &&
  [ "$client_errors" = 0 ] && [ "$pgb_failed" = 0 ]
