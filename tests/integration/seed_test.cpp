// pghandoff seed (issue 4, SPEC §1 seeding, §3 seed; DESIGN hard problem 6):
// the target starts empty; writes keep flowing through the proxy while the
// seed dumps the source at a snapshot, restores the target and replays the
// catch-up journal; no acknowledged write is lost or applied twice, and the
// two databases are identical afterwards. Also: a non-empty target is
// refused; a seed whose command vanished (its lease lapsed) goes back to
// source-only; a proxy killed during seeding comes back with its journal and
// the seed can be run again.

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <signal.h>

#include <atomic>
#include <filesystem>
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

constexpr const char* kLedger =
    "CREATE TABLE ledger (id bigserial PRIMARY KEY, client text, k int, amount numeric, note "
    "text, created_at timestamptz DEFAULT now(), u uuid DEFAULT gen_random_uuid())";

class Seed : public ::testing::Test {
 protected:
  void SetUp() override {
    source_ = std::make_unique<PgCluster>();
    target_ = std::make_unique<PgCluster>();
    ProxyOptions o;
    o.sourceUrl = source_->url();
    o.targetUrl = target_->url();
    o.logLevel = "info";
    proxy_ = std::make_unique<ProxyProcess>(o);
  }
  void TearDown() override {
    if (HasFailure() && proxy_) proxy_->printLogTail(12000);
    proxy_.reset();
  }
  ProcessResult seed(std::vector<std::string> extra = {},
                     std::chrono::milliseconds timeout = 300s) {
    std::vector<std::string> argv{PGHANDOFF_BINARY,     "seed",   "--config",
                                  proxy_->configFile(), "--jobs", "2"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return run(argv, {}, timeout);
  }
  std::string phase() {
    auto r = proxy_->http("GET", "/phase");
    std::smatch m;
    static const std::regex re("\"phase\":\"([a-z-]+)\"");
    return std::regex_search(r.body, m, re) ? m[1].str() : r.body;
  }
  // The seed command's steps by hand: the snapshot's name from POST /seed/start,
  // a dump of it restored into the target, then POST /seed/finish and its end.
  std::string startByHand() {
    auto r = proxy_->http("POST", "/seed/start");
    EXPECT_EQ(r.status, 200) << r.body;
    std::smatch m;
    EXPECT_TRUE(std::regex_search(r.body, m, std::regex("\"snapshot\":\"([^\"]+)\""))) << r.body;
    return m.empty() ? std::string() : m[1].str();
  }
  void dumpAndRestoreByHand(const std::string& snapshot) {
    const std::map<std::string, std::string> srcEnv{{"PGPASSWORD", source_->superPassword()}};
    const std::map<std::string, std::string> tgtEnv{{"PGPASSWORD", target_->superPassword()}};
    TempDir dir;
    ProcessResult dump = run(
        {pgBinDir() + "/pg_dump", "-Fd", "-f", dir.path() + "/d", "--snapshot=" + snapshot, "-h",
         "127.0.0.1", "-p", std::to_string(source_->port()), "-U", "postgres", "postgres"},
        srcEnv, 60s);
    ASSERT_EQ(dump.exitCode, 0) << dump.err;
    ProcessResult restore = run(
        {pgBinDir() + "/pg_restore", "--no-owner", "--no-acl", "-h", "127.0.0.1", "-p",
         std::to_string(target_->port()), "-U", "postgres", "-d", "postgres", dir.path() + "/d"},
        tgtEnv, 60s);
    ASSERT_EQ(restore.exitCode, 0) << restore.err;
  }
  void finishByHand() {
    auto f = proxy_->http("POST", "/seed/finish");
    ASSERT_EQ(f.status, 202) << f.body;
    std::string state;
    EXPECT_TRUE(waitFor(
        [&] {
          state = proxy_->http("GET", "/seed").body;
          return state.find("\"stage\":\"catching-up\"") == std::string::npos;
        },
        30s, 100ms));
    EXPECT_NE(state.find("\"stage\":\"done\""), std::string::npos) << state;
    EXPECT_EQ(phase(), "mirror");
  }
  std::unique_ptr<PgCluster> source_, target_;
  std::unique_ptr<ProxyProcess> proxy_;
};

// The issue's e2e: pgbench (-M prepared) and a psycopg2 ledger (bigserial,
// now() and uuid defaults; autocommit and transactions) write through the
// proxy all through the seed and then the walk to reverse-mirror. Zero
// client errors; every acknowledged ledger row on the target; identical
// databases at reverse-mirror.
TEST_F(Seed, SeedsAnEmptyTargetWhileClientsWrite) {
  source_->pgbenchInit(5);
  source_->psql(kLedger);
  source_->psql(
      "INSERT INTO ledger (client, k) SELECT 'before', g FROM generate_series(1, 20000) g");
  ClientWorkload clients;
  clients.start(*proxy_, 14);
  std::this_thread::sleep_for(1500ms);
  ProcessResult seeded = seed();
  EXPECT_EQ(seeded.exitCode, 0) << seeded.out << seeded.err;
  EXPECT_EQ(phase(), "mirror");
  // Mirrored writes after the seed, then the reads and authority move.
  std::this_thread::sleep_for(2000ms);
  for (const char* p : {"mirror-read-target", "reverse-mirror"}) {
    auto r = proxy_->http("POST", "/phase", std::string(R"({"phase":")") + p + R"("})");
    EXPECT_EQ(r.status, 200) << r.body;
    std::this_thread::sleep_for(1000ms);
  }
  clients.join();
  clients.expectClean();
  EXPECT_EQ(target_->psql(clients.ledgerQuery()), clients.ledgerAcked());
  EXPECT_EQ(source_->psql(clients.ledgerQuery()), clients.ledgerAcked());
  for (const char* t :
       {"pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history", "ledger"}) {
    EXPECT_EQ(tableDigest(*source_, t), tableDigest(*target_, t)) << t;
  }
  // The journal was used: writes made during the seed came through it.
  EXPECT_NE(seeded.out.find("journaled transactions applied"), std::string::npos) << seeded.out;
  std::smatch applied;
  ASSERT_TRUE(
      std::regex_search(seeded.out, applied, std::regex("catch-up [0-9.]+ s: (\\d+) journaled")))
      << seeded.out;
  EXPECT_GT(std::stoi(applied[1].str()), 0) << seeded.out;
  EXPECT_NE(proxy_->http("GET", "/status").body.find("\"divergences\":0,"), std::string::npos);
  EXPECT_EQ(proxy_->log().find("divergence ("), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(proxy_->stateDir() + "/journal"));
}

TEST_F(Seed, RefusesATargetThatHoldsDataUnlessToldToClean) {
  source_->psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)");
  target_->psql("CREATE TABLE stray (x int); INSERT INTO stray VALUES (7)");
  ProcessResult r = seed();
  EXPECT_EQ(r.exitCode, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("already holds"), std::string::npos) << r.err;
  EXPECT_EQ(phase(), "source-only");
  EXPECT_EQ(target_->psql("SELECT count(*) FROM stray"), "1");
  r = seed({"--clean"});
  EXPECT_EQ(r.exitCode, 0) << r.out << r.err;
  EXPECT_EQ(phase(), "mirror");
  EXPECT_EQ(target_->psql("SELECT count(*) FROM t"), "2");
  EXPECT_EQ(target_->psql("SELECT count(*) FROM pg_class WHERE relname = 'stray'"), "0");
}

// A seed whose command is gone (no heartbeat within the lease) goes back to
// source-only, and its journal is removed; the source saw nothing else.
TEST_F(Seed, ALapsedLeaseGoesBackToSourceOnly) {
  source_->psql("CREATE TABLE t (id serial PRIMARY KEY, v int)");
  auto r = proxy_->http("POST", "/seed/start");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(phase(), "seeding");
  {
    PqConn c(proxy_->url());
    ASSERT_TRUE(c.ok()) << c.error();
    c.execOrThrow("INSERT INTO t (v) VALUES (1)");
  }
  EXPECT_TRUE(std::filesystem::exists(proxy_->stateDir() + "/journal"));
  EXPECT_TRUE(waitFor([&] { return phase() == "source-only"; }, 30s, 200ms)) << phase();
  EXPECT_FALSE(std::filesystem::exists(proxy_->stateDir() + "/journal"));
  EXPECT_EQ(proxy_->metric("pghandoff_journal_bytes"), 0.0);
  EXPECT_EQ(source_->psql("SELECT count(*) FROM t"), "1");
  PqConn c(proxy_->url());
  ASSERT_TRUE(c.ok()) << c.error();
  c.execOrThrow("INSERT INTO t (v) VALUES (2)");
  EXPECT_EQ(source_->psql("SELECT count(*) FROM t"), "2");
}

// The proxy killed during seeding: it comes back in seeding with its journal
// (the snapshot is gone: the seed cannot finish), and a new seed succeeds.
TEST_F(Seed, AProxyKilledDuringSeedingKeepsItsJournalAndTheSeedRunsAgain) {
  source_->psql("CREATE TABLE t (id serial PRIMARY KEY, v int, at timestamptz DEFAULT now())");
  auto r = proxy_->http("POST", "/seed/start");
  ASSERT_EQ(r.status, 200) << r.body;
  {
    PqConn c(proxy_->url());
    ASSERT_TRUE(c.ok()) << c.error();
    for (int i = 0; i < 10; ++i)
      c.execOrThrow("INSERT INTO t (v) VALUES (" + std::to_string(i) + ")");
  }
  const auto size = std::filesystem::file_size(proxy_->stateDir() + "/journal");
  EXPECT_GT(size, 200u);
  // SPEC §6: journal_bytes, the journal's size on disk (as of the scrape).
  EXPECT_GE(proxy_->metric("pghandoff_journal_bytes"), double(size));
  EXPECT_EQ(proxy_->metric(R"(pghandoff_phase{phase="seeding"})"), 1.0);
  proxy_->signal(SIGKILL);
  proxy_->waitExit(10s);
  proxy_->restart();
  EXPECT_EQ(phase(), "seeding");
  auto s = proxy_->http("GET", "/seed");
  EXPECT_NE(s.body.find("\"stage\":\"orphaned\""), std::string::npos) << s.body;
  EXPECT_NE(s.body.find("\"journal_transactions\":\"10\""), std::string::npos) << s.body;
  EXPECT_GE(std::filesystem::file_size(proxy_->stateDir() + "/journal"), size);
  // Writes go on meanwhile (journaled, on the source).
  {
    PqConn c(proxy_->url());
    ASSERT_TRUE(c.ok()) << c.error();
    c.execOrThrow("INSERT INTO t (v) VALUES (100)");
  }
  auto f = proxy_->http("POST", "/seed/finish");
  EXPECT_EQ(f.status, 409) << f.body;
  ProcessResult again = seed();
  EXPECT_EQ(again.exitCode, 0) << again.out << again.err;
  EXPECT_EQ(phase(), "mirror");
  EXPECT_EQ(tableDigest(*source_, "t"), tableDigest(*target_, "t"));
  EXPECT_EQ(target_->psql("SELECT count(*) FROM t"), "11");
}

// The proxy's side alone, driven through the admin API as the seed command
// drives it, around a dump and restore made by hand: a session writes, sets
// its search_path and prepares a statement, reads a lot through the extended
// protocol (every Parse reaches its journal stream, which is compacted to
// the session state past 1 MiB), then writes into an unqualified table and
// through the prepared statement. The replay must write where the source did.
TEST_F(Seed, JournalReplayKeepsSessionStateAcrossALongReadOnlyStretch) {
  source_->psql(
      "CREATE SCHEMA app; CREATE TABLE app.t (id serial PRIMARY KEY, v text, at timestamptz "
      "DEFAULT now()); CREATE TABLE public.t (id int)");
  PqConn c(proxy_->url());
  ASSERT_TRUE(c.ok()) << c.error();
  auto r = proxy_->http("POST", "/seed/start");
  ASSERT_EQ(r.status, 200) << r.body;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.body, m, std::regex("\"snapshot\":\"([^\"]+)\""))) << r.body;
  const std::string snapshot = m[1].str();
  // The first write opens the session's journal stream; the session state
  // set after it lives in the stream until the next write, through the
  // compactions of the read-only stretch.
  c.execOrThrow("INSERT INTO app.t (v) VALUES ('first')");
  c.execOrThrow("SET search_path = app");
  ASSERT_TRUE(c.prepare("ins", "INSERT INTO t (v) VALUES ($1)").ok);
  const std::string pad = "/* " + std::string(200, 'x') + " */ ";  // 15000 Parse: ~3.5 MiB
  for (int i = 0; i < 15000; ++i) {
    auto q =
        c.execParams(pad + "SELECT count(*) FROM t WHERE v = $1 OR v IS NULL", {std::to_string(i)});
    ASSERT_TRUE(q.ok) << q.error;
  }
  c.execOrThrow("INSERT INTO t (v) VALUES ('unqualified')");
  ASSERT_TRUE(c.execPrepared("ins", {"prepared"}).ok);
  // The dump and restore, by hand, from the snapshot the proxy exported.
  const std::map<std::string, std::string> srcEnv{{"PGPASSWORD", source_->superPassword()}};
  const std::map<std::string, std::string> tgtEnv{{"PGPASSWORD", target_->superPassword()}};
  TempDir dir;
  ProcessResult dump =
      run({pgBinDir() + "/pg_dump", "-Fd", "-f", dir.path() + "/d", "--snapshot=" + snapshot, "-h",
           "127.0.0.1", "-p", std::to_string(source_->port()), "-U", "postgres", "postgres"},
          srcEnv, 60s);
  ASSERT_EQ(dump.exitCode, 0) << dump.err;
  ProcessResult restore =
      run({pgBinDir() + "/pg_restore", "--no-owner", "--no-acl", "-h", "127.0.0.1", "-p",
           std::to_string(target_->port()), "-U", "postgres", "-d", "postgres", dir.path() + "/d"},
          tgtEnv, 60s);
  ASSERT_EQ(restore.exitCode, 0) << restore.err;
  // The dump holds none of the session's rows: they are all after the snapshot.
  EXPECT_EQ(target_->psql("SELECT count(*) FROM app.t"), "0");
  auto f = proxy_->http("POST", "/seed/finish");
  ASSERT_EQ(f.status, 202) << f.body;
  std::string seedState;
  EXPECT_TRUE(waitFor(
      [&] {
        seedState = proxy_->http("GET", "/seed").body;
        return seedState.find("\"stage\":\"catching-up\"") == std::string::npos;
      },
      30s, 100ms));
  EXPECT_NE(seedState.find("\"stage\":\"done\""), std::string::npos) << seedState;
  EXPECT_EQ(phase(), "mirror");
  EXPECT_EQ(tableDigest(*source_, "app.t"), tableDigest(*target_, "app.t"));
  EXPECT_EQ(target_->psql("SELECT string_agg(v, ',' ORDER BY id) FROM app.t"),
            "first,unqualified,prepared");
  EXPECT_EQ(target_->psql("SELECT count(*) FROM public.t"), "0");
  // The session goes on in mirror with its state and its statement.
  ASSERT_TRUE(c.execPrepared("ins", {"mirrored"}).ok);
  EXPECT_EQ(tableDigest(*source_, "app.t"), tableDigest(*target_, "app.t"));
}

// Ctrl-C during the restore (SIGINT to the command and its tools, as a
// terminal sends it): the proxy goes back to source-only at once, what was
// restored is dropped, the source is untouched. Then a crash at the same
// point (SIGKILL to all of them): the proxy goes back when the lease lapses,
// and the next seed clears the partial restore by itself and succeeds.
TEST_F(Seed, InterruptedOrKilledDuringTheRestoreLeavesTheSourceAloneAndTheRerunStartsClean) {
  source_->pgbenchInit(10);
  const std::string before = tableDigest(*source_, "pgbench_branches");
  auto userTables = [&] {
    return target_->psql(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE "
        "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
        "AND c.relkind = 'r'");
  };
  auto startSeed = [&](Process& p, const std::string& out) {
    p.start({PGHANDOFF_BINARY, "seed", "--config", proxy_->configFile(), "--jobs", "1"}, {}, out);
    // The dump is done (its line printed): the restore is under way.
    return waitFor([&] { return readFile(out).find("dump     ") != std::string::npos; }, 120s,
                   20ms);
  };
  TempDir dir;
  {
    Process p;
    ASSERT_TRUE(startSeed(p, dir.path() + "/int.out")) << readFile(dir.path() + "/int.out");
    ::kill(-p.pid(), SIGINT);
    EXPECT_EQ(p.wait(60s), 130) << readFile(dir.path() + "/int.out");
    const std::string out = readFile(dir.path() + "/int.out");
    EXPECT_NE(out.find("back in source-only"), std::string::npos) << out;
    EXPECT_EQ(phase(), "source-only");
    EXPECT_EQ(userTables(), "0");
  }
  {
    Process p;
    ASSERT_TRUE(startSeed(p, dir.path() + "/kill.out")) << readFile(dir.path() + "/kill.out");
    ::kill(-p.pid(), SIGKILL);
    p.wait(10s);
    EXPECT_EQ(phase(), "seeding");
    EXPECT_TRUE(waitFor([&] { return phase() == "source-only"; }, 30s, 200ms)) << phase();
  }
  EXPECT_EQ(tableDigest(*source_, "pgbench_branches"), before);
  ProcessResult again = seed();
  EXPECT_EQ(again.exitCode, 0) << again.out << again.err;
  EXPECT_EQ(phase(), "mirror");
  for (const char* t : {"pgbench_accounts", "pgbench_branches", "pgbench_tellers"}) {
    EXPECT_EQ(tableDigest(*source_, t), tableDigest(*target_, t)) << t;
  }
}

// Writes in an implicit transaction of the extended protocol spread over
// Flush batches (libpq pipeline mode with flush requests; large JDBC batches
// look the same to the proxy): the Sync commits them, so the source's
// transaction id is asked through the extended protocol (a simple Query would
// commit the implicit transaction). Both rows reach the target, once.
TEST_F(Seed, AnImplicitTransactionOverFlushBatchesIsJournaledWhole) {
  source_->psql("CREATE TABLE p (id int PRIMARY KEY, v text)");
  PqConn c(proxy_->url());
  ASSERT_TRUE(c.ok()) << c.error();
  const std::string snapshot = startByHand();
  c.execOrThrow("INSERT INTO p (id, v) VALUES (0, 'opens the journal')");
  ASSERT_EQ(PQenterPipelineMode(c.raw()), 1);
  for (int i = 1; i <= 3; ++i) {
    const std::string id = std::to_string(i);
    const char* values[] = {id.c_str()};
    ASSERT_EQ(PQsendQueryParams(c.raw(), "INSERT INTO p (id, v) VALUES ($1, 'piped')", 1, nullptr,
                                values, nullptr, nullptr, 0),
              1);
    ASSERT_EQ(PQsendFlushRequest(c.raw()), 1);
    ASSERT_EQ(PQflush(c.raw()), 0);
    std::this_thread::sleep_for(50ms);  // each its own Flush batch at the proxy
  }
  ASSERT_EQ(PQpipelineSync(c.raw()), 1);
  int results = 0;
  bool synced = false;
  while (!synced) {
    PGresult* r = PQgetResult(c.raw());
    if (r == nullptr) continue;
    const auto st = PQresultStatus(r);
    if (st == PGRES_PIPELINE_SYNC) synced = true;
    if (st == PGRES_COMMAND_OK) ++results;
    EXPECT_NE(st, PGRES_FATAL_ERROR) << PQresultErrorMessage(r);
    PQclear(r);
  }
  EXPECT_EQ(results, 3);
  // Again, ending in a duplicate key in the unit with the Sync: the implicit
  // transaction is all or nothing — the proxy's own question before the
  // commit must not have committed the first rows.
  for (int i = 11; i <= 13; ++i) {
    const std::string id = std::to_string(i == 13 ? 11 : i);
    const char* values[] = {id.c_str()};
    ASSERT_EQ(PQsendQueryParams(c.raw(), "INSERT INTO p (id, v) VALUES ($1, 'undone')", 1, nullptr,
                                values, nullptr, nullptr, 0),
              1);
    if (i < 13) {
      ASSERT_EQ(PQsendFlushRequest(c.raw()), 1);
      ASSERT_EQ(PQflush(c.raw()), 0);
      std::this_thread::sleep_for(50ms);
    }
  }
  ASSERT_EQ(PQpipelineSync(c.raw()), 1);
  int errors = 0;
  synced = false;
  while (!synced) {
    PGresult* r = PQgetResult(c.raw());
    if (r == nullptr) continue;
    const auto st = PQresultStatus(r);
    if (st == PGRES_PIPELINE_SYNC) synced = true;
    if (st == PGRES_FATAL_ERROR) ++errors;
    PQclear(r);
  }
  EXPECT_EQ(errors, 1);
  ASSERT_EQ(PQexitPipelineMode(c.raw()), 1);
  EXPECT_EQ(source_->psql("SELECT count(*) FROM p"), "4");
  EXPECT_EQ(source_->psql("SELECT count(*) FROM p WHERE v = 'undone'"), "0");
  dumpAndRestoreByHand(snapshot);
  finishByHand();
  EXPECT_EQ(tableDigest(*source_, "p"), tableDigest(*target_, "p"));
  EXPECT_EQ(target_->psql("SELECT count(*) FROM p WHERE v = 'piped'"), "3");
  EXPECT_EQ(target_->psql("SELECT count(*) FROM p WHERE v = 'undone'"), "0");
}

// --dry-run seeds a scratch database on the target server, reports the
// timings, drops it, and leaves the proxy and the target alone.
TEST_F(Seed, DryRunReportsTimingsAndTouchesNothing) {
  source_->psql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g");
  ProcessResult r = seed({"--dry-run"});
  EXPECT_EQ(r.exitCode, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("dry run done"), std::string::npos) << r.out;
  EXPECT_EQ(phase(), "source-only");
  EXPECT_EQ(
      target_->psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'pghandoff_dryrun%'"),
      "0");
  EXPECT_EQ(target_->psql("SELECT count(*) FROM pg_class WHERE relname = 't'"), "0");
}

}  // namespace
}  // namespace pghandoff::test
