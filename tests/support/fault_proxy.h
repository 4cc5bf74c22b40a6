#pragma once

// A TCP fault proxy for tests (RELIABILITY.md §6 "In-repo TCP fault proxy"):
// toxiproxy-like faults (latency, bandwidth, refuse, reset_peer, FIN, a
// blackhole) plus protocol-aware ones (reset right after forwarding a message
// of a given type, e.g. the client's COMMIT 'Q' or the server's
// CommandComplete 'C'). It listens on 127.0.0.1 port 0 and forwards each
// accepted connection to upstreamHost:upstreamPort, one thread per connection
// pair, plain blocking sockets + poll(); no Asio.
//
// Its framing is deliberately its own tiny reader of the 5-byte header (type
// byte + int32 length), independent of protocol/frame.h, so a bug in the
// proxy's parser cannot hide behind the same bug here.
// https://www.postgresql.org/docs/15/protocol-overview.html#PROTOCOL-MESSAGE-CONCEPTS
//
// All setters are thread-safe and apply to live and new connections at once
// (latency applies to bytes read from then on).

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace pghandoff::test {

enum class Direction : std::uint8_t {
  kClientToServer,  // what the proxy's downstream peer sends (the frontend side)
  kServerToClient,  // what the upstream server sends (the backend side)
};
[[nodiscard]] const char* toString(Direction d);

class FaultProxy {
 public:
  // Listens on 127.0.0.1:0 and starts the accept thread. upstreamHost is a
  // numeric IPv4 address or "localhost". Throws std::runtime_error on failure.
  FaultProxy(std::string upstreamHost, std::uint16_t upstreamPort);
  // Stops accepting, closes every connection (FIN) and joins all threads.
  ~FaultProxy();
  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;

  [[nodiscard]] std::uint16_t port() const { return port_; }

  // Bytes read from one side are written to the other no earlier than
  // `upstream` (client->server) / `downstream` (server->client) later.
  void setLatency(std::chrono::milliseconds upstream, std::chrono::milliseconds downstream);
  // Each direction of each connection forwards at most this many bytes per
  // second (token bucket, burst 1/20 s worth). 0 = unlimited.
  void setBandwidth(std::uint64_t bytesPerSecond);
  // true: new connections are accepted and closed at once (FIN) without
  // contacting the upstream server. Live connections are unaffected.
  void refuseNew(bool refuse);
  // RST every live connection, both sides (SO_LINGER 0 + close).
  void resetAll();
  // FIN every live connection, both sides (close).
  void cutAll();
  // true: forward nothing in either direction and read nothing, without
  // closing (a blackhole: peers see no error, data waits in kernel buffers).
  void freeze(bool frozen);
  // One-shot: the next message of `type` that is completely forwarded in
  // `direction` (on any connection) is followed by a reset of that
  // connection (both sides), before any later byte is forwarded. Startup
  // packets, the SSLRequest answer and TLS streams never match.
  void cutAfterMessage(char type, Direction direction);
  // Clears every fault above (latency 0, unlimited bandwidth, refuse off,
  // unfrozen, no pending cut). Live connections are kept.
  void clearFaults();

  // Connection pairs currently open / accepted since construction.
  [[nodiscard]] int connectionCount() const;
  [[nodiscard]] int acceptedCount() const { return accepted_.load(); }
  // Bytes written to peers, both directions / one direction.
  [[nodiscard]] std::uint64_t bytesForwarded() const;
  [[nodiscard]] std::uint64_t bytesForwarded(Direction d) const;
  // True once a cutAfterMessage() fired (reset by the next cutAfterMessage()).
  [[nodiscard]] bool cutFired() const { return cutFired_.load(); }

  struct Conn;  // internal, per connection pair

 private:
  void acceptLoop();
  void runConnection(std::shared_ptr<Conn> conn);
  void notifyAll();

  std::string upstreamHost_;
  std::uint16_t upstreamPort_ = 0;
  int listenFd_ = -1;
  int wakeFd_ = -1;  // eventfd: wakes the accept loop at shutdown
  std::uint16_t port_ = 0;

  std::atomic<bool> stopping_{false};
  std::atomic<bool> refuse_{false};
  std::atomic<bool> frozen_{false};
  std::atomic<long long> latencyUpMs_{0};
  std::atomic<long long> latencyDownMs_{0};
  std::atomic<std::uint64_t> bandwidth_{0};
  // Armed cut: type byte and direction, -1 when none.
  std::atomic<int> cutType_{-1};
  std::atomic<int> cutDirection_{0};
  std::atomic<bool> cutFired_{false};
  std::atomic<int> accepted_{0};
  std::atomic<std::uint64_t> forwarded_[2] = {0, 0};

  mutable std::mutex mutex_;
  std::vector<std::shared_ptr<Conn>> conns_;
  std::vector<std::thread> workers_;
  std::thread acceptor_;
};

}  // namespace pghandoff::test
