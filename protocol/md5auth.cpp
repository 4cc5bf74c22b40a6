#include "protocol/md5auth.h"

#include <openssl/evp.h>

#include <array>
#include <optional>

#include "protocol/buffer.h"
#include "protocol/crypto.h"

namespace pghandoff::protocol {
namespace {

// "md5" + lower-case hex of MD5(a || b), or nullopt if the digest is unavailable.
std::optional<std::string> md5Hex(Bytes a, Bytes b) {
  std::array<std::uint8_t, 16> digest{};
  unsigned int len = 0;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (ctx == nullptr) return std::nullopt;
  bool ok = EVP_DigestInit_ex(ctx, EVP_md5(), nullptr) == 1 &&
            EVP_DigestUpdate(ctx, a.data(), a.size()) == 1 &&
            EVP_DigestUpdate(ctx, b.data(), b.size()) == 1 &&
            EVP_DigestFinal_ex(ctx, digest.data(), &len) == 1 && len == digest.size();
  EVP_MD_CTX_free(ctx);
  if (!ok) return std::nullopt;
  return "md5" + hexEncode(digest);
}

bool isStoredMd5(std::string_view s) {
  if (s.size() != kMd5HashLength || s.substr(0, 3) != "md5") return false;
  for (char c : s.substr(3)) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

std::string md5StoredHash(std::string_view password, std::string_view user) {
  return md5Hex(asBytes(password), asBytes(user)).value_or(std::string{});
}

std::string md5Response(std::string_view storedHash, std::span<const std::uint8_t, 4> salt) {
  if (!isStoredMd5(storedHash)) return {};
  return md5Hex(asBytes(storedHash.substr(3)), salt).value_or(std::string{});
}

bool md5Verify(std::string_view storedHash, std::span<const std::uint8_t, 4> salt,
               std::string_view clientResponse) {
  std::string expected = md5Response(storedHash, salt);
  if (expected.empty()) return false;
  // Lengths are public (always 35 for a well-formed response); the contents
  // are compared without an early exit.
  return constantTimeEqual(expected, clientResponse);
}

}  // namespace pghandoff::protocol
