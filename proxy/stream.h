// A byte stream that is plain TCP or TLS, decided during startup (SSLRequest
// on either side). One object so that the relay code has one path.
#pragma once

#include <memory>

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
  // Asio's write already tries the send at once and only waits on EAGAIN; a
  // hand-made non-blocking send first was measured (bench/README.md) to save
  // nothing.
  template <typename Buffers>
  auto writeAll(const Buffers& b) {
    if (tls_) return asio::async_write(stream_, b, kUseAwaitable);
    return asio::async_write(stream_.next_layer(), b, kUseAwaitable);
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
