#include "protocol/frame.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "protocol/backend.h"
#include "protocol/error.h"
#include "protocol/frontend.h"
#include "protocol/startup.h"

namespace pghandoff::protocol {
namespace {

std::vector<std::uint8_t> sampleFrontendStream() {
  std::vector<std::uint8_t> out;
  encodeQuery("SELECT 1; SELECT 2", out);
  encodePassword("secret", out);
  encodeSaslInitial("SCRAM-SHA-256", "n,,n=,r=abc", out);
  encodeQuery("", out);
  encodeTerminate(out);
  return out;
}

// Splits a stream into frames the way the relay does: header first, then wait
// for the whole message.
std::vector<std::pair<char, std::size_t>> frameAll(const std::vector<std::uint8_t>& stream,
                                                   std::size_t chunk) {
  std::vector<std::pair<char, std::size_t>> frames;
  std::vector<std::uint8_t> buf;
  std::size_t fed = 0;
  while (fed < stream.size() || !buf.empty()) {
    if (fed < stream.size()) {
      std::size_t n = std::min(chunk, stream.size() - fed);
      buf.insert(buf.end(), stream.begin() + static_cast<long>(fed),
                 stream.begin() + static_cast<long>(fed + n));
      fed += n;
    }
    while (true) {
      FrameHeader h = parseFrontendHeader(buf, 1 << 20);
      if (h.status != FrameStatus::kOk) {
        EXPECT_EQ(h.status, FrameStatus::kNeedMore);
        break;
      }
      if (buf.size() < h.total()) break;
      frames.emplace_back(h.type, h.total());
      buf.erase(buf.begin(), buf.begin() + static_cast<long>(h.total()));
    }
    if (fed == stream.size() && !buf.empty()) {
      ADD_FAILURE() << "leftover bytes";
      break;
    }
  }
  return frames;
}

TEST(Frame, SplitAtEveryOffsetYieldsSameFrames) {
  auto stream = sampleFrontendStream();
  auto whole = frameAll(stream, stream.size());
  ASSERT_EQ(whole.size(), 5u);
  for (std::size_t chunk = 1; chunk <= stream.size(); ++chunk) {
    EXPECT_EQ(frameAll(stream, chunk), whole) << "chunk " << chunk;
  }
}

TEST(Frame, RejectsUnknownTypeBeforeLength) {
  std::vector<std::uint8_t> b{'=', 0, 0};
  EXPECT_EQ(parseFrontendHeader(b, 100).status, FrameStatus::kBadType);
  b = {0x00};
  EXPECT_EQ(parseFrontendHeader(b, 100).status, FrameStatus::kBadType);
  b = {0xff};
  EXPECT_EQ(parseFrontendHeader(b, 100).status, FrameStatus::kBadType);
}

TEST(Frame, RejectsShortAndOversizedLengths) {
  std::vector<std::uint8_t> b{'Q', 0, 0, 0, 3};
  EXPECT_EQ(parseFrontendHeader(b, 100).status, FrameStatus::kBadLength);      // B34
  b = {'S', 0, 0, 0x27, 0x11};                                                 // Sync with 10001
  EXPECT_EQ(parseFrontendHeader(b, 1 << 20).status, FrameStatus::kBadLength);  // B35
  b = {'Q', 0x7f, 0xff, 0xff, 0xff};
  EXPECT_EQ(parseFrontendHeader(b, 64 << 20).status, FrameStatus::kTooLarge);  // B36
  b = {'Q', 0, 0, 1, 0};
  EXPECT_EQ(parseFrontendHeader(b, 255).status, FrameStatus::kTooLarge);
  EXPECT_EQ(parseFrontendHeader(b, 256).status, FrameStatus::kOk);
}

TEST(Frame, BackendShortTypesLimited) {
  std::vector<std::uint8_t> b{'Z', 0, 0, 0x75, 0x31};                         // 30001
  EXPECT_EQ(parseBackendHeader(b, 1 << 20).status, FrameStatus::kBadLength);  // B50
  b = {'D', 0, 0, 0x75, 0x31};
  EXPECT_EQ(parseBackendHeader(b, 1 << 20).status, FrameStatus::kOk);
  b = {'Q', 0, 0, 0, 4};
  EXPECT_EQ(parseBackendHeader(b, 1 << 20).status, FrameStatus::kBadType);
}

TEST(Frame, StartupHeaderLimits) {
  std::vector<std::uint8_t> b{0, 0, 0, 7};
  EXPECT_EQ(parseStartupHeader(b).status, FrameStatus::kBadLength);  // B3
  b = {0x7f, 0xff, 0xff, 0xff};
  EXPECT_EQ(parseStartupHeader(b).status, FrameStatus::kTooLarge);  // B4
  b = {0, 0, 0};
  EXPECT_EQ(parseStartupHeader(b).status, FrameStatus::kNeedMore);  // B2
  std::vector<std::uint8_t> ssl;
  encodeSslRequest(ssl);
  auto h = parseStartupHeader(ssl);
  EXPECT_EQ(h.status, FrameStatus::kOk);
  EXPECT_EQ(h.code, kSslRequestCode);
  EXPECT_EQ(h.length, 8u);
}

TEST(Startup, RoundTrip) {
  StartupMessage m;
  m.parameters = {{"user", "app"}, {"database", "db"}, {"options", "-c search_path=x"}};
  std::vector<std::uint8_t> out;
  encodeStartup(m, out);
  StartupError err;
  auto d = decodeStartup(out, &err);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->protocol, kProtocol30);
  EXPECT_EQ(d->parameters, m.parameters);
  ASSERT_NE(d->find("database"), nullptr);
  EXPECT_EQ(*d->find("database"), "db");
}

TEST(Startup, BadLayouts) {
  StartupMessage m;
  m.parameters = {{"user", "app"}};
  std::vector<std::uint8_t> out;
  encodeStartup(m, out);
  StartupError err;
  // Drop the final terminator (B9) and fix the length.
  auto noTerm = out;
  noTerm.pop_back();
  noTerm[3] = static_cast<std::uint8_t>(noTerm.size());
  EXPECT_FALSE(decodeStartup(noTerm, &err));
  EXPECT_EQ(err, StartupError::kBadLayout);
  // A key without value (B10): "user\0app\0x\0" then terminator missing value.
  std::vector<std::uint8_t> odd;
  Writer w(odd);
  w.beginUntyped().int32(kProtocol30).cstring("user").cstring("app").cstring("database").byte(0);
  w.end();
  EXPECT_FALSE(decodeStartup(odd, &err));
  // Duplicate key.
  std::vector<std::uint8_t> dup;
  Writer w2(dup);
  w2.beginUntyped()
      .int32(kProtocol30)
      .cstring("user")
      .cstring("a")
      .cstring("user")
      .cstring("b")
      .byte(0);
  w2.end();
  EXPECT_FALSE(decodeStartup(dup, &err));
  EXPECT_EQ(err, StartupError::kDuplicateKey);
}

TEST(Startup, Cancel) {
  std::vector<std::uint8_t> out;
  encodeCancel({1234, -5678}, out);
  auto c = decodeCancel(out);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->pid, 1234);
  EXPECT_EQ(c->key, -5678);
  out.push_back(0);
  EXPECT_FALSE(decodeCancel(out));  // B21
}

TEST(Error, RoundTripAndMissingFields) {
  std::vector<std::uint8_t> out;
  encodeError({"FATAL", "28P01", "password authentication failed for user \"x\"", "", ""}, out);
  auto h = parseBackendHeader(out, 1 << 20);
  ASSERT_EQ(h.status, FrameStatus::kOk);
  ASSERT_EQ(h.total(), out.size());
  auto e = decodeErrorBody(Bytes(out).subspan(5));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->severity, "FATAL");
  EXPECT_EQ(e->code, "28P01");
  // B48: no SQLSTATE, no message.
  std::vector<std::uint8_t> bare{0};
  auto e2 = decodeErrorBody(bare);
  ASSERT_TRUE(e2);
  EXPECT_EQ(e2->code, "XX000");
  std::vector<std::uint8_t> unterminated{'M', 'x'};
  EXPECT_FALSE(decodeErrorBody(unterminated));
}

TEST(Backend, RoundTrips) {
  std::vector<std::uint8_t> out;
  encodeReadyForQuery('T', out);
  EXPECT_EQ(decodeReadyForQueryBody(Bytes(out).subspan(5)), 'T');
  out.clear();
  encodeParameterStatus("DateStyle", "ISO, MDY", out);
  auto p = decodeParameterStatusBody(Bytes(out).subspan(5));
  ASSERT_TRUE(p);
  EXPECT_EQ(p->name, "DateStyle");
  EXPECT_EQ(p->value, "ISO, MDY");
  out.clear();
  encodeBackendKey({42, 7}, out);
  auto k = decodeBackendKeyBody(Bytes(out).subspan(5));
  ASSERT_TRUE(k);
  EXPECT_EQ(k->pid, 42);
  out.clear();
  encodeAuthSasl({"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}, out);
  auto a = decodeAuthBody(Bytes(out).subspan(5));
  ASSERT_TRUE(a);
  EXPECT_EQ(a->code, 10);
  EXPECT_EQ(a->mechanisms.size(), 2u);
  out.clear();
  const std::uint8_t salt[4] = {1, 2, 3, 4};
  encodeAuthMd5(salt, out);
  a = decodeAuthBody(Bytes(out).subspan(5));
  ASSERT_TRUE(a);
  EXPECT_EQ(a->md5Salt, (std::vector<std::uint8_t>{1, 2, 3, 4}));
}

TEST(Frontend, SaslInitial) {
  std::vector<std::uint8_t> out;
  encodeSaslInitial("SCRAM-SHA-256", "n,,n=,r=x", out);
  auto s = decodeSaslInitialBody(Bytes(out).subspan(5));
  ASSERT_TRUE(s);
  EXPECT_EQ(s->mechanism, "SCRAM-SHA-256");
  ASSERT_TRUE(s->data);
  EXPECT_EQ(asString(*s->data), "n,,n=,r=x");
  // Length claims more than present.
  out[out.size() - 12] = 0x7f;
  EXPECT_FALSE(decodeSaslInitialBody(Bytes(out).subspan(5)));
}

TEST(Frontend, QueryRejectsEmbeddedNul) {
  std::vector<std::uint8_t> body{'S', 0, 'X', 0};
  EXPECT_FALSE(decodeQueryBody(body));  // B37
  body = {'S', 'E'};
  EXPECT_FALSE(decodeQueryBody(body));
}

TEST(Frontend, ExtendedQueryRoundTrips) {
  std::vector<std::uint8_t> out;
  encodeParse("s1", "SELECT $1", out);
  auto p = decodeParseBody(Bytes(out).subspan(5));
  ASSERT_TRUE(p);
  EXPECT_EQ(p->statement, "s1");
  EXPECT_EQ(p->query, "SELECT $1");
  out.clear();
  encodeBind("p1", "s1", out);
  auto b = decodeBindNames(Bytes(out).subspan(5));
  ASSERT_TRUE(b);
  EXPECT_EQ(b->portal, "p1");
  EXPECT_EQ(b->statement, "s1");
  out.clear();
  encodeExecute("", 0, out);
  EXPECT_EQ(decodeExecutePortal(Bytes(out).subspan(5)), "");
  const std::uint8_t close[] = {'S', 's', '1', 0};
  auto c = decodeCloseBody(close);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->kind, 'S');
  EXPECT_EQ(c->name, "s1");
  const std::uint8_t badClose[] = {'X', 0};
  EXPECT_FALSE(decodeCloseBody(badClose));
  // Parse whose parameter-type count runs past the end.
  const std::uint8_t badParse[] = {0, 'S', 0, 0, 5};
  EXPECT_FALSE(decodeParseBody(badParse));
}

// The proxy's own statement run inside a client's pipeline: Close of the
// portal and the statement, Parse, Bind, Execute, in that order, no Sync.
TEST(Frontend, NamedRunIsFiveFramesWithoutSync) {
  std::vector<std::uint8_t> out;
  encodeNamedRun("own", "SELECT 1", out);
  std::vector<char> types;
  Bytes rest(out);
  std::vector<Bytes> bodies;
  while (!rest.empty()) {
    auto h = parseFrontendHeader(rest, 1u << 20);
    ASSERT_EQ(h.status, FrameStatus::kOk);
    types.push_back(h.type);
    bodies.push_back(rest.subspan(5, h.bodySize()));
    rest = rest.subspan(h.total());
  }
  EXPECT_EQ(types, (std::vector<char>{'C', 'C', 'P', 'B', 'E'}));
  EXPECT_EQ(decodeCloseBody(bodies[0])->kind, 'P');
  EXPECT_EQ(decodeCloseBody(bodies[1])->kind, 'S');
  EXPECT_EQ(decodeCloseBody(bodies[1])->name, "own");
  EXPECT_EQ(decodeParseBody(bodies[2])->query, "SELECT 1");
  EXPECT_EQ(decodeBindNames(bodies[3])->statement, "own");
  EXPECT_EQ(decodeExecutePortal(bodies[4]), "own");
}

}  // namespace
}  // namespace pghandoff::protocol
