#include "tests/support/raw_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <stdexcept>
#include <variant>

#include "protocol/buffer.h"
#include "protocol/frame.h"
#include "protocol/frontend.h"
#include "protocol/scram.h"

namespace pghandoff::test {

namespace {

using Clock = std::chrono::steady_clock;

// Far above anything a test expects; a larger claimed length means the
// stream is not what we think it is.
constexpr std::uint32_t kMaxTestMessage = 64U << 20;

int connectFd(std::uint16_t port, const std::string& host, std::string& error) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    error = std::string("socket: ") + std::strerror(errno);
    return -1;
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    ::close(fd);
    error = "bad IPv4 address " + host;
    return -1;
  }
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    error = "connect " + host + ":" + std::to_string(port) + ": " + std::strerror(errno);
    ::close(fd);
    return -1;
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

}  // namespace

const char* toString(ReadStatus s) {
  switch (s) {
    case ReadStatus::kOk:
      return "ok";
    case ReadStatus::kClosed:
      return "closed";
    case ReadStatus::kTimeout:
      return "timeout";
    case ReadStatus::kMalformed:
      return "malformed";
  }
  return "?";
}

std::string CloseResult::types() const {
  std::string s;
  for (const auto& m : messages) s.push_back(m.type);
  return s;
}

std::vector<protocol::ErrorFields> CloseResult::errors() const {
  std::vector<protocol::ErrorFields> out;
  for (const auto& m : messages) {
    if (m.type == 'E') {
      if (auto e = errorOf(m)) out.push_back(std::move(*e));
    }
  }
  return out;
}

// ---- RawClient ----------------------------------------------------------------

RawClient::RawClient(std::uint16_t port, const std::string& host) {
  std::string error;
  fd_ = connectFd(port, host, error);
  if (fd_ < 0) throw std::runtime_error("RawClient: " + error);
}

std::optional<RawClient> RawClient::tryConnect(std::uint16_t port, std::string* error,
                                               const std::string& host) {
  std::string err;
  const int fd = connectFd(port, host, err);
  if (fd < 0) {
    if (error != nullptr) *error = err;
    return std::nullopt;
  }
  RawClient c;
  c.fd_ = fd;
  return c;
}

RawClient::~RawClient() {
  close();
}

RawClient::RawClient(RawClient&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      peerClosed_(other.peerClosed_),
      buf_(std::move(other.buf_)) {}

RawClient& RawClient::operator=(RawClient&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = std::exchange(other.fd_, -1);
    peerClosed_ = other.peerClosed_;
    buf_ = std::move(other.buf_);
  }
  return *this;
}

std::uint16_t RawClient::localPort() const {
  sockaddr_in addr{};
  socklen_t len = sizeof(addr);
  if (fd_ < 0 || ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return 0;
  return ntohs(addr.sin_port);
}

bool RawClient::send(std::span<const std::uint8_t> bytes) {
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

bool RawClient::send(std::string_view bytes) {
  return send(protocol::asBytes(bytes));
}

ReadStatus RawClient::fill(Clock::time_point deadline) {
  if (fd_ < 0 || peerClosed_) return ReadStatus::kClosed;
  while (true) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return ReadStatus::kTimeout;
    pollfd p{fd_, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(left));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ReadStatus::kClosed;
    }
    if (r == 0) return ReadStatus::kTimeout;
    std::uint8_t chunk[65536];
    const ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
    if (n > 0) {
      buf_.insert(buf_.end(), chunk, chunk + n);
      return ReadStatus::kOk;
    }
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    // 0 is EOF; ECONNRESET and friends also mean the peer is gone.
    peerClosed_ = true;
    return ReadStatus::kClosed;
  }
}

std::optional<ReadResult> takeBackendMessage(std::vector<std::uint8_t>& buf) {
  const auto h = protocol::parseBackendHeader(buf, kMaxTestMessage);
  if (h.status == protocol::FrameStatus::kNeedMore ||
      (h.status == protocol::FrameStatus::kOk && buf.size() < h.total())) {
    return std::nullopt;
  }
  ReadResult res;
  if (h.status != protocol::FrameStatus::kOk) {
    res.status = ReadStatus::kMalformed;
    return res;
  }
  res.status = ReadStatus::kOk;
  res.message.type = h.type;
  res.message.body.assign(buf.begin() + 5, buf.begin() + static_cast<long>(h.total()));
  buf.erase(buf.begin(), buf.begin() + static_cast<long>(h.total()));
  return res;
}

ReadResult RawClient::read(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    if (auto r = takeBackendMessage(buf_)) return std::move(*r);
    const ReadStatus st = fill(deadline);
    if (st != ReadStatus::kOk) return ReadResult{st, {}};
  }
}

std::pair<ReadStatus, std::uint8_t> RawClient::readByte(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (buf_.empty()) {
    const ReadStatus st = fill(deadline);
    if (st != ReadStatus::kOk) return {st, 0};
  }
  const std::uint8_t b = buf_.front();
  buf_.erase(buf_.begin());
  return {ReadStatus::kOk, b};
}

CloseResult RawClient::readUntilClose(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  CloseResult out;
  while (true) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    ReadResult r = read(std::max(left, std::chrono::milliseconds(0)));
    if (r.status == ReadStatus::kOk) {
      out.messages.push_back(std::move(r.message));
      continue;
    }
    if (r.status == ReadStatus::kMalformed) {
      // Not a PostgreSQL message stream (e.g. a TLS alert): keep reading raw.
      auto rest = readRawUntilClose(
          std::max(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()),
                   std::chrono::milliseconds(0)));
      out.closed = rest.has_value();
      out.trailingBytes = rest ? rest->size() : buf_.size();
      return out;
    }
    out.closed = r.status == ReadStatus::kClosed;
    out.trailingBytes = buf_.size();
    return out;
  }
}

std::optional<std::vector<std::uint8_t>> RawClient::readRawUntilClose(
    std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    const ReadStatus st = fill(deadline);
    if (st == ReadStatus::kClosed) {
      std::vector<std::uint8_t> all = std::move(buf_);
      buf_.clear();
      return all;
    }
    if (st == ReadStatus::kTimeout) return std::nullopt;
  }
}

void RawClient::shutdownWrite() {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_WR);
}

void RawClient::close() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

// ---- Builders --------------------------------------------------------------------

std::vector<std::uint8_t> startupPacket(const Params& params, std::int32_t protocolVersion) {
  protocol::StartupMessage m;
  m.protocol = protocolVersion;
  m.parameters = params;
  std::vector<std::uint8_t> out;
  protocol::encodeStartup(m, out);
  return out;
}

std::vector<std::uint8_t> sslRequest() {
  std::vector<std::uint8_t> out;
  protocol::encodeSslRequest(out);
  return out;
}

std::vector<std::uint8_t> gssEncRequest() {
  std::vector<std::uint8_t> out;
  protocol::Writer w(out);
  w.beginUntyped().int32(protocol::kGssEncRequestCode);
  w.end();
  return out;
}

std::vector<std::uint8_t> cancelRequest(std::int32_t pid, std::int32_t key) {
  std::vector<std::uint8_t> out;
  protocol::encodeCancel({pid, key}, out);
  return out;
}

std::vector<std::uint8_t> queryMessage(std::string_view sql) {
  std::vector<std::uint8_t> out;
  protocol::encodeQuery(sql, out);
  return out;
}

std::vector<std::uint8_t> terminateMessage() {
  std::vector<std::uint8_t> out;
  protocol::encodeTerminate(out);
  return out;
}

std::vector<std::uint8_t> parseMessage(std::string_view statement, std::string_view sql) {
  std::vector<std::uint8_t> out;
  protocol::Writer w(out);
  w.begin('P').cstring(statement).cstring(sql).int16(0);
  w.end();
  return out;
}

std::vector<std::uint8_t> bindMessage(std::string_view portal, std::string_view statement) {
  std::vector<std::uint8_t> out;
  protocol::Writer w(out);
  // No parameter formats, no parameters, no result formats (all text).
  w.begin('B').cstring(portal).cstring(statement).int16(0).int16(0).int16(0);
  w.end();
  return out;
}

std::vector<std::uint8_t> executeMessage(std::string_view portal, std::int32_t maxRows) {
  std::vector<std::uint8_t> out;
  protocol::Writer w(out);
  w.begin('E').cstring(portal).int32(maxRows);
  w.end();
  return out;
}

std::vector<std::uint8_t> syncMessage() {
  std::vector<std::uint8_t> out;
  protocol::Writer w(out);
  w.begin('S');
  w.end();
  return out;
}

std::vector<std::uint8_t> rawFrame(char type, std::uint32_t claimedLength, std::string_view body) {
  std::vector<std::uint8_t> out;
  out.push_back(static_cast<std::uint8_t>(type));
  out.push_back(static_cast<std::uint8_t>(claimedLength >> 24));
  out.push_back(static_cast<std::uint8_t>(claimedLength >> 16));
  out.push_back(static_cast<std::uint8_t>(claimedLength >> 8));
  out.push_back(static_cast<std::uint8_t>(claimedLength));
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

std::vector<std::uint8_t> concat(std::initializer_list<std::vector<std::uint8_t>> parts) {
  std::vector<std::uint8_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// ---- Decoding ---------------------------------------------------------------------

std::optional<protocol::ErrorFields> errorOf(const BackendMessage& m) {
  if (m.type != 'E' && m.type != 'N') return std::nullopt;
  return protocol::decodeErrorBody(m.body);
}

std::optional<protocol::AuthRequest> authOf(const BackendMessage& m) {
  if (m.type != 'R') return std::nullopt;
  return protocol::decodeAuthBody(m.body);
}

std::optional<std::vector<std::optional<std::string>>> dataRowOf(const BackendMessage& m) {
  if (m.type != 'D') return std::nullopt;
  protocol::Reader r(m.body);
  const std::int16_t n = r.int16();
  std::vector<std::optional<std::string>> cols;
  for (std::int16_t i = 0; i < n && r.ok(); ++i) {
    const std::int32_t len = r.int32();
    if (len == -1) {
      cols.emplace_back(std::nullopt);
    } else if (len < 0) {
      r.fail();
    } else {
      cols.emplace_back(std::string(protocol::asString(r.bytes(static_cast<std::size_t>(len)))));
    }
  }
  if (!r.atEnd()) return std::nullopt;
  return cols;
}

std::string describe(const protocol::ErrorFields& e) {
  return e.severity + " " + e.code + " " + e.message;
}

// ---- Queries -------------------------------------------------------------------------

std::string QueryResult::types() const {
  std::string s;
  for (const auto& m : messages) s.push_back(m.type);
  return s;
}

QueryResult readUntilReady(RawClient& c, int readyCount, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  QueryResult q;
  while (q.readyCount < readyCount) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    ReadResult r = c.read(std::max(left, std::chrono::milliseconds(0)));
    if (r.status == ReadStatus::kTimeout) {
      q.timedOut = true;
      break;
    }
    if (r.status != ReadStatus::kOk) {
      q.closed = true;
      break;
    }
    const BackendMessage& m = r.message;
    switch (m.type) {
      case 'Z':
        ++q.readyCount;
        q.txStatus = m.body.empty() ? '?' : static_cast<char>(m.body[0]);
        break;
      case 'D':
        if (auto row = dataRowOf(m)) q.rows.push_back(std::move(*row));
        break;
      case 'C':
        if (auto tag = protocol::decodeCommandCompleteBody(m.body)) {
          q.commandTags.emplace_back(*tag);
        }
        break;
      case 'E':
        if (auto e = errorOf(m)) q.errors.push_back(std::move(*e));
        break;
      default:
        break;
    }
    q.messages.push_back(std::move(r.message));
  }
  return q;
}

QueryResult simpleQuery(RawClient& c, std::string_view sql, std::chrono::milliseconds timeout) {
  if (!c.send(queryMessage(sql))) {
    QueryResult q;
    q.closed = true;
    return q;
  }
  return readUntilReady(c, 1, timeout);
}

// ---- Login --------------------------------------------------------------------------

LoginResult loginOn(RawClient client, const LoginOptions& options) {
  LoginResult res;
  res.client = std::move(client);
  const auto deadline = Clock::now() + options.timeout;
  auto left = [&] {
    return std::max(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()),
                    std::chrono::milliseconds(0));
  };
  Params params{{"user", options.user}, {"database", options.database}};
  params.insert(params.end(), options.extraParams.begin(), options.extraParams.end());
  if (!res.client.send(startupPacket(params, options.protocol))) {
    res.failure = "could not send the startup packet";
    return res;
  }
  std::optional<protocol::ScramClient> scram;
  bool verified = false;
  while (true) {
    ReadResult r = res.client.read(left());
    if (r.status != ReadStatus::kOk) {
      res.failure = std::string("login: ") + toString(r.status) + " after " +
                    std::to_string(res.messages.size()) + " messages";
      return res;
    }
    res.messages.push_back(r.message);
    const BackendMessage& m = res.messages.back();
    std::vector<std::uint8_t> out;
    switch (m.type) {
      case 'E':
        res.error = errorOf(m);
        res.failure = res.error ? describe(*res.error) : "malformed ErrorResponse";
        return res;
      case 'R': {
        auto auth = authOf(m);
        if (!auth) {
          res.failure = "malformed authentication request";
          return res;
        }
        switch (static_cast<protocol::AuthCode>(auth->code)) {
          case protocol::AuthCode::kOk:
            if (scram && !verified) {
              res.failure = "AuthenticationOk without a verified SCRAM server signature";
              return res;
            }
            break;
          case protocol::AuthCode::kSasl: {
            bool plain = false;
            for (const auto& mech : auth->mechanisms) plain = plain || mech == "SCRAM-SHA-256";
            if (!plain) {
              res.failure = "server does not offer SCRAM-SHA-256";
              return res;
            }
            scram.emplace(options.password, std::vector<std::uint8_t>{}, false);
            auto first = scram->clientFirst();
            if (auto* f = std::get_if<protocol::AuthFailure>(&first)) {
              res.failure = f->message;
              return res;
            }
            protocol::encodeSaslInitial(scram->mechanism(), std::get<std::string>(first), out);
            break;
          }
          case protocol::AuthCode::kSaslContinue: {
            if (!scram) {
              res.failure = "SASLContinue without SASL";
              return res;
            }
            auto next = scram->serverFirst(protocol::asString(auth->data));
            if (auto* f = std::get_if<protocol::AuthFailure>(&next)) {
              res.failure = f->message;
              return res;
            }
            protocol::encodeSaslResponse(std::get<std::string>(next), out);
            break;
          }
          case protocol::AuthCode::kSaslFinal:
            if (!scram) {
              res.failure = "SASLFinal without SASL";
              return res;
            }
            if (auto f = scram->serverFinal(protocol::asString(auth->data))) {
              res.failure = f->message;
              return res;
            }
            verified = true;
            break;
          case protocol::AuthCode::kCleartextPassword:
            protocol::encodePassword(options.password, out);
            break;
          default:
            res.failure = "unsupported authentication request " + std::to_string(auth->code);
            return res;
        }
        if (!out.empty() && !res.client.send(out)) {
          res.failure = "connection lost during authentication";
          return res;
        }
        break;
      }
      case 'K':
        if (auto k = protocol::decodeBackendKeyBody(m.body)) res.key = *k;
        break;
      case 'Z':
        res.txStatus = m.body.empty() ? '?' : static_cast<char>(m.body[0]);
        res.ok = true;
        return res;
      default:  // 'S' ParameterStatus, 'N' NoticeResponse, 'v' NegotiateProtocolVersion
        break;
    }
  }
}

LoginResult login(std::uint16_t port, const LoginOptions& options) {
  std::string error;
  auto c = RawClient::tryConnect(port, &error);
  if (!c) {
    LoginResult res;
    res.failure = error;
    return res;
  }
  return loginOn(std::move(*c), options);
}

RawClient loginOrThrow(std::uint16_t port, const LoginOptions& options) {
  LoginResult r = login(port, options);
  if (!r.ok) throw std::runtime_error("raw login failed: " + r.failure);
  return std::move(r.client);
}

long residentKib(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
  }
  return -1;
}

}  // namespace pghandoff::test
