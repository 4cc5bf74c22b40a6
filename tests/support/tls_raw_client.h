#pragma once

// A raw PostgreSQL client over TLS for bad-input tests that need the TLS
// channel up first (RELIABILITY B16: an SSLRequest or GSSENCRequest sent
// inside TLS). It sends SSLRequest over a fresh TCP connection, expects 'S',
// completes the handshake with OpenSSL (blocking, no certificate check: the
// tests are about what comes after the handshake), then sends exactly the
// bytes a test builds and reads backend messages one at a time with a
// deadline, like RawClient does in the clear.
// https://www.postgresql.org/docs/15/protocol-flow.html#id-1.10.6.7.12

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tests/support/raw_client.h"

// OpenSSL's SSL and SSL_CTX, without pulling its headers into every test.
struct ssl_st;
struct ssl_ctx_st;

namespace pghandoff::test {

class TlsRawClient {
 public:
  // SSLRequest, 'S', SSL_connect within timeout. nullptr with the reason in
  // *error on any failure (refused, 'N', handshake error, timeout).
  static std::unique_ptr<TlsRawClient> open(
      std::uint16_t port, std::string* error,
      std::chrono::milliseconds timeout = std::chrono::seconds(10));
  ~TlsRawClient();
  TlsRawClient(const TlsRawClient&) = delete;
  TlsRawClient& operator=(const TlsRawClient&) = delete;

  // The negotiated protocol, e.g. "TLSv1.3".
  [[nodiscard]] std::string tlsVersion() const;

  // SSL_write of all bytes (as TLS application data); false if the peer is gone.
  bool send(std::span<const std::uint8_t> bytes);
  bool send(const std::vector<std::uint8_t>& bytes) {
    return send(std::span<const std::uint8_t>(bytes));
  }

  // One whole backend message (decrypted) within the deadline.
  ReadResult read(std::chrono::milliseconds timeout);
  // Messages until the peer closes (close_notify, EOF or reset) or the deadline passes.
  CloseResult readUntilClose(std::chrono::milliseconds timeout);
  // Decrypted bytes received but not yet returned as a message (for diagnostics).
  [[nodiscard]] const std::vector<std::uint8_t>& buffered() const { return buf_; }

 private:
  TlsRawClient() = default;
  // Waits for decrypted bytes and appends them; kOk, kClosed or kTimeout.
  ReadStatus fill(std::chrono::steady_clock::time_point deadline);

  int fd_ = -1;
  ssl_ctx_st* ctx_ = nullptr;
  ssl_st* ssl_ = nullptr;
  bool peerClosed_ = false;
  std::vector<std::uint8_t> buf_;
};

}  // namespace pghandoff::test
