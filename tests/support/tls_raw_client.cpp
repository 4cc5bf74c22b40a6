#include "tests/support/tls_raw_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "protocol/frame.h"
#include "protocol/startup.h"

namespace pghandoff::test {

namespace {

using Clock = std::chrono::steady_clock;

// Far above anything a test expects (as RawClient's limit).

void setSocketTimeouts(int fd, std::chrono::milliseconds timeout) {
  // 0 would mean "no timeout" to the kernel: keep at least 1 ms.
  const auto ms = std::max<std::chrono::milliseconds::rep>(timeout.count(), 1);
  timeval tv{static_cast<time_t>(ms / 1000), static_cast<suseconds_t>((ms % 1000) * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

std::chrono::milliseconds leftUntil(Clock::time_point deadline) {
  return std::max(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()),
                  std::chrono::milliseconds(0));
}

// SSL_write goes through write(2), which raises SIGPIPE on a socket the peer
// reset. As libpq does (pq_block_sigpipe), block it around the write and
// swallow the one it raised, so a test process is never killed by it.
class SigpipeGuard {
 public:
  SigpipeGuard() {
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &block, &old_);
    sigset_t pending;
    sigpending(&pending);
    wasPending_ = sigismember(&pending, SIGPIPE) == 1;
  }
  ~SigpipeGuard() {
    if (!wasPending_) {
      sigset_t pipe;
      sigemptyset(&pipe);
      sigaddset(&pipe, SIGPIPE);
      timespec zero{0, 0};
      while (sigtimedwait(&pipe, nullptr, &zero) == SIGPIPE) {
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  SigpipeGuard(const SigpipeGuard&) = delete;
  SigpipeGuard& operator=(const SigpipeGuard&) = delete;

 private:
  sigset_t old_{};
  bool wasPending_ = false;
};

}  // namespace

std::unique_ptr<TlsRawClient> TlsRawClient::open(std::uint16_t port, std::string* error,
                                                 std::chrono::milliseconds timeout) {
  auto fail = [error](std::string why) -> std::unique_ptr<TlsRawClient> {
    if (error != nullptr) *error = std::move(why);
    return nullptr;
  };
  std::string connectError;
  auto raw = RawClient::tryConnect(port, &connectError);
  if (!raw) return fail(connectError);
  std::vector<std::uint8_t> request;
  protocol::encodeSslRequest(request);
  if (!raw->send(request)) return fail("could not send SSLRequest");
  auto [st, answer] = raw->readByte(timeout);
  if (st != ReadStatus::kOk) return fail(std::string("no answer to SSLRequest: ") + toString(st));
  if (answer != 'S') return fail("SSLRequest answered '" + std::string(1, char(answer)) + "'");

  std::unique_ptr<TlsRawClient> c(new TlsRawClient());
  // Take the connected socket over from the RawClient.
  c->fd_ = ::dup(raw->fd());
  raw->close();
  if (c->fd_ < 0) return fail(std::string("dup: ") + std::strerror(errno));
  setSocketTimeouts(c->fd_, timeout);

  ERR_clear_error();
  c->ctx_ = SSL_CTX_new(TLS_client_method());
  if (c->ctx_ == nullptr) return fail("SSL_CTX_new failed");
  // A peer that closes without close_notify is a plain close here, not an
  // SSL error (OpenSSL 3 reports it as one by default).
  SSL_CTX_set_options(c->ctx_, SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_CTX_set_verify(c->ctx_, SSL_VERIFY_NONE, nullptr);
  c->ssl_ = SSL_new(c->ctx_);
  if (c->ssl_ == nullptr || SSL_set_fd(c->ssl_, c->fd_) != 1) return fail("SSL_new failed");
  SSL_set_tlsext_host_name(c->ssl_, "localhost");
  const int rc = SSL_connect(c->ssl_);
  if (rc != 1) {
    const int err = SSL_get_error(c->ssl_, rc);
    char buf[256] = {0};
    ERR_error_string_n(ERR_peek_last_error(), buf, sizeof(buf));
    return fail("TLS handshake failed (SSL_get_error " + std::to_string(err) + "): " + buf);
  }
  return c;
}

TlsRawClient::~TlsRawClient() {
  if (ssl_ != nullptr) SSL_free(ssl_);
  if (ctx_ != nullptr) SSL_CTX_free(ctx_);
  if (fd_ >= 0) ::close(fd_);
}

std::string TlsRawClient::tlsVersion() const {
  return ssl_ != nullptr ? SSL_get_version(ssl_) : "";
}

bool TlsRawClient::send(std::span<const std::uint8_t> bytes) {
  if (ssl_ == nullptr || peerClosed_) return false;
  SigpipeGuard guard;
  std::size_t done = 0;
  while (done < bytes.size()) {
    ERR_clear_error();
    const int n = SSL_write(ssl_, bytes.data() + done,
                            static_cast<int>(std::min<std::size_t>(bytes.size() - done, 1 << 20)));
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

ReadStatus TlsRawClient::fill(Clock::time_point deadline) {
  if (ssl_ == nullptr || peerClosed_) return ReadStatus::kClosed;
  while (true) {
    const auto left = leftUntil(deadline);
    if (SSL_pending(ssl_) == 0) {
      if (left.count() <= 0) return ReadStatus::kTimeout;
      pollfd p{fd_, POLLIN, 0};
      const int r = ::poll(&p, 1, static_cast<int>(left.count()));
      if (r < 0) {
        if (errno == EINTR) continue;
        peerClosed_ = true;
        return ReadStatus::kClosed;
      }
      if (r == 0) return ReadStatus::kTimeout;
    }
    // A partial TLS record makes SSL_read block: bound it by the deadline.
    setSocketTimeouts(fd_, left);
    std::uint8_t chunk[16384];
    ERR_clear_error();
    const int n = SSL_read(ssl_, chunk, sizeof(chunk));
    if (n > 0) {
      buf_.insert(buf_.end(), chunk, chunk + n);
      return ReadStatus::kOk;
    }
    const int err = SSL_get_error(ssl_, n);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE ||
        (err == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))) {
      // Only handshake records (e.g. a TLS 1.3 NewSessionTicket) or the
      // backstop timeout: look at the deadline again.
      continue;
    }
    // SSL_ERROR_ZERO_RETURN (close_notify or EOF), a reset, or a broken record.
    peerClosed_ = true;
    return ReadStatus::kClosed;
  }
}

ReadResult TlsRawClient::read(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    if (auto r = takeBackendMessage(buf_)) return std::move(*r);
    const ReadStatus st = fill(deadline);
    if (st != ReadStatus::kOk) return ReadResult{st, {}};
  }
}

CloseResult TlsRawClient::readUntilClose(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  CloseResult out;
  while (true) {
    ReadResult r = read(leftUntil(deadline));
    if (r.status == ReadStatus::kOk) {
      out.messages.push_back(std::move(r.message));
      continue;
    }
    if (r.status == ReadStatus::kMalformed) {
      // Not a message stream any more: drain to the close.
      while (fill(deadline) == ReadStatus::kOk) {
      }
    }
    out.closed = peerClosed_;
    out.trailingBytes = buf_.size();
    return out;
  }
}

}  // namespace pghandoff::test
