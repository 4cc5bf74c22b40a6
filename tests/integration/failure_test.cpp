// Faults around the pass-through proxy (RELIABILITY.md §2 rows that apply to
// the source-only phase): an unreachable or silent source, the source stopped
// or killed under an idle session, clients vanishing mid-query and
// mid-transaction (F10), the connection limit (F18), SIGTERM and SIGHUP
// (F17), and exact metric values after a known mix of sessions.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/support/pg_cluster.h"
#include "tests/support/pq.h"
#include "tests/support/process.h"
#include "tests/support/proxy_process.h"
#include "tests/support/raw_client.h"

namespace pghandoff::test {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

const char* const kAdminShutdownMessage = "terminating connection due to administrator command";

class Failure : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    source_ = std::make_unique<PgCluster>();
    source_->psql(
        "CREATE TABLE f10 (id text PRIMARY KEY); CREATE TABLE shutdown (id text PRIMARY KEY)");
  }
  static void TearDownTestSuite() { source_.reset(); }

  void SetUp() override {
    // A test that stopped or killed the source must leave it running.
    if (!source_->running()) source_->start();
  }

  static ProxyOptions options(const std::string& extraYaml = {}) {
    ProxyOptions o;
    o.sourceUrl = source_->url();
    o.extraYaml = extraYaml;
    return o;
  }

  // Sessions of the source carrying this application_name.
  static int sourceBackends(const std::string& app, const std::string& extraWhere = "true") {
    return std::stoi(queryOne(source_->conninfo(),
                              "SELECT count(*) FROM pg_stat_activity WHERE application_name = " +
                                  quoteLiteral(app) + " AND " + extraWhere));
  }

  static LoginOptions as(const std::string& app, const std::string& password = "app-secret") {
    LoginOptions o;
    o.password = password;
    o.extraParams = {{"application_name", app}};
    return o;
  }

  static std::unique_ptr<PgCluster> source_;
};

std::unique_ptr<PgCluster> Failure::source_;

// A closed TCP port: bound to get a free number, then closed.
uint16_t closedPort() {
  return freePort();
}

// A listener that completes TCP handshakes (the kernel does, into the
// backlog) but never accepts or answers: a source that hangs at login.
class SilentListener {
 public:
  SilentListener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(fd_, 16) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      throw std::runtime_error("SilentListener: cannot listen");
    }
    port_ = ntohs(addr.sin_port);
  }
  ~SilentListener() { ::close(fd_); }
  SilentListener(const SilentListener&) = delete;
  SilentListener& operator=(const SilentListener&) = delete;
  [[nodiscard]] uint16_t port() const { return port_; }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

std::string sourceUrlAt(uint16_t port, const std::string& password, const std::string& extra) {
  return "postgresql://postgres:" + urlEncode(password) + "@127.0.0.1:" + std::to_string(port) +
         "/postgres?sslmode=disable" + extra;
}

// Reads until the close and expects exactly one FATAL with this code/message.
void expectOnlyFatal(RawClient& c, milliseconds within, const std::string& code,
                     const std::string& message) {
  CloseResult r = c.readUntilClose(within);
  ASSERT_TRUE(r.closed) << "still open; got " << r.types();
  ASSERT_EQ(r.types(), "E");
  const auto e = r.errors().at(0);
  EXPECT_EQ(e.severity, "FATAL") << describe(e);
  EXPECT_EQ(e.code, code) << describe(e);
  EXPECT_EQ(e.message, message) << describe(e);
}

bool healthy(ProxyProcess& p) {
  try {
    return p.http("GET", "/healthz", {}, false).status == 200;
  } catch (const std::exception&) {
    return false;
  }
}

// ---- source unreachable / silent ---------------------------------------------------------

TEST_F(Failure, UnreachableSourceGives08001Within2s) {
  const uint16_t port = closedPort();
  ProxyProcess proxy([&] {
    ProxyOptions o = options();
    o.sourceUrl = sourceUrlAt(port, source_->superPassword(), "");
    return o;
  }());
  const auto t0 = Clock::now();
  LoginResult r = login(proxy.port(), as("unreachable"));
  EXPECT_LT(Clock::now() - t0, 2s);
  ASSERT_FALSE(r.ok);
  ASSERT_TRUE(r.error.has_value()) << r.failure;
  EXPECT_EQ(r.error->severity, "FATAL");
  EXPECT_EQ(r.error->code, "08001");
  EXPECT_EQ(r.error->message, "connection to server at \"127.0.0.1\", port " +
                                  std::to_string(port) + " failed: Connection refused");
  // The source password never reaches the client.
  EXPECT_EQ(r.error->message.find(source_->superPassword()), std::string::npos);
  EXPECT_EQ(proxy.metric("pghandoff_client_errors_total{sqlstate=\"08001\"}"), 1.0);
  EXPECT_TRUE(proxy.running());
}

TEST_F(Failure, SilentSourceTimesOutAfterConnectTimeout) {
  SilentListener silent;
  ProxyProcess proxy([&] {
    ProxyOptions o = options();
    o.sourceUrl = sourceUrlAt(silent.port(), source_->superPassword(), "&connect_timeout=2");
    return o;
  }());
  const auto t0 = Clock::now();
  LoginResult r = login(proxy.port(), as("silent"));
  const auto elapsed = Clock::now() - t0;
  ASSERT_FALSE(r.ok);
  ASSERT_TRUE(r.error.has_value()) << r.failure;
  EXPECT_EQ(r.error->code, "08001");
  EXPECT_EQ(r.error->message, "connection to server at \"127.0.0.1\", port " +
                                  std::to_string(silent.port()) + " timed out after 2000 ms");
  EXPECT_GE(elapsed, 1900ms);
  EXPECT_LT(elapsed, 3s);
  EXPECT_TRUE(proxy.running());
}

// ---- source dies mid-session ------------------------------------------------------------

TEST_F(Failure, SourceFastShutdownRelays57P01AndNewSessionsWorkAfterRestart) {
  ProxyProcess proxy(options());
  RawClient c = loginOrThrow(proxy.port(), as("stop-fast"));
  ASSERT_EQ(simpleQuery(c, "SELECT 1").readyCount, 1);
  source_->stop();
  // PostgreSQL's own FATAL, relayed; nothing added by the proxy.
  expectOnlyFatal(c, 5s, "57P01", kAdminShutdownMessage);
  EXPECT_EQ(proxy.metric("pghandoff_client_errors_total{sqlstate=\"08006\"}"), 0.0);
  source_->start();
  RawClient d = loginOrThrow(proxy.port(), as("after-restart"));
  QueryResult q = simpleQuery(d, "SELECT 'back'");
  ASSERT_EQ(q.readyCount, 1) << q.types();
  EXPECT_EQ(q.rows.at(0).at(0), "back");
}

TEST_F(Failure, SourceKilledGives08006AndProxyKeepsRunning) {
  ProxyProcess proxy(options());
  RawClient c = loginOrThrow(proxy.port(), as("kill9"));
  ASSERT_EQ(simpleQuery(c, "SELECT 1").readyCount, 1);
  source_->kill9();
  // Two correct outcomes, decided by PostgreSQL's own race: the backend dies
  // silently with its postmaster (the proxy says 08006), or it notices the
  // postmaster's death first and sends its own FATAL 57P01, which the proxy
  // relays as the session's last word (and adds nothing after it).
  CloseResult r = c.readUntilClose(5s);
  ASSERT_TRUE(r.closed) << "still open; got " << r.types();
  ASSERT_EQ(r.types(), "E");
  const auto e = r.errors().at(0);
  EXPECT_EQ(e.severity, "FATAL") << describe(e);
  if (e.code == "08006") {
    EXPECT_EQ(e.message, "pghandoff lost the connection to the source server");
  } else {
    EXPECT_EQ(e.code, "57P01") << describe(e);
    EXPECT_EQ(e.message, "terminating connection due to unexpected postmaster exit");
  }
  EXPECT_EQ(proxy.metric("pghandoff_client_errors_total{sqlstate=\"" + e.code + "\"}"), 1.0);
  EXPECT_TRUE(proxy.running());
  EXPECT_TRUE(healthy(proxy));
  source_->start();
  RawClient d = loginOrThrow(proxy.port(), as("after-crash"));
  QueryResult q = simpleQuery(d, "SELECT 'recovered'");
  ASSERT_EQ(q.readyCount, 1) << q.types();
  EXPECT_EQ(q.rows.at(0).at(0), "recovered");
}

// ---- F10: client vanishes --------------------------------------------------------------------

TEST_F(Failure, F10ClientVanishesMidQueryCancelsAndEndsTheServerSession) {
  ProxyProcess proxy(options());
  RawClient c = loginOrThrow(proxy.port(), as("f10-sleep"));
  ASSERT_TRUE(c.send(queryMessage("SELECT pg_sleep(30)")));
  const std::string running = "state = 'active' AND query = 'SELECT pg_sleep(30)'";
  ASSERT_TRUE(waitFor([&] { return sourceBackends("f10-sleep", running) == 1; }, 5s));
  c.close();
  EXPECT_TRUE(waitFor([&] { return sourceBackends("f10-sleep") == 0; }, 5s))
      << "the source backend outlived its client by 5 s";
}

TEST_F(Failure, F10ClientVanishesMidTransactionRollsBack) {
  ProxyProcess proxy(options());
  RawClient c = loginOrThrow(proxy.port(), as("f10-tx"));
  ASSERT_EQ(simpleQuery(c, "BEGIN").txStatus, 'T');
  QueryResult q = simpleQuery(c, "INSERT INTO f10 VALUES ('vanished')");
  ASSERT_EQ(q.commandTags, std::vector<std::string>{"INSERT 0 1"});
  ASSERT_EQ(q.txStatus, 'T');
  c.close();
  ASSERT_TRUE(waitFor([&] { return sourceBackends("f10-tx") == 0; }, 5s));
  EXPECT_EQ(source_->psql("SELECT count(*) FROM f10 WHERE id = 'vanished'"), "0");
}

// ---- F18: connection limit ----------------------------------------------------------------

TEST_F(Failure, F18MaxClientConnectionsRejectsTheFourthWith53300) {
  ProxyProcess proxy(options("limits: {max_client_connections: 3}"));
  const std::string tooMany = "pghandoff_client_connections_rejected_total{reason=\"too_many\"}";
  EXPECT_EQ(proxy.metric(tooMany), 0.0);
  std::vector<RawClient> held;
  for (int i = 0; i < 3; ++i) held.push_back(loginOrThrow(proxy.port(), as("f18")));

  RawClient fourth(proxy.port());
  const auto t0 = Clock::now();
  ASSERT_TRUE(fourth.send(startupPacket({{"user", "app"}, {"database", "postgres"}})));
  expectOnlyFatal(fourth, 1s, "53300", "sorry, too many clients already");
  EXPECT_LT(Clock::now() - t0, 1s);
  EXPECT_EQ(proxy.metric(tooMany), 1.0);
  // The admin API does not share the client budget.
  EXPECT_EQ(proxy.http("GET", "/healthz", {}, false).status, 200);
  EXPECT_EQ(proxy.http("GET", "/metrics").status, 200);
  // The held sessions are unaffected.
  for (auto& h : held) EXPECT_EQ(simpleQuery(h, "SELECT 1").readyCount, 1);

  ASSERT_TRUE(held.back().send(terminateMessage()));
  held.pop_back();
  ASSERT_TRUE(waitFor([&] { return proxy.metric("pghandoff_client_connections") == 2.0; }, 5s));
  LoginResult again = login(proxy.port(), as("f18"));
  ASSERT_TRUE(again.ok) << again.failure;
  EXPECT_EQ(proxy.metric(tooMany), 1.0);
}

// ---- F17: SIGTERM ---------------------------------------------------------------------------

TEST_F(Failure, F17SigtermClosesIdleAtOnceAndLetsATransactionCommit) {
  ProxyProcess proxy(options());
  RawClient idle = loginOrThrow(proxy.port(), as("sigterm-idle"));
  RawClient inTx = loginOrThrow(proxy.port(), as("sigterm-tx"));
  ASSERT_EQ(simpleQuery(inTx, "BEGIN").txStatus, 'T');
  ASSERT_EQ(simpleQuery(inTx, "INSERT INTO shutdown VALUES ('committed-after-sigterm')").txStatus,
            'T');

  ASSERT_TRUE(proxy.signal(SIGTERM));
  const auto t0 = Clock::now();
  expectOnlyFatal(idle, 1s, "57P01", kAdminShutdownMessage);
  EXPECT_LT(Clock::now() - t0, 1s);
  // Accepting stops: new connections are refused and /healthz is not 200.
  EXPECT_TRUE(waitFor([&] { return !RawClient::tryConnect(proxy.port()).has_value(); }, 1s));
  EXPECT_TRUE(waitFor([&] { return !healthy(proxy); }, 1s));

  QueryResult q = simpleQuery(inTx, "COMMIT", 2s);
  ASSERT_EQ(q.commandTags, std::vector<std::string>{"COMMIT"}) << q.types();
  EXPECT_EQ(q.txStatus, 'I');
  expectOnlyFatal(inTx, 1s, "57P01", kAdminShutdownMessage);
  EXPECT_EQ(proxy.waitExit(5s), 0);
  EXPECT_EQ(source_->psql("SELECT count(*) FROM shutdown WHERE id = 'committed-after-sigterm'"),
            "1");
}

TEST_F(Failure, F17ShutdownTimeoutClosesAnOpenTransaction) {
  ProxyProcess proxy(options("limits: {shutdown_timeout: 1s}"));
  RawClient inTx = loginOrThrow(proxy.port(), as("sigterm-stuck"));
  ASSERT_EQ(simpleQuery(inTx, "BEGIN").txStatus, 'T');
  ASSERT_EQ(simpleQuery(inTx, "INSERT INTO shutdown VALUES ('never-committed')").txStatus, 'T');
  ASSERT_TRUE(proxy.signal(SIGTERM));
  const auto t0 = Clock::now();
  expectOnlyFatal(inTx, 4s, "57P01", kAdminShutdownMessage);
  const auto elapsed = Clock::now() - t0;
  EXPECT_GE(elapsed, 900ms);
  EXPECT_LT(elapsed, 3s);
  EXPECT_EQ(proxy.waitExit(5s), 0);
  ASSERT_TRUE(waitFor([&] { return sourceBackends("sigterm-stuck") == 0; }, 5s));
  EXPECT_EQ(source_->psql("SELECT count(*) FROM shutdown WHERE id = 'never-committed'"), "0");
}

// ---- F17: SIGHUP ----------------------------------------------------------------------------

std::size_t countOf(const std::string& haystack, const std::string& needle) {
  std::size_t n = 0;
  for (auto pos = haystack.find(needle); pos != std::string::npos;
       pos = haystack.find(needle, pos + needle.size())) {
    ++n;
  }
  return n;
}

TEST_F(Failure, F17SighupReloadsPasswordsAndKeepsOldConfigOnError) {
  ProxyProcess proxy(options());
  RawClient old = loginOrThrow(proxy.port(), as("sighup-old"));

  std::string yaml = readFile(proxy.configFile());
  const std::string from = "password: \"app-secret\"";
  ASSERT_EQ(countOf(yaml, from), 1U) << yaml;
  yaml.replace(yaml.find(from), from.size(), "password: \"new-secret\"");
  writeFile(proxy.configFile(), yaml, 0600);
  ASSERT_TRUE(proxy.signal(SIGHUP));
  ASSERT_TRUE(waitFor([&] { return countOf(proxy.log(), "reload done") == 1; }, 5s))
      << tailFile(proxy.logFile());

  QueryResult q = simpleQuery(old, "SELECT 'old session'");
  ASSERT_EQ(q.readyCount, 1) << q.types();
  EXPECT_EQ(q.rows.at(0).at(0), "old session");
  LoginResult withOld = login(proxy.port(), as("sighup-oldpw"));
  ASSERT_FALSE(withOld.ok);
  ASSERT_TRUE(withOld.error.has_value()) << withOld.failure;
  EXPECT_EQ(withOld.error->code, "28P01");
  LoginResult withNew = login(proxy.port(), as("sighup-newpw", "new-secret"));
  ASSERT_TRUE(withNew.ok) << withNew.failure;

  // A broken file: the running configuration stays.
  writeFile(proxy.configFile(), yaml + "no_such_key: 1\n", 0600);
  ASSERT_TRUE(proxy.signal(SIGHUP));
  ASSERT_TRUE(waitFor([&] { return countOf(proxy.log(), "reload failed") == 1; }, 5s))
      << tailFile(proxy.logFile());
  EXPECT_TRUE(proxy.running());
  LoginResult stillNew = login(proxy.port(), as("sighup-after-bad", "new-secret"));
  ASSERT_TRUE(stillNew.ok) << stillNew.failure;
  EXPECT_EQ(simpleQuery(old, "SELECT 1").readyCount, 1);
  EXPECT_EQ(simpleQuery(withNew.client, "SELECT 1").readyCount, 1);
}

// ---- exact metric values ----------------------------------------------------------------------

TEST_F(Failure, MetricsCountSessionsAndFailedLoginsExactly) {
  constexpr int kGood = 3;
  constexpr int kBad = 2;
  ProxyProcess proxy(options());
  std::vector<RawClient> sessions;
  for (int i = 0; i < kGood; ++i) {
    sessions.push_back(loginOrThrow(proxy.port(), as("metrics")));
    ASSERT_EQ(simpleQuery(sessions.back(), "SELECT 1").readyCount, 1);
  }
  for (int i = 0; i < kBad; ++i) {
    LoginResult bad = login(proxy.port(), as("metrics-bad", "wrong-password"));
    ASSERT_FALSE(bad.ok);
    ASSERT_TRUE(bad.error.has_value()) << bad.failure;
    EXPECT_EQ(bad.error->code, "28P01");
    EXPECT_EQ(bad.error->message, "password authentication failed for user \"app\"");
  }
  // The failed logins' sessions are gone; the good ones are open.
  ASSERT_TRUE(waitFor([&] { return proxy.metric("pghandoff_client_connections") == kGood; }, 5s))
      << proxy.metric("pghandoff_client_connections");
  EXPECT_EQ(proxy.metric("pghandoff_server_connections{side=\"source\"}"), kGood);
  EXPECT_EQ(sourceBackends("metrics"), kGood);

  for (auto& s : sessions) ASSERT_TRUE(s.send(terminateMessage()));
  sessions.clear();
  ASSERT_TRUE(waitFor([&] { return proxy.metric("pghandoff_client_connections") == 0.0; }, 5s))
      << proxy.metric("pghandoff_client_connections");
  EXPECT_EQ(proxy.metric("pghandoff_server_connections{side=\"source\"}"), 0.0);
  EXPECT_EQ(proxy.metric("pghandoff_client_connections_total"), kGood + kBad);
  EXPECT_EQ(proxy.metric("pghandoff_client_connections_rejected_total{reason=\"auth_failed\"}"),
            kBad);
  EXPECT_EQ(proxy.metric("pghandoff_client_errors_total{sqlstate=\"28P01\"}"), kBad);
  EXPECT_EQ(proxy.metric("pghandoff_internal_bugs_total"), 0.0);
}

// queries_total{side,kind} counts each simple Query and each Execute once, by
// what PostgreSQL's parser says the statement does: reads only when nothing in
// it writes (nextval() makes a SELECT a write); transaction control, DDL and
// session state take the write path. Extended-protocol Executes are counted
// by the statement their portal was bound to.
TEST_F(Failure, QueriesAreCountedBySideAndKindExactly) {
  ProxyProcess proxy(options());
  EXPECT_EQ(proxy.metric("pghandoff_phase{phase=\"source-only\"}"), 1.0);
  EXPECT_EQ(proxy.metric("pghandoff_phase{phase=\"mirror\"}"), 0.0);
  EXPECT_EQ(proxy.metric("pghandoff_build_info{version=\"" PGHANDOFF_VERSION "\"}"), 1.0);
  const std::string readKey = "pghandoff_queries_total{side=\"source\",kind=\"read\"}";
  const std::string writeKey = "pghandoff_queries_total{side=\"source\",kind=\"write\"}";
  const double reads0 = proxy.metric(readKey);
  const double writes0 = proxy.metric(writeKey);

  RawClient c = loginOrThrow(proxy.port(), as("kinds"));
  for (const char* sql :
       {"SELECT 1", "select 2", "SELECT 1; SELECT 2",  // 3 reads
        "CREATE TEMP TABLE qk (a int)", "INSERT INTO qk VALUES (1)", "CREATE TEMP SEQUENCE qs",
        "BEGIN", "SELECT nextval('qs')", "COMMIT"}) {  // 6 writes
    QueryResult q = simpleQuery(c, sql);
    ASSERT_EQ(q.readyCount, 1) << sql;
    ASSERT_TRUE(q.errors.empty()) << sql;
  }
  // Extended: one read through the unnamed statement, two Executes of a named
  // INSERT statement bound to the unnamed portal.
  ASSERT_TRUE(c.send(concat(
      {parseMessage("", "SELECT 42"), bindMessage("", ""), executeMessage(""), syncMessage()})));
  QueryResult e1 = readUntilReady(c);
  ASSERT_EQ(e1.readyCount, 1);
  ASSERT_TRUE(e1.errors.empty());
  ASSERT_TRUE(c.send(
      concat({parseMessage("ins", "INSERT INTO qk VALUES (2)"), bindMessage("", "ins"),
              executeMessage(""), bindMessage("", "ins"), executeMessage(""), syncMessage()})));
  QueryResult e2 = readUntilReady(c);
  ASSERT_EQ(e2.readyCount, 1);
  ASSERT_TRUE(e2.errors.empty());
  EXPECT_EQ(simpleQuery(c, "SELECT count(*) FROM qk").rows.at(0).at(0), "3");  // 1 more read
  // The session remembers the classification of the text it saw last: a
  // text of the same length that writes is not taken for the read before it,
  // nor the other way round. 3 reads, 2 writes.
  for (const char* sql : {"SELECT a FROM qk", "SELECT a FROM qk", "DELETE FROM qk x",
                          "DELETE FROM qk x", "SELECT a FROM qk"}) {
    ASSERT_TRUE(c.send(
        concat({parseMessage("", sql), bindMessage("", ""), executeMessage(""), syncMessage()})));
    QueryResult r = readUntilReady(c);
    ASSERT_EQ(r.readyCount, 1) << sql;
    ASSERT_TRUE(r.errors.empty()) << sql;
  }

  EXPECT_EQ(proxy.metric(readKey) - reads0, 8.0);
  EXPECT_EQ(proxy.metric(writeKey) - writes0, 10.0);
  EXPECT_EQ(proxy.metric("pghandoff_queries_total{side=\"target\",kind=\"read\"}"), 0.0);
  EXPECT_EQ(proxy.metric("pghandoff_queries_total{side=\"target\",kind=\"write\"}"), 0.0);
}

}  // namespace
}  // namespace pghandoff::test
