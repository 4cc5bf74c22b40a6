// mirror.mode async (issue 4 item 5; SPEC §2): the authoritative side
// acknowledges once the transaction is durably journaled, and the journal is
// applied to the other side in commit order. mirror_lag_seconds and
// mirror_queue_transactions say how far behind it is; a flip waits at its
// barrier until nothing is left to apply. Applied transactions record their
// number on the destination, so a replay started again (the proxy killed,
// the destination restarted) applies none twice.

#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/pg_cluster.h"
#include "tests/support/pq.h"
#include "tests/support/process.h"
#include "tests/support/proxy_process.h"
#include "tests/support/workload.h"

namespace pghandoff::test {
namespace {

using namespace std::chrono_literals;

constexpr const char* kSchema =
    "CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL); "
    "INSERT INTO acct SELECT g, 0 FROM generate_series(1, 10) g; "
    "CREATE TABLE events (n int, note text)";  // no primary key: a duplicate shows

constexpr const char* kLedger =
    "CREATE TABLE ledger (id bigserial PRIMARY KEY, client text, k int, amount numeric, note "
    "text, created_at timestamptz DEFAULT now(), u uuid DEFAULT gen_random_uuid())";

// The async journal's segment files under the state directory.
int segmentFiles(const std::string& stateDir) {
  int n = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(stateDir, ec)) {
    if (e.path().filename().string().rfind("mirror-journal.", 0) == 0) ++n;
  }
  return n;
}

class AsyncMirror : public ::testing::Test {
 protected:
  void SetUp() override {
    source_ = std::make_unique<PgCluster>();
    target_ = std::make_unique<PgCluster>();
  }
  void TearDown() override {
    if (HasFailure() && proxy_) proxy_->printLogTail(12000);
    if (HasFailure()) {
      // Which rows differ: a row twice on one side, or missing on the other.
      const char* dupes =
          "SELECT n, note, count(*) FROM events GROUP BY 1, 2 HAVING count(*) > 1 ORDER BY 1";
      try {
        std::cerr << "events twice on the source: " << source_->psql(dupes) << "\n"
                  << "events twice on the target: " << target_->psql(dupes) << "\n";
      } catch (const std::exception& e) {
        std::cerr << "events not compared: " << e.what() << "\n";
      }
    }
    proxy_.reset();
  }
  void startProxy(const std::string& segment = {}) {
    ProxyOptions o;
    o.journalSegment = segment;
    o.sourceUrl = source_->url();
    o.targetUrl = target_->url();
    o.logLevel = "info";
    // mirror.timeout short: were the mirror synchronous, a blocked target
    // would fail the writes below within it.
    o.extraYaml = "mirror: { mode: async, timeout: 2s }";
    proxy_ = std::make_unique<ProxyProcess>(o);
  }
  // Both servers with kSchema (and `targetExtra` on the target alone), the
  // proxy in phase mirror.
  void startMirroring(const std::string& segment = {}, const std::string& targetExtra = {}) {
    source_->psql(kSchema);
    target_->psql(kSchema);
    if (!targetExtra.empty()) target_->psql(targetExtra);
    startProxy(segment);
    ASSERT_EQ(flip("mirror").status, 200);
  }
  HttpResponse flip(const std::string& to, const std::string& drain = "5s") {
    return proxy_->http("POST", "/phase",
                        R"({"phase":")" + to + R"(","drain_timeout":")" + drain + R"("})");
  }
  std::string phase() {
    auto r = proxy_->http("GET", "/phase");
    std::smatch m;
    static const std::regex re("\"phase\":\"([a-z-]+)\"");
    return std::regex_search(r.body, m, re) ? m[1].str() : r.body;
  }
  double queue() { return proxy_->metric("pghandoff_mirror_queue_transactions"); }
  double lag() { return proxy_->metric("pghandoff_mirror_lag_seconds"); }
  bool drained(std::chrono::milliseconds within = 20s) {
    return waitFor([&] { return queue() == 0 && lag() == 0; }, within, 50ms);
  }
  std::unique_ptr<PgCluster> source_, target_;
  std::unique_ptr<ProxyProcess> proxy_;
};

// Writes are acknowledged while the target cannot take them (a lock held on
// it); the lag and the queue show it; a flip to mirror-read-target cannot
// pass its barrier until the replay is done: refused past its drain timeout
// (phase unchanged, writes go on), and let through once the lock goes.
TEST_F(AsyncMirror, AcknowledgesAheadOfTheTargetAndTheFlipWaitsForIt) {
  startMirroring();
  PqConn app(proxy_->url());
  ASSERT_TRUE(app.ok()) << app.error();
  app.execOrThrow("UPDATE acct SET v = v + 1 WHERE id = 1");
  ASSERT_TRUE(drained());
  EXPECT_EQ(target_->psql("SELECT v FROM acct WHERE id = 1"), "1");
  auto status = proxy_->http("GET", "/status").body;
  EXPECT_NE(status.find(R"("state":"async")"), std::string::npos) << status;
  EXPECT_NE(status.find(R"("applying_to":"target")"), std::string::npos) << status;

  // The target held up: every write still acknowledged (in sync mode each
  // would fail at mirror.timeout).
  PqConn locker(target_->url());
  ASSERT_TRUE(locker.ok()) << locker.error();
  locker.execOrThrow("BEGIN");
  locker.execOrThrow("LOCK TABLE acct IN ACCESS EXCLUSIVE MODE");
  for (int i = 0; i < 20; ++i) {
    app.execOrThrow("UPDATE acct SET v = v + 1 WHERE id = " + std::to_string(1 + i % 3));
  }
  app.execOrThrow("BEGIN");
  app.execOrThrow("INSERT INTO events VALUES (1, 'in a transaction')");
  app.execOrThrow("UPDATE acct SET v = v + 100 WHERE id = 10");
  app.execOrThrow("COMMIT");
  EXPECT_EQ(source_->psql("SELECT sum(v) FROM acct"), "121");
  EXPECT_TRUE(waitFor([&] { return queue() >= 21 && lag() > 0.3; }, 10s, 100ms))
      << "queue " << queue() << ", lag " << lag();
  // SPEC §6 journal_bytes: the async journal's size on disk.
  EXPECT_GT(proxy_->metric("pghandoff_journal_bytes"), 1000.0);
  status = proxy_->http("GET", "/status").body;
  EXPECT_EQ(status.find(R"("queue_transactions":0)"), std::string::npos) << status;

  // The barrier cannot pass while the target is behind.
  auto refused = flip("mirror-read-target", "1s");
  EXPECT_NE(refused.status, 200) << refused.body;
  EXPECT_NE(refused.body.find("left to apply to the target"), std::string::npos) << refused.body;
  EXPECT_EQ(phase(), "mirror");
  app.execOrThrow("UPDATE acct SET v = v + 1 WHERE id = 2");  // traffic resumed

  // Released while the flip waits: it passes, and the target has it all.
  std::atomic<int> flipStatus{0};
  std::string flipBody;
  std::thread flipper([&] {
    auto r = flip("mirror-read-target", "20s");
    flipBody = r.body;
    flipStatus = r.status;
  });
  std::this_thread::sleep_for(800ms);
  EXPECT_EQ(flipStatus.load(), 0) << "the flip passed while the target was behind: " << flipBody;
  locker.execOrThrow("COMMIT");
  flipper.join();
  EXPECT_EQ(flipStatus.load(), 200) << flipBody;
  EXPECT_EQ(phase(), "mirror-read-target");
  EXPECT_EQ(target_->psql("SELECT sum(v) FROM acct"), "122");
  EXPECT_EQ(tableDigest(*source_, "acct"), tableDigest(*target_, "acct"));
  EXPECT_EQ(tableDigest(*source_, "events"), tableDigest(*target_, "events"));
  EXPECT_EQ(queue(), 0);
  EXPECT_EQ(segmentFiles(proxy_->stateDir()), 0);
  // Reads from the target see every acknowledged write (mirror-read-target
  // mirrors in sync).
  EXPECT_EQ(app.exec("SELECT sum(v) FROM acct").value(), "122");
  app.execOrThrow("UPDATE acct SET v = v + 1 WHERE id = 3");
  EXPECT_EQ(app.exec("SELECT v FROM acct WHERE id = 3").value(),
            source_->psql("SELECT v FROM acct WHERE id = 3"));

  // reverse-mirror: the journal applies to the source now.
  ASSERT_EQ(flip("reverse-mirror").status, 200);
  status = proxy_->http("GET", "/status").body;
  EXPECT_NE(status.find(R"("applying_to":"source")"), std::string::npos) << status;
  PqConn srcLocker(source_->url());
  srcLocker.execOrThrow("BEGIN");
  srcLocker.execOrThrow("LOCK TABLE events IN ACCESS EXCLUSIVE MODE");
  for (int i = 0; i < 5; ++i) {
    app.execOrThrow("INSERT INTO events VALUES (" + std::to_string(100 + i) + ", 'reverse')");
  }
  EXPECT_EQ(target_->psql("SELECT count(*) FROM events"), "6");
  EXPECT_TRUE(waitFor([&] { return queue() >= 5; }, 5s, 100ms)) << queue();
  srcLocker.execOrThrow("COMMIT");
  ASSERT_TRUE(drained());
  EXPECT_EQ(tableDigest(*source_, "events"), tableDigest(*target_, "events"));
  // Back to mirror (authority returns to the source): drained at the barrier.
  for (int i = 0; i < 5; ++i) app.execOrThrow("UPDATE acct SET v = v + 1 WHERE id = 4");
  ASSERT_EQ(flip("mirror").status, 200);
  EXPECT_EQ(tableDigest(*source_, "acct"), tableDigest(*target_, "acct"));
  // The replay kept its place in the destination's own schema, which
  // neither verify nor a new seed counts as the application's.
  EXPECT_EQ(target_->psql("SELECT count(*) FROM pghandoff.mirror_position"), "1");
}

// A transaction the target refuses (it holds a row the source does not)
// stops the replay: the status names the error, the flip cannot pass; once
// the target is put right, the replay goes on from that transaction.
TEST_F(AsyncMirror, ATransactionTheTargetRefusesHoldsTheReplayUntilPutRight) {
  startMirroring({}, "INSERT INTO acct VALUES (99, 0)");
  PqConn app(proxy_->url());
  app.execOrThrow("INSERT INTO acct VALUES (99, 5)");  // the source takes it
  app.execOrThrow("INSERT INTO events VALUES (1, 'after')");
  EXPECT_TRUE(waitFor(
      [&] { return proxy_->http("GET", "/status").body.find("replay_error") != std::string::npos; },
      10s, 100ms));
  auto status = proxy_->http("GET", "/status").body;
  EXPECT_NE(status.find("duplicate key"), std::string::npos) << status;
  EXPECT_GE(proxy_->metric(R"(pghandoff_mirror_errors_total{reason="commit_failed"})"), 1.0);
  auto refused = flip("mirror-read-target", "1s");
  EXPECT_NE(refused.status, 200) << refused.body;
  EXPECT_NE(refused.body.find("duplicate key"), std::string::npos) << refused.body;
  EXPECT_EQ(target_->psql("SELECT count(*) FROM events"), "0");  // in order: not past it
  target_->psql("DELETE FROM acct WHERE id = 99");
  ASSERT_TRUE(drained());
  EXPECT_EQ(tableDigest(*source_, "acct"), tableDigest(*target_, "acct"));
  EXPECT_EQ(tableDigest(*source_, "events"), tableDigest(*target_, "events"));
  EXPECT_EQ(proxy_->http("GET", "/status").body.find("replay_error"), std::string::npos);
}

// Back to source-only while the target cannot take what is journaled (it
// refuses it, or it does not answer at all): a rollback is never held up by
// the side it leaves; the target missed writes, so the mirror is marked
// broken and no phase reads from it until a seed.
TEST_F(AsyncMirror, RollbackToSourceOnlyIsNotHeldUpByAStuckTarget) {
  startMirroring();
  PqConn locker(target_->url());
  locker.execOrThrow("BEGIN");
  locker.execOrThrow("LOCK TABLE acct IN ACCESS EXCLUSIVE MODE");
  PqConn app(proxy_->url());
  app.execOrThrow("UPDATE acct SET v = 5 WHERE id = 5");
  EXPECT_TRUE(waitFor([&] { return queue() >= 1 && lag() > 0; }, 5s, 50ms));
  auto r = flip("source-only", "1s");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(phase(), "source-only");
  auto status = proxy_->http("GET", "/status").body;
  EXPECT_NE(status.find(R"("state":"broken")"), std::string::npos) << status;
  EXPECT_EQ(segmentFiles(proxy_->stateDir()), 0);
  app.execOrThrow("INSERT INTO events VALUES (1, 'source-only')");
  EXPECT_EQ(source_->psql("SELECT count(*) FROM events"), "1");
  locker.execOrThrow("COMMIT");
  // Forward again: the target may not serve reads before it is seeded again.
  ASSERT_EQ(flip("mirror").status, 200);
  auto refused = flip("mirror-read-target");
  EXPECT_EQ(refused.status, 409) << refused.body;
  EXPECT_NE(refused.body.find("broken"), std::string::npos) << refused.body;
  EXPECT_EQ(target_->psql("SELECT v FROM acct WHERE id = 5"), "0");  // never applied
}

// The proxy killed with transactions journaled and not yet applied (some
// applied before): restarted, it reopens the journal and applies exactly
// the rest — no row twice (a table without a key would show it), none
// missing — including a session's prepared statements from before.
TEST_F(AsyncMirror, AProxyKilledWithALagAppliesTheRestOnceAfterRestart) {
  startMirroring("2KiB");  // small segments: the lag spans several, cut at barriers
  {
    PqConn app(proxy_->url());
    ASSERT_TRUE(app.prepare("ins", "INSERT INTO events VALUES ($1, 'prepared')").ok);
    for (int i = 0; i < 10; ++i) {
      ASSERT_TRUE(app.execPrepared("ins", {std::to_string(i)}).ok);
    }
    ASSERT_TRUE(drained());
    EXPECT_EQ(target_->psql("SELECT count(*) FROM events"), "10");
    PqConn locker(target_->url());
    locker.execOrThrow("BEGIN");
    locker.execOrThrow("LOCK TABLE events IN ACCESS EXCLUSIVE MODE");
    for (int i = 10; i < 30; ++i) {
      ASSERT_TRUE(app.execPrepared("ins", {std::to_string(i)}).ok);
      // A scrape right after the acknowledgement counts the write (the
      // gauges are computed at the scrape: drained() cannot pass on a value
      // from before it).
      if (i == 10) {
        EXPECT_GE(queue(), 1);
      }
    }
    app.execOrThrow("BEGIN");
    app.execOrThrow("INSERT INTO events VALUES (1000, 'explicit')");
    app.execOrThrow("UPDATE acct SET v = 7 WHERE id = 7");
    app.execOrThrow("COMMIT");
    EXPECT_TRUE(waitFor([&] { return queue() >= 21; }, 5s, 100ms)) << queue();
    // Cut into segments meanwhile (each session's state copied into the new
    // segment at its next transaction).
    EXPECT_TRUE(waitFor(
        [&] {
          return proxy_->http("GET", "/status").body.find(R"("journal_cuts":0)") ==
                 std::string::npos;
        },
        5s, 100ms));
    for (int i = 30; i < 40; ++i) {
      ASSERT_TRUE(app.execPrepared("ins", {std::to_string(i)}).ok);
    }
    EXPECT_GE(segmentFiles(proxy_->stateDir()), 2);
    proxy_->signal(SIGKILL);
    proxy_->waitExit(10s);
    locker.execOrThrow("COMMIT");
  }
  EXPECT_EQ(target_->psql("SELECT count(*) FROM events"), "10");
  proxy_->restart();
  EXPECT_EQ(phase(), "mirror");
  ASSERT_TRUE(drained());
  EXPECT_NE(proxy_->log().find("journal reopened ("), std::string::npos);
  EXPECT_EQ(target_->psql("SELECT count(*), count(DISTINCT n) FROM events"), "41|41");
  EXPECT_EQ(segmentFiles(proxy_->stateDir()), 1);  // the applied ones removed
  EXPECT_EQ(tableDigest(*source_, "events"), tableDigest(*target_, "events"));
  EXPECT_EQ(tableDigest(*source_, "acct"), tableDigest(*target_, "acct"));
  // And it goes on from there.
  PqConn app(proxy_->url());
  app.execOrThrow("INSERT INTO events VALUES (2000, 'after the restart')");
  ASSERT_TRUE(drained());
  EXPECT_EQ(tableDigest(*source_, "events"), tableDigest(*target_, "events"));
}

// The target restarted (crash) while clients write: nothing reaches the
// clients (the journal takes their writes), the replay reconnects, counts
// the loss, and the target ends equal to the source.
TEST_F(AsyncMirror, ATargetCrashIsInvisibleToClientsAndTheReplayCatchesUp) {
  startMirroring();
  PqConn app(proxy_->url());
  std::atomic<bool> stop{false};
  std::atomic<int> written{0}, failed{0};
  std::string firstError;
  std::thread writer([&] {
    while (!stop) {
      auto r = app.exec("INSERT INTO events VALUES (" + std::to_string(written.load()) + ", 'w')");
      if (r.ok) {
        ++written;
      } else if (failed++ == 0) {
        firstError = r.error;
      }
    }
  });
  std::this_thread::sleep_for(500ms);
  target_->kill9();
  std::this_thread::sleep_for(1500ms);
  target_->start();
  std::this_thread::sleep_for(1000ms);
  stop = true;
  writer.join();
  EXPECT_EQ(failed.load(), 0) << firstError;
  EXPECT_GT(written.load(), 50);
  ASSERT_TRUE(drained(30s)) << proxy_->http("GET", "/status").body;
  EXPECT_EQ(target_->psql("SELECT count(*) FROM events"), std::to_string(written.load()));
  EXPECT_EQ(tableDigest(*source_, "events"), tableDigest(*target_, "events"));
  EXPECT_GE(proxy_->metric(R"(pghandoff_mirror_errors_total{reason="target_down"})"), 1.0);
}

// The issue's e2e in async mode: pgbench (-M prepared) and a psycopg2 ledger
// write through the proxy while `pghandoff seed` fills an empty target and
// hands over to the async mirror, then through the walk to target-only.
// Zero client errors; identical at reverse-mirror; every acknowledged ledger
// row on the target.
TEST_F(AsyncMirror, SeedThenTheWholeWalkWithClientsWriting) {
  source_->pgbenchInit(5);
  source_->psql(kLedger);
  startProxy("64KiB");  // cut into segments under load
  ClientWorkload clients;
  clients.start(*proxy_, 14);
  std::this_thread::sleep_for(1000ms);
  ProcessResult seeded =
      run({PGHANDOFF_BINARY, "seed", "--config", proxy_->configFile(), "--jobs", "2"}, {}, 120s);
  EXPECT_EQ(seeded.exitCode, 0) << seeded.out << seeded.err;
  EXPECT_EQ(phase(), "mirror");
  // The journal is cut under load (64 KiB segments; a slow machine takes
  // longer to write them).
  std::string status;
  EXPECT_TRUE(waitFor(
      [&] {
        status = proxy_->http("GET", "/status").body;
        return status.find(R"("journal_cuts":0)") == std::string::npos;
      },
      30s, 100ms))
      << status;
  EXPECT_NE(status.find(R"("state":"async")"), std::string::npos) << status;
  std::this_thread::sleep_for(1000ms);
  for (const char* p : {"mirror-read-target", "reverse-mirror"}) {
    auto r = flip(p);
    EXPECT_EQ(r.status, 200) << r.body;
    std::this_thread::sleep_for(1500ms);
  }
  clients.join();
  ASSERT_TRUE(drained());
  clients.expectClean();
  EXPECT_EQ(target_->psql(clients.ledgerQuery()), clients.ledgerAcked());
  for (const char* t :
       {"pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history", "ledger"}) {
    EXPECT_EQ(tableDigest(*source_, t), tableDigest(*target_, t)) << t;
  }
  // verify agrees (the proxy's pghandoff schema is not the application's).
  ProcessResult v = run({PGHANDOFF_BINARY, "verify", "--config", proxy_->configFile()}, {}, 120s);
  EXPECT_EQ(v.exitCode, 0) << v.out << v.err;
  auto r = flip("target-only");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_NE(proxy_->http("GET", "/status").body.find("\"divergences\":0,"), std::string::npos);
  EXPECT_EQ(proxy_->log().find("divergence ("), std::string::npos);
  // Applied segments are removed (a spare one a journal cut had made ready
  // goes at the cut loop's next turn, within half a second).
  EXPECT_TRUE(waitFor([&] { return segmentFiles(proxy_->stateDir()) == 0; }, 2s, 50ms))
      << segmentFiles(proxy_->stateDir());
}

}  // namespace
}  // namespace pghandoff::test
