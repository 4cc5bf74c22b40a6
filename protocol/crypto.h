// Small cryptographic helpers for authentication (SCRAM-SHA-256, MD5): base64,
// SHA-256, HMAC-SHA-256, PBKDF2 (SCRAM's "Hi"), constant-time comparison and
// random bytes. OpenSSL libcrypto only; no exceptions: every primitive that
// can fail inside OpenSSL reports it as a value, so a failure can never be
// mistaken for a valid (e.g. all-zero) digest.
// https://www.postgresql.org/docs/15/sasl-authentication.html
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/buffer.h"

namespace pghandoff::protocol {

inline constexpr std::size_t kSha256Size = 32;
using Sha256Digest = std::array<std::uint8_t, kSha256Size>;

// Standard base64 (RFC 4648 section 4) with '=' padding, as SCRAM uses.
[[nodiscard]] std::string base64Encode(Bytes data);
// Strict decoder: the length must be a multiple of 4, padding only at the end,
// no whitespace, no other characters, unused bits of the last group zero.
// nullopt on any violation.
[[nodiscard]] std::optional<std::vector<std::uint8_t>> base64Decode(std::string_view text);

// Lower-case hex.
[[nodiscard]] std::string hexEncode(Bytes data);

[[nodiscard]] std::optional<Sha256Digest> sha256(Bytes data);
[[nodiscard]] std::optional<Sha256Digest> hmacSha256(Bytes key, Bytes data);
// RFC 5802 Hi(str, salt, i) == PBKDF2 with HMAC-SHA-256 and a 32-byte output.
// nullopt when iterations < 1 or OpenSSL fails.
[[nodiscard]] std::optional<Sha256Digest> pbkdf2HmacSha256(Bytes password, Bytes salt,
                                                           int iterations);

// Compares in time that depends only on the lengths (which are not secret for
// proofs, signatures and hashes of fixed size). Different lengths: false.
[[nodiscard]] bool constantTimeEqual(std::span<const std::uint8_t> a,
                                     std::span<const std::uint8_t> b);
[[nodiscard]] inline bool constantTimeEqual(std::string_view a, std::string_view b) {
  return constantTimeEqual(asBytes(a), asBytes(b));
}

// Cryptographically strong random bytes (OpenSSL RAND_bytes). false on failure.
[[nodiscard]] bool randomBytes(std::span<std::uint8_t> out);

// Overwrites secrets (keys, salted passwords) so they do not linger in freed memory.
void secureZero(std::span<std::uint8_t> data);

}  // namespace pghandoff::protocol
