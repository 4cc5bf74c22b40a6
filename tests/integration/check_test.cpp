// `pghandoff check` against real servers (SPEC §3): two throwaway PostgreSQL
// 15 clusters, the real binary with --json; each test uses databases of its
// own on the shared pair, so the tests are independent. What two clusters of
// one installation cannot show (an extension missing on the target, an older
// target) is covered by tests/unit/check_test.cpp.

#include <cctype>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include <boost/json/src.hpp>

#include "tests/support/pg_cluster.h"
#include "tests/support/process.h"
#include "tests/support/proxy_process.h"

namespace pghandoff::test {
namespace {

using namespace std::chrono_literals;
namespace json = boost::json;

struct CheckRun {
  ProcessResult process;
  json::value json;  // null unless stdout was one JSON document

  [[nodiscard]] const json::value* member(const std::string& key) const {
    return json.is_object() ? json.as_object().if_contains(key) : nullptr;
  }
  // The first check with that name; fails the test when there is none.
  [[nodiscard]] const json::object* item(const std::string& name) const {
    if (const json::value* checks = member("checks"); checks != nullptr && checks->is_array()) {
      for (const auto& c : checks->as_array()) {
        if (!c.is_object()) continue;
        const json::value* n = c.as_object().if_contains("name");
        if (n != nullptr && n->is_string() && n->as_string() == name) return &c.as_object();
      }
    }
    ADD_FAILURE() << "no check named " << name << "\n" << process.out << process.err;
    return nullptr;
  }
  [[nodiscard]] std::string field(const std::string& name, const char* key) const {
    const json::object* i = item(name);
    const json::value* v = i == nullptr ? nullptr : i->if_contains(key);
    return v == nullptr || !v->is_string() ? "" : std::string(v->as_string());
  }
  [[nodiscard]] std::string status(const std::string& name) const { return field(name, "status"); }
  [[nodiscard]] std::string detail(const std::string& name) const { return field(name, "detail"); }
  [[nodiscard]] std::vector<std::string> list(const std::string& key) const {
    std::vector<std::string> out;
    if (const json::value* a = member(key); a != nullptr && a->is_array()) {
      for (const auto& v : a->as_array()) {
        if (v.is_string()) out.emplace_back(v.as_string());
      }
    }
    return out;
  }
  // A string member of the object `side` ("source", "target").
  [[nodiscard]] std::string sideField(const std::string& side, const char* key) const {
    const json::value* o = member(side);
    const json::value* v =
        o == nullptr || !o->is_object() ? nullptr : o->as_object().if_contains(key);
    return v == nullptr || !v->is_string() ? "" : std::string(v->as_string());
  }
  [[nodiscard]] std::string why() const {
    return "exit " + std::to_string(process.exitCode) + "\nstdout:\n" + process.out +
           "\nstderr:\n" + process.err;
  }
};

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

bool anyContains(const std::vector<std::string>& lines, const std::string& needle) {
  for (const auto& l : lines) {
    if (contains(l, needle)) return true;
  }
  return false;
}

class CheckCommand : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    source_ = std::make_unique<PgCluster>();
    target_ = std::make_unique<PgCluster>();
  }
  static void TearDownTestSuite() {
    source_.reset();
    target_.reset();
  }

  // The same (empty) database on both servers.
  static void createBoth(const std::string& db) {
    source_->psql("CREATE DATABASE " + quoteIdent(db));
    target_->psql("CREATE DATABASE " + quoteIdent(db));
  }

  // A config for `check`: the proxy's required sections with harmless values.
  std::string writeConfig(const std::string& sourceUrl, const std::string& targetUrl,
                          const std::string& extraYaml = {}) {
    std::string y = "listen: \"127.0.0.1:0\"\nsource:\n  url: " + yamlQuote(sourceUrl) + "\n";
    if (!targetUrl.empty()) y += "target:\n  url: " + yamlQuote(targetUrl) + "\n";
    y += "client_tls:\n  mode: disable\n"
         "auth:\n  users:\n    - name: app\n      password: x\n"
         "admin:\n  listen: \"127.0.0.1:0\"\n  token: t\n"
         "state:\n  dir: " +
         yamlQuote(dir_.path() + "/state") + "\n" + extraYaml;
    std::string path = dir_.path() + "/pghandoff-" + std::to_string(++configs_) + ".yaml";
    writeFile(path, y, 0600);
    return path;
  }

  static CheckRun check(const std::string& config, std::vector<std::string> extraArgs = {}) {
    std::vector<std::string> argv = {PGHANDOFF_BINARY, "check", "--config", config, "--json"};
    argv.insert(argv.end(), extraArgs.begin(), extraArgs.end());
    CheckRun r;
    r.process = run(argv, {}, 120s);
    boost::system::error_code ec;
    r.json = json::parse(r.process.out, ec);
    if (ec) r.json = nullptr;
    return r;
  }

  // check of the database `db` on both servers, as the superuser.
  CheckRun checkDb(const std::string& db, const std::string& extraYaml = {},
                   std::vector<std::string> extraArgs = {}) {
    return check(writeConfig(source_->url(db), target_->url(db), extraYaml), std::move(extraArgs));
  }

  static std::unique_ptr<PgCluster> source_;
  static std::unique_ptr<PgCluster> target_;
  TempDir dir_{"pghandoff-check"};
  int configs_ = 0;
};

std::unique_ptr<PgCluster> CheckCommand::source_;
std::unique_ptr<PgCluster> CheckCommand::target_;

TEST_F(CheckCommand, IdenticalServersWithAnEmptyTargetAreAGo) {
  createBoth("ident");
  source_->psql("CREATE TABLE accounts (id int PRIMARY KEY, owner text)", "ident");
  const auto r = checkDb("ident");
  ASSERT_EQ(r.process.exitCode, 0) << r.why();
  ASSERT_TRUE(r.json.is_object()) << r.why();
  ASSERT_NE(r.member("go"), nullptr);
  EXPECT_TRUE(r.member("go")->as_bool());
  EXPECT_TRUE(r.list("blockers").empty()) << r.why();
  EXPECT_TRUE(r.list("warnings").empty()) << r.why();
  EXPECT_EQ(r.status("server versions"), "ok");
  EXPECT_EQ(r.status("pg_dump"), "ok") << r.detail("pg_dump");
  EXPECT_EQ(r.status("encoding"), "ok");
  EXPECT_EQ(r.status("target is empty"), "ok");
  EXPECT_EQ(r.status("connection headroom"), "ok") << r.detail("connection headroom");
  EXPECT_EQ(r.status("prepared transactions"), "ok");
  // \l+'s figures for both databases.
  const std::string size = source_->psql("SELECT pg_size_pretty(pg_database_size('ident'))");
  ASSERT_NE(r.member("source"), nullptr);
  EXPECT_EQ(r.sideField("source", "size"), size);
  EXPECT_EQ(r.sideField("source", "database"), "ident");
  EXPECT_EQ(r.sideField("target", "database"), "ident");
  EXPECT_TRUE(contains(r.sideField("target", "version"), "15"));

  // The same as text: one line per item and a final "go".
  ProcessResult text = run({PGHANDOFF_BINARY, "check", "--config",
                            writeConfig(source_->url("ident"), target_->url("ident"))},
                           {}, 120s);
  EXPECT_EQ(text.exitCode, 0) << text.err;
  EXPECT_TRUE(contains(text.out, "\n  OK      server versions: ")) << text.out;
  EXPECT_TRUE(text.out.ends_with("\ngo\n")) << text.out;
}

TEST_F(CheckCommand, ExtensionOnTheSourceOnlyIsReportedButNotABlocker) {
  if (target_->psql("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_trgm'") != "1") {
    GTEST_SKIP() << "pg_trgm (contrib) is not installed here";
  }
  createBoth("ext");
  source_->psql("CREATE EXTENSION pg_trgm", "ext");
  const auto r = checkDb("ext");
  ASSERT_EQ(r.process.exitCode, 0) << r.why();
  EXPECT_EQ(r.status("extension pg_trgm"), "ok");
  EXPECT_TRUE(contains(r.detail("extension pg_trgm"), "the restore creates it"))
      << r.detail("extension pg_trgm");
  EXPECT_FALSE(anyContains(r.list("blockers"), "pg_trgm"));
}

TEST_F(CheckCommand, DifferingSettingIsAWarningWithBothValues) {
  createBoth("settings");
  source_->psql("ALTER DATABASE settings SET DateStyle = 'SQL, DMY'");
  target_->psql("ALTER DATABASE settings SET default_statistics_target = 250");
  const auto r = checkDb("settings");
  ASSERT_EQ(r.process.exitCode, 0) << r.why();
  EXPECT_EQ(r.status("setting DateStyle"), "warn");
  EXPECT_TRUE(contains(r.detail("setting DateStyle"), "SQL, DMY"));
  EXPECT_TRUE(contains(r.detail("setting DateStyle"), "ISO, MDY"));
  EXPECT_EQ(r.status("setting default_statistics_target"), "warn");
  EXPECT_TRUE(contains(r.detail("setting default_statistics_target"), "'100' (default)"))
      << r.detail("setting default_statistics_target");
  EXPECT_TRUE(contains(r.detail("setting default_statistics_target"), "'250' (database)"))
      << r.detail("setting default_statistics_target");
  EXPECT_TRUE(anyContains(r.list("warnings"), "setting DateStyle: "));
  // The clusters' ports and directories differ, and are not worth a line.
  EXPECT_FALSE(anyContains(r.list("warnings"), "setting port")) << r.why();
  EXPECT_FALSE(anyContains(r.list("warnings"), "unix_socket_directories")) << r.why();
  EXPECT_EQ(r.list("warnings").size(), 2u) << r.why();
}

TEST_F(CheckCommand, TableWithoutAPrimaryKeyIsAWarningNamingIt) {
  createBoth("nopk");
  source_->psql(
      "CREATE TABLE events (at timestamptz, what text);"
      "CREATE TABLE keyed (id int PRIMARY KEY);"
      "CREATE SCHEMA audit; CREATE TABLE audit.\"Log\" (line text)",
      "nopk");
  const auto r = checkDb("nopk");
  ASSERT_EQ(r.process.exitCode, 0) << r.why();
  EXPECT_EQ(r.status("tables without a primary key"), "warn");
  const std::string d = r.detail("tables without a primary key");
  EXPECT_TRUE(contains(d, "public.events")) << d;
  EXPECT_TRUE(contains(d, "audit.\"Log\"")) << d;
  EXPECT_FALSE(contains(d, "keyed")) << d;
}

TEST_F(CheckCommand, LargeObjectsAndUnloggedTablesAreWarnings) {
  createBoth("lo");
  source_->psql("SELECT lo_create(0); CREATE UNLOGGED TABLE cache (k text PRIMARY KEY)", "lo");
  const auto r = checkDb("lo");
  ASSERT_EQ(r.process.exitCode, 0) << r.why();
  EXPECT_EQ(r.status("large objects"), "warn");
  EXPECT_TRUE(contains(r.detail("large objects"), "1 large object")) << r.detail("large objects");
  EXPECT_EQ(r.status("unlogged tables"), "warn");
  EXPECT_TRUE(contains(r.detail("unlogged tables"), "public.cache"));
}

TEST_F(CheckCommand, NonEmptyTargetIsABlocker) {
  createBoth("full");
  target_->psql("CREATE TABLE leftover (id int PRIMARY KEY); INSERT INTO leftover VALUES (1)",
                "full");
  const auto r = checkDb("full");
  ASSERT_EQ(r.process.exitCode, 1) << r.why();
  ASSERT_TRUE(r.json.is_object());
  ASSERT_NE(r.member("go"), nullptr);
  EXPECT_FALSE(r.member("go")->as_bool());
  EXPECT_EQ(r.status("target is empty"), "blocker");
  EXPECT_TRUE(anyContains(r.list("blockers"), "refuses a target that already holds data"));
  EXPECT_TRUE(anyContains(r.list("blockers"), "public.leftover")) << r.why();
  EXPECT_EQ(r.list("blockers").size(), 1u) << r.why();
}

TEST_F(CheckCommand, TwoPhaseCommitWithoutPreparedTransactionsIsABlocker) {
  createBoth("twophase");
  ASSERT_EQ(source_->psql("SHOW max_prepared_transactions"), "0");
  auto r = checkDb("twophase", "mirror:\n  two_phase_commit: true\n");
  ASSERT_EQ(r.process.exitCode, 1) << r.why();
  EXPECT_EQ(r.status("prepared transactions"), "blocker");
  EXPECT_TRUE(anyContains(r.list("blockers"), "two_phase_commit"));

  r = checkDb("twophase");  // not configured: a note only
  ASSERT_EQ(r.process.exitCode, 0) << r.why();
  EXPECT_TRUE(contains(r.detail("prepared transactions"), "not possible"));
}

TEST_F(CheckCommand, NotEnoughConnectionsOnTheTargetIsABlocker) {
  createBoth("headroom");
  // 100 max_connections - 3 reserved cannot take 500 seed jobs.
  const auto r = checkDb("headroom", {}, {"--jobs", "500"});
  ASSERT_EQ(r.process.exitCode, 1) << r.why();
  EXPECT_EQ(r.status("connection headroom"), "blocker");
  EXPECT_TRUE(contains(r.detail("connection headroom"), "500 seed jobs"))
      << r.detail("connection headroom");
}

TEST_F(CheckCommand, RolesOwningSourceObjectsAndMissingOnTheTargetAreListed) {
  createBoth("roles");
  source_->psql("CREATE ROLE check_owner_role; CREATE ROLE check_reader_role");
  source_->psql(
      "CREATE TABLE owned (id int PRIMARY KEY);"
      "ALTER TABLE owned OWNER TO check_owner_role;"
      "CREATE TABLE shared (id int PRIMARY KEY);"
      "GRANT SELECT ON shared TO check_reader_role",
      "roles");
  const auto r = checkDb("roles");
  ASSERT_EQ(r.process.exitCode, 0) << r.why();
  EXPECT_EQ(r.status("roles"), "warn");
  const std::string d = r.detail("roles");
  EXPECT_TRUE(contains(d, "check_owner_role")) << d;
  EXPECT_TRUE(contains(d, "check_reader_role")) << d;
  EXPECT_FALSE(contains(d, "postgres")) << d;  // exists on both
}

TEST_F(CheckCommand, MissingPrivilegesAreBlockers) {
  createBoth("privs");
  source_->createRole("check_dumper", "dumper-pw");
  target_->createRole("check_loader", "loader-pw");
  source_->psql(
      "CREATE TABLE secret (id int PRIMARY KEY); CREATE TABLE open (id int PRIMARY KEY);"
      "GRANT SELECT ON open TO check_dumper",
      "privs");
  const auto r = check(writeConfig(source_->url("privs", "check_dumper", "dumper-pw"),
                                   target_->url("privs", "check_loader", "loader-pw")));
  ASSERT_EQ(r.process.exitCode, 1) << r.why();
  EXPECT_EQ(r.status("source read privilege"), "blocker");
  EXPECT_TRUE(contains(r.detail("source read privilege"), "public.secret"));
  EXPECT_FALSE(contains(r.detail("source read privilege"), "public.open"));
  EXPECT_EQ(r.status("target create privilege"), "blocker");
  EXPECT_TRUE(contains(r.detail("target create privilege"), "check_loader"));
}

TEST_F(CheckCommand, UnreachableTargetExitsTwoNamingItWithoutThePassword) {
  const std::string password = "hunter2-" + randomHex(12);
  const std::string closed = "postgresql://postgres:" + password +
                             "@127.0.0.1:" + std::to_string(freePort()) +
                             "/postgres?sslmode=disable";
  const auto r = check(writeConfig(source_->url(), closed));
  EXPECT_EQ(r.process.exitCode, 2) << r.why();
  EXPECT_TRUE(contains(r.process.err, "target")) << r.why();
  EXPECT_TRUE(contains(r.process.err, "127.0.0.1")) << r.why();
  for (const std::string& secret : {password, source_->superPassword()}) {
    EXPECT_FALSE(contains(r.process.out, secret)) << r.why();
    EXPECT_FALSE(contains(r.process.err, secret)) << r.why();
  }
}

TEST_F(CheckCommand, WrongPasswordExitsTwoWithoutThePassword) {
  const std::string password = "wrong-" + randomHex(12);
  const auto r = check(writeConfig(source_->url("postgres", "postgres", password), target_->url()));
  EXPECT_EQ(r.process.exitCode, 2) << r.why();
  EXPECT_TRUE(contains(r.process.err, "source")) << r.why();
  EXPECT_FALSE(contains(r.process.err + r.process.out, password)) << r.why();
}

TEST_F(CheckCommand, ConfigWithoutATargetExitsTwo) {
  const auto r = check(writeConfig(source_->url(), ""));
  EXPECT_EQ(r.process.exitCode, 2) << r.why();
  EXPECT_TRUE(contains(r.process.err, "target.url")) << r.why();
  EXPECT_TRUE(r.process.out.empty()) << r.why();
}

}  // namespace
}  // namespace pghandoff::test
