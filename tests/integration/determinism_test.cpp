// The determinism suite (issue 3, SPEC §2 "same rows, same generated ids, same
// timestamps"): 16 sessions write concurrently through pghandoff in `mirror`
// into tables whose values each server would compute for itself — bigserial,
// identity and uuid defaults, created_at DEFAULT now(), updates setting
// now(), INSERT ... SELECT, ON CONFLICT DO UPDATE, DELETE ... RETURNING, a
// writable CTE, a trigger writing an audit row — then the phases move on to
// reverse-mirror and both databases are compared row by row: every table,
// every column, and the sequences' positions.

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <regex>

#include "tests/support/pg_cluster.h"
#include "tests/support/pq.h"
#include "tests/support/process.h"
#include "tests/support/proxy_process.h"

namespace pghandoff::test {
namespace {

constexpr int kSessions = 16;
constexpr int kRounds = 15;

constexpr const char* kSchema = R"sql(
CREATE TABLE big (id bigserial PRIMARY KEY, session int, n int,
  created_at timestamptz DEFAULT now(), updated_at timestamptz);
CREATE TABLE ident (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, session int, n int,
  noise float8);
CREATE TABLE uuids (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), session int, n int,
  at timestamptz DEFAULT now());
CREATE TABLE counters (session int, k int, hits int NOT NULL DEFAULT 0, last timestamptz,
  PRIMARY KEY (session, k));
CREATE TABLE archive (id bigserial PRIMARY KEY, big_id bigint, session int,
  archived_at timestamptz DEFAULT now());
CREATE TABLE audit (big_id bigint, op text, n int, PRIMARY KEY (big_id, op, n));
CREATE FUNCTION audit_big() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit (big_id, op, n) VALUES (NEW.id, TG_OP, NEW.n);
  RETURN NEW;
END $$;
CREATE TRIGGER big_audit AFTER INSERT OR UPDATE ON big FOR EACH ROW EXECUTE FUNCTION audit_big();
CREATE TABLE stamped (id int PRIMARY KEY, touched timestamptz);
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.touched := clock_timestamp();
  RETURN NEW;
END $$;
CREATE TRIGGER stamp BEFORE INSERT ON stamped FOR EACH ROW EXECUTE FUNCTION stamp();
)sql";

const char* const kTables[] = {"big", "ident", "uuids", "counters", "archive", "audit", "stamped"};
const char* const kSequences[] = {"big_id_seq", "ident_id_seq", "archive_id_seq"};

class Determinism : public ::testing::Test {
 protected:
  void SetUp() override {
    source_ = std::make_unique<PgCluster>();
    target_ = std::make_unique<PgCluster>();
    for (PgCluster* c : {source_.get(), target_.get()}) c->psql(kSchema);
    ProxyOptions o;
    o.sourceUrl = source_->url();
    o.targetUrl = target_->url();
    proxy_ = std::make_unique<ProxyProcess>(o);
  }
  void TearDown() override {
    if (HasFailure() && proxy_) proxy_->printLogTail();
    proxy_.reset();
  }
  void flip(const std::string& phase) {
    auto r = proxy_->http("POST", "/phase", R"({"phase":")" + phase + R"("})");
    ASSERT_EQ(r.status, 200) << r.body;
  }
  double metric(const std::string& m) {
    double v = proxy_->metric(m);
    return v != v ? 0.0 : v;
  }

  std::unique_ptr<PgCluster> source_, target_;
  std::unique_ptr<ProxyProcess> proxy_;
};

// One session's work: every kind of statement the suite names.
void workload(const std::string& url, int s, std::atomic<int>& errors, std::atomic<int>& refused,
              std::string& firstError) {
  PqConn c(url);
  if (!c.ok()) {
    ++errors;
    firstError = c.error();
    return;
  }
  auto check = [&](const PqResult& r, const char* what) {
    if (r.sqlstate.empty() && r.ok) return true;
    if (errors++ == 0) firstError = std::string(what) + ": " + r.error;
    return false;
  };
  const std::string ss = std::to_string(s);
  for (int i = 0; i < kRounds; ++i) {
    const std::string ii = std::to_string(i);
    auto r = c.exec("INSERT INTO big (session, n) VALUES (" + ss + ", " + ii + ") RETURNING id");
    if (!check(r, "insert big")) continue;
    const std::string id = r.value();
    check(c.execParams("INSERT INTO ident (session, n, noise) VALUES ($1, $2, random())", {ss, ii}),
          "insert ident");
    check(c.exec("INSERT INTO uuids (session, n) VALUES (" + ss + ", " + ii + "), (" + ss + ", " +
                 std::to_string(i + 1000) + ")"),
          "insert uuids");
    check(c.exec("UPDATE big SET updated_at = now(), n = n + 1000 WHERE id = " + id), "update big");
    check(c.exec("INSERT INTO counters VALUES (" + ss + ", " + std::to_string(i % 3) +
                 ", 1, now()) ON CONFLICT (session, k) DO UPDATE SET hits = counters.hits + 1, "
                 "last = now()"),
          "upsert counters");
    if (i % 5 == 4) {
      check(c.exec("BEGIN"), "begin");
      check(c.exec("INSERT INTO archive (big_id, session) SELECT id, session FROM big WHERE "
                   "session = " +
                   ss + " AND n >= 1000 ORDER BY id DESC LIMIT 2"),
            "insert select");
      check(c.exec("DELETE FROM uuids WHERE session = " + ss + " AND n >= 1000 RETURNING id, at"),
            "delete returning");
      check(c.exec("COMMIT"), "commit");
      check(c.exec("WITH gone AS (DELETE FROM big WHERE id = (SELECT min(id) FROM big WHERE "
                   "session = " +
                   ss +
                   ") RETURNING id, session) INSERT INTO archive (big_id, session) SELECT "
                   "id, session FROM gone"),
            "writable cte");
    }
    // A trigger computing clock time on each server: refused, nowhere written.
    auto st = c.exec("INSERT INTO stamped (id) VALUES (" + std::to_string(s * 1000 + i) + ")");
    if (st.sqlstate == "0A000" && st.error.find("trigger stamp") != std::string::npos) {
      ++refused;
    } else if (errors++ == 0) {
      firstError = "stamped: " + st.sqlstate + " " + st.error;
    }
  }
}

TEST_F(Determinism, SixteenSessionsLeaveBothDatabasesIdentical) {
  flip("mirror");
  std::atomic<int> errors{0}, refused{0};
  std::vector<std::string> firstErrors(kSessions);
  std::vector<std::thread> threads;
  for (int s = 0; s < kSessions; ++s) {
    threads.emplace_back([&, s] { workload(proxy_->url(), s, errors, refused, firstErrors[s]); });
  }
  for (auto& t : threads) t.join();
  std::string first;
  for (const auto& e : firstErrors) {
    if (!e.empty()) first = e;
  }
  EXPECT_EQ(errors.load(), 0) << first;
  EXPECT_EQ(refused.load(), kSessions * kRounds);
  EXPECT_EQ(metric("pghandoff_divergences_total"), 0.0);

  // Through the phases to reverse-mirror (the sequences move with authority).
  flip("mirror-read-target");
  flip("reverse-mirror");
  for (const char* t : kTables) {
    const std::string q = std::string(
                              "SELECT count(*) || ' ' || coalesce(md5(string_agg(x::text, "
                              "'|' ORDER BY x::text)), '-') FROM ") +
                          t + " x";
    EXPECT_EQ(source_->psql(q), target_->psql(q)) << t;
  }
  for (const char* s : kSequences) {
    const std::string q = std::string("SELECT last_value || '/' || is_called FROM ") + s;
    EXPECT_EQ(source_->psql(q), target_->psql(q)) << s;
  }
  // The workload did what it says (not an empty comparison).
  EXPECT_EQ(source_->psql("SELECT count(*) FROM ident"), std::to_string(kSessions * kRounds));
  EXPECT_EQ(source_->psql("SELECT count(DISTINCT created_at) > 1 FROM big"), "t");
  EXPECT_EQ(source_->psql("SELECT count(*) FROM audit WHERE op = 'UPDATE'"),
            std::to_string(kSessions * kRounds));
  EXPECT_EQ(source_->psql("SELECT count(*) FROM archive"),
            std::to_string(kSessions * (kRounds / 5) * 3));
  EXPECT_EQ(source_->psql("SELECT count(*) FROM stamped"), "0");
  EXPECT_EQ(source_->psql("SELECT last_value FROM big_id_seq"),
            std::to_string(kSessions * kRounds));
}

// "Migration under fire" (issue 3): both databases start identical; pgbench
// (TPC-B, -M prepared, 16 clients), a psycopg2 and a node-postgres workload
// (ids, timestamps and uuids from column defaults; autocommit, transactions,
// unnamed and named statements) write through pghandoff while the phases walk
// source-only -> mirror -> mirror-read-target -> reverse-mirror; zero client
// errors; every acknowledged row is on both servers; the databases are
// identical at reverse-mirror; then target-only. Each flip's pause is recorded.
TEST_F(Determinism, MigrationUnderFireWithPgbenchPsycopg2AndNodePostgres) {
  using namespace std::chrono_literals;
  const std::string bin = pgBinDir();
  for (PgCluster* c : {source_.get(), target_.get()}) {
    c->pgbenchInit();
    c->psql(
        "CREATE TABLE ledger (id bigserial PRIMARY KEY, client text, k int, amount numeric, note "
        "text, created_at timestamptz DEFAULT now(), u uuid DEFAULT gen_random_uuid())");
  }
  const std::string nodeDir = std::string(PGHANDOFF_SOURCE_DIR) + "/tests/clients/node";
  if (!std::filesystem::exists(nodeDir + "/node_modules/pg/package.json")) {
    const ProcessResult npm = run({"npm", "ci", "--prefix", nodeDir}, {}, 300s);
    ASSERT_EQ(npm.exitCode, 0) << npm.err;
  }
  std::map<std::string, std::string> env{{"PGHOST", "127.0.0.1"},
                                         {"PGPORT", std::to_string(proxy_->port())},
                                         {"PGUSER", "app"},
                                         {"PGPASSWORD", "app-secret"},
                                         {"PGDATABASE", "postgres"},
                                         {"PGSSLMODE", "disable"},
                                         {"PGHANDOFF_LEDGER_TABLE", "ledger"},
                                         {"PGHANDOFF_LEDGER_SECONDS", "6"}};
  env["PGHANDOFF_DSN"] = "host=127.0.0.1 port=" + env["PGPORT"] +
                         " user=app password=app-secret dbname=postgres sslmode=disable";
  auto pgbench = [&](std::vector<std::string> extra) {
    std::vector<std::string> argv{bin + "/pgbench", "-M", "prepared", "-n"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return run(argv, env, 60s);
  };
  ProcessResult readers, writers, py, node;
  std::thread readThread([&] { readers = pgbench({"-S", "-c", "2", "-T", "9"}); });
  std::this_thread::sleep_for(1000ms);
  flip("mirror");
  std::thread writeThread([&] { writers = pgbench({"-c", "16", "-j", "2", "-T", "6"}); });
  std::thread pyThread([&] {
    auto e = env;
    e["PGHANDOFF_LEDGER_CLIENT"] = "psycopg2";
    py = run({"/usr/bin/python3",
              std::string(PGHANDOFF_SOURCE_DIR) + "/tests/clients/psycopg2_client.py", "--scenario",
              "ledger", "--timeout", "60"},
             e, 70s);
  });
  std::thread nodeThread([&] {
    auto e = env;
    e["PGHANDOFF_LEDGER_CLIENT"] = "node";
    node = run({"node", nodeDir + "/client.js", "--scenario", "ledger", "--timeout", "60"}, e, 70s);
  });
  for (const char* p : {"mirror-read-target", "reverse-mirror"}) {
    std::this_thread::sleep_for(2000ms);
    flip(p);
  }
  writeThread.join();
  pyThread.join();
  nodeThread.join();
  readThread.join();
  EXPECT_EQ(writers.exitCode, 0) << writers.out << writers.err;
  EXPECT_NE(writers.out.find("number of failed transactions: 0"), std::string::npos) << writers.out;
  EXPECT_EQ(readers.exitCode, 0) << readers.out << readers.err;
  EXPECT_EQ(py.exitCode, 0) << py.out << py.err;
  EXPECT_EQ(node.exitCode, 0) << node.out << node.err;

  // Every acknowledged row, on both servers.
  const std::regex acked("ledger (\\w+): acked=(\\d+) keysum=(\\d+)");
  for (const ProcessResult* r : {&py, &node}) {
    std::smatch m;
    ASSERT_TRUE(std::regex_search(r->out, m, acked)) << r->out;
    const std::string q =
        "SELECT count(*) || ' ' || coalesce(sum(k), 0) FROM ledger WHERE client = '" + m[1].str() +
        "'";
    EXPECT_EQ(source_->psql(q), m[2].str() + " " + m[3].str()) << m[1];
    EXPECT_EQ(target_->psql(q), m[2].str() + " " + m[3].str()) << m[1];
  }
  // Identical at reverse-mirror: every row, every column, the timestamps too.
  for (const char* t :
       {"pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history", "ledger"}) {
    const std::string q = std::string(
                              "SELECT count(*) || ' ' || md5(string_agg(x::text, '|' "
                              "ORDER BY x::text)) FROM ") +
                          t + " x";
    EXPECT_EQ(source_->psql(q), target_->psql(q)) << t;
  }
  EXPECT_GT(std::stoi(source_->psql("SELECT count(*) FROM pgbench_history")), 100);
  // The sequence in use is the authoritative side's: the target's now, set
  // from the source's at the flip and gone on from there.
  EXPECT_EQ(target_->psql("SELECT last_value FROM ledger_id_seq"),
            target_->psql("SELECT max(id) FROM ledger"));
  flip("target-only");
  EXPECT_EQ(metric("pghandoff_phase_flip_pause_seconds_count"), 4.0);
  EXPECT_EQ(metric("pghandoff_divergences_total"), 0.0);
  EXPECT_EQ(metric("pghandoff_nondeterministic_rejected_total"), 0.0);
  // target-only: the target alone, its sequence going on from the source's.
  PqConn c(proxy_->url());
  ASSERT_TRUE(c.ok()) << c.error();
  const std::string next =
      c.execOrThrow("INSERT INTO ledger (client) VALUES ('after') RETURNING id").value();
  EXPECT_EQ(target_->psql("SELECT count(*) FROM ledger WHERE client = 'after' AND id = " + next),
            "1");
  EXPECT_EQ(source_->psql("SELECT count(*) FROM ledger WHERE client = 'after'"), "0");
}

// F26: the two servers have different defaults for how values are read and
// printed. A session that set nothing must still write the same instants and
// bytes on both, and read the same text after the reads move to the target.
TEST(SessionDefaults, DifferentServerDefaultsWriteAndReadTheSame) {
  PgCluster source;
  ClusterOptions o;
  o.extraConf = {"timezone = 'Asia/Tokyo'", "datestyle = 'SQL, DMY'",
                 "intervalstyle = 'postgres_verbose'", "extra_float_digits = 0",
                 "bytea_output = 'escape'"};
  PgCluster target(o);
  for (PgCluster* c : {&source, &target}) {
    c->psql(
        "CREATE TABLE v (id int PRIMARY KEY, at timestamptz, d date, f float8, b bytea, "
        "i interval)");
  }
  ProxyOptions po;
  po.sourceUrl = source.url();
  po.targetUrl = target.url();
  ProxyProcess proxy(po);
  PqConn c(proxy.url());
  ASSERT_TRUE(c.ok()) << c.error();
  auto r = proxy.http("POST", "/phase", R"({"phase":"mirror"})");
  ASSERT_EQ(r.status, 200) << r.body;
  c.execOrThrow(
      "INSERT INTO v VALUES (1, '2020-03-04 05:06:07', '03/04/2020', 0.1 + 0.2, "
      "'\\x01ff', '1 day 2 hours')");
  c.execParams(
      "INSERT INTO v VALUES (2, $1, $2, $3, $4, $5)",
      {"2021-01-02 03:04:05", "01/02/2021", "3.14159265358979", "\\xdeadbeef", "90 minutes"});
  const std::string q =
      "SELECT string_agg(id || '|' || at || '|' || d || '|' || f || '|' || b || '|' || i, ';' "
      "ORDER BY id) FROM v";
  const std::string read = c.execOrThrow(q).value();
  r = proxy.http("POST", "/phase", R"({"phase":"mirror-read-target"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(c.execOrThrow(q).value(), read);  // the same text from the target
  // The same values stored on both (compared in one fixed setting).
  const std::string fixed =
      "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET extra_float_digits = 3; "
      "SET bytea_output = 'hex'; SET IntervalStyle = 'postgres'; " +
      q;
  EXPECT_EQ(source.psql(fixed), target.psql(fixed));
}

}  // namespace
}  // namespace pghandoff::test
