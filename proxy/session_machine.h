// The pure part of a client session: what each relayed frame means for the
// session's state. No sockets, no clocks: the I/O driver (client_session)
// feeds frames in and acts on the answers, and tests drive it with tables.
//
// Protocol references (https://www.postgresql.org/docs/15/protocol-flow.html):
// a simple Query, a Sync and a FunctionCall each end in exactly one
// ReadyForQuery; CopyInResponse/CopyOutResponse/CopyBothResponse switch the
// connection into the COPY sub-protocol until CopyDone/CopyFail (client) or
// CopyDone (server) and the following CommandComplete/ErrorResponse.
#pragma once

#include <cstdint>
#include <string_view>

#include "protocol/buffer.h"

namespace pghandoff::proxy {

enum class SessionState : std::uint8_t {
  kStartup,         // reading SSLRequest / StartupMessage
  kAuthenticating,  // the proxy authenticates the client
  kConnecting,      // the proxy logs in to the server
  kIdle,            // ReadyForQuery sent, nothing outstanding
  kBusy,            // queries outstanding (Query, Sync, FunctionCall sent; no ReadyForQuery yet)
  kCopyIn,          // COPY FROM STDIN: the client streams CopyData
  kCopyOut,         // COPY TO STDOUT: the server streams CopyData
  kCopyBoth,        // replication-style COPY both ways
  kClosing,
  kClosed,
};

[[nodiscard]] const char* toString(SessionState s);

enum class ClientVerdict : std::uint8_t {
  kForward,           // relay the frame to the server unchanged
  kForwardThenClose,  // Terminate: relay it, then end the session cleanly
};

enum class ServerVerdict : std::uint8_t {
  kForward,
  kOutOfSync,  // a frame that cannot be trusted: ReadyForQuery nobody asked for,
               // a malformed ReadyForQuery
};

class SessionMachine {
 public:
  [[nodiscard]] SessionState state() const { return state_; }
  // 'I' idle, 'T' in transaction, 'E' failed transaction, as the last
  // ReadyForQuery said.
  [[nodiscard]] char transactionStatus() const { return txStatus_; }
  // Requests sent that still await their ReadyForQuery.
  [[nodiscard]] std::uint32_t pendingReady() const { return pendingReady_; }
  // The server is working for this client: a vanished client must have its
  // query cancelled before the server connection is closed (F10).
  [[nodiscard]] bool serverBusy() const { return pendingReady_ > 0 || inCopy(); }
  // At a transaction boundary: nothing outstanding and no transaction open.
  [[nodiscard]] bool atTransactionBoundary() const {
    return state_ == SessionState::kIdle && txStatus_ == 'I';
  }
  [[nodiscard]] bool inCopy() const {
    return state_ == SessionState::kCopyIn || state_ == SessionState::kCopyOut ||
           state_ == SessionState::kCopyBoth;
  }

  // Startup phases, driven by the I/O side in order.
  void startAuthentication() { transition(SessionState::kAuthenticating); }
  void startConnecting() { transition(SessionState::kConnecting); }
  // The server's first ReadyForQuery after login.
  void ready(char txStatus) {
    txStatus_ = txStatus;
    transition(SessionState::kIdle);
  }
  void closed() { transition(SessionState::kClosed); }

  // A whole frame from the client (type byte only: bodies are not needed to
  // track state, so large messages can stream through).
  [[nodiscard]] ClientVerdict onClientFrame(char type);
  // A whole frame from the server. `body` is needed for ReadyForQuery only.
  [[nodiscard]] ServerVerdict onServerFrame(char type, protocol::Bytes body);

  // Does the relay need the server frame's body in memory?
  [[nodiscard]] static bool serverBodyNeeded(char type) {
    return type == 'Z' || type == 'S' || type == 'E';
  }

 private:
  void transition(SessionState next) { state_ = next; }
  void settle();

  SessionState state_ = SessionState::kStartup;
  char txStatus_ = 'I';
  std::uint32_t pendingReady_ = 0;
};

}  // namespace pghandoff::proxy
