// The migration phase (SPEC §1) and the barrier that changes it.
//
// A phase change must never be seen by a transaction: every transaction runs
// wholly in one phase. Sessions take the barrier when they start work at a
// transaction boundary (tryBegin) and give it back at the ReadyForQuery that
// brings them back to one (end). A flip or an operator's pause closes the gate
// for new transactions, waits until the in-flight count reaches zero (bounded
// by flip.drain_timeout), changes the phase and reopens. Held sessions see a
// pause, never an error.
//
// tryBegin increments the count before it looks at the gate, and the gate is
// closed before the count is read (both seq_cst): either the flip sees the
// transaction, or the transaction sees the closed gate. Never neither.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "proxy/admin.h"
#include "proxy/asio.h"
#include "proxy/metrics.h"

namespace pghandoff::proxy {

using Phase = labels::Phase;

// SPEC §1's table. Phases that write to both servers run sessions in
// lockstep (proxy/mirror_relay.cpp); the others relay to one server.
[[nodiscard]] constexpr bool writesBoth(Phase p) {
  return p == Phase::kMirror || p == Phase::kMirrorReadTarget || p == Phase::kReverseMirror;
}
// Writes go to the source and are recorded in the catch-up journal.
[[nodiscard]] constexpr bool journals(Phase p) {
  return p == Phase::kSeeding;
}
// Sessions run in lockstep: a second side follows the authoritative one.
[[nodiscard]] constexpr bool lockstepPhase(Phase p) {
  return writesBoth(p) || journals(p);
}
// Whose answer the client gets (and where transactions commit last).
[[nodiscard]] constexpr bool targetAuthoritative(Phase p) {
  return p == Phase::kReverseMirror || p == Phase::kTargetOnly;
}
[[nodiscard]] constexpr bool readsFromTarget(Phase p) {
  return p == Phase::kMirrorReadTarget || p == Phase::kReverseMirror || p == Phase::kTargetOnly;
}

// SPEC §1. Forward: one step at a time; reverse-mirror may be skipped, and
// source-only may go straight to mirror (the operator seeded the target by
// other means; `pghandoff seed` walks through seeding). Back: any number of
// steps, from any phase up to reverse-mirror. Out of target-only: never, the
// source is stale from then on. Returns why a step is refused, or nullopt.
// Staying in the same phase is allowed (a no-op).
[[nodiscard]] std::optional<std::string> refuseTransition(Phase from, Phase to);

// The phase on disk: `<state.dir>/phase`, one line with the phase name.
class PhaseStore {
 public:
  explicit PhaseStore(std::filesystem::path dir);

  // The saved phase, or source-only when none was ever saved. Throws
  // std::runtime_error naming the file when it cannot be read or holds
  // anything but a phase name: a proxy must not guess its phase (after
  // target-only, guessing source-only would write to a stale database).
  [[nodiscard]] Phase load() const;
  // Durably replaces the file: write a temporary file, fsync, rename, fsync
  // the directory. Creates state.dir if needed. Throws std::runtime_error.
  void save(Phase p) const;
  [[nodiscard]] const std::filesystem::path& file() const { return file_; }

 private:
  std::filesystem::path dir_;
  std::filesystem::path file_;
};

class PhaseController {
 public:
  PhaseController(PhaseStore store, Phase initial);

  [[nodiscard]] Phase current() const noexcept { return phase_.load(std::memory_order_acquire); }
  [[nodiscard]] bool gateClosed() const noexcept { return closed_.load(); }
  [[nodiscard]] std::uint32_t inFlight() const noexcept { return inFlight_.load(); }

  // --- Sessions (any worker thread) -----------------------------------------
  // At a transaction boundary, before forwarding work: the phase the
  // transaction runs in, or nullopt while the gate is closed (then
  // waitForOpen and try again). Every successful tryBegin is matched by one
  // end().
  [[nodiscard]] std::optional<Phase> tryBegin() noexcept;
  void end() noexcept;
  // Completes when the gate opens, or when `timer` is cancelled by its owner
  // (shutdown). The timer belongs to the waiting session and is used on its
  // executor only; the controller keeps a weak reference to wake it.
  awaitable<void> waitForOpen(std::shared_ptr<asio::steady_timer> timer);

  // --- Operator (the admin API) ---------------------------------------------
  // What the admin API answers (HTTP status and JSON body).
  using Reply = AdminReply;
  // The barrier of SPEC §1. `cancelInFlight` ends the transactions still open
  // at the drain timeout when flip.on_timeout is cancel; it is called once.
  // `beforeSwitch` (optional) runs once every transaction has drained, before
  // the phase changes; an error it returns abandons the change (500).
  using BeforeSwitch = std::function<awaitable<std::optional<std::string>>()>;
  awaitable<Reply> flip(Phase to, std::chrono::milliseconds drainTimeout,
                        config::FlipOnTimeout onTimeout,
                        const std::function<void()>& cancelInFlight,
                        const BeforeSwitch& beforeSwitch = {});
  // A barrier that changes no phase (the async mirror's journal cut): with
  // nothing held already, closes the gate, waits up to `drainTimeout` for
  // in-flight transactions, runs `atBarrier` if they drained, reopens. False
  // when it did not run (held already, a flip or pause about to take the
  // gate, or not drained: tried again later).
  // A pause or a flip asked for meanwhile waits for it to end (it is bounded
  // by `drainTimeout` and `atBarrier`): the operator never sees it.
  awaitable<bool> barrier(std::chrono::milliseconds drainTimeout,
                          const std::function<awaitable<void>()>& atBarrier);
  // Closes the gate and waits for in-flight transactions to finish. 200 when
  // drained; 503 and the gate reopened when not drained in time (a pause that
  // cannot drain would only stall the application).
  awaitable<Reply> pause(std::chrono::milliseconds drainTimeout);
  Reply resume();

  // For /status.
  struct Status {
    bool paused;
    bool flipping;
    std::uint32_t inFlight;
    std::string lastFlipJson;  // {"from","to","result","pause_ms"} or null
  };
  [[nodiscard]] Status status() const;

 private:
  enum class Hold : std::uint8_t { kNone, kPause, kFlip, kBarrier };
  // Waits (polling) while an internal barrier holds the gate, and keeps new
  // ones from starting until the caller, under mu_, takes its own hold and
  // decrements operatorWaiting_.
  awaitable<void> waitOutBarrier();
  void openGate();
  // Polls the in-flight count until zero or the deadline; true when drained.
  awaitable<bool> drain(std::chrono::steady_clock::time_point deadline);

  PhaseStore store_;
  std::atomic<Phase> phase_;
  std::atomic<bool> closed_{false};
  std::atomic<std::uint32_t> inFlight_{0};

  mutable std::mutex mu_;  // guards everything below
  Hold hold_ = Hold::kNone;
  int operatorWaiting_ = 0;  // flips and pauses between waitOutBarrier and their hold
  std::vector<std::weak_ptr<asio::steady_timer>> waiters_;
  std::string lastFlip_ = "null";  // JSON
};

}  // namespace pghandoff::proxy
