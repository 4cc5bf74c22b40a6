// Proves the integration-test support library works: processes, throwaway
// PostgreSQL clusters (plain, TLS-only, md5), libpq helpers, the HTTP client
// and metrics parser, and (once the binary has it) the proxy runner.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include <gtest/gtest.h>
#include <libpq-fe.h>

#include "tests/support/certs.h"
#include "tests/support/pg_cluster.h"
#include "tests/support/pq.h"
#include "tests/support/process.h"
#include "tests/support/proxy_process.h"

namespace pghandoff::test {
namespace {

using Clock = std::chrono::steady_clock;

// A process counts as gone once it no longer exists or is a zombie (nobody
// may reap orphans in a container).
bool pidGone(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) {
    return true;
  }
  const auto close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] == 'Z';
}

// ---- run() / Process ---------------------------------------------------------

TEST(Run, CapturesStdoutStderrAndExitCode) {
  const ProcessResult r = run({"sh", "-c", "echo out; echo err >&2; exit 3"});
  EXPECT_EQ(r.exitCode, 3);
  EXPECT_EQ(r.out, "out\n");
  EXPECT_EQ(r.err, "err\n");
  EXPECT_FALSE(r.timedOut);
}

TEST(Run, FeedsStdinAndPassesEnvironment) {
  const ProcessResult r = run({"sh", "-c", "cat; echo \"$PGH_TEST_VAR\""},
                              {{"PGH_TEST_VAR", "value with spaces"}}, 10s, "from stdin\n");
  EXPECT_EQ(r.exitCode, 0);
  EXPECT_EQ(r.out, "from stdin\nvalue with spaces\n");
}

TEST(Run, LargeOutputOnBothPipesDoesNotDeadlock) {
  // Far beyond the 64 KiB pipe buffer on both streams at once, while stdin is
  // also being written.
  const std::string input(300000, 'x');
  const ProcessResult r =
      run({"sh", "-c", "head -c 1000000 /dev/zero; head -c 700000 /dev/zero >&2; wc -c"}, {}, 20s,
          input);
  EXPECT_EQ(r.exitCode, 0);
  EXPECT_EQ(r.out.size(), 1000000U + std::string("300000\n").size());
  EXPECT_EQ(r.out.substr(1000000), "300000\n");
  EXPECT_EQ(r.err.size(), 700000U);
}

TEST(Run, TimeoutKillsTheWholeProcessGroup) {
  const auto t0 = Clock::now();
  // The shell prints its background child's pid, then waits forever.
  const ProcessResult r = run({"sh", "-c", "sleep 60 & echo $!; wait"}, {}, 300ms);
  const auto elapsed = Clock::now() - t0;
  EXPECT_TRUE(r.timedOut);
  EXPECT_EQ(r.exitCode, 128 + SIGKILL);
  EXPECT_GE(elapsed, 300ms);
  EXPECT_LT(elapsed, 5s);
  const int grandchild = std::atoi(r.out.c_str());
  ASSERT_GT(grandchild, 0) << r.out;
  EXPECT_TRUE(waitFor([&] { return pidGone(grandchild); }, 5s));
}

TEST(Run, MissingProgramExits127) {
  const ProcessResult r = run({"/nonexistent/pghandoff-no-such-program"});
  EXPECT_EQ(r.exitCode, 127);
  EXPECT_NE(r.err.find("exec failed"), std::string::npos);
}

TEST(Run, SignalledChildReports128PlusSignal) {
  const ProcessResult r = run({"sh", "-c", "kill -TERM $$"});
  EXPECT_EQ(r.exitCode, 128 + SIGTERM);
  EXPECT_FALSE(r.timedOut);
}

TEST(ProcessTest, StartSignalWaitAndLog) {
  TempDir dir;
  const std::string logFile = dir.path() + "/child.log";
  Process p;
  p.start({"sh", "-c", "echo started; echo \"$PGH_X\" >&2; exec sleep 60"}, {{"PGH_X", "envok"}},
          logFile);
  EXPECT_GT(p.pid(), 0);
  EXPECT_TRUE(p.running());
  ASSERT_TRUE(waitFor([&] { return tailFile(logFile) == "started\nenvok\n"; }, 5s))
      << tailFile(logFile);
  EXPECT_EQ(p.wait(50ms), Process::kStillRunning);
  EXPECT_TRUE(p.signal(SIGTERM));
  EXPECT_EQ(p.wait(5s), 128 + SIGTERM);
  EXPECT_FALSE(p.running());
  EXPECT_EQ(p.wait(0ms), 128 + SIGTERM);
  EXPECT_FALSE(p.signal(SIGTERM));
}

TEST(ProcessTest, TerminateEscalatesToSigkill) {
  TempDir dir;
  const std::string logFile = dir.path() + "/child.log";
  Process p;
  p.start({"sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"}, {}, logFile);
  // "ready" comes after the trap is installed.
  ASSERT_TRUE(waitFor([&] { return tailFile(logFile) == "ready\n"; }, 5s));
  const auto t0 = Clock::now();
  EXPECT_EQ(p.terminate(300ms), 128 + SIGKILL);
  EXPECT_LT(Clock::now() - t0, 5s);
  EXPECT_FALSE(p.running());
}

TEST(ProcessTest, ExitCodeOfNormalExit) {
  Process p;
  p.start({"sh", "-c", "exit 7"});
  EXPECT_EQ(p.wait(5s), 7);
  EXPECT_EQ(p.exitCode(), 7);
}

TEST(Helpers, WaitForHonoursDeadline) {
  int calls = 0;
  EXPECT_TRUE(waitFor([&] { return ++calls == 3; }, 5s, 1ms));
  EXPECT_EQ(calls, 3);
  const auto t0 = Clock::now();
  EXPECT_FALSE(waitFor([] { return false; }, 100ms, 10ms));
  const auto elapsed = Clock::now() - t0;
  EXPECT_GE(elapsed, 100ms);
  EXPECT_LT(elapsed, 2s);
}

TEST(Helpers, FreePortIsBindable) {
  const uint16_t port = freePort();
  ASSERT_GT(port, 0);
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ::close(fd);
}

TEST(Helpers, TempDirIsRemoved) {
  std::string path;
  {
    TempDir d("pghandoff-support-test");
    path = d.path();
    writeFile(path + "/f", "x");
    EXPECT_TRUE(std::filesystem::exists(path + "/f"));
    EXPECT_EQ(path.rfind(tempRoot() + "/pghandoff-support-test-", 0), 0U);
  }
  EXPECT_FALSE(std::filesystem::exists(path));
}

// ---- metrics parser, HTTP client ---------------------------------------------

TEST(Metrics, FindsExactSamplesRegardlessOfLabelOrder) {
  const std::string text =
      "# HELP pghandoff_queries_total Queries.\n"
      "# TYPE pghandoff_queries_total counter\n"
      "pghandoff_queries_total{side=\"source\",kind=\"read\"} 12\n"
      "pghandoff_queries_total{side=\"source\",kind=\"write\"} 3\n"
      "pghandoff_queries_total{side=\"target\",kind=\"read\"} 0\n"
      "pghandoff_client_connections 2\n"
      "pghandoff_client_connections_max 9\n"
      "pghandoff_query_duration_seconds_bucket{side=\"source\",le=\"+Inf\"} 15\n"
      "pghandoff_lag_seconds 0.25\n"
      "pghandoff_escaped{reason=\"a \\\"b\\\"\"} 4\n";
  EXPECT_EQ(findMetric(text, "pghandoff_client_connections"), 2.0);
  EXPECT_EQ(findMetric(text, "pghandoff_queries_total{side=\"source\",kind=\"read\"}"), 12.0);
  EXPECT_EQ(findMetric(text, "pghandoff_queries_total{kind=\"write\",side=\"source\"}"), 3.0);
  EXPECT_EQ(findMetric(text, "pghandoff_queries_total{side=\"target\",kind=\"read\"}"), 0.0);
  EXPECT_EQ(
      findMetric(text, "pghandoff_query_duration_seconds_bucket{side=\"source\",le=\"+Inf\"}"),
      15.0);
  EXPECT_EQ(findMetric(text, "pghandoff_lag_seconds"), 0.25);
  EXPECT_EQ(findMetric(text, "pghandoff_escaped{reason=\"a \\\"b\\\"\"}"), 4.0);
  EXPECT_TRUE(std::isnan(findMetric(text, "pghandoff_queries_total")));
  EXPECT_TRUE(std::isnan(findMetric(text, "pghandoff_queries_total{side=\"source\"}")));
  EXPECT_TRUE(std::isnan(findMetric(text, "pghandoff_missing")));
}

// A one-shot HTTP server on a thread: answers with a chunked body and
// records the request it got.
TEST(Http, RequestAndChunkedResponse) {
  const int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(lfd, 1), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  std::string request;
  std::thread server([&] {
    const int c = ::accept(lfd, nullptr, nullptr);
    char buf[4096];
    while (request.find("\r\n\r\n") == std::string::npos ||
           request.size() < request.find("\r\n\r\n") + 4 + 15) {
      const ssize_t n = ::recv(c, buf, sizeof(buf), 0);
      if (n <= 0) {
        break;
      }
      request.append(buf, static_cast<std::size_t>(n));
    }
    const std::string resp =
        "HTTP/1.1 409 Conflict\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
    (void)::send(c, resp.data(), resp.size(), MSG_NOSIGNAL);
    ::close(c);
  });
  const HttpResponse r = httpRequest(ntohs(addr.sin_port), "POST", "/phase",
                                     R"({"phase":"x"})"
                                     "  ",
                                     {{"Authorization", "Bearer tok"}});
  server.join();
  ::close(lfd);
  EXPECT_EQ(r.status, 409);
  EXPECT_EQ(r.body, "hello, world");
  EXPECT_EQ(r.headers.at("content-type"), "text/plain");
  EXPECT_EQ(request.rfind("POST /phase HTTP/1.1\r\n", 0), 0U) << request;
  EXPECT_NE(request.find("Authorization: Bearer tok\r\n"), std::string::npos);
  EXPECT_NE(request.find("Content-Length: 15\r\n"), std::string::npos);
  EXPECT_NE(request.find("Connection: close\r\n"), std::string::npos);
  EXPECT_EQ(request.substr(request.size() - 15), R"({"phase":"x"}  )");
}

TEST(Http, ConnectionRefusedThrows) {
  EXPECT_THROW(httpRequest(freePort(), "GET", "/healthz"), std::runtime_error);
}

TEST(Urls, DatabaseOf) {
  EXPECT_EQ(databaseOf("postgresql://u:p%40w@127.0.0.1:5432/my%20db?sslmode=disable"), "my db");
  EXPECT_EQ(databaseOf("postgres://127.0.0.1:5432"), "postgres");
  EXPECT_EQ(databaseOf("host=127.0.0.1 dbname='shop' user=x"), "shop");
}

// ---- plain cluster -------------------------------------------------------------

class PlainCluster : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { cluster_ = std::make_unique<PgCluster>(); }
  static void TearDownTestSuite() { cluster_.reset(); }
  static std::unique_ptr<PgCluster> cluster_;
};
std::unique_ptr<PgCluster> PlainCluster::cluster_;

TEST_F(PlainCluster, PsqlAndLibpqAnswer) {
  PgCluster& c = *cluster_;
  EXPECT_EQ(c.host(), "127.0.0.1");
  EXPECT_GT(c.port(), 0);
  EXPECT_EQ(c.psql("SELECT 40 + 2"), "42");
  EXPECT_EQ(c.psql("SELECT current_setting('port')"), std::to_string(c.port()));
  EXPECT_EQ(c.psql("SELECT current_setting('fsync'), current_setting('ssl')"), "off|off");
  EXPECT_EQ(c.psql("SELECT current_setting('unix_socket_directories')"), c.dir());
  EXPECT_EQ(c.psql("SHOW server_encoding"), "UTF8");
  EXPECT_EQ(queryOne(c.url(), "SELECT current_user"), "postgres");
  EXPECT_EQ(queryOne(c.conninfo(), "SELECT 7"), "7");
  EXPECT_EQ(queryOne(c.url(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"), "f");
  EXPECT_EQ(c.url("db", "u", "p w", "sslmode=disable connect_timeout=5"),
            "postgresql://u:p%20w@127.0.0.1:" + std::to_string(c.port()) +
                "/db?sslmode=disable&connect_timeout=5");
}

TEST_F(PlainCluster, PsqlErrorsThrowWithStderr) {
  try {
    cluster_->psql("SELECT 1/0");
    FAIL() << "expected an exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("division by zero"), std::string::npos) << e.what();
  }
}

TEST_F(PlainCluster, PqResultRowsNullsAndSqlstate) {
  PqConn conn(cluster_->url());
  ASSERT_TRUE(conn.ok()) << conn.error();
  PqResult r = conn.exec("SELECT 1 AS a, NULL::text AS b UNION ALL SELECT 2, 'x' ORDER BY 1");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.status, "PGRES_TUPLES_OK");
  EXPECT_EQ(r.columns, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(r.rows, (std::vector<std::vector<std::string>>{{"1", ""}, {"2", "x"}}));
  EXPECT_TRUE(r.isNull(0, 1));
  EXPECT_FALSE(r.isNull(1, 1));
  EXPECT_EQ(r.commandTag, "SELECT 2");

  r = conn.exec("CREATE TEMP TABLE t (i int); INSERT INTO t SELECT generate_series(1, 3)");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.commandTag, "INSERT 0 3");
  EXPECT_EQ(r.affected, "3");

  r = conn.exec("SELECT 1/0");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.sqlstate, "22012");
  EXPECT_EQ(r.error, "division by zero");
  EXPECT_EQ(r.status, "PGRES_FATAL_ERROR");

  ASSERT_TRUE(conn.exec("DO $$ BEGIN RAISE NOTICE 'hello notice'; END $$").ok);
  EXPECT_EQ(conn.notices(), (std::vector<std::string>{"hello notice"}));
  EXPECT_THROW(conn.execOrThrow("SELECT * FROM no_such_table"), std::runtime_error);
  EXPECT_THROW(queryOne(cluster_->url(), "SELECT 1 WHERE false"), std::runtime_error);
}

TEST_F(PlainCluster, RolesDatabasesAndScramAuth) {
  PgCluster& c = *cluster_;
  c.createRole("app_user", "s3cr'et");
  c.createDatabase("app db", "app_user");
  EXPECT_EQ(queryOne(c.url("app db", "app_user", "s3cr'et"), "SELECT current_database()"),
            "app db");
  EXPECT_EQ(c.psql("SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'app_user'"),
            "SCRAM-SHA-256$");
  PqConn bad(c.url("app db", "app_user", "wrong"));
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.error().find("password authentication failed"), std::string::npos) << bad.error();
  // No SSL on this cluster.
  PqConn ssl(c.url("postgres", "postgres", std::nullopt, "sslmode=require"));
  EXPECT_FALSE(ssl.ok());
}

TEST_F(PlainCluster, StopStartRestartKill9) {
  PgCluster& c = *cluster_;
  const uint16_t port = c.port();
  c.psql("CREATE TABLE survives (i int); INSERT INTO survives VALUES (1); CHECKPOINT");

  c.restart();
  EXPECT_EQ(c.port(), port);
  EXPECT_EQ(c.psql("SELECT count(*) FROM survives"), "1");

  c.stop();
  EXPECT_FALSE(c.running());
  EXPECT_FALSE(PqConn(c.url()).ok());
  c.start();
  EXPECT_TRUE(c.running());
  EXPECT_EQ(queryOne(c.url(), "SELECT count(*) FROM survives"), "1");

  PqConn held(c.url());
  ASSERT_TRUE(held.ok());
  const int postmaster = c.postmasterPid();
  const int backend = held.backendPid();
  ASSERT_GT(postmaster, 0);
  c.kill9();
  EXPECT_TRUE(pidGone(postmaster));
  EXPECT_TRUE(pidGone(backend));  // killed too, not left to notice
  EXPECT_FALSE(held.exec("SELECT 1").ok);
  c.start();  // crash recovery
  EXPECT_EQ(c.psql("SELECT count(*) FROM survives"), "1");
  EXPECT_NE(c.log().find("database system was interrupted"), std::string::npos);
}

// ---- TLS-only and md5 clusters ---------------------------------------------------

class TlsCluster : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    certs_ = makeTestCerts();
    ClusterOptions o;
    o.ssl = true;
    o.certDir = certs_.dir;
    o.hostsslOnly = true;
    o.maxPreparedTransactions = 5;
    o.extraConf = {"application_name = 'from_extra_conf'"};
    cluster_ = std::make_unique<PgCluster>(o);
  }
  static void TearDownTestSuite() { cluster_.reset(); }
  static TestCerts certs_;
  static std::unique_ptr<PgCluster> cluster_;
};
TestCerts TlsCluster::certs_;
std::unique_ptr<PgCluster> TlsCluster::cluster_;

TEST_F(TlsCluster, VerifyFullConnectsWithSsl) {
  PgCluster& c = *cluster_;
  const std::string extra = "sslmode=verify-full sslrootcert=" + certs_.caCert;
  for (const std::string host : {"localhost", "127.0.0.1"}) {
    PqConn conn("host=" + host + " port=" + std::to_string(c.port()) +
                " dbname=postgres user=postgres password=" + c.superPassword() + " " + extra);
    ASSERT_TRUE(conn.ok()) << host << ": " << conn.error();
    const PqResult r = conn.exec("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.value(), "t");
  }
  EXPECT_EQ(queryOne(c.url("postgres", "postgres", std::nullopt, extra), "SELECT 1"), "1");
  EXPECT_EQ(c.psql("SHOW max_prepared_transactions"), "5");
  EXPECT_EQ(c.psql("SHOW application_name"), "pghandoff-test-psql");
  EXPECT_EQ(c.psql("SELECT boot_val <> reset_val FROM pg_settings "
                   "WHERE name = 'application_name'"),
            "t");
}

TEST_F(TlsCluster, NonSslConnectionIsRejected) {
  PqConn plain(cluster_->url());  // sslmode=disable
  EXPECT_FALSE(plain.ok());
  EXPECT_NE(plain.error().find("no encryption"), std::string::npos) << plain.error();
}

TEST_F(TlsCluster, UntrustedRootIsRefused) {
  const CertPair wrong = makeSelfSignedCert(certs_.dir, "localhost");
  PqConn conn(cluster_->url("postgres", "postgres", std::nullopt,
                            "sslmode=verify-full sslrootcert=" + wrong.cert));
  EXPECT_FALSE(conn.ok());
  EXPECT_NE(conn.error().find("certificate verify failed"), std::string::npos) << conn.error();
  // The CA-signed server cert verifies against the CA with openssl too.
  const ProcessResult v =
      run({"openssl", "verify", "-CAfile", certs_.caCert, certs_.serverCert, certs_.clientCert});
  EXPECT_EQ(v.exitCode, 0) << v.err;
  const ProcessResult self = run({"openssl", "verify", "-CAfile", certs_.caCert, wrong.cert});
  EXPECT_NE(self.exitCode, 0);
}

// Also the lifecycle: the destructor stops the server and removes its dir.
TEST(Md5Cluster, Md5AuthWorksAndDestructorCleansUp) {
  std::string dir;
  int postmaster = 0;
  {
    ClusterOptions o;
    o.hbaMethod = "md5";
    PgCluster c(o);
    dir = c.dir();
    postmaster = c.postmasterPid();
    EXPECT_TRUE(std::filesystem::exists(c.dataDir() + "/PG_VERSION"));
    c.createRole("legacy", "old-pass");
    EXPECT_EQ(c.psql("SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'legacy'"), "md5");
    EXPECT_EQ(c.psql("SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' "
                     "AND 'all' = ANY(database)"),
              "md5");
    EXPECT_EQ(queryOne(c.url("postgres", "legacy", "old-pass"), "SELECT current_user"), "legacy");
    // The superuser's password was set after password_encryption = md5.
    EXPECT_EQ(queryOne(c.url(), "SELECT current_user"), "postgres");
    PqConn bad(c.url("postgres", "legacy", "nope"));
    EXPECT_FALSE(bad.ok());
    EXPECT_NE(bad.error().find("password authentication failed"), std::string::npos);
  }
  EXPECT_FALSE(std::filesystem::exists(dir));
  EXPECT_TRUE(pidGone(postmaster));
}

// ---- the proxy binary --------------------------------------------------------------

// Starts the proxy, or skips the test while the binary is still a stub (a
// stub exits 0 at once; a real proxy never exits before it is healthy).
std::unique_ptr<ProxyProcess> startProxyOrSkip(const ProxyOptions& o, bool& skipped) {
  skipped = false;
  try {
    return std::make_unique<ProxyProcess>(o);
  } catch (const std::runtime_error& e) {
    if (std::string(e.what()).find("exited with code 0 ") != std::string::npos) {
      skipped = true;
      return nullptr;
    }
    throw;
  }
}

TEST_F(PlainCluster, ProxyProcessRunsTheBinary) {
  ProxyOptions o;
  o.sourceUrl = cluster_->url();
  o.users = {{"app", "app-secret"}, {"dollar", "pa$$w${x}rd"}};
  bool skipped = false;
  auto proxy = startProxyOrSkip(o, skipped);
  if (skipped) {
    GTEST_SKIP() << "`pghandoff proxy` is not implemented yet";
  }
  EXPECT_EQ(proxy->http("GET", "/healthz", {}, false).status, 200);
  EXPECT_EQ(proxy->http("GET", "/status", {}, false).status, 401);
  EXPECT_EQ(proxy->http("GET", "/status").status, 200);
  EXPECT_EQ(queryOne(proxy->url(), "SELECT 42"), "42");
  // '$' reaches the proxy literally, not as an environment reference.
  EXPECT_EQ(queryOne(proxy->url("dollar", "pa$$w${x}rd"), "SELECT 1"), "1");
  EXPECT_EQ(proxy->metric("pghandoff_phase{phase=\"source-only\"}"), 1.0);
  {
    PqConn held(proxy->url());
    ASSERT_TRUE(held.ok()) << held.error();
    EXPECT_TRUE(waitFor([&] { return proxy->metric("pghandoff_client_connections") == 1.0; }, 5s))
        << proxy->metrics();
  }
  EXPECT_TRUE(waitFor([&] { return proxy->metric("pghandoff_client_connections") == 0.0; }, 5s));

  const uint16_t port = proxy->port();
  proxy->restart();
  EXPECT_EQ(proxy->port(), port);
  EXPECT_EQ(queryOne(proxy->url(), "SELECT 43"), "43");

  EXPECT_EQ(proxy->log().find(o.adminToken), std::string::npos);
  EXPECT_EQ(proxy->log().find(cluster_->superPassword()), std::string::npos);
  EXPECT_TRUE(proxy->signal(SIGTERM));
  EXPECT_EQ(proxy->waitExit(10s), 0) << proxy->log();
}

TEST_F(TlsCluster, ProxyWithClientTlsAndTlsSource) {
  ProxyOptions o;
  o.sourceUrl = cluster_->url("postgres", "postgres", std::nullopt,
                              "sslmode=verify-full sslrootcert=" + certs_.caCert);
  o.tlsMode = "require";
  o.certFile = certs_.serverCert;
  o.keyFile = certs_.serverKey;
  bool skipped = false;
  auto proxy = startProxyOrSkip(o, skipped);
  if (skipped) {
    GTEST_SKIP() << "`pghandoff proxy` is not implemented yet";
  }
  const std::string verify = "sslmode=verify-full sslrootcert=" + certs_.caCert;
  PqConn conn(proxy->url("app", "app-secret", std::nullopt, verify));
  ASSERT_TRUE(conn.ok()) << conn.error();
  EXPECT_NE(PQsslInUse(conn.raw()), 0);
  // The server-side view: the proxy's own connection to the source is TLS.
  EXPECT_EQ(conn.execOrThrow("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").value(),
            "t");
  PqConn plain(proxy->url());  // sslmode=disable against mode: require
  EXPECT_FALSE(plain.ok());
}

}  // namespace
}  // namespace pghandoff::test
