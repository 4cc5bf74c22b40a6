// libFuzzer target: the backend message framer (protocol/frame.h,
// parseBackendHeader) driven the way the server -> client relay drives it, and
// the backend decoders (protocol/backend.h, protocol/error.h) on the body of
// every complete message. The servers are untrusted too (RELIABILITY 3d).
//
// Input layout: byte 0 picks the configured maximum length (bits 0-1) and,
// with byte 1, the split point (bits 2-7 and byte 1 form a 14-bit number taken
// modulo the stream size + 1); bytes 2.. are the server's byte stream
// (Authentication*, ParameterStatus, BackendKeyData, ReadyForQuery,
// ErrorResponse, CommandComplete, DataRow, ...).
//
// Framing is checked as in fuzz_frontend_framer.cpp: the same messages when
// the stream arrives in one piece or in two, header-only parsing, no read past
// the input, kOk only with 4 <= length <= limits. Every decoder runs on every
// complete body (whatever its type: a decoder must survive any bytes), each
// body in an exact-size copy so ASan reports overreads, and whatever decodes
// must encode back to the very same message (or, for ErrorResponse, decode
// again to the same fields).
//
// Violations end in __builtin_trap(), so the same file works under libFuzzer
// and in the g++ corpus replay (tests/fuzz/replay), in every build type.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "protocol/backend.h"
#include "protocol/buffer.h"
#include "protocol/error.h"
#include "protocol/frame.h"
#include "tests/fuzz/fuzz_common.h"

namespace pghandoff::test {
namespace {

namespace proto = pghandoff::protocol;
using proto::Bytes;
using proto::FrameHeader;
using proto::FrameStatus;

// The proxy's default limits.max_message_bytes (64 MiB), the hard cap, a small
// limit, and 0 (every well-formed length is then too large).
constexpr std::uint32_t kMaxLengths[] = {64u << 20, proto::kHardMessageLimit, 8192, 0};

// What the framer is handed at most per call: more than the 5 header bytes so
// a framer that peeks into the body is still given something to (not) read.
constexpr std::size_t kWindowCap = 32;

struct Event {
  FrameStatus status;
  char type;
  std::uint32_t length;
  std::size_t offset;
  bool operator==(const Event&) const = default;
};

bool sameHeader(const FrameHeader& a, const FrameHeader& b) {
  return a.status == b.status && a.type == b.type && a.length == b.length;
}

FrameHeader parseCopy(Bytes window, std::uint32_t maxLength) {
  const ExactCopy copy(window);
  return proto::parseBackendHeader(copy.bytes(), maxLength);
}

bool bytesEqual(Bytes a, Bytes b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end());
}

// The body of one message an encoder wrote, after checking that its length
// field matches what was written.
Bytes encodedBody(const std::vector<std::uint8_t>& out) {
  FUZZ_REQUIRE(out.size() >= 5);
  FUZZ_REQUIRE(bigEndian32(Bytes(out).subspan(1, 4)) == out.size() - 1);
  return Bytes(out).subspan(5);
}

bool inside(std::string_view view, Bytes body) {
  const auto* p = reinterpret_cast<const std::uint8_t*>(view.data());
  return view.empty() || (p >= body.data() && p + view.size() <= body.data() + body.size());
}

FrameHeader checkedHeader(Bytes window, std::uint32_t maxLength) {
  const FrameHeader h = proto::parseBackendHeader(window, maxLength);
  FUZZ_REQUIRE(
      sameHeader(h, parseCopy(window.first(std::min(window.size(), kWindowCap)), maxLength)));
  FUZZ_REQUIRE(
      sameHeader(h, parseCopy(window.first(std::min<std::size_t>(window.size(), 5)), maxLength)));
  for (std::size_t k = 0; k < std::min<std::size_t>(window.size(), 5); ++k) {
    const FrameHeader partial = parseCopy(window.first(k), maxLength);
    FUZZ_REQUIRE(partial.status == FrameStatus::kNeedMore || sameHeader(partial, h));
  }

  if (window.empty()) {
    FUZZ_REQUIRE(h.status == FrameStatus::kNeedMore);
    return h;
  }
  FUZZ_REQUIRE(h.type == static_cast<char>(window[0]));
  if (!proto::isBackendType(h.type)) {
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
      FUZZ_REQUIRE(h.length <= maxLength && h.length <= proto::kHardMessageLimit);
      FUZZ_REQUIRE(h.bodySize() == h.length - 4 && h.total() == std::size_t{h.length} + 1);
      break;
    case FrameStatus::kBadLength:
      FUZZ_REQUIRE(h.length < 4 || h.length > proto::kSmallBackendLimit);
      break;
    case FrameStatus::kTooLarge:
      FUZZ_REQUIRE(h.length >= 4);
      FUZZ_REQUIRE(h.length > maxLength || h.length > proto::kHardMessageLimit);
      break;
    case FrameStatus::kNeedMore:
    case FrameStatus::kBadType:
      FUZZ_REQUIRE(false);  // 5 bytes of a known type always get a verdict
      break;
  }
  return h;
}

void checkError(Bytes body) {
  const auto e = proto::decodeErrorBody(body);
  if (!e) return;
  // B48: a response without a usable SQLSTATE still yields one.
  FUZZ_REQUIRE(e->code.size() == 5 && !e->severity.empty());
  std::vector<std::uint8_t> out;
  proto::encodeError(*e, out, 'N');
  FUZZ_REQUIRE(out[0] == 'N');
  const auto again = proto::decodeErrorBody(encodedBody(out));
  FUZZ_REQUIRE(again.has_value());
  FUZZ_REQUIRE(again->severity == e->severity && again->code == e->code &&
               again->message == e->message && again->detail == e->detail &&
               again->hint == e->hint);
}

void checkAuth(Bytes body) {
  const auto a = proto::decodeAuthBody(body);
  if (!a) return;
  FUZZ_REQUIRE(body.size() >= 4);
  std::vector<std::uint8_t> out;
  switch (static_cast<proto::AuthCode>(a->code)) {
    case proto::AuthCode::kOk:
      proto::encodeAuthOk(out);
      break;
    case proto::AuthCode::kCleartextPassword:
      proto::encodeAuthCleartext(out);
      break;
    case proto::AuthCode::kMd5Password:
      FUZZ_REQUIRE(a->md5Salt.size() == 4);
      proto::encodeAuthMd5(a->md5Salt.data(), out);
      break;
    case proto::AuthCode::kSasl:
      for (const auto& m : a->mechanisms) FUZZ_REQUIRE(!m.empty());
      proto::encodeAuthSasl(a->mechanisms, out);
      break;
    case proto::AuthCode::kSaslContinue:
      proto::encodeAuthSaslContinue(proto::asString(a->data), out);
      break;
    case proto::AuthCode::kSaslFinal:
      proto::encodeAuthSaslFinal(proto::asString(a->data), out);
      break;
    default:
      return;  // GSS, SSPI...: recognised by code only, no encoder
  }
  FUZZ_REQUIRE(out[0] == 'R');
  FUZZ_REQUIRE(bytesEqual(encodedBody(out), body));
}

void checkBackendKey(Bytes body) {
  const auto k = proto::decodeBackendKeyBody(body);
  FUZZ_REQUIRE(k.has_value() == (body.size() == 8));
  if (!k) return;
  std::vector<std::uint8_t> out;
  proto::encodeBackendKey(*k, out);
  FUZZ_REQUIRE(bytesEqual(encodedBody(out), body));
}

void checkParameterStatus(Bytes body) {
  const auto p = proto::decodeParameterStatusBody(body);
  if (!p) return;
  std::vector<std::uint8_t> out;
  proto::encodeParameterStatus(p->name, p->value, out);
  FUZZ_REQUIRE(bytesEqual(encodedBody(out), body));
}

void checkReadyForQuery(Bytes body) {
  const auto s = proto::decodeReadyForQueryBody(body);
  const bool valid = body.size() == 1 && (body[0] == 'I' || body[0] == 'T' || body[0] == 'E');
  FUZZ_REQUIRE(s.has_value() == valid);
  if (!s) return;
  std::vector<std::uint8_t> out;
  proto::encodeReadyForQuery(*s, out);
  FUZZ_REQUIRE(bytesEqual(encodedBody(out), body));
}

void checkCommandComplete(Bytes body) {
  const auto tag = proto::decodeCommandCompleteBody(body);
  // Exactly one NUL, the last byte.
  const bool valid = !body.empty() && body.back() == 0 &&
                     std::find(body.begin(), body.end() - 1, 0) == body.end() - 1;
  FUZZ_REQUIRE(tag.has_value() == valid);
  if (!tag) return;
  FUZZ_REQUIRE(tag->size() + 1 == body.size() && inside(*tag, body));
}

void decodeBody(Bytes frameBody) {
  const ExactCopy copy(frameBody);
  const Bytes body = copy.bytes();
  checkError(body);
  checkAuth(body);
  checkBackendKey(body);
  checkParameterStatus(body);
  checkReadyForQuery(body);
  checkCommandComplete(body);
}

// Frames `stream` as a relay does when the first `split` bytes arrive, then the
// rest. Returns one event per complete message, plus the final one (a bad
// header, or what was still pending at end of input). With `decode`, runs the
// decoders on every complete message's body.
std::vector<Event> relay(Bytes stream, std::size_t split, std::uint32_t maxLength, bool decode) {
  std::vector<Event> events;
  std::size_t received = split;
  std::size_t pos = 0;
  while (true) {
    const FrameHeader h = checkedHeader(stream.subspan(pos, received - pos), maxLength);
    const bool waiting = h.status == FrameStatus::kNeedMore ||
                         (h.status == FrameStatus::kOk && received - pos < h.total());
    if (waiting && received < stream.size()) {
      received = stream.size();
      continue;
    }
    events.push_back({h.status, h.type, h.length, pos});
    if (waiting || h.status != FrameStatus::kOk) return events;
    if (decode) decodeBody(stream.subspan(pos + 5, h.bodySize()));
    pos += h.total();
  }
}

}  // namespace
}  // namespace pghandoff::test

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pghandoff::test;
  if (size < 2) return 0;
  const std::uint32_t maxLength = kMaxLengths[data[0] & 3u];
  const pghandoff::protocol::Bytes stream(data + 2, size - 2);
  const std::size_t split =
      ((std::size_t{data[0]} >> 2) << 8 | std::size_t{data[1]}) % (stream.size() + 1);

  const std::vector<Event> whole = relay(stream, stream.size(), maxLength, true);
  const std::vector<Event> pieces = relay(stream, split, maxLength, false);
  FUZZ_REQUIRE(whole == pieces);
  std::size_t expected = 0;
  for (std::size_t i = 0; i + 1 < whole.size(); ++i) {
    FUZZ_REQUIRE(whole[i].status == pghandoff::protocol::FrameStatus::kOk);
    FUZZ_REQUIRE(whole[i].offset == expected);
    expected += std::size_t{whole[i].length} + 1;
    FUZZ_REQUIRE(expected <= stream.size());
  }
  return 0;
}
