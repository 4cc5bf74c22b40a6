// The short-read patch of Boost.Asio's epoll reactor
// (third_party/boost-asio/README.md): a stream read that returns less than
// it asked for marks the socket drained, so the next read waits for the next
// edge instead of trying a recv() that fails with EAGAIN. These tests are the
// cases where trusting a short read would hang a session: a FIN or a reset
// that came with the data raises no later edge, a peek leaves the data where
// it was, a full read leaves more behind. Each fails (times out) if the patch
// marks a socket drained when it is not.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <string>
#include <thread>

#include "proxy/asio.h"

namespace pghandoff::proxy {
namespace {

using namespace std::chrono_literals;

struct ReadResult {
  error_code ec;
  std::size_t n = 0;
};

// One accepted server-side socket (the one under test, owned by Asio) and
// the raw peer it talks to.
class ShortReadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tcp::acceptor acceptor(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    peer_ = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(peer_, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(acceptor.local_endpoint().port());
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(peer_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    acceptor.accept(sock_);
  }
  void TearDown() override {
    if (peer_ >= 0) ::close(peer_);
  }

  // Starts a read of up to `size` bytes (a peek when `peek`); the result
  // lands in `out`.
  void startRead(std::size_t size, std::optional<ReadResult>& out, bool peek = false) {
    buf_.assign(size, '\0');
    out.reset();
    auto done = [&out](error_code ec, std::size_t n) { out = ReadResult{ec, n}; };
    if (peek) {
      sock_.async_receive(asio::buffer(buf_), tcp::socket::message_peek, done);
    } else {
      sock_.async_read_some(asio::buffer(buf_), done);
    }
  }
  // Runs the io_context until `out` is set or `limit` passes.
  bool runUntil(const std::optional<ReadResult>& out, std::chrono::milliseconds limit = 3s) {
    auto end = std::chrono::steady_clock::now() + limit;
    while (!out && std::chrono::steady_clock::now() < end) {
      io_.restart();
      io_.run_for(20ms);
    }
    return out.has_value();
  }
  std::optional<ReadResult> read(std::size_t size, bool peek = false) {
    std::optional<ReadResult> r;
    startRead(size, r, peek);
    runUntil(r);
    return r;
  }
  void peerSend(const std::string& s) {
    ASSERT_EQ(::send(peer_, s.data(), s.size(), 0), static_cast<ssize_t>(s.size()));
  }
  // Lets loopback deliver what the peer sent before the reactor looks.
  static void settle() { std::this_thread::sleep_for(50ms); }

  asio::io_context io_{1};
  tcp::socket sock_{io_};
  int peer_ = -1;
  std::string buf_;
};

// Data and FIN arrive together while a read waits in the reactor: the read
// takes the data (a short read), and the next one must still see the end.
TEST_F(ShortReadTest, DataAndFinInOneEventStillEndInEof) {
  std::optional<ReadResult> first;
  startRead(4096, first);
  io_.poll();  // the speculative recv finds nothing: the read now waits in the reactor
  ASSERT_FALSE(first);
  peerSend("hello");
  ASSERT_EQ(::shutdown(peer_, SHUT_WR), 0);
  settle();
  ASSERT_TRUE(runUntil(first));
  EXPECT_FALSE(first->ec) << first->ec.message();
  EXPECT_EQ(first->n, 5u);
  auto second = read(4096);
  ASSERT_TRUE(second) << "the FIN behind the data was lost: the read hangs";
  EXPECT_EQ(second->ec, asio::error::eof);
}

// The same when both arrived before any read was started (the first read is
// the speculative one).
TEST_F(ShortReadTest, DataAndFinBeforeTheFirstReadEndInEof) {
  peerSend("hello");
  ASSERT_EQ(::shutdown(peer_, SHUT_WR), 0);
  settle();
  auto first = read(4096);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->n, 5u);
  auto second = read(4096);
  ASSERT_TRUE(second) << "the FIN behind the data was lost: the read hangs";
  EXPECT_EQ(second->ec, asio::error::eof);
}

// Data then a reset (the peer closes with SO_LINGER 0, as a process killed
// with unread input does) in one event: the session must hear of the reset.
TEST_F(ShortReadTest, DataAndResetInOneEventEndInAnError) {
  std::optional<ReadResult> first;
  startRead(4096, first);
  io_.poll();
  ASSERT_FALSE(first);
  peerSend("hello");
  linger lg{1, 0};
  ASSERT_EQ(::setsockopt(peer_, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
  ::close(peer_);
  peer_ = -1;
  settle();
  ASSERT_TRUE(runUntil(first));
  // Linux hands over the data first or drops it with the reset; either way
  // the reads that follow end in an error instead of waiting.
  std::optional<ReadResult> r = first;
  for (int i = 0; i < 3 && r && !r->ec; ++i) r = read(4096);
  ASSERT_TRUE(r) << "the reset behind the data was lost: the read hangs";
  EXPECT_TRUE(r->ec == asio::error::connection_reset || r->ec == asio::error::eof)
      << r->ec.message();
}

// A read that fills its buffer leaves the rest behind: the reads that follow
// get it without a new edge; the last, short one then waits for new data.
TEST_F(ShortReadTest, FullReadsLeaveTheRestReadable) {
  std::optional<ReadResult> first;
  startRead(7, first);
  io_.poll();
  peerSend(std::string(100, 'x'));
  settle();
  ASSERT_TRUE(runUntil(first));
  std::size_t total = first->n;
  while (total < 100) {
    auto r = read(7);
    ASSERT_TRUE(r) << "data left behind a full read was not read (" << total << " of 100)";
    ASSERT_FALSE(r->ec) << r->ec.message();
    total += r->n;
  }
  EXPECT_EQ(total, 100u);
  // Drained now: a read waits, and new data wakes it.
  std::optional<ReadResult> later;
  startRead(4096, later);
  io_.poll();
  EXPECT_FALSE(later);
  peerSend("more");
  ASSERT_TRUE(runUntil(later));
  EXPECT_EQ(later->n, 4u);
}

// A peek returns less than its buffer but leaves the bytes in the socket:
// the read after it must get them.
TEST_F(ShortReadTest, APeekDoesNotDrain) {
  std::optional<ReadResult> peeked;
  startRead(4096, peeked, /*peek=*/true);
  io_.poll();
  ASSERT_FALSE(peeked);
  peerSend("hello");
  settle();
  ASSERT_TRUE(runUntil(peeked));
  EXPECT_EQ(peeked->n, 5u);
  auto r = read(4096);
  ASSERT_TRUE(r) << "the peeked bytes were taken for drained: the read hangs";
  EXPECT_EQ(r->n, 5u);
  EXPECT_EQ(buf_.substr(0, 5), "hello");
}

}  // namespace
}  // namespace pghandoff::proxy
