#include "protocol/sql_classify.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iterator>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace pghandoff::protocol {
namespace {

using K = StatementKind;

// Expected flags, as a bit set so the table stays one line per statement.
enum Flag : unsigned {
  kNone = 0,
  kSide = 1U << 0,     // hasSideEffectFunction
  kNondet = 1U << 1,   // hasNondeterministic
  kUser = 1U << 2,     // hasUserFunction
  kLock = 1U << 3,     // selectForUpdate
  kListen = 1U << 4,   // listenNotify
  kCopyIn = 1U << 5,   // copyFrom
  kCopyOut = 1U << 6,  // copyTo
  kCursor = 1U << 7,   // cursor
  kError = 1U << 8,    // parseError
};

unsigned flagsOf(const Classification& c) {
  return (c.hasSideEffectFunction ? kSide : 0U) | (c.hasNondeterministic ? kNondet : 0U) |
         (c.hasUserFunction ? kUser : 0U) | (c.selectForUpdate ? kLock : 0U) |
         (c.listenNotify ? kListen : 0U) | (c.copyFrom ? kCopyIn : 0U) |
         (c.copyTo ? kCopyOut : 0U) | (c.cursor ? kCursor : 0U) | (c.parseError ? kError : 0U);
}

struct Case {
  const char* sql;
  StatementKind kind;
  unsigned flags;
};

// One statement per case: the string's kind must equal its only statement's.
const Case kSingleStatements[] = {
    // --- reads
    {"SELECT 1", K::kRead, kNone},
    {"select * from t where id = $1", K::kRead, kNone},
    {"VALUES (1), (2)", K::kRead, kNone},
    {"TABLE t", K::kRead, kNone},
    {"SHOW search_path", K::kRead, kNone},
    {"SELECT count(*), max(a), lower(b), coalesce(c, 0) FROM t GROUP BY b", K::kRead, kNone},
    {"SELECT extract(year FROM d), substring(s FROM 1 FOR 2), trim(s) FROM t", K::kRead, kNone},
    {"SELECT pg_catalog.lower('A'), PG_CATALOG.UPPER('a')", K::kRead, kNone},
    {"SELECT * FROM generate_series(1, 10) g JOIN t ON t.id = g", K::kRead, kNone},
    {"SELECT row_number() OVER (ORDER BY a), string_agg(b, ',') FROM t", K::kRead, kNone},
    {"SELECT pg_sleep(0), pg_is_in_recovery(), pg_database_size('x')", K::kRead, kNone},
    {"SELECT current_user, session_user, current_schema", K::kRead, kNone},
    {R"(SELECT "count"(*) FROM "My Table" WHERE "Col" = 'it''s')", K::kRead, kNone},
    {"SELECT 'now'::text, 'today'", K::kRead, kNone},
    {"SELECT age(a, b) FROM t", K::kRead, kNone},
    {"SELECT 'a\"b\\c', E'tab\\there', 'caf\xc3\xa9'", K::kRead, kNone},
    {"-- only a comment", K::kRead, kNone},
    // EXPLAIN runs nothing unless ANALYZE: no flags even for nextval.
    {"EXPLAIN SELECT * FROM t", K::kRead, kNone},
    {"EXPLAIN DELETE FROM t", K::kRead, kNone},
    {"EXPLAIN SELECT nextval('s')", K::kRead, kNone},
    {"EXPLAIN (ANALYZE false) DELETE FROM t", K::kRead, kNone},
    {"EXPLAIN (ANALYZE off, VERBOSE) UPDATE t SET a = 1", K::kRead, kNone},
    {"EXPLAIN (ANALYZE 0) DELETE FROM t", K::kRead, kNone},
    {"EXPLAIN ANALYZE SELECT * FROM t", K::kRead, kNone},
    // --- reads that compute per-server values
    {"SELECT now()", K::kRead, kNondet},
    {"SELECT NOW()", K::kRead, kNondet},
    {"SELECT Now()", K::kRead, kNondet},
    {"SELECT pg_catalog.now()", K::kRead, kNondet},
    {R"(SELECT "pg_catalog"."now"())", K::kRead, kNondet},
    {R"(SELECT "now"())", K::kRead, kNondet},
    {"SELECT current_timestamp", K::kRead, kNondet},
    {"SELECT CURRENT_DATE, LOCALTIMESTAMP(3)", K::kRead, kNondet},
    {"SELECT current_time, localtime", K::kRead, kNondet},
    {"SELECT statement_timestamp(), transaction_timestamp(), timeofday()", K::kRead, kNondet},
    {"SELECT random(), gen_random_uuid()", K::kRead, kNondet},
    {"SELECT clock_timestamp()", K::kRead, kNondet},
    {"SELECT uuid_generate_v4(), extensions.uuid_generate_v1mc()", K::kRead, kNondet},
    {"SELECT 'now'::timestamptz", K::kRead, kNondet},
    {"SELECT date 'today', timestamp ' Tomorrow '", K::kRead, kNondet},
    {"SELECT CAST('yesterday' AS date)", K::kRead, kNondet},
    {"SELECT E'\\u006Eow'::timestamp", K::kRead, kNondet},
    {"SELECT age(created) FROM t", K::kRead, kNondet},
    {"SELECT * FROM t TABLESAMPLE SYSTEM (10)", K::kRead, kNondet},
    {"SELECT * FROM t ORDER BY random() LIMIT 1", K::kRead, kNondet},
    {"SELECT count(*) FILTER (WHERE ts < now()) FROM t", K::kRead, kNondet},
    {"SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE ts > now() - interval '1 day')", K::kRead,
     kNondet},
    // --- COPY
    {"COPY t TO STDOUT", K::kRead, kCopyOut},
    {"COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)", K::kRead, kCopyOut},
    {"COPY t FROM STDIN", K::kWrite, kCopyIn},
    {"COPY t FROM STDIN WHERE ts < now()", K::kWrite, kCopyIn | kNondet},
    {"COPY t TO '/tmp/t.csv'", K::kWrite, kCopyOut},
    {"COPY (SELECT 1) TO PROGRAM 'cat'", K::kWrite, kCopyOut},
    {"COPY (INSERT INTO t VALUES (1) RETURNING id) TO STDOUT", K::kWrite, kCopyOut},
    // --- cursors
    {"DECLARE c CURSOR FOR SELECT * FROM t", K::kRead, kCursor},
    {"DECLARE c CURSOR WITH HOLD FOR SELECT now()", K::kRead, kCursor | kNondet},
    {"DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", K::kWrite, kCursor | kLock},
    {"DECLARE c CURSOR FOR SELECT nextval('s')", K::kWrite, kCursor | kSide},
    {"FETCH 10 FROM c", K::kRead, kCursor},
    {"MOVE NEXT IN c", K::kRead, kCursor},
    {"CLOSE c", K::kRead, kCursor},
    // --- writes
    {"INSERT INTO t VALUES (1)", K::kWrite, kNone},
    {"UPDATE t SET a = a + 1 WHERE id = 1", K::kWrite, kNone},
    {"DELETE FROM t WHERE id = $1", K::kWrite, kNone},
    {"MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a", K::kWrite, kNone},
    {R"(INSERT INTO "My Table" ("Weird ""col") VALUES (1))", K::kWrite, kNone},
    {"INSERT INTO t (id, ts) VALUES (DEFAULT, now())", K::kWrite, kNondet},
    {"INSERT INTO t VALUES ((SELECT CURRENT_TIMESTAMP))", K::kWrite, kNondet},
    {"INSERT INTO t SELECT nextval('s'), random()", K::kWrite, kSide | kNondet},
    {"INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET ts = now()", K::kWrite, kNondet},
    {"UPDATE t SET ts = clock_timestamp() WHERE id IN (SELECT id FROM u WHERE v > random())",
     K::kWrite, kNondet},
    {"UPDATE t SET v = my_func(v)", K::kWrite, kUser},
    {"INSERT INTO t VALUES (gen_random_uuid())", K::kWrite, kNondet},
    {"TRUNCATE t", K::kWrite, kNone},
    {"VACUUM t", K::kWrite, kNone},
    {"ANALYZE t", K::kWrite, kNone},
    {"GRANT SELECT ON t TO bob", K::kWrite, kNone},
    {"CREATE INDEX ON t (a)", K::kWrite, kNone},
    {"DROP TABLE t", K::kWrite, kNone},
    {"LOCK TABLE t IN ACCESS EXCLUSIVE MODE", K::kWrite, kNone},
    {"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'", K::kWrite, kNone},
    {"REFRESH MATERIALIZED VIEW mv", K::kWrite, kNone},
    {"SELECT * INTO t2 FROM t", K::kWrite, kNone},
    // Stored expressions are not evaluated now: no flag.
    {"CREATE TABLE x (id serial PRIMARY KEY, ts timestamptz DEFAULT now())", K::kWrite, kNone},
    {"CREATE VIEW v AS SELECT now(), nextval('s')", K::kWrite, kNone},
    {"ALTER TABLE t ALTER COLUMN ts SET DEFAULT now()", K::kWrite, kNone},
    // Evaluated now: flagged.
    {"ALTER TABLE t ADD COLUMN ts timestamptz DEFAULT now()", K::kWrite, kNondet},
    {"ALTER TABLE t ALTER COLUMN v TYPE uuid USING gen_random_uuid()", K::kWrite, kNondet},
    {"CREATE TABLE x AS SELECT now()", K::kWrite, kNondet},
    // Side-effect functions turn a SELECT into a write.
    {"SELECT nextval('s')", K::kWrite, kSide},
    {"SELECT NEXTVAL('s')", K::kWrite, kSide},
    {"SELECT pg_catalog.nextval('s')", K::kWrite, kSide},
    {R"(SELECT "pg_catalog"."nextval"('s'))", K::kWrite, kSide},
    {"SELECT setval('s', 10)", K::kWrite, kSide},
    {"SELECT currval('s'), lastval()", K::kWrite, kSide},
    {"SELECT pg_advisory_lock(1)", K::kWrite, kSide},
    {"SELECT pg_try_advisory_xact_lock(1)", K::kWrite, kSide},
    {"SELECT pg_advisory_unlock_all()", K::kWrite, kSide},
    {"SELECT pg_notify('ch', 'x')", K::kWrite, kSide | kListen},
    {"SELECT txid_current()", K::kWrite, kSide},
    {"SELECT pg_backend_pid()", K::kWrite, kSide},
    {"SELECT set_config('a.b', '1', false)", K::kWrite, kSide},
    {"SELECT lo_create(0)", K::kWrite, kSide},
    // ... anywhere in the tree.
    {"SELECT * FROM t WHERE id IN (SELECT nextval('s'))", K::kWrite, kSide},
    {"WITH c AS (SELECT setval('s', 1)) SELECT * FROM c", K::kWrite, kSide},
    {"SELECT (SELECT max(x) FROM (SELECT pg_advisory_lock(1) AS x) a)", K::kWrite, kSide},
    {"SELECT CASE WHEN a THEN nextval('s') END FROM t", K::kWrite, kSide},
    {"SELECT coalesce(a, nextval('s')) FROM t", K::kWrite, kSide},
    {"SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id AND "
     "pg_try_advisory_lock(u.id))",
     K::kWrite, kSide},
    {"SELECT a FROM t UNION ALL SELECT nextval('s')", K::kWrite, kSide},
    {"EXPLAIN ANALYZE SELECT nextval('s')", K::kWrite, kSide},
    // Locking reads.
    {"SELECT * FROM t FOR UPDATE", K::kWrite, kLock},
    {"SELECT * FROM t WHERE id = 1 FOR NO KEY UPDATE SKIP LOCKED", K::kWrite, kLock},
    {"SELECT * FROM t FOR SHARE", K::kWrite, kLock},
    {"SELECT * FROM t FOR KEY SHARE NOWAIT", K::kWrite, kLock},
    {"SELECT * FROM (SELECT * FROM t FOR UPDATE) s", K::kWrite, kLock},
    // Writable CTEs.
    {"WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x", K::kWrite, kNone},
    {"WITH x AS (DELETE FROM t RETURNING *) SELECT count(*) FROM x", K::kWrite, kNone},
    {"WITH a AS (SELECT 1), b AS (UPDATE t SET ts = now() RETURNING id) SELECT * FROM b", K::kWrite,
     kNondet},
    {"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) "
     "INSERT INTO t SELECT n FROM r",
     K::kWrite, kNone},
    // EXPLAIN ANALYZE runs the statement.
    {"EXPLAIN ANALYZE DELETE FROM t", K::kWrite, kNone},
    {"EXPLAIN (ANALYZE, BUFFERS) INSERT INTO t VALUES (now())", K::kWrite, kNondet},
    {"EXPLAIN (ANALYZE true) UPDATE t SET a = 1", K::kWrite, kNone},
    {"EXPLAIN (ANALYZE on, COSTS off) DELETE FROM t", K::kWrite, kNone},
    // --- unknown: the proxy cannot see what runs
    {"SELECT my_func(1)", K::kUnknown, kUser},
    {"SELECT * FROM my_srf()", K::kUnknown, kUser},
    {"SELECT 1 WHERE my_check(2)", K::kUnknown, kUser},
    {"SELECT myschema.lower('a')", K::kUnknown, kUser},
    {"SELECT public.nextval('s')", K::kUnknown, kUser},
    {R"(SELECT "NOW"())", K::kUnknown, kUser},
    {R"(SELECT U&"\0061bc"())", K::kUnknown, kUser},
    {"SELECT * FROM t WHERE id IN (SELECT f(x) FROM u)", K::kUnknown, kUser},
    {"SELECT now(), my_func()", K::kUnknown, kUser | kNondet},
    {"SELECT query_to_xml('delete from t', true, false, '')", K::kUnknown, kUser},
    {"EXECUTE stmt(1)", K::kUnknown, kNone},
    {"EXECUTE stmt(now())", K::kUnknown, kNondet},
    {"CALL proc(1)", K::kUnknown, kUser},
    {"DO $$BEGIN PERFORM 1; END$$", K::kUnknown, kUser},
    {"CALL proc(now())", K::kUnknown, kUser | kNondet},
    // --- transaction control
    {"BEGIN", K::kTransaction, kNone},
    {"BEGIN ISOLATION LEVEL REPEATABLE READ", K::kTransaction, kNone},
    {"START TRANSACTION READ ONLY", K::kTransaction, kNone},
    {"COMMIT", K::kTransaction, kNone},
    {"END", K::kTransaction, kNone},
    {"ROLLBACK", K::kTransaction, kNone},
    {"ABORT", K::kTransaction, kNone},
    {"SAVEPOINT a", K::kTransaction, kNone},
    {"RELEASE SAVEPOINT a", K::kTransaction, kNone},
    {"ROLLBACK TO SAVEPOINT a", K::kTransaction, kNone},
    {"PREPARE TRANSACTION 'x'", K::kTransaction, kNone},
    {"COMMIT PREPARED 'x'", K::kTransaction, kNone},
    {"ROLLBACK PREPARED 'x'", K::kTransaction, kNone},
    // --- session state
    {"SET search_path = app, public", K::kSession, kNone},
    {"SET LOCAL statement_timeout = 0", K::kSession, kNone},
    {"set TIME ZONE 'UTC'", K::kSession, kNone},
    {"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", K::kSession, kNone},
    {"RESET ALL", K::kSession, kNone},
    {"DISCARD ALL", K::kSession, kNone},
    {"PREPARE p (int) AS SELECT nextval('s') + $1", K::kSession, kNone},
    {"DEALLOCATE p", K::kSession, kNone},
    {"DEALLOCATE ALL", K::kSession, kNone},
    {"LISTEN ch", K::kSession, kListen},
    {"UNLISTEN *", K::kSession, kListen},
    {"NOTIFY ch, 'x'", K::kSession, kListen},
    // --- parse errors
    {"SELEC 1", K::kUnknown, kError},
    {"SELECT FROM WHERE (", K::kUnknown, kError},
    {"INSERT INTO", K::kUnknown, kError},
    {"SELECT 'unterminated", K::kUnknown, kError},
    {"SELECT 1; SELEC 2", K::kUnknown, kError},
};

TEST(SqlClassifyTest, TableOfStatements) {
  static_assert(std::size(kSingleStatements) >= 60);
  for (const Case& c : kSingleStatements) {
    SCOPED_TRACE(c.sql);
    const Classification got = classify(c.sql);
    EXPECT_EQ(toString(got.kind), std::string(toString(c.kind)));
    EXPECT_EQ(flagsOf(got), c.flags);
    // A parse error rejects the whole string; a comment is no statement.
    if ((c.flags & kError) != 0 || std::string_view(c.sql).starts_with("--")) {
      EXPECT_TRUE(got.statements.empty());
      continue;
    }
    ASSERT_EQ(got.statements.size(), 1U);
    EXPECT_EQ(got.statements[0], c.kind);
  }
}

TEST(SqlClassifyTest, MultiStatementTakesTheStrongestKind) {
  struct Multi {
    const char* sql;
    StatementKind kind;
    std::vector<StatementKind> statements;
    unsigned flags;
  };
  const Multi cases[] = {
      {"BEGIN; SELECT 1; COMMIT",
       K::kTransaction,
       {K::kTransaction, K::kRead, K::kTransaction},
       kNone},
      {"SELECT 1; INSERT INTO t VALUES (1)", K::kWrite, {K::kRead, K::kWrite}, kNone},
      {"SET a = 1; SELECT 1", K::kSession, {K::kSession, K::kRead}, kNone},
      {"SELECT my_f(); SET a = 1", K::kUnknown, {K::kUnknown, K::kSession}, kUser},
      {"SELECT my_f(); DELETE FROM t; BEGIN",
       K::kWrite,
       {K::kUnknown, K::kWrite, K::kTransaction},
       kUser},
      {"SELECT 1;;SELECT 2;", K::kRead, {K::kRead, K::kRead}, kNone},
      {"SELECT 'a;b'; SELECT \"x;y\" FROM t", K::kRead, {K::kRead, K::kRead}, kNone},
      {"SELECT now(); SELECT nextval('s'); LISTEN c",
       K::kWrite,
       {K::kRead, K::kWrite, K::kSession},
       kNondet | kSide | kListen},
      {"BEGIN; SELECT * FROM t FOR UPDATE; COMMIT",
       K::kWrite,
       {K::kTransaction, K::kWrite, K::kTransaction},
       kLock},
      {"COPY t FROM STDIN; COPY t TO STDOUT", K::kWrite, {K::kWrite, K::kRead}, kCopyIn | kCopyOut},
      {"", K::kRead, {}, kNone},
      {" ;; ", K::kRead, {}, kNone},
      {"/* c */ -- d\n", K::kRead, {}, kNone},
  };
  for (const Multi& c : cases) {
    SCOPED_TRACE(c.sql);
    const Classification got = classify(c.sql);
    EXPECT_EQ(got.kind, c.kind);
    EXPECT_EQ(got.statements, c.statements);
    EXPECT_EQ(flagsOf(got), c.flags);
  }
}

TEST(SqlClassifyTest, StrongestOrder) {
  // write > unknown > session > transaction > read
  const StatementKind order[] = {K::kRead, K::kTransaction, K::kSession, K::kUnknown, K::kWrite};
  for (std::size_t i = 0; i < std::size(order); ++i) {
    for (std::size_t j = 0; j < std::size(order); ++j) {
      EXPECT_EQ(strongest(order[i], order[j]), order[std::max(i, j)]) << i << "," << j;
    }
  }
}

TEST(SqlClassifyTest, ParseErrorHasNoStatements) {
  const Classification got = classify("SELECT 1; SELECT (");
  EXPECT_TRUE(got.parseError);
  EXPECT_EQ(got.kind, K::kUnknown);
  EXPECT_TRUE(got.statements.empty());
}

TEST(SqlClassifyTest, EmbeddedNulIsAParseError) {
  const std::string sql("SELECT 1\0; DELETE FROM t", 24);
  const Classification got = classify(sql);
  EXPECT_TRUE(got.parseError);
  EXPECT_EQ(got.kind, K::kUnknown);
}

TEST(SqlClassifyTest, DeepNestingIsWalkedWithoutRecursion) {
  // now() is the deepest leaf of a 20,000-level left-deep expression tree.
  std::string sql = "SELECT now()";
  for (int i = 0; i < 20000; ++i) sql += "+1";
  Classification got = classify(sql);
  EXPECT_FALSE(got.parseError);
  EXPECT_EQ(got.kind, K::kRead);
  EXPECT_TRUE(got.hasNondeterministic);

  sql = "SELECT 1";
  for (int i = 0; i < 20000; ++i) sql += "+1";
  sql += "+nextval('s')";
  got = classify(sql);
  EXPECT_EQ(got.kind, K::kWrite);
  EXPECT_TRUE(got.hasSideEffectFunction);
}

TEST(SqlClassifyTest, KindNames) {
  EXPECT_STREQ(toString(K::kRead), "read");
  EXPECT_STREQ(toString(K::kWrite), "write");
  EXPECT_STREQ(toString(K::kTransaction), "transaction");
  EXPECT_STREQ(toString(K::kSession), "session");
  EXPECT_STREQ(toString(K::kUnknown), "unknown");
}

TEST(SqlClassifyCache, HitReturnsTheSameClassification) {
  ClassificationCache cache;
  const char* sql = "SELECT nextval('s'), now() FROM t WHERE id = $1";
  const Classification first = cache.get(sql);
  EXPECT_EQ(first, classify(sql));
  EXPECT_EQ(cache.size(), 1U);
  EXPECT_EQ(cache.misses(), 1U);
  EXPECT_EQ(cache.hits(), 0U);
  const Classification second = cache.get(sql);
  EXPECT_EQ(second, first);
  Classification third;
  cache.get(sql, third);
  EXPECT_EQ(third, first);
  EXPECT_EQ(cache.size(), 1U);
  EXPECT_EQ(cache.misses(), 1U);
  EXPECT_EQ(cache.hits(), 2U);
  // The key is the exact text: a different spacing is another entry.
  EXPECT_EQ(cache.get("SELECT nextval('s'),  now() FROM t WHERE id = $1"), first);
  EXPECT_EQ(cache.size(), 2U);
  // Parse errors are cached too.
  EXPECT_TRUE(cache.get("SELEC").parseError);
  EXPECT_TRUE(cache.get("SELEC").parseError);
  EXPECT_EQ(cache.size(), 3U);
  EXPECT_EQ(cache.hits(), 3U);
}

TEST(SqlClassifyCache, StaysBounded) {
  ClassificationCache cache(4);
  for (int i = 0; i < 100; ++i) {
    const std::string sql = "SELECT " + std::to_string(i);
    EXPECT_EQ(cache.get(sql).kind, K::kRead);
    EXPECT_LE(cache.size(), 4U);
  }
  EXPECT_GE(cache.size(), 1U);
  EXPECT_EQ(cache.misses(), 100U);
}

TEST(SqlClassifyCache, ZeroCapacityDisablesCaching) {
  ClassificationCache cache(0);
  EXPECT_EQ(cache.get("INSERT INTO t VALUES (1)").kind, K::kWrite);
  EXPECT_EQ(cache.get("INSERT INTO t VALUES (1)").kind, K::kWrite);
  EXPECT_EQ(cache.size(), 0U);
}

TEST(SqlClassifyCache, LongTextIsClassifiedButNotCached) {
  ClassificationCache cache;
  std::string sql = "INSERT INTO t VALUES (1)";
  while (sql.size() <= ClassificationCache::kMaxCachedSqlBytes) sql += ", (1)";
  EXPECT_EQ(cache.get(sql).kind, K::kWrite);
  EXPECT_EQ(cache.size(), 0U);
}

TEST(SqlClassifyCache, ConcurrentUseAgreesWithClassify) {
  std::vector<std::string> texts;
  std::vector<Classification> expected;
  for (int i = 0; i < 50; ++i) {
    texts.push_back(i % 3 == 0   ? "SELECT * FROM t WHERE id = " + std::to_string(i)
                    : i % 3 == 1 ? "UPDATE t SET ts = now() WHERE id = " + std::to_string(i)
                                 : "SELECT nextval('s" + std::to_string(i) + "')");
    expected.push_back(classify(texts.back()));
  }
  ClassificationCache cache(32);  // smaller than the working set: clears under load
  constexpr int kThreads = 4;
  constexpr int kRounds = 500;
  std::vector<int> mismatches(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Classification out;
      for (int r = 0; r < kRounds; ++r) {
        const std::size_t i = static_cast<std::size_t>(r * 7 + t) % texts.size();
        cache.get(texts[i], out);
        if (out != expected[i]) ++mismatches[static_cast<std::size_t>(t)];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int m : mismatches) EXPECT_EQ(m, 0);
  EXPECT_LE(cache.size(), 32U);
  EXPECT_EQ(cache.hits() + cache.misses(), std::uint64_t{kThreads} * kRounds);
}

// Not a benchmark with a threshold: prints what a hit costs next to a parse.
TEST(SqlClassifyCache, HitIsCheaperThanMissReport) {
  const std::string sql = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2";
  ClassificationCache cache;
  (void)cache.get(sql);
  using Clock = std::chrono::steady_clock;
  auto perOp = [](Clock::duration d, int n) {
    return std::chrono::duration<double, std::nano>(d).count() / n;
  };
  constexpr int kMisses = 200;
  auto start = Clock::now();
  for (int i = 0; i < kMisses; ++i) {
    const Classification c = classify(sql);
    ASSERT_EQ(c.kind, K::kWrite);
  }
  const double miss = perOp(Clock::now() - start, kMisses);

  constexpr int kHits = 200000;
  start = Clock::now();
  for (int i = 0; i < kHits; ++i) {
    const Classification c = cache.get(sql);
    ASSERT_EQ(c.kind, K::kWrite);
  }
  const double hit = perOp(Clock::now() - start, kHits);

  Classification reused;
  start = Clock::now();
  for (int i = 0; i < kHits; ++i) {
    cache.get(sql, reused);
    ASSERT_EQ(reused.kind, K::kWrite);
  }
  const double hitReused = perOp(Clock::now() - start, kHits);
  std::printf("[classify] miss (parse) %.0f ns/op, hit %.0f ns/op, hit into reused %.0f ns/op\n",
              miss, hit, hitReused);
  EXPECT_EQ(cache.hits(), std::uint64_t{2} * kHits);
}

TEST(SqlClassifyTest, TransactionControlKinds) {
  struct Row {
    const char* sql;
    TxControl tx;
  };
  for (const Row& r : std::initializer_list<Row>{
           {"BEGIN", TxControl::kBegin},
           {"start transaction isolation level serializable", TxControl::kBegin},
           {"COMMIT", TxControl::kCommit},
           {"end", TxControl::kCommit},
           {"commit and chain", TxControl::kCommit},
           {"ROLLBACK", TxControl::kRollback},
           {"abort", TxControl::kRollback},
           {"SAVEPOINT s", TxControl::kSavepoint},
           {"RELEASE SAVEPOINT s", TxControl::kSavepoint},
           {"ROLLBACK TO SAVEPOINT s", TxControl::kSavepoint},
           {"PREPARE TRANSACTION 'x'", TxControl::kPrepare},
           {"COMMIT PREPARED 'x'", TxControl::kCommitPrepared},
           {"ROLLBACK PREPARED 'x'", TxControl::kRollbackPrepared},
           {"SELECT 1", TxControl::kNone},
           {"INSERT INTO t VALUES (1); COMMIT; BEGIN", TxControl::kCommit},
       }) {
    SCOPED_TRACE(r.sql);
    Classification c = classify(r.sql);
    EXPECT_EQ(c.txControl, r.tx);
  }
}

TEST(SqlClassifyTest, StatementsRefusedInsideATransactionBlock) {
  for (const char* sql :
       {"VACUUM", "vacuum analyze t", "CREATE INDEX CONCURRENTLY i ON t (a)",
        "DROP INDEX CONCURRENTLY i", "REINDEX TABLE CONCURRENTLY t",
        "REINDEX (CONCURRENTLY) INDEX i", "REINDEX DATABASE d", "REINDEX SYSTEM d",
        "CREATE DATABASE d", "DROP DATABASE d", "ALTER SYSTEM SET work_mem = '8MB'",
        "CREATE TABLESPACE s LOCATION '/x'", "DROP TABLESPACE s", "SELECT 1; VACUUM t"}) {
    SCOPED_TRACE(sql);
    EXPECT_TRUE(classify(sql).noTransactionBlock);
  }
  for (const char* sql : {"CREATE INDEX i ON t (a)", "DROP INDEX i", "REINDEX TABLE t", "ANALYZE t",
                          "INSERT INTO t VALUES (1)", "BEGIN", "SELECT 1"}) {
    SCOPED_TRACE(sql);
    EXPECT_FALSE(classify(sql).noTransactionBlock);
  }
}

}  // namespace
}  // namespace pghandoff::protocol

namespace pghandoff::protocol {
namespace {

TEST(Classify, SelectsWithEffectsForTheAuthoritativeSideOnly) {
  for (const char* sql :
       {"SELECT nextval('s')", "SELECT setval('s', (SELECT max(id) FROM t))",
        "SELECT currval('s'), lastval()", "SELECT nextval('a'); SELECT nextval('b')",
        "SELECT id, nextval('s') FROM t WHERE id > $1", "SELECT pg_advisory_lock(42)",
        "SELECT nextval('s'), pg_try_advisory_xact_lock(1, 2)"}) {
    EXPECT_TRUE(classify(sql).authoritativeEffectsOnly) << sql;
  }
  for (const char* sql :
       {"SELECT 1", "SELECT nextval('s'), pg_notify('c', 'x')", "SELECT nextval('s') FOR UPDATE",
        "SELECT nextval('s'); DELETE FROM t", "INSERT INTO t VALUES (nextval('s'))",
        "WITH x AS (INSERT INTO t VALUES (1) RETURNING id) SELECT nextval('s')",
        "SELECT nextval('s'), my_func()", "SELECT nextval('s') INTO t2"}) {
    EXPECT_FALSE(classify(sql).authoritativeEffectsOnly) << sql;
  }
}

}  // namespace
}  // namespace pghandoff::protocol
