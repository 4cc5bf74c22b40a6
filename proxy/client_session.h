// One application connection: startup (SSLRequest, GSSENCRequest,
// CancelRequest, StartupMessage), the proxy's own authentication of the
// client, login to the source, then the relay in both directions.
// https://www.postgresql.org/docs/15/protocol-flow.html
#pragma once

#include <array>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "protocol/backend.h"
#include "protocol/error.h"
#include "protocol/startup.h"
#include "proxy/asio.h"
#include "proxy/phase.h"
#include "proxy/relay_buffer.h"
#include "proxy/runtime.h"
#include "proxy/session_machine.h"
#include "proxy/statement_tracker.h"
#include "proxy/stream.h"
#include "proxy/upstream.h"

namespace pghandoff::proxy {

class ClientSession : public std::enable_shared_from_this<ClientSession> {
 public:
  ClientSession(tcp::socket socket, std::shared_ptr<const Runtime> rt, Registry& registry,
                bool admitted, std::uint64_t id);
  ~ClientSession();

  [[nodiscard]] awaitable<void> run();

  // Graceful shutdown: close at the next transaction boundary with 57P01.
  // Called on any thread; the work is posted to the session's executor.
  void requestShutdown();
  // Past the shutdown timeout: close now.
  void forceClose();
  // flip.on_timeout: cancel — if this session holds a transaction open across
  // a phase change past flip.drain_timeout, end it (57P01; the server rolls
  // the transaction back). Called on any thread.
  void cancelForFlip();

  // For /status (a snapshot, read from another thread; values are relaxed).
  struct Info {
    std::uint64_t id;
    std::string state;
    char txStatus;
    std::string user;
    std::string applicationName;
    std::string clientAddress;
    bool tls;
  };
  [[nodiscard]] Info info() const;

  // For CancelRequests from other connections; set before the session is
  // findable by its key, never changed after.
  [[nodiscard]] tcp::endpoint serverEndpoint() const { return serverEndpoint_; }
  [[nodiscard]] protocol::BackendKeyData serverKey() const { return serverKey_; }

 private:
  enum class Startup : std::uint8_t { kContinue, kDone, kClose };

  awaitable<void> runInner();
  awaitable<bool> startupPhase();
  awaitable<std::optional<protocol::Bytes>> readStartupPacket();
  awaitable<void> handleCancel(protocol::Bytes packet);
  awaitable<bool> authenticate();
  awaitable<bool> authenticateScram(const std::string& user, const UserSecret* secret);
  awaitable<bool> authenticateMd5(const std::string& user, const UserSecret* secret);
  awaitable<std::optional<std::vector<std::uint8_t>>> readAuthMessage();
  awaitable<bool> connectSource();
  awaitable<void> clientToServer();
  awaitable<void> serverToClient();
  awaitable<void> closeServerGracefully(bool cancelFirst);
  // forceClose's work, on the session's executor: serverToClient wakes, ends
  // the server session (cancelling a running query) and tells the client.
  void closeNow();
  // Takes the phase barrier before work starts at a transaction boundary;
  // waits while a flip or a pause holds new transactions. False when the
  // session is ending instead.
  awaitable<bool> beginTransaction();
  void endTransaction();

  // Errors to the client: prepared by plain functions, sent by a coroutine
  // without arguments. No temporary ever lives in a co_await expression:
  // GCC 12 destroys such temporaries twice (the proxy crashed on every FATAL).
  void prepareError(const protocol::ErrorFields& e);  // and count it
  void prepareFatal(const char* code, std::string message, std::string detail = {});
  awaitable<void> flushError();
  awaitable<bool> writeClient(const std::vector<std::uint8_t>& bytes);

  void onClientFrameForMetrics(char type);
  // Counts queries_total by what the statement does; keeps the extended-
  // protocol statement/portal map.
  void trackStatement(char type, protocol::Bytes body, bool whole);
  [[nodiscard]] protocol::StatementKind classify(std::string_view sql);
  void onReadyForMetrics();

  std::shared_ptr<const Runtime> rt_;
  Registry& registry_;
  PhaseController& phases_;
  std::uint64_t id_;
  bool admitted_;
  asio::any_io_executor ex_;
  Stream client_;
  std::optional<ServerConnection> server_;
  RelayBuffer cbuf_;  // client -> server
  RelayBuffer sbuf_;  // server -> client
  SessionMachine machine_;
  StatementTracker statements_;
  protocol::Classification scratch_;  // reused: a cache hit allocates nothing

  std::string user_;
  std::string database_;
  std::string applicationName_;
  std::string clientAddress_;
  std::vector<std::pair<std::string, std::string>> passOn_;  // startup parameters for the server
  std::optional<protocol::BackendKeyData> proxyKey_;
  protocol::BackendKeyData serverKey_{};
  tcp::endpoint serverEndpoint_;

  // Relay coordination (all on the session's executor).
  bool closing_ = false;  // the session is ending; no more errors to the client
  bool serverWriting_ = false;
  bool clientWriting_ = false;
  bool shutdownRequested_ = false;
  bool forced_ = false;
  bool serverSentFatal_ = false;
  bool startupTimedOut_ = false;  // set by the startup watchdog
  bool flipCancelled_ = false;    // forced_ by cancelForFlip, not by shutdown

  // The phase barrier (proxy/phase.h): held from the first message of a
  // transaction to the ReadyForQuery that ends it.
  bool inTransaction_ = false;
  Phase txPhase_ = Phase::kSourceOnly;
  std::shared_ptr<asio::steady_timer> holdTimer_;  // waiting for the gate to open
  std::vector<std::uint8_t> errorOut_;
  std::optional<protocol::ErrorFields> pendingFatal_;  // sent by serverToClient as its last word

  // Query timing: send times of requests awaiting ReadyForQuery.
  std::array<std::chrono::steady_clock::time_point, 64> sent_{};
  std::uint32_t sentHead_ = 0, sentCount_ = 0;

  // What info() may read from other threads. user_, applicationName_ and
  // clientAddress_ are written before publicState_ leaves kStartup (release)
  // and read only after (acquire).
  std::atomic<int> publicState_{0};
  std::atomic<char> publicTx_{'I'};
  void publish() {
    publicState_.store(static_cast<int>(machine_.state()), std::memory_order_release);
    publicTx_.store(machine_.transactionStatus(), std::memory_order_relaxed);
  }
};

}  // namespace pghandoff::proxy
