// libFuzzer target: the frontend body decoders the proxy runs on client input
// (protocol/frontend.h): decodePasswordBody, decodeSaslInitialBody,
// decodeQueryBody, and the extended-protocol names the proxy tracks:
// decodeParseBody, decodeBindNames, decodeExecutePortal, decodeCloseBody
// (RELIABILITY B25, B27, B37, B38).
//
// Input layout: one message body (what follows the 5-byte header), handed to
// every decoder in an exact-size copy so ASan reports any overread.
//
// Checked: each decoder accepts exactly the layout the protocol defines, the
// views it returns lie inside the body, and what decodes re-encodes to the
// very same message.
//
// Violations end in __builtin_trap(), so the same file works under libFuzzer
// and in the g++ corpus replay (tests/fuzz/replay), in every build type.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "protocol/buffer.h"
#include "protocol/frontend.h"
#include "tests/fuzz/fuzz_common.h"

namespace pghandoff::test {
namespace {

namespace proto = pghandoff::protocol;
using proto::Bytes;

bool bytesEqual(Bytes a, Bytes b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end());
}

// The body of one message an encoder wrote, after checking its type and that
// its length field matches what was written.
Bytes encodedBody(const std::vector<std::uint8_t>& out, char type) {
  FUZZ_REQUIRE(out.size() >= 5 && out[0] == static_cast<std::uint8_t>(type));
  FUZZ_REQUIRE(bigEndian32(Bytes(out).subspan(1, 4)) == out.size() - 1);
  return Bytes(out).subspan(5);
}

bool inside(std::string_view view, Bytes body) {
  const auto* p = reinterpret_cast<const std::uint8_t*>(view.data());
  return view.empty() || (p >= body.data() && p + view.size() <= body.data() + body.size());
}

// One C string filling the whole body: exactly one NUL, the last byte.
bool isSingleCString(Bytes body) {
  return !body.empty() && body.back() == 0 &&
         std::find(body.begin(), body.end() - 1, 0) == body.end() - 1;
}

void checkPassword(Bytes body) {
  const auto s = proto::decodePasswordBody(body);
  FUZZ_REQUIRE(s.has_value() == isSingleCString(body));
  if (!s) return;
  FUZZ_REQUIRE(inside(*s, body) && s->size() + 1 == body.size());
  std::vector<std::uint8_t> out;
  proto::encodePassword(*s, out);
  FUZZ_REQUIRE(bytesEqual(encodedBody(out, 'p'), body));
}

void checkQuery(Bytes body) {
  const auto sql = proto::decodeQueryBody(body);
  // B37: a missing terminator or an embedded NUL is refused.
  FUZZ_REQUIRE(sql.has_value() == isSingleCString(body));
  if (!sql) return;
  FUZZ_REQUIRE(inside(*sql, body) && sql->size() + 1 == body.size());
  std::vector<std::uint8_t> out;
  proto::encodeQuery(*sql, out);
  FUZZ_REQUIRE(bytesEqual(encodedBody(out, 'Q'), body));
}

void checkSaslInitial(Bytes body) {
  const auto s = proto::decodeSaslInitialBody(body);
  if (!s) return;
  // mechanism NUL Int32 [data]
  FUZZ_REQUIRE(inside(s->mechanism, body));
  FUZZ_REQUIRE(s->mechanism.find('\0') == std::string_view::npos);
  const std::size_t header = s->mechanism.size() + 1 + 4;
  FUZZ_REQUIRE(body.size() >= header);
  if (!s->data) {
    // Length -1: no data at all.
    FUZZ_REQUIRE(body.size() == header && bigEndian32(body.subspan(header - 4)) == 0xffffffffu);
    return;
  }
  FUZZ_REQUIRE(body.size() == header + s->data->size());
  FUZZ_REQUIRE(s->data->empty() || s->data->data() == body.data() + header);
  std::vector<std::uint8_t> out;
  proto::encodeSaslInitial(s->mechanism, proto::asString(*s->data), out);
  FUZZ_REQUIRE(bytesEqual(encodedBody(out, 'p'), body));
}

// Parse: statement NUL query NUL Int16 n, n x Int32 type oids.
void checkParse(Bytes body) {
  const auto p = proto::decodeParseBody(body);
  if (!p) return;
  FUZZ_REQUIRE(inside(p->statement, body) && inside(p->query, body));
  FUZZ_REQUIRE(p->statement.find('\0') == std::string_view::npos);
  FUZZ_REQUIRE(p->query.find('\0') == std::string_view::npos);
  const std::size_t fixed = p->statement.size() + 1 + p->query.size() + 1 + 2;
  FUZZ_REQUIRE(body.size() >= fixed && (body.size() - fixed) % 4 == 0);
}

// Bind: only the two names are decoded; they must lie inside the body.
void checkBindNames(Bytes body) {
  const auto b = proto::decodeBindNames(body);
  if (!b) return;
  FUZZ_REQUIRE(inside(b->portal, body) && inside(b->statement, body));
  FUZZ_REQUIRE(b->portal.size() + 1 + b->statement.size() + 1 <= body.size());
}

void checkExecute(Bytes body) {
  const auto portal = proto::decodeExecutePortal(body);
  if (!portal) return;
  FUZZ_REQUIRE(inside(*portal, body) && portal->size() + 1 + 4 == body.size());
  std::vector<std::uint8_t> out;
  proto::encodeExecute(*portal,
                       static_cast<std::int32_t>(bigEndian32(body.subspan(body.size() - 4))), out);
  FUZZ_REQUIRE(bytesEqual(encodedBody(out, 'E'), body));
}

void checkClose(Bytes body) {
  const auto c = proto::decodeCloseBody(body);
  if (!c) return;
  FUZZ_REQUIRE(c->kind == 'S' || c->kind == 'P');
  FUZZ_REQUIRE(inside(c->name, body) && c->name.size() + 2 == body.size());
}

}  // namespace
}  // namespace pghandoff::test

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pghandoff::test;
  const ExactCopy copy(pghandoff::protocol::Bytes(data, size));
  const pghandoff::protocol::Bytes body = copy.bytes();
  checkPassword(body);
  checkQuery(body);
  checkSaslInitial(body);
  checkParse(body);
  checkBindNames(body);
  checkExecute(body);
  checkClose(body);
  return 0;
}
