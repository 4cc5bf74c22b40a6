// The phase barrier through the real proxy (SPEC §1, §5; issue 3 step 1):
// POST /pause holds new transactions at their boundary while those in flight
// finish, POST /resume releases them, and the held clients see a pause, never
// an error; refused and not-yet-built phase changes; the phase file under
// state.dir (a proxy never guesses its phase); /status and the flip metrics;
// `pghandoff phase get|set` on the command line.

#include <signal.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "protocol/frontend.h"

#include "tests/support/pg_cluster.h"
#include "tests/support/pq.h"
#include "tests/support/process.h"
#include "tests/support/proxy_process.h"
#include "tests/support/raw_client.h"

namespace pghandoff::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

class PhaseBarrier : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    source_ = std::make_unique<PgCluster>();
    source_->psql("CREATE TABLE t (id int PRIMARY KEY, v text)");
  }
  static void TearDownTestSuite() { source_.reset(); }

  void SetUp() override {
    ProxyOptions o;
    o.sourceUrl = source_->url();
    o.extraYaml = "flip: { drain_timeout: 2s, on_timeout: abandon }";
    proxy_ = std::make_unique<ProxyProcess>(o);
  }
  void TearDown() override { proxy_.reset(); }

  // A query on its own thread, so the test can watch it being held.
  struct Background {
    std::atomic<bool> done{false};
    PqResult result;
    Clock::time_point finished;
    std::thread thread;
    ~Background() {
      if (thread.joinable()) thread.join();
    }
  };
  void runInBackground(Background& b, PqConn& c, std::string sql) {
    b.thread = std::thread([&b, &c, sql = std::move(sql)] {
      b.result = c.exec(sql);
      b.finished = Clock::now();
      b.done = true;
    });
  }

  static std::unique_ptr<PgCluster> source_;
  std::unique_ptr<ProxyProcess> proxy_;
};

std::unique_ptr<PgCluster> PhaseBarrier::source_;

TEST_F(PhaseBarrier, PauseHoldsNewTransactionsUntilResumeWithoutAnError) {
  PqConn c(proxy_->url());
  ASSERT_TRUE(c.ok()) << c.error();
  ASSERT_TRUE(c.exec("SELECT 1").ok);  // logged in and idle

  auto r = proxy_->http("POST", "/pause");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, R"({"paused":true,"in_flight":0})");
  auto st = proxy_->http("GET", "/status");
  EXPECT_NE(st.body.find(R"("paused":true)"), std::string::npos) << st.body;

  Background b;
  const auto heldFrom = Clock::now();
  runInBackground(b, c, "SELECT 41 + 1");
  std::this_thread::sleep_for(400ms);  // the hold being measured
  EXPECT_FALSE(b.done) << "a new transaction ran while the proxy was paused";
  // New connections still log in while paused (only transactions are held).
  PqConn other(proxy_->url());
  EXPECT_TRUE(other.ok()) << other.error();

  const auto resumedAt = Clock::now();
  r = proxy_->http("POST", "/resume");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, R"({"paused":false})");
  b.thread.join();
  ASSERT_TRUE(b.result.ok) << b.result.error;  // a pause, never an error
  EXPECT_EQ(b.result.value(), "42");
  EXPECT_GE(b.finished, resumedAt);
  EXPECT_GE(b.finished - heldFrom, 400ms);
  EXPECT_TRUE(other.exec("SELECT 1").ok);
}

TEST_F(PhaseBarrier, PauseWaitsForTheOpenTransactionWhichKeepsRunning) {
  PqConn a(proxy_->url());
  ASSERT_TRUE(a.exec("BEGIN").ok);
  ASSERT_TRUE(a.exec("INSERT INTO t VALUES (1, 'in flight')").ok);

  // The pause cannot complete while `a` is in its transaction...
  std::atomic<int> pauseStatus{0};
  Clock::time_point pausedAt;
  std::thread pauser([&] {
    auto r = proxy_->http("POST", "/pause", R"({"drain_timeout":"5s"})");
    pausedAt = Clock::now();
    pauseStatus = r.status;
  });
  ASSERT_TRUE(waitFor(
      [&] {
        return proxy_->http("GET", "/status")
                   .body.find(R"("paused":false,"flipping":false,"in_flight_transactions":1)") ==
               std::string::npos;
      },
      5s));
  // ... the transaction's own statements are not held ...
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(pauseStatus.load(), 0);
  auto sel = a.exec("SELECT v FROM t WHERE id = 1");
  ASSERT_TRUE(sel.ok) << sel.error;
  EXPECT_EQ(sel.value(), "in flight");
  // ... and its COMMIT lets the pause complete.
  const auto committedAt = Clock::now();
  ASSERT_TRUE(a.exec("COMMIT").ok);
  pauser.join();
  EXPECT_EQ(pauseStatus.load(), 200);
  EXPECT_GE(pausedAt, committedAt);
  EXPECT_EQ(queryOne(source_->conninfo(), "SELECT v FROM t WHERE id = 1"), "in flight");
  EXPECT_EQ(proxy_->http("POST", "/resume").status, 200);
  EXPECT_TRUE(a.exec("SELECT 1").ok);
  ASSERT_TRUE(a.exec("DELETE FROM t").ok);
}

TEST_F(PhaseBarrier, PauseThatCannotDrainGivesUpAndTrafficFlows) {
  PqConn idle(proxy_->url());
  ASSERT_TRUE(idle.exec("BEGIN").ok);  // idle in transaction: holds any barrier
  const auto t0 = Clock::now();
  auto r = proxy_->http("POST", "/pause", R"({"drain_timeout":"300ms"})");
  const auto took = Clock::now() - t0;
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body,
            R"({"error":"1 transactions still open after 300 ms; not paused","paused":false})");
  EXPECT_GE(took, 300ms);
  EXPECT_LT(took, 3s);
  PqConn other(proxy_->url());
  EXPECT_TRUE(other.exec("SELECT 1").ok);  // not paused
  EXPECT_TRUE(idle.exec("ROLLBACK").ok);
}

TEST_F(PhaseBarrier, SigtermWhileHeldEndsTheHeldSessionWith57P01) {
  // A raw client: libpq folds a FATAL followed by the close into its own
  // "server closed the connection unexpectedly", without the SQLSTATE.
  RawClient c = loginOrThrow(proxy_->port());
  ASSERT_EQ(proxy_->http("POST", "/pause").status, 200);
  std::vector<std::uint8_t> q;
  protocol::encodeQuery("SELECT 1", q);
  ASSERT_TRUE(c.send(q));
  auto held = c.read(300ms);
  EXPECT_EQ(held.status, ReadStatus::kTimeout) << "answered while paused";
  ASSERT_TRUE(proxy_->signal(SIGTERM));
  CloseResult r = c.readUntilClose(5s);
  ASSERT_TRUE(r.closed) << "still open; got " << r.types();
  ASSERT_EQ(r.types(), "E");
  EXPECT_EQ(r.errors().at(0).severity, "FATAL");
  EXPECT_EQ(r.errors().at(0).code, "57P01");
  EXPECT_EQ(r.errors().at(0).message, "terminating connection due to administrator command");
  EXPECT_EQ(proxy_->waitExit(10s), 0);
}

TEST_F(PhaseBarrier, TerminateWhilePausedIsNotHeld) {
  // A client leaving while the proxy is paused starts no transaction: its
  // Terminate goes through at once and the session ends.
  RawClient c = loginOrThrow(proxy_->port());
  ASSERT_EQ(proxy_->metric("pghandoff_client_connections"), 1.0);
  ASSERT_EQ(proxy_->http("POST", "/pause").status, 200);
  std::vector<std::uint8_t> x;
  protocol::encodeTerminate(x);
  ASSERT_TRUE(c.send(x));
  EXPECT_TRUE(c.readUntilClose(2s).closed);
  EXPECT_TRUE(waitFor([&] { return proxy_->metric("pghandoff_client_connections") == 0.0; }, 2s));
  EXPECT_EQ(proxy_->http("POST", "/resume").status, 200);
}

TEST_F(PhaseBarrier, PhaseChangesRefusedOrNotBuiltChangeNothing) {
  auto r = proxy_->http("GET", "/phase");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"phase":"source-only"})");

  r = proxy_->http("POST", "/phase", R"({"phase":"target-only"})");
  EXPECT_EQ(r.status, 409);
  EXPECT_EQ(r.body, R"({"error":"source-only -> target-only skips a step; the next phase )"
                    R"(forward is mirror","phase":"source-only"})");
  r = proxy_->http("POST", "/phase", R"({"phase":"mirror"})");
  EXPECT_EQ(r.status, 409);
  EXPECT_EQ(r.body, R"x({"error":"phase mirror needs the target: target.url is not set in the )x"
                    R"x(configuration","phase":"source-only"})x");
  r = proxy_->http("POST", "/phase", R"({"phase":"seeding"})");
  EXPECT_EQ(r.status, 409);
  EXPECT_EQ(r.body, R"x({"error":"phase seeding is entered by pghandoff seed (POST )x"
                    R"x(/seed/start)","phase":"source-only"})x");
  r = proxy_->http("POST", "/phase", R"({"phase":"source-only"})");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"phase":"source-only","previous":"source-only","pause_ms":0})");

  EXPECT_EQ(
      proxy_->metric(
          R"(pghandoff_phase_flips_total{from="source-only",to="target-only",result="refused"})"),
      1.0);
  EXPECT_EQ(proxy_->metric("pghandoff_phase_flip_pause_seconds_count"), 0.0);
  EXPECT_EQ(proxy_->metric(R"(pghandoff_phase{phase="source-only"})"), 1.0);

  // The command line: exit 1 for a refused step, 0 for get.
  std::map<std::string, std::string> env{{"PGHANDOFF_ADMIN_TOKEN", proxy_->options().adminToken}};
  const std::string admin = "http://127.0.0.1:" + std::to_string(proxy_->adminPort());
  auto get = run({PGHANDOFF_BINARY, "phase", "get", "--admin", admin}, env, 10s);
  EXPECT_EQ(get.exitCode, 0) << get.err;
  EXPECT_EQ(get.out, "{\"phase\":\"source-only\"}\n");
  auto refused = run({PGHANDOFF_BINARY, "phase", "set", "target-only", "--admin", admin}, env, 10s);
  EXPECT_EQ(refused.exitCode, 1) << refused.err;
  EXPECT_NE(refused.out.find("skips a step"), std::string::npos) << refused.out;
  auto seeding = run({PGHANDOFF_BINARY, "phase", "set", "seeding", "--admin", admin}, env, 10s);
  EXPECT_EQ(seeding.exitCode, 1) << seeding.err;
  EXPECT_NE(seeding.out.find("pghandoff seed"), std::string::npos) << seeding.out;
}

TEST_F(PhaseBarrier, SavedPhaseIsRestoredAndNeverGuessed) {
  // Seeding needs the target (its journal is replayed there): without
  // target.url, refuse to start, naming the file.
  const std::string file = proxy_->stateDir() + "/phase";
  proxy_->stop();
  std::ofstream(file) << "seeding\n";
  try {
    proxy_->restart();
    FAIL() << "the proxy started in seeding without a target";
  } catch (const std::runtime_error&) {
  }
  EXPECT_NE(proxy_->log().find(file + " says the migration is in phase seeding, which needs the "
                                      "target"),
            std::string::npos)
      << proxy_->log();
  // A phase that needs the target, with no target.url configured.
  std::ofstream(file, std::ios::trunc) << "mirror\n";
  EXPECT_THROW(proxy_->restart(), std::runtime_error);
  EXPECT_NE(proxy_->log().find(file + " says the migration is in phase mirror, which needs the "
                                      "target, but target.url is not set"),
            std::string::npos)
      << proxy_->log();
  // A corrupt file: refuse, naming the file.
  std::ofstream(file, std::ios::trunc) << "mirr0r\n";
  EXPECT_THROW(proxy_->restart(), std::runtime_error);
  EXPECT_NE(proxy_->log().find(file + " does not hold a phase name"), std::string::npos)
      << proxy_->log();
  // The saved source-only starts.
  std::ofstream(file, std::ios::trunc) << "source-only\n";
  proxy_->restart();
  EXPECT_EQ(proxy_->http("GET", "/phase").body, R"({"phase":"source-only"})");
}

}  // namespace
}  // namespace pghandoff::test
