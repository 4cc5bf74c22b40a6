#!/usr/bin/env bash
# Dual-write benchmark: TPC-B-like pgbench through pghandoff in phase
# `mirror` (mirror.mode sync, and a second proxy in mode async) vs straight
# to the source vs pgpool-II in native replication mode over the same two
# servers, in one run. Prints TPS, the ratios, whether each
# left the two databases identical, and the flip pauses pghandoff measured
# while flipping between mirror and mirror-read-target under that load.
# Not a test: it asserts nothing. See bench/README.md.
#
# Env: BENCH_SECONDS (default 10), BENCH_REPEAT (default 3), BENCH_CLIENTS
# (default 16), BENCH_MODE (pgbench -M, default simple), BENCH_WORKLOAD
# (tpcb, default; or serial: one INSERT per transaction into a table whose id,
# created_at and uuid come from column defaults — bigserial, DEFAULT now(),
# DEFAULT gen_random_uuid()), BENCH_NO_BUILD=1 to skip `scripts/build.sh release`.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${BENCH_SECONDS:-10}"
REPEAT="${BENCH_REPEAT:-3}"
CLIENTS="${BENCH_CLIENTS:-16}"
MODE="${BENCH_MODE:-simple}"   # pgbench -M: simple|extended|prepared
WORKLOAD="${BENCH_WORKLOAD:-tpcb}"
case "$WORKLOAD" in tpcb | serial) ;; *) echo "BENCH_WORKLOAD must be tpcb or serial" >&2; exit 2 ;; esac
PGBIN=/usr/lib/postgresql/15/bin
PGPOOL=/usr/sbin/pgpool
BIN="$PWD/build/release/cli/pghandoff"
TARGETS=(direct pghandoff pghandoff-async pgpool)

for n in DURATION REPEAT CLIENTS; do
  [[ "${!n}" =~ ^[1-9][0-9]*$ ]] || { echo "$n must be a positive integer" >&2; exit 2; }
done
for f in "$PGBIN/initdb" "$PGBIN/pg_ctl" "$PGBIN/pgbench" "$PGBIN/psql" "$PGPOOL"; do
  [ -x "$f" ] || { echo "missing $f (scripts/install-deps.sh; Debian package pgpool2)" >&2; exit 2; }
done
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  echo "== building (scripts/build.sh release)" >&2
  scripts/build.sh release > /dev/null 2>&1 ||
    cmake --build --preset release --target pghandoff -j "$(nproc)" > /dev/null
fi
[ -x "$BIN" ] || { echo "missing $BIN" >&2; exit 2; }

is_root() { [ "$(id -u)" = 0 ]; }
as_pg() { if is_root; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work=$(mktemp -d /tmp/pghandoff-bench-mirror.XXXXXX)
chmod 755 "$work"
is_root && chown postgres "$work"
proxy_pid=""
async_pid=""
pool_pid=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  set +e
  [ -n "$proxy_pid" ] && kill -TERM "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null
  [ -n "$async_pid" ] && kill -TERM "$async_pid" 2>/dev/null && wait "$async_pid" 2>/dev/null
  if [ -n "$pool_pid" ]; then
    # pgpool's children outlive a killed parent (and spin once their servers
    # are gone): end its whole process group, before the servers.
    kill -INT -- "-$pool_pid" 2>/dev/null
    for _ in $(seq 30); do kill -0 -- "-$pool_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pool_pid" 2>/dev/null
  fi
  for d in src tgt; do
    [ -d "$work/$d" ] && as_pg "$PGBIN/pg_ctl" -D "$work/$d" -m immediate stop >/dev/null 2>&1
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

token=$(openssl rand -hex 16)
echo "== machine"
echo "nproc:      $(nproc)"
echo "pghandoff:  $("$BIN" --version)"
echo "pgpool-II:  $("$PGPOOL" --version 2>&1 | head -1)"
echo "postgres:   $("$PGBIN/postgres" --version)"
echo "loadavg:    $(cut -d' ' -f1-3 /proc/loadavg) (at start)"
echo "run:        $WORKLOAD pgbench -M $MODE, $CLIENTS clients, -T ${DURATION}s x $REPEAT rounds"

# --- two servers (trust on loopback: the benchmark is about the relay) ------
declare -A PORT
for d in src tgt; do
  PORT[$d]=$(free_port)
  as_pg "$PGBIN/initdb" -D "$work/$d" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$work/$d" -l "$work/$d.log" -w -o \
    "-p ${PORT[$d]} -k $work -c listen_addresses=127.0.0.1 -c fsync=off \
     -c synchronous_commit=off -c max_connections=200 -c shared_buffers=128MB" start >/dev/null
done
sport=${PORT[src]}
tport=${PORT[tgt]}
reinit() {  # both servers get the same pgbench -i -s 10 data (it is deterministic)
  for p in "$sport" "$tport"; do
    "$PGBIN/pgbench" -i -q -s 10 -h 127.0.0.1 -p "$p" -U postgres postgres > "$work/init.log" 2>&1 ||
      { cat "$work/init.log" >&2; exit 1; }
    "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$p" -U postgres -c "DROP TABLE IF EXISTS events;
      CREATE TABLE events (id bigserial PRIMARY KEY, aid int, created_at timestamptz DEFAULT now(),
      u uuid DEFAULT gen_random_uuid())" postgres
  done
}
cat > "$work/serial.sql" <<'SQL'
\set aid random(1, 1000000)
INSERT INTO events (aid) VALUES (:aid);
SQL
# same: do the two servers hold the same rows (history with its mtime)?
same() {
  local q="SELECT v FROM (SELECT 1 k, md5(string_agg(aid||':'||abalance, ',' ORDER BY aid)) v FROM pgbench_accounts
           UNION ALL SELECT 2, md5(string_agg(tid||':'||tbalance, ',' ORDER BY tid)) FROM pgbench_tellers
           UNION ALL SELECT 3, md5(string_agg(bid||':'||bbalance, ',' ORDER BY bid)) FROM pgbench_branches
           UNION ALL SELECT 4, md5(string_agg(tid||':'||bid||':'||aid||':'||delta, ',' ORDER BY tid,bid,aid,delta)) FROM pgbench_history) s ORDER BY k"
  local qt="SELECT md5(string_agg(tid||':'||bid||':'||aid||':'||delta||':'||mtime, ',' ORDER BY tid,bid,aid,delta,mtime)) FROM pgbench_history"
  local a b at bt
  a=$("$PGBIN/psql" -X -At -h 127.0.0.1 -p "$sport" -U postgres -c "$q")
  b=$("$PGBIN/psql" -X -At -h 127.0.0.1 -p "$tport" -U postgres -c "$q")
  at=$("$PGBIN/psql" -X -At -h 127.0.0.1 -p "$sport" -U postgres -c "$qt")
  bt=$("$PGBIN/psql" -X -At -h 127.0.0.1 -p "$tport" -U postgres -c "$qt")
  if [ "$WORKLOAD" = serial ]; then
    # Every column of every event: ids, timestamps, uuids.
    local qe="SELECT md5(string_agg(e::text, ',' ORDER BY id)) FROM events e"
    local qi="SELECT md5(string_agg(id||':'||aid, ',' ORDER BY id)) FROM events"
    a=$("$PGBIN/psql" -X -At -h 127.0.0.1 -p "$sport" -U postgres -c "$qi")
    b=$("$PGBIN/psql" -X -At -h 127.0.0.1 -p "$tport" -U postgres -c "$qi")
    at=$("$PGBIN/psql" -X -At -h 127.0.0.1 -p "$sport" -U postgres -c "$qe")
    bt=$("$PGBIN/psql" -X -At -h 127.0.0.1 -p "$tport" -U postgres -c "$qe")
    if [ "$a" != "$b" ]; then echo "ids-differ"
    elif [ "$at" != "$bt" ]; then echo "defaults-differ"
    else echo "identical"; fi
    return
  fi
  if [ "$a" != "$b" ]; then echo "rows-differ"
  elif [ "$at" != "$bt" ]; then echo "mtime-differs"
  else echo "identical"; fi
}

# --- pghandoff (mirror) -----------------------------------------------------
pport=$(free_port)
aport=$(free_port)
cat > "$work/pghandoff.yaml" <<YAML
listen: 127.0.0.1:$pport
source: { url: "postgres://postgres@127.0.0.1:$sport/postgres?sslmode=disable" }
target: { url: "postgres://postgres@127.0.0.1:$tport/postgres?sslmode=disable" }
client_tls: { mode: disable }
auth: { method: trust, users: [{ name: postgres, password: unused }] }
admin: { listen: 127.0.0.1:$aport, token: "\${PGHANDOFF_ADMIN_TOKEN}" }
# pgbench's history insert calls CURRENT_TIMESTAMP: pinned to the source's
# value, so the default policy (reject) has nothing to refuse.
mirror: { nondeterministic: reject }
state: { dir: $work/state }
log: { level: warn, format: text }
threads: ${BENCH_THREADS:-2}
YAML
# The same in mirror.mode async: acknowledged once journaled, applied to the
# target by the proxy's replay (compared once it has caught up).
qport=$(free_port)
bport=$(free_port)
sed -e "s/^listen: .*/listen: 127.0.0.1:$qport/" \
    -e "s/^admin: .*/admin: { listen: 127.0.0.1:$bport, token: \"\${PGHANDOFF_ADMIN_TOKEN}\" }/" \
    -e "s/^mirror: .*/mirror: { nondeterministic: reject, mode: async }/" \
    -e "s|^state: .*|state: { dir: $work/state-async }|" \
    "$work/pghandoff.yaml" > "$work/pghandoff-async.yaml"
PGHANDOFF_ADMIN_TOKEN="$token" "$BIN" proxy --config "$work/pghandoff.yaml" 2> "$work/pghandoff.log" &
proxy_pid=$!
PGHANDOFF_ADMIN_TOKEN="$token" "$BIN" proxy --config "$work/pghandoff-async.yaml" \
  2> "$work/pghandoff-async.log" &
async_pid=$!
for a in "$aport" "$bport"; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$a/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
done
phase() {  # phase NAME [ADMIN_PORT]
  curl -sf -H "Authorization: Bearer $token" -X POST -d "{\"phase\":\"$1\"}" \
    "http://127.0.0.1:${2:-$aport}/phase"
}
# The async proxy's replay: waits until nothing is left to apply.
drained() {
  for _ in $(seq 600); do
    q=$(curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$bport/metrics" |
      awk '/^pghandoff_mirror_queue_transactions / {print $2}')
    [ "$q" = 0 ] && return 0
    sleep 0.1
  done
  return 1
}
phase mirror > /dev/null
phase mirror "$bport" > /dev/null

# --- pgpool-II (native replication over the same two servers) --------------
ppool=$(free_port)
pcp=$(free_port)
cat > "$work/pgpool.conf" <<CONF
backend_clustering_mode = 'native_replication'
listen_addresses = '127.0.0.1'
port = $ppool
pcp_listen_addresses = '127.0.0.1'
pcp_port = $pcp
unix_socket_directories = '$work'
pcp_socket_dir = '$work'
pid_file_name = '$work/pgpool.pid'
logdir = '$work'
backend_hostname0 = '127.0.0.1'
backend_port0 = $sport
backend_weight0 = 1
backend_flag0 = 'DISALLOW_TO_FAILOVER'
backend_hostname1 = '127.0.0.1'
backend_port1 = $tport
backend_weight1 = 1
backend_flag1 = 'DISALLOW_TO_FAILOVER'
num_init_children = $((CLIENTS + 4))
max_pool = 1
enable_pool_hba = off
load_balance_mode = off
replicate_select = off
insert_lock = on
health_check_period = 0
failover_on_backend_error = off
connection_cache = on
log_min_messages = warning
CONF
: > "$work/pcp.conf"
is_root && chown postgres "$work/pgpool.conf" "$work/pcp.conf"
# Its own process group (setsid), so that cleanup can end every child.
if is_root; then
  setsid runuser -u postgres -- "$PGPOOL" -n -f "$work/pgpool.conf" -F "$work/pcp.conf" \
    > "$work/pgpool.log" 2>&1 &
else
  setsid "$PGPOOL" -n -f "$work/pgpool.conf" -F "$work/pcp.conf" > "$work/pgpool.log" 2>&1 &
fi
pool_pid=$!
for _ in $(seq 100); do
  "$PGBIN/psql" -X -At -h 127.0.0.1 -p "$ppool" -U postgres -c 'select 1' >/dev/null 2>&1 && break
  sleep 0.2
done

port_of() {
  case "$1" in
    direct) echo "$sport" ;; pghandoff) echo "$pport" ;; pghandoff-async) echo "$qport" ;;
    pgpool) echo "$ppool" ;;
  esac
}
mkdir -p "$work/results"
: > "$work/results/pauses-pghandoff"
: > "$work/results/pauses-pghandoff-async"
for r in $(seq "$REPEAT"); do
  echo "== round $r/$REPEAT" >&2
  for t in "${TARGETS[@]}"; do
    reinit
    flipper=""
    if [ "$t" = pghandoff ] || [ "$t" = pghandoff-async ]; then
      # Flips under load: mirror <-> mirror-read-target every 0.5 s (in
      # async mode each waits at its barrier for the replay to catch up).
      admin=$aport
      [ "$t" = pghandoff-async ] && admin=$bport
      (
        sleep 1
        end=$((SECONDS + DURATION - 2))
        p=mirror-read-target
        while [ "$SECONDS" -lt "$end" ]; do
          phase "$p" "$admin" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pause_ms"])' \
            >> "$work/results/pauses-$t"
          if [ "$p" = mirror ]; then p=mirror-read-target; else p=mirror; fi
          sleep 0.5
        done
        phase mirror "$admin" > /dev/null
      ) &
      flipper=$!
    fi
    out="$work/pgbench.out"
    script=()
    [ "$WORKLOAD" = serial ] && script=(-f "$work/serial.sql")
    if ! "$PGBIN/pgbench" -n -M "$MODE" "${script[@]}" -c "$CLIENTS" -j 2 -T "$DURATION" \
          -h 127.0.0.1 -p "$(port_of "$t")" -U postgres postgres > "$out" 2>&1; then
      echo "pgbench against $t failed:" >&2
      tail -5 "$out" >&2
      echo "0 n/a" >> "$work/results/$t"
      [ -n "$flipper" ] && wait "$flipper"
      continue
    fi
    [ -n "$flipper" ] && wait "$flipper"
    tps=$(awk '/^tps = / {print $3; exit}' "$out")
    verdict="n/a"
    if [ "$t" = pghandoff-async ] && ! drained; then verdict="replay-behind"
    elif [ "$t" != direct ]; then verdict=$(same); fi
    echo "$tps $verdict" >> "$work/results/$t"
    printf '  %-9s %10.1f tps  %s\n' "$t" "$tps" "$verdict" >&2
  done
done

echo
echo "== medians of $REPEAT runs of ${DURATION}s, $WORKLOAD -M $MODE, $CLIENTS clients"
python3 - "$work/results" <<'PY'
import statistics, sys
d = sys.argv[1]
def rows(t):
    return [l.split(None, 1) for l in open(f"{d}/{t}") if l.strip()]
names = ("direct", "pghandoff", "pghandoff-async", "pgpool")
med = {t: statistics.median(float(r[0]) for r in rows(t)) for t in names}
verdicts = {t: sorted({r[1].strip() for r in rows(t)}) for t in names[1:]}
print(f"direct_tps {med['direct']:.0f}  pghandoff_tps {med['pghandoff']:.0f}  "
      f"pghandoff_async_tps {med['pghandoff-async']:.0f}  pgpool_tps {med['pgpool']:.0f}")
if med["direct"] > 0:
    print(f"pghandoff/direct {med['pghandoff']/med['direct']:.2f}  "
          f"pghandoff-async/direct {med['pghandoff-async']/med['direct']:.2f}  "
          f"pgpool/direct {med['pgpool']/med['direct']:.2f}", end="")
if med["pgpool"] > 0:
    print(f"  pghandoff/pgpool {med['pghandoff']/med['pgpool']:.2f}")
else:
    print()
if med["pghandoff"] > 0:
    print(f"pghandoff-async/pghandoff {med['pghandoff-async']/med['pghandoff']:.2f}")
for t, v in verdicts.items():
    print(f"{t}: the two databases after each run: {', '.join(v)}")
for t in ("pghandoff", "pghandoff-async"):
    p = sorted(float(x) for x in open(f"{d}/pauses-{t}") if x.strip())
    if p:
        q = lambda f: p[min(len(p) - 1, int(round(f * (len(p) - 1))))]
        print(f"{t} flip pauses under load ({len(p)} flips): p50 {q(0.5):.1f} ms  "
              f"p99 {q(0.99):.1f} ms  max {p[-1]:.1f} ms")
PY
if [ "$WORKLOAD" = serial ]; then
  echo "(identical: every column; defaults-differ: same ids, created_at or uuid computed on each"
  echo " server; ids-differ: the servers gave different ids)"
else
  echo "(identical: same rows and history mtime; mtime-differs: same rows, CURRENT_TIMESTAMP"
  echo " evaluated on each server; rows-differ: the servers diverged)"
fi
echo "pghandoff log lines at level warn or above: $(grep -c . "$work/pghandoff.log" || true)" \
  "(async: $(grep -c . "$work/pghandoff-async.log" || true))"
exit 0
