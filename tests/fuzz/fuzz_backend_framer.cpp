// libFuzzer target: the backend message framer (protocol/frame.h,
// parseBackendHeader) driven the way the server -> client relay drives it, and
// the backend decoders (protocol/backend.h, protocol/error.h) on the body of
// every complete message. The servers are untrusted too (RELIABILITY 3d).
//
// The stream is the server's (Authentication*, ParameterStatus, BackendKeyData,
// ReadyForQuery, ErrorResponse, CommandComplete, DataRow, ...); the input
// layout and the framing invariants are in framer_check.h. Every decoder runs
// on every complete body (whatever its type: a decoder must survive any
// bytes), each body in an exact-size copy so ASan reports overreads, and
// whatever decodes must encode back to the very same message (or, for
// ErrorResponse, decode again to the same fields).
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
#include "tests/fuzz/framer_check.h"
#include "tests/fuzz/fuzz_common.h"

namespace pghandoff::test {
namespace {

namespace proto = pghandoff::protocol;
using proto::Bytes;

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

}  // namespace
}  // namespace pghandoff::test

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pghandoff::test;
  return fuzzFramer<BackendFraming>(data, size, decodeBody);
}
