// `pghandoff check`'s decisions (migrate/check.h), driven with hand-built
// facts: what each server reports turns into OK / WARN / BLOCKER items, and
// the reports render as text and as JSON.

#include "migrate/check.h"

#include <gtest/gtest.h>

#include <boost/json/src.hpp>

#include <cctype>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pghandoff::migrate::check {
namespace {

namespace json = boost::json;

// Two matching, healthy PostgreSQL 15 servers; each test changes what it needs.
Facts server(const std::string& side) {
  Facts f;
  f.side = side;
  f.server = side == "source" ? "10.0.0.1:5432/app" : "10.0.0.2:5432/app";
  f.user = "postgres";
  f.superuser = true;
  f.serverVersion = "15.4";
  f.serverVersionNum = 150004;
  f.database = "app";
  f.encoding = "UTF8";
  f.collate = "en_US.UTF-8";
  f.ctype = "en_US.UTF-8";
  f.localeProvider = "c";
  f.sizePretty = side == "source" ? "1234 MB" : "7453 kB";
  f.extensions = {{"plpgsql", "1.0"}};
  f.availableExtensions = {{"plpgsql", {"1.0", true, true}}, {"pg_trgm", {"1.6", false, true}}};
  f.settings = {
      {"TimeZone", {"UTC", "UTC", "configuration file", "user"}},
      {"DateStyle", {"ISO, MDY", "ISO, MDY", "configuration file", "user"}},
      {"default_statistics_target", {"100", "100", "default", "user"}},
  };
  f.roles = {"postgres", "pg_database_owner"};
  f.referencedRoles = {"postgres", "pg_database_owner"};
  f.maxConnections = 100;
  f.superuserReservedConnections = 3;
  f.canCreateInDatabase = true;
  f.canCreateInPublic = true;
  return f;
}

Options options() {
  Options o;
  o.pgDump = {"pg_dump", "/usr/bin/pg_dump", "15.4", 150004};
  o.pgRestore = {"pg_restore", "/usr/bin/pg_restore", "15.4", 150004};
  return o;
}

Status statusOf(const Report& r, const std::string& name) {
  const Item* i = r.find(name);
  EXPECT_NE(i, nullptr) << "no item " << name << "\n" << renderText(r);
  return i == nullptr ? Status::kOk : i->status;
}

std::string detailOf(const Report& r, const std::string& name) {
  const Item* i = r.find(name);
  return i == nullptr ? "" : i->detail;
}

TEST(CheckEvaluate, MatchingServersAreAGoWithoutWarnings) {
  const auto r = evaluate(server("source"), server("target"), options());
  EXPECT_TRUE(r.go()) << renderText(r);
  EXPECT_EQ(r.count(Status::kBlocker), 0u);
  EXPECT_EQ(r.count(Status::kWarn), 0u) << renderText(r);
  EXPECT_EQ(statusOf(r, "database size"), Status::kOk);
  EXPECT_NE(detailOf(r, "database size").find("1234 MB"), std::string::npos);
  EXPECT_NE(detailOf(r, "database size").find("7453 kB"), std::string::npos);
}

TEST(CheckEvaluate, TargetOlderMajorVersionIsABlocker) {
  auto t = server("target");
  t.serverVersion = "14.9";
  t.serverVersionNum = 140009;
  const auto r = evaluate(server("source"), t, options());
  EXPECT_FALSE(r.go());
  EXPECT_EQ(statusOf(r, "server versions"), Status::kBlocker);
  EXPECT_NE(detailOf(r, "server versions").find("older"), std::string::npos);
}

TEST(CheckEvaluate, NewerTargetMajorIsAWarningAndAMinorDifferenceIsFine) {
  auto t = server("target");
  t.serverVersion = "16.1";
  t.serverVersionNum = 160001;
  auto r = evaluate(server("source"), t, options());
  EXPECT_TRUE(r.go());
  EXPECT_EQ(statusOf(r, "server versions"), Status::kWarn);

  t.serverVersion = "15.6";
  t.serverVersionNum = 150006;
  r = evaluate(server("source"), t, options());
  EXPECT_EQ(statusOf(r, "server versions"), Status::kOk);
}

TEST(CheckEvaluate, PgDumpOlderThanTheSourceOrMissingIsABlocker) {
  auto s = server("source");
  s.serverVersion = "16.2";
  s.serverVersionNum = 160002;
  auto t = server("target");
  t.serverVersion = "16.2";
  t.serverVersionNum = 160002;
  auto r = evaluate(s, t, options());  // pg_dump 15 cannot dump a 16 server
  EXPECT_FALSE(r.go());
  EXPECT_EQ(statusOf(r, "pg_dump"), Status::kBlocker);

  auto o = options();
  o.pgDump = {"pg_dump", "", "", 0};
  r = evaluate(server("source"), server("target"), o);
  EXPECT_EQ(statusOf(r, "pg_dump"), Status::kBlocker);
  EXPECT_NE(detailOf(r, "pg_dump").find("not found"), std::string::npos);

  o = options();
  o.pgRestore = {"pg_restore", "/opt/pg_restore", "14.1", 140001};
  r = evaluate(server("source"), server("target"), o);
  EXPECT_EQ(statusOf(r, "pg_restore"), Status::kBlocker);

  o = options();
  o.pgDump = {"pg_dump", "/usr/lib/postgresql/16/bin/pg_dump", "16.2", 160002};
  o.pgRestore = {"pg_restore", "/usr/lib/postgresql/16/bin/pg_restore", "16.2", 160002};
  r = evaluate(server("source"), server("target"), o);  // newer tools dump older servers
  EXPECT_TRUE(r.go()) << renderText(r);
}

TEST(CheckEvaluate, ExtensionUnavailableOnTheTargetIsABlocker) {
  auto s = server("source");
  s.extensions["postgis"] = "3.4.0";
  const auto r = evaluate(s, server("target"), options());
  EXPECT_FALSE(r.go());
  EXPECT_EQ(statusOf(r, "extension postgis"), Status::kBlocker);
  EXPECT_NE(detailOf(r, "extension postgis").find("not available"), std::string::npos);
}

TEST(CheckEvaluate, ExtensionAvailableButNotInstalledIsNotABlocker) {
  auto s = server("source");
  s.extensions["pg_trgm"] = "1.6";
  auto r = evaluate(s, server("target"), options());
  EXPECT_TRUE(r.go());
  EXPECT_EQ(statusOf(r, "extension pg_trgm"), Status::kOk);
  EXPECT_NE(detailOf(r, "extension pg_trgm").find("the restore creates it"), std::string::npos);

  s.extensions["pg_trgm"] = "1.5";  // the restore would create 1.6
  r = evaluate(s, server("target"), options());
  EXPECT_TRUE(r.go());
  EXPECT_EQ(statusOf(r, "extension pg_trgm"), Status::kWarn);
}

TEST(CheckEvaluate, ExtensionInstalledAtAnotherVersionIsAWarning) {
  auto s = server("source");
  s.extensions["pg_trgm"] = "1.6";
  auto t = server("target");
  t.extensions["pg_trgm"] = "1.5";
  const auto r = evaluate(s, t, options());
  EXPECT_TRUE(r.go());
  EXPECT_EQ(statusOf(r, "extension pg_trgm"), Status::kWarn);
}

TEST(CheckEvaluate, UntrustedExtensionAndATargetUserWhoIsNoSuperuserIsABlocker) {
  auto s = server("source");
  s.extensions["postgres_fdw"] = "1.1";
  auto t = server("target");
  t.superuser = false;
  t.user = "migrator";
  t.availableExtensions["postgres_fdw"] = {"1.1", true, false};
  const auto r = evaluate(s, t, options());
  EXPECT_FALSE(r.go());
  EXPECT_EQ(statusOf(r, "extension postgres_fdw"), Status::kBlocker);
  EXPECT_NE(detailOf(r, "extension postgres_fdw").find("superuser"), std::string::npos);
}

TEST(CheckEvaluate, DifferingEncodingIsABlockerAndDifferingCollationAWarning) {
  auto t = server("target");
  t.encoding = "LATIN1";
  auto r = evaluate(server("source"), t, options());
  EXPECT_FALSE(r.go());
  EXPECT_EQ(statusOf(r, "encoding"), Status::kBlocker);

  t = server("target");
  t.collate = "C";
  r = evaluate(server("source"), t, options());
  EXPECT_TRUE(r.go());
  EXPECT_EQ(statusOf(r, "collation"), Status::kWarn);
  EXPECT_NE(detailOf(r, "collation").find("collate C"), std::string::npos);

  t = server("target");
  t.localeProvider = "i";
  t.iculocale = "und";
  r = evaluate(server("source"), t, options());
  EXPECT_EQ(statusOf(r, "collation"), Status::kWarn);
}

TEST(CheckEvaluate, DifferingSettingIsAWarningWithBothValues) {
  auto s = server("source");
  s.settings["DateStyle"] = {"SQL, DMY", "SQL, DMY", "database", "user"};
  auto t = server("target");
  t.settings["default_statistics_target"] = {"250", "250", "configuration file", "user"};
  const auto r = evaluate(s, t, options());
  EXPECT_TRUE(r.go());
  EXPECT_EQ(statusOf(r, "setting DateStyle"), Status::kWarn);
  EXPECT_NE(detailOf(r, "setting DateStyle").find("SQL, DMY"), std::string::npos);
  EXPECT_NE(detailOf(r, "setting DateStyle").find("ISO, MDY"), std::string::npos);
  EXPECT_EQ(statusOf(r, "setting default_statistics_target"), Status::kWarn);
  EXPECT_NE(detailOf(r, "setting default_statistics_target").find("'100' (default)"),
            std::string::npos);
  EXPECT_NE(detailOf(r, "setting default_statistics_target").find("'250'"), std::string::npos);
  EXPECT_EQ(r.find("settings"), nullptr);  // no "no differences" line
}

TEST(CheckEvaluate, PerServerAndDefaultSettingsAreNotCompared) {
  auto s = server("source");
  auto t = server("target");
  s.settings["port"] = {"5432", "5432", "command line", "postmaster"};
  t.settings["port"] = {"5433", "5433", "command line", "postmaster"};
  s.settings["shared_buffers"] = {"16384", "128MB", "configuration file", "postmaster"};
  t.settings["shared_buffers"] = {"4096", "32MB", "configuration file", "postmaster"};
  s.settings["log_min_messages"] = {"warning", "warning", "configuration file", "superuser"};
  t.settings["log_min_messages"] = {"notice", "notice", "configuration file", "superuser"};
  s.settings["block_size"] = {"8192", "8192", "default", "internal"};
  t.settings["block_size"] = {"16384", "16384", "default", "internal"};
  // Both at their (differing) defaults: two versions' defaults, not a choice.
  s.settings["jit"] = {"off", "off", "default", "user"};
  t.settings["jit"] = {"on", "on", "default", "user"};
  const auto r = evaluate(s, t, options());
  EXPECT_EQ(r.count(Status::kWarn), 0u) << renderText(r);
  EXPECT_EQ(statusOf(r, "settings"), Status::kOk);

  // ... except those that change results, compared even at their defaults.
  s.settings["IntervalStyle"] = {"postgres", "postgres", "default", "user"};
  t.settings["IntervalStyle"] = {"iso_8601", "iso_8601", "default", "user"};
  EXPECT_EQ(statusOf(evaluate(s, t, options()), "setting IntervalStyle"), Status::kWarn);
  EXPECT_TRUE(settingIsCompared("TimeZone", nullptr, nullptr));
  EXPECT_FALSE(settingIsCompared("ssl_cert_file", nullptr, nullptr));
  EXPECT_FALSE(settingIsCompared("transaction_isolation", nullptr, nullptr));
}

TEST(CheckEvaluate, SettingOnlyOneServerHasIsListedWhenSet) {
  auto t = server("target");
  t.settings["new_in_16"] = {"on", "on", "configuration file", "user"};
  auto r = evaluate(server("source"), t, options());
  EXPECT_EQ(statusOf(r, "setting new_in_16"), Status::kWarn);
  t.settings["new_in_16"].source = "default";
  r = evaluate(server("source"), t, options());
  EXPECT_EQ(r.find("setting new_in_16"), nullptr);
}

TEST(CheckEvaluate, ConnectionHeadroomArithmetic) {
  auto s = server("source");
  auto t = server("target");
  // free = 100 - 3 - 10 = 87; needed = clients + 4 jobs + 4 proxy sessions.
  t.clientBackends = 10;
  s.clientBackendsOnDatabase = 79;  // needed 87: exactly enough
  auto r = evaluate(s, t, options());
  EXPECT_EQ(statusOf(r, "connection headroom"), Status::kOk) << detailOf(r, "connection headroom");

  s.clientBackendsOnDatabase = 80;  // needed 88
  r = evaluate(s, t, options());
  EXPECT_FALSE(r.go());
  EXPECT_EQ(statusOf(r, "connection headroom"), Status::kBlocker);
  const std::string d = detailOf(r, "connection headroom");
  EXPECT_NE(d.find("87 free"), std::string::npos) << d;
  EXPECT_NE(d.find("needed 88"), std::string::npos) << d;
  EXPECT_NE(d.find("80 source clients"), std::string::npos) << d;

  auto o = options();
  o.jobs = 1;  // needed 85
  EXPECT_EQ(statusOf(evaluate(s, t, o), "connection headroom"), Status::kOk);

  t.reservedConnections = 3;  // PostgreSQL 16's reserved_connections count too: 84 free
  EXPECT_EQ(statusOf(evaluate(s, t, o), "connection headroom"), Status::kBlocker);
}

TEST(CheckEvaluate, TwoPhaseCommitConfiguredWithoutPreparedTransactionsIsABlocker) {
  auto s = server("source");
  auto t = server("target");
  s.maxPreparedTransactions = 10;
  t.maxPreparedTransactions = 0;
  auto o = options();
  o.twoPhaseCommit = true;
  auto r = evaluate(s, t, o);
  EXPECT_FALSE(r.go());
  EXPECT_EQ(statusOf(r, "prepared transactions"), Status::kBlocker);

  o.twoPhaseCommit = false;  // not asked for: only a note
  r = evaluate(s, t, o);
  EXPECT_EQ(statusOf(r, "prepared transactions"), Status::kOk);
  EXPECT_NE(detailOf(r, "prepared transactions").find("not possible"), std::string::npos);

  t.maxPreparedTransactions = 10;
  o.twoPhaseCommit = true;
  EXPECT_EQ(statusOf(evaluate(s, t, o), "prepared transactions"), Status::kOk);
}

TEST(CheckEvaluate, NonEmptyTargetIsABlocker) {
  auto t = server("target");
  t.userObjectCount = 12;
  t.userObjects = {"table public.accounts", "table public.orders"};
  const auto r = evaluate(server("source"), t, options());
  EXPECT_FALSE(r.go());
  EXPECT_EQ(statusOf(r, "target is empty"), Status::kBlocker);
  const std::string d = detailOf(r, "target is empty");
  EXPECT_NE(d.find("refuses a target that already holds data"), std::string::npos) << d;
  EXPECT_NE(d.find("public.accounts"), std::string::npos) << d;
  EXPECT_NE(d.find("10 more"), std::string::npos) << d;
}

TEST(CheckEvaluate, TablesLargeObjectsUnloggedAndRolesAreWarnings) {
  auto s = server("source");
  s.tablesWithoutPrimaryKey = {"public.events", "audit.log"};
  s.largeObjects = 3;
  s.unloggedTables = {"public.cache"};
  s.referencedRoles.insert("app_owner");
  s.referencedRoles.insert("reporting");
  auto t = server("target");
  t.roles.insert("reporting");
  const auto r = evaluate(s, t, options());
  EXPECT_TRUE(r.go());
  EXPECT_EQ(statusOf(r, "tables without a primary key"), Status::kWarn);
  EXPECT_NE(detailOf(r, "tables without a primary key").find("public.events, audit.log"),
            std::string::npos);
  EXPECT_EQ(statusOf(r, "large objects"), Status::kWarn);
  EXPECT_EQ(statusOf(r, "unlogged tables"), Status::kWarn);
  EXPECT_EQ(statusOf(r, "roles"), Status::kWarn);
  EXPECT_NE(detailOf(r, "roles").find("app_owner"), std::string::npos);
  EXPECT_EQ(detailOf(r, "roles").find("reporting"), std::string::npos);
  EXPECT_EQ(r.count(Status::kWarn), 4u);
}

TEST(CheckEvaluate, MissingPrivilegesAreBlockers) {
  auto s = server("source");
  s.user = "reader";
  s.unreadableCount = 1;
  s.unreadable = {"secret.keys"};
  auto r = evaluate(s, server("target"), options());
  EXPECT_FALSE(r.go());
  EXPECT_EQ(statusOf(r, "source read privilege"), Status::kBlocker);
  EXPECT_NE(detailOf(r, "source read privilege").find("secret.keys"), std::string::npos);

  auto t = server("target");
  t.canCreateInDatabase = false;
  r = evaluate(server("source"), t, options());
  EXPECT_EQ(statusOf(r, "target create privilege"), Status::kBlocker);

  t = server("target");
  t.canCreateInPublic = false;
  s = server("source");
  s.usesPublicSchema = true;
  r = evaluate(s, t, options());
  EXPECT_EQ(statusOf(r, "target create privilege"), Status::kBlocker);
  s.usesPublicSchema = false;
  EXPECT_TRUE(evaluate(s, t, options()).go());
}

TEST(CheckVersions, ParsesServerAndToolVersions) {
  EXPECT_EQ(parseVersionNumber("15.4"), 150004);
  EXPECT_EQ(parseVersionNumber("9.6.24"), 90624);
  EXPECT_EQ(parseVersionNumber("16beta1"), 160000);
  EXPECT_EQ(parseVersionNumber("15.4 (Debian 15.4-1.pgdg120+1)"), 150004);
  EXPECT_EQ(parseVersionNumber("(PostgreSQL)"), std::nullopt);
  EXPECT_EQ(parseVersionNumber(""), std::nullopt);
  EXPECT_EQ(majorOf(150004), 15);
  EXPECT_EQ(majorOf(90624), 906);
  EXPECT_EQ(majorName(90624), "9.6");
  EXPECT_EQ(majorName(160002), "16");
  EXPECT_EQ(versionFromToolOutput("pg_dump (PostgreSQL) 15.4 (Debian 15.4-1.pgdg120+1)\n"), "15.4");
  EXPECT_EQ(versionFromToolOutput("pg_restore (PostgreSQL) 17devel\n"), "17devel");
  EXPECT_EQ(versionFromToolOutput("garbage\n"), std::nullopt);
}

TEST(CheckRender, JsonIsOneObjectWithTheReportsFields) {
  auto s = server("source");
  // Names with quotes, backslashes and a newline must survive the escaping.
  s.tablesWithoutPrimaryKey = {"public.\"we\"\"ird\\name\nx\""};
  auto t = server("target");
  t.userObjectCount = 1;
  t.userObjects = {"table public.t"};
  const auto r = evaluate(s, t, options());
  const std::string text = renderJson(r);
  boost::system::error_code ec;
  const json::value parsed = json::parse(text, ec);
  ASSERT_FALSE(ec) << text;
  ASSERT_TRUE(parsed.is_object()) << text;
  const json::object& o = parsed.as_object();

  const json::value* go = o.if_contains("go");
  ASSERT_NE(go, nullptr);
  ASSERT_TRUE(go->is_bool());
  EXPECT_FALSE(go->as_bool());

  const json::value* blockers = o.if_contains("blockers");
  ASSERT_NE(blockers, nullptr);
  ASSERT_TRUE(blockers->is_array());
  ASSERT_EQ(blockers->as_array().size(), 1u);
  ASSERT_TRUE(blockers->as_array()[0].is_string());
  EXPECT_EQ(std::string(blockers->as_array()[0].as_string()).rfind("target is empty: ", 0), 0u);

  const json::value* warnings = o.if_contains("warnings");
  ASSERT_NE(warnings, nullptr);
  ASSERT_TRUE(warnings->is_array());
  ASSERT_EQ(warnings->as_array().size(), 1u);
  EXPECT_NE(std::string(warnings->as_array()[0].as_string()).find("\"we\"\"ird\\name\nx\""),
            std::string::npos);

  const json::value* checks = o.if_contains("checks");
  ASSERT_NE(checks, nullptr);
  ASSERT_TRUE(checks->is_array());
  ASSERT_EQ(checks->as_array().size(), r.items.size());
  for (const auto& c : checks->as_array()) {
    ASSERT_TRUE(c.is_object());
    for (const char* key : {"name", "status", "detail"}) {
      ASSERT_NE(c.as_object().if_contains(key), nullptr) << key;
      EXPECT_TRUE(c.as_object().at(key).is_string()) << key;
    }
    const std::string st(c.as_object().at("status").as_string());
    EXPECT_TRUE(st == "ok" || st == "warn" || st == "blocker") << st;
  }

  for (const char* side : {"source", "target"}) {
    const json::value* v = o.if_contains(side);
    ASSERT_NE(v, nullptr) << side;
    ASSERT_TRUE(v->is_object());
    for (const char* key : {"version", "database", "size"}) {
      ASSERT_NE(v->as_object().if_contains(key), nullptr) << side << "." << key;
    }
  }
  EXPECT_EQ(o.at("source").at("size").as_string(), "1234 MB");
  EXPECT_EQ(o.at("target").at("version").as_string(), "15.4");
}

TEST(CheckRender, TextEndsWithGoOrTheNumberOfBlockers) {
  auto r = evaluate(server("source"), server("target"), options());
  std::string text = renderText(r);
  EXPECT_NE(text.find("\ngo\n"), std::string::npos) << text;
  EXPECT_NE(text.find("  OK      server versions: "), std::string::npos) << text;

  auto t = server("target");
  t.encoding = "LATIN1";
  t.userObjectCount = 1;
  t.collate = "C";
  r = evaluate(server("source"), t, options());
  text = renderText(r);
  EXPECT_NE(text.find("\n2 blockers (1 warning)\n"), std::string::npos) << text;
  EXPECT_NE(text.find("  BLOCKER encoding: "), std::string::npos) << text;
  EXPECT_NE(text.find("  WARN    collation: "), std::string::npos) << text;
}

}  // namespace
}  // namespace pghandoff::migrate::check
