// A deadline for a sequence of socket operations: when it passes, onExpiry
// runs (it closes the socket), so every pending operation fails and the
// coroutine that armed it returns. Used for startup/auth, upstream login and
// cancel connections.
//
// The timer handler may run after the coroutine that armed the watchdog
// returned (a timer that fired cannot be cancelled any more): it therefore
// shares only `state_`, and onExpiry must own (shared_ptr) or otherwise keep
// alive whatever it touches. Once disarmed, onExpiry never runs.
#pragma once

#include <functional>
#include <memory>

#include "proxy/asio.h"

namespace pghandoff::proxy {

class Watchdog {
 public:
  Watchdog(const asio::any_io_executor& ex, std::chrono::steady_clock::duration timeout,
           std::function<void()> onExpiry)
      : state_(std::make_shared<State>()), timer_(ex, timeout) {
    state_->onExpiry = std::move(onExpiry);
    timer_.async_wait([state = state_](error_code ec) {
      if (ec || state->disarmed) return;
      state->expired = true;
      state->onExpiry();
    });
  }
  ~Watchdog() { disarm(); }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  void disarm() {
    state_->disarmed = true;
    state_->onExpiry = nullptr;  // drop what it captured now
    timer_.cancel();
  }
  [[nodiscard]] bool expired() const { return state_->expired; }

 private:
  struct State {
    bool expired = false;
    bool disarmed = false;
    std::function<void()> onExpiry;
  };
  std::shared_ptr<State> state_;
  asio::steady_timer timer_;
};

}  // namespace pghandoff::proxy
