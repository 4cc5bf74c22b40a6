// The pure parts of `pghandoff verify` (migrate/verify.h): schema diff,
// row-hash diff, chunk SQL, the sequence rule. No database.
#include "migrate/verify.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace pghandoff::migrate::verify {
namespace {

std::vector<std::string> details(const std::vector<Difference>& diffs) {
  std::vector<std::string> out;
  for (const auto& d : diffs) out.push_back(d.detail);
  return out;
}

SchemaDesc baseSchema() {
  SchemaDesc s;
  s.tables["public.t"].columns = {
      ColumnDesc{"id", "integer", true, "nextval('public.t_id_seq'::regclass)", 0, 0},
      ColumnDesc{"c", "integer", false, "", 0, 0},
      ColumnDesc{"ts", "timestamp with time zone", true, "now()", 0, 0},
  };
  s.tables["public.u"].columns = {ColumnDesc{"id", "bigint", true, "", 'a', 0}};
  s.indexes["public.t_pkey"] = IndexDesc{"public.t", "UNIQUE INDEX ON public.t USING btree (id)"};
  s.indexes["public.t_c_idx"] = IndexDesc{"public.t", "INDEX ON public.t USING btree (c)"};
  s.constraints["public.t.t_pkey"] = ConstraintDesc{"public.t", "t_pkey", "PRIMARY KEY (id)"};
  s.sequences["public.t_id_seq"] = SequenceDesc{"integer", 1, 1, 2147483647, false, "public.t"};
  s.extensions["plpgsql"] = "1.0";
  return s;
}

TEST(VerifySchemaDiff, IdenticalSchemasHaveNoDifferences) {
  EXPECT_TRUE(diffSchemas(baseSchema(), baseSchema()).empty());
}

TEST(VerifySchemaDiff, MissingIndexIsListedByName) {
  SchemaDesc target = baseSchema();
  target.indexes.erase("public.t_c_idx");
  auto d = diffSchemas(baseSchema(), target);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].kind, "schema");
  EXPECT_EQ(d[0].object, "public.t_c_idx");
  EXPECT_EQ(d[0].detail, "index public.t_c_idx missing on target");
}

TEST(VerifySchemaDiff, ChangedIndexDefinition) {
  SchemaDesc target = baseSchema();
  target.indexes["public.t_c_idx"].def = "INDEX ON public.t USING hash (c)";
  EXPECT_EQ(details(diffSchemas(baseSchema(), target)),
            std::vector<std::string>{"index public.t_c_idx differs: INDEX ON public.t USING btree "
                                     "(c) on source, INDEX ON public.t USING hash (c) on target"});
}

TEST(VerifySchemaDiff, ChangedColumnTypeNullabilityDefaultAndIdentity) {
  SchemaDesc target = baseSchema();
  target.tables["public.t"].columns[1].type = "bigint";
  target.tables["public.t"].columns[2].notNull = false;
  target.tables["public.t"].columns[2].defaultExpr = "";
  target.tables["public.u"].columns[0].identity = 0;
  EXPECT_EQ(details(diffSchemas(baseSchema(), target)),
            (std::vector<std::string>{
                "column public.t.c type integer on source, bigint on target",
                "column public.t.ts NOT NULL on source, nullable on target",
                "column public.t.ts default now() on source, no default on target",
                "column public.u.id identity always on source, no identity on target",
            }));
}

TEST(VerifySchemaDiff, ExtraTableIsListedOnceWithoutItsParts) {
  SchemaDesc target = baseSchema();
  target.tables["public.extra"].columns = {ColumnDesc{"id", "integer", true, "", 0, 0}};
  target.indexes["public.extra_pkey"] =
      IndexDesc{"public.extra", "UNIQUE INDEX ON public.extra USING btree (id)"};
  target.constraints["public.extra.extra_pkey"] =
      ConstraintDesc{"public.extra", "extra_pkey", "PRIMARY KEY (id)"};
  auto d = diffSchemas(baseSchema(), target);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].detail, "table public.extra extra on target");
  EXPECT_EQ(d[0].object, "public.extra");
}

TEST(VerifySchemaDiff, MissingTableColumnsConstraintsSequencesExtensions) {
  SchemaDesc target = baseSchema();
  target.tables.erase("public.u");
  target.tables["public.t"].columns.pop_back();
  target.tables["public.t"].columns.push_back(ColumnDesc{"added", "text", false, "", 0, 0});
  target.constraints.erase("public.t.t_pkey");
  target.constraints["public.t.t_c_check"] =
      ConstraintDesc{"public.t", "t_c_check", "CHECK (c > 0)"};
  target.sequences["public.t_id_seq"].increment = 2;
  target.sequences["public.t_id_seq"].type = "bigint";
  target.extensions["plpgsql"] = "1.1";
  target.extensions["pgcrypto"] = "1.3";
  EXPECT_EQ(details(diffSchemas(baseSchema(), target)),
            (std::vector<std::string>{
                "column public.t.ts missing on target",
                "column public.t.added extra on target",
                "table public.u missing on target",
                "constraint t_pkey on public.t missing on target",
                "constraint t_c_check on public.t extra on target",
                "sequence public.t_id_seq type integer on source, bigint on target",
                "sequence public.t_id_seq increment 1 on source, 2 on target",
                "extension plpgsql version 1.0 on source, 1.1 on target",
                "extension pgcrypto extra on target",
            }));
}

TEST(VerifySchemaDiff, ForeignKeyDefinitionDiffers) {
  SchemaDesc source = baseSchema(), target = baseSchema();
  source.constraints["public.u.u_t_fkey"] =
      ConstraintDesc{"public.u", "u_t_fkey", "FOREIGN KEY (id) REFERENCES public.t(id)"};
  target.constraints["public.u.u_t_fkey"] = ConstraintDesc{
      "public.u", "u_t_fkey", "FOREIGN KEY (id) REFERENCES public.t(id) ON DELETE CASCADE"};
  EXPECT_EQ(details(diffSchemas(source, target)),
            std::vector<std::string>{
                "constraint u_t_fkey on public.u differs: FOREIGN KEY (id) REFERENCES public.t(id) "
                "on source, FOREIGN KEY (id) REFERENCES public.t(id) ON DELETE CASCADE on target"});
}

TEST(VerifyIndexDef, SchemaQualifiedOrNotNormalisesAlike) {
  EXPECT_EQ(normaliseIndexDef("CREATE UNIQUE INDEX t_pkey ON public.t USING btree (id)", "public",
                              "public.t"),
            "UNIQUE INDEX ON public.t USING btree (id)");
  EXPECT_EQ(
      normaliseIndexDef("CREATE UNIQUE INDEX t_pkey ON t USING btree (id)", "public", "public.t"),
      "UNIQUE INDEX ON public.t USING btree (id)");
  EXPECT_EQ(normaliseIndexDef(R"(CREATE INDEX "odd ON name" ON ONLY "My Schema"."T x" USING )"
                              R"(btree (a) WHERE (a > 0))",
                              "My Schema", "My Schema.T x"),
            "INDEX ON ONLY My Schema.T x USING btree (a) WHERE (a > 0)");
  EXPECT_EQ(normaliseIndexDef("something else", "public", "public.t"), "something else");
}

TEST(VerifyRowDiff, MissingExtraAndChangedKeys) {
  std::vector<RowHash> source = {{{"1"}, "aa"}, {{"2"}, "bb"}, {{"3"}, "cc"}, {{"5"}, "ee"}};
  std::vector<RowHash> target = {{{"1"}, "aa"}, {{"3"}, "CHANGED"}, {{"4"}, "dd"}, {{"5"}, "ee"}};
  auto d = diffRowHashes(source, target);
  ASSERT_EQ(d.size(), 3u);
  EXPECT_EQ(d[0], (RowDiff{RowDiffKind::kMissingOnTarget, {"2"}}));
  EXPECT_EQ(d[1], (RowDiff{RowDiffKind::kDiffers, {"3"}}));
  EXPECT_EQ(d[2], (RowDiff{RowDiffKind::kExtraOnTarget, {"4"}}));
  const std::vector<std::string> cols{"id"};
  EXPECT_EQ(describeRowDiff(cols, d[0]), "row (id)=(2) missing on target");
  EXPECT_EQ(describeRowDiff(cols, d[1]), "row (id)=(3) differs");
  EXPECT_EQ(describeRowDiff(cols, d[2]), "row (id)=(4) extra on target");
  EXPECT_TRUE(diffRowHashes(source, source).empty());
}

TEST(VerifyRowDiff, CompositeKeysCompareEveryColumn) {
  // ("1","23") and ("12","3") must not collide however the key is joined.
  std::vector<RowHash> source = {{{"1", "23"}, "x"}};
  std::vector<RowHash> target = {{{"12", "3"}, "x"}};
  auto d = diffRowHashes(source, target);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0].kind, RowDiffKind::kMissingOnTarget);
  EXPECT_EQ(d[1].kind, RowDiffKind::kExtraOnTarget);
  EXPECT_EQ(formatKey({"a", "b"}, d[0].key), "(a, b)=(1, 23)");
}

TEST(VerifyRowDiff, MultisetsCountCopies) {
  std::map<std::string, std::int64_t> source{{"a", 2}, {"b", 1}, {"c", 1}};
  std::map<std::string, std::int64_t> target{{"a", 1}, {"c", 1}, {"d", 3}};
  EXPECT_EQ(diffMultisets(source, target),
            (std::vector<MultisetDiff>{{"a", 1}, {"b", 1}, {"d", -3}}));
  EXPECT_TRUE(diffMultisets(source, source).empty());
}

TEST(VerifyChunkSql, SingleColumnKeyQuotesIdentifiers) {
  TableShape t{"public", "Order\"s", {"id", "Note Text"}, {"id"}, {"integer"}};
  EXPECT_EQ(rowTextExpr(t), R"(ROW(r."id", r."Note Text")::text)");
  EXPECT_EQ(boundariesSql(t, 1000),
            R"(SELECT w.k0 FROM (SELECT r."id"::text AS k0, row_number() OVER (ORDER BY r."id") )"
            R"(AS rn FROM "public"."Order""s" AS r) AS w WHERE w.rn % 1000 = 0 ORDER BY w.rn)");
  EXPECT_EQ(rangePredicate(t, true, true), R"(r."id" > $1::integer AND r."id" <= $2::integer)");
  EXPECT_EQ(rangePredicate(t, false, true), R"(r."id" <= $1::integer)");
  EXPECT_EQ(rangePredicate(t, true, false), R"(r."id" > $1::integer)");
  EXPECT_EQ(rangePredicate(t, false, false), "");
  EXPECT_EQ(chunkChecksumSql(t, false, false),
            R"(SELECT count(*)::text, coalesce(sum(('x' || substr(md5(ROW(r."id", )"
            R"(r."Note Text")::text), 1, 16))::bit(64)::bigint), 0)::text FROM )"
            R"("public"."Order""s" AS r)");
  EXPECT_EQ(chunkRowsSql(t, true, false),
            R"(SELECT r."id"::text, md5(ROW(r."id", r."Note Text")::text) FROM )"
            R"("public"."Order""s" AS r WHERE r."id" > $1::integer ORDER BY r."id")");
}

TEST(VerifyChunkSql, CompositeKeyUsesRowComparisons) {
  TableShape t{"sales",
               "line items",
               {"order id", "line", "qty"},
               {"order id", "line"},
               {"bigint", "integer"}};
  EXPECT_EQ(rangePredicate(t, true, true),
            R"((r."order id", r."line") > ($1::bigint, $2::integer) AND )"
            R"((r."order id", r."line") <= ($3::bigint, $4::integer))");
  EXPECT_EQ(rangePredicate(t, false, true),
            R"((r."order id", r."line") <= ($1::bigint, $2::integer))");
  EXPECT_EQ(
      boundariesSql(t, 50),
      R"(SELECT w.k0, w.k1 FROM (SELECT r."order id"::text AS k0, r."line"::text AS k1, )"
      R"(row_number() OVER (ORDER BY r."order id", r."line") AS rn FROM "sales"."line items" )"
      R"(AS r) AS w WHERE w.rn % 50 = 0 ORDER BY w.rn)");
  EXPECT_EQ(chunkRowsSql(t, false, false),
            R"(SELECT r."order id"::text, r."line"::text, md5(ROW(r."order id", r."line", )"
            R"(r."qty")::text) FROM "sales"."line items" AS r ORDER BY r."order id", r."line")");
}

TEST(VerifyChunkSql, KeylessTablesHashWholeRows) {
  TableShape t{"public", "log", {"at", "msg"}, {}, {}};
  EXPECT_EQ(multisetSql(t),
            R"(SELECT md5(ROW(r."at", r."msg")::text) AS h, count(*) FROM "public"."log" AS r )"
            R"(GROUP BY 1)");
  EXPECT_NE(rowsByHashSql(t).find("= ANY($1::text[])"), std::string::npos);
}

TEST(VerifySequence, BehindMeansTheNextValueCollides) {
  // is_called: the next value is last_value + increment.
  EXPECT_FALSE(sequenceBehind(10, true, 1, 10, 1));
  EXPECT_TRUE(sequenceBehind(9, true, 1, 10, 1));
  // not called: the next value is last_value itself.
  EXPECT_TRUE(sequenceBehind(10, false, 1, 10, 1));
  EXPECT_FALSE(sequenceBehind(11, false, 1, 10, 1));
  // an empty column has nothing to collide with.
  EXPECT_FALSE(sequenceBehind(1, false, 1, std::nullopt, std::nullopt));
  // descending sequences look at the column's minimum.
  EXPECT_FALSE(sequenceBehind(-10, true, -1, -1, -10));
  EXPECT_TRUE(sequenceBehind(-9, true, -1, -1, -10));
  // at the type's end the next call fails rather than collides.
  EXPECT_FALSE(sequenceBehind(std::numeric_limits<std::int64_t>::max(), true, 1,
                              std::numeric_limits<std::int64_t>::max(), 1));
}

TEST(VerifyPhase, AuthoritativeSideFollowsThePhaseTable) {
  for (const char* p : {"source-only", "seeding", "mirror", "mirror-read-target"}) {
    EXPECT_EQ(authoritativeSide(p), "source") << p;
  }
  EXPECT_EQ(authoritativeSide("reverse-mirror"), "target");
  EXPECT_EQ(authoritativeSide("target-only"), "target");
  EXPECT_EQ(authoritativeSide(""), "");
}

TEST(VerifyJson, StringsAreEscaped) {
  EXPECT_EQ(jsonString("a\"b\\c\n\x01"), R"("a\"b\\c\n\u0001")");
}

}  // namespace
}  // namespace pghandoff::migrate::verify
