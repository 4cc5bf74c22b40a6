#include "tests/support/fake_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <variant>

#include "protocol/buffer.h"
#include "protocol/error.h"
#include "protocol/frame.h"
#include "protocol/frontend.h"
#include "protocol/scram.h"

namespace pghandoff::test {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Frontend messages in these tests are small; a larger claimed length means
// the stream is not what the script thinks it is.
constexpr std::uint32_t kMaxFakeMessage = 1U << 20;
// poll() slices, so that a stopping server ends every wait promptly.
constexpr int kPollSliceMs = 50;

std::uint32_t readBigEndian32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

// The value of attribute `name` ("r", "s", ...) in a SCRAM message, or "".
std::string scramAttribute(std::string_view msg, char name) {
  std::size_t pos = 0;
  while (pos < msg.size()) {
    std::size_t end = msg.find(',', pos);
    if (end == std::string_view::npos) end = msg.size();
    std::string_view part = msg.substr(pos, end - pos);
    if (part.size() >= 2 && part[0] == name && part[1] == '=') return std::string(part.substr(2));
    pos = end + 1;
  }
  return {};
}

}  // namespace

const char* toString(FakeRead r) {
  switch (r) {
    case FakeRead::kOk:
      return "ok";
    case FakeRead::kClosed:
      return "closed";
    case FakeRead::kTimeout:
      return "timeout";
    case FakeRead::kMalformed:
      return "malformed";
  }
  return "?";
}

// ---- FakeEvent ---------------------------------------------------------------------

void FakeEvent::set() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    set_ = true;
  }
  cv_.notify_all();
}

bool FakeEvent::wait(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  return cv_.wait_for(lock, timeout, [this] { return set_; });
}

// ---- Builders ----------------------------------------------------------------------

std::vector<std::uint8_t> backendMessage(char type, std::string_view body) {
  std::vector<std::uint8_t> out;
  protocol::Writer w(out);
  w.begin(type).raw(body);
  w.end();
  return out;
}

std::vector<std::uint8_t> commandComplete(std::string_view tag) {
  std::vector<std::uint8_t> out;
  protocol::Writer w(out);
  w.begin('C').cstring(tag);
  w.end();
  return out;
}

std::vector<std::uint8_t> readyForQuery(char txStatus) {
  std::vector<std::uint8_t> out;
  protocol::encodeReadyForQuery(txStatus, out);
  return out;
}

std::vector<std::uint8_t> rowsResponse(const std::vector<std::string>& columns,
                                       const std::vector<std::vector<std::string>>& rows,
                                       const std::string& tag, char txStatus) {
  // RowDescription: every column is text (OID 25), variable length, text format.
  constexpr std::int32_t kTextOid = 25;
  std::vector<std::uint8_t> out;
  protocol::Writer w(out);
  w.begin('T').int16(static_cast<std::int16_t>(columns.size()));
  for (const auto& name : columns) {
    w.cstring(name).int32(0).int16(0).int32(kTextOid).int16(-1).int32(-1).int16(0);
  }
  w.end();
  for (const auto& row : rows) {
    protocol::Writer d(out);
    d.begin('D').int16(static_cast<std::int16_t>(row.size()));
    for (const auto& v : row) d.int32(static_cast<std::int32_t>(v.size())).raw(v);
    d.end();
  }
  auto cc = commandComplete(tag);
  out.insert(out.end(), cc.begin(), cc.end());
  protocol::encodeReadyForQuery(txStatus, out);
  return out;
}

std::optional<std::string> querySql(const FakeMessage& m) {
  if (m.type != 'Q') return std::nullopt;
  auto sql = protocol::decodeQueryBody(m.body);
  if (!sql) return std::nullopt;
  return std::string(*sql);
}

// ---- FakeConn ----------------------------------------------------------------------

FakeConn::FakeConn(int fd, FakeServer& server, std::shared_ptr<FakeConnRecord> record)
    : fd_(fd), server_(server), record_(std::move(record)) {}

FakeConn::~FakeConn() {
  close();
}

void FakeConn::record(const std::function<void(FakeConnRecord&)>& f) {
  {
    std::lock_guard<std::mutex> lock(server_.mutex_);
    f(*record_);
  }
  server_.changed_.notify_all();
}

void FakeConn::close() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

bool FakeConn::send(const std::vector<std::uint8_t>& bytes) {
  std::size_t sent = 0;
  while (sent < bytes.size()) {
    if (fd_ < 0) return false;
    const ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    sent += static_cast<std::size_t>(n);
  }
  return true;
}

bool FakeConn::sendRaw(std::string_view bytes) {
  auto b = protocol::asBytes(bytes);
  return send(std::vector<std::uint8_t>(b.begin(), b.end()));
}

FakeRead FakeConn::fill(Clock::time_point deadline) {
  if (fd_ < 0 || peerClosed_) return FakeRead::kClosed;
  while (true) {
    if (server_.stopping()) return FakeRead::kTimeout;
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return FakeRead::kTimeout;
    pollfd p{fd_, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::min<long>(left, kPollSliceMs)));
    if (r < 0) {
      if (errno == EINTR) continue;
      return FakeRead::kClosed;
    }
    if (r == 0) continue;
    std::uint8_t chunk[65536];
    const ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
    if (n > 0) {
      buf_.insert(buf_.end(), chunk, chunk + n);
      return FakeRead::kOk;
    }
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    // 0 is EOF; ECONNRESET and friends also mean the peer is gone.
    peerClosed_ = true;
    record([](FakeConnRecord& r) { r.peerClosed = true; });
    return FakeRead::kClosed;
  }
}

std::optional<protocol::StartupMessage> FakeConn::readStartup(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    // Startup-phase packets: Int32 length (itself included), Int32 code.
    if (buf_.size() >= 8) {
      const std::uint32_t len = readBigEndian32(buf_.data());
      if (len < 8 || len > protocol::kStartupLimit) return std::nullopt;
      if (buf_.size() >= len) {
        const auto code = static_cast<std::int32_t>(readBigEndian32(buf_.data() + 4));
        std::vector<std::uint8_t> packet(buf_.begin(), buf_.begin() + len);
        buf_.erase(buf_.begin(), buf_.begin() + len);
        if (code == protocol::kSslRequestCode) {
          record([](FakeConnRecord& r) { r.sslRequested = true; });
          if (sslAnswer_.empty()) return std::nullopt;
          // One write, so that any extra bytes arrive with the answer (B46).
          if (!sendRaw(sslAnswer_)) return std::nullopt;
          if (sslAnswer_[0] != 'N') return std::nullopt;
          continue;
        }
        if (code == protocol::kGssEncRequestCode) {
          if (!sendRaw("N")) return std::nullopt;
          continue;
        }
        if (code == protocol::kCancelRequestCode) return std::nullopt;
        protocol::StartupError err{};
        auto startup = protocol::decodeStartup(packet, &err);
        if (startup) record([&](FakeConnRecord& r) { r.startup = *startup; });
        return startup;
      }
    }
    if (fill(deadline) != FakeRead::kOk) return std::nullopt;
  }
}

FakeRead FakeConn::readMessage(FakeMessage& out, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    if (buf_.size() >= 5) {
      const std::uint32_t len = readBigEndian32(buf_.data() + 1);
      if (len < 4 || len > kMaxFakeMessage) return FakeRead::kMalformed;
      if (buf_.size() >= std::size_t{len} + 1) {
        out.type = static_cast<char>(buf_[0]);
        out.body.assign(buf_.begin() + 5, buf_.begin() + 1 + len);
        buf_.erase(buf_.begin(), buf_.begin() + 1 + len);
        record([&](FakeConnRecord& r) { r.messages.push_back(out); });
        return FakeRead::kOk;
      }
    }
    if (auto st = fill(deadline); st != FakeRead::kOk) return st;
  }
}

std::optional<FakeMessage> FakeConn::readMessage(std::chrono::milliseconds timeout) {
  FakeMessage m;
  if (readMessage(m, timeout) != FakeRead::kOk) return std::nullopt;
  return m;
}

bool FakeConn::readUntilClose(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    if (!buf_.empty()) {
      record([&](FakeConnRecord& r) {
        r.trailingBytes.insert(r.trailingBytes.end(), buf_.begin(), buf_.end());
      });
      buf_.clear();
    }
    auto st = fill(deadline);
    if (st == FakeRead::kClosed) {
      if (!buf_.empty()) continue;  // unreachable: fill() returns kOk with data
      return true;
    }
    if (st != FakeRead::kOk) return false;
  }
}

std::vector<std::uint8_t> FakeConn::loginTail(protocol::BackendKeyData key) {
  std::vector<std::uint8_t> out;
  // What a PostgreSQL 15 server reports at login (protocol-flow.html,
  // "ParameterStatus"); libpq reads client_encoding and
  // standard_conforming_strings from here.
  protocol::encodeParameterStatus("application_name", "", out);
  protocol::encodeParameterStatus("client_encoding", "UTF8", out);
  protocol::encodeParameterStatus("DateStyle", "ISO, MDY", out);
  protocol::encodeParameterStatus("integer_datetimes", "on", out);
  protocol::encodeParameterStatus("server_encoding", "UTF8", out);
  protocol::encodeParameterStatus("server_version", "15.99 (fake)", out);
  protocol::encodeParameterStatus("standard_conforming_strings", "on", out);
  protocol::encodeParameterStatus("TimeZone", "UTC", out);
  protocol::encodeBackendKey(key, out);
  protocol::encodeReadyForQuery('I', out);
  return out;
}

bool FakeConn::sendTrustLogin(protocol::BackendKeyData key) {
  std::vector<std::uint8_t> out;
  protocol::encodeAuthOk(out);
  auto tail = loginTail(key);
  out.insert(out.end(), tail.begin(), tail.end());
  return send(out);
}

FakeConn::ScramOutcome FakeConn::scramLogin(const Scram& scram, std::chrono::milliseconds timeout) {
  auto verifier = protocol::makeScramVerifier(scram.password);
  if (!verifier) return ScramOutcome::kClientFailed;
  std::string user;
  {
    std::lock_guard<std::mutex> lock(server_.mutex_);
    if (record_->startup) {
      if (const auto* u = record_->startup->find("user")) user = *u;
    }
  }
  protocol::ScramServer server(user, *verifier, false, {});
  std::vector<std::uint8_t> out;
  protocol::encodeAuthSasl(server.mechanisms(), out);
  if (!send(out)) return ScramOutcome::kPeerGone;

  // SASLInitialResponse
  FakeMessage m;
  auto st = readMessage(m, timeout);
  if (st == FakeRead::kClosed || st == FakeRead::kTimeout) return ScramOutcome::kPeerGone;
  if (st != FakeRead::kOk || m.type != 'p') return ScramOutcome::kUnexpected;
  auto initial = protocol::decodeSaslInitialBody(m.body);
  if (!initial || !initial->data) return ScramOutcome::kUnexpected;
  const std::string clientFirst(protocol::asString(*initial->data));
  auto first = server.clientFirst(initial->mechanism, clientFirst);
  if (std::holds_alternative<protocol::AuthFailure>(first)) return ScramOutcome::kClientFailed;
  std::string serverFirst = std::get<std::string>(first);
  // client-first-message = gs2-header client-first-message-bare; the nonce
  // is the bare part's "r=" attribute.
  const std::string clientNonce = scramAttribute(clientFirst, 'r');
  if (scram.editServerFirst) serverFirst = scram.editServerFirst(serverFirst, clientNonce);
  out.clear();
  protocol::encodeAuthSaslContinue(serverFirst, out);
  if (!send(out)) return ScramOutcome::kPeerGone;

  // SASLResponse: the body is the client-final-message itself.
  st = readMessage(m, timeout);
  if (st == FakeRead::kClosed || st == FakeRead::kTimeout) return ScramOutcome::kPeerGone;
  if (st != FakeRead::kOk || m.type != 'p') return ScramOutcome::kUnexpected;
  auto final = server.clientFinal(protocol::asString(m.body));
  if (std::holds_alternative<protocol::AuthFailure>(final)) return ScramOutcome::kClientFailed;
  std::string serverFinal = std::get<std::string>(final);
  if (scram.editServerFinal) serverFinal = scram.editServerFinal(serverFinal);
  out.clear();
  if (!scram.skipServerFinal) protocol::encodeAuthSaslFinal(serverFinal, out);
  protocol::encodeAuthOk(out);
  if (!send(out)) return ScramOutcome::kPeerGone;
  return ScramOutcome::kOk;
}

bool FakeConn::serveQueries(
    const std::function<std::vector<std::uint8_t>(std::string_view sql)>& onQuery,
    std::chrono::milliseconds idle) {
  while (true) {
    FakeMessage m;
    auto st = readMessage(m, idle);
    if (st == FakeRead::kClosed) return true;
    if (st != FakeRead::kOk) return false;
    if (m.type == 'X') return true;
    if (m.type != 'Q') continue;
    auto sql = querySql(m).value_or("");
    auto answer = onQuery ? onQuery(sql) : rowsResponse({"?column?"}, {{"1"}}, "SELECT 1");
    if (!send(answer)) return true;
  }
}

// ---- FakeServer --------------------------------------------------------------------

FakeServer::FakeServer(Script script) : script_(std::move(script)) {
  listenFd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listenFd_ < 0)
    throw std::runtime_error(std::string("FakeServer socket: ") + std::strerror(errno));
  const int one = 1;
  ::setsockopt(listenFd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(listenFd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listenFd_, 64) != 0 ||
      ::getsockname(listenFd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string err = std::strerror(errno);
    ::close(listenFd_);
    throw std::runtime_error("FakeServer bind/listen: " + err);
  }
  port_ = ntohs(addr.sin_port);
  acceptor_ = std::thread([this] { acceptLoop(); });
}

FakeServer::~FakeServer() {
  stopping_ = true;
  if (acceptor_.joinable()) acceptor_.join();
  ::close(listenFd_);
  std::vector<std::thread> workers;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    workers.swap(workers_);
  }
  for (auto& t : workers) t.join();
}

void FakeServer::setScript(Script script) {
  std::lock_guard<std::mutex> lock(mutex_);
  script_ = std::move(script);
}

void FakeServer::defaultScript(FakeConn& c) {
  if (!c.readStartup()) return;
  if (!c.sendTrustLogin()) return;
  (void)c.serveQueries();
}

void FakeServer::acceptLoop() {
  while (!stopping_) {
    pollfd p{listenFd_, POLLIN, 0};
    const int r = ::poll(&p, 1, kPollSliceMs);
    if (r <= 0) continue;
    const int fd = ::accept4(listenFd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    auto rec = std::make_shared<FakeConnRecord>();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      Script script = script_ ? script_ : Script(&FakeServer::defaultScript);
      records_.push_back(rec);
      ++accepted_;
      workers_.emplace_back(
          [this, fd, rec, script = std::move(script)] { runConnection(fd, rec, script); });
    }
    changed_.notify_all();
  }
}

void FakeServer::runConnection(int fd, std::shared_ptr<FakeConnRecord> record, Script script) {
  {
    FakeConn conn(fd, *this, record);
    try {
      script(conn);
    } catch (...) {
      // A throwing script ends its connection; the test sees the record.
    }
  }  // closes the socket
  {
    std::lock_guard<std::mutex> lock(mutex_);
    record->finished = true;
  }
  changed_.notify_all();
}

std::vector<FakeConnRecord> FakeServer::records() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<FakeConnRecord> out;
  out.reserve(records_.size());
  for (const auto& r : records_) out.push_back(*r);
  return out;
}

std::optional<FakeConnRecord> FakeServer::record(std::size_t index) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (index >= records_.size()) return std::nullopt;
  return *records_[index];
}

bool FakeServer::waitFinished(int count, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] {
    if (static_cast<int>(records_.size()) < count) return false;
    for (int i = 0; i < count; ++i) {
      if (!records_[static_cast<std::size_t>(i)]->finished) return false;
    }
    return true;
  });
}

bool FakeServer::waitIdle(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] {
    return std::all_of(records_.begin(), records_.end(), [](const auto& r) { return r->finished; });
  });
}

}  // namespace pghandoff::test
