#include "proxy/relay_buffer.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "protocol/backend.h"
#include "protocol/error.h"
#include "protocol/frontend.h"

namespace pghandoff::proxy {
namespace {

struct Seen {
  char type;
  bool whole;
  std::size_t bodySize;
};

// Feeds `stream` in chunks of `chunk` bytes, forwarding ready bytes after each
// read as the relay does; returns the frames seen and the forwarded bytes.
std::pair<std::vector<Seen>, std::vector<std::uint8_t>> relay(
    const std::vector<std::uint8_t>& stream, std::size_t chunk, bool (*needsBody)(char)) {
  RelayBuffer buf;
  std::vector<Seen> seen;
  std::vector<std::uint8_t> out;
  std::size_t fed = 0;
  while (fed < stream.size()) {
    auto space = buf.freeSpace();
    std::size_t n = std::min({chunk, space.size(), stream.size() - fed});
    std::memcpy(space.data(), stream.data() + fed, n);
    fed += n;
    buf.commit(n);
    auto r = buf.scan([](protocol::Bytes b) { return protocol::parseBackendHeader(b, 1 << 30); },
                      needsBody,
                      [&seen](const protocol::FrameHeader& h, protocol::Bytes body, bool whole) {
                        seen.push_back({h.type, whole, body.size()});
                        return true;
                      });
    EXPECT_NE(r.status, RelayBuffer::ScanStatus::kError);
    if (buf.hasReady()) {
      auto rb = buf.ready();
      auto* p = static_cast<const std::uint8_t*>(rb.data());
      out.insert(out.end(), p, p + rb.size());
      buf.consumeReady();
    }
  }
  EXPECT_FALSE(buf.midMessage());
  return {seen, out};
}

std::vector<std::uint8_t> bigDataRowStream(std::size_t payload) {
  std::vector<std::uint8_t> s;
  protocol::Writer w(s);
  w.begin('D').int16(1).int32(static_cast<std::int32_t>(payload));
  s.resize(s.size() + payload, 'x');
  w.end();
  protocol::encodeReadyForQuery('I', s);
  return s;
}

TEST(RelayBuffer, StreamsLargeMessagesWithoutBufferingThem) {
  auto stream = bigDataRowStream(1 << 20);
  auto [seen, out] = relay(stream, 4096, [](char t) { return t == 'Z'; });
  EXPECT_EQ(out, stream);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].type, 'D');
  EXPECT_FALSE(seen[0].whole);             // streamed: reported at its header
  EXPECT_EQ(seen[0].bodySize, 4096u - 5);  // with the part of the body that had arrived
  EXPECT_EQ(seen[1].type, 'Z');
  EXPECT_TRUE(seen[1].whole);
  EXPECT_EQ(seen[1].bodySize, 1u);
}

TEST(RelayBuffer, CollectsNeededBodiesLargerThanTheBuffer) {
  std::vector<std::uint8_t> stream;
  protocol::ErrorFields e{"ERROR", "XX000", std::string(100000, 'm'), "", ""};
  protocol::encodeError(e, stream);
  protocol::encodeReadyForQuery('E', stream);
  auto [seen, out] = relay(stream, 1000, [](char t) { return t == 'Z' || t == 'E'; });
  EXPECT_EQ(out, stream);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen[0].whole);
  EXPECT_EQ(seen[0].bodySize, stream.size() - 6 - 5);
}

TEST(RelayBuffer, EveryChunkSizeForwardsTheSameBytes) {
  std::vector<std::uint8_t> stream;
  for (int i = 0; i < 20; ++i) {
    protocol::encodeParameterStatus("k" + std::to_string(i), std::string(i * 37, 'v'), stream);
    protocol::encodeReadyForQuery('T', stream);
  }
  for (std::size_t chunk : {1u, 2u, 3u, 5u, 7u, 64u, 1000u, 100000u}) {
    auto [seen, out] = relay(stream, chunk, [](char t) { return t == 'Z' || t == 'S'; });
    EXPECT_EQ(out, stream) << chunk;
    EXPECT_EQ(seen.size(), 40u) << chunk;
  }
}

TEST(RelayBuffer, ReportsBadFrames) {
  RelayBuffer buf;
  auto space = buf.freeSpace();
  const std::uint8_t bad[] = {'Z', 0, 0, 0x75, 0x31};  // short type with a long length (B50)
  std::memcpy(space.data(), bad, sizeof bad);
  buf.commit(sizeof bad);
  auto r = buf.scan([](protocol::Bytes b) { return protocol::parseBackendHeader(b, 1 << 20); },
                    [](char) { return true; },
                    [](const protocol::FrameHeader&, protocol::Bytes, bool) { return true; });
  EXPECT_EQ(r.status, RelayBuffer::ScanStatus::kError);
  EXPECT_EQ(r.header.status, protocol::FrameStatus::kBadLength);
}

}  // namespace
}  // namespace pghandoff::proxy
