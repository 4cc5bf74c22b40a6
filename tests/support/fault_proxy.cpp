#include "tests/support/fault_proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <deque>
#include <optional>
#include <stdexcept>
#include <utility>

namespace pghandoff::test {

namespace {

using Clock = std::chrono::steady_clock;

// Special startup-packet codes: these packets have no type byte.
// https://www.postgresql.org/docs/15/protocol-message-formats.html
constexpr std::uint32_t kSslRequestCode = 80877103;
constexpr std::uint32_t kGssEncRequestCode = 80877104;
constexpr std::uint32_t kCancelRequestCode = 80877102;

constexpr std::size_t kReadChunk = 64 * 1024;
// Per direction: stop reading while this much waits to be forwarded (a slow
// or frozen peer must not make the test process buffer without bound).
constexpr std::size_t kMaxQueued = 1024 * 1024;

std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

void resetSocket(int& fd) {
  if (fd < 0) return;
  // SO_LINGER with a zero timeout makes close() send RST instead of FIN.
  linger l{};
  l.l_onoff = 1;
  l.l_linger = 0;
  (void)::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  ::close(fd);
  fd = -1;
}

void closeSocket(int& fd) {
  if (fd < 0) return;
  ::close(fd);
  fd = -1;
}

void wake(int efd) {
  std::uint64_t one = 1;
  (void)!::write(efd, &one, sizeof(one));
}

int connectTo(const std::string& host, std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  const std::string h = host == "localhost" ? "127.0.0.1" : host;
  if (::inet_pton(AF_INET, h.c_str(), &addr.sin_addr) != 1 ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  int one = 1;
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

// Tracks message boundaries of one connection, both directions, with its own
// 5-byte header reader. Startup-phase packets have no type byte: the client's
// first packet (and the one after an SSLRequest/GSSENCRequest answered 'N')
// is a length + code packet; the server's answer to an SSLRequest is one
// untyped byte. After an 'S'/'G' answer the stream is TLS/GSS: parsing stops.
class Framer {
 public:
  struct Side {
    std::uint8_t hdr[8] = {};
    std::size_t hdrLen = 0;
    std::uint64_t bodyLeft = 0;
    char type = 0;
    bool inBody = false;
    bool untypedPacket = false;  // the message being read has no type byte
  };

  // Feeds bytes read from one side; onMessage(type, endOffset) for every
  // typed message that ends within them (endOffset: absolute stream offset
  // just after the message).
  template <typename F>
  void feed(Direction d, const std::uint8_t* p, std::size_t n, std::uint64_t offset,
            F&& onMessage) {
    Side& s = d == Direction::kClientToServer ? client_ : server_;
    std::size_t i = 0;
    while (i < n && !stopped_) {
      if (s.inBody) {
        std::uint64_t take = std::min<std::uint64_t>(s.bodyLeft, n - i);
        i += static_cast<std::size_t>(take);
        s.bodyLeft -= take;
        if (s.bodyLeft == 0) {
          s.inBody = false;
          if (!s.untypedPacket) onMessage(s.type, offset + i);
        }
        continue;
      }
      if (d == Direction::kServerToClient && awaitingSslAnswer_ && s.hdrLen == 0) {
        // The 1-byte answer to SSLRequest / GSSENCRequest.
        char answer = static_cast<char>(p[i]);
        if (answer == 'S' || answer == 'G') {
          stopped_ = true;  // TLS or GSS encryption from here on
          return;
        }
        awaitingSslAnswer_ = false;
        if (answer == 'N') {
          ++i;
          continue;
        }
        // Anything else (an old server's 'E') is a typed message.
      }
      const bool untyped = d == Direction::kClientToServer && !clientStartupDone_;
      const std::size_t need = untyped ? 8 : 5;
      while (s.hdrLen < need && i < n) s.hdr[s.hdrLen++] = p[i++];
      if (s.hdrLen < need) break;
      s.hdrLen = 0;
      if (untyped) {
        std::uint32_t len = be32(s.hdr);
        std::uint32_t code = be32(s.hdr + 4);
        if (len < 8) {
          stopped_ = true;  // not a protocol stream we understand
          return;
        }
        if (code == kSslRequestCode || code == kGssEncRequestCode) {
          awaitingSslAnswer_ = true;
        } else if (code != kCancelRequestCode) {
          clientStartupDone_ = true;  // a StartupMessage: typed messages follow
        }
        s.untypedPacket = true;
        s.bodyLeft = len - 8;
      } else {
        std::uint32_t len = be32(s.hdr + 1);
        if (len < 4) {
          stopped_ = true;
          return;
        }
        s.untypedPacket = false;
        s.type = static_cast<char>(s.hdr[0]);
        s.bodyLeft = len - 4;
      }
      s.inBody = true;
      if (s.bodyLeft == 0) {
        s.inBody = false;
        if (!s.untypedPacket) onMessage(s.type, offset + i);
      }
    }
  }

 private:
  Side client_;
  Side server_;
  bool clientStartupDone_ = false;
  bool awaitingSslAnswer_ = false;
  bool stopped_ = false;
};

struct Chunk {
  Clock::time_point due;
  std::vector<std::uint8_t> data;
  std::size_t off = 0;
};

struct Flow {
  Flow(Direction d, int* f, int* t) : dir(d), from(f), to(t) {}

  Direction dir;
  int* from;
  int* to;
  std::deque<Chunk> queue;
  std::size_t queued = 0;
  bool eof = false;
  bool shutDone = false;
  std::uint64_t readTotal = 0;
  std::uint64_t written = 0;
  std::optional<std::uint64_t> cutAt;
  std::uint64_t rate = 0;
  double tokens = 0;
  Clock::time_point refilled = Clock::now();
  bool wantWrite = false;  // the last write hit EAGAIN

  [[nodiscard]] bool hasDue(Clock::time_point now) const {
    return !queue.empty() && queue.front().due <= now;
  }
};

}  // namespace

const char* toString(Direction d) {
  return d == Direction::kClientToServer ? "client->server" : "server->client";
}

struct FaultProxy::Conn {
  int down = -1;  // the accepted socket (the client of the proxy)
  int up = -1;    // towards the upstream server
  int wakeFd = -1;
  // 0 none, 1 reset, 2 cut (FIN)
  std::atomic<int> action{0};

  Conn() : wakeFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}
  ~Conn() {
    closeSocket(down);
    closeSocket(up);
    if (wakeFd >= 0) ::close(wakeFd);
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
};

FaultProxy::FaultProxy(std::string upstreamHost, std::uint16_t upstreamPort)
    : upstreamHost_(std::move(upstreamHost)), upstreamPort_(upstreamPort) {
  listenFd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  wakeFd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (listenFd_ < 0 || wakeFd_ < 0 ||
      ::bind(listenFd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listenFd_, 128) != 0 ||
      ::getsockname(listenFd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::string err = std::strerror(errno);
    if (listenFd_ >= 0) ::close(listenFd_);
    if (wakeFd_ >= 0) ::close(wakeFd_);
    throw std::runtime_error("FaultProxy: cannot listen: " + err);
  }
  port_ = ntohs(addr.sin_port);
  acceptor_ = std::thread([this] { acceptLoop(); });
}

FaultProxy::~FaultProxy() {
  stopping_ = true;
  wake(wakeFd_);
  if (acceptor_.joinable()) acceptor_.join();
  {
    std::lock_guard lock(mutex_);
    for (auto& c : conns_) {
      c->action = 2;
      wake(c->wakeFd);
    }
  }
  std::vector<std::thread> workers;
  {
    std::lock_guard lock(mutex_);
    workers.swap(workers_);
  }
  for (auto& t : workers) t.join();
  ::close(listenFd_);
  ::close(wakeFd_);
}

void FaultProxy::notifyAll() {
  std::lock_guard lock(mutex_);
  for (auto& c : conns_) wake(c->wakeFd);
}

void FaultProxy::setLatency(std::chrono::milliseconds upstream,
                            std::chrono::milliseconds downstream) {
  latencyUpMs_ = upstream.count();
  latencyDownMs_ = downstream.count();
  notifyAll();
}

void FaultProxy::setBandwidth(std::uint64_t bytesPerSecond) {
  bandwidth_ = bytesPerSecond;
  notifyAll();
}

void FaultProxy::refuseNew(bool refuse) {
  refuse_ = refuse;
}

void FaultProxy::resetAll() {
  std::lock_guard lock(mutex_);
  for (auto& c : conns_) {
    c->action = 1;
    wake(c->wakeFd);
  }
}

void FaultProxy::cutAll() {
  std::lock_guard lock(mutex_);
  for (auto& c : conns_) {
    c->action = 2;
    wake(c->wakeFd);
  }
}

void FaultProxy::freeze(bool frozen) {
  frozen_ = frozen;
  notifyAll();
}

void FaultProxy::cutAfterMessage(char type, Direction direction) {
  cutFired_ = false;
  cutDirection_ = static_cast<int>(direction);
  cutType_ = static_cast<unsigned char>(type);
}

void FaultProxy::clearFaults() {
  latencyUpMs_ = 0;
  latencyDownMs_ = 0;
  bandwidth_ = 0;
  refuse_ = false;
  frozen_ = false;
  cutType_ = -1;
  notifyAll();
}

int FaultProxy::connectionCount() const {
  std::lock_guard lock(mutex_);
  return static_cast<int>(conns_.size());
}

std::uint64_t FaultProxy::bytesForwarded() const {
  return forwarded_[0] + forwarded_[1];
}

std::uint64_t FaultProxy::bytesForwarded(Direction d) const {
  return forwarded_[static_cast<int>(d)].load();
}

void FaultProxy::acceptLoop() {
  while (!stopping_) {
    pollfd fds[2] = {{listenFd_, POLLIN, 0}, {wakeFd_, POLLIN, 0}};
    int r = ::poll(fds, 2, -1);
    if (r < 0 && errno == EINTR) continue;
    if (stopping_) return;
    if (r <= 0 || (fds[0].revents & POLLIN) == 0) continue;
    int fd = ::accept4(listenFd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    ++accepted_;
    if (refuse_) {
      ::close(fd);
      continue;
    }
    int one = 1;
    (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    auto conn = std::make_shared<Conn>();
    conn->down = fd;
    std::lock_guard lock(mutex_);
    conns_.push_back(conn);
    workers_.emplace_back([this, conn] { runConnection(conn); });
  }
}

void FaultProxy::runConnection(std::shared_ptr<Conn> conn) {
  auto finish = [this, &conn](bool rst) {
    if (rst) {
      resetSocket(conn->down);
      resetSocket(conn->up);
    } else {
      closeSocket(conn->down);
      closeSocket(conn->up);
    }
    std::lock_guard lock(mutex_);
    std::erase(conns_, conn);
  };

  conn->up = connectTo(upstreamHost_, upstreamPort_);
  if (conn->up < 0) {
    finish(false);
    return;
  }

  Framer framer;
  Flow flows[2] = {
      Flow{Direction::kClientToServer, &conn->down, &conn->up},
      Flow{Direction::kServerToClient, &conn->up, &conn->down},
  };
  std::vector<std::uint8_t> buf(kReadChunk);

  while (true) {
    if (stopping_) return finish(false);
    int action = conn->action.load();
    if (action == 1) return finish(true);
    if (action == 2) return finish(false);
    const bool frozen = frozen_.load();
    const std::uint64_t rate = bandwidth_.load();
    auto now = Clock::now();
    std::optional<Clock::time_point> nextTimer;
    auto timerAt = [&nextTimer](Clock::time_point t) {
      if (!nextTimer || t < *nextTimer) nextTimer = t;
    };

    // 1. Write what is due, within the bandwidth and up to a pending cut.
    if (!frozen) {
      for (Flow& f : flows) {
        if (f.rate != rate) {
          f.rate = rate;
          f.tokens = 0;
          f.refilled = now;
        }
        const double burst = std::max(1.0, static_cast<double>(rate) / 20.0);
        if (rate > 0) {
          std::chrono::duration<double> dt = now - f.refilled;
          f.tokens = std::min(burst, f.tokens + dt.count() * static_cast<double>(rate));
          f.refilled = now;
        }
        f.wantWrite = false;
        while (f.hasDue(now)) {
          Chunk& c = f.queue.front();
          std::size_t len = c.data.size() - c.off;
          if (f.cutAt) len = std::min<std::uint64_t>(len, *f.cutAt - f.written);
          if (rate > 0) len = std::min<std::size_t>(len, static_cast<std::size_t>(f.tokens));
          if (len == 0) {
            if (rate > 0 && !(f.cutAt && f.written == *f.cutAt)) {
              // Wait until a useful amount of tokens is there.
              double want = std::min(burst, static_cast<double>(c.data.size() - c.off));
              double secs = (want - f.tokens) / static_cast<double>(rate);
              timerAt(now + std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(std::max(secs, 0.0005))));
            }
            break;
          }
          ssize_t w = ::send(*f.to, c.data.data() + c.off, len, MSG_NOSIGNAL | MSG_DONTWAIT);
          if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
              f.wantWrite = true;
              break;
            }
            if (errno == EINTR) continue;
            return finish(true);  // the peer is gone: it sees a reset like a real network
          }
          c.off += static_cast<std::size_t>(w);
          f.written += static_cast<std::uint64_t>(w);
          f.queued -= static_cast<std::size_t>(w);
          forwarded_[static_cast<int>(f.dir)] += static_cast<std::uint64_t>(w);
          if (rate > 0) f.tokens -= static_cast<double>(w);
          if (c.off == c.data.size()) f.queue.pop_front();
          if (f.cutAt && f.written == *f.cutAt) {
            cutFired_ = true;
            return finish(true);
          }
        }
        if (!f.queue.empty() && !f.hasDue(now)) timerAt(f.queue.front().due);
        // EOF propagates as FIN once everything before it was forwarded.
        if (f.eof && f.queue.empty() && !f.shutDone) {
          (void)::shutdown(*f.to, SHUT_WR);
          f.shutDone = true;
        }
      }
      if (flows[0].shutDone && flows[1].shutDone) return finish(false);
    }

    // 2. Wait for readable sockets, writable ones with blocked data, a
    //    timer (latency, bandwidth) or a wake-up (faults changed).
    pollfd fds[3] = {{conn->wakeFd, POLLIN, 0}, {conn->down, 0, 0}, {conn->up, 0, 0}};
    if (!frozen) {
      for (Flow& f : flows) {
        pollfd& from = *f.from == conn->down ? fds[1] : fds[2];
        pollfd& to = *f.to == conn->down ? fds[1] : fds[2];
        if (!f.eof && f.queued < kMaxQueued) from.events |= POLLIN;
        if (f.wantWrite) to.events |= POLLOUT;
      }
    }
    for (int i = 1; i < 3; ++i) {
      if (fds[i].events == 0) fds[i].fd = -1;
    }
    int timeoutMs = -1;
    if (!frozen && nextTimer) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(*nextTimer - Clock::now());
      timeoutMs = static_cast<int>(std::max<long long>(0, left.count()));
    }
    int r = ::poll(fds, 3, timeoutMs);
    if (r < 0 && errno != EINTR) return finish(true);
    if (fds[0].revents & POLLIN) {
      std::uint64_t v = 0;
      (void)!::read(conn->wakeFd, &v, sizeof(v));
    }
    if (frozen_.load() || conn->action.load() != 0) continue;

    // 3. Read what arrived; parse it at read time, deliver after the latency.
    for (Flow& f : flows) {
      pollfd& from = *f.from == conn->down ? fds[1] : fds[2];
      if ((from.events & POLLIN) == 0 || (from.revents & (POLLIN | POLLHUP | POLLERR)) == 0) {
        continue;
      }
      ssize_t n = ::recv(*f.from, buf.data(), buf.size(), MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
        return finish(true);  // ECONNRESET: pass the reset on
      }
      if (n == 0) {
        f.eof = true;
        continue;
      }
      const auto size = static_cast<std::size_t>(n);
      const int armedDir = cutDirection_.load();
      framer.feed(f.dir, buf.data(), size, f.readTotal, [&](char type, std::uint64_t end) {
        if (f.cutAt || armedDir != static_cast<int>(f.dir)) return;
        int expected = static_cast<unsigned char>(type);
        if (cutType_.compare_exchange_strong(expected, -1)) f.cutAt = end;
      });
      f.readTotal += size;
      const long long lat =
          f.dir == Direction::kClientToServer ? latencyUpMs_.load() : latencyDownMs_.load();
      f.queue.push_back(
          Chunk{Clock::now() + std::chrono::milliseconds(lat), {buf.begin(), buf.begin() + n}, 0});
      f.queued += size;
    }
  }
}

}  // namespace pghandoff::test
