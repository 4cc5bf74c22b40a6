#include "protocol/md5auth.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <string>

#include "protocol/crypto.h"

namespace pghandoff::protocol {
namespace {

constexpr std::array<std::uint8_t, 4> kSalt = {1, 2, 3, 4};

TEST(Md5Auth, StoredHashIsMd5OfPasswordThenUser) {
  // md5("foobar"): password "foo", user "bar".
  EXPECT_EQ(md5StoredHash("foo", "bar"), "md53858f62230ac3c915f300c664312c63f");
  // md5("barfoo"): the order matters.
  EXPECT_EQ(md5StoredHash("bar", "foo"), "md596948aad3fcae80c08a35c9b5958cd89");
}

TEST(Md5Auth, StoredHashMatchesPostgres) {
  // PostgreSQL 15: SET password_encryption='md5'; CREATE ROLE m1 PASSWORD 'foo';
  // SELECT rolpassword FROM pg_authid WHERE rolname='m1';
  EXPECT_EQ(md5StoredHash("foo", "m1"), "md501f6d96b8f201786e6b290e3126df694");
}

TEST(Md5Auth, ResponseKnownValues) {
  // "md5" + md5(hex32 + salt), computed independently (Python hashlib).
  EXPECT_EQ(md5Response("md53858f62230ac3c915f300c664312c63f", kSalt),
            "md56e4f0b50f7277feb74acbf2a7734c9cb");
  constexpr std::array<std::uint8_t, 4> kOtherSalt = {0xde, 0xad, 0xbe, 0xef};
  EXPECT_EQ(md5Response(md5StoredHash("foo", "m1"), kOtherSalt),
            "md582eb535da7644f7342cf10c621e8f922");
}

TEST(Md5Auth, ResponseRejectsMalformedStoredHash) {
  EXPECT_EQ(md5Response("", kSalt), "");
  EXPECT_EQ(md5Response("3858f62230ac3c915f300c664312c63f", kSalt), "");     // no prefix
  EXPECT_EQ(md5Response("md53858f62230ac3c915f300c664312c63", kSalt), "");   // 31 digits
  EXPECT_EQ(md5Response("md53858F62230AC3C915F300C664312C63F", kSalt), "");  // upper case
  EXPECT_EQ(md5Response("md53858f62230ac3c915f300c664312c63g", kSalt), "");  // not hex
  EXPECT_EQ(md5Response("SCRAM-SHA-256$4096:abc", kSalt), "");
}

TEST(Md5Auth, VerifyAcceptsOnlyTheRightResponse) {
  const std::string stored = md5StoredHash("foo", "bar");
  EXPECT_TRUE(md5Verify(stored, kSalt, "md56e4f0b50f7277feb74acbf2a7734c9cb"));
  EXPECT_TRUE(md5Verify(stored, kSalt, md5Response(md5StoredHash("foo", "bar"), kSalt)));
  // Wrong password, wrong salt, altered digit, case, length, empty, cleartext.
  EXPECT_FALSE(md5Verify(stored, kSalt, md5Response(md5StoredHash("fo0", "bar"), kSalt)));
  constexpr std::array<std::uint8_t, 4> kOtherSalt = {1, 2, 3, 5};
  EXPECT_FALSE(md5Verify(stored, kOtherSalt, "md56e4f0b50f7277feb74acbf2a7734c9cb"));
  EXPECT_FALSE(md5Verify(stored, kSalt, "md56e4f0b50f7277feb74acbf2a7734c9cc"));
  EXPECT_FALSE(md5Verify(stored, kSalt, "MD56E4F0B50F7277FEB74ACBF2A7734C9CB"));
  EXPECT_FALSE(md5Verify(stored, kSalt, "md56e4f0b50f7277feb74acbf2a7734c9c"));
  EXPECT_FALSE(md5Verify(stored, kSalt, "md56e4f0b50f7277feb74acbf2a7734c9cb0"));
  EXPECT_FALSE(md5Verify(stored, kSalt, ""));
  EXPECT_FALSE(md5Verify(stored, kSalt, "foo"));
  // The stored hash itself is not a valid response (pass-the-hash needs the salt).
  EXPECT_FALSE(md5Verify(stored, kSalt, stored));
  // A malformed stored hash admits nobody, not even an empty response.
  EXPECT_FALSE(md5Verify("", kSalt, ""));
  EXPECT_FALSE(md5Verify("md5", kSalt, "md5"));
}

TEST(Md5Auth, ConstantTimeEqual) {
  EXPECT_TRUE(constantTimeEqual(std::string_view("abc"), std::string_view("abc")));
  EXPECT_TRUE(constantTimeEqual(std::string_view(""), std::string_view("")));
  EXPECT_FALSE(constantTimeEqual(std::string_view("abc"), std::string_view("abd")));
  EXPECT_FALSE(constantTimeEqual(std::string_view("abc"), std::string_view("ab")));
  EXPECT_FALSE(constantTimeEqual(std::string_view(""), std::string_view("a")));
  const std::array<std::uint8_t, 3> a = {1, 2, 3};
  const std::array<std::uint8_t, 3> b = {1, 2, 4};
  EXPECT_TRUE(constantTimeEqual(a, a));
  EXPECT_FALSE(constantTimeEqual(a, b));
}

}  // namespace
}  // namespace pghandoff::protocol
