// Pinning INSERTs (proxy/insert_pin.h, protocol::analyzeInsert): the shape of
// the text, the prestep the authoritative side runs, and the texts both sides
// run with its values written in.
#include "proxy/insert_pin.h"

#include <gtest/gtest.h>

namespace pghandoff::proxy {
namespace {

using protocol::InsertShape;

std::vector<TableColumn> itemsTable() {
  // CREATE TABLE items (id bigserial, uid uuid DEFAULT gen_random_uuid(),
  //   name text, qty int DEFAULT 1, created_at timestamptz DEFAULT now(),
  //   total int GENERATED ALWAYS AS (qty * 2) STORED)
  return {
      {"id", "bigint", 0, false, "nextval('items_id_seq'::regclass)", true},
      {"uid", "uuid", 0, false, "gen_random_uuid()", true},
      {"name", "text", 0, false, "", false},
      {"qty", "integer", 0, false, "1", false},
      {"created_at", "timestamp with time zone", 0, false, "now()", true},
      {"total", "integer", 0, true, "", false},
  };
}

struct Planned {
  std::optional<InsertPlan> plan;
  std::string why;
  bool none = false;
};

Planned plan(std::string_view sql, const std::vector<TableColumn>& table) {
  Planned p;
  p.plan = planInsert(sql, protocol::analyzeInsert(sql), protocol::analyzeDeterminism(sql), table,
                      p.why, p.none);
  return p;
}

TEST(AnalyzeInsert, FindsTheParts) {
  const std::string sql =
      "WITH x AS (DELETE FROM q RETURNING v) INSERT INTO public.items AS i (name, qty) "
      "OVERRIDING SYSTEM VALUE VALUES ($1, 2), ('b', DEFAULT) ON CONFLICT (name) DO NOTHING "
      "RETURNING id;";
  const InsertShape s = protocol::analyzeInsert(sql);
  ASSERT_TRUE(s.ok);
  EXPECT_EQ(s.withBegin, 0u);
  EXPECT_TRUE(s.withDml);
  EXPECT_EQ(sql.substr(s.insertBegin, 6), "INSERT");
  EXPECT_EQ(s.schema, "public");
  EXPECT_EQ(s.table, "items");
  EXPECT_EQ(sql.substr(s.insertBegin, s.targetEnd - s.insertBegin),
            "INSERT INTO public.items AS i");
  EXPECT_TRUE(s.columnList);
  EXPECT_EQ(s.columns, (std::vector<std::string>{"name", "qty"}));
  EXPECT_EQ(sql[s.columnListClose], ')');
  EXPECT_EQ(s.overriding, InsertShape::Overriding::kSystem);
  EXPECT_EQ(s.source, InsertShape::Source::kValues);
  ASSERT_EQ(s.rows.size(), 2u);
  EXPECT_EQ(sql.substr(s.rows[0][0].begin, s.rows[0][0].end - s.rows[0][0].begin), "$1");
  EXPECT_TRUE(s.rows[1][1].isDefault);
  EXPECT_EQ(sql.substr(s.sourceBegin, s.sourceEnd - s.sourceBegin),
            "VALUES ($1, 2), ('b', DEFAULT)");
  EXPECT_EQ(sql.substr(s.tailBegin, 11), "ON CONFLICT");
  EXPECT_EQ(sql.substr(s.returningBegin), "RETURNING id;");
  EXPECT_EQ(s.statementEnd, sql.size() - 1);
  EXPECT_EQ(s.params, (std::vector<int>{1}));
}

TEST(AnalyzeInsert, QueriesAndRefusals) {
  InsertShape s = protocol::analyzeInsert("INSERT INTO t SELECT a FROM u JOIN v ON conflict = 1");
  ASSERT_TRUE(s.ok);
  EXPECT_EQ(s.source, InsertShape::Source::kQuery);
  EXPECT_FALSE(s.columnList);
  s = protocol::analyzeInsert("INSERT INTO t (a) (SELECT 1) RETURNING a");
  ASSERT_TRUE(s.ok);
  EXPECT_EQ(s.source, InsertShape::Source::kQuery);
  s = protocol::analyzeInsert("INSERT INTO t VALUES (1) ORDER BY 1");
  ASSERT_TRUE(s.ok);
  EXPECT_EQ(s.source, InsertShape::Source::kQuery);
  s = protocol::analyzeInsert("INSERT INTO t DEFAULT VALUES");
  ASSERT_TRUE(s.ok);
  EXPECT_EQ(s.source, InsertShape::Source::kDefaultValues);
  EXPECT_FALSE(protocol::analyzeInsert("UPDATE t SET a = 1").ok);
  EXPECT_FALSE(protocol::analyzeInsert("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)").ok);
  EXPECT_FALSE(protocol::analyzeInsert("INSERT INTO t (a.b) VALUES (1)").ok);
  EXPECT_FALSE(protocol::analyzeInsert("INSERT INTO").ok);
}

TEST(PlanInsert, ValuesGetTheirDefaultsAndCallsAsLiterals) {
  const std::string sql =
      "INSERT INTO items (name, created_at) VALUES ($1, DEFAULT), ('x' || random(), now()) "
      "RETURNING id, random()";
  auto p = plan(sql, itemsTable());
  ASSERT_TRUE(p.plan) << p.why;
  EXPECT_EQ(p.plan->path, InsertPlan::Path::kValues);
  // Text order: row 1 created_at DEFAULT, row 1 added id and uid; row 2
  // random(), now(), added id and uid. RETURNING is left alone.
  EXPECT_EQ(p.plan->prestep,
            "VALUES (((now())::timestamp with time zone)::pg_catalog.text), "
            "(((nextval('items_id_seq'::regclass))::bigint)::pg_catalog.text), "
            "(((gen_random_uuid())::uuid)::pg_catalog.text), "
            "((random())::pg_catalog.text), ((now())::pg_catalog.text), "
            "(((nextval('items_id_seq'::regclass))::bigint)::pg_catalog.text), "
            "(((gen_random_uuid())::uuid)::pg_catalog.text)");
  auto texts = finishValues(
      sql, *p.plan,
      {"2026-11-21 10:00:00+00", "7", "u1", "0.5", "2026-11-21 10:00:00+00", "8", std::nullopt});
  ASSERT_TRUE(texts);
  EXPECT_EQ(texts->authoritative,
            "INSERT INTO items (name, created_at, \"id\", \"uid\") VALUES ($1, E'2026-11-21 "
            "10:00:00+00', E'7', E'u1'), ('x' || E'0.5'::double precision, E'2026-11-21 "
            "10:00:00+00'::timestamptz, E'8', NULL) RETURNING id, random()");
  EXPECT_EQ(texts->mirror, texts->authoritative);
  EXPECT_FALSE(finishValues(sql, *p.plan, {"too few"}));
}

TEST(PlanInsert, PositionalValuesIdentityAndDefaultValues) {
  std::vector<TableColumn> t = {
      {"id", "integer", 'a', false, "nextval('public.t_id_seq'::regclass)", true},
      {"v", "text", 0, false, "", false},
  };
  auto p = plan("INSERT INTO t VALUES (DEFAULT, 'a')", t);
  ASSERT_TRUE(p.plan) << p.why;
  auto texts = finishValues("INSERT INTO t VALUES (DEFAULT, 'a')", *p.plan, {"5"});
  ASSERT_TRUE(texts);
  EXPECT_EQ(texts->authoritative, "INSERT INTO t OVERRIDING SYSTEM VALUE VALUES (E'5', 'a')");

  p = plan("INSERT INTO t (v) VALUES ('a')", t);
  ASSERT_TRUE(p.plan);
  texts = finishValues("INSERT INTO t (v) VALUES ('a')", *p.plan, {"6"});
  EXPECT_EQ(texts->authoritative,
            "INSERT INTO t (v, \"id\") OVERRIDING SYSTEM VALUE VALUES ('a', E'6')");

  p = plan("INSERT INTO t VALUES (DEFAULT, 'a')", t);
  p = plan("INSERT INTO t DEFAULT VALUES", t);
  ASSERT_TRUE(p.plan);
  texts = finishValues("INSERT INTO t DEFAULT VALUES", *p.plan, {"7"});
  EXPECT_EQ(texts->authoritative, "INSERT INTO t (\"id\") OVERRIDING SYSTEM VALUE VALUES (E'7')");

  p = plan("INSERT INTO t (v) OVERRIDING USER VALUE VALUES ('a')", t);
  EXPECT_FALSE(p.plan);
  EXPECT_NE(p.why.find("OVERRIDING USER VALUE"), std::string::npos);
}

TEST(PlanInsert, NothingToPinAndWhatCannotBe) {
  auto t = itemsTable();
  auto p = plan("INSERT INTO items (id, uid, name, created_at) VALUES (1, $2, 'a', $3)", t);
  EXPECT_FALSE(p.plan);
  EXPECT_TRUE(p.none);
  p = plan("INSERT INTO items (id, uid, created_at) VALUES (1, $2, $3) RETURNING now()", t);
  EXPECT_TRUE(p.none);
  p = plan(
      "INSERT INTO items (id, uid, created_at) VALUES (1, $2, $3) ON CONFLICT (id) DO "
      "UPDATE SET name = random()::text",
      t);
  EXPECT_FALSE(p.plan);
  EXPECT_FALSE(p.none);
  EXPECT_NE(p.why.find("random"), std::string::npos);
  p = plan("INSERT INTO items (id, uid, created_at) VALUES (nextval($1), $2, $3)", t);
  EXPECT_FALSE(p.plan);
  EXPECT_FALSE(p.none);
  // ON CONFLICT ... now(): transaction time, pinned.
  const std::string sql =
      "INSERT INTO items (id, uid, created_at) VALUES (1, $2, $3) ON CONFLICT (id) DO UPDATE SET "
      "created_at = now()";
  p = plan(sql, t);
  ASSERT_TRUE(p.plan) << p.why;
  auto texts = finishValues(sql, *p.plan, {"2026-01-01 00:00:00+00"});
  EXPECT_EQ(texts->mirror,
            "INSERT INTO items (id, uid, created_at) VALUES (1, $2, $3) ON CONFLICT (id) DO UPDATE "
            "SET created_at = E'2026-01-01 00:00:00+00'::timestamptz");
}

TEST(PlanInsert, QueryPathFetchesTheRows) {
  const std::string sql =
      "WITH moved AS (DELETE FROM queue WHERE at < now() RETURNING name) INSERT INTO items (name) "
      "SELECT name FROM moved ORDER BY name RETURNING id";
  auto p = plan(sql, itemsTable());
  ASSERT_TRUE(p.plan) << p.why;
  EXPECT_EQ(p.plan->path, InsertPlan::Path::kQuery);
  EXPECT_EQ(p.plan->prestep,
            "WITH moved AS (DELETE FROM queue WHERE at < now() RETURNING name) SELECT "
            "pghandoff_src.*, (nextval('items_id_seq'::regclass))::bigint, "
            "(gen_random_uuid())::uuid, (now())::timestamp with time zone, "
            "pg_catalog.to_char(pg_catalog.now(), 'YYYY-MM-DD HH24:MI:SS.US TZH:TZM') FROM "
            "(SELECT name FROM moved ORDER BY name) AS pghandoff_src");
  auto texts =
      finishQuery(*p.plan, {{"a", "1", "u", "t0", "T"}, {"it's", "2", "v", "t0", "T"}},
                  {25, 20, 2950, 1184, 25}, std::string("2026-01-01 00:00:00.000000 +00:00"));
  ASSERT_TRUE(texts);
  EXPECT_EQ(texts->authoritative,
            "INSERT INTO items (\"name\", \"id\", \"uid\", \"created_at\") VALUES (E'a', E'1', "
            "E'u', E't0'), (E'it''s', E'2', E'v', E't0') RETURNING id");
  EXPECT_EQ(texts->mirror,
            "WITH moved AS (DELETE FROM queue WHERE at < '2026-01-01 00:00:00.000000 "
            "+00:00'::timestamptz RETURNING name) INSERT INTO items (\"name\", \"id\", \"uid\", "
            "\"created_at\") VALUES (E'a', E'1', E'u', E't0'), (E'it''s', E'2', E'v', E't0') "
            "RETURNING id");
  // No rows: nothing to insert, the same tag and RETURNING shape.
  texts = finishQuery(*p.plan, {}, {25, 20, 2950, 1184, 25}, std::string("x"));
  ASSERT_TRUE(texts);
  EXPECT_EQ(
      texts->authoritative,
      "INSERT INTO items (\"name\", \"id\", \"uid\", \"created_at\") SELECT NULL, NULL, NULL, "
      "NULL WHERE false RETURNING id");
}

TEST(PlanInsert, PositionalQueryTypedLiterals) {
  std::vector<TableColumn> t = {
      {"id", "bigint", 0, false, "nextval('s'::regclass)", true},
      {"n", "numeric", 0, false, "", false},
      {"b", "bytea", 0, false, "", false},
  };
  auto p = plan("INSERT INTO t SELECT 1, 2.5, '\\x01'::bytea", t);
  ASSERT_TRUE(p.plan) << p.why;
  // The source gave all three columns: the added id is dropped.
  auto texts =
      finishQuery(*p.plan, {{"1", "2.5", "\\x01", "99"}}, {23, 1700, 17, 20}, std::nullopt);
  ASSERT_TRUE(texts);
  EXPECT_EQ(texts->authoritative,
            "INSERT INTO t (\"id\", \"n\", \"b\") VALUES (E'1'::pg_catalog.int4, "
            "E'2.5'::pg_catalog.numeric, E'\\\\x01'::pg_catalog.bytea)");
  // One column: it is id (positional); nothing is added.
  texts = finishQuery(*p.plan, {{"5", "99"}}, {23, 20}, std::nullopt);
  ASSERT_TRUE(texts);
  EXPECT_EQ(texts->authoritative, "INSERT INTO t (\"id\") VALUES (E'5'::pg_catalog.int4)");
}

TEST(PlanInsert, AViewsColumnsWithoutDefaultsOfTheirOwnMustBeGiven) {
  // A view over a serial table: the catalog read shows no default for id.
  std::vector<TableColumn> view = {{"id", "integer", 0, false, "", true},
                                   {"v", "text", 0, false, "", false}};
  auto p = plan("INSERT INTO items_view (v) VALUES ('a')", view);
  EXPECT_FALSE(p.plan);
  EXPECT_FALSE(p.none);
  EXPECT_NE(p.why.find("through a view"), std::string::npos) << p.why;
  p = plan("INSERT INTO items_view VALUES (DEFAULT, 'a')", view);
  EXPECT_FALSE(p.plan);
  EXPECT_NE(p.why.find("through a view"), std::string::npos) << p.why;
  p = plan("INSERT INTO items_view (id, v) VALUES (1, 'a')", view);
  EXPECT_TRUE(p.none);  // every column given: nothing per server
}

TEST(SqlLiteral, Escapes) {
  EXPECT_EQ(sqlLiteral(std::string("a'b\\c")), "E'a''b\\\\c'");
  EXPECT_EQ(sqlLiteral(std::nullopt), "NULL");
  EXPECT_EQ(sqlIdentifier("we\"ird"), "\"we\"\"ird\"");
}

}  // namespace
}  // namespace pghandoff::proxy
