// The admin HTTP API (SPEC §5): health, status, metrics and (from issue 3) phase control.
//
// It has its own budget so it keeps answering during a client connection storm or slowloris
// (RELIABILITY F18/G8): at most AdminOptions::maxConnections connections, a read deadline per
// request, bounded headers and bodies (B58). Everything except /healthz needs
// `Authorization: Bearer <token>`, compared in constant time (B53); state changes only via
// POST (B55). The token is never logged or echoed.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

namespace pghandoff::proxy {

// What a control hook answers: the HTTP status and a JSON body.
struct AdminReply {
  int status;
  std::string json;
};

// Called on the admin server's strand; they must be safe to call from that thread. A missing
// control hook (setPhase, pause, resume) answers 501 "not built yet".
struct AdminHooks {
  std::function<bool()> healthy;            // /healthz 200 when true, 503 otherwise
  std::function<std::string()> statusJson;  // GET /status body (application/json)
  std::function<std::string()> phase;       // GET /phase -> {"phase":"source-only"}
  // POST /phase, after validation: a known phase name, drain_timeout if given.
  std::function<boost::asio::awaitable<AdminReply>(std::string,
                                                   std::optional<std::chrono::milliseconds>)>
      setPhase;
  // POST /pause (optional body {"drain_timeout": "5s"}), POST /resume (no body).
  std::function<boost::asio::awaitable<AdminReply>(std::optional<std::chrono::milliseconds>)> pause;
  std::function<AdminReply()> resume;
  // POST /seed/start|heartbeat|finish|abort (optional body {"drain_timeout": "5s"}):
  // the seed's steps, driven by `pghandoff seed` (proxy/seed.cpp). The action
  // is the last path segment.
  std::function<boost::asio::awaitable<AdminReply>(std::string,
                                                   std::optional<std::chrono::milliseconds>)>
      seed;
  std::function<std::string()> seedJson;  // GET /seed: the seed's progress
  // Before GET /metrics renders: sets the gauges that are computed rather
  // than counted (the async mirror's lag and queue), so a scrape right after
  // a write sees it, not the value of the last periodic update.
  std::function<void()> refreshGauges;
};

struct AdminOptions {
  // A request (headers and body) must arrive within this time, and so must the next request on
  // a kept-alive connection; a response must be taken within it too. Otherwise the connection
  // is closed.
  std::chrono::milliseconds timeout{10'000};
  std::size_t maxConnections = 64;     // more are accepted and closed at once
  std::size_t headerLimit = 8 * 1024;  // 431 above
  std::size_t bodyLimit = 64 * 1024;   // 413 above
};

// Destroy an AdminServer before its io_context. The coroutines share its state, so it is also
// safe for them to finish after the AdminServer object is gone.
class AdminServer {
 public:
  // Binds and listens; throws std::runtime_error naming host:port if that fails.
  AdminServer(boost::asio::io_context& io, const std::string& host, std::uint16_t port,
              std::string token, AdminHooks hooks, AdminOptions options = {});
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  void start();  // spawns the accept loop
  // Closes the acceptor and every open admin connection. Thread-safe; takes effect on the
  // io_context (immediately when called from it).
  void stop();
  [[nodiscard]] std::uint16_t port() const;  // the bound port (tests bind port 0)

  struct State;  // shared with the coroutines, which may outlive this object

 private:
  std::shared_ptr<State> state_;
  std::uint16_t port_ = 0;
};

// A strict RFC 8259 parser for one flat JSON object whose values are all strings, e.g. the
// POST /phase body. Returns the members in order, or nullopt for anything else: malformed
// JSON, a non-string value, duplicate keys, invalid UTF-8, more than kMaxMembers members.
// Iterative and bounded by its input; safe on arbitrary bytes.
inline constexpr std::size_t kMaxJsonMembers = 32;
[[nodiscard]] std::optional<std::vector<std::pair<std::string, std::string>>> parseFlatJsonObject(
    std::string_view in);

// Escapes a string for inclusion between double quotes in JSON.
[[nodiscard]] std::string jsonEscape(std::string_view s);

}  // namespace pghandoff::proxy
