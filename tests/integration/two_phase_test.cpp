// mirror.two_phase_commit (issue 3 "use PREPARE TRANSACTION two-phase commit
// when both servers allow it"; DESIGN hard problem 5; RELIABILITY F3): a
// commit that one side refuses leaves nothing committed anywhere, and a proxy
// killed between the commits leaves no prepared transaction behind once it is
// restarted: both committed, never one.

#include <signal.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "tests/support/fault_proxy.h"
#include "tests/support/pg_cluster.h"
#include "tests/support/pq.h"
#include "tests/support/proxy_process.h"

namespace pghandoff::test {
namespace {

using namespace std::chrono_literals;

class TwoPhase : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ClusterOptions o;
    o.extraConf = {"max_prepared_transactions = 20"};
    source_ = std::make_unique<PgCluster>(o);
    target_ = std::make_unique<PgCluster>(o);
  }
  static void TearDownTestSuite() {
    source_.reset();
    target_.reset();
  }
  void SetUp() override {
    for (PgCluster* c : {source_.get(), target_.get()}) {
      c->psql(
          "DROP TABLE IF EXISTS t, d; CREATE TABLE t (id int PRIMARY KEY, v text);"
          "CREATE TABLE d (id int, CONSTRAINT d_u UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)");
    }
  }
  void TearDown() override {
    if (HasFailure() && proxy_) proxy_->printLogTail();
    proxy_.reset();
  }
  void startProxy(bool twoPhase, std::uint16_t targetPort = 0) {
    ProxyOptions o;
    o.sourceUrl = source_->url();
    o.targetUrl = targetPort == 0 ? target_->url() : target_->urlVia(targetPort);
    o.extraYaml = twoPhase ? "mirror: { two_phase_commit: true }" : "";
    proxy_ = std::make_unique<ProxyProcess>(o);
    auto r = proxy_->http("POST", "/phase", R"({"phase":"mirror"})");
    ASSERT_EQ(r.status, 200) << r.body;
  }
  static std::string prepared(PgCluster& c) {
    return c.psql("SELECT count(*) FROM pg_prepared_xacts");
  }
  double metric(const std::string& m) {
    double v = proxy_->metric(m);
    return v != v ? 0.0 : v;
  }

  static std::unique_ptr<PgCluster> source_, target_;
  std::unique_ptr<ProxyProcess> proxy_;
};

std::unique_ptr<PgCluster> TwoPhase::source_;
std::unique_ptr<PgCluster> TwoPhase::target_;

TEST_F(TwoPhase, CommitsPrepareOnBothAndLeaveNothingPrepared) {
  startProxy(true);
  PqConn c(proxy_->url());
  ASSERT_TRUE(c.ok()) << c.error();
  EXPECT_EQ(c.execOrThrow("INSERT INTO t VALUES (1, 'autocommit')").commandTag, "INSERT 0 1");
  c.execOrThrow("BEGIN");
  c.execOrThrow("INSERT INTO t VALUES (2, 'block')");
  EXPECT_EQ(c.execOrThrow("COMMIT").commandTag, "COMMIT");
  EXPECT_EQ(c.execParams("INSERT INTO t VALUES ($1, 'extended')", {"3"}).commandTag, "INSERT 0 1");
  // A COMMIT through the extended protocol (as JDBC sends it).
  c.execOrThrow("BEGIN");
  c.execOrThrow("INSERT INTO t VALUES (4, 'ext-commit')");
  auto commit = c.execParams("COMMIT", {});
  EXPECT_EQ(commit.commandTag, "COMMIT") << commit.error;
  EXPECT_TRUE(c.notices().empty());  // no "there is no transaction in progress"
  for (PgCluster* cl : {source_.get(), target_.get()}) {
    EXPECT_EQ(cl->psql("SELECT string_agg(id || v, ',' ORDER BY id) FROM t"),
              "1autocommit,2block,3extended,4ext-commit");
    EXPECT_EQ(prepared(*cl), "0");
  }
}

// A COMMIT only the source refuses (a deferred unique check against a row the
// target does not have): without two-phase commit the target has committed
// already (a divergence); with it, nothing is committed anywhere and the
// client gets the source's own error.
TEST_F(TwoPhase, ACommitTheSourceRefusesCommitsNowhere) {
  source_->psql("INSERT INTO d VALUES (1)");
  startProxy(true);
  PqConn c(proxy_->url());
  ASSERT_TRUE(c.ok()) << c.error();
  c.execOrThrow("BEGIN");
  c.execOrThrow("INSERT INTO d VALUES (1)");
  auto r = c.exec("COMMIT");
  EXPECT_EQ(r.sqlstate, "23505") << r.error;
  EXPECT_EQ(c.execOrThrow("SELECT 1").value(), "1");  // the session goes on
  EXPECT_EQ(source_->psql("SELECT count(*) FROM d"), "1");
  EXPECT_EQ(target_->psql("SELECT count(*) FROM d"), "0");
  EXPECT_EQ(metric(R"(pghandoff_divergences_total{kind="commit"})"), 0.0);
  // A COMMIT through the extended protocol: the same.
  c.execOrThrow("BEGIN");
  c.execOrThrow("INSERT INTO d VALUES (1)");
  EXPECT_EQ(c.execParams("COMMIT", {}).sqlstate, "23505");
  EXPECT_EQ(target_->psql("SELECT count(*) FROM d"), "0");
  // Autocommit: the same.
  EXPECT_EQ(c.exec("INSERT INTO d VALUES (1)").sqlstate, "23505");
  EXPECT_EQ(target_->psql("SELECT count(*) FROM d"), "0");
  EXPECT_EQ(prepared(*source_), "0");
  EXPECT_EQ(prepared(*target_), "0");

  // The same without two-phase commit: the mirror committed first.
  proxy_.reset();
  startProxy(false);
  PqConn c2(proxy_->url());
  ASSERT_TRUE(c2.ok()) << c2.error();
  c2.execOrThrow("BEGIN");
  c2.execOrThrow("INSERT INTO d VALUES (1)");
  EXPECT_EQ(c2.exec("COMMIT").sqlstate, "23505");
  EXPECT_EQ(target_->psql("SELECT count(*) FROM d"), "1");
  EXPECT_EQ(metric(R"(pghandoff_divergences_total{kind="commit"})"), 1.0);
}

// The target refuses to prepare (its own deferred check): fail-client rolls
// the source back.
TEST_F(TwoPhase, ACommitTheTargetRefusesIsRolledBackOnTheSource) {
  target_->psql("INSERT INTO d VALUES (1)");
  startProxy(true);
  PqConn c(proxy_->url());
  ASSERT_TRUE(c.ok()) << c.error();
  c.execOrThrow("BEGIN");
  c.execOrThrow("INSERT INTO d VALUES (1)");
  auto r = c.exec("COMMIT");
  EXPECT_EQ(r.sqlstate, "58000") << r.error;
  EXPECT_EQ(source_->psql("SELECT count(*) FROM d"), "0");
  EXPECT_EQ(prepared(*source_), "0");
  EXPECT_EQ(prepared(*target_), "0");
}

// F3: the proxy killed between the two commits (both prepared; the target's
// COMMIT PREPARED slowed by a TCP fault proxy). Restarted, it finishes the
// transaction on both within 15 s: no prepared transaction left, the row on
// both servers (never on one).
TEST_F(TwoPhase, ProxyKilledBetweenTheCommitsLeavesBothCommitted) {
  FaultProxy link("127.0.0.1", target_->port());
  startProxy(true, link.port());
  PqConn c(proxy_->url());
  ASSERT_TRUE(c.ok()) << c.error();
  c.execOrThrow("INSERT INTO t VALUES (1, 'warm-up')");  // the target session is open
  link.setLatency(400ms, 400ms);
  std::thread client([&] {
    c.exec("BEGIN");
    c.exec("INSERT INTO t VALUES (2, 'in doubt')");
    (void)c.exec("COMMIT");  // fails when the proxy dies: the client cannot know
  });
  // Prepared on the source means prepared on the target too (it prepares
  // first): kill the proxy now, before the commits land.
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (prepared(*source_) == "0" && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
  }
  ASSERT_EQ(prepared(*source_), "1");
  ASSERT_TRUE(proxy_->signal(SIGKILL));
  proxy_->waitExit(5s);
  client.join();
  link.setLatency(0ms, 0ms);
  proxy_->restart();
  const auto settled = std::chrono::steady_clock::now() + 15s;
  while ((prepared(*source_) != "0" || prepared(*target_) != "0") &&
         std::chrono::steady_clock::now() < settled) {
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(prepared(*source_), "0");
  EXPECT_EQ(prepared(*target_), "0");
  for (PgCluster* cl : {source_.get(), target_.get()}) {
    EXPECT_EQ(cl->psql("SELECT string_agg(id || v, ',' ORDER BY id) FROM t"), "1warm-up,2in doubt");
  }
  EXPECT_NE(proxy_->log().find("two-phase commit recovery: committed"), std::string::npos);
}

// The link to the target breaks right after the target prepared, before the
// proxy read its answer: the outcome there is unknown, so the transaction is
// not committed anywhere (58000, the source rolled back) and the proxy rolls
// back what the target prepared, on a new connection, instead of leaving it
// holding its locks.
TEST_F(TwoPhase, APrepareWhoseAnswerWasLostIsRolledBackOnTheTarget) {
  FaultProxy link("127.0.0.1", target_->port());
  startProxy(true, link.port());
  PqConn c(proxy_->url());
  ASSERT_TRUE(c.ok()) << c.error();
  c.execOrThrow("BEGIN");
  c.execOrThrow("INSERT INTO t VALUES (1, 'undecided')");
  // The target's next CommandComplete answers PREPARE TRANSACTION; the
  // connection is reset before its ReadyForQuery.
  link.cutAfterMessage('C', Direction::kServerToClient);
  auto r = c.exec("COMMIT");
  EXPECT_EQ(r.sqlstate, "58000") << r.error;
  EXPECT_EQ(source_->psql("SELECT count(*) FROM t"), "0");
  const auto deadline = std::chrono::steady_clock::now() + 15s;
  while (prepared(*target_) != "0" && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(prepared(*target_), "0");
  EXPECT_EQ(target_->psql("SELECT count(*) FROM t"), "0");
  EXPECT_NE(proxy_->log().find("two-phase commit recovery: rolled back"), std::string::npos);
}

// Prepared on the target only (the proxy died before the source prepared):
// undecided, rolled back at restart.
TEST_F(TwoPhase, AnUndecidedTransactionIsRolledBackAtRestart) {
  target_->psql(
      "BEGIN; INSERT INTO t VALUES (9, 'undecided'); PREPARE TRANSACTION "
      "'pghandoff_0000000000000000_1_1'");
  ASSERT_EQ(prepared(*target_), "1");
  startProxy(true);
  const auto settled = std::chrono::steady_clock::now() + 15s;
  while (prepared(*target_) != "0" && std::chrono::steady_clock::now() < settled) {
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(prepared(*target_), "0");
  EXPECT_EQ(target_->psql("SELECT count(*) FROM t"), "0");
  // Someone else's prepared transactions are not pghandoff's to touch.
  target_->psql("BEGIN; INSERT INTO t VALUES (8, 'theirs'); PREPARE TRANSACTION 'other_app_1'");
  std::this_thread::sleep_for(2500ms);
  EXPECT_EQ(prepared(*target_), "1");
  target_->psql("ROLLBACK PREPARED 'other_app_1'");
}

}  // namespace
}  // namespace pghandoff::test
