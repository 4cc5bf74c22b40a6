// Real clients through the proxy in phase source-only: psql, pgbench (every
// -M mode), psycopg2, node-postgres, JDBC, pg_dump/pg_restore, and libpq
// features that stress the relay (LISTEN/NOTIFY, CancelRequest, startup
// options and ParameterStatus, pipeline mode, large COPY and DataRow streams).
//
// One PostgreSQL 15 server (the source) and one proxy in front of it serve
// every test of this file (SPEC.md §8 "Compatibility").
//
// RELIABILITY.md rows touched: B14 (startup `options` forwarded after auth,
// identically), B22 (CancelRequest with an unknown key: no reply, no effect),
// F19/G7 (a 50 MB DataRow and a 100 MB COPY stream keep the proxy's RSS
// bounded), F20 (only the intended query is cancelled), F26 (ParameterStatus
// equal to a direct connection's).

#include <arpa/inet.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/support/pg_cluster.h"
#include "tests/support/pq.h"
#include "tests/support/process.h"
#include "tests/support/proxy_process.h"

namespace pghandoff::test {
namespace {

using Clock = std::chrono::steady_clock;
using Env = std::map<std::string, std::string>;

constexpr const char* kDb = "itdb";
constexpr const char* kUser = "app";
constexpr const char* kPassword = "app-secret";
constexpr const char* kQueryCount = "pghandoff_query_duration_seconds_count{side=\"source\"}";
constexpr const char* kCancelForwarded = "pghandoff_cancel_requests_total{result=\"forwarded\"}";
constexpr const char* kCancelUnknown = "pghandoff_cancel_requests_total{result=\"unknown\"}";

std::string tool(const std::string& name) {
  return pgBinDir() + "/" + name;
}

// Everything a process needs to say on failure, but never its environment
// (which holds passwords).
std::string describe(const ProcessResult& r) {
  std::ostringstream s;
  s << "exit " << r.exitCode << (r.timedOut ? " (timed out)" : "") << "\n--- stdout (tail):\n"
    << (r.out.size() > 6000 ? r.out.substr(r.out.size() - 6000) : r.out) << "\n--- stderr (tail):\n"
    << (r.err.size() > 6000 ? r.err.substr(r.err.size() - 6000) : r.err);
  return s.str();
}

// Where two byte strings first differ, for a readable failure message.
std::string firstDifference(const std::string& a, const std::string& b) {
  std::size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  const std::size_t from = i < 80 ? 0 : i - 80;
  return "sizes " + std::to_string(a.size()) + " vs " + std::to_string(b.size()) +
         ", first difference at byte " + std::to_string(i) + ":\n<<<" + a.substr(from, 200) +
         ">>>\n<<<" + b.substr(from, 200) + ">>>";
}

struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using Result = std::unique_ptr<PGresult, ResultDeleter>;

std::string sqlstateOf(const PGresult* r) {
  const char* s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  return s == nullptr ? "" : s;
}

// Reads input until PQisBusy() is false (the next PQgetResult will not
// block) or the deadline passes. A broken connection counts as "not busy":
// PQgetResult then reports it.
bool waitNotBusy(PGconn* c, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    if (PQconsumeInput(c) == 0 || PQisBusy(c) == 0) return true;
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return false;
    pollfd p{PQsocket(c), POLLIN, 0};
    (void)::poll(&p, 1, static_cast<int>(std::min<long>(left.count(), 200)));
  }
}

// PQgetResult with a deadline instead of an unbounded block. timedOut is set
// when the result did not come in time.
Result nextResult(PGconn* c, bool& timedOut, std::chrono::milliseconds timeout = 20s) {
  timedOut = !waitNotBusy(c, timeout);
  if (timedOut) return nullptr;
  return Result(PQgetResult(c));
}

// "VmHWM" / "VmRSS" of a process, in KiB (-1 if unreadable).
long procStatusKib(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::atol(line.c_str() + key.size() + 1);
  }
  return -1;
}

// Resets the peak RSS (VmHWM) of pid to its current RSS (proc(5),
// clear_refs "5"), so that a later VmHWM is the peak of what ran since.
bool resetPeakRss(pid_t pid) {
  std::ofstream out("/proc/" + std::to_string(pid) + "/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

class ClientsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ = std::make_unique<PgCluster>();
    cluster_->psql(std::string("CREATE DATABASE ") + kDb);
    ProxyOptions o;
    o.sourceUrl = cluster_->url(kDb);
    o.tlsMode = "disable";
    o.authMethod = "scram-sha-256";
    o.users = {{kUser, kPassword}};
    o.logLevel = "info";  // 100 MB streams at debug level would only fill the log
    proxy_ = std::make_unique<ProxyProcess>(o);
    dir_ = std::make_unique<TempDir>("pghandoff-clients");
  }
  static void TearDownTestSuite() {
    proxy_.reset();
    cluster_.reset();
    dir_.reset();
  }

  void TearDown() override {
    if (!proxy_) return;
    // A proxy that died (crash, sanitizer abort) fails the test that saw
    // it, with its exit code, instead of only failing every later test.
    if (!proxy_->running()) {
      ADD_FAILURE() << "the proxy exited with code " << proxy_->waitExit(0ms);
    }
    if (HasFailure()) {
      std::cerr << "--- proxy log (tail):\n" << tailFile(proxy_->logFile(), 3000) << "\n";
    }
  }

  // libpq environment for a tool going through the proxy.
  static Env proxyEnv() {
    return {{"PGHOST", "127.0.0.1"},     {"PGPORT", std::to_string(proxy_->port())},
            {"PGUSER", kUser},           {"PGPASSWORD", kPassword},
            {"PGDATABASE", kDb},         {"PGSSLMODE", "disable"},
            {"PGCONNECT_TIMEOUT", "10"}, {"PGAPPNAME", "pghandoff-clients-test"}};
  }
  // ... and straight to the source, as its superuser.
  static Env directEnv(const std::string& db = kDb) {
    return {{"PGHOST", "127.0.0.1"},
            {"PGPORT", std::to_string(cluster_->port())},
            {"PGUSER", cluster_->superuser()},
            {"PGPASSWORD", cluster_->superPassword()},
            {"PGDATABASE", db},
            {"PGSSLMODE", "disable"},
            {"PGCONNECT_TIMEOUT", "10"},
            {"PGAPPNAME", "pghandoff-clients-test"}};
  }
  static std::string proxyConninfo(const std::string& extra = {}) {
    return "host=127.0.0.1 port=" + std::to_string(proxy_->port()) + " dbname=" + kDb +
           " user=" + kUser + " password=" + kPassword + " sslmode=disable connect_timeout=10" +
           (extra.empty() ? "" : " " + extra);
  }
  static std::string directConninfo(const std::string& extra = {}) {
    return "host=127.0.0.1 port=" + std::to_string(cluster_->port()) + " dbname=" + kDb +
           " user=" + cluster_->superuser() +
           " password=" + quoteLiteral(cluster_->superPassword()) +
           " sslmode=disable connect_timeout=10" + (extra.empty() ? "" : " " + extra);
  }
  // One SQL value straight from the source.
  static std::string sourceValue(const std::string& sql, const std::string& db = kDb) {
    return cluster_->psql(sql, db);
  }
  static ProcessResult psqlThroughProxy(const std::vector<std::string>& args,
                                        std::chrono::milliseconds timeout = 60s) {
    std::vector<std::string> argv = {tool("psql"), "-X", "-A", "-t", "-q"};
    argv.insert(argv.end(), args.begin(), args.end());
    return run(argv, proxyEnv(), timeout);
  }

  static std::unique_ptr<PgCluster> cluster_;
  static std::unique_ptr<ProxyProcess> proxy_;
  static std::unique_ptr<TempDir> dir_;
};
std::unique_ptr<PgCluster> ClientsTest::cluster_;
std::unique_ptr<ProxyProcess> ClientsTest::proxy_;
std::unique_ptr<TempDir> ClientsTest::dir_;

// ---- 1. psql ------------------------------------------------------------------

TEST_F(ClientsTest, PsqlMultiStatementScriptsErrorsCopyAndRepeatedQuery) {
  // Two statements in one Query message: psql 15 prints every result.
  ProcessResult r = psqlThroughProxy({"-c", "SELECT 1; SELECT 2;"});
  ASSERT_EQ(r.exitCode, 0) << describe(r);
  EXPECT_EQ(r.out, "1\n2\n");
  EXPECT_EQ(r.err, "");

  // A script file with a transaction.
  const std::string txScript = dir_->path() + "/tx.sql";
  writeFile(txScript,
            "DROP TABLE IF EXISTS psql_tx;\n"
            "CREATE TABLE psql_tx (id int PRIMARY KEY, v text);\n"
            "BEGIN;\n"
            "INSERT INTO psql_tx VALUES (1, 'a'), (2, 'b'), (3, 'x');\n"
            "UPDATE psql_tx SET v = 'c' WHERE id = 2;\n"
            "DELETE FROM psql_tx WHERE id = 3;\n"
            "SELECT txid_current_if_assigned() IS NOT NULL;\n"
            "COMMIT;\n"
            "SELECT id, v FROM psql_tx ORDER BY id;\n");
  r = psqlThroughProxy({"-v", "ON_ERROR_STOP=1", "-f", txScript});
  ASSERT_EQ(r.exitCode, 0) << describe(r);
  EXPECT_EQ(r.out, "t\n1|a\n2|c\n");
  EXPECT_EQ(sourceValue("SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM psql_tx"),
            "1=a,2=c");

  // An error in the middle: with ON_ERROR_STOP=0 psql goes on, and so does
  // the session behind the proxy (a failed transaction is rolled back, the
  // statements after it run).
  const std::string errScript = dir_->path() + "/err.sql";
  writeFile(errScript,
            "\\set VERBOSITY verbose\n"
            "SELECT 'before';\n"
            "SELECT 1/0;\n"
            "SELECT 'after';\n"
            "BEGIN;\n"
            "INSERT INTO psql_tx VALUES (10, 'rolled back');\n"
            "SELECT * FROM no_such_table;\n"
            "SELECT 'in aborted transaction';\n"
            "ROLLBACK;\n"
            "INSERT INTO psql_tx VALUES (11, 'kept');\n"
            "SELECT count(*) FROM psql_tx;\n");
  r = psqlThroughProxy({"-v", "ON_ERROR_STOP=0", "-f", errScript});
  EXPECT_EQ(r.exitCode, 0) << describe(r);
  EXPECT_EQ(r.out, "before\nafter\n3\n");
  EXPECT_NE(r.err.find("ERROR:  22012: division by zero"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("ERROR:  42P01: relation \"no_such_table\" does not exist"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("ERROR:  25P02: current transaction is aborted"), std::string::npos)
      << r.err;
  EXPECT_EQ(sourceValue("SELECT string_agg(id::text, ',' ORDER BY id) FROM psql_tx"), "1,2,11");

  // \copy FROM a 10,000-row file (COPY FROM STDIN through the proxy), then
  // \copy TO a file (COPY TO STDOUT): the two files are byte-identical.
  std::string data;
  for (int i = 1; i <= 10000; ++i) {
    data += std::to_string(i) + "\t";
    if (i % 97 == 0) {
      data += "\\N";
    } else {
      data += "row " + std::to_string(i) + " caf\xc3\xa9 \\\\ back\\tslash";
    }
    data += "\t" + std::to_string(i * 7 % 1000) + "." + std::to_string(i % 10) + "\n";
  }
  const std::string in = dir_->path() + "/copy_in.tsv";
  const std::string out = dir_->path() + "/copy_out.tsv";
  writeFile(in, data);
  r = psqlThroughProxy({"-v", "ON_ERROR_STOP=1", "-c",
                        "DROP TABLE IF EXISTS psql_copy; "
                        "CREATE TABLE psql_copy (id int PRIMARY KEY, t text, n numeric)"});
  ASSERT_EQ(r.exitCode, 0) << describe(r);
  r = run({tool("psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c",
           "\\copy psql_copy FROM '" + in + "'"},
          proxyEnv(), 60s);
  ASSERT_EQ(r.exitCode, 0) << describe(r);
  EXPECT_EQ(r.out, "COPY 10000\n");
  EXPECT_EQ(sourceValue("SELECT count(*), count(t), sum(id) FROM psql_copy"),
            "10000|9897|50005000");
  r = run({tool("psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c",
           "\\copy psql_copy TO '" + out + "'"},
          proxyEnv(), 60s);
  ASSERT_EQ(r.exitCode, 0) << describe(r);
  EXPECT_EQ(r.out, "COPY 10000\n");
  const std::string back = readFile(out);
  EXPECT_TRUE(back == data) << firstDifference(data, back);

  // The same SELECT 200 times in one session (what \watch would do without
  // a terminal): every answer arrives, in order, none lost or repeated.
  const std::string watchScript = dir_->path() + "/watch.sql";
  std::string script = "DROP SEQUENCE IF EXISTS psql_watch_seq;\nCREATE SEQUENCE psql_watch_seq;\n";
  for (int i = 0; i < 200; ++i) {
    script += "SELECT nextval('psql_watch_seq'), count(*), sum(id) FROM psql_copy;\n";
  }
  writeFile(watchScript, script);
  r = psqlThroughProxy({"-v", "ON_ERROR_STOP=1", "-f", watchScript});
  ASSERT_EQ(r.exitCode, 0) << describe(r);
  std::string want;
  for (int i = 1; i <= 200; ++i) want += std::to_string(i) + "|10000|50005000\n";
  EXPECT_TRUE(r.out == want) << firstDifference(want, r.out);
}

// ---- 2. pgbench ---------------------------------------------------------------

TEST_F(ClientsTest, PgbenchInitAndEveryQueryMode) {
  ProcessResult r = run({tool("pgbench"), "-i", "-s", "1"}, proxyEnv(), 120s);
  ASSERT_EQ(r.exitCode, 0) << describe(r);
  EXPECT_NE(r.err.find("done in"), std::string::npos) << describe(r);
  // -i loads pgbench_accounts with COPY FROM STDIN through the proxy.
  EXPECT_EQ(sourceValue("SELECT count(*), sum(aid) FROM pgbench_accounts"), "100000|5000050000");
  EXPECT_EQ(sourceValue("SELECT count(*) FROM pgbench_branches"), "1");
  EXPECT_EQ(sourceValue("SELECT count(*) FROM pgbench_tellers"), "10");
  EXPECT_EQ(sourceValue("SELECT count(*) FROM pgbench_history"), "0");

  const std::regex processedRe("number of transactions actually processed: (\\d+)");
  const std::regex failedRe("number of failed transactions: (\\d+)");
  long total = 0;
  for (const std::string mode : {"simple", "extended", "prepared"}) {
    SCOPED_TRACE("-M " + mode);
    const double before = proxy_->metric(kQueryCount);
    // -n: no vacuum before the run, because it also truncates pgbench_history.
    r = run({tool("pgbench"), "-n", "-T", "3", "-c", "4", "-j", "2", "-M", mode}, proxyEnv(), 60s);
    ASSERT_EQ(r.exitCode, 0) << describe(r);
    std::smatch m;
    ASSERT_TRUE(std::regex_search(r.out, m, processedRe)) << describe(r);
    const long processed = std::stol(m[1]);
    ASSERT_TRUE(std::regex_search(r.out, m, failedRe)) << describe(r);
    EXPECT_EQ(std::stol(m[1]), 0) << describe(r);
    EXPECT_GT(processed, 0);
    total += processed;
    const double after = proxy_->metric(kQueryCount);
    // tpcb-like: 7 round trips per transaction (BEGIN, 3 UPDATEs, SELECT,
    // INSERT, END), each one ReadyForQuery; plus pgbench's own set-up.
    EXPECT_GE(after - before, 7.0 * static_cast<double>(processed))
        << "before " << before << " after " << after << " processed " << processed;
    std::cout << "[ pgbench  ] -M " << mode << ": " << processed << " transactions, "
              << (after - before) << " timed round trips\n";
  }
  // Every transaction pgbench counted committed exactly one history row,
  // and no other did.
  EXPECT_EQ(sourceValue("SELECT count(*) FROM pgbench_history"), std::to_string(total));
  // The bank-style invariant of tpcb-like: the same delta went everywhere.
  EXPECT_EQ(sourceValue("SELECT (SELECT sum(abalance) FROM pgbench_accounts) = "
                        "(SELECT sum(bbalance) FROM pgbench_branches) AND "
                        "(SELECT sum(tbalance) FROM pgbench_tellers) = "
                        "(SELECT sum(delta) FROM pgbench_history)"),
            "t");
}

// ---- 3. psycopg2 --------------------------------------------------------------

TEST_F(ClientsTest, Psycopg2Scenarios) {
  const std::string script =
      std::string(PGHANDOFF_SOURCE_DIR) + "/tests/clients/psycopg2_client.py";
  Env env = proxyEnv();
  env["PGHANDOFF_DSN"] = "host=127.0.0.1 port=" + std::to_string(proxy_->port()) +
                         " user=" + kUser + " password=" + kPassword + " dbname=" + kDb +
                         " sslmode=disable";
  for (const std::string scenario : {"basic", "copy", "notify", "cancel", "large"}) {
    SCOPED_TRACE("psycopg2 " + scenario);
    const ProcessResult r = run({"/usr/bin/python3", script, "--scenario", scenario, "--prefix",
                                 "itc_py_" + scenario, "--timeout", "100"},
                                env, 110s);
    EXPECT_EQ(r.exitCode, 0) << describe(r);
    EXPECT_NE(r.out.find("PASS psycopg2 " + scenario + ": "), std::string::npos) << describe(r);
    EXPECT_NE(r.out.find(" checks ok, 0 failed"), std::string::npos) << describe(r);
  }
}

// ---- 4. node-postgres -----------------------------------------------------------

TEST_F(ClientsTest, NodePostgresScenarios) {
  const std::string nodeDir = std::string(PGHANDOFF_SOURCE_DIR) + "/tests/clients/node";
  if (!std::filesystem::exists(nodeDir + "/node_modules/pg/package.json")) {
    // scripts/install-deps.sh normally did this already.
    const ProcessResult npm = run({"npm", "ci", "--prefix", nodeDir}, {}, 300s);
    ASSERT_EQ(npm.exitCode, 0) << describe(npm);
  }
  for (const std::string scenario : {"basic", "pipeline", "prepared", "errors", "transaction"}) {
    SCOPED_TRACE("node " + scenario);
    const ProcessResult r = run({"node", nodeDir + "/client.js", "--scenario", scenario, "--prefix",
                                 "itc_node_" + scenario, "--timeout", "100"},
                                proxyEnv(), 110s);
    EXPECT_EQ(r.exitCode, 0) << describe(r);
    EXPECT_NE(r.out.find("PASS node " + scenario + ": "), std::string::npos) << describe(r);
    EXPECT_NE(r.out.find(" checks ok, 0 failed"), std::string::npos) << describe(r);
  }
}

// ---- 5. JDBC ---------------------------------------------------------------------

TEST_F(ClientsTest, JdbcScenarios) {
  const std::string jar = "/usr/share/java/postgresql.jar";
  const std::string classes = dir_->path() + "/jdbc-classes";
  std::filesystem::create_directories(classes);
  const ProcessResult javac =
      run({"javac", "-cp", jar, "-d", classes,
           std::string(PGHANDOFF_SOURCE_DIR) + "/tests/clients/jdbc/PgHandoffJdbcClient.java"},
          {}, 120s);
  ASSERT_EQ(javac.exitCode, 0) << describe(javac);

  const std::string base = "jdbc:postgresql://127.0.0.1:" + std::to_string(proxy_->port()) + "/" +
                           kDb + "?sslmode=disable";
  struct Case {
    std::string scenario;
    std::string urlSuffix;
    std::string prefix;
  };
  const std::vector<Case> cases = {
      {"basic", "", "itc_jdbc_basic"},
      {"batch", "", "itc_jdbc_batch"},
      {"batch", "&reWriteBatchedInserts=true", "itc_jdbc_batchrw"},
      {"prepared", "&prepareThreshold=1", "itc_jdbc_prep"},
      {"transaction", "", "itc_jdbc_tx"},
      {"metadata", "", "itc_jdbc_meta"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE("jdbc " + c.scenario + c.urlSuffix);
    const ProcessResult r = run({"java", "-cp", classes + ":" + jar, "PgHandoffJdbcClient",
                                 base + c.urlSuffix, kUser, kPassword, c.scenario, c.prefix},
                                {{"PGHANDOFF_CLIENT_TIMEOUT", "100"}}, 110s);
    EXPECT_EQ(r.exitCode, 0) << describe(r);
    EXPECT_NE(r.out.find("PASS jdbc " + c.scenario + ": "), std::string::npos) << describe(r);
    EXPECT_NE(r.out.find(" checks ok, 0 failed"), std::string::npos) << describe(r);
  }
}

// ---- 6. pg_dump / pg_restore --------------------------------------------------------

TEST_F(ClientsTest, PgDumpThroughProxyEqualsDirectDump) {
  sourceValue(
      "DROP SCHEMA IF EXISTS dumpt CASCADE;"
      "CREATE SCHEMA dumpt;"
      "CREATE SEQUENCE dumpt.counter START 100 INCREMENT 5;"
      "SELECT nextval('dumpt.counter') FROM generate_series(1, 3);"
      "CREATE TABLE dumpt.customers (id serial PRIMARY KEY, name text NOT NULL, "
      "  email text UNIQUE, created date, note text);"
      "CREATE TABLE dumpt.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
      "  customer_id int NOT NULL REFERENCES dumpt.customers(id), amount numeric(12,2), "
      "  tags text[], data jsonb, blob bytea, placed timestamptz);"
      "CREATE TABLE dumpt.empty_t (k int, v text);"
      "CREATE INDEX orders_customer_idx ON dumpt.orders (customer_id, amount DESC);"
      "CREATE VIEW dumpt.customer_totals AS SELECT c.id, c.name, sum(o.amount) AS total "
      "  FROM dumpt.customers c LEFT JOIN dumpt.orders o ON o.customer_id = c.id "
      "  GROUP BY c.id, c.name;"
      "COMMENT ON TABLE dumpt.orders IS 'orders, one per line';"
      "INSERT INTO dumpt.customers (name, email, created, note) "
      "  SELECT 'name ' || i, 'user' || i || '@example.com', date '2020-01-01' + i, "
      "  CASE WHEN i % 7 = 0 THEN NULL ELSE E'tab\\there \\u00fc ' || i END "
      "  FROM generate_series(1, 2000) i;"
      "INSERT INTO dumpt.orders (customer_id, amount, tags, data, blob, placed) "
      "  SELECT 1 + i % 2000, (i * 1.37)::numeric(12,2), ARRAY['a' || i, 'b'], "
      "  jsonb_build_object('i', i, 's', 'x' || i), decode(md5(i::text), 'hex'), "
      "  timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute' "
      "  FROM generate_series(1, 5000) i;"
      "SELECT 1");

  const std::string proxyDump = dir_->path() + "/proxy.dump";
  const std::string directDump = dir_->path() + "/direct.dump";
  ProcessResult r = run({tool("pg_dump"), "-Fc", "-n", "dumpt", "-f", proxyDump}, proxyEnv(), 120s);
  ASSERT_EQ(r.exitCode, 0) << describe(r);
  r = run({tool("pg_dump"), "-Fc", "-n", "dumpt", "-f", directDump}, directEnv(), 120s);
  ASSERT_EQ(r.exitCode, 0) << describe(r);

  // The custom archives carry their creation time, so compare them by what
  // they contain: as SQL scripts they are byte-identical ... given the same
  // psql \restrict key: pg_dump 15.14+ (CVE-2025-8714) draws a random one
  // per script unless --restrict-key names it.
  const std::string key = "--restrict-key=pghandoffClientsTest";
  const ProcessResult proxyScript = run({tool("pg_restore"), key, "-f", "-", proxyDump}, {}, 60s);
  const ProcessResult directScript = run({tool("pg_restore"), key, "-f", "-", directDump}, {}, 60s);
  ASSERT_EQ(proxyScript.exitCode, 0) << describe(proxyScript);
  ASSERT_EQ(directScript.exitCode, 0) << describe(directScript);
  EXPECT_GT(proxyScript.out.size(), 500000U);
  EXPECT_TRUE(proxyScript.out == directScript.out)
      << firstDifference(proxyScript.out, directScript.out);

  // ... and restored into two fresh databases they hold the same rows.
  for (const std::string db : {"restore_proxy", "restore_direct"}) {
    sourceValue("DROP DATABASE IF EXISTS " + db, "postgres");
    sourceValue("CREATE DATABASE " + db, "postgres");
    r = run({tool("pg_restore"), "--exit-on-error", "-d", db,
             db == "restore_proxy" ? proxyDump : directDump},
            directEnv(db), 120s);
    ASSERT_EQ(r.exitCode, 0) << db << ": " << describe(r);
  }
  const std::vector<std::pair<std::string, std::string>> checks = {
      {"customers",
       "SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY t.id)) "
       "FROM dumpt.customers t"},
      {"orders",
       "SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY t.id)) "
       "FROM dumpt.orders t"},
      {"empty_t",
       "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',')), '-') "
       "FROM dumpt.empty_t t"},
      {"view",
       "SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY t.id)) "
       "FROM dumpt.customer_totals t"},
      {"sequences",
       "SELECT (SELECT last_value || '/' || is_called FROM dumpt.counter) || ' ' || "
       "(SELECT last_value || '/' || is_called FROM dumpt.customers_id_seq) || ' ' || "
       "(SELECT last_value || '/' || is_called FROM dumpt.orders_id_seq)"},
      {"index", "SELECT indexdef FROM pg_indexes WHERE indexname = 'orders_customer_idx'"},
      {"comment", "SELECT obj_description('dumpt.orders'::regclass, 'pg_class')"},
  };
  for (const auto& [name, sql] : checks) {
    const std::string want = sourceValue(sql);
    EXPECT_EQ(sourceValue(sql, "restore_proxy"), want) << name;
    EXPECT_EQ(sourceValue(sql, "restore_direct"), want) << name;
  }
  EXPECT_EQ(sourceValue("SELECT count(*) FROM dumpt.orders"), "5000");
  EXPECT_EQ(sourceValue("SELECT last_value FROM dumpt.counter"), "110");

  // Plain-text dumps: no timestamps in them, so with the same \restrict key
  // they are byte-identical.
  const ProcessResult plainProxy = run({tool("pg_dump"), key, "-n", "dumpt"}, proxyEnv(), 120s);
  const ProcessResult plainDirect = run({tool("pg_dump"), key, "-n", "dumpt"}, directEnv(), 120s);
  ASSERT_EQ(plainProxy.exitCode, 0) << describe(plainProxy);
  ASSERT_EQ(plainDirect.exitCode, 0) << describe(plainDirect);
  EXPECT_NE(plainProxy.out.find("COPY dumpt.orders (id, customer_id, amount, tags, data, blob, "
                                "placed) FROM stdin;"),
            std::string::npos);
  EXPECT_TRUE(plainProxy.out == plainDirect.out)
      << firstDifference(plainProxy.out, plainDirect.out);
  EXPECT_TRUE(plainProxy.out == proxyScript.out)
      << "plain dump vs custom archive as script: "
      << firstDifference(plainProxy.out, proxyScript.out);

  EXPECT_NE(plainProxy.out.find("\n\\restrict pghandoffClientsTest\n"), std::string::npos);
  EXPECT_NE(plainProxy.out.find("\n\\unrestrict pghandoffClientsTest\n"), std::string::npos);

  // Without --restrict-key the two dumps differ in their random \restrict
  // and \unrestrict lines only.
  const ProcessResult randomProxy = run({tool("pg_dump"), "-n", "dumpt"}, proxyEnv(), 120s);
  ASSERT_EQ(randomProxy.exitCode, 0) << describe(randomProxy);
  const std::regex restrictLines(R"re(\n\\(un)?restrict [A-Za-z0-9]+\n)re");
  EXPECT_NE(randomProxy.out, plainProxy.out);
  EXPECT_EQ(std::regex_replace(randomProxy.out, restrictLines, "\n--\n"),
            std::regex_replace(plainDirect.out, restrictLines, "\n--\n"));

  for (const std::string db : {"restore_proxy", "restore_direct"}) {
    sourceValue("DROP DATABASE " + db, "postgres");
  }
}

// ---- 7. LISTEN / NOTIFY ---------------------------------------------------------------

TEST_F(ClientsTest, ListenNotifyBetweenTwoProxiedSessions) {
  PqConn listener(proxyConninfo());
  PqConn notifier(proxyConninfo());
  ASSERT_TRUE(listener.ok()) << listener.error();
  ASSERT_TRUE(notifier.ok()) << notifier.error();
  ASSERT_TRUE(listener.exec("LISTEN \"Chan One\"").ok);
  ASSERT_TRUE(listener.exec("LISTEN chan_two").ok);
  const std::string notifierPid = notifier.execOrThrow("SELECT pg_backend_pid()").value();

  // One notification on its own, then three in one transaction (delivered at
  // commit, in order), with a payload holding quotes and non-ASCII text.
  ASSERT_TRUE(notifier.exec("NOTIFY \"Chan One\", 'first payload'").ok);
  ASSERT_TRUE(notifier
                  .exec("BEGIN; SELECT pg_notify('chan_two', 'it''s caf\xc3\xa9 #1'); "
                        "NOTIFY \"Chan One\"; SELECT pg_notify('chan_two', repeat('z', 7000)); "
                        "COMMIT")
                  .ok);

  struct Note {
    std::string channel;
    std::string payload;
    int pid;
  };
  std::vector<Note> got;
  PGconn* c = listener.raw();
  const bool all = waitFor(
      [&] {
        if (PQconsumeInput(c) == 0) return true;  // broken: checked below
        while (PGnotify* n = PQnotifies(c)) {
          got.push_back({n->relname, n->extra, n->be_pid});
          PQfreemem(n);
        }
        return got.size() >= 4;
      },
      5s, 5ms);
  ASSERT_TRUE(all) << "got " << got.size() << " notifications: " << PQerrorMessage(c);
  ASSERT_EQ(got.size(), 4U);
  EXPECT_EQ(got[0].channel, "Chan One");
  EXPECT_EQ(got[0].payload, "first payload");
  EXPECT_EQ(got[1].channel, "chan_two");
  EXPECT_EQ(got[1].payload, "it's caf\xc3\xa9 #1");
  EXPECT_EQ(got[2].channel, "Chan One");
  EXPECT_EQ(got[2].payload, "");
  EXPECT_EQ(got[3].channel, "chan_two");
  EXPECT_EQ(got[3].payload, std::string(7000, 'z'));
  for (const Note& n : got) {
    // NotificationResponse carries the server's backend pid of the sender,
    // and the proxy hands each client that same pid in BackendKeyData, so a
    // client can recognise (and skip) its own notifications.
    EXPECT_EQ(std::to_string(n.pid), notifierPid);
    EXPECT_EQ(n.pid, PQbackendPID(notifier.raw()));
  }
  // Nothing more arrived, and after UNLISTEN nothing arrives.
  ASSERT_TRUE(listener.exec("UNLISTEN *").ok);
  ASSERT_TRUE(notifier.exec("NOTIFY chan_two, 'unheard'").ok);
  ASSERT_EQ(listener.execOrThrow("SELECT 'sync'").value(), "sync");
  PQconsumeInput(c);
  PGnotify* extra = PQnotifies(c);
  EXPECT_EQ(extra, nullptr) << (extra != nullptr ? extra->extra : "");
  if (extra != nullptr) PQfreemem(extra);
}

// ---- 8. CancelRequest --------------------------------------------------------------------

// Waits until the source shows `query` running on backend pid.
bool waitForActive(PgCluster& cluster, const std::string& pid, std::chrono::milliseconds timeout) {
  return waitFor(
      [&] {
        return cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE pid = " + pid +
                            " AND state = 'active' AND query LIKE 'SELECT pg_sleep%'") == "1";
      },
      timeout, 50ms);
}

TEST_F(ClientsTest, CancelRequestEndsTheRunningQuery) {
  PqConn conn(proxyConninfo());
  ASSERT_TRUE(conn.ok()) << conn.error();
  const std::string serverPid = conn.execOrThrow("SELECT pg_backend_pid()").value();
  PGcancel* cancel = PQgetCancel(conn.raw());
  ASSERT_NE(cancel, nullptr);
  const double forwardedBefore = proxy_->metric(kCancelForwarded);
  const double unknownBefore = proxy_->metric(kCancelUnknown);

  ASSERT_EQ(PQsendQuery(conn.raw(), "SELECT pg_sleep(30)"), 1);
  ASSERT_TRUE(waitForActive(*cluster_, serverPid, 10s));

  const auto t0 = Clock::now();
  int cancelOk = 0;
  char errbuf[256] = {};
  std::thread canceller([&] { cancelOk = PQcancel(cancel, errbuf, sizeof(errbuf)); });
  canceller.join();
  PQfreeCancel(cancel);
  EXPECT_EQ(cancelOk, 1) << errbuf;

  bool timedOut = false;
  Result res = nextResult(conn.raw(), timedOut, 5s);
  ASSERT_FALSE(timedOut) << "the query did not end within 5 s of the cancel";
  EXPECT_LT(Clock::now() - t0, 5s);
  ASSERT_NE(res, nullptr);
  EXPECT_EQ(PQresultStatus(res.get()), PGRES_FATAL_ERROR);
  EXPECT_EQ(sqlstateOf(res.get()), "57014");
  EXPECT_STREQ(PQresultErrorField(res.get(), PG_DIAG_MESSAGE_PRIMARY),
               "canceling statement due to user request");
  res = nextResult(conn.raw(), timedOut, 5s);
  EXPECT_EQ(res, nullptr);

  // The session goes on, on the same server backend.
  EXPECT_EQ(conn.execOrThrow("SELECT pg_backend_pid()").value(), serverPid);
  EXPECT_EQ(conn.execOrThrow("SELECT 'still usable'").value(), "still usable");
  EXPECT_EQ(proxy_->metric(kCancelForwarded) - forwardedBefore, 1.0);
  EXPECT_EQ(proxy_->metric(kCancelUnknown) - unknownBefore, 0.0);
}

TEST_F(ClientsTest, CancelRequestWithWrongKeyHasNoEffect) {
  PqConn conn(proxyConninfo());
  ASSERT_TRUE(conn.ok()) << conn.error();
  const std::string serverPid = conn.execOrThrow("SELECT pg_backend_pid()").value();
  const double forwardedBefore = proxy_->metric(kCancelForwarded);
  const double unknownBefore = proxy_->metric(kCancelUnknown);

  ASSERT_EQ(PQsendQuery(conn.raw(), "SELECT pg_sleep(30)"), 1);
  ASSERT_TRUE(waitForActive(*cluster_, serverPid, 10s));

  // CancelRequest: Int32 16, Int32 80877102, Int32 pid, Int32 key. The pid
  // is the one the proxy gave this client (BackendKeyData); the key is not.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(proxy_->port());
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  std::uint32_t packet[4] = {htonl(16), htonl(80877102),
                             htonl(static_cast<std::uint32_t>(PQbackendPID(conn.raw()))),
                             htonl(0x5eedf00d)};
  ASSERT_EQ(::send(fd, packet, sizeof(packet), MSG_NOSIGNAL), 16);
  pollfd p{fd, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1) << "the proxy did not close the cancel connection in 5 s";
  char buf[64];
  const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
  ::close(fd);
  EXPECT_EQ(n, 0) << "expected a close without a reply";

  // The query is still running on the server, and the client still waits.
  EXPECT_EQ(cluster_->psql("SELECT count(*) FROM pg_stat_activity WHERE pid = " + serverPid +
                           " AND state = 'active' AND query = 'SELECT pg_sleep(30)'"),
            "1");
  ASSERT_EQ(PQconsumeInput(conn.raw()), 1);
  EXPECT_EQ(PQisBusy(conn.raw()), 1);
  EXPECT_EQ(proxy_->metric(kCancelUnknown) - unknownBefore, 1.0);
  EXPECT_EQ(proxy_->metric(kCancelForwarded) - forwardedBefore, 0.0);

  // End it with the right key, so the test does not wait 30 s.
  PGcancel* cancel = PQgetCancel(conn.raw());
  char errbuf[256] = {};
  EXPECT_EQ(PQcancel(cancel, errbuf, sizeof(errbuf)), 1) << errbuf;
  PQfreeCancel(cancel);
  bool timedOut = false;
  Result res = nextResult(conn.raw(), timedOut, 5s);
  ASSERT_FALSE(timedOut);
  ASSERT_NE(res, nullptr);
  EXPECT_EQ(sqlstateOf(res.get()), "57014");
  res = nextResult(conn.raw(), timedOut, 5s);
  EXPECT_EQ(res, nullptr);
  EXPECT_EQ(conn.execOrThrow("SELECT 1").value(), "1");
}

// ---- 9. Startup parameters and ParameterStatus ------------------------------------------------

TEST_F(ClientsTest, StartupOptionsAndParameterStatusMatchDirectConnection) {
  const std::string extra =
      "application_name=itest options='-c search_path=myschema,public -c "
      "statement_timeout=1234'";
  PqConn viaProxy(proxyConninfo(extra));
  ASSERT_TRUE(viaProxy.ok()) << viaProxy.error();
  PqConn direct(directConninfo(extra));
  ASSERT_TRUE(direct.ok()) << direct.error();

  EXPECT_EQ(viaProxy.execOrThrow("SHOW search_path").value(), "myschema,public");
  EXPECT_EQ(viaProxy.execOrThrow("SHOW statement_timeout").value(), "1234ms");
  EXPECT_EQ(viaProxy.execOrThrow("SHOW application_name").value(), "itest");
  const std::string serverPid = viaProxy.execOrThrow("SELECT pg_backend_pid()").value();
  EXPECT_EQ(
      cluster_->psql("SELECT application_name FROM pg_stat_activity WHERE pid = " + serverPid),
      "itest");
  // The same as a direct connection with the same parameters.
  EXPECT_EQ(direct.execOrThrow("SHOW search_path").value(), "myschema,public");
  EXPECT_EQ(direct.execOrThrow("SHOW statement_timeout").value(), "1234ms");
  // A statement_timeout of 1234 ms really applies through the proxy.
  const PqResult slow = viaProxy.exec("SELECT pg_sleep(5)");
  EXPECT_EQ(slow.sqlstate, "57014");
  EXPECT_EQ(slow.error, "canceling statement due to statement timeout");

  for (const char* name :
       {"server_version", "client_encoding", "DateStyle", "TimeZone", "integer_datetimes",
        "standard_conforming_strings", "application_name", "server_encoding", "IntervalStyle",
        "is_superuser", "session_authorization"}) {
    const char* p = PQparameterStatus(viaProxy.raw(), name);
    const char* d = PQparameterStatus(direct.raw(), name);
    ASSERT_NE(d, nullptr) << name;
    ASSERT_NE(p, nullptr) << name << " not reported through the proxy";
    EXPECT_STREQ(p, d) << name;
  }
  EXPECT_STREQ(PQparameterStatus(viaProxy.raw(), "application_name"), "itest");
  EXPECT_STREQ(PQparameterStatus(viaProxy.raw(), "server_version"),
               PQparameterStatus(direct.raw(), "server_version"));
  EXPECT_EQ(PQserverVersion(viaProxy.raw()), PQserverVersion(direct.raw()));
  EXPECT_GE(PQserverVersion(viaProxy.raw()), 150000);
  // A SET that changes a reported parameter is reported through the proxy.
  ASSERT_TRUE(viaProxy.exec("SET application_name = 'renamed'").ok);
  EXPECT_STREQ(PQparameterStatus(viaProxy.raw(), "application_name"), "renamed");
}

// ---- 10. Pipeline mode
// ----------------------------------------------------------------------------

TEST_F(ClientsTest, PipelineModeErrorAbortsOnlyItsSegment) {
  PqConn conn(proxyConninfo());
  ASSERT_TRUE(conn.ok()) << conn.error();
  PGconn* c = conn.raw();
  ASSERT_EQ(PQenterPipelineMode(c), 1);

  constexpr int kFirst = 100;
  constexpr int kFailing = 50;
  constexpr int kSecond = 10;
  auto send = [&](const char* sql, int value) {
    const std::string v = std::to_string(value);
    const char* values[1] = {v.c_str()};
    return PQsendQueryParams(c, sql, 1, nullptr, values, nullptr, nullptr, 0);
  };
  for (int i = 0; i < kFirst; ++i) {
    const char* sql = i == kFailing ? "SELECT $1::int / 0" : "SELECT $1::int * 2";
    ASSERT_EQ(send(sql, i), 1) << PQerrorMessage(c);
  }
  ASSERT_EQ(PQpipelineSync(c), 1);
  for (int i = 0; i < kSecond; ++i) {
    ASSERT_EQ(send("SELECT $1::int + 1000", i), 1) << PQerrorMessage(c);
  }
  ASSERT_EQ(PQpipelineSync(c), 1);

  bool timedOut = false;
  int ok = 0, failed = 0, aborted = 0;
  for (int i = 0; i < kFirst; ++i) {
    Result r = nextResult(c, timedOut);
    ASSERT_FALSE(timedOut) << "query " << i;
    ASSERT_NE(r, nullptr) << "query " << i;
    const ExecStatusType st = PQresultStatus(r.get());
    if (i < kFailing) {
      ASSERT_EQ(st, PGRES_TUPLES_OK) << "query " << i << ": " << PQresultErrorMessage(r.get());
      ASSERT_EQ(PQntuples(r.get()), 1);
      EXPECT_EQ(std::string(PQgetvalue(r.get(), 0, 0)), std::to_string(i * 2));
      ++ok;
    } else if (i == kFailing) {
      ASSERT_EQ(st, PGRES_FATAL_ERROR) << "query " << i;
      EXPECT_EQ(sqlstateOf(r.get()), "22012");
      ++failed;
    } else {
      ASSERT_EQ(st, PGRES_PIPELINE_ABORTED) << "query " << i;
      ++aborted;
    }
    Result end = nextResult(c, timedOut);
    ASSERT_FALSE(timedOut);
    ASSERT_EQ(end, nullptr) << "query " << i << ": " << PQresStatus(PQresultStatus(end.get()));
  }
  Result sync = nextResult(c, timedOut);
  ASSERT_FALSE(timedOut);
  ASSERT_NE(sync, nullptr);
  EXPECT_EQ(PQresultStatus(sync.get()), PGRES_PIPELINE_SYNC);
  EXPECT_EQ(ok, kFailing);
  EXPECT_EQ(failed, 1);
  EXPECT_EQ(aborted, kFirst - kFailing - 1);

  // The segment after the next Sync runs normally.
  for (int i = 0; i < kSecond; ++i) {
    Result r = nextResult(c, timedOut);
    ASSERT_FALSE(timedOut);
    ASSERT_NE(r, nullptr);
    ASSERT_EQ(PQresultStatus(r.get()), PGRES_TUPLES_OK) << PQresultErrorMessage(r.get());
    EXPECT_EQ(std::string(PQgetvalue(r.get(), 0, 0)), std::to_string(i + 1000));
    Result end = nextResult(c, timedOut);
    ASSERT_EQ(end, nullptr);
  }
  sync = nextResult(c, timedOut);
  ASSERT_FALSE(timedOut);
  ASSERT_NE(sync, nullptr);
  EXPECT_EQ(PQresultStatus(sync.get()), PGRES_PIPELINE_SYNC);
  EXPECT_EQ(PQexitPipelineMode(c), 1) << PQerrorMessage(c);
  EXPECT_EQ(conn.execOrThrow("SELECT 'after pipeline'").value(), "after pipeline");
}

// ---- 11. Large streams
// ---------------------------------------------------------------------------

TEST_F(ClientsTest, LargeCopyOutAndLargeValueStreamWithBoundedProxyMemory) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // A sanitizer's shadow memory and quarantine dwarf the proxy's own buffers: the
  // bound is only meaningful in builds without it (the release run checks it).
  constexpr long kLimitKib = 4L * 1024 * 1024;
#else
  constexpr long kLimitKib = 64 * 1024;
#endif
  const pid_t pid = proxy_->pid();
  ASSERT_GT(pid, 0);
  PqConn conn(proxyConninfo());
  ASSERT_TRUE(conn.ok()) << conn.error();
  PGconn* c = conn.raw();
  const bool reset = resetPeakRss(pid);
  const long rssBefore = procStatusKib(pid, "VmRSS");

  // 100,000 rows of 1000 'x' and a newline: 100,100,000 bytes of CopyData.
  ASSERT_EQ(PQsendQuery(c,
                        "COPY (SELECT repeat('x', 1000) FROM generate_series(1, 100000)) "
                        "TO STDOUT"),
            1);
  bool timedOut = false;
  Result r = nextResult(c, timedOut, 30s);
  ASSERT_FALSE(timedOut);
  ASSERT_NE(r, nullptr);
  ASSERT_EQ(PQresultStatus(r.get()), PGRES_COPY_OUT) << PQresultErrorMessage(r.get());
  long long bytes = 0;
  long rows = 0;
  bool rowsOk = true;
  const auto deadline = Clock::now() + 60s;
  while (true) {
    char* buf = nullptr;
    const int n = PQgetCopyData(c, &buf, 1);
    if (n > 0) {
      bytes += n;
      ++rows;
      rowsOk = rowsOk && n == 1001 && buf[1000] == '\n' && buf[0] == 'x' && buf[999] == 'x';
      PQfreemem(buf);
    } else if (n == 0) {
      ASSERT_LT(Clock::now(), deadline) << "COPY stream stalled after " << bytes << " bytes";
      pollfd p{PQsocket(c), POLLIN, 0};
      (void)::poll(&p, 1, 200);
      ASSERT_EQ(PQconsumeInput(c), 1) << PQerrorMessage(c);
    } else {
      ASSERT_EQ(n, -1) << PQerrorMessage(c);
      break;
    }
  }
  EXPECT_EQ(bytes, 100100000LL);
  EXPECT_EQ(rows, 100000);
  EXPECT_TRUE(rowsOk);
  r = nextResult(c, timedOut, 10s);
  ASSERT_FALSE(timedOut);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(PQresultStatus(r.get()), PGRES_COMMAND_OK) << PQresultErrorMessage(r.get());
  EXPECT_STREQ(PQcmdStatus(r.get()), "COPY 100000");
  r = nextResult(c, timedOut, 10s);
  EXPECT_EQ(r, nullptr);
  const long hwmCopy = procStatusKib(pid, "VmHWM");
  std::cout << "[ memory   ] proxy RSS before " << rssBefore << " KiB, peak during the 100 MB COPY "
            << hwmCopy << " KiB" << (reset ? "" : " (peak not reset: since start)") << "\n";
  EXPECT_GT(hwmCopy, 0);
  EXPECT_LT(hwmCopy, kLimitKib);

  // One 50 MiB DataRow: below limits.max_message_bytes (64 MiB), so relayed
  // in pieces as it arrives, never held whole by the proxy.
  (void)resetPeakRss(pid);
  ASSERT_EQ(PQsendQuery(c, "SELECT repeat('a', 50*1024*1024)"), 1);
  r = nextResult(c, timedOut, 60s);
  ASSERT_FALSE(timedOut);
  ASSERT_NE(r, nullptr);
  ASSERT_EQ(PQresultStatus(r.get()), PGRES_TUPLES_OK) << PQresultErrorMessage(r.get());
  ASSERT_EQ(PQntuples(r.get()), 1);
  const int len = PQgetlength(r.get(), 0, 0);
  EXPECT_EQ(len, 50 * 1024 * 1024);
  const char* v = PQgetvalue(r.get(), 0, 0);
  EXPECT_TRUE(std::all_of(v, v + len, [](char ch) { return ch == 'a'; }));
  r.reset();
  r = nextResult(c, timedOut, 10s);
  EXPECT_EQ(r, nullptr);
  const long hwmValue = procStatusKib(pid, "VmHWM");
  std::cout << "[ memory   ] proxy peak RSS during the 50 MiB value " << hwmValue << " KiB\n";
  EXPECT_GT(hwmValue, 0);
  EXPECT_LT(hwmValue, kLimitKib);
  EXPECT_EQ(conn.execOrThrow("SELECT 'after'").value(), "after");
}

}  // namespace
}  // namespace pghandoff::test
