#pragma once

// A small raw-socket PostgreSQL client for bad-input and fault tests: it sends
// exactly the bytes a test builds (well-formed ones from the protocol/
// encoders, or deliberately broken ones) and reads backend messages one at a
// time with a deadline, so a test can assert the proxy's exact answer, or
// that it closed without one. It also does a full SCRAM-SHA-256 login
// (protocol::ScramClient) so a test can send hand-made messages after auth.
// https://www.postgresql.org/docs/15/protocol-flow.html

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "protocol/backend.h"
#include "protocol/error.h"
#include "protocol/startup.h"

namespace pghandoff::test {

// One backend message: type byte and body (without the 4 length bytes).
struct BackendMessage {
  char type = 0;
  std::vector<std::uint8_t> body;
};

enum class ReadStatus : std::uint8_t {
  kOk,         // a whole message (or byte) was read
  kClosed,     // the peer closed (EOF or reset) before a whole message arrived
  kTimeout,    // the deadline passed first
  kMalformed,  // the header's length is < 4 or > 64 MiB
};
[[nodiscard]] const char* toString(ReadStatus s);

struct ReadResult {
  ReadStatus status = ReadStatus::kTimeout;
  BackendMessage message;  // valid when status is kOk
};

// What came back before the peer closed (or the deadline passed).
// Takes one whole backend message off the front of `buf`, framed by
// protocol::parseBackendHeader: kOk with the message, kMalformed (bad type or
// length), or nullopt when more bytes are needed. Shared by the plain and TLS
// raw clients, which differ only in how bytes arrive.
std::optional<ReadResult> takeBackendMessage(std::vector<std::uint8_t>& buf);

struct CloseResult {
  bool closed = false;  // EOF or reset seen before the deadline
  std::vector<BackendMessage> messages;
  std::size_t trailingBytes = 0;  // bytes of an incomplete message at the close
  [[nodiscard]] std::string types() const;
  // The decoded ErrorResponses among messages, in order.
  [[nodiscard]] std::vector<protocol::ErrorFields> errors() const;
};

// One blocking TCP connection to 127.0.0.1 (TCP_NODELAY, so one send() is one
// segment on loopback and the proxy sees it in one read).
class RawClient {
 public:
  RawClient() = default;
  // Connects; throws std::runtime_error on failure (e.g. ECONNREFUSED).
  explicit RawClient(std::uint16_t port, const std::string& host = "127.0.0.1");
  ~RawClient();
  RawClient(RawClient&& other) noexcept;
  RawClient& operator=(RawClient&& other) noexcept;
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  // Non-throwing connect: nullopt with errno's text in *error on failure.
  static std::optional<RawClient> tryConnect(std::uint16_t port, std::string* error = nullptr,
                                             const std::string& host = "127.0.0.1");

  [[nodiscard]] bool isOpen() const { return fd_ >= 0; }
  [[nodiscard]] int fd() const { return fd_; }
  // Our side's port: the proxy logs the client as 127.0.0.1:<localPort>.
  [[nodiscard]] std::uint16_t localPort() const;

  // Writes all bytes in one send() loop; false if the peer is gone.
  bool send(std::span<const std::uint8_t> bytes);
  bool send(std::string_view bytes);
  bool send(const std::vector<std::uint8_t>& bytes) {
    return send(std::span<const std::uint8_t>(bytes));
  }

  // One whole backend message within the deadline.
  ReadResult read(std::chrono::milliseconds timeout);
  // One raw byte (the answer to SSLRequest / GSSENCRequest).
  std::pair<ReadStatus, std::uint8_t> readByte(std::chrono::milliseconds timeout);
  // Messages until the peer closes or the deadline passes.
  CloseResult readUntilClose(std::chrono::milliseconds timeout);
  // Raw bytes until the peer closes; nullopt on timeout.
  std::optional<std::vector<std::uint8_t>> readRawUntilClose(std::chrono::milliseconds timeout);
  // Bytes already buffered by us but not yet returned as a message.
  [[nodiscard]] std::size_t buffered() const { return buf_.size(); }

  void shutdownWrite();
  // Closes the socket at once (no Terminate).
  void close();

 private:
  // Waits for readability and appends what arrives; kOk, kClosed or kTimeout.
  ReadStatus fill(std::chrono::steady_clock::time_point deadline);

  int fd_ = -1;
  bool peerClosed_ = false;
  std::vector<std::uint8_t> buf_;
};

// ---- Message builders ------------------------------------------------------

using Params = std::vector<std::pair<std::string, std::string>>;

std::vector<std::uint8_t> startupPacket(const Params& params,
                                        std::int32_t protocol = protocol::kProtocol30);
std::vector<std::uint8_t> sslRequest();
std::vector<std::uint8_t> gssEncRequest();
std::vector<std::uint8_t> cancelRequest(std::int32_t pid, std::int32_t key);
std::vector<std::uint8_t> queryMessage(std::string_view sql);
std::vector<std::uint8_t> terminateMessage();
// Extended query messages: Parse (no parameter types), Bind (no parameters,
// text results), Execute, Sync.
std::vector<std::uint8_t> parseMessage(std::string_view statement, std::string_view sql);
std::vector<std::uint8_t> bindMessage(std::string_view portal, std::string_view statement);
std::vector<std::uint8_t> executeMessage(std::string_view portal, std::int32_t maxRows = 0);
std::vector<std::uint8_t> syncMessage();
// A type byte, an arbitrary claimed length and the given body, for broken frames.
std::vector<std::uint8_t> rawFrame(char type, std::uint32_t claimedLength,
                                   std::string_view body = {});
// Concatenation.
std::vector<std::uint8_t> concat(std::initializer_list<std::vector<std::uint8_t>> parts);

// ---- Decoding ------------------------------------------------------------------

// ErrorResponse/NoticeResponse fields; nullopt for any other message.
std::optional<protocol::ErrorFields> errorOf(const BackendMessage& m);
// An Authentication* request; nullopt unless m is 'R' and decodes.
std::optional<protocol::AuthRequest> authOf(const BackendMessage& m);
// DataRow columns as text (nullopt for NULL); nullopt if malformed.
std::optional<std::vector<std::optional<std::string>>> dataRowOf(const BackendMessage& m);
// "SEVERITY SQLSTATE message" for assertion output.
std::string describe(const protocol::ErrorFields& e);

// ---- Queries ---------------------------------------------------------------------

struct QueryResult {
  int readyCount = 0;  // ReadyForQuery messages seen
  char txStatus = 0;   // from the last ReadyForQuery
  bool closed = false;
  bool timedOut = false;
  std::vector<BackendMessage> messages;
  std::vector<std::vector<std::optional<std::string>>> rows;
  std::vector<std::string> commandTags;
  std::vector<protocol::ErrorFields> errors;
  // One character per message type, e.g. "TDCZ".
  [[nodiscard]] std::string types() const;
};

// Reads until `readyCount` ReadyForQuery messages, the close or the deadline.
QueryResult readUntilReady(RawClient& c, int readyCount = 1,
                           std::chrono::milliseconds timeout = std::chrono::seconds(10));
// Sends a simple Query and reads up to its ReadyForQuery.
QueryResult simpleQuery(RawClient& c, std::string_view sql,
                        std::chrono::milliseconds timeout = std::chrono::seconds(10));

// ---- Login -----------------------------------------------------------------------

struct LoginOptions {
  std::string user = "app";
  std::string password = "app-secret";
  std::string database = "postgres";
  Params extraParams;  // e.g. {"application_name", "x"}
  std::int32_t protocol = protocol::kProtocol30;
  std::chrono::milliseconds timeout = std::chrono::seconds(10);
};

struct LoginResult {
  bool ok = false;
  RawClient client;  // still open after a success; after a failure, as the peer left it
  std::optional<protocol::ErrorFields> error;  // the ErrorResponse that ended the login
  std::string failure;                         // why not ok, when there is no ErrorResponse
  std::vector<BackendMessage> messages;        // everything received, in order
  protocol::BackendKeyData key;
  char txStatus = 0;
};

// StartupMessage, then SCRAM-SHA-256 (plain, no channel binding) with
// protocol::ScramClient, checking the server signature, up to ReadyForQuery.
// Handles NegotiateProtocolVersion, AuthenticationOk without SASL (trust),
// ParameterStatus, BackendKeyData and NoticeResponse on the way.
LoginResult login(std::uint16_t port, const LoginOptions& options = {});
// The same over an already connected client (e.g. after a GSSENCRequest).
LoginResult loginOn(RawClient client, const LoginOptions& options = {});
// login() that throws std::runtime_error (with the error) unless ok.
RawClient loginOrThrow(std::uint16_t port, const LoginOptions& options = {});

// ---- Process inspection ---------------------------------------------------------

// VmRSS of a process in KiB from /proc/<pid>/status; -1 if unknown.
long residentKib(int pid);

}  // namespace pghandoff::test
