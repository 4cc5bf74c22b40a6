#include "proxy/phase.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>

#include "proxy/admin.h"

namespace pghandoff::proxy {

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

int rank(Phase p) {
  return static_cast<int>(p);
}

std::string name(Phase p) {
  return std::string(phaseName(p));
}

double millis(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// A JSON object from members whose values are already JSON (see quote, fmtMs).
std::string reply(std::initializer_list<std::pair<std::string_view, std::string>> members) {
  std::string out = "{";
  const char* sep = "";
  for (const auto& [k, v] : members) {
    out += sep;
    out += '"';
    out += k;
    out += "\":";
    out += v;
    sep = ",";
  }
  out += '}';
  return out;
}

std::string quote(std::string_view s) {
  return "\"" + jsonEscape(s) + "\"";
}

std::string fmtMs(double ms) {
  std::ostringstream o;
  o.setf(std::ios::fixed);
  o.precision(3);
  o << ms;
  return o.str();
}

// A file write that reaches the disk before the call returns.
void writeDurably(const std::filesystem::path& file, const std::string& content) {
  auto fail = [&](const std::string& what) {
    throw std::runtime_error("cannot save the phase to " + file.string() + ": " + what + ": " +
                             std::strerror(errno));
  };
  std::filesystem::path tmp = file;
  tmp += ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) fail("open");
  std::size_t off = 0;
  while (off < content.size()) {
    ssize_t n = ::write(fd, content.data() + off, content.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      fail("write");
    }
    off += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) {
    ::close(fd);
    fail("fsync");
  }
  ::close(fd);
  if (::rename(tmp.c_str(), file.c_str()) != 0) fail("rename");
  int dfd = ::open(file.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);  // the rename itself; best effort on filesystems that refuse
    ::close(dfd);
  }
}

}  // namespace

std::optional<std::string> refuseTransition(Phase from, Phase to) {
  if (from == to) return std::nullopt;
  if (from == Phase::kTargetOnly) {
    return "target-only is final: the source has received no writes since, so it is stale";
  }
  if (rank(to) < rank(from)) return std::nullopt;  // a step back (rollback)
  auto step = [&](Phase a, Phase b) { return from == a && to == b; };
  if (step(Phase::kSourceOnly, Phase::kSeeding) || step(Phase::kSourceOnly, Phase::kMirror) ||
      step(Phase::kSeeding, Phase::kMirror) || step(Phase::kMirror, Phase::kMirrorReadTarget) ||
      step(Phase::kMirrorReadTarget, Phase::kReverseMirror) ||
      step(Phase::kMirrorReadTarget, Phase::kTargetOnly) ||
      step(Phase::kReverseMirror, Phase::kTargetOnly)) {
    return std::nullopt;
  }
  auto next = static_cast<Phase>(rank(from) + 1);
  if (from == Phase::kSourceOnly) next = Phase::kMirror;
  return name(from) + " -> " + name(to) + " skips a step; the next phase forward is " + name(next);
}

// ---------------------------------------------------------------------------

PhaseStore::PhaseStore(std::filesystem::path dir) : dir_(std::move(dir)), file_(dir_ / "phase") {}

Phase PhaseStore::load() const {
  std::error_code ec;
  if (!std::filesystem::exists(file_, ec)) {
    if (ec) throw std::runtime_error("cannot read " + file_.string() + ": " + ec.message());
    return Phase::kSourceOnly;
  }
  std::ifstream in(file_);
  std::string text;
  if (!in || !std::getline(in, text)) {
    throw std::runtime_error("cannot read the saved phase from " + file_.string());
  }
  if (auto p = phaseFromName(text)) return *p;
  throw std::runtime_error(file_.string() +
                           " does not hold a phase name (source-only, seeding, mirror, "
                           "mirror-read-target, reverse-mirror, target-only); fix or remove it");
}

void PhaseStore::save(Phase p) const {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) {
    throw std::runtime_error("cannot create state.dir " + dir_.string() + ": " + ec.message());
  }
  writeDurably(file_, name(p) + "\n");
}

// ---------------------------------------------------------------------------

PhaseController::PhaseController(PhaseStore store, Phase initial)
    : store_(std::move(store)), phase_(initial) {
  metrics().setCurrentPhase(initial);
}

std::optional<Phase> PhaseController::tryBegin() noexcept {
  inFlight_.fetch_add(1);  // seq_cst: before reading the gate (see the header)
  if (!closed_.load()) return current();
  inFlight_.fetch_sub(1);
  return std::nullopt;
}

void PhaseController::end() noexcept {
  inFlight_.fetch_sub(1);
}

awaitable<void> PhaseController::waitForOpen(std::shared_ptr<asio::steady_timer> timer) {
  {
    std::lock_guard lock(mu_);
    if (!closed_.load()) co_return;
    waiters_.push_back(timer);
  }
  timer->expires_at(asio::steady_timer::time_point::max());
  // Cancelled by openGate() (posted to the timer's executor) or by the owner.
  (void)co_await timer->async_wait(kUseAwaitable);
}

void PhaseController::openGate() {
  std::vector<std::weak_ptr<asio::steady_timer>> waiters;
  {
    std::lock_guard lock(mu_);
    closed_.store(false);
    hold_ = Hold::kNone;
    waiters.swap(waiters_);
  }
  // A waiter registered under the lock is already in its async_wait by the
  // time the posted cancel runs: its session's context is single-threaded and
  // the registration and the wait happen in one step on it.
  for (auto& w : waiters) {
    if (auto t = w.lock()) {
      asio::post(t->get_executor(), [t] { t->cancel(); });
    }
  }
}

awaitable<bool> PhaseController::drain(Clock::time_point deadline) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  while (inFlight_.load() != 0) {
    auto now = Clock::now();
    if (now >= deadline) co_return false;
    // 1 ms polls: the pause is what clients feel, and a poll costs nothing.
    timer.expires_at(std::min(deadline, now + 1ms));
    (void)co_await timer.async_wait(kUseAwaitable);
  }
  co_return true;
}

awaitable<PhaseController::Reply> PhaseController::flip(Phase to,
                                                        std::chrono::milliseconds drainTimeout,
                                                        config::FlipOnTimeout onTimeout,
                                                        const std::function<void()>& cancelInFlight,
                                                        const BeforeSwitch& beforeSwitch) {
  co_await waitOutBarrier();
  const Phase from = current();
  {
    std::lock_guard lock(mu_);
    --operatorWaiting_;
    if (hold_ != Hold::kNone) {
      std::string why = hold_ == Hold::kPause ? "the proxy is paused; POST /resume first"
                                              : "another phase change is in progress";
      metrics().phaseFlipsTotal(from, to, labels::FlipResult::kRefused).inc();
      co_return Reply{409, reply({{"error", quote(why)}, {"phase", quote(name(from))}})};
    }
    if (auto why = refuseTransition(from, to)) {
      metrics().phaseFlipsTotal(from, to, labels::FlipResult::kRefused).inc();
      co_return Reply{409, reply({{"error", quote(*why)}, {"phase", quote(name(from))}})};
    }
    if (from == to) {
      co_return Reply{
          200,
          reply({{"phase", quote(name(to))}, {"previous", quote(name(from))}, {"pause_ms", "0"}})};
    }
    hold_ = Hold::kFlip;
    closed_.store(true);  // seq_cst: before the in-flight count is read
  }
  const auto t0 = Clock::now();
  spdlog::info("phase change {} -> {}: holding new transactions, {} in flight", name(from),
               name(to), inFlight_.load());
  bool drained = co_await drain(t0 + drainTimeout);
  if (!drained && onTimeout == config::FlipOnTimeout::kCancel) {
    spdlog::warn(
        "phase change {} -> {}: {} transactions still open after {} ms; cancelling them "
        "(flip.on_timeout: cancel)",
        name(from), name(to), inFlight_.load(), drainTimeout.count());
    cancelInFlight();
    drained = co_await drain(Clock::now() + 2s);
  }
  std::string failure;
  int status = 200;
  if (!drained) {
    status = 503;
    failure = std::to_string(inFlight_.load()) + " transactions still open after " +
              std::to_string(drainTimeout.count()) + " ms (flip.drain_timeout); phase stays " +
              name(from);
  } else {
    if (beforeSwitch) {
      if (auto why = co_await beforeSwitch()) {
        status = 500;
        failure = *why + "; phase stays " + name(from);
      }
    }
    try {
      if (status == 200) store_.save(to);
    } catch (const std::exception& e) {
      status = 500;
      failure = e.what();
    }
  }
  if (status == 200) {
    phase_.store(to, std::memory_order_release);
    metrics().setCurrentPhase(to);
  }
  const double pauseMs = millis(Clock::now() - t0);
  std::string result = status == 200 ? "ok" : status == 503 ? "timeout" : "error";
  {
    std::lock_guard lock(mu_);
    lastFlip_ = reply({{"from", quote(name(from))},
                       {"to", quote(name(to))},
                       {"result", quote(result)},
                       {"pause_ms", fmtMs(pauseMs)}});
  }
  openGate();
  metrics().phaseFlipPauseSeconds().observeSeconds(pauseMs / 1000.0);
  metrics()
      .phaseFlipsTotal(from, to,
                       status == 200   ? labels::FlipResult::kOk
                       : status == 503 ? labels::FlipResult::kTimeout
                                       : labels::FlipResult::kRefused)
      .inc();
  if (status != 200) {
    spdlog::warn("phase change {} -> {} abandoned after {:.1f} ms: {}", name(from), name(to),
                 pauseMs, failure);
    co_return Reply{status, reply({{"error", quote(failure)}, {"phase", quote(name(from))}})};
  }
  spdlog::info("phase changed {} -> {}; new transactions were held {:.1f} ms", name(from), name(to),
               pauseMs);
  co_return Reply{200, reply({{"phase", quote(name(to))},
                              {"previous", quote(name(from))},
                              {"pause_ms", fmtMs(pauseMs)}})};
}

awaitable<PhaseController::Reply> PhaseController::pause(std::chrono::milliseconds drainTimeout) {
  co_await waitOutBarrier();
  {
    std::lock_guard lock(mu_);
    --operatorWaiting_;
    if (hold_ == Hold::kFlip || hold_ == Hold::kBarrier) {
      co_return Reply{409, reply({{"error", quote("a phase change is in progress")}})};
    }
    if (hold_ == Hold::kPause) {
      co_return Reply{200, reply({{"paused", "true"}, {"in_flight", "0"}})};
    }
    hold_ = Hold::kPause;
    closed_.store(true);
  }
  const auto t0 = Clock::now();
  const bool drained = co_await drain(t0 + drainTimeout);
  {
    std::lock_guard lock(mu_);
    if (hold_ != Hold::kPause) {  // a resume arrived while draining
      co_return Reply{409, reply({{"error", quote("resumed before the pause took hold")},
                                  {"paused", "false"}})};
    }
  }
  if (!drained) {
    auto open = inFlight_.load();
    openGate();
    co_return Reply{
        503, reply({{"error", quote(std::to_string(open) + " transactions still open after " +
                                    std::to_string(drainTimeout.count()) + " ms; not paused")},
                    {"paused", "false"}})};
  }
  spdlog::info("paused: new transactions are held (drained in {:.1f} ms)",
               millis(Clock::now() - t0));
  co_return Reply{200, reply({{"paused", "true"}, {"in_flight", "0"}})};
}

awaitable<void> PhaseController::waitOutBarrier() {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  {
    // No new barrier starts from here until the caller has taken its hold
    // (it runs on another thread: it could slip in between).
    std::lock_guard lock(mu_);
    ++operatorWaiting_;
  }
  // Bounded by the barrier's own drain timeout; the deadline only guards
  // against a barrier that never ends (the caller then answers 409).
  const auto deadline = Clock::now() + 30s;
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (hold_ != Hold::kBarrier) co_return;
    }
    if (Clock::now() >= deadline) co_return;
    timer.expires_after(1ms);
    (void)co_await timer.async_wait(kUseAwaitable);
  }
}

awaitable<bool> PhaseController::barrier(std::chrono::milliseconds drainTimeout,
                                         const std::function<awaitable<void>()>& atBarrier) {
  {
    std::lock_guard lock(mu_);
    if (hold_ != Hold::kNone || operatorWaiting_ > 0) co_return false;
    hold_ = Hold::kBarrier;
    closed_.store(true);  // seq_cst: before the in-flight count is read
  }
  const auto t0 = Clock::now();
  const bool drained = co_await drain(t0 + drainTimeout);
  if (drained) co_await atBarrier();
  openGate();
  spdlog::debug("barrier: {} ({:.1f} ms)", drained ? "done" : "not drained in time",
                millis(Clock::now() - t0));
  co_return drained;
}

PhaseController::Reply PhaseController::resume() {
  {
    std::lock_guard lock(mu_);
    if (hold_ == Hold::kFlip) {
      return Reply{409, reply({{"error", quote("a phase change is in progress")}})};
    }
    if (hold_ != Hold::kPause) return Reply{200, reply({{"paused", "false"}})};
  }
  openGate();
  spdlog::info("resumed: new transactions flow again");
  return Reply{200, reply({{"paused", "false"}})};
}

PhaseController::Status PhaseController::status() const {
  std::lock_guard lock(mu_);
  return Status{hold_ == Hold::kPause, hold_ == Hold::kFlip, inFlight_.load(), lastFlip_};
}

}  // namespace pghandoff::proxy
