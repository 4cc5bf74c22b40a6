#pragma once

// A scripted fake PostgreSQL server for tests where the *server* misbehaves
// (RELIABILITY.md §3d): it listens on 127.0.0.1 port 0, accepts connections
// in its own thread and runs a script (std::function<void(FakeConn&)>) for
// each one in a thread of its own. Scripts speak the wire protocol with our
// own encoders (protocol/*.h) and protocol::ScramServer, so a test can send
// exactly the well-formed or broken bytes it wants. Plain blocking sockets
// and poll() with deadlines; no Asio.
// https://www.postgresql.org/docs/15/protocol-flow.html

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "protocol/backend.h"
#include "protocol/startup.h"

namespace pghandoff::test {

// One frontend message: type byte and body (without the 4 length bytes).
struct FakeMessage {
  char type = 0;
  std::vector<std::uint8_t> body;
};

enum class FakeRead : std::uint8_t {
  kOk,
  kClosed,     // the peer closed (EOF or reset) before a whole message arrived
  kTimeout,    // the deadline passed first (or the server is stopping)
  kMalformed,  // a length < 4 or > 1 MiB: the stream is not what we think
};
[[nodiscard]] const char* toString(FakeRead r);

// What one connection did, for assertions after the script ran.
struct FakeConnRecord {
  bool sslRequested = false;  // an SSLRequest arrived (and was answered)
  std::optional<protocol::StartupMessage> startup;
  std::vector<FakeMessage> messages;  // frontend messages read after the startup packet
  // Raw bytes read by readUntilClose() (e.g. a TLS ClientHello after an 'S').
  std::vector<std::uint8_t> trailingBytes;
  bool peerClosed = false;  // EOF/reset seen
  bool finished = false;    // the script returned
};

class FakeServer;

// A one-shot flag a test sets and a script waits for (with a deadline), to
// act "while the client is idle" without sleeping.
class FakeEvent {
 public:
  void set();
  // True once set(); false if the deadline passed first.
  [[nodiscard]] bool wait(std::chrono::milliseconds timeout);

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool set_ = false;
};

// The server side of one accepted connection, handed to the script.
class FakeConn {
 public:
  FakeConn(int fd, FakeServer& server, std::shared_ptr<FakeConnRecord> record);
  ~FakeConn();
  FakeConn(const FakeConn&) = delete;
  FakeConn& operator=(const FakeConn&) = delete;

  // The bytes to answer an SSLRequest with, sent in ONE write: "N" (the
  // default), "S" + extra bytes (B46), "E" + text (B47); empty: an SSLRequest
  // is unexpected and readStartup() fails on it.
  void setSslAnswer(std::string bytes) { sslAnswer_ = std::move(bytes); }

  // Reads the startup packet. An SSLRequest first is answered with the SSL
  // answer; after an 'N' the StartupMessage is read next, after any other
  // answer readStartup() returns nullopt (we cannot speak TLS), leaving the
  // connection open so the script can see what the peer does next.
  // nullopt on close, timeout, a malformed packet or a CancelRequest.
  std::optional<protocol::StartupMessage> readStartup(
      std::chrono::milliseconds timeout = std::chrono::seconds(5));

  // One whole frontend message within the deadline.
  FakeRead readMessage(FakeMessage& out, std::chrono::milliseconds timeout);
  std::optional<FakeMessage> readMessage(
      std::chrono::milliseconds timeout = std::chrono::seconds(5));
  // Reads raw bytes until the peer closes (true) or the deadline passes
  // (false); they are appended to the record's trailingBytes.
  bool readUntilClose(std::chrono::milliseconds timeout = std::chrono::seconds(5));

  // Writes all bytes (one send loop); false if the peer is gone.
  bool send(const std::vector<std::uint8_t>& bytes);
  bool sendRaw(std::string_view bytes);
  // Closes the socket at once (no ErrorResponse).
  void close();
  [[nodiscard]] bool isOpen() const { return fd_ >= 0; }

  // ---- Login helpers (after readStartup) --------------------------------------

  // AuthenticationOk then the usual post-login messages (loginTail()).
  bool sendTrustLogin(protocol::BackendKeyData key = {4242, 777});
  // ParameterStatus server_version/server_encoding/client_encoding/DateStyle/
  // integer_datetimes/standard_conforming_strings, BackendKeyData,
  // ReadyForQuery 'I'.
  static std::vector<std::uint8_t> loginTail(protocol::BackendKeyData key = {4242, 777});

  // A SCRAM-SHA-256 exchange as the server (protocol::ScramServer with a
  // verifier made from `password`). The hooks may rewrite the messages the
  // server sends, to play a hostile or broken server (B49).
  struct Scram {
    std::string password;
    // server-first-message ("r=<nonce>,s=<salt>,i=<n>") -> what is sent instead.
    std::function<std::string(const std::string& serverFirst, const std::string& clientNonce)>
        editServerFirst;
    // server-final-message ("v=<signature>") -> what is sent instead.
    std::function<std::string(const std::string& serverFinal)> editServerFinal;
    // Send AuthenticationOk straight after the client-final-message,
    // without AuthenticationSASLFinal.
    bool skipServerFinal = false;
  };
  enum class ScramOutcome : std::uint8_t {
    kOk,            // AuthenticationSASLFinal (or the skip) and AuthenticationOk were sent
    kPeerGone,      // the peer closed or went silent before sending its next message
    kUnexpected,    // the peer sent something that is not a SASL message
    kClientFailed,  // ScramServer rejected the client's messages (e.g. wrong password)
  };
  // Does not send the login tail: call send(loginTail()) after kOk.
  ScramOutcome scramLogin(const Scram& scram,
                          std::chrono::milliseconds timeout = std::chrono::seconds(5));

  // ---- Serving queries ---------------------------------------------------------

  // Answers each simple Query with onQuery(sql) (default: one row "1")
  // until Terminate (true), close (true) or a timeout/other message (false).
  bool serveQueries(
      const std::function<std::vector<std::uint8_t>(std::string_view sql)>& onQuery = {},
      std::chrono::milliseconds idle = std::chrono::seconds(10));

 private:
  friend class FakeServer;
  FakeRead fill(std::chrono::steady_clock::time_point deadline);
  void record(const std::function<void(FakeConnRecord&)>& f);

  int fd_ = -1;
  FakeServer& server_;
  std::shared_ptr<FakeConnRecord> record_;
  std::string sslAnswer_ = "N";
  std::vector<std::uint8_t> buf_;
  bool peerClosed_ = false;
};

class FakeServer {
 public:
  using Script = std::function<void(FakeConn&)>;

  // Listens on 127.0.0.1:0 and starts the accept thread. With no script, each
  // connection gets defaultScript(). Throws std::runtime_error on failure.
  explicit FakeServer(Script script = {});
  // Stops accepting, makes every pending read time out and joins all threads.
  ~FakeServer();
  FakeServer(const FakeServer&) = delete;
  FakeServer& operator=(const FakeServer&) = delete;

  [[nodiscard]] std::uint16_t port() const { return port_; }
  // For connections accepted from now on.
  void setScript(Script script);
  // Trust login, then serveQueries() with its default answer.
  static void defaultScript(FakeConn& c);

  // Connections accepted so far.
  [[nodiscard]] int connectionCount() const { return accepted_.load(); }
  // Snapshot of every connection's record, in accept order.
  [[nodiscard]] std::vector<FakeConnRecord> records() const;
  // The record of connection `index` (0-based, accept order); nullopt if absent.
  [[nodiscard]] std::optional<FakeConnRecord> record(std::size_t index) const;
  // Waits until `count` connections were accepted and their scripts returned.
  bool waitFinished(int count, std::chrono::milliseconds timeout);
  // Waits until every accepted connection's script returned.
  bool waitIdle(std::chrono::milliseconds timeout);

  [[nodiscard]] bool stopping() const { return stopping_.load(); }

 private:
  friend class FakeConn;
  void acceptLoop();
  void runConnection(int fd, std::shared_ptr<FakeConnRecord> record, Script script);

  int listenFd_ = -1;
  std::uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> accepted_{0};
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  Script script_;
  std::vector<std::shared_ptr<FakeConnRecord>> records_;
  std::vector<std::thread> workers_;
  std::thread acceptor_;
};

// ---- Backend message builders for scripts -----------------------------------------

// RowDescription (text columns), DataRows, CommandComplete, ReadyForQuery.
std::vector<std::uint8_t> rowsResponse(const std::vector<std::string>& columns,
                                       const std::vector<std::vector<std::string>>& rows,
                                       const std::string& tag, char txStatus = 'I');
std::vector<std::uint8_t> commandComplete(std::string_view tag);
std::vector<std::uint8_t> readyForQuery(char txStatus = 'I');
// A typed backend message with the given body and a correct length.
std::vector<std::uint8_t> backendMessage(char type, std::string_view body);
// Simple Query text of a frontend message; nullopt unless 'Q' and well-formed.
std::optional<std::string> querySql(const FakeMessage& m);

}  // namespace pghandoff::test
