#include "protocol/scram.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include "protocol/buffer.h"
#include "protocol/crypto.h"

namespace pghandoff::protocol {
namespace {

// ---------------------------------------------------------------------------
// Helpers

std::vector<std::uint8_t> bytesOf(std::string_view s) {
  return {s.begin(), s.end()};
}

std::vector<std::uint8_t> fromBase64(std::string_view s) {
  auto d = base64Decode(s);
  EXPECT_TRUE(d.has_value()) << s;
  return d.value_or(std::vector<std::uint8_t>{});
}

std::string hexOf(const std::optional<Sha256Digest>& d) {
  return d ? hexEncode(*d) : std::string("<nullopt>");
}

std::string okText(const std::variant<std::string, AuthFailure>& r) {
  if (const auto* f = std::get_if<AuthFailure>(&r)) {
    ADD_FAILURE() << "unexpected failure " << f->sqlstate << ": " << f->message;
    return {};
  }
  return std::get<std::string>(r);
}

AuthFailure failureOf(const std::variant<std::string, AuthFailure>& r) {
  if (const auto* s = std::get_if<std::string>(&r)) {
    ADD_FAILURE() << "unexpected success: " << *s;
    return {"", ""};
  }
  return std::get<AuthFailure>(r);
}

ScramVerifier verifierFor(std::string_view password, std::string_view saltB64 = "c2FsdHNhbHRzYWx0",
                          int iterations = 4096) {
  auto v = makeScramVerifier(password, fromBase64(saltB64), iterations);
  EXPECT_TRUE(v.has_value());
  return v.value_or(ScramVerifier{});
}

// A fake tls-server-end-point hash.
std::vector<std::uint8_t> cbindData(std::uint8_t seed = 1) {
  std::vector<std::uint8_t> v(32);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<std::uint8_t>(seed + i);
  return v;
}

// RFC 7677 section 3.
constexpr std::string_view kRfcClientNonce = "rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kRfcServerNoncePart = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
constexpr std::string_view kRfcSalt = "W22ZaJ0SNY7soEsUEjb6gQ==";
constexpr std::string_view kRfcClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kRfcServerFirst =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
constexpr std::string_view kRfcClientFinal =
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
constexpr std::string_view kRfcServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

// Verifiers made by PostgreSQL 15 itself (SET password_encryption='scram-sha-256';
// CREATE ROLE u1 PASSWORD 'pencil'; CREATE ROLE u2 PASSWORD 'pässwörd';
// SELECT rolpassword FROM pg_authid).
constexpr std::string_view kPgVerifierPencil =
    "SCRAM-SHA-256$4096:Vmm5d1r18mgPhBRBzmGkmQ==$s1oZt93kwMBzBhbU5I/92cJST+ZTuDqFhR4EPf9rotQ=:"
    "Y+TM41rpTO4XqAJY2wN/Hf0nWOq+W1HKvKaHNcO4Rbk=";
constexpr std::string_view kPgVerifierUmlaut =
    "SCRAM-SHA-256$4096:3gC5clXAmnKIPJaaRM27Vw==$dcGQk7IPc/UKbi6ray+OsbdOPrNcuopCKaJo8SVLp14=:"
    "RCS+4+pgUWIEO5r6e8Jmi9QeACY1hHISP4NcQYgHFxk=";
constexpr std::string_view kUmlautPassword = "p\xc3\xa4ssw\xc3\xb6rd";  // UTF-8, NFC

struct ExchangeResult {
  std::optional<AuthFailure> serverFailure;  // where the server stopped, if it did
  std::optional<AuthFailure> clientFailure;  // where the client stopped, if it did
};

// Runs a whole exchange between our client and our server, as the proxy's two
// halves would talk through the wire.
ExchangeResult runExchange(ScramClient& client, ScramServer& server) {
  ExchangeResult out;
  auto first = client.clientFirst();
  if (auto* f = std::get_if<AuthFailure>(&first)) {
    out.clientFailure = *f;
    return out;
  }
  auto serverFirst = server.clientFirst(client.mechanism(), std::get<std::string>(first));
  if (auto* f = std::get_if<AuthFailure>(&serverFirst)) {
    out.serverFailure = *f;
    return out;
  }
  auto clientFinal = client.serverFirst(std::get<std::string>(serverFirst));
  if (auto* f = std::get_if<AuthFailure>(&clientFinal)) {
    out.clientFailure = *f;
    return out;
  }
  auto serverFinal = server.clientFinal(std::get<std::string>(clientFinal));
  if (auto* f = std::get_if<AuthFailure>(&serverFinal)) {
    out.serverFailure = *f;
    return out;
  }
  out.clientFailure = client.serverFinal(std::get<std::string>(serverFinal));
  return out;
}

bool succeeded(const ExchangeResult& r) {
  return !r.serverFailure && !r.clientFailure;
}

// ---------------------------------------------------------------------------
// Crypto helpers

TEST(ScramCrypto, Base64Rfc4648Vectors) {
  const std::pair<std::string_view, std::string_view> vectors[] = {
      {"", ""},
      {"f", "Zg=="},
      {"fo", "Zm8="},
      {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="},
      {"fooba", "Zm9vYmE="},
      {"foobar", "Zm9vYmFy"},
  };
  for (auto [plain, encoded] : vectors) {
    EXPECT_EQ(base64Encode(asBytes(plain)), encoded);
    auto decoded = base64Decode(encoded);
    ASSERT_TRUE(decoded.has_value()) << encoded;
    EXPECT_EQ(asString(*decoded), plain);
  }
  const std::vector<std::uint8_t> all = {0x00, 0xFB, 0xFF, 0xFE, 0x3E, 0x3F};
  EXPECT_EQ(base64Encode(all), "APv//j4/");
}

TEST(ScramCrypto, Base64RejectsMalformed) {
  for (std::string_view bad : {"Z", "Zg", "Zg=", "Zg=a", "Z===", "====", "Zm9v=", "Zm 9v", "Zm9v\n",
                               "Zm-v", "Zm_v", "Zg==Zg==", "=Zm9", "Z=g=", "Zh==", "Zm9="}) {
    EXPECT_FALSE(base64Decode(bad).has_value()) << bad;
  }
}

TEST(ScramCrypto, HmacSha256Rfc4231Case2) {
  EXPECT_EQ(hexOf(hmacSha256(asBytes("Jefe"), asBytes("what do ya want for nothing?"))),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(ScramCrypto, Sha256Known) {
  EXPECT_EQ(hexOf(sha256(asBytes("abc"))),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(ScramCrypto, Pbkdf2HmacSha256Known) {
  EXPECT_EQ(hexOf(pbkdf2HmacSha256(asBytes("password"), asBytes("salt"), 1)),
            "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b");
  EXPECT_EQ(hexOf(pbkdf2HmacSha256(asBytes("password"), asBytes("salt"), 4096)),
            "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a");
  EXPECT_FALSE(pbkdf2HmacSha256(asBytes("password"), asBytes("salt"), 0).has_value());
  EXPECT_FALSE(pbkdf2HmacSha256(asBytes("password"), asBytes("salt"), -1).has_value());
  // The empty password is legal in SCRAM.
  EXPECT_TRUE(pbkdf2HmacSha256(asBytes(""), asBytes("salt"), 1).has_value());
}

TEST(ScramCrypto, RandomBytesDiffer) {
  std::array<std::uint8_t, 16> a{}, b{};
  ASSERT_TRUE(randomBytes(a));
  ASSERT_TRUE(randomBytes(b));
  EXPECT_NE(a, b);
}

// ---------------------------------------------------------------------------
// RFC 7677 test vector, both roles

TEST(ScramRfc7677, ClientProducesTheTestVector) {
  ScramClient client("pencil", {}, false);
  client.setUserForTest("user");
  client.setNonceForTest(std::string(kRfcClientNonce));
  EXPECT_EQ(client.mechanism(), "SCRAM-SHA-256");
  EXPECT_EQ(okText(client.clientFirst()), kRfcClientFirst);
  EXPECT_EQ(okText(client.serverFirst(kRfcServerFirst)), kRfcClientFinal);
  EXPECT_EQ(client.serverFinal(kRfcServerFinal), std::nullopt);
}

TEST(ScramRfc7677, ServerProducesTheTestVector) {
  ScramServer server("user", verifierFor("pencil", kRfcSalt), false, {});
  server.setNonceForTest(std::string(kRfcServerNoncePart));
  EXPECT_EQ(server.mechanisms(), std::vector<std::string>{"SCRAM-SHA-256"});
  EXPECT_EQ(okText(server.clientFirst("SCRAM-SHA-256", kRfcClientFirst)), kRfcServerFirst);
  EXPECT_EQ(okText(server.clientFinal(kRfcClientFinal)), kRfcServerFinal);
}

TEST(ScramRfc7677, ServerRejectsTestVectorWithWrongPassword) {
  ScramServer server("user", verifierFor("pencil2", kRfcSalt), false, {});
  server.setNonceForTest(std::string(kRfcServerNoncePart));
  EXPECT_EQ(okText(server.clientFirst("SCRAM-SHA-256", kRfcClientFirst)), kRfcServerFirst);
  AuthFailure f = failureOf(server.clientFinal(kRfcClientFinal));
  EXPECT_STREQ(f.sqlstate, "28P01");
  EXPECT_EQ(f.message, "password authentication failed for user \"user\"");
}

TEST(ScramRfc7677, ClientRejectsForgedServerSignature) {
  ScramClient client("pencil", {}, false);
  client.setUserForTest("user");
  client.setNonceForTest(std::string(kRfcClientNonce));
  (void)okText(client.clientFirst());
  (void)okText(client.serverFirst(kRfcServerFirst));
  auto f = client.serverFinal("v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
  ASSERT_TRUE(f.has_value());
  EXPECT_STREQ(f->sqlstate, "28000");
  EXPECT_EQ(f->message, "incorrect server signature");
}

// ---------------------------------------------------------------------------
// Verifiers

TEST(ScramVerifierTest, FormatParseRoundTrip) {
  ScramVerifier v = verifierFor("secret", "AAECAwQFBgcICQoLDA0ODw==", 4096);
  std::string text = formatScramVerifier(v);
  EXPECT_EQ(text.rfind("SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$", 0), 0u) << text;
  auto parsed = parseScramVerifier(text);
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(*parsed, v);
}

TEST(ScramVerifierTest, PostgresVerifierRoundTripsAndIsReproduced) {
  for (auto [text, password] : {std::pair{kPgVerifierPencil, std::string_view("pencil")},
                                std::pair{kPgVerifierUmlaut, kUmlautPassword}}) {
    auto parsed = parseScramVerifier(text);
    ASSERT_TRUE(parsed.has_value()) << text;
    EXPECT_EQ(parsed->iterations, 4096);
    EXPECT_EQ(parsed->salt.size(), 16u);
    EXPECT_EQ(formatScramVerifier(*parsed), text);
    // Same salt and password => exactly PostgreSQL's StoredKey and ServerKey.
    auto ours = makeScramVerifier(password, parsed->salt, parsed->iterations);
    ASSERT_TRUE(ours.has_value());
    EXPECT_EQ(formatScramVerifier(*ours), text);
  }
}

TEST(ScramVerifierTest, PostgresVerifierAuthenticatesOnlyTheRightPassword) {
  auto parsed = parseScramVerifier(kPgVerifierPencil);
  ASSERT_TRUE(parsed.has_value());
  {
    ScramClient client("pencil", {}, false);
    ScramServer server("u1", *parsed, false, {});
    EXPECT_TRUE(succeeded(runExchange(client, server)));
  }
  {
    ScramClient client("Pencil", {}, false);
    ScramServer server("u1", *parsed, false, {});
    auto r = runExchange(client, server);
    ASSERT_TRUE(r.serverFailure.has_value());
    EXPECT_STREQ(r.serverFailure->sqlstate, "28P01");
    EXPECT_EQ(r.serverFailure->message, "password authentication failed for user \"u1\"");
  }
}

TEST(ScramVerifierTest, RandomSaltVerifiersDifferAndWork) {
  auto a = makeScramVerifier("pw");
  auto b = makeScramVerifier("pw");
  ASSERT_TRUE(a.has_value());
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(a->salt.size(), 16u);
  EXPECT_EQ(a->iterations, 4096);
  EXPECT_NE(a->salt, b->salt);
  EXPECT_NE(a->storedKey, b->storedKey);
  ScramClient client("pw", {}, false);
  ScramServer server("app", *a, false, {});
  EXPECT_TRUE(succeeded(runExchange(client, server)));
}

TEST(ScramVerifierTest, MakeRejectsBadParameters) {
  const std::vector<std::uint8_t> salt = {1, 2, 3};
  EXPECT_FALSE(makeScramVerifier("pw", salt, 0).has_value());
  EXPECT_FALSE(makeScramVerifier("pw", salt, kScramMaxIterations + 1).has_value());
  EXPECT_FALSE(makeScramVerifier("pw", std::vector<std::uint8_t>{}, 4096).has_value());
  EXPECT_FALSE(makeScramVerifier("pw", -5).has_value());
}

TEST(ScramVerifierTest, ParseRejectsMalformed) {
  const std::string key = "s1oZt93kwMBzBhbU5I/92cJST+ZTuDqFhR4EPf9rotQ=";
  const std::string shortKey = "s1oZt93kwMBzBhbU5I/92cJST+ZTuDqFhR4EPf9rot==";  // 31 bytes
  const std::string cases[] = {
      "",
      "SCRAM-SHA-256",
      "md596948aad3fcae80c08a35c9b5958cd89",
      "SCRAM-SHA-1$4096:c2FsdA==$" + key + ":" + key,
      "scram-sha-256$4096:c2FsdA==$" + key + ":" + key,
      "SCRAM-SHA-256$4096:c2FsdA==$" + key,              // no ServerKey
      "SCRAM-SHA-256$4096:c2FsdA==" + key + ":" + key,   // no '$'
      "SCRAM-SHA-256$4096$c2FsdA==$" + key + ":" + key,  // '$' for ':'
      "SCRAM-SHA-256$0:c2FsdA==$" + key + ":" + key,     // iterations 0
      "SCRAM-SHA-256$-1:c2FsdA==$" + key + ":" + key,
      "SCRAM-SHA-256$+4096:c2FsdA==$" + key + ":" + key,
      "SCRAM-SHA-256$04096:c2FsdA==$" + key + ":" + key,
      "SCRAM-SHA-256$4096x:c2FsdA==$" + key + ":" + key,
      "SCRAM-SHA-256$99999999999999999999:c2FsdA==$" + key + ":" + key,  // overflow
      "SCRAM-SHA-256$10000001:c2FsdA==$" + key + ":" + key,              // above the cap
      "SCRAM-SHA-256$:c2FsdA==$" + key + ":" + key,
      "SCRAM-SHA-256$4096:$" + key + ":" + key,         // empty salt
      "SCRAM-SHA-256$4096:c2FsdA=$" + key + ":" + key,  // bad base64 salt
      "SCRAM-SHA-256$4096:c2FsdA==$" + shortKey + ":" + key,
      "SCRAM-SHA-256$4096:c2FsdA==$" + key + ":" + shortKey,
      "SCRAM-SHA-256$4096:c2FsdA==$" + key + ":" + key + "AAAA",
      "SCRAM-SHA-256$4096:c2FsdA==$" + key + ":" + key + ":" + key,
      "SCRAM-SHA-256$4096:c2FsdA==$" + key + ":",
  };
  for (const auto& c : cases) EXPECT_FALSE(parseScramVerifier(c).has_value()) << c;
  EXPECT_TRUE(parseScramVerifier("SCRAM-SHA-256$4096:c2FsdA==$" + key + ":" + key).has_value());
}

// ---------------------------------------------------------------------------
// Round trips

TEST(ScramRoundTrip, PlaintextWithoutChannelBinding) {
  ScramClient client("correct horse", {}, false);
  ScramServer server("app", verifierFor("correct horse"), false, {});
  EXPECT_EQ(client.mechanism(), "SCRAM-SHA-256");
  EXPECT_TRUE(succeeded(runExchange(client, server)));
}

TEST(ScramRoundTrip, TlsWithChannelBinding) {
  ScramServer server("app", verifierFor("pw"), false, cbindData());
  EXPECT_EQ(server.mechanisms(), (std::vector<std::string>{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}));
  ScramClient client("pw", cbindData(), true);
  EXPECT_EQ(client.mechanism(), "SCRAM-SHA-256-PLUS");
  EXPECT_TRUE(succeeded(runExchange(client, server)));
}

TEST(ScramRoundTrip, TlsClientWithoutChannelBindingSupport) {
  // A client that cannot bind (no hash, or libpq channel_binding=disable) sends "n".
  ScramServer server("app", verifierFor("pw"), false, cbindData());
  ScramClient client("pw", {}, true);
  EXPECT_EQ(client.mechanism(), "SCRAM-SHA-256");
  EXPECT_TRUE(succeeded(runExchange(client, server)));
}

TEST(ScramRoundTrip, ClientSaysYWhenPlaintextServerDoesNotOfferPlus) {
  // The client is on TLS but the server (not on TLS, from its view: e.g. a TLS
  // terminator in between) does not advertise PLUS: "y" is accepted.
  ScramServer server("app", verifierFor("pw"), false, {});
  ScramClient client("pw", cbindData(), false);
  auto first = okText(client.clientFirst());
  EXPECT_EQ(first.substr(0, 3), "y,,");
  auto sf = okText(server.clientFirst(client.mechanism(), first));
  auto cf = okText(client.serverFirst(sf));
  EXPECT_EQ(cf.substr(0, 7), "c=eSws,");
  auto fin = okText(server.clientFinal(cf));
  EXPECT_EQ(client.serverFinal(fin), std::nullopt);
}

TEST(ScramRoundTrip, StrippedPlusIsDetectedAsDowngrade) {
  // B29 end to end: the proxy is on TLS and offers PLUS, but a man in the middle
  // removed PLUS from AuthenticationSASL, so the client answers "y".
  ScramServer server("app", verifierFor("pw"), false, cbindData());
  ScramClient client("pw", cbindData(), false);
  auto r = runExchange(client, server);
  ASSERT_TRUE(r.serverFailure.has_value());
  EXPECT_STREQ(r.serverFailure->sqlstate, "28000");
  EXPECT_EQ(r.serverFailure->message, "SCRAM channel binding negotiation error");
}

TEST(ScramRoundTrip, DifferentCertificateFailsChannelBinding) {
  // B30 end to end: the client saw another certificate (a TLS man in the middle).
  ScramServer server("app", verifierFor("pw"), false, cbindData(1));
  ScramClient client("pw", cbindData(2), true);
  auto r = runExchange(client, server);
  ASSERT_TRUE(r.serverFailure.has_value());
  EXPECT_STREQ(r.serverFailure->sqlstate, "28000");
  EXPECT_EQ(r.serverFailure->message, "SCRAM channel binding check failed");
}

TEST(ScramRoundTrip, WrongPasswordFails) {
  ScramClient client("wrong", {}, false);
  ScramServer server("app", verifierFor("pw"), false, {});
  auto r = runExchange(client, server);
  ASSERT_TRUE(r.serverFailure.has_value());
  EXPECT_STREQ(r.serverFailure->sqlstate, "28P01");
  EXPECT_EQ(r.serverFailure->message, "password authentication failed for user \"app\"");
}

TEST(ScramRoundTrip, EmptyAndLongPasswords) {
  for (const std::string& pw : {std::string(), std::string(1000, 'x'), std::string("a,b=c\"d")}) {
    ScramClient client(pw, {}, false);
    ScramServer server("app", verifierFor(pw), false, {});
    EXPECT_TRUE(succeeded(runExchange(client, server))) << pw.size();
  }
}

TEST(ScramRoundTrip, ServerIgnoresScramUserName) {
  // PostgreSQL uses the startup packet's user; "n=" may be anything.
  ScramServer server("app", verifierFor("pw"), false, {});
  server.setNonceForTest("SN");
  auto sf = okText(server.clientFirst("SCRAM-SHA-256", "n,,n=someone-else,r=CN"));
  EXPECT_EQ(sf, "r=CNSN,s=c2FsdHNhbHRzYWx0,i=4096");
}

TEST(ScramRoundTrip, ServerIgnoresUnknownExtensions) {
  // RFC 5802: unrecognised extension attributes MUST be ignored.
  ScramServer server("app", verifierFor("pw"), false, {});
  server.setNonceForTest("SN");
  EXPECT_EQ(okText(server.clientFirst("SCRAM-SHA-256", "n,,n=,r=CN,x=ext,y=")),
            "r=CNSN,s=c2FsdHNhbHRzYWx0,i=4096");
}

TEST(ScramRoundTrip, DefaultNoncesAreRandomAndPrintable) {
  ScramClient a("pw", {}, false), b("pw", {}, false);
  std::string fa = okText(a.clientFirst());
  std::string fb = okText(b.clientFirst());
  ASSERT_EQ(fa.substr(0, 8), "n,,n=,r=");
  EXPECT_EQ(fa.size(), 8u + 24u);  // 18 random bytes, base64
  EXPECT_NE(fa, fb);
  ScramServer server("app", verifierFor("pw"), false, {});
  std::string sf = okText(server.clientFirst("SCRAM-SHA-256", fa));
  // r=<client 24><server 24>,
  EXPECT_EQ(sf.substr(0, 2 + 24), "r=" + fa.substr(8));
  EXPECT_EQ(sf.find(','), 2u + 48u);
}

// ---------------------------------------------------------------------------
// Mock users (B26)

TEST(ScramMock, UnknownUserFailsLikeWrongPassword) {
  const std::vector<std::uint8_t> secret = bytesOf("process-secret-0123456789abcdef");
  // Known user "alice", wrong password.
  ScramClient c1("guess", {}, false);
  ScramServer known("alice", verifierFor("real"), false, {});
  auto r1 = runExchange(c1, known);
  // Unknown user "alice": mock verifier.
  ScramClient c2("guess", {}, false);
  ScramServer mock("alice", mockScramVerifier("alice", secret), true, {});
  auto r2 = runExchange(c2, mock);
  ASSERT_TRUE(r1.serverFailure.has_value());
  ASSERT_TRUE(r2.serverFailure.has_value());
  EXPECT_STREQ(r1.serverFailure->sqlstate, r2.serverFailure->sqlstate);
  EXPECT_EQ(r1.serverFailure->message, r2.serverFailure->message);
  EXPECT_STREQ(r2.serverFailure->sqlstate, "28P01");
  EXPECT_EQ(r2.serverFailure->message, "password authentication failed for user \"alice\"");
  EXPECT_FALSE(r2.clientFailure.has_value());  // it walked the whole exchange
}

TEST(ScramMock, MockFailsEvenWithTheRightProof) {
  ScramClient client("pw", {}, false);
  ScramServer server("ghost", verifierFor("pw"), true, {});
  auto r = runExchange(client, server);
  ASSERT_TRUE(r.serverFailure.has_value());
  EXPECT_STREQ(r.serverFailure->sqlstate, "28P01");
  EXPECT_EQ(r.serverFailure->message, "password authentication failed for user \"ghost\"");
}

TEST(ScramMock, SaltIsDeterministicPerUserAndSecret) {
  const auto s1 = bytesOf("secret-one");
  const auto s2 = bytesOf("secret-two");
  ScramVerifier a = mockScramVerifier("ghost", s1);
  EXPECT_EQ(a, mockScramVerifier("ghost", s1));
  EXPECT_EQ(a.iterations, 4096);
  EXPECT_EQ(a.salt.size(), 16u);
  EXPECT_EQ(a.storedKey.size(), 32u);
  EXPECT_EQ(a.serverKey.size(), 32u);
  EXPECT_NE(a.salt, mockScramVerifier("ghost2", s1).salt);
  EXPECT_NE(a.salt, mockScramVerifier("ghost", s2).salt);
  EXPECT_EQ(mockScramVerifier("ghost", s1, 10000).iterations, 10000);
  // PostgreSQL's scram_mock_salt(): SHA-256(user || secret), first 16 bytes.
  auto digest = sha256(asBytes("ghostsecret-one"));
  ASSERT_TRUE(digest.has_value());
  EXPECT_EQ(a.salt, std::vector<std::uint8_t>(digest->begin(), digest->begin() + 16));
  // The server-first-message of a mock exchange looks like a real one.
  ScramServer server("ghost", a, true, {});
  server.setNonceForTest("SN");
  EXPECT_EQ(okText(server.clientFirst("SCRAM-SHA-256", "n,,n=,r=CN")),
            "r=CNSN,s=" + base64Encode(a.salt) + ",i=4096");
}

TEST(ScramMock, UnusableVerifierAdmitsNobody) {
  ScramVerifier broken = verifierFor("pw");
  broken.storedKey.resize(31);
  ScramClient client("pw", {}, false);
  ScramServer server("app", broken, false, {});
  auto r = runExchange(client, server);
  ASSERT_TRUE(r.serverFailure.has_value());
  EXPECT_STREQ(r.serverFailure->sqlstate, "28P01");
}

// ---------------------------------------------------------------------------
// Server: bad input table (B27-B31, B28 malformed)

constexpr std::string_view kZeroProof =
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";  // 32 zero bytes

std::string cbindAttr(const std::vector<std::uint8_t>& cb) {
  std::string input = "p=tls-server-end-point,,";
  input.append(asString(cb));
  return base64Encode(asBytes(input));
}

struct ServerCase {
  const char* name;
  bool tls;
  std::string mechanism;
  std::string first;
  std::optional<std::string> final;  // when set, `first` must succeed
  std::string sqlstate;
  std::string message;
};

std::vector<ServerCase> serverCases() {
  const std::string plus = "SCRAM-SHA-256-PLUS";
  const std::string plain = "SCRAM-SHA-256";
  const std::string okFirst = "n,,n=,r=CN";
  const std::string okPlusFirst = "p=tls-server-end-point,,n=,r=CN";
  const std::string proof = "p=" + std::string(kZeroProof);
  const std::string malformed = "malformed SCRAM message";
  const std::string badMech = "client selected an invalid SASL authentication mechanism";
  const std::string wrongPassword = "password authentication failed for user \"app\"";
  return {
      // B27: unknown mechanisms.
      {"unknown mechanism", false, "SCRAM-SHA-1", okFirst, {}, "08P01", badMech},
      {"empty mechanism", false, "", okFirst, {}, "08P01", badMech},
      {"mechanism case", false, "scram-sha-256", okFirst, {}, "08P01", badMech},
      {"mechanism prefix", false, "SCRAM-SHA-256X", okFirst, {}, "08P01", badMech},
      // B31: PLUS or 'p' over plaintext.
      {"PLUS over plaintext", false, plus, okPlusFirst, {}, "08P01", badMech},
      {"p flag over plaintext", false, plain, okPlusFirst, {}, "08P01", malformed},
      // B29: 'y' when we advertised PLUS.
      {"y over TLS",
       true,
       plain,
       "y,,n=,r=CN",
       {},
       "28000",
       "SCRAM channel binding negotiation error"},
      // PLUS selected but the message says no binding.
      {"PLUS with n", true, plus, okFirst, {}, "08P01", malformed},
      {"PLUS with y", true, plus, "y,,n=,r=CN", {}, "08P01", malformed},
      {"p flag with plain over TLS", true, plain, okPlusFirst, {}, "08P01", malformed},
      {"other cbind type",
       true,
       plus,
       "p=tls-unique,,n=,r=CN",
       {},
       "08P01",
       "unsupported SCRAM channel-binding type"},
      {"empty cbind type",
       true,
       plus,
       "p=,,n=,r=CN",
       {},
       "08P01",
       "unsupported SCRAM channel-binding type"},
      {"p without =", true, plus, "p,,n=,r=CN", {}, "08P01", malformed},
      {"p without comma", true, plus, "p=tls-server-end-point", {}, "08P01", malformed},
      // gs2 header.
      {"authzid",
       false,
       plain,
       "n,a=bob,n=,r=CN",
       {},
       "0A000",
       "client uses authorization identity, but it is not supported"},
      {"bad flag", false, plain, "x,,n=,r=CN", {}, "08P01", malformed},
      {"flag only", false, plain, "n", {}, "08P01", malformed},
      {"one comma", false, plain, "n,", {}, "08P01", malformed},
      {"junk in authzid slot", false, plain, "n,n=,r=CN", {}, "08P01", malformed},
      {"empty message", false, plain, "", {}, "08P01", malformed},
      // client-first-message-bare.
      {"reserved m= extension",
       false,
       plain,
       "n,,m=ext,n=,r=CN",
       {},
       "0A000",
       "client requires an unsupported SCRAM extension"},
      {"header only", false, plain, "n,,", {}, "08P01", malformed},
      {"missing n", false, plain, "n,,r=CN", {}, "08P01", malformed},
      {"missing r", false, plain, "n,,n=", {}, "08P01", malformed},
      {"missing r after comma", false, plain, "n,,n=,", {}, "08P01", malformed},
      {"empty nonce", false, plain, "n,,n=,r=", {}, "08P01", malformed},
      {"r without =", false, plain, "n,,n=,r", {}, "08P01", malformed},
      {"space in nonce",
       false,
       plain,
       "n,,n=,r=C N",
       {},
       "08P01",
       "non-printable characters in SCRAM nonce"},
      {"control char in nonce",
       false,
       plain,
       "n,,n=,r=C\x01N",
       {},
       "08P01",
       "non-printable characters in SCRAM nonce"},
      {"8-bit char in nonce",
       false,
       plain,
       "n,,n=,r=C\xc3\xa9N",
       {},
       "08P01",
       "non-printable characters in SCRAM nonce"},
      {"NUL in message", false, plain, std::string("n,,n=,r=C\0N", 11), {}, "08P01", malformed},
      {"duplicate r", false, plain, "n,,n=,r=CN,r=XX", {}, "08P01", malformed},
      {"duplicate n", false, plain, "n,,n=,r=CN,n=x", {}, "08P01", malformed},
      {"m after nonce", false, plain, "n,,n=,r=CN,m=x", {}, "08P01", malformed},
      {"trailing comma", false, plain, "n,,n=,r=CN,", {}, "08P01", malformed},
      {"bad extension", false, plain, "n,,n=,r=CN,1=x", {}, "08P01", malformed},
      {"extension without =", false, plain, "n,,n=,r=CN,xyz", {}, "08P01", malformed},
      {"huge nonce", false, plain, "n,,n=,r=" + std::string(2000, 'a'), {}, "08P01", malformed},
      {"huge message",
       false,
       plain,
       "n,,n=" + std::string(1 << 20, 'u') + ",r=CN",
       {},
       "08P01",
       malformed},
      // client-final-message.
      {"final: empty", false, plain, okFirst, "", "08P01", malformed},
      {"final: missing c", false, plain, okFirst, "r=CNSN," + proof, "08P01", malformed},
      {"final: c not first", false, plain, okFirst, "r=CNSN,c=biws," + proof, "08P01", malformed},
      {"final: c=eSws after n", false, plain, okFirst, "c=eSws,r=CNSN," + proof, "08P01",
       "unexpected SCRAM channel-binding attribute in client-final-message"},
      {"final: c=biws after y", false, plain, "y,,n=,r=CN", "c=biws,r=CNSN," + proof, "08P01",
       "unexpected SCRAM channel-binding attribute in client-final-message"},
      {"final: c garbage", false, plain, okFirst, "c=!!,r=CNSN," + proof, "08P01",
       "unexpected SCRAM channel-binding attribute in client-final-message"},
      {"final: nonce not extended", false, plain, okFirst, "c=biws,r=CN," + proof, "08P01",
       malformed},
      {"final: nonce too long", false, plain, okFirst, "c=biws,r=CNSNX," + proof, "08P01",
       malformed},
      {"final: nonce other client", false, plain, okFirst, "c=biws,r=XXSN," + proof, "08P01",
       malformed},
      {"final: nonce truncated", false, plain, okFirst, "c=biws,r=CNS," + proof, "08P01",
       malformed},
      {"final: missing r", false, plain, okFirst, "c=biws," + proof, "08P01", malformed},
      {"final: duplicate r", false, plain, okFirst, "c=biws,r=CNSN,r=CNSN," + proof, "08P01",
       malformed},
      {"final: duplicate c", false, plain, okFirst, "c=biws,r=CNSN,c=biws," + proof, "08P01",
       malformed},
      {"final: missing proof", false, plain, okFirst, "c=biws,r=CNSN", "08P01", malformed},
      {"final: trailing comma", false, plain, okFirst, "c=biws,r=CNSN,", "08P01", malformed},
      {"final: proof not last", false, plain, okFirst, "c=biws,r=CNSN," + proof + ",x=y", "08P01",
       malformed},
      {"final: bad base64 proof", false, plain, okFirst, "c=biws,r=CNSN,p=!!!!", "08P01",
       malformed},
      {"final: short proof", false, plain, okFirst,
       "c=biws,r=CNSN,p=AAAAAAAAAAAAAAAAAAAAAA==", "08P01", malformed},
      {"final: long proof", false, plain, okFirst,
       "c=biws,r=CNSN,p=" + base64Encode(std::vector<std::uint8_t>(33, 0)), "08P01", malformed},
      {"final: empty proof", false, plain, okFirst, "c=biws,r=CNSN,p=", "08P01", malformed},
      {"final: NUL", false, plain, okFirst, std::string("c=biws,r=CNSN\0,", 15) + proof, "08P01",
       malformed},
      {"final: huge", false, plain, okFirst,
       "c=biws,r=CNSN,x=" + std::string(5000, 'x') + "," + proof, "08P01", malformed},
      {"final: wrong proof", false, plain, okFirst, "c=biws,r=CNSN," + proof, "28P01",
       wrongPassword},
      {"final: extension before proof", false, plain, okFirst, "c=biws,r=CNSN,x=1," + proof,
       "28P01", wrongPassword},
      // B30: channel binding data.
      {"final: wrong cbind data", true, plus, okPlusFirst,
       "c=" + cbindAttr(cbindData(9)) + ",r=CNSN," + proof, "28000",
       "SCRAM channel binding check failed"},
      {"final: biws with PLUS", true, plus, okPlusFirst, "c=biws,r=CNSN," + proof, "28000",
       "SCRAM channel binding check failed"},
      {"final: cbind without data", true, plus, okPlusFirst,
       "c=" + base64Encode(asBytes("p=tls-server-end-point,,")) + ",r=CNSN," + proof, "28000",
       "SCRAM channel binding check failed"},
      {"final: right cbind, wrong proof", true, plus, okPlusFirst,
       "c=" + cbindAttr(cbindData()) + ",r=CNSN," + proof, "28P01", wrongPassword},
      {"final: n over TLS, wrong proof", true, plain, okFirst, "c=biws,r=CNSN," + proof, "28P01",
       wrongPassword},
  };
}

TEST(ScramServerTest, BadInputTable) {
  for (const ServerCase& c : serverCases()) {
    SCOPED_TRACE(c.name);
    ScramServer server("app", verifierFor("pw"), false,
                       c.tls ? cbindData() : std::vector<std::uint8_t>{});
    server.setNonceForTest("SN");
    auto first = server.clientFirst(c.mechanism, c.first);
    std::variant<std::string, AuthFailure> result = first;
    if (c.final) {
      ASSERT_TRUE(std::holds_alternative<std::string>(first))
          << std::get<AuthFailure>(first).message;
      result = server.clientFinal(*c.final);
    }
    AuthFailure f = failureOf(result);
    EXPECT_EQ(std::string(f.sqlstate), c.sqlstate);
    EXPECT_EQ(f.message, c.message);
    // A failed exchange stays failed.
    AuthFailure again = failureOf(server.clientFinal("c=biws,r=CNSN,p=" + std::string(kZeroProof)));
    EXPECT_STREQ(again.sqlstate, "08P01");
  }
}

TEST(ScramServerTest, OutOfOrderCallsFail) {
  ScramServer server("app", verifierFor("pw"), false, {});
  AuthFailure f = failureOf(server.clientFinal("c=biws,r=CNSN,p=" + std::string(kZeroProof)));
  EXPECT_STREQ(f.sqlstate, "08P01");
  EXPECT_EQ(f.message, "malformed SCRAM message");

  ScramServer twice("app", verifierFor("pw"), false, {});
  (void)okText(twice.clientFirst("SCRAM-SHA-256", "n,,n=,r=CN"));
  AuthFailure g = failureOf(twice.clientFirst("SCRAM-SHA-256", "n,,n=,r=CN"));
  EXPECT_STREQ(g.sqlstate, "08P01");
}

TEST(ScramServerTest, SecretsNeverInFailures) {
  // The password and keys must not leak into any error text.
  const std::string password = "canary-password-7f3a";
  ScramVerifier v = verifierFor(password);
  const std::string keyB64 = base64Encode(v.storedKey);
  for (const ServerCase& c : serverCases()) {
    ScramServer server("app", v, false, c.tls ? cbindData() : std::vector<std::uint8_t>{});
    server.setNonceForTest("SN");
    auto first = server.clientFirst(c.mechanism, c.first);
    auto result = c.final && std::holds_alternative<std::string>(first)
                      ? server.clientFinal(*c.final)
                      : first;
    if (auto* f = std::get_if<AuthFailure>(&result)) {
      EXPECT_EQ(f->message.find(password), std::string::npos);
      EXPECT_EQ(f->message.find(keyB64), std::string::npos);
    }
  }
}

// ---------------------------------------------------------------------------
// Client: bad server input (B49)

struct ClientCase {
  const char* name;
  std::string serverFirst;
  std::optional<std::string> serverFinal;  // when set, serverFirst must succeed
  std::string sqlstate;
  std::string message;
};

TEST(ScramClientTest, BadServerInputTable) {
  const std::string okFirst = "r=CNSN,s=c2FsdA==,i=4096";
  const std::string nonceMismatch = "invalid SCRAM response (nonce mismatch)";
  const std::string badSalt = "malformed SCRAM message (invalid salt)";
  const std::string badIter = "malformed SCRAM message (invalid iteration count)";
  const std::vector<ClientCase> cases = {
      {"empty", "", {}, "08P01", "malformed SCRAM message (server-first-message)"},
      {"NUL",
       std::string("r=CNSN,s=c2FsdA==,i=4\0", 22),
       {},
       "08P01",
       "malformed SCRAM message (server-first-message)"},
      {"huge",
       "r=CN" + std::string(5000, 'x') + ",s=c2FsdA==,i=4096",
       {},
       "08P01",
       "malformed SCRAM message (server-first-message)"},
      {"nonce not extended", "r=CN,s=c2FsdA==,i=4096", {}, "08P01", nonceMismatch},
      {"nonce other client", "r=XXSN,s=c2FsdA==,i=4096", {}, "08P01", nonceMismatch},
      {"nonce prefix only", "r=C,s=c2FsdA==,i=4096", {}, "08P01", nonceMismatch},
      {"nonce non-printable", "r=CNS N,s=c2FsdA==,i=4096", {}, "08P01", nonceMismatch},
      {"missing nonce", "s=c2FsdA==,i=4096", {}, "08P01", nonceMismatch},
      {"reserved m=", "m=x,r=CNSN,s=c2FsdA==,i=4096", {}, "08P01", nonceMismatch},
      {"missing salt", "r=CNSN,i=4096", {}, "08P01", badSalt},
      {"empty salt", "r=CNSN,s=,i=4096", {}, "08P01", badSalt},
      {"bad base64 salt", "r=CNSN,s=c2FsdA=,i=4096", {}, "08P01", badSalt},
      {"missing iterations", "r=CNSN,s=c2FsdA==", {}, "08P01", badIter},
      {"zero iterations", "r=CNSN,s=c2FsdA==,i=0", {}, "08P01", badIter},
      {"negative iterations", "r=CNSN,s=c2FsdA==,i=-1", {}, "08P01", badIter},
      {"plus sign", "r=CNSN,s=c2FsdA==,i=+4096", {}, "08P01", badIter},
      {"hex iterations", "r=CNSN,s=c2FsdA==,i=0x1000", {}, "08P01", badIter},
      {"iterations with junk", "r=CNSN,s=c2FsdA==,i=4096x", {}, "08P01", badIter},
      {"iterations above cap", "r=CNSN,s=c2FsdA==,i=10000001", {}, "08P01", badIter},
      {"iterations overflow", "r=CNSN,s=c2FsdA==,i=99999999999999999999999", {}, "08P01", badIter},
      {"empty iterations", "r=CNSN,s=c2FsdA==,i=", {}, "08P01", badIter},
      {"garbage at end",
       "r=CNSN,s=c2FsdA==,i=4096,x=y",
       {},
       "08P01",
       "malformed SCRAM message (garbage at end of server-first-message)"},
      {"trailing comma",
       "r=CNSN,s=c2FsdA==,i=4096,",
       {},
       "08P01",
       "malformed SCRAM message (garbage at end of server-first-message)"},
      // server-final-message.
      {"final: empty", okFirst, "", "08P01", "malformed SCRAM message (server-final-message)"},
      {"final: error", okFirst, "e=invalid-proof", "28000",
       "error received from server in SCRAM exchange: invalid-proof"},
      {"final: error sanitised", okFirst, "e=bad\x01\xff", "28000",
       "error received from server in SCRAM exchange: bad??"},
      {"final: not v", okFirst, "x=abc", "08P01", "malformed SCRAM message (server-final-message)"},
      {"final: garbage after v", okFirst, "v=" + std::string(kZeroProof) + ",x=y", "08P01",
       "malformed SCRAM message (server-final-message)"},
      {"final: bad base64", okFirst, "v=!!!!", "08P01",
       "malformed SCRAM message (invalid server signature)"},
      {"final: short signature", okFirst, "v=AAAA", "08P01",
       "malformed SCRAM message (invalid server signature)"},
      {"final: huge", okFirst, "v=" + std::string(4000, 'A'), "08P01",
       "malformed SCRAM message (server-final-message)"},
      {"final: wrong signature", okFirst, "v=" + std::string(kZeroProof), "28000",
       "incorrect server signature"},
  };
  for (const ClientCase& c : cases) {
    SCOPED_TRACE(c.name);
    ScramClient client("pw", {}, false);
    client.setNonceForTest("CN");
    EXPECT_EQ(okText(client.clientFirst()), "n,,n=,r=CN");
    std::optional<AuthFailure> f;
    auto final = client.serverFirst(c.serverFirst);
    if (c.serverFinal) {
      ASSERT_TRUE(std::holds_alternative<std::string>(final))
          << std::get<AuthFailure>(final).message;
      f = client.serverFinal(*c.serverFinal);
    } else {
      f = failureOf(final);
    }
    ASSERT_TRUE(f.has_value());
    EXPECT_EQ(std::string(f->sqlstate), c.sqlstate);
    EXPECT_EQ(f->message, c.message);
    // A failed exchange stays failed.
    EXPECT_TRUE(client.serverFinal("v=" + std::string(kZeroProof)).has_value());
  }
}

TEST(ScramClientTest, Gs2HeaderAndMechanism) {
  {
    ScramClient c("pw", {}, false);
    c.setNonceForTest("CN");
    EXPECT_EQ(c.mechanism(), "SCRAM-SHA-256");
    EXPECT_EQ(okText(c.clientFirst()), "n,,n=,r=CN");
  }
  {
    ScramClient c("pw", {}, true);  // no binding data: cannot bind even if offered
    c.setNonceForTest("CN");
    EXPECT_EQ(c.mechanism(), "SCRAM-SHA-256");
    EXPECT_EQ(okText(c.clientFirst()), "n,,n=,r=CN");
  }
  {
    ScramClient c("pw", cbindData(), false);
    c.setNonceForTest("CN");
    EXPECT_EQ(c.mechanism(), "SCRAM-SHA-256");
    EXPECT_EQ(okText(c.clientFirst()), "y,,n=,r=CN");
  }
  {
    ScramClient c("pw", cbindData(), true);
    c.setNonceForTest("CN");
    EXPECT_EQ(c.mechanism(), "SCRAM-SHA-256-PLUS");
    EXPECT_EQ(okText(c.clientFirst()), "p=tls-server-end-point,,n=,r=CN");
    std::string final = okText(c.serverFirst("r=CNSN,s=c2FsdA==,i=1"));
    EXPECT_EQ(final.substr(0, final.find(',')), "c=" + cbindAttr(cbindData()));
  }
}

TEST(ScramClientTest, OutOfOrderCallsFail) {
  ScramClient c("pw", {}, false);
  EXPECT_TRUE(std::holds_alternative<AuthFailure>(c.serverFirst("r=CNSN,s=c2FsdA==,i=1")));
  ScramClient d("pw", {}, false);
  EXPECT_TRUE(d.serverFinal("v=" + std::string(kZeroProof)).has_value());
  ScramClient e("pw", {}, false);
  (void)okText(e.clientFirst());
  EXPECT_TRUE(std::holds_alternative<AuthFailure>(e.clientFirst()));
}

// ---------------------------------------------------------------------------
// Robustness: random mutations of valid messages never crash or overread
// (run under ASan/UBSan in CI). Seeded.

TEST(ScramFuzzLite, MutatedMessagesNeverCrash) {
  std::mt19937 rng(20240611);
  const std::vector<std::string> firsts = {std::string(kRfcClientFirst),
                                           "p=tls-server-end-point,,n=,r=CN", "y,,n=,r=CN"};
  const std::vector<std::string> finals = {std::string(kRfcClientFinal)};
  static constexpr char kAlphabet[] = "=,abcnrpvmy0+/\0\xff";
  const std::string alphabet(kAlphabet, sizeof(kAlphabet) - 1);
  auto mutate = [&](std::string s) {
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < edits; ++i) {
      std::size_t pos = s.empty() ? 0 : rng() % (s.size() + 1);
      char ch = alphabet[rng() % alphabet.size()];
      switch (rng() % 3) {
        case 0:
          s.insert(s.begin() + static_cast<long>(pos), ch);
          break;
        case 1:
          if (pos < s.size()) s.erase(pos, 1);
          break;
        default:
          if (pos < s.size()) s[pos] = ch;
          break;
      }
    }
    return s;
  };
  const ScramVerifier v = verifierFor("pencil", kRfcSalt);
  // The RFC server-first-message with i=1 so that the client side stays cheap.
  const std::string cheapServerFirst =
      "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1";
  int acceptedMutations = 0;
  for (int i = 0; i < 3000; ++i) {
    bool tls = (i % 2) == 0;
    ScramServer server("user", v, false, tls ? cbindData() : std::vector<std::uint8_t>{});
    server.setNonceForTest(std::string(kRfcServerNoncePart));
    const std::string& base = firsts[static_cast<std::size_t>(i) % firsts.size()];
    auto r = server.clientFirst(tls && base[0] == 'p' ? "SCRAM-SHA-256-PLUS" : "SCRAM-SHA-256",
                                (i % 3 == 0) ? base : mutate(base));
    if (std::holds_alternative<std::string>(r)) {
      std::string final = mutate(finals[0]);
      auto f = server.clientFinal(final);
      if (std::holds_alternative<std::string>(f) && final != finals[0]) ++acceptedMutations;
    }
    ScramClient client("pencil", {}, false);
    client.setNonceForTest(std::string(kRfcClientNonce));
    (void)client.clientFirst();
    auto cf = client.serverFirst(mutate(cheapServerFirst));
    if (std::holds_alternative<std::string>(cf)) {
      (void)client.serverFinal(mutate(std::string(kRfcServerFinal)));
    }
  }
  // A mutated proof never authenticates.
  EXPECT_EQ(acceptedMutations, 0);
}

// ---------------------------------------------------------------------------
// tls-server-end-point (RFC 5929)

struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct CertFree {
  void operator()(X509* x) const { X509_free(x); }
};

// A self-signed certificate signed with `md` (nullptr for Ed25519), as DER.
std::vector<std::uint8_t> makeCert(const char* keyType, const EVP_MD* md) {
  std::unique_ptr<EVP_PKEY, KeyFree> key(std::string_view(keyType) == "EC"
                                             ? EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256")
                                             : EVP_PKEY_Q_keygen(nullptr, nullptr, keyType));
  if (!key) return {};
  std::unique_ptr<X509, CertFree> cert(X509_new());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600);
  X509_set_pubkey(cert.get(), key.get());
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("pghandoff-test"), -1, -1, 0);
  X509_set_issuer_name(cert.get(), name);
  if (X509_sign(cert.get(), key.get(), md) == 0) return {};
  unsigned char* der = nullptr;
  int len = i2d_X509(cert.get(), &der);
  if (len <= 0) return {};
  std::vector<std::uint8_t> out(der, der + len);
  OPENSSL_free(der);
  return out;
}

std::vector<std::uint8_t> digestOf(const std::vector<std::uint8_t>& data, const EVP_MD* md) {
  std::vector<std::uint8_t> out(EVP_MAX_MD_SIZE);
  unsigned int len = 0;
  EXPECT_EQ(EVP_Digest(data.data(), data.size(), out.data(), &len, md, nullptr), 1);
  out.resize(len);
  return out;
}

TEST(ScramTlsServerEndPoint, UsesTheSignatureDigest) {
  auto sha256Cert = makeCert("EC", EVP_sha256());
  ASSERT_FALSE(sha256Cert.empty());
  auto h = tlsServerEndPoint(sha256Cert);
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(h->size(), 32u);
  EXPECT_EQ(*h, digestOf(sha256Cert, EVP_sha256()));

  auto sha384Cert = makeCert("EC", EVP_sha384());
  ASSERT_FALSE(sha384Cert.empty());
  auto h384 = tlsServerEndPoint(sha384Cert);
  ASSERT_TRUE(h384.has_value());
  EXPECT_EQ(h384->size(), 48u);
  EXPECT_EQ(*h384, digestOf(sha384Cert, EVP_sha384()));
}

TEST(ScramTlsServerEndPoint, Sha1UpgradedToSha256) {
  auto sha1Cert = makeCert("EC", EVP_sha1());
  if (sha1Cert.empty()) GTEST_SKIP() << "SHA-1 signing disabled in this OpenSSL";
  auto h = tlsServerEndPoint(sha1Cert);
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(*h, digestOf(sha1Cert, EVP_sha256()));
}

TEST(ScramTlsServerEndPoint, NoDigestOrGarbage) {
  auto edCert = makeCert("ED25519", nullptr);
  ASSERT_FALSE(edCert.empty());
  EXPECT_FALSE(tlsServerEndPoint(edCert).has_value());
  EXPECT_FALSE(tlsServerEndPoint(std::vector<std::uint8_t>{}).has_value());
  EXPECT_FALSE(tlsServerEndPoint(bytesOf("not a certificate")).has_value());
  auto truncated = makeCert("EC", EVP_sha256());
  truncated.resize(truncated.size() / 2);
  EXPECT_FALSE(tlsServerEndPoint(truncated).has_value());
}

}  // namespace
}  // namespace pghandoff::protocol
