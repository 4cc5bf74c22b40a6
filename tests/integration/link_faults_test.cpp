// Faults on the pghandoff <-> source link (RELIABILITY.md §2: F1, F6, F7, F8/F9,
// F12's 'info' class), injected by the in-repo FaultProxy
// (tests/support/fault_proxy.h) that sits between pghandoff and a real
// PostgreSQL cluster. The first tests check the FaultProxy itself with libpq
// and the raw client talking straight to the cluster through it.

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/support/fault_proxy.h"
#include "tests/support/pg_cluster.h"
#include "tests/support/pq.h"
#include "tests/support/process.h"
#include "tests/support/proxy_process.h"
#include "tests/support/raw_client.h"

namespace pghandoff::test {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

const char* const kLostSource = "pghandoff lost the connection to the source server";

long long msSince(Clock::time_point t0) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - t0).count();
}

class LinkFaults : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    source_ = std::make_unique<PgCluster>();
    source_->psql("CREATE TABLE f6 (id text PRIMARY KEY)");
    link_ = std::make_unique<FaultProxy>("127.0.0.1", source_->port());
    ProxyOptions o;
    // connect_timeout=5: the slow-login test checks it does not fire early.
    o.sourceUrl = linkUrl("connect_timeout=5");
    proxy_ = std::make_unique<ProxyProcess>(o);
  }
  static void TearDownTestSuite() {
    proxy_.reset();
    link_.reset();
    source_.reset();
  }
  void SetUp() override { link_->clearFaults(); }
  void TearDown() override { link_->clearFaults(); }

  // The cluster's superuser, through the fault proxy.
  static std::string linkUrl(const std::string& extra = {}) {
    return "postgresql://postgres:" + urlEncode(source_->superPassword()) +
           "@127.0.0.1:" + std::to_string(link_->port()) + "/postgres?sslmode=disable" +
           (extra.empty() ? "" : "&" + extra);
  }
  static LoginOptions directLogin() {
    LoginOptions o;
    o.user = "postgres";
    o.password = source_->superPassword();
    return o;
  }
  // A pghandoff client tagged with application_name (passed on to the source).
  static LoginOptions as(const std::string& app) {
    LoginOptions o;
    o.extraParams = {{"application_name", app}};
    return o;
  }
  // Checked straight on the cluster, not through the link.
  static std::string onSource(const std::string& sql) { return queryOne(source_->conninfo(), sql); }
  static int sourceBackends(const std::string& app, const std::string& extraWhere = "true") {
    return std::stoi(onSource("SELECT count(*) FROM pg_stat_activity WHERE application_name = " +
                              quoteLiteral(app) + " AND " + extraWhere));
  }
  // A new pghandoff client still works end to end.
  static void expectServing(const std::string& app) {
    LoginResult r = login(proxy_->port(), as(app));
    ASSERT_TRUE(r.ok) << r.failure << (r.error ? describe(*r.error) : "");
    QueryResult q = simpleQuery(r.client, "SELECT 40 + 2", milliseconds(5000));
    ASSERT_EQ(q.errors.size(), 0u);
    ASSERT_EQ(q.rows.size(), 1u);
    EXPECT_EQ(q.rows[0].at(0).value_or("NULL"), "42");
  }

  static std::unique_ptr<PgCluster> source_;
  static std::unique_ptr<FaultProxy> link_;
  static std::unique_ptr<ProxyProcess> proxy_;
};

std::unique_ptr<PgCluster> LinkFaults::source_;
std::unique_ptr<FaultProxy> LinkFaults::link_;
std::unique_ptr<ProxyProcess> LinkFaults::proxy_;

// ---- The fault proxy itself (libpq / raw client -> FaultProxy -> PostgreSQL) --------

TEST_F(LinkFaults, FaultProxyForwardsLibpqTraffic) {
  const int acceptedBefore = link_->acceptedCount();
  const auto upBefore = link_->bytesForwarded(Direction::kClientToServer);
  const auto downBefore = link_->bytesForwarded(Direction::kServerToClient);
  {
    PqConn c(linkUrl());
    ASSERT_TRUE(c.ok()) << c.error();
    EXPECT_EQ(link_->acceptedCount(), acceptedBefore + 1);
    PqResult r = c.exec("SELECT 40 + 2, repeat('y', 100000)");
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.value(0, 0), "42");
    EXPECT_EQ(r.value(0, 1), std::string(100000, 'y'));
  }
  // The counters are bumped after send() returns, so libpq may see the bytes
  // first: read them once the connection's thread is done.
  ASSERT_TRUE(waitFor([] { return link_->connectionCount() == 0; }, milliseconds(3000)))
      << link_->connectionCount();
  EXPECT_GT(link_->bytesForwarded(Direction::kClientToServer), upBefore);
  EXPECT_GT(link_->bytesForwarded(Direction::kServerToClient), downBefore + 100000);
}

TEST_F(LinkFaults, FaultProxySslRequestAnsweredNThenCutAfterQuery) {
  // sslmode=prefer against a non-TLS cluster: SSLRequest, 'N', then the
  // StartupMessage: both untyped, so the framer must not count them.
  PqConn c(linkUrl("sslmode=prefer"));
  ASSERT_TRUE(c.ok()) << c.error();
  ASSERT_TRUE(c.exec("SELECT 1").ok);
  link_->cutAfterMessage('Q', Direction::kClientToServer);
  PqResult r = c.exec("SELECT 2");
  EXPECT_FALSE(r.ok);
  EXPECT_TRUE(link_->cutFired());
  EXPECT_NE(r.error, "");
  PqConn again(linkUrl());
  ASSERT_TRUE(again.ok()) << again.error();
  EXPECT_EQ(again.exec("SELECT 3").value(), "3");
}

TEST_F(LinkFaults, FaultProxyLatencyAddsDelay) {
  PqConn c(linkUrl());
  ASSERT_TRUE(c.ok()) << c.error();
  link_->setLatency(milliseconds(100), milliseconds(100));
  auto t0 = Clock::now();
  PqResult r = c.exec("SELECT 1");
  auto took = msSince(t0);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_GE(took, 200);
  EXPECT_LT(took, 2000);
  std::printf("[ info ] SELECT 1 with 100 ms each way took %lld ms\n", took);
}

TEST_F(LinkFaults, FaultProxyFreezeBlocksUntilThawed) {
  RawClient c = loginOrThrow(link_->port(), directLogin());
  link_->freeze(true);
  QueryResult frozen = simpleQuery(c, "SELECT 7", milliseconds(500));
  EXPECT_TRUE(frozen.timedOut);
  EXPECT_FALSE(frozen.closed);
  EXPECT_EQ(frozen.types(), "");
  link_->freeze(false);
  QueryResult r = readUntilReady(c, 1, milliseconds(5000));
  ASSERT_EQ(r.readyCount, 1) << r.types();
  ASSERT_EQ(r.rows.size(), 1u);
  EXPECT_EQ(r.rows[0].at(0).value_or("NULL"), "7");
}

TEST_F(LinkFaults, FaultProxyResetGivesClientError) {
  PqConn c(linkUrl());
  ASSERT_TRUE(c.ok()) << c.error();
  ASSERT_TRUE(waitFor([] { return link_->connectionCount() == 1; }, milliseconds(2000)));
  link_->resetAll();
  ASSERT_TRUE(waitFor([] { return link_->connectionCount() == 0; }, milliseconds(2000)));
  PqResult r = c.exec("SELECT 1");
  EXPECT_FALSE(r.ok);
  EXPECT_FALSE(c.ok());
  EXPECT_NE(r.error, "");
}

TEST_F(LinkFaults, FaultProxyRefuseAndCut) {
  link_->refuseNew(true);
  PqConn refused(linkUrl());
  EXPECT_FALSE(refused.ok());
  link_->refuseNew(false);
  PqConn c(linkUrl());
  ASSERT_TRUE(c.ok()) << c.error();
  link_->cutAll();
  PqResult r = c.exec("SELECT 1");
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error, "");
}

// ---- pghandoff with the fault on its source link --------------------------------

// F6: RST on the source link while the client is idle in a transaction.
TEST_F(LinkFaults, F6ResetWhileIdleInTransaction) {
  LoginResult r = login(proxy_->port(), as("f6-idle"));
  ASSERT_TRUE(r.ok) << r.failure;
  ASSERT_EQ(simpleQuery(r.client, "BEGIN").txStatus, 'T');
  QueryResult ins = simpleQuery(r.client, "INSERT INTO f6 VALUES ('idle-tx')");
  ASSERT_EQ(ins.commandTags, std::vector<std::string>{"INSERT 0 1"});
  ASSERT_EQ(ins.txStatus, 'T');

  auto t0 = Clock::now();
  link_->resetAll();
  CloseResult cr = r.client.readUntilClose(milliseconds(2000));
  auto took = msSince(t0);
  std::printf("[ info ] F6 idle-in-tx: error and close after %lld ms\n", took);
  ASSERT_TRUE(cr.closed) << cr.types();
  ASSERT_EQ(cr.types(), "E");
  auto e = cr.errors().at(0);
  EXPECT_EQ(e.severity, "FATAL") << describe(e);
  EXPECT_EQ(e.code, "08006") << describe(e);
  EXPECT_EQ(e.message, kLostSource);
  EXPECT_LT(took, 2000);

  // The source backend saw the reset and rolled back.
  EXPECT_TRUE(waitFor([] { return sourceBackends("f6-idle") == 0; }, milliseconds(5000)));
  EXPECT_EQ(onSource("SELECT count(*) FROM f6 WHERE id = 'idle-tx'"), "0");
  expectServing("f6-after");
}

// F6 mid-query: RST while the source runs a long statement.
TEST_F(LinkFaults, F6ResetMidQuery) {
  LoginResult r = login(proxy_->port(), as("f6-query"));
  ASSERT_TRUE(r.ok) << r.failure;
  ASSERT_TRUE(r.client.send(queryMessage("SELECT pg_sleep(5)")));
  ASSERT_TRUE(waitFor(
      [] {
        return sourceBackends("f6-query", "state = 'active' AND query LIKE '%pg_sleep%'") == 1;
      },
      milliseconds(5000)));
  auto t0 = Clock::now();
  link_->resetAll();
  CloseResult cr = r.client.readUntilClose(milliseconds(2000));
  auto took = msSince(t0);
  std::printf("[ info ] F6 mid-query: error and close after %lld ms\n", took);
  ASSERT_TRUE(cr.closed) << cr.types();
  ASSERT_EQ(cr.types(), "E");
  auto e = cr.errors().at(0);
  EXPECT_EQ(e.severity, "FATAL") << describe(e);
  EXPECT_EQ(e.code, "08006") << describe(e);
  EXPECT_EQ(e.message, kLostSource);
  EXPECT_LT(took, 2000);
  expectServing("f6-query-after");
}

// F7-like: a blackholed link holds the answer; nothing is lost when it heals.
TEST_F(LinkFaults, F7FreezeHoldsQueryThenCompletes) {
  LoginResult r = login(proxy_->port(), as("f7"));
  ASSERT_TRUE(r.ok) << r.failure;
  ASSERT_TRUE(r.client.send(queryMessage("SELECT pg_sleep(1), 42, repeat('z', 50000)")));
  ASSERT_TRUE(waitFor(
      [] { return sourceBackends("f7", "state = 'active' AND query LIKE '%pg_sleep%'") == 1; },
      milliseconds(5000)));
  link_->freeze(true);
  const auto downBefore = link_->bytesForwarded(Direction::kServerToClient);
  // The source finishes the statement; its answer waits at the frozen link.
  ASSERT_TRUE(
      waitFor([] { return sourceBackends("f7", "state = 'idle'") == 1; }, milliseconds(5000)));
  QueryResult waiting = readUntilReady(r.client, 1, milliseconds(700));
  EXPECT_TRUE(waiting.timedOut);
  EXPECT_FALSE(waiting.closed);
  EXPECT_EQ(waiting.types(), "");
  EXPECT_EQ(link_->bytesForwarded(Direction::kServerToClient), downBefore);

  link_->freeze(false);
  QueryResult done = readUntilReady(r.client, 1, milliseconds(5000));
  ASSERT_EQ(done.readyCount, 1) << done.types();
  EXPECT_EQ(done.errors.size(), 0u);
  ASSERT_EQ(done.rows.size(), 1u);
  EXPECT_EQ(done.rows[0].at(1).value_or("NULL"), "42");
  EXPECT_EQ(done.rows[0].at(2).value_or("NULL"), std::string(50000, 'z'));
  EXPECT_EQ(done.txStatus, 'I');
  QueryResult next = simpleQuery(r.client, "SELECT 5");
  ASSERT_EQ(next.rows.size(), 1u);
  EXPECT_EQ(next.rows[0].at(0).value_or("NULL"), "5");
}

// F1: the source refuses new connections (accepted then closed at once).
TEST_F(LinkFaults, F1SourceRefusesNewConnections) {
  link_->refuseNew(true);
  auto t0 = Clock::now();
  LoginResult r = login(proxy_->port(), as("f1"));
  auto took = msSince(t0);
  std::printf("[ info ] F1 refused login answered after %lld ms\n", took);
  ASSERT_FALSE(r.ok);
  ASSERT_TRUE(r.error.has_value()) << r.failure;
  EXPECT_EQ(r.error->severity, "FATAL") << describe(*r.error);
  EXPECT_EQ(r.error->code, "08001") << describe(*r.error);
  EXPECT_LT(took, 2000);
  link_->refuseNew(false);
  expectServing("f1-after");
}

// F9: a slow source link makes queries slower, nothing else.
TEST_F(LinkFaults, F9LatencySlowsQueries) {
  LoginResult r = login(proxy_->port(), as("f9"));
  ASSERT_TRUE(r.ok) << r.failure;
  link_->setLatency(milliseconds(50), milliseconds(50));
  auto t0 = Clock::now();
  QueryResult q = simpleQuery(r.client, "SELECT 1", milliseconds(5000));
  auto took = msSince(t0);
  std::printf("[ info ] F9 SELECT 1 with 50 ms each way took %lld ms\n", took);
  ASSERT_EQ(q.errors.size(), 0u);
  ASSERT_EQ(q.rows.size(), 1u);
  EXPECT_EQ(q.rows[0].at(0).value_or("NULL"), "1");
  EXPECT_GE(took, 100);
  EXPECT_LT(took, 2000);
}

// F9: a login needing several round trips on a slow link (SCRAM: startup,
// SASLInitialResponse, SASLResponse = 3 round trips, >= 2.1 s at 350 ms each
// way) is not cut by connect_timeout=5 or startup_timeout (10 s).
TEST_F(LinkFaults, F9SlowLoginWithinConnectTimeout) {
  link_->setLatency(milliseconds(350), milliseconds(350));
  auto t0 = Clock::now();
  LoginOptions o = as("f9-login");
  o.timeout = milliseconds(10000);
  LoginResult r = login(proxy_->port(), o);
  auto took = msSince(t0);
  std::printf("[ info ] F9 login with 350 ms each way took %lld ms\n", took);
  ASSERT_TRUE(r.ok) << r.failure << (r.error ? describe(*r.error) : "");
  EXPECT_GE(took, 2100);
  EXPECT_LT(took, 5000);
  QueryResult q = simpleQuery(r.client, "SELECT 9", milliseconds(5000));
  ASSERT_EQ(q.rows.size(), 1u);
  EXPECT_EQ(q.rows[0].at(0).value_or("NULL"), "9");
}

// F12's 'info' class: the link dies right after COMMIT reached the source.
TEST_F(LinkFaults, CutAfterCommitQueryOutcomeUnknown) {
  LoginResult r = login(proxy_->port(), as("f12-q"));
  ASSERT_TRUE(r.ok) << r.failure;
  ASSERT_EQ(simpleQuery(r.client, "BEGIN").txStatus, 'T');
  ASSERT_EQ(simpleQuery(r.client, "INSERT INTO f6 VALUES ('commit-q')").txStatus, 'T');
  link_->cutAfterMessage('Q', Direction::kClientToServer);
  ASSERT_TRUE(r.client.send(queryMessage("COMMIT")));
  CloseResult cr = r.client.readUntilClose(milliseconds(2000));
  ASSERT_TRUE(cr.closed) << cr.types();
  EXPECT_TRUE(link_->cutFired());
  ASSERT_FALSE(cr.errors().empty()) << cr.types();
  auto e = cr.errors().back();
  EXPECT_EQ(e.severity, "FATAL") << describe(e);
  EXPECT_EQ(e.code, "08006") << describe(e);
  EXPECT_EQ(e.message, kLostSource);
  ASSERT_TRUE(waitFor([] { return sourceBackends("f12-q") == 0; }, milliseconds(5000)));
  std::string rows = onSource("SELECT count(*) FROM f6 WHERE id = 'commit-q'");
  EXPECT_TRUE(rows == "0" || rows == "1") << rows;
  std::printf("[ info ] cut after COMMIT 'Q': client saw \"%s\"; row %s on the source\n",
              cr.types().c_str(), rows == "1" ? "committed" : "absent");
  expectServing("f12-q-after");
}

// The link dies right after the source's CommandComplete for COMMIT: the
// transaction is committed, the client only learns the link is gone.
TEST_F(LinkFaults, CutAfterCommitCompleteIsCommitted) {
  LoginResult r = login(proxy_->port(), as("f12-c"));
  ASSERT_TRUE(r.ok) << r.failure;
  ASSERT_EQ(simpleQuery(r.client, "BEGIN").txStatus, 'T');
  ASSERT_EQ(simpleQuery(r.client, "INSERT INTO f6 VALUES ('commit-c')").txStatus, 'T');
  link_->cutAfterMessage('C', Direction::kServerToClient);
  ASSERT_TRUE(r.client.send(queryMessage("COMMIT")));
  CloseResult cr = r.client.readUntilClose(milliseconds(2000));
  ASSERT_TRUE(cr.closed) << cr.types();
  EXPECT_TRUE(link_->cutFired());
  std::printf("[ info ] cut after the server's 'C': client saw \"%s\"\n", cr.types().c_str());
  ASSERT_FALSE(cr.errors().empty()) << cr.types();
  auto e = cr.errors().back();
  EXPECT_EQ(e.code, "08006") << describe(e);
  EXPECT_EQ(e.message, kLostSource);
  EXPECT_EQ(cr.types().find('Z'), std::string::npos) << cr.types();
  EXPECT_EQ(onSource("SELECT count(*) FROM f6 WHERE id = 'commit-c'"), "1");
  expectServing("f12-c-after");
}

// F8/F9: a bandwidth-limited link delivers a large result intact, slowly.
TEST_F(LinkFaults, BandwidthLimitSlowsLargeResult) {
  LoginResult r = login(proxy_->port(), as("bw"));
  ASSERT_TRUE(r.ok) << r.failure;
  link_->setBandwidth(200 * 1024);
  auto t0 = Clock::now();
  QueryResult q = simpleQuery(r.client, "SELECT repeat('x', 409600)", milliseconds(20000));
  auto took = msSince(t0);
  std::printf("[ info ] 400 KiB at 200 KiB/s took %lld ms\n", took);
  ASSERT_EQ(q.errors.size(), 0u);
  ASSERT_EQ(q.readyCount, 1) << q.types();
  ASSERT_EQ(q.rows.size(), 1u);
  EXPECT_EQ(q.rows[0].at(0).value_or("NULL"), std::string(409600, 'x'));
  EXPECT_GE(took, 1500);
  EXPECT_LT(took, 10000);
}

}  // namespace
}  // namespace pghandoff::test
