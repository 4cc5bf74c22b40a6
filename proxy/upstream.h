// The proxy's connection to one PostgreSQL server: connect with a deadline,
// negotiate TLS per sslmode, send the StartupMessage, authenticate (SCRAM-
// SHA-256 with channel binding where possible, MD5, cleartext), and collect
// what the server reports until its first ReadyForQuery.
// https://www.postgresql.org/docs/15/protocol-flow.html#id-1.10.6.7.3
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "config/conninfo.h"
#include "protocol/backend.h"
#include "protocol/error.h"
#include "proxy/asio.h"
#include "proxy/stream.h"

namespace pghandoff::proxy {

struct LoginResult {
  bool ok = false;
  // On failure: what the client is told. A server's own ErrorResponse is
  // passed on as it came; failures of the proxy are 08001.
  protocol::ErrorFields error;
  // ParameterStatus and NoticeResponse frames, raw, to replay to the client.
  std::vector<std::uint8_t> replay;
  protocol::BackendKeyData key;
  char txStatus = 'I';
  tcp::endpoint endpoint;  // where CancelRequests for this session go
};

class ServerConnection {
 public:
  ServerConnection(asio::any_io_executor ex, std::shared_ptr<ssl::context> tlsCtx)
      : tlsCtx_(std::move(tlsCtx)), stream_(tcp::socket(ex), *tlsCtx_) {}

  // `params` are the client's startup parameters to pass on (user and
  // database are taken from `info`).
  [[nodiscard]] awaitable<LoginResult> login(
      const config::ConnInfo& info, const std::vector<std::pair<std::string, std::string>>& params,
      std::chrono::milliseconds timeout);

  Stream& stream() { return stream_; }

 private:
  [[nodiscard]] awaitable<LoginResult> loginSteps(
      const config::ConnInfo& info, const std::vector<std::pair<std::string, std::string>>& params);

  std::shared_ptr<ssl::context> tlsCtx_;
  Stream stream_;
};

// Sends a CancelRequest for (pid, key) to `endpoint` over a fresh plain
// connection, as libpq's PQcancel does, and waits for the server to close it.
[[nodiscard]] awaitable<bool> sendCancel(asio::any_io_executor ex, tcp::endpoint endpoint,
                                         protocol::BackendKeyData key);

}  // namespace pghandoff::proxy
