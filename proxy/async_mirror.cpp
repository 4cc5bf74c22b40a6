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

#include <algorithm>

#include "proxy/server.h"

namespace pghandoff::proxy {

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::string_view kSegmentPrefix = "mirror-journal.";

std::filesystem::path segmentFile(const config::Config& cfg, std::uint64_t number) {
  std::string n = std::to_string(number);
  if (n.size() < 8) n.insert(0, 8 - n.size(), '0');
  return std::filesystem::path(cfg.state.dir) / (std::string(kSegmentPrefix) + n);
}

// The segments under state.dir, by number.
std::vector<std::pair<std::uint64_t, std::filesystem::path>> segmentFiles(
    const config::Config& cfg) {
  std::vector<std::pair<std::uint64_t, std::filesystem::path>> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(cfg.state.dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(kSegmentPrefix, 0) != 0) continue;
    const std::string digits = name.substr(kSegmentPrefix.size());
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    out.emplace_back(std::stoull(digits), e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
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
  if (!asyncJournal()) return true;
  if (async_.segments.size() != 1 || async_.replay == nullptr) return false;
  const auto& st = async_.replay->stats();
  return st.queued == 0 && st.readBytes >= asyncJournal()->durableBytes() &&
         st.done() >= asyncJournal()->transactions();
}

std::uint64_t ProxyServer::asyncQueue() const {
  std::uint64_t written = 0;
  for (const auto& seg : async_.segments) written += seg.journal->transactions();
  const std::uint64_t done = async_.replay != nullptr ? async_.replay->stats().done() : 0;
  return written > done ? written - done : 0;
}

double ProxyServer::asyncLagSeconds() const {
  if (!asyncJournal() || asyncCaughtUp()) return 0;
  const std::uint64_t oldest = async_.replay != nullptr ? async_.replay->stats().oldestAt : 0;
  if (oldest != 0) return std::max(0.0, (nowMicros() - static_cast<double>(oldest)) / 1e6);
  return std::chrono::duration<double>(Clock::now() - async_.caughtUpAt).count();
}

std::shared_ptr<Journal> ProxyServer::asyncPrepare(Phase to) {
  if (!asyncPhase(to)) return nullptr;
  auto journal = Journal::create(segmentFile(runtime()->cfg, async_.nextNumber));
  ++async_.nextNumber;
  return journal;
}

std::shared_ptr<Journal> ProxyServer::asyncNewSegment(std::shared_ptr<Journal> journal) {
  if (!journal) journal = asyncPrepare(Phase::kMirror);
  if (!journal) throw std::runtime_error("mirror.mode is not async");
  auto old = asyncJournal();
  if (!async_.segments.empty()) async_.segments.back().sealed = true;
  async_.segments.push_back({journal, false});
  registry_.setJournal(journal);
  return old;
}

void ProxyServer::asyncDispose(std::vector<std::shared_ptr<Journal>> journals) {
  for (auto& j : journals) {
    if (!j) continue;
    j->close();
    std::error_code ec;
    std::filesystem::remove(j->file(), ec);
  }
}

void ProxyServer::asyncStart(bool toSource) {
  async_.toSource = toSource;
  async_.error.clear();
  async_.caughtUpAt = Clock::now();
  registry_.setJournal(asyncJournal());
  ++async_.loops;
  asio::co_spawn(mainIo_, asyncApplyLoop(++async_.generation), asio::detached);
}

awaitable<std::vector<std::shared_ptr<Journal>>> ProxyServer::asyncStop() {
  ++async_.generation;
  // The loop ends at its next turn: it is idle (the caller waited for it to
  // catch up), between attempts, or — when a flip leaves a destination that
  // does not answer — waiting on it, which closing its connections ends.
  if (async_.replay != nullptr) async_.replay->abort();
  asio::steady_timer t(mainIo_);
  while (async_.loops > 0) {
    t.expires_after(std::chrono::milliseconds(1));
    co_await t.async_wait(kUseAwaitable);
  }
  // Closed and removed by the caller, past the barrier (closing waits for
  // the writer's last fsync).
  std::vector<std::shared_ptr<Journal>> retired;
  for (auto& seg : async_.segments) retired.push_back(seg.journal);
  async_.segments.clear();
  async_.error.clear();
  metrics().mirrorLagSeconds().set(0);
  metrics().mirrorQueueTransactions().set(0);
  co_return retired;
}

awaitable<void> ProxyServer::asyncApplyLoop(std::uint64_t generation) {
  auto rt = runtime();
  asio::steady_timer timer(mainIo_);
  std::unique_ptr<JournalReplay> replay;
  std::string lastError;
  while (!shuttingDown_ && async_.generation == generation && !async_.segments.empty()) {
    // The oldest segment first (a deque's elements stay put as segments are
    // added at the back; only this loop removes from the front).
    const std::shared_ptr<Journal> journal = async_.segments.front().journal;
    if (!replay) {
      ReplayOptions options;
      options.toSource = async_.toSource;
      options.positioned = true;
      options.journalId = journal->id();
      for (std::size_t i = 1; i < async_.segments.size(); ++i) {
        options.laterJournalIds.push_back(async_.segments[i].journal->id());
      }
      options.application = "pghandoff async mirror";
      replay = std::make_unique<JournalReplay>(rt, mainIo_.get_executor(), journal->file(),
                                               PgSnapshot{}, options);
      async_.replay = replay.get();
    }
    const std::uint64_t before = replay->stats().done();
    const bool sealed = async_.segments.front().sealed;
    auto err = co_await replay->run(journal->durableBytes(), async_.urgent || sealed);
    if (async_.generation != generation) break;  // stopped meanwhile
    if (err) {
      // The destination went away, or refused what the authoritative side
      // committed: started again from the segment's beginning (the position
      // skips what was applied) after a pause.
      const bool down =
          err->find("lost") != std::string::npos || err->find("cannot") != std::string::npos;
      metrics()
          .mirrorErrorsTotal(down ? labels::MirrorErrorReason::kTargetDown
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
      // Paused in steps: a stop does not wait for the whole second.
      for (int i = 0; i < 20 && async_.generation == generation && !shuttingDown_; ++i) {
        timer.expires_after(std::chrono::milliseconds(50));
        error_code ec;
        co_await timer.async_wait(asio::redirect_error(kUseAwaitable, ec));
      }
      continue;
    }
    if (!lastError.empty()) {
      spdlog::info("async mirror: applying again");
      lastError.clear();
      async_.error.clear();
    }
    const auto& st = replay->stats();
    if (sealed && st.queued == 0 && st.readBytes >= journal->durableBytes() &&
        st.done() >= journal->transactions()) {
      // A cut segment applied to its end: the next one.
      std::error_code ec;
      std::filesystem::remove(journal->file(), ec);
      async_.replay = nullptr;
      replay->close();
      replay.reset();
      async_.segments.pop_front();
      continue;
    }
    if (asyncCaughtUp()) async_.caughtUpAt = Clock::now();
    if (replay->stats().done() == before) {
      timer.expires_after(std::chrono::milliseconds(2));
      error_code ec;
      co_await timer.async_wait(asio::redirect_error(kUseAwaitable, ec));
    }
  }
  if (replay && async_.replay == replay.get()) async_.replay = nullptr;
  if (replay) replay->close();
  --async_.loops;
}

void ProxyServer::refreshGauges() {
  metrics().mirrorLagSeconds().set(asyncLagSeconds());
  metrics().mirrorQueueTransactions().set(static_cast<std::int64_t>(asyncQueue()));
  std::uint64_t bytes = 0;
  if (seed_.journal) {
    bytes = seed_.journal->durableBytes();
  } else {
    for (const auto& seg : async_.segments) bytes += seg.journal->durableBytes();
  }
  metrics().journalBytes().set(static_cast<std::int64_t>(bytes));
}

awaitable<void> ProxyServer::asyncMetricsLoop() {
  asio::steady_timer timer(mainIo_);
  while (!shuttingDown_) {
    refreshGauges();
    timer.expires_after(std::chrono::milliseconds(200));
    error_code ec;
    co_await timer.async_wait(asio::redirect_error(kUseAwaitable, ec));
  }
}

awaitable<void> ProxyServer::asyncCutLoop() {
  asio::steady_timer timer(mainIo_);
  // The next segment is made (its file synced) before the barrier, and the
  // old one closed (its last fsync waited for) after it: the hold is only
  // the drain and a pointer swap.
  std::shared_ptr<Journal> next;
  std::shared_ptr<Journal> base;  // the segment written to when `next` was made
  std::shared_ptr<Journal> old;
  const std::function<awaitable<void>()> cut = [this, &next, &base, &old]() -> awaitable<void> {
    // Nothing in flight: every transaction of the segment is in it; the next
    // transaction of every session goes to the new one, after that
    // session's state. (A flip meanwhile started a journal of its own,
    // numbered after `next`: then `next` is dropped.)
    if (asyncJournal() && asyncJournal() == base) {
      old = asyncNewSegment(std::move(next));
      ++async_.cuts;
    }
    co_return;
  };
  int putOff = 0;  // tries in a row that found transactions open
  while (!shuttingDown_) {
    timer.expires_after(std::chrono::milliseconds(500));
    error_code ec;
    co_await timer.async_wait(asio::redirect_error(kUseAwaitable, ec));
    if (shuttingDown_) break;
    // A flip meanwhile replaced the journal (or ended it): the segment made
    // for the old one is not used.
    if (next && base != asyncJournal()) asyncDispose({std::exchange(next, nullptr)});
    const auto limit = runtime()->cfg.state.journalSegment;
    if (!asyncJournal() || asyncJournal()->durableBytes() < limit) {
      putOff = 0;
      continue;
    }
    if (!next) {
      try {
        next = asyncPrepare(Phase::kMirror);
        base = asyncJournal();
      } catch (const std::exception& e) {
        spdlog::error("async mirror: cannot cut the journal: {}", e.what());
        continue;
      }
    }
    // A short hold: a long transaction just makes it wait for the next try.
    // Under steady load the drain is given longer at each try (200 ms up to
    // 1 s): a segment must end some time.
    const auto drain = std::chrono::milliseconds(std::min(1000, 200 << std::min(putOff, 3)));
    const bool done = co_await phases_->barrier(drain, cut);
    if (done) {
      putOff = 0;
    } else if (++putOff == 10) {
      spdlog::warn(
          "async mirror: the journal ({} bytes) could not be cut for {} tries: transactions "
          "stay open longer than {} ms",
          asyncJournal() ? asyncJournal()->durableBytes() : 0, putOff, drain.count());
    } else {
      spdlog::debug("async mirror: journal cut put off (transactions open)");
    }
    if (old) old->close();
    old.reset();
  }
  if (next) asyncDispose({next});
}

awaitable<void> ProxyServer::asyncPreDrain(Clock::time_point deadline) {
  if (!asyncJournal()) co_return;
  asio::steady_timer t(mainIo_);
  // At most half the drain timeout: a replay slower than the writes leaves
  // the barrier the other half.
  const auto start = Clock::now();
  const auto until = start + (deadline - start) / 2;
  while (Clock::now() < until && asyncQueue() > 8) {
    t.expires_after(std::chrono::milliseconds(5));
    co_await t.async_wait(kUseAwaitable);
  }
}

awaitable<std::optional<std::string>> ProxyServer::asyncSwitch(
    Phase to, Clock::time_point deadline, std::shared_ptr<Journal> prepared,
    std::vector<std::shared_ptr<Journal>>& retired) {
  if (asyncJournal()) {
    // Every transaction has drained: what is journaled is all there will be.
    const auto t0 = Clock::now();
    const std::uint64_t left = asyncQueue();
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
      // A phase that no longer writes the destination (back to source-only,
      // on to target-only) is never held up by it: a rollback must work
      // while the destination is down. What it missed marks the mirror
      // broken (a seed repairs it).
      const bool leaves = async_.toSource ? to == Phase::kTargetOnly : to == Phase::kSourceOnly;
      if (!leaves) co_return why + " after the drain timeout";
      spdlog::error("async mirror: {}; phase {} goes on without them: the mirror is broken", why,
                    phaseName(to));
      registry_.markMirrorBroken();
    }
    spdlog::info("async mirror: {} transactions applied to the {} at the barrier in {:.1f} ms",
                 left, async_.toSource ? "source" : "target",
                 std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    retired = co_await asyncStop();
  }
  if (asyncPhase(to)) {
    if (!prepared) {
      registry_.setJournal(nullptr);
      co_return std::string("the async mirror's journal could not be created");
    }
    (void)asyncNewSegment(std::move(prepared));
    asyncStart(targetAuthoritative(to));
  } else {
    registry_.setJournal(nullptr);
  }
  co_return std::nullopt;
}

void ProxyServer::asyncRestore(Phase current) {
  const bool wants = asyncPhase(current);
  if (wants && asyncJournal() && async_.toSource == targetAuthoritative(current)) {
    registry_.setJournal(asyncJournal());  // still the phase's own
    return;
  }
  if (asyncJournal()) {
    // The new phase's, never used (no session began since): dropped.
    ++async_.generation;
    std::vector<std::shared_ptr<Journal>> unused;
    for (auto& seg : async_.segments) unused.push_back(seg.journal);
    async_.segments.clear();
    asyncDispose(std::move(unused));
  }
  if (current == Phase::kSeeding) {
    registry_.setJournal(seed_.journal);
    return;
  }
  if (!wants) {
    registry_.setJournal(nullptr);
    return;
  }
  // The journal of the phase that stays was applied and removed already.
  try {
    (void)asyncNewSegment();
    asyncStart(targetAuthoritative(current));
  } catch (const std::exception& e) {
    spdlog::error("async mirror: cannot start a journal: {}", e.what());
    registry_.setJournal(nullptr);
  }
}

void ProxyServer::asyncAtStartup() {
  auto rt = runtime();
  const Phase now = phases_->current();
  const auto files = segmentFiles(rt->cfg);
  if (!files.empty()) async_.nextNumber = files.back().first + 1;
  if (asyncPhase(now)) {
    std::uint64_t transactions = 0;
    for (const auto& [number, path] : files) {
      auto journal = Journal::reopen(path);
      transactions += journal->transactions();
      async_.segments.push_back({journal, true});
    }
    if (!async_.segments.empty()) {
      // The last one is written to again; the others are applied first.
      async_.segments.back().sealed = false;
      for (std::size_t i = 0; i + 1 < async_.segments.size(); ++i) {
        async_.segments[i].journal->close();
      }
      spdlog::info(
          "async mirror: journal reopened ({} transactions in {} segments); applied from where "
          "the {} stands",
          transactions, async_.segments.size(), targetAuthoritative(now) ? "source" : "target");
    } else {
      (void)asyncNewSegment();
    }
    asyncStart(targetAuthoritative(now));
  } else if (!files.empty()) {
    // Left by a run in another phase or mode: what it holds may never have
    // reached the other side.
    std::uint64_t n = 0;
    for (const auto& [number, path] : files) {
      auto journal = Journal::reopen(path);
      n += journal->transactions();
      journal->close();
    }
    if (n > 0 && writesBoth(now)) {
      spdlog::error(
          "an async mirror journal with {} transactions is left in {} but phase {} does not use "
          "one (mirror.mode {}): the mirror is marked broken; seed the other side again",
          n, rt->cfg.state.dir, phaseName(now),
          rt->cfg.mirror.mode == config::MirrorMode::kAsync ? "async" : "sync");
      registry_.markMirrorBroken();
    }
    for (const auto& [number, path] : files) {
      std::error_code ec;
      std::filesystem::remove(path, ec);
    }
  }
  asio::co_spawn(mainIo_, asyncMetricsLoop(), asio::detached);
  asio::co_spawn(mainIo_, asyncCutLoop(), asio::detached);
}

}  // namespace pghandoff::proxy
