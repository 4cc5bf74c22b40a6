// libFuzzer target: the startup phase (protocol/frame.h parseStartupHeader,
// protocol/startup.h decodeStartup / decodeCancel), i.e. the first bytes an
// untrusted client sends (RELIABILITY B2-B4, B7-B10, B15, B21).
//
// Input layout: the raw bytes a client sends first (StartupMessage,
// SSLRequest, GSSENCRequest, CancelRequest, or anything else).
//
// Checked:
//  - parseStartupHeader answers exactly as documented (kNeedMore below 4
//    bytes, kBadLength for length < 8, kTooLarge above kStartupLimit, kNeedMore
//    below 8 bytes, else kOk with the code), a partial header waits or already
//    gives the final verdict, and only the 8 header bytes matter;
//  - decodeStartup and decodeCancel on the packet the header delimits and on
//    the whole input, each in an exact-size copy so ASan reports overreads;
//  - round trips: a packet that decodes re-encodes to the very same bytes, and
//    encodeStartup(decoded) decodes to the same protocol and parameters.
//
// Violations end in __builtin_trap(), so the same file works under libFuzzer
// and in the g++ corpus replay (tests/fuzz/replay), in every build type.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "protocol/buffer.h"
#include "protocol/frame.h"
#include "protocol/startup.h"
#include "tests/fuzz/fuzz_common.h"

namespace pghandoff::test {
namespace {

namespace proto = pghandoff::protocol;
using proto::Bytes;
using proto::FrameStatus;
using proto::StartupHeader;

bool sameHeader(const StartupHeader& a, const StartupHeader& b) {
  return a.status == b.status && a.length == b.length && a.code == b.code;
}

StartupHeader parseCopy(Bytes in) {
  const ExactCopy copy(in);
  return proto::parseStartupHeader(copy.bytes());
}

bool bytesEqual(Bytes a, Bytes b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end());
}

StartupHeader checkedHeader(Bytes in) {
  const StartupHeader h = parseCopy(in);
  FUZZ_REQUIRE(sameHeader(h, proto::parseStartupHeader(in)));
  FUZZ_REQUIRE(sameHeader(h, parseCopy(in.first(std::min<std::size_t>(in.size(), 8)))));
  for (std::size_t k = 0; k < std::min<std::size_t>(in.size(), 8); ++k) {
    const StartupHeader partial = parseCopy(in.first(k));
    FUZZ_REQUIRE(partial.status == FrameStatus::kNeedMore || sameHeader(partial, h));
  }

  if (in.size() < 4) {
    FUZZ_REQUIRE(h.status == FrameStatus::kNeedMore);
    return h;
  }
  FUZZ_REQUIRE(h.length == bigEndian32(in));
  if (h.length < 8) {
    FUZZ_REQUIRE(h.status == FrameStatus::kBadLength);
  } else if (h.length > proto::kStartupLimit) {
    FUZZ_REQUIRE(h.status == FrameStatus::kTooLarge);
  } else if (in.size() < 8) {
    FUZZ_REQUIRE(h.status == FrameStatus::kNeedMore);
  } else {
    FUZZ_REQUIRE(h.status == FrameStatus::kOk);
    FUZZ_REQUIRE(h.code == static_cast<std::int32_t>(bigEndian32(in.subspan(4))));
  }
  return h;
}

void checkStartup(Bytes packet) {
  proto::StartupError err = proto::StartupError::kNone;
  const auto m = proto::decodeStartup(packet, &err);
  FUZZ_REQUIRE(proto::decodeStartup(packet, nullptr).has_value() == m.has_value());
  if (!m) {
    FUZZ_REQUIRE(err == proto::StartupError::kBadLayout ||
                 err == proto::StartupError::kDuplicateKey);
    return;
  }
  FUZZ_REQUIRE(err == proto::StartupError::kNone);
  // Length, protocol, the final empty string at least.
  FUZZ_REQUIRE(packet.size() >= 9);
  std::set<std::string> keys;
  for (const auto& [k, v] : m->parameters) {
    FUZZ_REQUIRE(!k.empty() && k.find('\0') == std::string::npos);
    FUZZ_REQUIRE(v.find('\0') == std::string::npos);
    FUZZ_REQUIRE(keys.insert(k).second);
    FUZZ_REQUIRE(m->find(k) != nullptr && *m->find(k) == v);
  }

  std::vector<std::uint8_t> out;
  proto::encodeStartup(*m, out);
  FUZZ_REQUIRE(bytesEqual(out, packet));
  proto::StartupError err2 = proto::StartupError::kBadLayout;
  const auto again = proto::decodeStartup(out, &err2);
  FUZZ_REQUIRE(again.has_value() && err2 == proto::StartupError::kNone);
  FUZZ_REQUIRE(again->protocol == m->protocol && again->parameters == m->parameters);
}

void checkCancel(Bytes packet) {
  const auto c = proto::decodeCancel(packet);
  const bool valid =
      packet.size() == 16 && bigEndian32(packet) == 16 &&
      bigEndian32(packet.subspan(4)) == static_cast<std::uint32_t>(proto::kCancelRequestCode);
  FUZZ_REQUIRE(c.has_value() == valid);
  if (!c) return;
  std::vector<std::uint8_t> out;
  proto::encodeCancel(*c, out);
  FUZZ_REQUIRE(bytesEqual(out, packet));
}

void checkPacket(Bytes in) {
  const ExactCopy copy(in);
  checkStartup(copy.bytes());
  checkCancel(copy.bytes());
}

}  // namespace
}  // namespace pghandoff::test

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pghandoff::test;
  const pghandoff::protocol::Bytes in(data, size);
  const auto h = checkedHeader(in);
  // What the session decodes: exactly the packet the header delimits.
  if (h.status == pghandoff::protocol::FrameStatus::kOk && h.length <= in.size()) {
    checkPacket(in.first(h.length));
    if (h.code == pghandoff::protocol::kSslRequestCode && h.length == 8) {
      std::vector<std::uint8_t> out;
      pghandoff::protocol::encodeSslRequest(out);
      FUZZ_REQUIRE(out.size() == 8 && std::equal(out.begin(), out.end(), in.begin()));
    }
  }
  // Decoders are also handed arbitrary lengths, trailing bytes included.
  checkPacket(in);
  return 0;
}
