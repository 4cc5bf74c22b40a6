#include "proxy/logging.h"

#include <gtest/gtest.h>

namespace pghandoff::proxy {
namespace {

TEST(Logging, SanitizeEscapesControlAndNonAscii) {
  EXPECT_EQ(sanitizeForLog("app", 63), "app");
  EXPECT_EQ(sanitizeForLog(std::string("a\nb\x01\xff\"", 6), 63), "a\\x0ab\\x01\\xff\\x22");
  EXPECT_EQ(sanitizeForLog(std::string(100, 'u'), 10), std::string(10, 'u') + "...");
}

}  // namespace
}  // namespace pghandoff::proxy
