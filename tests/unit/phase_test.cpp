#include "proxy/phase.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

#include "proxy/metrics.h"

namespace pghandoff::proxy {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using P = Phase;

constexpr P kAll[] = {P::kSourceOnly,       P::kSeeding,       P::kMirror,
                      P::kMirrorReadTarget, P::kReverseMirror, P::kTargetOnly};

// The whole transition table of SPEC §1, cell by cell.
TEST(PhaseTransitions, EveryPair) {
  // allowed[from][to]
  const bool allowed[6][6] = {
      // to: src  seed  mir  mrt  rev  tgt
      {true, true, true, false, false, false},   // from source-only
      {true, true, true, false, false, false},   // from seeding
      {true, true, true, true, false, false},    // from mirror
      {true, true, true, true, true, true},      // from mirror-read-target (reverse may be skipped)
      {true, true, true, true, true, true},      // from reverse-mirror
      {false, false, false, false, false, true}  // from target-only: final
  };
  for (int f = 0; f < 6; ++f) {
    for (int t = 0; t < 6; ++t) {
      auto why = refuseTransition(kAll[f], kAll[t]);
      EXPECT_EQ(!why.has_value(), allowed[f][t])
          << phaseName(kAll[f]) << " -> " << phaseName(kAll[t]) << ": " << why.value_or("allowed");
    }
  }
  EXPECT_EQ(refuseTransition(P::kTargetOnly, P::kReverseMirror).value(),
            "target-only is final: the source has received no writes since, so it is stale");
  EXPECT_EQ(refuseTransition(P::kMirror, P::kTargetOnly).value(),
            "mirror -> target-only skips a step; the next phase forward is mirror-read-target");
  EXPECT_EQ(refuseTransition(P::kSourceOnly, P::kMirrorReadTarget).value(),
            "source-only -> mirror-read-target skips a step; the next phase forward is mirror");
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "pghandoff-phase-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

TEST(PhaseStore, DefaultsToSourceOnlyAndRoundTrips) {
  TempDir d;
  PhaseStore store(d.path() / "state");  // created on first save
  EXPECT_EQ(store.load(), P::kSourceOnly);
  for (P p : kAll) {
    store.save(p);
    EXPECT_EQ(PhaseStore(d.path() / "state").load(), p);
  }
  std::ifstream in(d.path() / "state" / "phase");
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "target-only");
  EXPECT_FALSE(fs::exists(d.path() / "state" / "phase.tmp"));
}

TEST(PhaseStore, RefusesToGuessFromABadFile) {
  TempDir d;
  std::ofstream(d.path() / "phase") << "mirror-ish\n";
  PhaseStore store(d.path());
  try {
    (void)store.load();
    FAIL() << "a corrupt phase file was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find((d.path() / "phase").string()), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("does not hold a phase name"), std::string::npos);
  }
  std::ofstream(d.path() / "phase", std::ios::trunc) << "";
  EXPECT_THROW((void)store.load(), std::runtime_error);
}

TEST(PhaseStore, SaveFailureIsAnError) {
  TempDir d;
  std::ofstream(d.path() / "file") << "x";
  PhaseStore store(d.path() / "file" / "sub");  // a directory under a regular file
  EXPECT_THROW(store.save(P::kMirror), std::runtime_error);
}

// Runs a coroutine to completion on a fresh io_context and returns its result.
template <typename T>
T runOn(asio::io_context& io, awaitable<T> a) {
  std::optional<T> out;
  asio::co_spawn(io, std::move(a), [&](std::exception_ptr e, T v) {
    if (e) std::rethrow_exception(e);
    out = std::move(v);
  });
  io.run();
  io.restart();
  return std::move(*out);
}

class PhaseControllerTest : public ::testing::Test {
 protected:
  // Zeroed before the controller's constructor publishes its phase.
  bool metricsReset_ = (resetMetricsForTest(), true);
  TempDir dir_;
  PhaseController ctl_{PhaseStore(dir_.path()), P::kSourceOnly};
  asio::io_context io_;
};

TEST_F(PhaseControllerTest, FlipWithNothingInFlightIsImmediateAndPersisted) {
  EXPECT_EQ(metrics().phase(P::kSourceOnly).value(), 1);
  auto r = runOn(io_, ctl_.flip(P::kMirror, 1s, config::FlipOnTimeout::kAbandon, [] {}));
  EXPECT_EQ(r.status, 200) << r.json;
  EXPECT_EQ(r.json.rfind(R"({"phase":"mirror","previous":"source-only","pause_ms":)", 0), 0U)
      << r.json;
  EXPECT_EQ(ctl_.current(), P::kMirror);
  EXPECT_EQ(PhaseStore(dir_.path()).load(), P::kMirror);
  EXPECT_EQ(metrics().phase(P::kMirror).value(), 1);
  EXPECT_EQ(metrics().phase(P::kSourceOnly).value(), 0);
  EXPECT_EQ(metrics().phaseFlipsTotal(P::kSourceOnly, P::kMirror, labels::FlipResult::kOk).value(),
            1U);
  EXPECT_EQ(metrics().phaseFlipPauseSeconds().count(), 1U);
  EXPECT_FALSE(ctl_.gateClosed());
  auto st = ctl_.status();
  EXPECT_EQ(st.lastFlipJson.rfind(R"({"from":"source-only","to":"mirror","result":"ok")", 0), 0U)
      << st.lastFlipJson;
}

TEST_F(PhaseControllerTest, RefusedStepChangesNothing) {
  auto r = runOn(io_, ctl_.flip(P::kTargetOnly, 1s, config::FlipOnTimeout::kAbandon, [] {}));
  EXPECT_EQ(r.status, 409);
  EXPECT_EQ(r.json,
            R"({"error":"source-only -> target-only skips a step; the next phase forward is )"
            R"(mirror","phase":"source-only"})");
  EXPECT_EQ(ctl_.current(), P::kSourceOnly);
  EXPECT_FALSE(fs::exists(dir_.path() / "phase"));
  EXPECT_EQ(metrics()
                .phaseFlipsTotal(P::kSourceOnly, P::kTargetOnly, labels::FlipResult::kRefused)
                .value(),
            1U);
  EXPECT_EQ(metrics().phaseFlipPauseSeconds().count(), 0U);
}

TEST_F(PhaseControllerTest, FlipWaitsForInFlightTransactionsAndHoldsNewOnes) {
  auto tx = ctl_.tryBegin();
  ASSERT_TRUE(tx);
  EXPECT_EQ(*tx, P::kSourceOnly);
  // The transaction ends 150 ms into the flip, from another thread.
  std::optional<P> duringFlip = P::kTargetOnly;
  std::thread ender([&] {
    std::this_thread::sleep_for(150ms);
    duringFlip = ctl_.tryBegin();  // the gate is closed: held
    ctl_.end();
  });
  auto t0 = std::chrono::steady_clock::now();
  auto r = runOn(io_, ctl_.flip(P::kMirror, 5s, config::FlipOnTimeout::kAbandon, [] {}));
  auto took = std::chrono::steady_clock::now() - t0;
  ender.join();
  EXPECT_EQ(r.status, 200) << r.json;
  EXPECT_FALSE(duringFlip.has_value());
  EXPECT_GE(took, 150ms);
  EXPECT_LT(took, 2s);
  EXPECT_EQ(ctl_.inFlight(), 0U);
  // After the flip new transactions run in the new phase.
  auto next = ctl_.tryBegin();
  ASSERT_TRUE(next);
  EXPECT_EQ(*next, P::kMirror);
  ctl_.end();
}

TEST_F(PhaseControllerTest, DrainTimeoutAbandonsAndKeepsThePhase) {
  ASSERT_TRUE(ctl_.tryBegin());  // idle in transaction, never ends
  bool cancelled = false;
  auto r = runOn(io_, ctl_.flip(P::kMirror, 100ms, config::FlipOnTimeout::kAbandon,
                                [&] { cancelled = true; }));
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.json, R"({"error":"1 transactions still open after 100 ms (flip.drain_timeout); )"
                    R"(phase stays source-only","phase":"source-only"})");
  EXPECT_FALSE(cancelled);
  EXPECT_EQ(ctl_.current(), P::kSourceOnly);
  EXPECT_FALSE(ctl_.gateClosed());  // traffic resumes
  EXPECT_EQ(
      metrics().phaseFlipsTotal(P::kSourceOnly, P::kMirror, labels::FlipResult::kTimeout).value(),
      1U);
  EXPECT_EQ(metrics().phaseFlipPauseSeconds().count(), 1U);
  ctl_.end();
}

TEST_F(PhaseControllerTest, DrainTimeoutWithCancelEndsTheTransactionsAndFlips) {
  ASSERT_TRUE(ctl_.tryBegin());
  int cancels = 0;
  auto r = runOn(io_, ctl_.flip(P::kMirror, 100ms, config::FlipOnTimeout::kCancel, [&] {
    ++cancels;
    ctl_.end();  // what a cancelled session does when it closes
  }));
  EXPECT_EQ(r.status, 200) << r.json;
  EXPECT_EQ(cancels, 1);
  EXPECT_EQ(ctl_.current(), P::kMirror);
}

TEST_F(PhaseControllerTest, PauseHoldsUntilResumeAndWakesWaiters) {
  auto r = runOn(io_, ctl_.pause(1s));
  EXPECT_EQ(r.status, 200) << r.json;
  EXPECT_TRUE(ctl_.gateClosed());
  EXPECT_TRUE(ctl_.status().paused);
  EXPECT_FALSE(ctl_.tryBegin().has_value());
  // A flip while paused is refused.
  auto f = runOn(io_, ctl_.flip(P::kMirror, 1s, config::FlipOnTimeout::kAbandon, [] {}));
  EXPECT_EQ(f.status, 409);
  EXPECT_EQ(f.json, R"({"error":"the proxy is paused; POST /resume first","phase":"source-only"})");

  // A session waiting on its own context (another thread) wakes at resume.
  asio::io_context sessionIo;
  auto timer = std::make_shared<asio::steady_timer>(sessionIo);
  bool woke = false;
  asio::co_spawn(
      sessionIo,
      [&]() -> awaitable<void> {
        co_await ctl_.waitForOpen(timer);
        woke = true;
      },
      asio::detached);
  std::thread sessionThread([&] { sessionIo.run(); });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(woke);
  EXPECT_EQ(ctl_.resume().status, 200);
  sessionThread.join();  // run() returns once the waiter finished
  EXPECT_TRUE(woke);
  EXPECT_TRUE(ctl_.tryBegin().has_value());
  ctl_.end();
}

TEST_F(PhaseControllerTest, PauseThatCannotDrainReopens) {
  ASSERT_TRUE(ctl_.tryBegin());
  auto r = runOn(io_, ctl_.pause(50ms));
  EXPECT_EQ(r.status, 503);
  EXPECT_FALSE(ctl_.gateClosed());
  ctl_.end();
}

// An internal barrier (the async mirror's journal cut) is invisible to the
// operator: a flip or a pause asked for while it holds the gate waits for it
// to end, then runs (it answered 409 "another phase change" before).
TEST_F(PhaseControllerTest, FlipAndPauseDuringABarrierWaitForIt) {
  bool ran = false;
  std::optional<PhaseController::Reply> flipped;
  std::optional<PhaseController::Reply> paused;
  std::optional<bool> secondBarrier;
  const std::function<awaitable<void>()> nothing = []() -> awaitable<void> { co_return; };
  const std::function<awaitable<void>()> atBarrier = [&]() -> awaitable<void> {
    asio::steady_timer t(co_await asio::this_coro::executor);
    t.expires_after(100ms);
    co_await t.async_wait(kUseAwaitable);
    ran = true;
  };
  asio::co_spawn(
      io_,
      [&]() -> awaitable<void> {
        (void)co_await ctl_.barrier(1s, atBarrier);
        // Another barrier asked for the moment this one ends, before the
        // waiting flip wakes: the flip goes first.
        secondBarrier = co_await ctl_.barrier(1s, nothing);
      },
      asio::detached);
  asio::co_spawn(
      io_,
      [&]() -> awaitable<void> {
        asio::steady_timer t(co_await asio::this_coro::executor);
        t.expires_after(20ms);  // the barrier holds the gate by now
        co_await t.async_wait(kUseAwaitable);
        EXPECT_TRUE(ctl_.gateClosed());
        flipped = co_await ctl_.flip(P::kMirror, 1s, config::FlipOnTimeout::kAbandon, [] {});
        EXPECT_TRUE(ran);
        paused = co_await ctl_.pause(1s);
      },
      asio::detached);
  io_.run();
  ASSERT_TRUE(flipped && paused && secondBarrier);
  EXPECT_FALSE(*secondBarrier);
  EXPECT_EQ(flipped->status, 200) << flipped->json;
  EXPECT_EQ(ctl_.current(), P::kMirror);
  EXPECT_EQ(paused->status, 200) << paused->json;
  EXPECT_EQ(ctl_.resume().status, 200);
  EXPECT_FALSE(ctl_.gateClosed());
}

// Many threads begin and end transactions while flips run back and forth: no
// transaction ever straddles a flip (its phase at begin equals the phase at
// its end) and the count returns to zero.
TEST_F(PhaseControllerTest, NoTransactionStraddlesAFlip) {
  std::atomic<bool> stop{false};
  std::atomic<int> straddled{0}, done{0};
  std::vector<std::thread> workers;
  for (int i = 0; i < 4; ++i) {
    workers.emplace_back([&] {
      while (!stop) {
        auto p = ctl_.tryBegin();
        if (!p) {
          std::this_thread::yield();
          continue;
        }
        if (ctl_.current() != *p) ++straddled;
        std::this_thread::sleep_for(50us);
        if (ctl_.current() != *p) ++straddled;
        ctl_.end();
        ++done;
      }
    });
  }
  for (int i = 0; i < 40; ++i) {
    P to = i % 2 == 0 ? P::kMirror : P::kSourceOnly;
    auto r = runOn(io_, ctl_.flip(to, 2s, config::FlipOnTimeout::kAbandon, [] {}));
    ASSERT_EQ(r.status, 200) << r.json;
  }
  // On a loaded machine the workers may not have run yet: the gate is open,
  // give them the time to.
  for (int i = 0; i < 500 && done.load() == 0; ++i) std::this_thread::sleep_for(10ms);
  stop = true;
  for (auto& w : workers) w.join();
  EXPECT_EQ(straddled.load(), 0);
  EXPECT_GT(done.load(), 0);
  EXPECT_EQ(ctl_.inFlight(), 0U);
}

}  // namespace
}  // namespace pghandoff::proxy
