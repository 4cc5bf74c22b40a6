// The proxy's side of `pghandoff seed`: see proxy/seed.h.
#include <spdlog/spdlog.h>

#include <fstream>
#include <sstream>

#include "proxy/admin.h"
#include "proxy/sequence_sync.h"
#include "proxy/server.h"

namespace pghandoff::proxy {

namespace {

using Clock = std::chrono::steady_clock;
using Stage = SeedState::Stage;

// The seed command renews its lease every 2 s; past this, it is gone.
constexpr std::chrono::seconds kSeedLease(15);

const char* stageName(Stage s) {
  switch (s) {
    case Stage::kNone:
      return "none";
    case Stage::kSeeding:
      return "seeding";
    case Stage::kCatchingUp:
      return "catching-up";
    case Stage::kDone:
      return "done";
    case Stage::kFailed:
      return "failed";
    case Stage::kOrphaned:
      return "orphaned";
  }
  return "none";
}

std::string errorJson(const std::string& message, Phase phase) {
  return "{\"error\":\"" + jsonEscape(message) + "\",\"phase\":\"" + std::string(phaseName(phase)) +
         "\"}";
}

std::filesystem::path journalFile(const config::Config& cfg) {
  return std::filesystem::path(cfg.state.dir) / "journal";
}
std::filesystem::path markerFile(const config::Config& cfg) {
  return std::filesystem::path(cfg.state.dir) / "seed-started";
}
std::filesystem::path markerFile(const std::string& stateDir) {
  return std::filesystem::path(stateDir) / "seed-started";
}

}  // namespace

awaitable<AdminReply> ProxyServer::seedAction(std::string action,
                                              std::optional<std::chrono::milliseconds> drain) {
  auto rt = runtime();
  const auto drainFor = drain.value_or(rt->cfg.flip.drainTimeout);
  if (action == "start") co_return co_await seedStart(drainFor);
  if (action == "finish") co_return co_await seedFinish(drainFor);
  if (action == "abort") {
    if (seed_.stage == Stage::kNone && phases_->current() != Phase::kSeeding) {
      co_return AdminReply{200, "{\"phase\":\"" + std::string(phaseName(phases_->current())) +
                                    "\",\"stage\":\"none\"}"};
    }
    // Named: GCC 12 destroys a temporary string of a co_await expression twice.
    const std::string why = "aborted by the seed command";
    co_return co_await seedAbort(why, false, drain);
  }
  if (action == "heartbeat") {
    if (seed_.stage == Stage::kSeeding || seed_.stage == Stage::kCatchingUp ||
        seed_.stage == Stage::kDone) {
      seed_.lastBeat = Clock::now();
      co_return AdminReply{200, seedJson()};
    }
    co_return AdminReply{409, seedJson()};
  }
  co_return AdminReply{404, R"({"error":"not found"})"};
}

std::string ProxyServer::seedJson() const {
  std::ostringstream o;
  o << "{\"stage\":\"" << stageName(seed_.stage) << "\",\"phase\":\""
    << phaseName(phases_->current()) << "\"";
  if (!seed_.snapshotName.empty()) {
    o << ",\"snapshot\":\"" << jsonEscape(seed_.snapshotName) << "\",\"pg_snapshot\":\""
      << jsonEscape(seed_.snapshotText) << "\"";
  }
  // Before a seed starts, the marker an earlier one left says whether the
  // target holds a partial restore.
  std::string previous = seed_.previous;
  if (seed_.stage == Stage::kNone) {
    std::error_code ec;
    previous = std::filesystem::exists(markerFile(runtimeConfigDir_), ec) ? "interrupted" : "none";
  }
  o << ",\"previous\":\"" << previous << "\"";
  if (seed_.journal) {
    o << ",\"journal_bytes\":\"" << seed_.journal->durableBytes()
      << "\",\"journal_transactions\":\"" << seed_.journal->transactions() << "\"";
  } else {
    o << ",\"journal_transactions\":\"" << seed_.journalTransactionsAtEnd << "\"";
  }
  if (seed_.replay) {
    const auto& st = seed_.replay->stats();
    o << ",\"applied\":\"" << st.applied << "\",\"in_snapshot\":\"" << st.inSnapshot
      << "\",\"not_committed\":\"" << st.notCommitted << "\",\"queued\":\"" << st.queued
      << "\",\"statement_errors\":\"" << st.statementErrors << "\",\"replayed_bytes\":\""
      << st.readBytes << "\"";
  }
  if (seed_.barrierMs > 0) o << ",\"barrier_ms\":\"" << seed_.barrierMs << "\"";
  if (!seed_.error.empty()) o << ",\"error\":\"" << jsonEscape(seed_.error) << "\"";
  o << "}";
  return o.str();
}

void ProxyServer::seedAtStartup() {
  if (phases_->current() != Phase::kSeeding) return;
  auto rt = runtime();
  const auto file = journalFile(rt->cfg);
  std::error_code ec;
  if (std::filesystem::exists(file, ec)) {
    seed_.journal = Journal::reopen(file);
    spdlog::warn(
        "started in phase seeding: the journal ({} transactions) goes on, but the seed's snapshot "
        "ended with the earlier process; run pghandoff seed again",
        seed_.journal->transactions());
  } else {
    seed_.journal = Journal::create(file);
    spdlog::warn("started in phase seeding without a journal: run pghandoff seed again");
  }
  registry_.setJournal(seed_.journal);
  seed_.stage = Stage::kOrphaned;
  seed_.error = "the proxy restarted during the seed; its snapshot is gone";
  seed_.previous = "interrupted";
  seed_.lastBeat = Clock::now();
}

void ProxyServer::seedCleanup(bool keepMarker) {
  auto rt = runtime();
  // (An async mirror's journal, set at the flip to mirror, stays.)
  if (registry_.journal() == seed_.journal) registry_.setJournal(nullptr);
  if (seed_.journal) {
    seed_.journalTransactionsAtEnd = seed_.journal->transactions();
    seed_.journal->close();
    std::error_code ec;
    std::filesystem::remove(seed_.journal->file(), ec);
    seed_.journal.reset();
  }
  metrics().journalBytes().set(0);
  if (seed_.snapshotConn) seed_.snapshotConn->stream().close();
  seed_.snapshotConn.reset();
  if (seed_.replay) seed_.replay->close();
  if (!keepMarker) {
    std::error_code ec;
    std::filesystem::remove(markerFile(rt->cfg), ec);
  }
}

awaitable<AdminReply> ProxyServer::seedStart(std::chrono::milliseconds drain) {
  auto rt = runtime();
  if (seed_.busy)
    co_return AdminReply{409, errorJson("a seed step is under way", phases_->current())};
  if (!rt->target) {
    co_return AdminReply{409, errorJson("pghandoff seed needs the target: target.url is not set",
                                        phases_->current())};
  }
  if (phases_->current() == Phase::kSeeding) {
    // A seed run again: the earlier one (its command gone, or the proxy
    // restarted) is given up first.
    const std::string why = "a new seed replaces it";
    auto r = co_await seedAbort(why, true, drain);
    if (r.status != 200) co_return r;
  }
  const Phase from = phases_->current();
  if (from != Phase::kSourceOnly) {
    co_return AdminReply{
        409, errorJson("pghandoff seed starts from phase source-only; the proxy is in " +
                           std::string(phaseName(from)),
                       from)};
  }
  seed_.busy = true;
  seed_.error.clear();
  seed_.barrierMs = 0;
  seed_.replay.reset();
  std::error_code ec;
  seed_.previous = std::filesystem::exists(markerFile(rt->cfg), ec) ? "interrupted" : "none";
  try {
    std::filesystem::create_directories(rt->cfg.state.dir, ec);
    std::ofstream marker(markerFile(rt->cfg), std::ios::trunc);
    marker << "pghandoff seed started; a seed that does not finish leaves the target partly "
              "restored (the next seed clears it)\n";
    seed_.journal = Journal::create(journalFile(rt->cfg));
  } catch (const std::exception& e) {
    seed_.busy = false;
    co_return AdminReply{500, errorJson(e.what(), from)};
  }
  // The session that exports the snapshot, logged in before anything waits.
  seed_.snapshotConn = std::make_shared<ServerConnection>(mainIo_.get_executor(), rt->sourceTls);
  const StartupParams params = {{"application_name", "pghandoff seed snapshot"}};
  LoginResult login =
      co_await seed_.snapshotConn->login(rt->source, params, std::chrono::seconds(10));
  if (!login.ok) {
    seedCleanup(seed_.previous == "interrupted");
    seed_.busy = false;
    co_return AdminReply{503, errorJson("cannot reach the source: " + login.error.message, from)};
  }
  // Writes through a broken mirror went to the source alone: this seed is
  // what repairs it, and from now on the journal records them.
  registry_.clearMirrorBroken();
  registry_.setJournal(seed_.journal);
  auto conn = seed_.snapshotConn;
  std::string* name = &seed_.snapshotName;
  std::string* text = &seed_.snapshotText;
  const PhaseController::BeforeSwitch exportSnapshot =
      [conn, name, text]() -> awaitable<std::optional<std::string>> {
    // No transaction runs through the proxy now: every one that writes from
    // here on starts after this snapshot.
    const std::string begin = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";
    QueryRows b = co_await simpleQuery(*conn, begin);
    if (b.error) co_return "cannot start the snapshot transaction: " + *b.error;
    const std::string exportSql =
        "SELECT pg_catalog.pg_export_snapshot(), pg_catalog.pg_current_snapshot()::text";
    QueryRows e = co_await simpleQuery(*conn, exportSql);
    if (e.error || e.rows.size() != 1 || e.rows[0].size() != 2 || !e.rows[0][0] || !e.rows[0][1]) {
      co_return "cannot export a snapshot on the source: " +
          (e.error ? *e.error : std::string("no answer"));
    }
    *name = *e.rows[0][0];
    *text = *e.rows[0][1];
    co_return std::nullopt;
  };
  const std::function<void()> cancel = [this] { cancelInFlight(); };
  AdminReply reply = co_await phases_->flip(Phase::kSeeding, drain, rt->cfg.flip.onTimeout, cancel,
                                            exportSnapshot);
  if (reply.status != 200 || phases_->current() != Phase::kSeeding) {
    seedCleanup(seed_.previous == "interrupted");
    seed_.snapshotName.clear();
    seed_.snapshotText.clear();
    seed_.busy = false;
    co_return reply;
  }
  seed_.stage = Stage::kSeeding;
  seed_.lastBeat = Clock::now();
  seed_.busy = false;
  spdlog::info("seed: phase seeding, snapshot {} ({}); writes are journaled in {}",
               seed_.snapshotName, seed_.snapshotText, seed_.journal->file().string());
  co_return AdminReply{200, seedJson()};
}

awaitable<AdminReply> ProxyServer::seedFinish(std::chrono::milliseconds drain) {
  if (seed_.busy || seed_.stage == Stage::kCatchingUp) {
    co_return AdminReply{409, errorJson("a seed step is under way", phases_->current())};
  }
  if (seed_.stage != Stage::kSeeding || phases_->current() != Phase::kSeeding) {
    const std::string why = seed_.stage == Stage::kOrphaned
                                ? seed_.error + "; run pghandoff seed again"
                                : std::string("no seed is under way");
    co_return AdminReply{409, errorJson(why, phases_->current())};
  }
  auto snapshot = parsePgSnapshot(seed_.snapshotText);
  if (!snapshot) {
    co_return AdminReply{500, errorJson("the snapshot could not be read", phases_->current())};
  }
  auto rt = runtime();
  seed_.stage = Stage::kCatchingUp;
  seed_.lastBeat = Clock::now();
  seed_.replay =
      std::make_unique<JournalReplay>(rt, mainIo_.get_executor(), seed_.journal->file(), *snapshot);
  asio::co_spawn(mainIo_, seedCatchUp(drain), asio::detached);
  co_return AdminReply{202, seedJson()};
}

awaitable<void> ProxyServer::seedCatchUp(std::chrono::milliseconds drain) {
  auto rt = runtime();
  auto fail = [this](const std::string& why) {
    spdlog::error("seed: {}", why);
    seed_.stage = Stage::kFailed;
    seed_.error = why;
  };
  // 1. While traffic flows, until little is left.
  asio::steady_timer pauseTimer(mainIo_);
  for (int round = 0; round < 100000 && !shuttingDown_; ++round) {
    seed_.lastBeat = Clock::now();
    if (seed_.journal->failed()) {
      fail("the journal could not be written");
      co_return;
    }
    const auto before = seed_.replay->stats();
    auto err = co_await seed_.replay->run(seed_.journal->durableBytes(), false);
    if (err) {
      fail(*err);
      co_return;
    }
    const auto& st = seed_.replay->stats();
    const std::uint64_t unread = seed_.journal->durableBytes() - st.readBytes;
    if (st.queued < 100 && unread < (256u << 10)) break;
    if (st.applied + st.notCommitted + st.inSnapshot ==
        before.applied + before.notCommitted + before.inSnapshot) {
      pauseTimer.expires_after(std::chrono::milliseconds(20));
      co_await pauseTimer.async_wait(kUseAwaitable);
    }
  }
  if (shuttingDown_) {
    fail("the proxy is shutting down");
    co_return;
  }
  // 2. At the barrier: the rest, the sequences, the flip.
  BothServers sides;  // first: the source
  const std::string app = "pghandoff seed";
  if (auto why = co_await connectBoth(false, app, sides)) {
    fail("cannot reach the servers to set the sequences: " + *why);
    co_return;
  }
  auto source = sides.first;
  auto target = sides.second;
  JournalReplay* replay = seed_.replay.get();
  std::shared_ptr<Journal> journal = seed_.journal;
  // mirror.mode async: the mirror's first journal segment, made before the
  // barrier.
  std::shared_ptr<Journal> prepared;
  try {
    prepared = asyncPrepare(Phase::kMirror);
  } catch (const std::exception& e) {
    sides.close();
    fail(std::string("cannot create the async mirror's journal: ") + e.what());
    co_return;
  }
  auto retired = std::make_shared<std::vector<std::shared_ptr<Journal>>>();
  const auto started = std::make_shared<Clock::time_point>();
  const PhaseController::BeforeSwitch rest = [this, replay, journal, source, target, started, drain,
                                              prepared,
                                              retired]() -> awaitable<std::optional<std::string>> {
    *started = Clock::now();
    auto err = co_await replay->run(journal->durableBytes(), true);
    if (err) co_return err;
    std::size_t synced = 0;
    auto seqErr = co_await syncSequences(*source, *target, synced);
    if (seqErr) co_return seqErr;
    spdlog::info(
        "seed: journal replayed ({} transactions applied), {} sequences set from the source",
        replay->stats().applied, synced);
    // mirror.mode async: the mirror's own journal from here on.
    co_return co_await asyncSwitch(Phase::kMirror, Clock::now() + drain, prepared, *retired);
  };
  const std::function<void()> cancel = [this] { cancelInFlight(); };
  AdminReply reply =
      co_await phases_->flip(Phase::kMirror, drain, rt->cfg.flip.onTimeout, cancel, rest);
  sides.close();
  if (phases_->current() != Phase::kMirror) {
    asyncRestore(phases_->current());
    if (prepared && asyncJournal() != prepared) retired->push_back(prepared);
  }
  asyncDispose(std::move(*retired));
  if (reply.status != 200 || phases_->current() != Phase::kMirror) {
    fail("the flip to mirror failed: " + reply.json);
    co_return;
  }
  seed_.barrierMs = std::chrono::duration<double, std::milli>(Clock::now() - *started).count();
  seed_.stage = Stage::kDone;
  seedCleanup(false);
  seed_.snapshotName.clear();
  seed_.snapshotText.clear();
  spdlog::info("seed: done; phase mirror ({} journal transactions replayed)",
               seed_.replay->stats().applied);
}

awaitable<AdminReply> ProxyServer::seedAbort(std::string why, bool keepMarker,
                                             std::optional<std::chrono::milliseconds> drain) {
  if (seed_.busy)
    co_return AdminReply{409, errorJson("a seed step is under way", phases_->current())};
  if (seed_.stage == Stage::kCatchingUp) {
    co_return AdminReply{
        409, errorJson("the journal is being replayed; wait for it to end", phases_->current())};
  }
  auto rt = runtime();
  seed_.busy = true;
  if (phases_->current() == Phase::kSeeding) {
    const std::function<void()> cancel = [this] { cancelInFlight(); };
    AdminReply reply =
        co_await phases_->flip(Phase::kSourceOnly, drain.value_or(rt->cfg.flip.drainTimeout),
                               rt->cfg.flip.onTimeout, cancel);
    if (reply.status != 200) {
      seed_.busy = false;
      co_return reply;
    }
  }
  spdlog::warn("seed: given up ({}); phase source-only, the journal removed", why);
  seedCleanup(keepMarker);
  seed_.snapshotName.clear();
  seed_.snapshotText.clear();
  seed_.stage = Stage::kNone;
  seed_.busy = false;
  co_return AdminReply{200, seedJson()};
}

awaitable<void> ProxyServer::seedLeaseLoop() {
  asio::steady_timer timer(mainIo_);
  while (!shuttingDown_) {
    timer.expires_after(std::chrono::seconds(1));
    error_code ec;
    co_await timer.async_wait(asio::redirect_error(kUseAwaitable, ec));
    if (shuttingDown_) break;
    if (seed_.journal) {
      metrics().journalBytes().set(static_cast<std::int64_t>(seed_.journal->durableBytes()));
    }
    const bool lapsed = Clock::now() - seed_.lastBeat > kSeedLease;
    if (!seed_.busy && lapsed &&
        (seed_.stage == Stage::kSeeding || seed_.stage == Stage::kOrphaned ||
         seed_.stage == Stage::kFailed) &&
        phases_->current() == Phase::kSeeding) {
      const std::string why =
          seed_.stage == Stage::kFailed
              ? "it failed (" + seed_.error + ") and its command is gone"
              : "no word from the seed command for " + std::to_string(kSeedLease.count()) + " s";
      const std::optional<std::chrono::milliseconds> drain;
      auto r = co_await seedAbort(why, true, drain);
      if (r.status != 200) spdlog::warn("seed: could not go back to source-only yet: {}", r.json);
    }
  }
}

}  // namespace pghandoff::proxy
