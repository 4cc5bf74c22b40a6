#!/usr/bin/env bash
# Pass-through benchmark: what does putting pghandoff (phase source-only) in
# front of PostgreSQL cost, next to connecting directly and next to PgBouncer
# in session mode? Not a test: it asserts nothing, it prints numbers side by
# side from one run on one machine. See bench/README.md for how to read them.
#
# One throwaway PostgreSQL 15 server (pgbench -i -s 10), PgBouncer and
# pghandoff in front of it. For each client count (1, 8, 32) it runs
# `pgbench -n -S -M extended -T $BENCH_SECONDS` against direct, pgbouncer and
# pghandoff in turn, then one TPC-B-like run (-M prepared) at 8 clients per
# target; the whole round is repeated $BENCH_REPEAT times (interleaved, so
# drift of the machine hits all targets alike) and the medians are printed.
#
# Env: BENCH_SECONDS (default 10), BENCH_REPEAT (default 3),
#      BENCH_NO_BUILD=1 to skip `scripts/build.sh release`,
#      BENCH_HOLD=1 to set everything up and wait (for perf or strace by hand),
#      BENCH_BIN=path to measure another pghandoff executable.
# Runs as root (PostgreSQL and PgBouncer then run as the `postgres` user) or
# as a normal user.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${BENCH_SECONDS:-10}"
REPEAT="${BENCH_REPEAT:-3}"
read -r -a CLIENT_COUNTS <<< "${BENCH_CLIENTS:-1 8 32}"
TPCB_CLIENTS=8
TARGETS=(direct pgbouncer pghandoff)
PGBIN=/usr/lib/postgresql/15/bin
PGBOUNCER=/usr/sbin/pgbouncer
BIN="${BENCH_BIN:-$PWD/build/release/cli/pghandoff}"

for n in DURATION REPEAT; do
  [[ "${!n}" =~ ^[1-9][0-9]*$ ]] || { echo "$n must be a positive integer" >&2; exit 2; }
done
for f in "$PGBIN/initdb" "$PGBIN/pg_ctl" "$PGBIN/pgbench" "$PGBIN/psql" "$PGBOUNCER"; do
  [ -x "$f" ] || { echo "missing $f (scripts/install-deps.sh; Debian package pgbouncer)" >&2; exit 2; }
done

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  echo "== building (scripts/build.sh release)" >&2
  if ! build_out=$(scripts/build.sh release 2>&1); then
    # The benchmark needs only the executable: a broken test target elsewhere
    # in the tree should not stop it, a broken pghandoff should.
    printf '%s\n' "$build_out" | grep -E 'FAILED|error:' | head -5 >&2
    echo "== full build failed; building only the pghandoff target" >&2
    if ! build_out=$(cmake --build --preset release --target pghandoff -j "$(nproc)" 2>&1); then
      printf '%s\n' "$build_out" | tail -30 >&2
      echo "build of pghandoff failed" >&2
      exit 1
    fi
  fi
fi
[ -x "$BIN" ] || { echo "missing $BIN" >&2; exit 2; }

is_root() { [ "$(id -u)" = 0 ]; }
as_pg() { if is_root; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work=$(mktemp -d /tmp/pghandoff-bench.XXXXXX)
chmod 755 "$work"
is_root && chown postgres "$work"

proxy_pid=""
bouncer_pid=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  set +e
  if [ -n "$proxy_pid" ]; then
    kill -TERM "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null
  fi
  if [ -z "$bouncer_pid" ] && [ -s "$work/pgbouncer.pid" ]; then
    bouncer_pid=$(cat "$work/pgbouncer.pid")
  fi
  if [ -n "$bouncer_pid" ]; then
    kill -INT "$bouncer_pid" 2>/dev/null  # SIGINT: shut down now (SIGTERM waits for clients)
    # It removes its pidfile on the way out; once exited, the daemon may linger
    # as a zombie of whoever adopted it, so kill -0 alone would wait in vain.
    for _ in $(seq 50); do
      if [ ! -e "$work/pgbouncer.pid" ] || ! kill -0 "$bouncer_pid" 2>/dev/null; then break; fi
      sleep 0.1
    done
    [ -e "$work/pgbouncer.pid" ] && kill -KILL "$bouncer_pid" 2>/dev/null
  fi
  [ -d "$work/pg" ] && as_pg "$PGBIN/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

src_pw=$(openssl rand -hex 12)
app_pw=$(openssl rand -hex 12)
token=$(openssl rand -hex 16)
(umask 077; echo "$src_pw" > "$work/pw")
is_root && chown postgres "$work/pw"

# --- the machine --------------------------------------------------------------
echo "== machine"
echo "nproc:      $(nproc)"
echo "cpu:        $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
echo "memory:     $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
echo "pghandoff:  $("$BIN" --version)"
echo "pgbouncer:  $("$PGBOUNCER" --version | head -1)"
echo "postgres:   $("$PGBIN/postgres" --version)"
# Everything (server, proxies, pgbench) shares these cores, and so does
# anything else running: the load average says how quiet the machine was.
echo "loadavg:    $(cut -d' ' -f1-3 /proc/loadavg) (at start)"
echo "run:        -T ${DURATION}s x ${REPEAT} rounds, clients ${CLIENT_COUNTS[*]} (-S -M extended)" \
  "+ ${TPCB_CLIENTS} (TPC-B-like -M prepared); load generator on the same machine"

# --- PostgreSQL ---------------------------------------------------------------
sport=$(free_port)
as_pg "$PGBIN/initdb" -D "$work/pg" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
  --pwfile="$work/pw" -E UTF8 --locale=C.UTF-8 >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w -o \
  "-p $sport -k $work -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
   -c max_connections=200 -c shared_buffers=128MB" start >/dev/null
echo "== PostgreSQL on port $sport; pgbench -i -s 10" >&2
PGPASSWORD="$src_pw" "$PGBIN/pgbench" -i -q -s 10 -h 127.0.0.1 -p "$sport" -U postgres postgres \
  > "$work/init.log" 2>&1 || { cat "$work/init.log" >&2; exit 1; }

# --- PgBouncer (session mode) -------------------------------------------------
# Clients log in as `app` (SCRAM, plaintext in the auth_file so PgBouncer can
# verify it); PgBouncer logs in to the server as postgres, like pghandoff does.
bport=$(free_port)
(umask 077
 cat > "$work/userlist.txt" <<EOF
"app" "$app_pw"
EOF
 cat > "$work/pgbouncer.ini" <<EOF
[databases]
postgres = host=127.0.0.1 port=$sport dbname=postgres user=postgres password=$src_pw

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir = $work
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 50
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOF
)
if is_root; then
  chown postgres "$work/userlist.txt" "$work/pgbouncer.ini"
  "$PGBOUNCER" -d -u postgres "$work/pgbouncer.ini" > "$work/pgbouncer.out" 2>&1
else
  "$PGBOUNCER" -d "$work/pgbouncer.ini" > "$work/pgbouncer.out" 2>&1
fi || { cat "$work/pgbouncer.out" "$work/pgbouncer.log" >&2 2>/dev/null; exit 1; }
for _ in $(seq 100); do [ -s "$work/pgbouncer.pid" ] && break; sleep 0.1; done
bouncer_pid=$(cat "$work/pgbouncer.pid")

# --- pghandoff (source-only) --------------------------------------------------
pport=$(free_port)
aport=$(free_port)
cat > "$work/pghandoff.yaml" <<YAML
listen: 127.0.0.1:$pport
source: { url: "postgres://postgres:\${SOURCE_PASSWORD}@127.0.0.1:$sport/postgres?sslmode=disable" }
client_tls: { mode: disable }
auth: { method: scram-sha-256, users: [{ name: app, password: "\${APP_PASSWORD}" }] }
admin: { listen: 127.0.0.1:$aport, token: "\${PGHANDOFF_ADMIN_TOKEN}" }
state: { dir: $work/state }
log: { level: warn, format: text }
threads: ${BENCH_THREADS:-2}
YAML
SOURCE_PASSWORD="$src_pw" APP_PASSWORD="$app_pw" PGHANDOFF_ADMIN_TOKEN="$token" \
  "$BIN" proxy --config "$work/pghandoff.yaml" 2> "$work/pghandoff.log" &
proxy_pid=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$aport/healthz" >/dev/null 2>&1 && break
  kill -0 "$proxy_pid" 2>/dev/null || break
  sleep 0.1
done

# --- targets ------------------------------------------------------------------
# target_args TARGET -> sets port, user, password
target_conn() {
  case "$1" in
    direct) port=$sport user=postgres password=$src_pw ;;
    pgbouncer) port=$bport user=app password=$app_pw ;;
    pghandoff) port=$pport user=app password=$app_pw ;;
  esac
}
for t in "${TARGETS[@]}"; do
  target_conn "$t"
  ok=0
  for _ in $(seq 50); do
    if PGPASSWORD="$password" PGCONNECT_TIMEOUT=2 "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$port" \
         -U "$user" -d postgres -c 'select 1' > "$work/check.out" 2>&1; then ok=1; break; fi
    sleep 0.2
  done
  if [ "$ok" != 1 ]; then
    echo "$t (port $port) does not answer:" >&2
    cat "$work/check.out" >&2
    [ "$t" = pghandoff ] && tail -20 "$work/pghandoff.log" >&2
    [ "$t" = pgbouncer ] && tail -20 "$work/pgbouncer.log" >&2
    exit 1
  fi
done
echo "== direct :$sport   pgbouncer :$bport (pid $bouncer_pid)   pghandoff :$pport (pid $proxy_pid)" >&2
if [ "${BENCH_HOLD:-0}" = 1 ]; then
  # For profiling by hand (perf, strace): everything stays up until the
  # script is interrupted; the password of the `app` user is in $work/app_pw.
  (umask 077; echo "$app_pw" > "$work/app_pw")
  echo "== holding (BENCH_HOLD=1): work dir $work; Ctrl-C or SIGTERM ends it" >&2
  while :; do sleep 1; done
fi

# --- runs ---------------------------------------------------------------------
mkdir -p "$work/results"
# cpu_ticks PID: utime + stime of the process, in clock ticks (proc(5) fields 14, 15).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# ctx_switches PID: voluntary + involuntary context switches of all its threads.
ctx_switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { n += $2 } END { print n + 0 }'
}
# run_one TARGET LABEL CLIENTS PGBENCH-ARGS... : appends "tps latency_ms" to results/TARGET.LABEL
run_one() {
  local t=$1 label=$2 c=$3
  shift 3
  local j=$((c < 2 ? c : 2)) out="$work/pgbench.out"
  target_conn "$t"
  # CPU the relay itself spent (user + system, clock ticks) during the run:
  # TPS on 2 shared cores is noisy, CPU per transaction much less so.
  local relay_pid="" cpu0=0
  case "$t" in pghandoff) relay_pid=$proxy_pid ;; pgbouncer) relay_pid=$bouncer_pid ;; esac
  local cs0=0
  [ -n "$relay_pid" ] && cpu0=$(cpu_ticks "$relay_pid") && cs0=$(ctx_switches "$relay_pid")
  if ! PGPASSWORD="$password" "$PGBIN/pgbench" -n "$@" -c "$c" -j "$j" -T "$DURATION" \
        -h 127.0.0.1 -p "$port" -U "$user" postgres > "$out" 2>&1; then
    echo "pgbench against $t failed:" >&2
    tail -20 "$out" >&2
    exit 1
  fi
  local tps lat
  tps=$(awk '/^tps = / {print $3; exit}' "$out")
  lat=$(awk '/^latency average = / {print $4; exit}' "$out")
  if [ -z "$tps" ] || [ -z "$lat" ]; then
    echo "cannot parse pgbench output for $t:" >&2
    cat "$out" >&2
    exit 1
  fi
  local cpu_us=0 cs_tx=0
  if [ -n "$relay_pid" ]; then
    cs_tx=$(awk -v c0="$cs0" -v c1="$(ctx_switches "$relay_pid")" -v tps="$tps" -v d="$DURATION" \
      'BEGIN { printf "%.2f", (c1 - c0) / (tps * d) }')
    cpu_us=$(awk -v t0="$cpu0" -v t1="$(cpu_ticks "$relay_pid")" -v hz="$(getconf CLK_TCK)" \
      -v tps="$tps" -v d="$DURATION" 'BEGIN { printf "%.1f", (t1 - t0) * 1e6 / hz / (tps * d) }')
  fi
  echo "$tps $lat $cpu_us $cs_tx" >> "$work/results/$t.$label"
  printf '  %-9s %-8s %10.1f tps %8.3f ms %7s us cpu/tx %6s cs/tx\n' "$t" "$label" "$tps" "$lat" \
    "$cpu_us" "$cs_tx" >&2
}

# Warm-up, not recorded: fills PgBouncer's server pool (it opens server
# connections lazily) and the server's caches before the first measured run.
warm=$((DURATION < 3 ? DURATION : 3))
max_c=${CLIENT_COUNTS[${#CLIENT_COUNTS[@]}-1]}
echo "== warm-up (${warm}s, $max_c clients, not recorded)" >&2
for t in "${TARGETS[@]}"; do
  target_conn "$t"
  PGPASSWORD="$password" "$PGBIN/pgbench" -n -S -M extended -c "$max_c" -j 2 -T "$warm" \
    -h 127.0.0.1 -p "$port" -U "$user" postgres > "$work/pgbench.out" 2>&1 ||
    { echo "warm-up against $t failed:" >&2; tail -20 "$work/pgbench.out" >&2; exit 1; }
done

for r in $(seq "$REPEAT"); do
  echo "== round $r/$REPEAT" >&2
  for c in "${CLIENT_COUNTS[@]}"; do
    for t in "${TARGETS[@]}"; do run_one "$t" "$c" "$c" -S -M extended; done
  done
  for t in "${TARGETS[@]}"; do run_one "$t" "tpcb$TPCB_CLIENTS" "$TPCB_CLIENTS" -M prepared; done
done

# VmHWM is the peak resident set since the process started, so reading it
# once at the end covers the whole run.
hwm() { awk '/^VmHWM/ {printf "%.1f MiB", $2/1024}' "/proc/$1/status" 2>/dev/null || echo "n/a"; }
proxy_hwm=$(hwm "$proxy_pid")
bouncer_hwm=$(hwm "$bouncer_pid")

# --- table --------------------------------------------------------------------
echo
echo "== medians of $REPEAT runs of ${DURATION}s (TPS; mean latency in ms)"
labels=("${CLIENT_COUNTS[@]}" "tpcb$TPCB_CLIENTS")
python3 - "$work/results" "${labels[@]}" <<'PY'
import statistics, sys
d, labels = sys.argv[1], sys.argv[2:]
def rows(target, label):  # one per round, in round order: tps latency cpu cs
    return [[float(x) for x in l.split()] for l in open(f"{d}/{target}.{label}") if l.strip()]
def med(target, label):
    rs = rows(target, label)
    return tuple(statistics.median(r[i] for r in rs) for i in range(3))
cols = ["clients", "direct_tps", "pgbouncer_tps", "pghandoff_tps", "pghandoff/direct",
        "pghandoff/pgbouncer", "direct_lat_ms", "pgbouncer_lat_ms", "pghandoff_lat_ms",
        "added_lat_pgbouncer_ms", "added_lat_pghandoff_ms", "pgbouncer_cpu_us/tx",
        "pghandoff_cpu_us/tx"]
out = [cols]
for label in labels:
    (dt, dl, _), (bt, bl, bc), (ht, hl, hc) = (med(t, label)
                                              for t in ("direct", "pgbouncer", "pghandoff"))
    name = f"{label[4:]} tpcb" if label.startswith("tpcb") else label
    out.append([name, f"{dt:.0f}", f"{bt:.0f}", f"{ht:.0f}", f"{ht/dt:.2f}", f"{ht/bt:.2f}",
                f"{dl:.3f}", f"{bl:.3f}", f"{hl:.3f}", f"{bl-dl:+.3f}", f"{hl-dl:+.3f}", f"{bc:.1f}", f"{hc:.1f}"])
w = [max(len(r[i]) for r in out) for i in range(len(cols))]
for r in out:
    print("  ".join(r[i].rjust(w[i]) for i in range(len(cols))))

# Paired by round: PgBouncer and pghandoff ran back to back in each round, so
# their ratio within a round is less exposed to the machine's drift than the
# ratio of the medians.
print()
print("pghandoff/pgbouncer TPS per round (paired): min  median  max  rounds >= 1")
for label in labels:
    r = sorted(h[0] / b[0] for h, b in zip(rows("pghandoff", label), rows("pgbouncer", label)))
    name = f"{label[4:]} tpcb" if label.startswith("tpcb") else label
    print(f"{name:>7}  {r[0]:.2f}  {statistics.median(r):.2f}  {r[-1]:.2f}  "
          f"{sum(x >= 1 for x in r)}/{len(r)}")
PY
echo "(rows 1/8/32: pgbench -S -M extended, select-only; '8 tpcb': TPC-B-like -M prepared, 8 clients)"
echo
echo "peak RSS (VmHWM): pghandoff $proxy_hwm, pgbouncer $bouncer_hwm"
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)"
warn_lines=$(grep -c . "$work/pghandoff.log" || true)
echo "pghandoff log lines at level warn or above: $warn_lines"
[ "$warn_lines" != 0 ] && tail -5 "$work/pghandoff.log"
exit 0
