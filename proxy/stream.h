// A byte stream that is plain TCP or TLS, decided during startup (SSLRequest
// on either side). One object so that the relay code has one path.
#pragma once

#include <cstddef>
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
  // Writes all of `b`. On a plain socket it first tries one non-blocking
  // send, which is what nearly always happens on a relay (the kernel buffer
  // has room): the coroutine then goes on without a round trip through the
  // scheduler. Only a partial send or EAGAIN waits for writability.
  awaitable<std::tuple<error_code, std::size_t>> writeAll(asio::const_buffer b) {
    if (tls_) co_return co_await asio::async_write(stream_, b, kUseAwaitable);
    auto& s = stream_.next_layer();
    error_code ec;
    if (!nonBlocking_) {
      s.non_blocking(true, ec);
      if (ec) co_return std::tuple{ec, std::size_t{0}};
      nonBlocking_ = true;
    }
    std::size_t n = s.write_some(b, ec);
    if (!ec && n == b.size()) co_return std::tuple{ec, n};
    if (ec && ec != asio::error::would_block && ec != asio::error::try_again) {
      co_return std::tuple{ec, n};
    }
    auto [wec, m] = co_await asio::async_write(s, b + n, kUseAwaitable);
    co_return std::tuple{wec, n + m};
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
  bool nonBlocking_ = false;  // user-level O_NONBLOCK set (sync ops return would_block)
};

}  // namespace pghandoff::proxy
