// Backend message codecs the mirror relay reads and writes (protocol/backend.h).
#include "protocol/backend.h"

#include <gtest/gtest.h>

namespace pghandoff::protocol {
namespace {

TEST(BackendTest, DataRowRoundTrip) {
  std::vector<std::uint8_t> body;
  Writer w(body);
  w.int16(3).int32(2).raw(std::string_view("ab")).int32(-1).int32(0);
  auto cols = decodeDataRowBody(body);
  ASSERT_TRUE(cols);
  ASSERT_EQ(cols->size(), 3u);
  EXPECT_EQ((*cols)[0], std::optional<std::string_view>("ab"));
  EXPECT_FALSE((*cols)[1].has_value());
  EXPECT_EQ((*cols)[2], std::optional<std::string_view>(""));
  body.push_back(0);  // trailing garbage
  EXPECT_FALSE(decodeDataRowBody(body));
  std::vector<std::uint8_t> bad;
  Writer(bad).int16(1).int32(10).raw(std::string_view("x"));  // length past the end
  EXPECT_FALSE(decodeDataRowBody(bad));
  std::vector<std::uint8_t> neg;
  Writer(neg).int16(1).int32(-2);
  EXPECT_FALSE(decodeDataRowBody(neg));
}

TEST(BackendTest, CommandCompleteRoundTrip) {
  std::vector<std::uint8_t> out;
  encodeCommandComplete("INSERT 0 1", out);
  ASSERT_EQ(out[0], 'C');
  auto tag = decodeCommandCompleteBody(Bytes(out).subspan(5));
  EXPECT_EQ(tag, std::optional<std::string_view>("INSERT 0 1"));
}

}  // namespace
}  // namespace pghandoff::protocol
