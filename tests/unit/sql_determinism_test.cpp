#include "protocol/sql_determinism.h"

#include <gtest/gtest.h>
#include <pg_query.h>

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pghandoff::protocol {
namespace {

using Kind = VolatileCall::Kind;
using Op = WriteTarget::Op;

bool parses(const std::string& sql) {
  PgQueryParseResult r = pg_query_parse(sql.c_str());
  const bool ok = r.error == nullptr;
  pg_query_free_parse_result(r);
  return ok;
}

// One expected call: the exact text of its range, kind, name, type, argument.
struct ExpectedCall {
  std::string_view text;
  Kind kind;
  std::string_view function;
  std::string_view type;
  std::optional<std::string_view> argument = std::nullopt;
};

struct CallCase {
  std::string_view sql;
  std::vector<ExpectedCall> calls;
};

const std::vector<CallCase>& callCases() {
  static const std::vector<CallCase> cases = {
      // --- every kind
      {"SELECT now()", {{"now()", Kind::kTransactionTime, "now", "timestamptz"}}},
      {"SELECT transaction_timestamp ( )",
       {{"transaction_timestamp ( )", Kind::kTransactionTime, "transaction_timestamp",
         "timestamptz"}}},
      {"SELECT statement_timestamp()",
       {{"statement_timestamp()", Kind::kStatementTime, "statement_timestamp", "timestamptz"}}},
      {"SELECT clock_timestamp(), timeofday()",
       {{"clock_timestamp()", Kind::kClockTime, "clock_timestamp", "timestamptz"},
        {"timeofday()", Kind::kClockTime, "timeofday", "text"}}},
      {"SELECT random()", {{"random()", Kind::kRandom, "random", "double precision"}}},
      {"SELECT gen_random_uuid(), public.uuid_generate_v4(), extensions.uuid_generate_v1()",
       {{"gen_random_uuid()", Kind::kUuid, "gen_random_uuid", "uuid"},
        {"public.uuid_generate_v4()", Kind::kUuid, "uuid_generate_v4", "uuid"},
        {"extensions.uuid_generate_v1()", Kind::kUuid, "uuid_generate_v1", "uuid"}}},
      {"SELECT nextval('t_id_seq'::regclass)",
       {{"nextval('t_id_seq'::regclass)", Kind::kSequence, "nextval", "bigint",
         "'t_id_seq'::regclass"}}},
      {"SELECT nextval( 'public.t_id_seq' ), currval('s'), lastval()",
       {{"nextval( 'public.t_id_seq' )", Kind::kSequence, "nextval", "bigint", "'public.t_id_seq'"},
        {"currval('s')", Kind::kSequence, "currval", "bigint", "'s'"},
        {"lastval()", Kind::kSequence, "lastval", "bigint"}}},
      // --- SQL value functions, with and without precision, any case
      {"SELECT CURRENT_TIMESTAMP(3), current_timestamp",
       {{"CURRENT_TIMESTAMP(3)", Kind::kTransactionTime, "current_timestamp", "timestamptz(3)"},
        {"current_timestamp", Kind::kTransactionTime, "current_timestamp", "timestamptz"}}},
      {"SELECT CURRENT_DATE, CURRENT_TIME ( 0 ), LOCALTIME, LOCALTIMESTAMP(6)",
       {{"CURRENT_DATE", Kind::kTransactionTime, "current_date", "date"},
        {"CURRENT_TIME ( 0 )", Kind::kTransactionTime, "current_time", "timetz(0)"},
        {"LOCALTIME", Kind::kTransactionTime, "localtime", "time"},
        {"LOCALTIMESTAMP(6)", Kind::kTransactionTime, "localtimestamp", "timestamp(6)"}}},
      // --- 'now'-style literals: the literal alone
      {"SELECT 'now'::timestamptz, date 'today', CAST(' Tomorrow ' AS timestamp(0))",
       {{"'now'", Kind::kTransactionTime, "'now'", "timestamptz"},
        {"'today'", Kind::kTransactionTime, "'today'", "date"},
        {"' Tomorrow '", Kind::kTransactionTime, "'tomorrow'", "timestamp"}}},
      {"SELECT 'now'::text, 'epoch'::timestamptz", {}},
      // --- schema qualification
      {"SELECT pg_catalog.now(), PG_CATALOG.RANDOM()",
       {{"pg_catalog.now()", Kind::kTransactionTime, "now", "timestamptz"},
        {"PG_CATALOG.RANDOM()", Kind::kRandom, "random", "double precision"}}},
      {"SELECT myschema.now(), app.random(), \"now\"()",
       {{"\"now\"()", Kind::kTransactionTime, "now", "timestamptz"}}},
      // --- DML shapes
      {"INSERT INTO t (a, b) VALUES (1, now()), (2, now()), (3, now())",
       {{"now()", Kind::kTransactionTime, "now", "timestamptz"},
        {"now()", Kind::kTransactionTime, "now", "timestamptz"},
        {"now()", Kind::kTransactionTime, "now", "timestamptz"}}},
      {"INSERT INTO t (a, r) SELECT id, random() FROM s WHERE s.x > 0",
       {{"random()", Kind::kRandom, "random", "double precision"}}},
      {"INSERT INTO t (id, v) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET updated_at = now()",
       {{"now()", Kind::kTransactionTime, "now", "timestamptz"}}},
      {"WITH d AS (DELETE FROM t WHERE created < now() - interval '1 day' RETURNING *) "
       "INSERT INTO audit SELECT *, now() FROM d",
       {{"now()", Kind::kTransactionTime, "now", "timestamptz"},
        {"now()", Kind::kTransactionTime, "now", "timestamptz"}}},
      {"DELETE FROM t WHERE expires < CURRENT_TIMESTAMP RETURNING id, clock_timestamp()",
       {{"CURRENT_TIMESTAMP", Kind::kTransactionTime, "current_timestamp", "timestamptz"},
        {"clock_timestamp()", Kind::kClockTime, "clock_timestamp", "timestamptz"}}},
      {"UPDATE t SET (a, b) = (now(), 1), c = gen_random_uuid() WHERE id = $1",
       {{"now()", Kind::kTransactionTime, "now", "timestamptz"},
        {"gen_random_uuid()", Kind::kUuid, "gen_random_uuid", "uuid"}}},
      {"MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET ts = now() "
       "WHEN NOT MATCHED THEN INSERT (id, ts) VALUES (s.id, now())",
       {{"now()", Kind::kTransactionTime, "now", "timestamptz"},
        {"now()", Kind::kTransactionTime, "now", "timestamptz"}}},
      {"INSERT INTO t (id) VALUES (nextval('t_id_seq'::regclass))",
       {{"nextval('t_id_seq'::regclass)", Kind::kSequence, "nextval", "bigint",
         "'t_id_seq'::regclass"}}},
      // --- nested arguments with parentheses, strings and comments inside
      {"SELECT date_trunc('day', now()) + (random() * (2 + (3))) * interval '1 s'",
       {{"now()", Kind::kTransactionTime, "now", "timestamptz"},
        {"random()", Kind::kRandom, "random", "double precision"}}},
      {"SELECT nextval(('s' || ')' /* ) */))",
       {{"nextval(('s' || ')' /* ) */))", Kind::kSequence, "nextval", "bigint",
         "('s' || ')' /* ) */)"}}},
      {"SELECT age(now()), age(a, b) FROM t",
       {{"age(now())", Kind::kTransactionTime, "age", "interval"}}},
      {"SELECT now/* c */(  -- x\n)",
       {{"now/* c */(  -- x\n)", Kind::kTransactionTime, "now", "timestamptz"}}},
      // --- not reported: comments, strings, identifiers, dollar quotes
      {"SELECT 'now()', \"now()\" FROM t -- now()\n /* random() */", {}},
      {"SELECT $$now()$$, $tag$ random() $tag$", {}},
      {"SELECT current_user, current_schema, session_user", {}},
      // --- non-ASCII text before a call: byte offsets
      {"SELECT 'héllo wörld ☃', \"naïve\" FROM \"tâble\" WHERE ts < now()",
       {{"now()", Kind::kTransactionTime, "now", "timestamptz"}}},
      {"SELECT '😀😀' || random()::text",
       {{"random()", Kind::kRandom, "random", "double precision"}}},
      // --- statements that evaluate now
      {"EXPLAIN ANALYZE INSERT INTO t VALUES (now())",
       {{"now()", Kind::kTransactionTime, "now", "timestamptz"}}},
      {"EXPLAIN INSERT INTO t VALUES (now())", {}},
      {"CREATE TABLE t2 AS SELECT now() AS ts",
       {{"now()", Kind::kTransactionTime, "now", "timestamptz"}}},
      {"SELECT random() INTO t3", {{"random()", Kind::kRandom, "random", "double precision"}}},
      {"COPY (SELECT now()) TO STDOUT", {{"now()", Kind::kTransactionTime, "now", "timestamptz"}}},
      {"COPY t FROM STDIN WHERE ts < now()",
       {{"now()", Kind::kTransactionTime, "now", "timestamptz"}}},
      {"DECLARE c CURSOR FOR SELECT random()",
       {{"random()", Kind::kRandom, "random", "double precision"}}},
      {"EXECUTE p(now())", {{"now()", Kind::kTransactionTime, "now", "timestamptz"}}},
      {"ALTER TABLE t ALTER COLUMN c TYPE timestamptz USING now()",
       {{"now()", Kind::kTransactionTime, "now", "timestamptz"}}},
      {"VALUES (now())", {{"now()", Kind::kTransactionTime, "now", "timestamptz"}}},
      // --- stored, not evaluated
      {"CREATE TABLE t (id serial, ts timestamptz DEFAULT now(), u uuid DEFAULT "
       "gen_random_uuid())",
       {}},
      {"ALTER TABLE t ALTER COLUMN ts SET DEFAULT now()", {}},
      {"CREATE VIEW v AS SELECT now()", {}},
      {"CREATE FUNCTION f() RETURNS timestamptz LANGUAGE sql AS $$ SELECT now() $$", {}},
      {"CREATE FUNCTION f() RETURNS timestamptz LANGUAGE sql BEGIN ATOMIC SELECT now(); END", {}},
      {"PREPARE p AS INSERT INTO t VALUES (now())", {}},
      {"CREATE MATERIALIZED VIEW v AS SELECT now() WITH NO DATA", {}},
  };
  return cases;
}

TEST(SqlDeterminism, CallsHaveExactRanges) {
  for (const CallCase& c : callCases()) {
    SCOPED_TRACE(c.sql);
    const DeterminismAnalysis a = analyzeDeterminism(c.sql);
    ASSERT_TRUE(a.parsed);
    ASSERT_EQ(a.calls.size(), c.calls.size());
    for (std::size_t i = 0; i < c.calls.size(); ++i) {
      const VolatileCall& got = a.calls[i];
      const ExpectedCall& want = c.calls[i];
      ASSERT_LE(got.begin, got.end);
      ASSERT_LE(got.end, c.sql.size());
      EXPECT_EQ(c.sql.substr(got.begin, got.end - got.begin), want.text) << i;
      EXPECT_EQ(got.kind, want.kind) << i;
      EXPECT_EQ(got.function, want.function) << i;
      EXPECT_EQ(got.type, want.type) << i;
      EXPECT_EQ(got.argument,
                want.argument ? std::optional<std::string>(*want.argument) : std::nullopt)
          << i;
      if (i > 0) {
        EXPECT_LE(a.calls[i - 1].end, got.begin) << "text order, no overlap";
      }
    }
  }
}

TEST(SqlDeterminism, ThreeRowValuesHaveThreeDistinctRanges) {
  const std::string_view sql = "INSERT INTO t (a, b) VALUES (1, now()), (2, now()), (3, now())";
  const DeterminismAnalysis a = analyzeDeterminism(sql);
  ASSERT_EQ(a.calls.size(), 3U);
  EXPECT_EQ(a.calls[0].begin, sql.find("now()"));
  EXPECT_EQ(a.calls[1].begin, sql.find("now()", a.calls[0].end));
  EXPECT_EQ(a.calls[2].begin, sql.rfind("now()"));
}

TEST(SqlDeterminism, SecondStatementOffsetsAreIntoTheWholeString) {
  const std::string_view sql =
      "INSERT INTO a VALUES (now());\n  UPDATE \"bé\" SET ts = clock_timestamp() WHERE x;";
  const DeterminismAnalysis a = analyzeDeterminism(sql);
  ASSERT_TRUE(a.parsed);
  ASSERT_EQ(a.calls.size(), 2U);
  EXPECT_EQ(a.calls[0].begin, 22U);
  EXPECT_EQ(a.calls[1].begin, sql.find("clock_timestamp()"));
  EXPECT_EQ(sql.substr(a.calls[1].begin, a.calls[1].end - a.calls[1].begin), "clock_timestamp()");
  ASSERT_EQ(a.writes.size(), 2U);
  EXPECT_EQ(a.writes[0].statementEnd, sql.find(';'));
  EXPECT_EQ(a.writes[1].statementEnd, sql.rfind(';'));
  EXPECT_EQ(a.writes[1].table, "bé");
}

TEST(SqlDeterminism, MultiByteOffsetsAreBytes) {
  // 'é' and '☃' are 2 and 3 bytes in UTF-8: character offsets would be wrong.
  const std::string_view sql = "SELECT 'é☃', now()";
  const DeterminismAnalysis a = analyzeDeterminism(sql);
  ASSERT_EQ(a.calls.size(), 1U);
  EXPECT_EQ(a.calls[0].begin, 7U + 2U + 3U + 2U + 2U);
  EXPECT_EQ(a.calls[0].end, sql.size());
}

TEST(SqlDeterminism, ParseErrorSetsNothing) {
  for (std::string_view sql : {std::string_view("SELEC now()"), std::string_view("SELECT now("),
                               std::string_view("SELECT 'unterminated")}) {
    const DeterminismAnalysis a = analyzeDeterminism(sql);
    EXPECT_FALSE(a.parsed) << sql;
    EXPECT_TRUE(a.calls.empty());
    EXPECT_TRUE(a.writes.empty());
    EXPECT_TRUE(a.unsupported.empty());
  }
  EXPECT_FALSE(analyzeDeterminism(std::string_view("SELECT now()\0x", 14)).parsed);
}

TEST(SqlDeterminism, EmptyTextParsesToNothing) {
  const DeterminismAnalysis a = analyzeDeterminism(" ; -- nothing\n");
  EXPECT_TRUE(a.parsed);
  EXPECT_TRUE(a.calls.empty());
  EXPECT_TRUE(a.writes.empty());
}

// --- unsupported

struct UnsupportedCase {
  std::string_view sql;
  std::string_view reasonContains;  // empty: no reason expected
};

TEST(SqlDeterminism, UnsupportedReasons) {
  const UnsupportedCase cases[] = {
      {"DO $$ BEGIN PERFORM now(); END $$", "DO"},
      {"CALL p(now())", "CALL"},
      {"PREPARE p AS INSERT INTO t VALUES (now())", "PREPARE: now"},
      {"ALTER TABLE t ADD COLUMN ts timestamptz DEFAULT now()", "ADD COLUMN: default now"},
      {"ALTER TABLE t ADD COLUMN id bigserial", "serial/identity"},
      {"ALTER TABLE t ADD COLUMN id int GENERATED ALWAYS AS IDENTITY", "serial/identity"},
      {"SELECT * FROM nextval('s')", "FROM item"},
      {"DELETE FROM t WHERE id IN (SELECT id FROM t TABLESAMPLE SYSTEM (10))", "TABLESAMPLE"},
      {"INSERT INTO t (ts) VALUES ('now')", "string literal"},
      {"UPDATE t SET d = 'today'", "string literal"},
      {"INSERT INTO t VALUES (txid_current())", "txid_current"},
      {"INSERT INTO t VALUES (pg_backend_pid())", "pg_backend_pid"},
      {"SELECT random(1, 10)", "random() with arguments"},
      {"CREATE MATERIALIZED VIEW v AS SELECT now()", "MATERIALIZED VIEW"},
      {"INSERT INTO t VALUES ('now'::my_timestamp_domain)", "my_timestamp_domain"},
      // no reason
      {"CREATE TABLE t (id serial, ts timestamptz DEFAULT now())", ""},
      {"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", ""},
      {"ALTER TABLE t ADD COLUMN n int DEFAULT 0", ""},
      {"INSERT INTO t VALUES (now(), 'nowhere', 'today''s')", ""},
      {"CREATE MATERIALIZED VIEW v AS SELECT now() WITH NO DATA", ""},
      {"EXECUTE p(1)", ""},
      {"SELECT myschema.txid_current()", ""},
      {"SELECT 'now'::text, 'today'::varchar(10), 'now'::pg_catalog.bpchar", ""},
  };
  for (const UnsupportedCase& c : cases) {
    SCOPED_TRACE(c.sql);
    const DeterminismAnalysis a = analyzeDeterminism(c.sql);
    ASSERT_TRUE(a.parsed);
    if (c.reasonContains.empty()) {
      EXPECT_TRUE(a.unsupported.empty()) << a.unsupported.front();
      continue;
    }
    ASSERT_EQ(a.unsupported.size(), 1U);
    EXPECT_NE(a.unsupported.front().find(c.reasonContains), std::string::npos)
        << a.unsupported.front();
  }
}

// --- write targets

struct WriteCase {
  std::string_view sql;
  std::vector<WriteTarget> writes;  // statementEnd given as the offset of `endBefore` (below)
  std::vector<std::string_view> endsBefore;  // text each statementEnd is right before, or "$"
};

WriteTarget target(Op op, std::string schema, std::string table,
                   std::vector<std::string> columns = {}) {
  WriteTarget w;
  w.op = op;
  w.schema = std::move(schema);
  w.table = std::move(table);
  w.columns = std::move(columns);
  return w;
}

std::vector<WriteCase> writeCases() {
  std::vector<WriteCase> cases;
  {
    WriteTarget w = target(Op::kInsert, "public", "t", {"a", "b"});
    w.valuesRows = 3;
    cases.push_back({"INSERT INTO public.t (a, b) VALUES (1, 2), (3, 4), (5, 6)", {w}, {"$"}});
  }
  {
    WriteTarget w = target(Op::kInsert, "", "t");
    w.valuesRows = 2;
    w.explicitDefault = true;
    w.returning = true;
    cases.push_back({"insert into t values (1, DEFAULT), (2, 3) returning id;", {w}, {";"}});
  }
  {
    WriteTarget w = target(Op::kInsert, "", "t");
    w.valuesRows = 1;
    w.explicitDefault = true;
    cases.push_back({"INSERT INTO t DEFAULT VALUES /* trailing */ ;", {w}, {" /* trailing"}});
  }
  {
    WriteTarget w = target(Op::kInsert, "s", "t", {"id", "v"});
    w.insertSelect = true;
    cases.push_back({"INSERT INTO s.t (id, v) SELECT id, random() FROM u -- c\n", {w}, {" -- c"}});
  }
  {
    WriteTarget w = target(Op::kInsert, "", "t", {"id", "v"});
    w.valuesRows = 1;
    w.onConflictUpdate = true;
    cases.push_back(
        {"INSERT INTO t (id, v) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET "
         "updated_at = now(), v = excluded.v",
         {w},
         {"$"}});
  }
  {
    WriteTarget w = target(Op::kInsert, "", "t", {"id"});
    w.valuesRows = 1;
    w.onConflictNothing = true;
    cases.push_back({"INSERT INTO t (id) VALUES (1) ON CONFLICT DO NOTHING", {w}, {"$"}});
  }
  {
    WriteTarget w = target(Op::kUpdate, "app", "users", {"a", "b", "c"});
    w.explicitDefault = true;
    w.returning = true;
    cases.push_back(
        {"UPDATE app.users SET a = DEFAULT, (b, c) = (1, now()) WHERE id = $1 "
         "RETURNING *",
         {w},
         {"$"}});
  }
  {
    WriteTarget w = target(Op::kDelete, "", "t");
    cases.push_back({"DELETE FROM t WHERE ts < now()", {w}, {"$"}});
  }
  {
    WriteTarget w = target(Op::kDelete, "", "t");
    w.returning = true;
    cases.push_back({"DELETE FROM ONLY t WHERE id = 1 RETURNING id", {w}, {"$"}});
  }
  {
    WriteTarget d = target(Op::kDelete, "", "t");
    d.returning = true;
    d.inCte = true;
    WriteTarget i = target(Op::kInsert, "", "audit");
    i.insertSelect = true;
    cases.push_back(
        {"WITH d AS (DELETE FROM t WHERE created < now() RETURNING *) "
         "INSERT INTO audit SELECT *, now() FROM d",
         {d, i},
         {") INSERT", "$"}});
  }
  {
    WriteTarget u = target(Op::kUpdate, "", "t", {"x"});
    u.inCte = true;
    WriteTarget i = target(Op::kInsert, "", "log", {"n"});
    i.valuesRows = 1;
    i.inCte = true;
    cases.push_back(
        {"WITH u(a) AS MATERIALIZED (UPDATE t SET x = 1 /* c */ ), "
         "i AS (INSERT INTO log (n) VALUES ((1)) ) SELECT 1",
         {u, i},
         {" /* c */ )", " ) SELECT"}});
  }
  {
    WriteTarget w = target(Op::kMerge, "", "t");
    w.explicitDefault = true;
    cases.push_back(
        {"MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED THEN INSERT DEFAULT "
         "VALUES",
         {w},
         {"$"}});
  }
  {
    WriteTarget w = target(Op::kCopyFrom, "s", "t", {"a", "b"});
    cases.push_back({"COPY s.t (a, b) FROM STDIN", {w}, {"@0"}});
  }
  {
    WriteTarget w = target(Op::kInsert, "", "t");
    w.valuesRows = 1;
    cases.push_back({"EXPLAIN ANALYZE INSERT INTO t VALUES (1)", {w}, {"$"}});
  }
  {
    WriteTarget w = target(Op::kInsert, "", "t");
    w.valuesRows = 1;
    w.returning = true;
    cases.push_back(
        {"COPY (INSERT INTO t VALUES (1) RETURNING *) TO STDOUT", {w}, {") TO STDOUT"}});
  }
  {
    WriteTarget a = target(Op::kInsert, "", "a");
    a.valuesRows = 1;
    WriteTarget b = target(Op::kDelete, "", "b");
    cases.push_back({"INSERT INTO a VALUES (1); SELECT 1; DELETE FROM b", {a, b}, {";", "$"}});
  }
  cases.push_back({"SELECT * FROM t; CREATE TABLE x (a int); EXPLAIN DELETE FROM t", {}, {}});
  return cases;
}

TEST(SqlDeterminism, WriteTargets) {
  for (WriteCase c : writeCases()) {
    SCOPED_TRACE(c.sql);
    const DeterminismAnalysis a = analyzeDeterminism(c.sql);
    ASSERT_TRUE(a.parsed);
    ASSERT_EQ(a.writes.size(), c.writes.size());
    for (std::size_t i = 0; i < c.writes.size(); ++i) {
      WriteTarget want = c.writes[i];
      const std::string_view marker = c.endsBefore[i];
      if (marker == "$") {
        want.statementEnd = c.sql.size();
      } else if (marker == "@0") {
        want.statementEnd = 0;
      } else {
        ASSERT_NE(c.sql.find(marker), std::string_view::npos);
        want.statementEnd = c.sql.find(marker);
      }
      EXPECT_EQ(a.writes[i], want) << i << ": end " << a.writes[i].statementEnd;
    }
  }
}

// " RETURNING *" appended at statementEnd of every INSERT/UPDATE/DELETE without
// one (top level or in a CTE) gives text PostgreSQL's grammar accepts.
TEST(SqlDeterminism, ReturningCanBeAppendedAtStatementEnd) {
  for (const WriteCase& c : writeCases()) {
    const DeterminismAnalysis a = analyzeDeterminism(c.sql);
    std::vector<Replacement> r;
    for (const WriteTarget& w : a.writes) {
      if (w.returning || w.op == Op::kCopyFrom || w.op == Op::kMerge) continue;
      r.push_back({w.statementEnd, w.statementEnd, " RETURNING *"});
    }
    if (r.empty()) continue;
    const std::optional<std::string> s = substitute(c.sql, r);
    ASSERT_TRUE(s.has_value()) << c.sql;
    EXPECT_TRUE(parses(*s)) << *s;
    const DeterminismAnalysis again = analyzeDeterminism(*s);
    for (const WriteTarget& w : again.writes) {
      if (w.op != Op::kCopyFrom && w.op != Op::kMerge) {
        EXPECT_TRUE(w.returning) << *s;
      }
    }
  }
}

// --- substitute

TEST(SqlDeterminism, SubstituteAppliesUnsortedReplacements) {
  const std::string_view sql = "0123456789";
  EXPECT_EQ(substitute(sql, {{7, 9, "X"}, {0, 1, "AB"}, {3, 3, "+"}}), "AB12+3456X9");
  EXPECT_EQ(substitute(sql, {}), "0123456789");
  EXPECT_EQ(substitute(sql, {{0, 10, ""}}), "");
  EXPECT_EQ(substitute(sql, {{10, 10, "!"}}), "0123456789!");
  EXPECT_EQ(substitute(sql, {{2, 4, "a"}, {4, 6, "b"}}), "01ab6789");  // adjacent is fine
  EXPECT_EQ(substitute(sql, {{2, 4, "a"}, {4, 4, "b"}}), "01ab456789");
}

TEST(SqlDeterminism, SubstituteRejectsBadInput) {
  const std::string_view sql = "0123456789";
  EXPECT_EQ(substitute(sql, {{2, 5, "a"}, {4, 6, "b"}}), std::nullopt);  // overlap
  EXPECT_EQ(substitute(sql, {{4, 6, "b"}, {2, 5, "a"}}), std::nullopt);  // overlap, unsorted
  EXPECT_EQ(substitute(sql, {{2, 8, "a"}, {3, 4, "b"}}), std::nullopt);  // nested
  EXPECT_EQ(substitute(sql, {{3, 3, "a"}, {3, 3, "b"}}), std::nullopt);  // ambiguous order
  EXPECT_EQ(substitute(sql, {{3, 3, "a"}, {3, 5, "b"}}), std::nullopt);  // ambiguous order
  EXPECT_EQ(substitute(sql, {{9, 11, "a"}}), std::nullopt);              // past the end
  EXPECT_EQ(substitute(sql, {{11, 11, "a"}}), std::nullopt);             // past the end
  EXPECT_EQ(substitute(sql, {{5, 4, "a"}}), std::nullopt);               // reversed
  EXPECT_EQ(substitute("", {{0, 0, "x"}}), "x");
}

// --- fingerprint

TEST(SqlDeterminism, Fingerprint) {
  const std::optional<std::string> a = fingerprint("SELECT * FROM t WHERE id = 1 AND s = 'x'");
  const std::optional<std::string> b =
      fingerprint("select *  from t /* c */ where id = 42 and s = 'secret'");
  const std::optional<std::string> c = fingerprint("SELECT * FROM u WHERE id = 1 AND s = 'x'");
  const std::optional<std::string> d = fingerprint("DELETE FROM t WHERE id = 1");
  ASSERT_TRUE(a && b && c && d);
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, *c);
  EXPECT_NE(*a, *d);
  EXPECT_EQ(a->size(), 16U);
  EXPECT_EQ(a->find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(b->find("secret"), std::string::npos);
  EXPECT_EQ(fingerprint("SELEC 1"), std::nullopt);
  EXPECT_EQ(fingerprint(std::string_view("SELECT 1\0", 9)), std::nullopt);
}

// --- round trip: pin every call with a literal of its type

std::string literalFor(const VolatileCall& c) {
  if (c.function.starts_with("'")) {  // a 'now' literal: the cast stays in the text
    return c.type == "date" ? "'2026-01-01'" : "'2026-01-01 00:00:00+00'";
  }
  std::string value;
  const std::string base = c.type.substr(0, c.type.find('('));
  if (base == "timestamptz" || base == "timestamp") {
    value = "'2026-01-01 00:00:00+00'";
  } else if (base == "date") {
    value = "'2026-01-01'";
  } else if (base == "time" || base == "timetz") {
    value = "'12:00:00+00'";
  } else if (base == "double precision") {
    value = "0.5";
  } else if (base == "uuid") {
    value = "'0b5c6a3e-7a1d-4c1f-9f0e-2d0c7e5b9a11'";
  } else if (base == "bigint") {
    value = "42";
  } else if (base == "interval") {
    value = "'1 day'";
  } else {
    value = "'x'";
  }
  return "(" + value + "::" + c.type + ")";
}

TEST(SqlDeterminism, PinnedStatementsHaveNoCallsLeft) {
  std::vector<std::string_view> texts;
  for (const CallCase& c : callCases()) texts.push_back(c.sql);
  for (const WriteCase& c : writeCases()) texts.push_back(c.sql);
  for (std::string_view sql : texts) {
    SCOPED_TRACE(sql);
    const DeterminismAnalysis a = analyzeDeterminism(sql);
    ASSERT_TRUE(a.parsed);
    std::vector<Replacement> r;
    for (const VolatileCall& c : a.calls) r.push_back({c.begin, c.end, literalFor(c)});
    const std::optional<std::string> pinned = substitute(sql, std::move(r));
    ASSERT_TRUE(pinned.has_value());
    EXPECT_TRUE(parses(*pinned)) << *pinned;
    const DeterminismAnalysis again = analyzeDeterminism(*pinned);
    EXPECT_TRUE(again.parsed) << *pinned;
    EXPECT_TRUE(again.calls.empty()) << *pinned;
    EXPECT_EQ(again.writes.size(), a.writes.size()) << *pinned;
  }
}

// Not a benchmark: prints the cost of one analysis (parse + scan + walk), which a
// caller pays once per statement text if it caches the result.
TEST(SqlDeterminism, CostReport) {
  const std::string_view sql =
      "INSERT INTO orders (id, customer_id, created_at, token) VALUES "
      "(nextval('orders_id_seq'::regclass), $1, now(), gen_random_uuid()) RETURNING id";
  constexpr int kRounds = 2000;
  std::size_t calls = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kRounds; ++i) calls += analyzeDeterminism(sql).calls.size();
  const auto ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
          .count();
  EXPECT_EQ(calls, 3U * kRounds);
  std::printf("[determinism] analyze %lld ns/op\n", static_cast<long long>(ns / kRounds));
}

}  // namespace
}  // namespace pghandoff::protocol

namespace pghandoff::protocol {
namespace {

std::string triggerFunction(const std::string& body) {
  return "CREATE OR REPLACE FUNCTION public.f() RETURNS trigger LANGUAGE plpgsql AS $function$ " +
         body + " $function$";
}

TEST(TriggerFunction, DeterministicBodiesAndWhatTheyWrite) {
  auto t = analyzeTriggerFunction(triggerFunction(
      "BEGIN IF TG_OP = 'INSERT' THEN INSERT INTO audit (item, op, qty) VALUES (NEW.id, TG_OP, "
      "NEW.qty); END IF; NEW.v := lower(NEW.v); RETURN NEW; END"));
  EXPECT_FALSE(t.perServer) << t.reason;
  ASSERT_EQ(t.writes.size(), 1u);
  EXPECT_EQ(t.writes[0].table, "audit");
  EXPECT_EQ(t.writes[0].columns, (std::vector<std::string>{"item", "op", "qty"}));
}

TEST(TriggerFunction, PerServerBodies) {
  for (const char* body : {
           "BEGIN NEW.updated_at := now(); RETURN NEW; END",
           "BEGIN NEW.updated_at = clock_timestamp(); RETURN NEW; END",
           "BEGIN INSERT INTO audit VALUES (nextval('s'), NEW.id); RETURN NEW; END",
           "BEGIN PERFORM pg_notify('c', NEW.id::text); RETURN NEW; END",
           "BEGIN PERFORM my_helper(NEW.id); RETURN NEW; END",
           "BEGIN EXECUTE format('INSERT INTO %I VALUES (1)', TG_TABLE_NAME); RETURN NEW; END",
           "DECLARE r float8 := random(); BEGIN RETURN NEW; END",
       }) {
    auto t = analyzeTriggerFunction(triggerFunction(body));
    EXPECT_TRUE(t.perServer) << body;
    EXPECT_FALSE(t.reason.empty()) << body;
  }
  EXPECT_TRUE(analyzeTriggerFunction("not a function").perServer);
}

}  // namespace
}  // namespace pghandoff::protocol

namespace pghandoff::protocol {
namespace {

TEST(AnalysisCache, OncePerText) {
  AnalysisCache cache(2);
  auto a = cache.get("INSERT INTO t (a) VALUES (now())");
  EXPECT_EQ(cache.get("INSERT INTO t (a) VALUES (now())"), a);  // the same object
  EXPECT_TRUE(a->determinism.parsed);
  EXPECT_EQ(a->determinism.calls.size(), 1u);
  EXPECT_TRUE(a->insert.ok);
  auto u = cache.get("UPDATE t SET a = 1");
  EXPECT_FALSE(u->insert.ok);   // only INSERTs get a shape
  (void)cache.get("SELECT 1");  // full: cleared, then kept
  EXPECT_NE(cache.get("INSERT INTO t (a) VALUES (now())"), a);
  const std::string big = "SELECT '" + std::string(AnalysisCache::kMaxCachedSqlBytes, 'x') + "'";
  EXPECT_NE(cache.get(big), cache.get(big));  // long texts are not kept
}

}  // namespace
}  // namespace pghandoff::protocol
