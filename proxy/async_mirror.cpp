// mirror.mode async (SPEC §2; issue 4): the authoritative side acknowledges
// once the transaction is durably journaled, and the journal is applied to
// the other side in commit order by a replay running beside the sessions.
//
// The journal is the seed's (proxy/journal.h), standing in for the side
// that is not authoritative: the target in `mirror`, the source in
// `reverse-mirror`. `mirror-read-target` serves reads from the target, which
// must then hold every acknowledged write (read-your-writes): it mirrors in
// sync, and the flip into it waits until the replay has applied everything.
// Every phase change does: at the barrier the replay is run to the end
// (bounded by the flip's drain timeout; past it the phase stays), the
// journal is removed, and the new phase gets a new one.
//
// Each applied transaction records its number on the destination, in the
// same transaction (pghandoff.mirror_position): a replay started again — the
// destination's connection lost, the proxy restarted — applies none twice.
#include <spdlog/spdlog.h>

#include "proxy/server.h"

namespace pghandoff::proxy {

namespace {

using Clock = std::chrono::steady_clock;

std::filesystem::path mirrorJournalFile(const config::Config& cfg) {
  return std::filesystem::path(cfg.state.dir) / "mirror-journal";
}

double nowMicros() {
  return static_cast<double>(std::chrono::duration_cast<std::chrono::microseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count());
}

}  // namespace

bool ProxyServer::asyncPhase(Phase p) {
  // mirror.mode cannot change without a restart (reload keeps it).
  auto rt = runtime();
  return rt->cfg.mirror.mode == config::MirrorMode::kAsync && rt->target &&
         (p == Phase::kMirror || p == Phase::kReverseMirror);
}

bool ProxyServer::asyncCaughtUp() const {
  if (!async_.journal) return true;
  if (async_.replay == nullptr) return false;
  const auto& st = async_.replay->stats();
  return st.queued == 0 && st.readBytes >= async_.journal->durableBytes() &&
         st.done() >= async_.journal->transactions();
}

std::uint64_t ProxyServer::asyncQueue() const {
  if (!async_.journal) return 0;
  const std::uint64_t written = async_.journal->transactions();
  const std::uint64_t done = async_.replay != nullptr ? async_.replay->stats().done() : 0;
  return written > done ? written - done : 0;
}

double ProxyServer::asyncLagSeconds() const {
  if (!async_.journal || asyncCaughtUp()) return 0;
  const std::uint64_t oldest = async_.replay != nullptr ? async_.replay->stats().oldestAt : 0;
  if (oldest != 0) return std::max(0.0, (nowMicros() - static_cast<double>(oldest)) / 1e6);
  return std::chrono::duration<double>(Clock::now() - async_.caughtUpAt).count();
}

void ProxyServer::asyncStart(std::shared_ptr<Journal> journal, bool toSource) {
  async_.journal = std::move(journal);
  async_.toSource = toSource;
  async_.error.clear();
  async_.caughtUpAt = Clock::now();
  registry_.setJournal(async_.journal);
  async_.running = true;
  asio::co_spawn(mainIo_, asyncApplyLoop(++async_.generation), asio::detached);
}

awaitable<void> ProxyServer::asyncStop() {
  ++async_.generation;
  asio::steady_timer t(mainIo_);
  // The loop ends at its next turn (it is idle: the caller waited for it to
  // catch up, or it is between attempts).
  while (async_.running) {
    t.expires_after(std::chrono::milliseconds(1));
    co_await t.async_wait(kUseAwaitable);
  }
  if (async_.journal) {
    async_.journal->close();
    std::error_code ec;
    std::filesystem::remove(async_.journal->file(), ec);
    async_.journal.reset();
  }
  async_.error.clear();
  metrics().mirrorLagSeconds().set(0);
  metrics().mirrorQueueTransactions().set(0);
}

awaitable<void> ProxyServer::asyncApplyLoop(std::uint64_t generation) {
  auto rt = runtime();
  auto journal = async_.journal;
  asio::steady_timer timer(mainIo_);
  std::unique_ptr<JournalReplay> replay;
  std::string lastError;
  while (!shuttingDown_ && async_.generation == generation) {
    if (!replay) {
      ReplayOptions options;
      options.toSource = async_.toSource;
      options.positioned = true;
      options.journalId = journal->id();
      options.application = "pghandoff async mirror";
      replay = std::make_unique<JournalReplay>(rt, mainIo_.get_executor(), journal->file(),
                                               PgSnapshot{}, options);
      async_.replay = replay.get();
    }
    const std::uint64_t before = replay->stats().done();
    auto err = co_await replay->run(journal->durableBytes(), async_.urgent);
    if (err) {
      // The destination went away, or refused what the authoritative side
      // committed: started again from the journal's beginning (the
      // position skips what was applied) after a pause.
      metrics()
          .mirrorErrorsTotal(err->find("lost") != std::string::npos ||
                                     err->find("cannot") != std::string::npos
                                 ? labels::MirrorErrorReason::kTargetDown
                                 : labels::MirrorErrorReason::kCommitFailed)
          .inc();
      if (*err != lastError) {
        spdlog::error("async mirror: {}; trying again", *err);
        lastError = *err;
      }
      async_.error = *err;
      ++async_.restarts;
      async_.replay = nullptr;
      replay->close();
      replay.reset();
      timer.expires_after(std::chrono::seconds(1));
      error_code ec;
      co_await timer.async_wait(asio::redirect_error(kUseAwaitable, ec));
      continue;
    }
    if (!lastError.empty()) {
      spdlog::info("async mirror: applying again");
      lastError.clear();
      async_.error.clear();
    }
    if (asyncCaughtUp()) async_.caughtUpAt = Clock::now();
    if (replay->stats().done() == before) {
      timer.expires_after(std::chrono::milliseconds(2));
      error_code ec;
      co_await timer.async_wait(asio::redirect_error(kUseAwaitable, ec));
    }
  }
  async_.replay = nullptr;
  if (replay) replay->close();
  async_.running = false;
}

awaitable<void> ProxyServer::asyncMetricsLoop() {
  asio::steady_timer timer(mainIo_);
  while (!shuttingDown_) {
    metrics().mirrorLagSeconds().set(asyncLagSeconds());
    metrics().mirrorQueueTransactions().set(static_cast<std::int64_t>(asyncQueue()));
    timer.expires_after(std::chrono::milliseconds(200));
    error_code ec;
    co_await timer.async_wait(asio::redirect_error(kUseAwaitable, ec));
  }
}

awaitable<void> ProxyServer::asyncPreDrain(Clock::time_point deadline) {
  if (!async_.journal) co_return;
  asio::steady_timer t(mainIo_);
  while (Clock::now() < deadline && asyncQueue() > 100) {
    t.expires_after(std::chrono::milliseconds(5));
    co_await t.async_wait(kUseAwaitable);
  }
}

awaitable<std::optional<std::string>> ProxyServer::asyncSwitch(Phase to,
                                                               Clock::time_point deadline) {
  if (async_.journal) {
    // Every transaction has drained: what is journaled is all there will be.
    async_.urgent = true;
    asio::steady_timer t(mainIo_);
    while (!asyncCaughtUp() && Clock::now() < deadline) {
      t.expires_after(std::chrono::milliseconds(1));
      co_await t.async_wait(kUseAwaitable);
    }
    async_.urgent = false;
    if (!asyncCaughtUp()) {
      std::string why = "the async mirror has " + std::to_string(asyncQueue()) +
                        " transactions left to apply to the " +
                        (async_.toSource ? "source" : "target");
      if (!async_.error.empty()) why += " (" + async_.error + ")";
      co_return why + " after the drain timeout";
    }
    co_await asyncStop();
  }
  if (asyncPhase(to)) {
    try {
      asyncStart(Journal::create(mirrorJournalFile(runtime()->cfg)), targetAuthoritative(to));
    } catch (const std::exception& e) {
      registry_.setJournal(nullptr);
      co_return std::string("cannot start the async mirror's journal: ") + e.what();
    }
  } else {
    registry_.setJournal(nullptr);
  }
  co_return std::nullopt;
}

void ProxyServer::asyncRestore(Phase current) {
  if (current == Phase::kSeeding) {
    registry_.setJournal(seed_.journal);
    return;
  }
  if (asyncPhase(current)) {
    if (async_.journal && async_.toSource == targetAuthoritative(current)) {
      registry_.setJournal(async_.journal);
      return;
    }
    // The journal of the phase that stays was applied and removed already.
    if (async_.journal) {
      // The new phase's, never used: no session began since.
      ++async_.generation;
      async_.journal->close();
      std::error_code ec;
      std::filesystem::remove(async_.journal->file(), ec);
      async_.journal.reset();
    }
    try {
      asyncStart(Journal::create(mirrorJournalFile(runtime()->cfg)), targetAuthoritative(current));
    } catch (const std::exception& e) {
      spdlog::error("async mirror: cannot start a journal: {}", e.what());
      registry_.setJournal(nullptr);
    }
    return;
  }
  registry_.setJournal(nullptr);
}

void ProxyServer::asyncAtStartup() {
  auto rt = runtime();
  const Phase now = phases_->current();
  const auto file = mirrorJournalFile(rt->cfg);
  std::error_code ec;
  const bool exists = std::filesystem::exists(file, ec);
  if (asyncPhase(now)) {
    std::shared_ptr<Journal> journal;
    if (exists) {
      journal = Journal::reopen(file);
      spdlog::info(
          "async mirror: journal {} reopened ({} transactions); applied from where the {} "
          "stands",
          file.string(), journal->transactions(), targetAuthoritative(now) ? "source" : "target");
    } else {
      journal = Journal::create(file);
    }
    asyncStart(std::move(journal), targetAuthoritative(now));
  } else if (exists) {
    // Left by a run in another phase or mode: what it holds may never have
    // reached the other side.
    auto journal = Journal::reopen(file);
    const auto n = journal->transactions();
    journal->close();
    if (n > 0 && writesBoth(now)) {
      spdlog::error(
          "an async mirror journal with {} transactions is left in {} but phase {} does not use "
          "one (mirror.mode {}): the mirror is marked broken; seed the other side again",
          n, file.string(), phaseName(now),
          rt->cfg.mirror.mode == config::MirrorMode::kAsync ? "async" : "sync");
      registry_.markMirrorBroken();
    }
    std::filesystem::remove(file, ec);
  }
  asio::co_spawn(mainIo_, asyncMetricsLoop(), asio::detached);
}

}  // namespace pghandoff::proxy
