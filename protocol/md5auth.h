// MD5 password authentication (AuthenticationMD5Password / PasswordMessage).
// Kept only for servers and clients that cannot do SCRAM; SPEC: MD5 is never
// the default. https://www.postgresql.org/docs/15/auth-password.html
//
// Stored form (pg_authid.rolpassword): "md5" + hex(md5(password + user)).
// On the wire the client sends "md5" + hex(md5(hex(md5(password + user)) + salt)),
// salt being the 4 random bytes of AuthenticationMD5Password.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace pghandoff::protocol {

inline constexpr std::size_t kMd5HashLength = 35;  // "md5" + 32 hex digits

// "md5" + hex(md5(password + user)). Empty string if MD5 is unavailable
// (e.g. an OpenSSL FIPS provider); md5Verify() then always fails.
[[nodiscard]] std::string md5StoredHash(std::string_view password, std::string_view user);

// What a client sends in PasswordMessage: "md5" + hex(md5(hex32 + salt)), where
// hex32 is the stored hash without its "md5" prefix. Empty string if storedHash
// is not "md5" followed by 32 lower-case hex digits, or MD5 is unavailable.
[[nodiscard]] std::string md5Response(std::string_view storedHash,
                                      std::span<const std::uint8_t, 4> salt);

// Server side: checks the client's PasswordMessage against the stored hash in
// constant time (for equal lengths).
[[nodiscard]] bool md5Verify(std::string_view storedHash, std::span<const std::uint8_t, 4> salt,
                             std::string_view clientResponse);

}  // namespace pghandoff::protocol
