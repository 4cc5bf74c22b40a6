// A byte stream that is plain TCP or TLS, decided during startup (SSLRequest
// on either side). One object so that the relay code has one path.
#pragma once

#include <memory>
#include <tuple>

#include "proxy/asio.h"

namespace pghandoff::proxy {

class Stream {
 public:
  Stream(tcp::socket socket, ssl::context& ctx) : stream_(std::move(socket), ctx) {}

  tcp::socket& socket() { return stream_.next_layer(); }
  ssl::stream<tcp::socket>& tls() { return stream_; }
  [[nodiscard]] bool isTls() const { return tls_; }
  void setTls() { tls_ = true; }

  template <typename Buffers>
  auto readSome(const Buffers& b) {
    if (tls_) return stream_.async_read_some(b, kUseAwaitable);
    return stream_.next_layer().async_read_some(b, kUseAwaitable);
  }
  // Writes all of `b`. On plain TCP a write that fits the socket's buffer
  // (nearly every one) is a single send() that returns at once, without the
  // round through Asio's scheduler an async_write takes even when its first
  // try succeeds; only the rest of a partial send waits for the socket.
  awaitable<std::tuple<error_code, std::size_t>> writeAll(asio::const_buffer b) {
    error_code ec;
    std::size_t sent = trySend(b, ec);
    if (sent == b.size() || ec) co_return std::tuple{ec, sent};
    co_return co_await writeRest(b, sent);
  }
  // The first half of writeAll, without a coroutine frame (the relay loops
  // call it for every forwarded run): the bytes a single non-blocking send()
  // took (all of them, or fewer with `ec` clear: call writeRest), or `ec`
  // set when the socket failed. On TLS it sends nothing: writeRest does all.
  std::size_t trySend(asio::const_buffer b, error_code& ec) {
    ec.clear();
    if (tls_) return 0;
    tcp::socket& s = stream_.next_layer();
    if (!s.non_blocking()) s.non_blocking(true, ec);
    std::size_t sent = ec ? 0 : s.send(b, 0, ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) ec.clear();
    return sent;
  }
  // The rest of `b` after trySend took `sent` bytes of it, waiting for the
  // socket as needed; the result counts all of `b` that was written.
  awaitable<std::tuple<error_code, std::size_t>> writeRest(asio::const_buffer b, std::size_t sent) {
    b += sent;
    if (tls_) co_return co_await asio::async_write(stream_, b, kUseAwaitable);
    auto [ec, n] = co_await asio::async_write(stream_.next_layer(), b, kUseAwaitable);
    co_return std::tuple{ec, sent + n};
  }

  void close() {
    error_code ignored;
    stream_.next_layer().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.next_layer().close(ignored);
  }
  [[nodiscard]] bool isOpen() { return stream_.next_layer().is_open(); }

 private:
  ssl::stream<tcp::socket> stream_;
  bool tls_ = false;
};

}  // namespace pghandoff::proxy
