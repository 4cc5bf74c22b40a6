// The framer invariants both framer targets check (fuzz_frontend_framer.cpp,
// fuzz_backend_framer.cpp), written once: each target names its direction
// (parse function, known types, small-message limit) and what to do with the
// body of every complete message.
//
// Input layout: byte 0 picks the configured maximum length (bits 0-1) and,
// with byte 1, the split point (bits 2-7 and byte 1 form a 14-bit number taken
// modulo the stream size + 1); bytes 2.. are one side's byte stream.
//
// The stream is framed twice, once received in one piece and once in two
// pieces cut at the split point, and the two runs must see the same messages
// and the same final verdict. Every header parse is checked against what
// frame.h promises (RELIABILITY B33-B36): the framer looks only at the 5-byte
// header, never reads past its input (each parse gets an exact-size copy, so
// ASan reports any overread), answers kNeedMore only for fewer than 5 bytes,
// and an kOk length is at least 4 and within the limits.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "protocol/buffer.h"
#include "protocol/frame.h"
#include "tests/fuzz/fuzz_common.h"

namespace pghandoff::test {

struct FrontendFraming {
  static protocol::FrameHeader parse(protocol::Bytes in, std::uint32_t maxLength) {
    return protocol::parseFrontendHeader(in, maxLength);
  }
  static bool knownType(char t) { return protocol::isFrontendType(t); }
  static constexpr std::uint32_t kSmallLimit = protocol::kSmallFrontendLimit;
};

struct BackendFraming {
  static protocol::FrameHeader parse(protocol::Bytes in, std::uint32_t maxLength) {
    return protocol::parseBackendHeader(in, maxLength);
  }
  static bool knownType(char t) { return protocol::isBackendType(t); }
  static constexpr std::uint32_t kSmallLimit = protocol::kSmallBackendLimit;
};

namespace framer_check {

using protocol::Bytes;
using protocol::FrameHeader;
using protocol::FrameStatus;

// The proxy's default limits.max_message_bytes (64 MiB), the hard cap, a small
// limit, and 0 (every well-formed length is then too large).
inline constexpr std::uint32_t kMaxLengths[] = {64u << 20, protocol::kHardMessageLimit, 8192, 0};

// What the framer is handed at most per call: more than the 5 header bytes so
// a framer that peeks into the body is still given something to (not) read.
inline constexpr std::size_t kWindowCap = 32;

struct Event {
  FrameStatus status;
  char type;
  std::uint32_t length;
  std::size_t offset;
  bool operator==(const Event&) const = default;
};

inline bool sameHeader(const FrameHeader& a, const FrameHeader& b) {
  return a.status == b.status && a.type == b.type && a.length == b.length;
}

template <typename Framing>
FrameHeader parseCopy(Bytes window, std::uint32_t maxLength) {
  const ExactCopy copy(window);
  return Framing::parse(copy.bytes(), maxLength);
}

// Parses the header at the front of `window` (the bytes the relay holds) and
// checks everything frame.h promises about the answer.
template <typename Framing>
FrameHeader checkedHeader(Bytes window, std::uint32_t maxLength) {
  const FrameHeader h = Framing::parse(window, maxLength);
  // Only the header matters: the same answer from an exact-size copy of a
  // bounded window, and from the first 5 bytes alone.
  FUZZ_REQUIRE(sameHeader(
      h, parseCopy<Framing>(window.first(std::min(window.size(), kWindowCap)), maxLength)));
  FUZZ_REQUIRE(sameHeader(
      h, parseCopy<Framing>(window.first(std::min<std::size_t>(window.size(), 5)), maxLength)));
  // A partial header either waits for more or already gives the final verdict
  // (an unknown type is known from the first byte).
  for (std::size_t k = 0; k < std::min<std::size_t>(window.size(), 5); ++k) {
    const FrameHeader partial = parseCopy<Framing>(window.first(k), maxLength);
    FUZZ_REQUIRE(partial.status == FrameStatus::kNeedMore || sameHeader(partial, h));
  }

  if (window.empty()) {
    FUZZ_REQUIRE(h.status == FrameStatus::kNeedMore);
    return h;
  }
  FUZZ_REQUIRE(h.type == static_cast<char>(window[0]));
  if (!Framing::knownType(h.type)) {
    FUZZ_REQUIRE(h.status == FrameStatus::kBadType);
    return h;
  }
  if (window.size() < 5) {
    FUZZ_REQUIRE(h.status == FrameStatus::kNeedMore);
    return h;
  }
  FUZZ_REQUIRE(h.length == bigEndian32(window.subspan(1, 4)));
  switch (h.status) {
    case FrameStatus::kOk:
      FUZZ_REQUIRE(h.length >= 4 && h.total() > 4);
      FUZZ_REQUIRE(h.length <= maxLength && h.length <= protocol::kHardMessageLimit);
      FUZZ_REQUIRE(h.bodySize() == h.length - 4 && h.total() == std::size_t{h.length} + 1);
      break;
    case FrameStatus::kBadLength:
      FUZZ_REQUIRE(h.length < 4 || h.length > Framing::kSmallLimit);
      break;
    case FrameStatus::kTooLarge:
      FUZZ_REQUIRE(h.length >= 4);
      FUZZ_REQUIRE(h.length > maxLength || h.length > protocol::kHardMessageLimit);
      break;
    case FrameStatus::kNeedMore:
    case FrameStatus::kBadType:
      FUZZ_REQUIRE(false);  // 5 bytes of a known type always get a verdict
      break;
  }
  return h;
}

// Frames `stream` as a relay does when the first `split` bytes arrive, then the
// rest: parse the header, wait until the whole message is there, forward it
// (calling onBody with its body), stop at the first bad header. Returns one
// event per forwarded message, plus the final one (a bad header, or what was
// still pending at end of input).
template <typename Framing, typename OnBody>
std::vector<Event> relay(Bytes stream, std::size_t split, std::uint32_t maxLength,
                         OnBody&& onBody) {
  std::vector<Event> events;
  std::size_t received = split;
  std::size_t pos = 0;
  while (true) {
    const FrameHeader h = checkedHeader<Framing>(stream.subspan(pos, received - pos), maxLength);
    const bool waiting = h.status == FrameStatus::kNeedMore ||
                         (h.status == FrameStatus::kOk && received - pos < h.total());
    if (waiting && received < stream.size()) {
      received = stream.size();
      continue;
    }
    events.push_back({h.status, h.type, h.length, pos});
    if (waiting || h.status != FrameStatus::kOk) return events;
    onBody(stream.subspan(pos + 5, h.bodySize()));
    pos += h.total();
  }
}

}  // namespace framer_check

// The whole fuzz input: frames the stream whole (calling onBody for every
// complete message) and in two pieces, and checks they agree and that the
// forwarded messages lie back to back inside the stream.
template <typename Framing, typename OnBody>
int fuzzFramer(const std::uint8_t* data, std::size_t size, OnBody&& onBody) {
  namespace fc = framer_check;
  if (size < 2) return 0;
  const std::uint32_t maxLength = fc::kMaxLengths[data[0] & 3u];
  const protocol::Bytes stream(data + 2, size - 2);
  const std::size_t split =
      ((std::size_t{data[0]} >> 2) << 8 | std::size_t{data[1]}) % (stream.size() + 1);

  const std::vector<fc::Event> whole = fc::relay<Framing>(stream, stream.size(), maxLength, onBody);
  const std::vector<fc::Event> pieces =
      fc::relay<Framing>(stream, split, maxLength, [](protocol::Bytes) {});
  FUZZ_REQUIRE(whole == pieces);
  std::size_t expected = 0;
  for (std::size_t i = 0; i + 1 < whole.size(); ++i) {
    FUZZ_REQUIRE(whole[i].status == protocol::FrameStatus::kOk);
    FUZZ_REQUIRE(whole[i].offset == expected);
    expected += std::size_t{whole[i].length} + 1;
    FUZZ_REQUIRE(expected <= stream.size());
  }
  return 0;
}

}  // namespace pghandoff::test
