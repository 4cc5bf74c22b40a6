#!/usr/bin/env bash
# Seed benchmark (issue 4): on one source and one target server, in one run,
#   plain   pg_dump -Fd --jobs N | pg_restore --jobs N --no-owner --no-acl
#           into an empty database on the target, by hand;
#   seed    pghandoff seed --jobs N of the same source into another empty
#           database of the target, through a running pghandoff (snapshot at
#           the barrier, dump, restore, journal catch-up, flip to mirror),
#           idle and then with pgbench writing through the proxy (-R rate);
# and pghandoff verify's throughput (rows per second) over the result.
# Prints the times and the ratios (goal: seed within 10 % of plain).
# Not a test: it asserts nothing. See bench/README.md.
#
# Env: BENCH_SCALE (pgbench scale of the source, default 30 ≈ 450 MB),
# BENCH_JOBS (default 2), BENCH_RATE (pgbench -R during the loaded seed,
# default 200), BENCH_NO_BUILD=1 to skip `scripts/build.sh release`.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE="${BENCH_SCALE:-30}"
JOBS="${BENCH_JOBS:-2}"
RATE="${BENCH_RATE:-200}"
PGBIN=/usr/lib/postgresql/15/bin
BIN="$PWD/build/release/cli/pghandoff"
for n in SCALE JOBS RATE; do
  [[ "${!n}" =~ ^[1-9][0-9]*$ ]] || { echo "$n must be a positive integer" >&2; exit 2; }
done
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  echo "== building (scripts/build.sh release)" >&2
  scripts/build.sh release > /dev/null
fi
[ -x "$BIN" ] || { echo "missing $BIN" >&2; exit 2; }

is_root() { [ "$(id -u)" = 0 ]; }
as_pg() { if is_root; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

work=$(mktemp -d /tmp/pghandoff-bench-seed.XXXXXX)
chmod 755 "$work"
is_root && chown postgres "$work"
proxy_pid=""; load_pid=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  set +e
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null
  [ -n "$proxy_pid" ] && kill -TERM "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null
  for c in source target; do
    [ -d "$work/$c" ] && as_pg "$PGBIN/pg_ctl" -D "$work/$c" -m immediate stop >/dev/null 2>&1
  done
  rm -rf "$work"
}
trap cleanup EXIT

pw=$(openssl rand -hex 12); token=$(openssl rand -hex 16)
echo "$pw" > "$work/pw"; is_root && chown postgres "$work/pw"
start_cluster() {  # name port
  as_pg "$PGBIN/initdb" -D "$work/$1" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --pwfile="$work/pw" -E UTF8 --locale=C.UTF-8 >/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$work/$1" -l "$work/$1.log" -w -o \
    "-p $2 -k $work -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_wal_size=4GB" \
    start >/dev/null
}
export PGPASSWORD="$pw"
sql() { "$PGBIN/psql" -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -d "$2" -c "$3"; }
sport=$(free_port); tport=$(free_port)
start_cluster source "$sport"
start_cluster target "$tport"
echo "== source: pgbench -i -s $SCALE" >&2
"$PGBIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$sport" -U postgres postgres >/dev/null 2>&1
size=$(sql "$sport" postgres "SELECT pg_size_pretty(pg_database_size('postgres'))")
rows=$(sql "$sport" postgres "SELECT sum(n_live_tup) FROM pg_stat_user_tables")

# plain
sql "$tport" postgres "CREATE DATABASE plain" >/dev/null
t=$(now)
"$PGBIN/pg_dump" -Fd -j "$JOBS" -f "$work/plain" -h 127.0.0.1 -p "$sport" -U postgres postgres
"$PGBIN/pg_restore" -j "$JOBS" --no-owner --no-acl -h 127.0.0.1 -p "$tport" -U postgres -d plain "$work/plain"
plain=$(since "$t")
rm -rf "$work/plain"

run_seed() {  # run_seed DB LOADED -> seconds; the proxy in front of source, target DB
  local db=$1 loaded=$2 pport aport
  sql "$tport" postgres "CREATE DATABASE $db" >/dev/null
  pport=$(free_port); aport=$(free_port)
  cat > "$work/$db.yaml" <<YAML
listen: 127.0.0.1:$pport
source: { url: "postgres://postgres:$pw@127.0.0.1:$sport/postgres?sslmode=disable" }
target: { url: "postgres://postgres:$pw@127.0.0.1:$tport/$db?sslmode=disable" }
client_tls: { mode: disable }
auth: { method: scram-sha-256, users: [{ name: app, password: app }] }
admin: { listen: 127.0.0.1:$aport, token: "$token" }
state: { dir: $work/state-$db }
log: { level: info }
YAML
  "$BIN" proxy --config "$work/$db.yaml" 2> "$work/proxy-$db.log" &
  proxy_pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$aport/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  if [ "$loaded" = 1 ]; then
    PGPASSWORD=app "$PGBIN/pgbench" -n -M prepared -c 4 -j 2 -R "$RATE" -T 100000 \
      -h 127.0.0.1 -p "$pport" -U app postgres > "$work/load.out" 2>&1 &
    load_pid=$!
    sleep 1
  fi
  local t0; t0=$(now)
  "$BIN" seed --config "$work/$db.yaml" --jobs "$JOBS" > "$work/seed-$db.out"
  seed_time=$(since "$t0")
  catchup=$(grep -oE 'catch-up [0-9.]+ s: [0-9]+ journaled' "$work/seed-$db.out" || echo "-")
  if [ -n "$load_pid" ]; then kill "$load_pid" 2>/dev/null; wait "$load_pid" 2>/dev/null || true; load_pid=""; fi
  kill -TERM "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; proxy_pid=""
}
run_seed idle 0
idle=$seed_time
run_seed loaded 1
loaded=$seed_time
loaded_catchup=$catchup

# verify throughput over the loaded seed's result, mirrored to the end (no proxy: --no-pause)
cat > "$work/verify.yaml" <<YAML
listen: 127.0.0.1:1
source: { url: "postgres://postgres:$pw@127.0.0.1:$sport/postgres?sslmode=disable" }
target: { url: "postgres://postgres:$pw@127.0.0.1:$tport/loaded?sslmode=disable" }
client_tls: { mode: disable }
auth: { method: scram-sha-256, users: [{ name: app, password: app }] }
admin: { listen: ~ }
state: { dir: $work/state-verify }
YAML
t=$(now)
"$BIN" verify --config "$work/verify.yaml" --no-pause --jobs "$JOBS" --json > "$work/verify.json" || true
vtime=$(since "$t")
vrate=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1])).get("rows_per_second", 0)))' "$work/verify.json")
identical=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("identical"))' "$work/verify.json")

ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }
echo
echo "source: pgbench scale $SCALE, $size, $rows rows; --jobs $JOBS; 2 cores shared by everything"
printf '%-44s %8s %8s\n' "" "seconds" "vs plain"
printf '%-44s %8s %8s\n' "pg_dump -Fd | pg_restore (plain)" "$plain" "1.00"
printf '%-44s %8s %8s\n' "pghandoff seed, no writes" "$idle" "$(ratio "$idle" "$plain")"
printf '%-44s %8s %8s\n' "pghandoff seed, pgbench -R $RATE through it" "$loaded" "$(ratio "$loaded" "$plain")"
echo "   loaded seed: $loaded_catchup transactions applied"
echo "pghandoff verify (--no-pause, --jobs $JOBS): $vtime s, $vrate rows/s, identical: $identical"
