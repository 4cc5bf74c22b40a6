// The proxy process: worker threads (one io_context each, sessions pinned to
// one), the listener, the admin API, signals (SIGTERM/SIGINT graceful
// shutdown, SIGHUP reload).
#pragma once

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "config/config.h"
#include "proxy/admin.h"
#include "proxy/asio.h"
#include "proxy/phase.h"
#include "proxy/runtime.h"
#include "proxy/seed.h"
#include "proxy/upstream.h"

namespace pghandoff::proxy {

class AdminServer;

class ProxyServer {
 public:
  // Throws std::runtime_error with a clear message when something in the
  // configuration cannot be set up (TLS files, listen address in use).
  ProxyServer(config::Config cfg, std::string configPath);
  ~ProxyServer();

  // Runs until a shutdown completes. Returns the process exit code.
  int run();

  [[nodiscard]] std::string statusJson();

 private:
  awaitable<void> acceptLoop();
  void beginShutdown(bool immediate);
  awaitable<void> shutdownLoop();
  void reload();
  void waitForSignals();
  [[nodiscard]] std::shared_ptr<const Runtime> runtime();
  awaitable<AdminReply> setPhase(std::string name, std::optional<std::chrono::milliseconds> drain);
  awaitable<AdminReply> pause(std::optional<std::chrono::milliseconds> drain);
  // flip.on_timeout: cancel — ends the sessions still in a transaction.
  void cancelInFlight();
  // mirror.two_phase_commit: finishes the proxy's prepared transactions —
  // once at start every one left by an earlier process (decided by the
  // authoritative side: prepared there means decided, commit on both;
  // prepared on the mirror alone means undecided, roll back), then what
  // sessions could not finish (Registry::takePending). Every 2 s, until shutdown
  // (`startDone`: the start pass succeeded already).
  awaitable<void> twoPhaseRecovery(bool startDone);
  // The start pass (when two-phase commit is on), then the accept loop.
  awaitable<void> startAccepting();
  // One pass; false when a server could not be reached (retried).
  awaitable<bool> resolvePrepared(bool all);
  // The proxy's own sessions on both servers (configured credentials).
  struct BothServers {
    std::shared_ptr<ServerConnection> first, second;
    void close() {
      if (first) first->stream().close();
      if (second) second->stream().close();
    }
  };
  // Logs in to both, the target first when `targetFirst`; the error in words,
  // or nullopt with both open.
  awaitable<std::optional<std::string>> connectBoth(bool targetFirst, const std::string& app,
                                                    BothServers& out);

  // `pghandoff seed`'s steps (proxy/seed.h; defined in proxy/seed_control.cpp):
  // POST /seed/<action> and GET /seed.
  awaitable<AdminReply> seedAction(std::string action,
                                   std::optional<std::chrono::milliseconds> drain);
  [[nodiscard]] std::string seedJson() const;
  awaitable<AdminReply> seedStart(std::chrono::milliseconds drain);
  awaitable<AdminReply> seedFinish(std::chrono::milliseconds drain);
  awaitable<void> seedCatchUp(std::chrono::milliseconds drain);
  // Back to source-only; the journal removed. `keepMarker`: the target holds
  // a partial restore (the seed command died), which the next seed clears.
  awaitable<AdminReply> seedAbort(std::string why, bool keepMarker,
                                  std::optional<std::chrono::milliseconds> drain);
  awaitable<void> seedLeaseLoop();
  // A proxy (re)started in phase seeding: journal on, the snapshot gone.
  void seedAtStartup();
  void seedCleanup(bool keepMarker);
  SeedState seed_;  // on mainIo_ only

  // mirror.mode async (proxy/async_mirror.cpp): in mirror and
  // reverse-mirror, sessions journal what the side that is not
  // authoritative would get (<state.dir>/mirror-journal.<n>, cut into
  // segments at state.journal_segment), and a replay applies it there in
  // commit order. Every phase change drains it first.
  struct AsyncMirror {
    struct Segment {
      std::shared_ptr<Journal> journal;
      bool sealed = false;  // cut: nothing more will be written to it
    };
    std::deque<Segment> segments;     // oldest first; the replay works on the front, sessions
                                      // write to the back; none while no phase journals
    std::uint64_t nextNumber = 1;     // of the next segment's file
    bool toSource = false;            // the replay's destination
    JournalReplay* replay = nullptr;  // the apply loop's, while it runs
    int loops = 0;                    // apply loops still running (one, or a stopped one ending)
    std::uint64_t generation = 0;     // a new one stops the loop
    bool urgent = false;              // a flip waits: no 2 s grace for undecided ones
    std::string error;                // the replay's last failure, until it recovers
    std::uint64_t restarts = 0;       // replays started again after a failure
    std::uint64_t cuts = 0;           // segments cut
    std::chrono::steady_clock::time_point caughtUpAt{};
  };
  AsyncMirror async_;  // on mainIo_ only
  // The segment sessions write to; null while no phase journals.
  [[nodiscard]] std::shared_ptr<Journal> asyncJournal() const {
    return async_.segments.empty() ? nullptr : async_.segments.back().journal;
  }
  // The phase journals for an async mirror.
  [[nodiscard]] bool asyncPhase(Phase p);
  // At a barrier (every transaction drained): the current async journal
  // applied to the end (bounded by `deadline`), stopped and removed; a new
  // one for `to` when it journals; the registry's journal set for `to`. The
  // error in words (the caller's phase stays).
  // `prepared`: the new phase's first segment, made before the barrier
  // (asyncPrepare); `retired`: the old journal's segments, for asyncDispose
  // once the barrier is over.
  awaitable<std::optional<std::string>> asyncSwitch(Phase to,
                                                    std::chrono::steady_clock::time_point deadline,
                                                    std::shared_ptr<Journal> prepared,
                                                    std::vector<std::shared_ptr<Journal>>& retired);
  // A first segment for phase `to` when it journals (else null). Throws
  // std::runtime_error.
  std::shared_ptr<Journal> asyncPrepare(Phase to);
  // Closes and removes journals (the writer's last fsync is waited for).
  void asyncDispose(std::vector<std::shared_ptr<Journal>> journals);
  // After a flip that failed past asyncSwitch: the journal state for the
  // phase that stays.
  void asyncRestore(Phase current);
  // Before the barrier: waits (bounded) until little is left to apply, so
  // that the pause is short.
  awaitable<void> asyncPreDrain(std::chrono::steady_clock::time_point deadline);
  // A new segment (`journal`, or a file made now), written to from now on;
  // the one written to before (not closed yet), or null. Throws
  // std::runtime_error.
  std::shared_ptr<Journal> asyncNewSegment(std::shared_ptr<Journal> journal = nullptr);
  void asyncStart(bool toSource);
  // Stops the apply loop; the segments it leaves, to be disposed of.
  awaitable<std::vector<std::shared_ptr<Journal>>> asyncStop();
  awaitable<void> asyncApplyLoop(std::uint64_t generation);
  awaitable<void> asyncMetricsLoop();
  // Cuts the journal at a short barrier once its segment is big enough.
  awaitable<void> asyncCutLoop();
  void asyncAtStartup();
  [[nodiscard]] bool asyncCaughtUp() const;
  [[nodiscard]] double asyncLagSeconds() const;
  [[nodiscard]] std::uint64_t asyncQueue() const;
  // The gauges computed from state rather than counted: mirror_lag_seconds,
  // mirror_queue_transactions (the async mirror) and journal_bytes (the
  // seed's journal, else the async mirror's segments), as they are now. By
  // asyncMetricsLoop, and by the admin server before it renders /metrics.
  void refreshGauges();
  std::string runtimeConfigDir_;  // state.dir (fixed for the process)

  // Declaration order is destruction order reversed, and it matters: the
  // main context's pending accept holds a socket of a worker context, so the
  // workers outlive the main context; session frames destroyed with the
  // worker contexts still use the registry, so it outlives them.
  std::string configPath_;
  std::vector<std::uint8_t> mockSecret_;
  std::mutex rtMu_;
  std::shared_ptr<const Runtime> rt_;
  std::unique_ptr<PhaseController> phases_;
  Registry registry_;

  std::vector<std::unique_ptr<asio::io_context>> workerIo_;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards_;
  std::vector<std::thread> threads_;
  std::size_t nextWorker_ = 0;

  asio::io_context mainIo_;
  tcp::acceptor acceptor_;
  std::unique_ptr<AdminServer> admin_;
  asio::signal_set signals_;
  std::chrono::steady_clock::time_point shutdownDeadline_{};
  std::atomic<bool> accepting_{false};
  bool brokenAtStart_ = false;  // the mirror-broken marker was there at start
  bool shuttingDown_ = false;
  std::uint64_t nextSessionId_ = 1;
};

}  // namespace pghandoff::proxy
