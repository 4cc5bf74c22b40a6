#!/usr/bin/python3
"""psycopg2 workload for pghandoff integration tests.

Runs one scenario against a PostgreSQL server (or pghandoff in front of one),
prints one line per check ("ok   <check>" / "FAIL <check>: <why>") and exits:
  0  every check passed
  1  at least one check failed
  2  the scenario could not run (bad arguments, cannot connect, unexpected error)
  3  the watchdog fired (the whole scenario took longer than --timeout seconds)

Usage:
  /usr/bin/python3 tests/clients/psycopg2_client.py --dsn DSN --scenario NAME [--prefix P]
      [--timeout SECONDS]
Scenarios: basic, copy, notify, cancel, large (or "all").
The DSN may also come from the PGHANDOFF_DSN environment variable. It is never
printed: it may hold a password.
"""

import argparse
import decimal
import hashlib
import io
import os
import re
import select
import sys
import threading
import time
import traceback

import psycopg2
import psycopg2.errors
import psycopg2.extensions

SCENARIOS = ("basic", "copy", "notify", "cancel", "large", "ledger")


class CheckFailed(Exception):
    """A check failed in a way that makes the rest of the scenario meaningless."""


class Checker:
    def __init__(self, scenario):
        self.scenario = scenario
        self.passed = 0
        self.failed = 0

    def check(self, name, condition, detail=""):
        if condition:
            self.passed += 1
            print(f"ok   {self.scenario}: {name}", flush=True)
        else:
            self.failed += 1
            suffix = f": {detail}" if detail else ""
            print(f"FAIL {self.scenario}: {name}{suffix}", flush=True)
        return condition

    def equal(self, name, got, want):
        return self.check(name, got == want, f"got {_short(got)!s}, want {_short(want)!s}")

    def require(self, name, condition, detail=""):
        if not self.check(name, condition, detail):
            raise CheckFailed(name)


def _short(value, limit=200):
    text = repr(value)
    if len(text) > limit:
        return text[:limit] + f"... ({len(text)} chars)"
    return text


def connect(dsn, **kwargs):
    # client_encoding pinned so the unicode checks do not depend on the
    # server's default; connect_timeout so a dead proxy fails instead of hanging.
    return psycopg2.connect(dsn, client_encoding="UTF8", connect_timeout=10, **kwargs)


def drop_tables(dsn, tables):
    if not tables:
        return
    try:
        conn = connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            for table in tables:
                cur.execute(f"DROP TABLE IF EXISTS {table}")
        conn.close()
    except psycopg2.Error as exc:
        state = f"SQLSTATE {exc.pgcode}: " if exc.pgcode else ""
        message = str(exc).strip().replace("\n", " | ")
        print(f"warning: could not drop tables {', '.join(tables)}: {state}{message}", file=sys.stderr)


# --------------------------------------------------------------------------- basic

def scenario_basic(dsn, prefix, ck, tables):
    table = f"{prefix}_basic"
    tables.append(table)
    conn = connect(dsn)
    other = connect(dsn)
    other.autocommit = True
    cur = conn.cursor()
    cur.execute(f"DROP TABLE IF EXISTS {table}")
    cur.execute(
        f"CREATE TABLE {table} (id int PRIMARY KEY, name text, amount numeric(12,2),"
        f" flag boolean, data bytea, note text)")
    conn.commit()
    ck.check("create table", True)

    # 100 parameterised inserts, one statement each.
    want = []
    for i in range(1, 101):
        row = (i, f"name-{i}", decimal.Decimal(i * 3) / 4, i % 2 == 0)
        cur.execute(f"INSERT INTO {table} (id, name, amount, flag) VALUES (%s, %s, %s, %s)", row)
        ck_rowcount = cur.rowcount
        if ck_rowcount != 1:
            ck.equal(f"insert {i} rowcount", ck_rowcount, 1)
        want.append((i, f"name-{i}", (decimal.Decimal(i * 3) / 4).quantize(decimal.Decimal("0.01")),
                     i % 2 == 0))
    conn.commit()
    cur.execute(f"SELECT id, name, amount, flag FROM {table} ORDER BY id")
    got = cur.fetchall()
    ck.equal("100 parameterised rows read back exactly", got, want)
    cur.execute(f"SELECT count(*), sum(id), sum(amount) FROM {table}")
    ck.equal("count/sum of 100 rows", cur.fetchone(), (100, 5050, decimal.Decimal("3787.50")))
    cur.execute(f"SELECT name FROM {table} WHERE id = %s AND flag = %s", (42, True))
    ck.equal("select with parameters", cur.fetchall(), [("name-42",)])
    conn.commit()

    # Commit is visible to another session; rollback is invisible to both.
    cur.execute(f"INSERT INTO {table} (id, name) VALUES (%s, %s)", (1001, "committed"))
    with other.cursor() as ocur:
        ocur.execute(f"SELECT count(*) FROM {table} WHERE id = 1001")
        ck.equal("uncommitted insert invisible to another session", ocur.fetchone(), (0,))
    conn.commit()
    with other.cursor() as ocur:
        ocur.execute(f"SELECT name FROM {table} WHERE id = 1001")
        ck.equal("committed insert visible to another session", ocur.fetchall(), [("committed",)])
    cur.execute(f"INSERT INTO {table} (id, name) VALUES (%s, %s)", (1002, "rolled back"))
    cur.execute(f"SELECT count(*) FROM {table} WHERE id = 1002")
    ck.equal("insert visible inside its own transaction", cur.fetchone(), (1,))
    conn.rollback()
    cur.execute(f"SELECT count(*) FROM {table} WHERE id = 1002")
    ck.equal("rolled back insert invisible afterwards", cur.fetchone(), (0,))
    with other.cursor() as ocur:
        ocur.execute(f"SELECT count(*) FROM {table} WHERE id = 1002")
        ck.equal("rolled back insert invisible to another session", ocur.fetchone(), (0,))
    conn.commit()

    # A server error carries its SQLSTATE and leaves the connection usable.
    try:
        cur.execute("SELECT 1/0")
        ck.check("division by zero raises", False, "no error raised")
    except psycopg2.errors.DivisionByZero as exc:
        ck.equal("division by zero SQLSTATE", exc.pgcode, "22012")
        ck.check("division by zero message", "division by zero" in (exc.pgerror or ""),
                 f"message {exc.pgerror!r}")
    ck.equal("transaction aborted after the error",
             conn.info.transaction_status, psycopg2.extensions.TRANSACTION_STATUS_INERROR)
    try:
        cur.execute("SELECT 1")
        ck.check("statement in aborted transaction refused", False, "no error raised")
    except psycopg2.errors.InFailedSqlTransaction as exc:
        ck.equal("aborted transaction SQLSTATE", exc.pgcode, "25P02")
    conn.rollback()
    cur.execute("SELECT 40 + %s", (2,))
    ck.equal("connection usable after the error", cur.fetchone(), (42,))
    conn.commit()
    conn.autocommit = True
    try:
        cur.execute("SELECT 1/0")
        ck.check("division by zero raises in autocommit", False, "no error raised")
    except psycopg2.errors.DivisionByZero as exc:
        ck.equal("division by zero SQLSTATE in autocommit", exc.pgcode, "22012")
    cur.execute("SELECT 'still alive'")
    ck.equal("autocommit connection usable after the error", cur.fetchone(), ("still alive",))
    conn.autocommit = False

    # Unicode round trip (2-, 3- and 4-byte UTF-8, combining marks, quotes).
    text = "héllo wörld – Ελληνικά 日本語 🐘🚀 e\u0301 'quote' \"dq\" back\\slash\ttab\nnewline"
    cur.execute(f"INSERT INTO {table} (id, note) VALUES (%s, %s)", (2001, text))
    cur.execute(f"SELECT note, length(note), octet_length(note) FROM {table} WHERE id = 2001")
    ck.equal("unicode text round trip", cur.fetchone(),
             (text, len(text), len(text.encode("utf-8"))))
    cur.execute("SELECT %s::text", (text,))
    ck.equal("unicode parameter echoed", cur.fetchone(), (text,))

    # bytea round trip: every byte value, including NUL and high bytes.
    blob = bytes(range(256)) * 64 + b"\x00\x00\xff"
    cur.execute(f"INSERT INTO {table} (id, data) VALUES (%s, %s)", (2002, psycopg2.Binary(blob)))
    cur.execute(f"SELECT data, octet_length(data), md5(data) FROM {table} WHERE id = 2002")
    data, length, md5 = cur.fetchone()
    ck.equal("bytea round trip", bytes(data), blob)
    ck.equal("bytea length on the server", length, len(blob))
    ck.equal("bytea md5 on the server", md5, hashlib.md5(blob).hexdigest())

    # NULLs in every column type we use.
    cur.execute(f"INSERT INTO {table} (id, name, amount, flag, data, note)"
                f" VALUES (%s, %s, %s, %s, %s, %s)", (2003, None, None, None, None, None))
    cur.execute(f"SELECT name, amount, flag, data, note FROM {table} WHERE id = 2003")
    ck.equal("NULL parameters read back as None", cur.fetchone(), (None,) * 5)
    cur.execute("SELECT NULL::int, %s IS NULL, coalesce(%s, 'dflt')", (None, None))
    ck.equal("NULL expressions", cur.fetchone(), (None, True, "dflt"))
    conn.commit()

    # executemany
    rows = [(3000 + i, f"many-{i}", i) for i in range(50)]
    cur.executemany(f"INSERT INTO {table} (id, name, amount) VALUES (%s, %s, %s)", rows)
    conn.commit()
    cur.execute(f"SELECT count(*), sum(amount), min(name), max(name) FROM {table}"
                f" WHERE id BETWEEN 3000 AND 3049")
    ck.equal("executemany rows", cur.fetchone(), (50, decimal.Decimal("1225.00"), "many-0", "many-9"))
    cur.execute(f"SELECT id, name FROM {table} WHERE id BETWEEN 3000 AND 3049 ORDER BY id")
    ck.equal("executemany rows exact", cur.fetchall(), [(r[0], r[1]) for r in rows])
    cur.execute(f"SELECT count(*) FROM {table}")
    ck.equal("final row count", cur.fetchone(), (100 + 1 + 1 + 1 + 1 + 50,))
    conn.commit()
    other.close()
    conn.close()


# --------------------------------------------------------------------------- copy

COPY_ROWS = 10000


def _copy_text_rows():
    # Text-format COPY escaping: backslash, tab and newline are escaped; \N is NULL.
    lines = []
    for i in range(1, COPY_ROWS + 1):
        if i % 1000 == 0:
            txt = "\\N"
        elif i % 7 == 0:
            txt = f"tab\\there\\\\back{i}"
        elif i % 11 == 0:
            txt = f"line\\nbreak-ü-🐘-{i}"
        else:
            txt = f"row-{i}"
        lines.append(f"{i}\t{txt}\t{i * 2}.50\n")
    return "".join(lines)


def scenario_copy(dsn, prefix, ck, tables):
    table = f"{prefix}_copy"
    tables.append(table)
    conn = connect(dsn)
    cur = conn.cursor()
    cur.execute(f"DROP TABLE IF EXISTS {table}")
    cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, txt text, num numeric(12,2))")
    conn.commit()

    payload = _copy_text_rows()
    cur.copy_expert(f"COPY {table} (id, txt, num) FROM STDIN", io.StringIO(payload))
    ck.equal("COPY FROM STDIN row count reported", cur.rowcount, COPY_ROWS)
    conn.commit()

    cur.execute(f"SELECT count(*), sum(id), sum(num), count(txt) FROM {table}")
    want_sum_num = sum(decimal.Decimal(f"{i * 2}.50") for i in range(1, COPY_ROWS + 1))
    ck.equal("count/sums after COPY FROM", cur.fetchone(),
             (COPY_ROWS, COPY_ROWS * (COPY_ROWS + 1) // 2, want_sum_num, COPY_ROWS - COPY_ROWS // 1000))
    cur.execute(f"SELECT txt FROM {table} WHERE id IN (7, 11, 1000) ORDER BY id")
    ck.equal("COPY escapes decoded", cur.fetchall(),
             [("tab\there\\back7",), ("line\nbreak-ü-🐘-11",), (None,)])
    conn.commit()

    out = io.StringIO()
    cur.copy_expert(f"COPY (SELECT id, txt, num FROM {table} ORDER BY id) TO STDOUT", out)
    ck.equal("COPY TO STDOUT row count reported", cur.rowcount, COPY_ROWS)
    got = out.getvalue()
    ck.check("COPY TO STDOUT equals what was copied in", got == payload,
             _first_difference(got, payload))

    # CSV with a header, the other common format.
    out = io.StringIO()
    cur.copy_expert(f"COPY (SELECT id, num FROM {table} WHERE id <= 3 ORDER BY id)"
                    f" TO STDOUT WITH (FORMAT csv, HEADER true)", out)
    ck.equal("COPY TO STDOUT csv", out.getvalue(), "id,num\n1,2.50\n2,4.50\n3,6.50\n")

    # A COPY that fails on the server reports its error and the connection survives.
    try:
        cur.copy_expert(f"COPY {table} (id, txt, num) FROM STDIN", io.StringIO("1\tdup\t1.00\n"))
        ck.check("COPY duplicate key raises", False, "no error raised")
    except psycopg2.errors.UniqueViolation as exc:
        ck.equal("COPY duplicate key SQLSTATE", exc.pgcode, "23505")
    conn.rollback()
    cur.execute(f"SELECT count(*) FROM {table}")
    ck.equal("row count unchanged after failed COPY", cur.fetchone(), (COPY_ROWS,))
    conn.commit()
    conn.close()


def _first_difference(got, want):
    for index, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return (f"first difference at char {index}: got {got[index:index + 40]!r},"
                    f" want {want[index:index + 40]!r}")
    return f"lengths differ: got {len(got)}, want {len(want)}"


# --------------------------------------------------------------------------- notify

def _wait_notifies(conn, count, deadline):
    while len(conn.notifies) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([conn], [], [], remaining)
        if ready:
            conn.poll()
    return list(conn.notifies)


def scenario_notify(dsn, prefix, ck, tables):
    channel = f"{prefix}_chan"
    listener = connect(dsn)
    listener.autocommit = True
    sender = connect(dsn)
    sender.autocommit = True
    with listener.cursor() as cur:
        cur.execute(f"LISTEN {channel}")
    ck.check("LISTEN", True)

    # A NOTIFY in a rolled back transaction is never delivered; notifications
    # arrive in commit order, so once the committed one is here the other
    # would already have arrived if it was (wrongly) sent.
    with sender.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT pg_notify(%s, %s)", (channel, "rolled-back"))
        cur.execute("ROLLBACK")
        payload = "hello from sender ü🐘"
        started = time.monotonic()
        cur.execute(f"NOTIFY {channel}, %s", (payload,))
    got = _wait_notifies(listener, 1, started + 5.0)
    elapsed = time.monotonic() - started
    ck.check("notification received within 5 s", len(got) >= 1,
             f"{len(got)} notifications after {elapsed:.1f}s")
    if got:
        ck.equal("notification channel", got[0].channel, channel)
        ck.equal("notification payload", got[0].payload, payload)
        ck.check("notification sender pid is set", got[0].pid > 0, f"pid {got[0].pid}")
    ck.equal("only the committed notification is delivered", len(got), 1)
    listener.notifies.clear()

    # Several notifications from one transaction arrive together, in order.
    with sender.cursor() as cur:
        cur.execute("BEGIN")
        for i in range(3):
            cur.execute("SELECT pg_notify(%s, %s)", (channel, f"batch-{i}"))
        cur.execute("COMMIT")
    got = _wait_notifies(listener, 3, time.monotonic() + 5.0)
    ck.equal("transactional notifications in order", [n.payload for n in got],
             ["batch-0", "batch-1", "batch-2"])
    listener.notifies.clear()

    with listener.cursor() as cur:
        cur.execute(f"UNLISTEN {channel}")
        cur.execute("SELECT 1")
        ck.equal("listener connection usable", cur.fetchone(), (1,))
    listener.close()
    sender.close()


# --------------------------------------------------------------------------- cancel

def scenario_cancel(dsn, prefix, ck, tables):
    conn = connect(dsn)
    monitor = connect(dsn)
    monitor.autocommit = True
    tag = f"/* {prefix}_cancel */"
    sleep_sql = f"SELECT pg_sleep(30) {tag}"
    done = threading.Event()
    cancel_times = []

    def canceller():
        # Wait until the backend is really running the query (a CancelRequest
        # that arrives while the backend is idle is ignored), with a deadline;
        # then keep cancelling until the query ends, in case the first request
        # raced the start of the query (e.g. reads of pg_stat_activity are
        # served by a different server than the sleeping session).
        deadline = time.monotonic() + 5.0
        while not done.is_set() and time.monotonic() < deadline:
            with monitor.cursor() as mcur:
                mcur.execute("SELECT count(*) FROM pg_stat_activity"
                             " WHERE state = 'active' AND query = %s", (sleep_sql,))
                if mcur.fetchone()[0] > 0:
                    break
            done.wait(0.05)
        # A repeat is spaced well beyond the normal cancel latency so that, when
        # the first request works, no second one can hit the follow-up query.
        while not done.is_set():
            cancel_times.append(time.monotonic())
            conn.cancel()
            done.wait(2.0)

    thread = threading.Thread(target=canceller, daemon=True)
    started = time.monotonic()
    thread.start()
    cur = conn.cursor()
    error = None
    try:
        cur.execute(sleep_sql)
    except psycopg2.Error as exc:
        error = exc
    finished = time.monotonic()
    done.set()
    thread.join(10)
    ck.require("canceller thread finished", not thread.is_alive())
    ck.check("QueryCanceled raised", isinstance(error, psycopg2.errors.QueryCanceled),
             f"got {type(error).__name__}: {error}" if error else "query was not interrupted")
    ck.equal("cancel SQLSTATE", getattr(error, "pgcode", None), "57014")
    ck.check("cancel message", "canceling statement due to user request" in str(error),
             f"message {str(error)!r}")
    ck.check("a cancel request was sent", len(cancel_times) >= 1, "none sent")
    if cancel_times:
        latency = finished - cancel_times[0]
        ck.check("query ended within 5 s of the first cancel", latency < 5.0,
                 f"{latency:.2f}s")
    ck.check("query ended well before pg_sleep(30)", finished - started < 15.0,
             f"{finished - started:.2f}s")
    conn.rollback()
    cur.execute("SELECT %s::int * 2", (21,))
    ck.equal("connection usable after cancel", cur.fetchone(), (42,))
    conn.commit()
    monitor.close()
    conn.close()


# --------------------------------------------------------------------------- large

def scenario_large(dsn, prefix, ck, tables):
    table = f"{prefix}_large"
    tables.append(table)
    conn = connect(dsn)
    cur = conn.cursor()
    cur.execute(f"DROP TABLE IF EXISTS {table}")
    cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text)")
    conn.commit()

    # 20 MB of non-repeating-looking text (a repeated pattern would be fine for
    # the wire, but varied content catches truncation and reordering).
    unit = "".join(f"{i:08x}-" for i in range(4096))  # 36864 chars
    body = (unit * (20 * 1024 * 1024 // len(unit) + 1))[:20 * 1024 * 1024]
    body = body[:-5] + "END🐘"  # the last bytes must survive too (multibyte)
    want_md5 = hashlib.md5(body.encode("utf-8")).hexdigest()
    cur.execute(f"INSERT INTO {table} (id, body) VALUES (%s, %s)", (1, body))
    conn.commit()
    cur.execute(f"SELECT length(body), md5(body) FROM {table} WHERE id = 1")
    ck.equal("20 MB value stored intact (server length, md5)", cur.fetchone(), (len(body), want_md5))
    cur.execute(f"SELECT body FROM {table} WHERE id = 1")
    got = cur.fetchone()[0]
    ck.check("20 MB value read back intact", got == body,
             f"got {len(got)} chars, want {len(body)}" if len(got) != len(body) else
             _first_difference(got, body))
    cur.execute("SELECT %s::text", (body,))
    ck.check("20 MB parameter echoed", cur.fetchone()[0] == body, "echo differs")
    conn.commit()

    # 100k rows in one result set.
    cur.execute("SELECT g, 'row-' || g, g::numeric / 4 FROM generate_series(1, 100000) g")
    rows = cur.fetchall()
    ck.equal("100k rows returned", len(rows), 100000)
    ck.equal("first row", rows[0], (1, "row-1", decimal.Decimal("0.25")))
    ck.equal("last row", rows[-1], (100000, "row-100000", decimal.Decimal("25000.00")))
    ck.equal("sum of ids", sum(r[0] for r in rows), 100000 * 100001 // 2)
    ck.check("every row exact", all(r[1] == f"row-{r[0]}" and r[0] == i + 1
                                    for i, r in enumerate(rows)), "a row differs")
    del rows
    conn.commit()

    # The same through a server-side cursor (DECLARE/FETCH), in batches.
    named = conn.cursor(name=f"{prefix}_cur")
    named.itersize = 5000
    named.execute("SELECT g FROM generate_series(1, 100000) g")
    count = 0
    total = 0
    in_order = True
    for (value,) in named:
        count += 1
        total += value
        in_order = in_order and value == count
    named.close()
    conn.commit()
    ck.equal("100k rows through a server-side cursor", (count, total, in_order),
             (100000, 100000 * 100001 // 2, True))
    conn.close()


# --------------------------------------------------------------------------- ledger

def scenario_ledger(dsn, prefix, ck, tables):
    """Writes for PGHANDOFF_LEDGER_SECONDS (or until PGHANDOFF_LEDGER_STOP_FILE exists)
    into a table the caller made
    (PGHANDOFF_LEDGER_TABLE, kept afterwards) and reports what was acknowledged,
    so the caller can check every acknowledged row on both servers. Its id,
    created_at and uuid come from column defaults; every error is a failure."""
    del prefix, tables  # the caller's table stays
    table = os.environ.get("PGHANDOFF_LEDGER_TABLE", "ledger")
    seconds = float(os.environ.get("PGHANDOFF_LEDGER_SECONDS", "5"))
    name = os.environ.get("PGHANDOFF_LEDGER_CLIENT", "psycopg2")
    conn = connect(dsn)
    conn.autocommit = True
    acked = keysum = k = errors = 0
    deadline = time.monotonic() + seconds
    stop_file = os.environ.get("PGHANDOFF_LEDGER_STOP_FILE", "")  # the demo ends it so
    while time.monotonic() < deadline and not (stop_file and os.path.exists(stop_file)):
        k += 1
        try:
            if k % 3 == 0:
                # Two rows in one transaction (psycopg2 sends the BEGIN).
                conn.autocommit = False
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {table} (client, k, amount) VALUES (%s, %s, %s)"
                                " RETURNING id", (name, k, decimal.Decimal(k) / 4))
                    cur.fetchone()
                    cur.execute(f"INSERT INTO {table} (client, k, amount) VALUES (%s, %s, 0)",
                                (name, k + 1000000))
                conn.commit()
                conn.autocommit = True
                acked += 2
                keysum += 2 * k + 1000000
            else:
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {table} (client, k, amount, note) VALUES"
                                " (%s, %s, %s, %s) RETURNING id, created_at, u",
                                (name, k, k, "autocommit"))
                    cur.fetchone()
                acked += 1
                keysum += k
            with conn.cursor() as cur:
                cur.execute(f"SELECT count(*) FROM {table} WHERE client = %s", (name,))
                cur.fetchone()
        except psycopg2.Error as exc:
            errors += 1
            print(f"error: SQLSTATE {exc.pgcode}: {str(exc).strip()}", flush=True)
            if not conn.closed:
                conn.rollback()
                conn.autocommit = True
            else:
                conn = connect(dsn)
                conn.autocommit = True
    ck.equal("errors while writing", errors, 0)
    ck.check("wrote rows", acked > 0)
    print(f"ledger {name}: acked={acked} keysum={keysum}", flush=True)


# --------------------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("PGHANDOFF_DSN"),
                        help="libpq connection string (default: $PGHANDOFF_DSN)")
    parser.add_argument("--scenario", required=True, choices=SCENARIOS + ("all",))
    parser.add_argument("--prefix", default=f"pgh_py_{os.getpid()}",
                        help="prefix of the tables/channels this run creates")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="watchdog: exit 3 if the scenario runs longer than this")
    args = parser.parse_args()
    if not args.dsn:
        parser.error("--dsn (or PGHANDOFF_DSN) is required")
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", args.prefix):
        parser.error("--prefix must match [a-z_][a-z0-9_]{0,40}")

    def watchdog():
        print(f"FAIL psycopg2: watchdog: scenario {args.scenario} still running after"
              f" {args.timeout:.0f}s", flush=True)
        os._exit(3)

    timer = threading.Timer(args.timeout, watchdog)
    timer.daemon = True
    timer.start()

    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    passed = failed = 0
    status = 0
    for name in scenarios:
        ck = Checker(name)
        tables = []
        try:
            globals()[f"scenario_{name}"](args.dsn, f"{args.prefix}_{name[:3]}", ck, tables)
        except CheckFailed as exc:
            print(f"FAIL {name}: stopped after failed check '{exc}'", flush=True)
        except psycopg2.OperationalError as exc:
            message = str(exc).strip().replace("\n", " | ")
            print(f"FAIL {name}: cannot run: connection error: {message}", flush=True)
            status = 2
        except Exception as exc:  # noqa: BLE001 - report anything unexpected as a failure
            detail = f" (SQLSTATE {exc.pgcode})" if getattr(exc, "pgcode", None) else ""
            print(f"FAIL {name}: unexpected {type(exc).__name__}{detail}: {exc}".rstrip(),
                  flush=True)
            traceback.print_exc(file=sys.stderr)
            status = 2
        finally:
            drop_tables(args.dsn, tables)
        passed += ck.passed
        failed += ck.failed
    timer.cancel()
    if failed and status == 0:
        status = 1
    if status == 0 and passed == 0:
        status = 2  # a scenario that checked nothing is not a pass
    verdict = "PASS" if status == 0 else "FAIL"
    print(f"{verdict} psycopg2 {args.scenario}: {passed} checks ok, {failed} failed"
          + ("" if status in (0, 1) else f" (exit {status}: could not run to completion)"),
          flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
