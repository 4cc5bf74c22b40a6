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
    if (tls_) co_return co_await asio::async_write(stream_, b, kUseAwaitable);
    tcp::socket& s = stream_.next_layer();
    error_code ec;
    if (!s.non_blocking()) s.non_blocking(true, ec);
    std::size_t sent = ec ? 0 : s.send(b, 0, ec);
    if (!ec && sent == b.size()) co_return std::tuple{ec, sent};
    if (ec && ec != asio::error::would_block && ec != asio::error::try_again) {
      co_return std::tuple{ec, sent};
    }
    b += sent;
    auto [wec, n] = co_await asio::async_write(s, b, kUseAwaitable);
    co_return std::tuple{wec, sent + n};
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
