// libFuzzer target: the server side of SCRAM-SHA-256 (protocol/scram.h,
// ScramServer), i.e. what an untrusted client sends in SASLInitialResponse and
// SASLResponse (RELIABILITY B27-B31).
//
// Input layout: byte 0 holds flags (bit 0: the client connection is TLS, so
// channel binding data is given and SCRAM-SHA-256-PLUS offered; bit 1: mock
// exchange for an unknown user). Bytes 1.. are split at every 0xff byte (never
// part of a valid SCRAM message) into: the SASL mechanism name, the
// client-first-message, the client-final-message, then extra messages that are
// offered alternately to clientFirst() and clientFinal() after the exchange
// and must all fail.
//
// The verifier is fixed: password "pencil", salt and iteration count of the
// RFC 7677 test vector, server nonce fixed with setNonceForTest(), so the
// RFC 7677 exchange (in the seed corpus) must succeed with the RFC's exact
// server signature. ScramServer never runs PBKDF2 itself (the verifier is
// computed once per process), so no input is slow.
//
// Checked: no crash, no overread; a failure is final; results have the shape
// RFC 5802 requires; a mock exchange never succeeds; a success is deserved
// (the proof, the channel binding and the server signature are recomputed
// here from the password with the crypto.h primitives); no message contains
// the password.
//
// Violations end in __builtin_trap(), so the same file works under libFuzzer
// and in the g++ corpus replay (tests/fuzz/replay), in every build type.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "protocol/buffer.h"
#include "protocol/crypto.h"
#include "protocol/scram.h"
#include "tests/fuzz/fuzz_common.h"

namespace pghandoff::test {
namespace {

namespace proto = pghandoff::protocol;

constexpr std::string_view kPassword = "pencil";
constexpr std::string_view kSaltBase64 = "W22ZaJ0SNY7soEsUEjb6gQ==";
constexpr int kIterations = 4096;
constexpr std::string_view kServerNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
// RFC 7677 section 3.
constexpr std::string_view kRfcClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kRfcClientFinal =
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
constexpr std::string_view kRfcServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

const proto::ScramVerifier& verifier() {
  static const proto::ScramVerifier v = [] {
    const auto salt = proto::base64Decode(kSaltBase64);
    FUZZ_REQUIRE(salt.has_value());
    const auto made = proto::makeScramVerifier(kPassword, *salt, kIterations);
    FUZZ_REQUIRE(made.has_value());
    return *made;
  }();
  return v;
}

// Stands in for the tls-server-end-point hash of the proxy's certificate;
// tests/fuzz/make_seeds.py uses the same bytes.
std::vector<std::uint8_t> channelBindingData() {
  std::vector<std::uint8_t> cb(32);
  for (std::size_t i = 0; i < cb.size(); ++i) cb[i] = static_cast<std::uint8_t>(i);
  return cb;
}

std::vector<std::string_view> splitPieces(std::string_view s) {
  std::vector<std::string_view> pieces;
  std::size_t start = 0;
  while (true) {
    const std::size_t end = s.find('\xff', start);
    if (end == std::string_view::npos) {
      pieces.push_back(s.substr(start));
      return pieces;
    }
    pieces.push_back(s.substr(start, end - start));
    start = end + 1;
  }
}

bool isBase64Char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '/' || c == '=';
}

// peerInput: everything the peer sent. A message may quote the peer (sanitised),
// so it may only contain the password if the peer sent it.
void checkFailure(const proto::AuthFailure& f, std::string_view peerInput) {
  FUZZ_REQUIRE(f.sqlstate != nullptr && std::string_view(f.sqlstate).size() == 5);
  FUZZ_REQUIRE(!f.message.empty());
  if (peerInput.find(kPassword) == std::string_view::npos) {
    FUZZ_REQUIRE(f.message.find(kPassword) == std::string::npos);
  }
}

// The keys derived from the password, computed here from the crypto.h
// primitives independently of ScramServer (RFC 5802 section 3), to judge
// whether a successful exchange deserved to succeed.
struct Keys {
  proto::Sha256Digest clientKey{};
  proto::Sha256Digest storedKey{};
  proto::Sha256Digest serverKey{};
};

const Keys& keys() {
  static const Keys k = [] {
    const auto salt = proto::base64Decode(kSaltBase64);
    FUZZ_REQUIRE(salt.has_value());
    const auto salted = proto::pbkdf2HmacSha256(proto::asBytes(kPassword), *salt, kIterations);
    FUZZ_REQUIRE(salted.has_value());
    const auto clientKey = proto::hmacSha256(*salted, proto::asBytes("Client Key"));
    const auto serverKey = proto::hmacSha256(*salted, proto::asBytes("Server Key"));
    FUZZ_REQUIRE(clientKey && serverKey);
    const auto storedKey = proto::sha256(*clientKey);
    FUZZ_REQUIRE(storedKey.has_value());
    return Keys{*clientKey, *storedKey, *serverKey};
  }();
  return k;
}

// A successful exchange must be one a client knowing the password (and, for
// PLUS, bound to our certificate) could have produced, and the server
// signature must be the one RFC 5802 defines.
void checkDeservedSuccess(bool tls, std::string_view mechanism, std::string_view clientFirst,
                          std::string_view serverFirst, std::string_view clientFinal,
                          std::string_view serverFinal) {
  // gs2-header = cbind-flag "," [authzid] ","; the bare message follows.
  const std::size_t comma1 = clientFirst.find(',');
  FUZZ_REQUIRE(comma1 != std::string_view::npos);
  const std::size_t comma2 = clientFirst.find(',', comma1 + 1);
  FUZZ_REQUIRE(comma2 != std::string_view::npos);
  const std::string_view gs2 = clientFirst.substr(0, comma2 + 1);
  const std::string_view bare = clientFirst.substr(comma2 + 1);

  const std::size_t proofAt = clientFinal.rfind(",p=");
  FUZZ_REQUIRE(proofAt != std::string_view::npos);
  const std::string_view withoutProof = clientFinal.substr(0, proofAt);
  const std::string_view proof = clientFinal.substr(proofAt + 3);

  // c= repeats the gs2 header (plus our binding data when PLUS is in use).
  FUZZ_REQUIRE(withoutProof.substr(0, 2) == "c=");
  const std::string_view cbind = withoutProof.substr(2, withoutProof.find(',') - 2);
  std::string cbindInput(gs2);
  if (mechanism == proto::kScramSha256Plus) {
    FUZZ_REQUIRE(tls && gs2 == "p=tls-server-end-point,,");
    cbindInput.append(proto::asString(channelBindingData()));
  } else {
    FUZZ_REQUIRE(gs2 == "n,," || (gs2 == "y,," && !tls));
  }
  FUZZ_REQUIRE(cbind == proto::base64Encode(proto::asBytes(cbindInput)));

  std::string authMessage(bare);
  authMessage.append(",").append(serverFirst).append(",").append(withoutProof);
  const auto signature = proto::hmacSha256(keys().storedKey, proto::asBytes(authMessage));
  FUZZ_REQUIRE(signature.has_value());
  proto::Sha256Digest expectedProof{};
  for (std::size_t i = 0; i < expectedProof.size(); ++i) {
    expectedProof[i] = static_cast<std::uint8_t>(keys().clientKey[i] ^ (*signature)[i]);
  }
  // The strict base64 decoder admits one spelling per value.
  FUZZ_REQUIRE(proof == proto::base64Encode(expectedProof));
  const auto serverSignature = proto::hmacSha256(keys().serverKey, proto::asBytes(authMessage));
  FUZZ_REQUIRE(serverSignature.has_value());
  FUZZ_REQUIRE(serverFinal == "v=" + proto::base64Encode(*serverSignature));
}

// Returns whether the step succeeded.
bool checkStep(const std::variant<std::string, proto::AuthFailure>& r, std::string_view peerInput) {
  if (const auto* f = std::get_if<proto::AuthFailure>(&r)) {
    checkFailure(*f, peerInput);
    return false;
  }
  return true;
}

}  // namespace
}  // namespace pghandoff::test

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pghandoff::test;
  if (size < 1) return 0;
  const bool tls = (data[0] & 1u) != 0;
  const bool mock = (data[0] & 2u) != 0;
  const std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::vector<std::string_view> pieces = splitPieces(input);

  proto::ScramServer server("user", verifier(), mock,
                            tls ? channelBindingData() : std::vector<std::uint8_t>{});
  server.setNonceForTest(std::string(kServerNonce));
  const auto mechanisms = server.mechanisms();
  if (tls) {
    FUZZ_REQUIRE(mechanisms.size() == 2 && mechanisms[0] == proto::kScramSha256Plus &&
                 mechanisms[1] == proto::kScramSha256);
  } else {
    FUZZ_REQUIRE(mechanisms.size() == 1 && mechanisms[0] == proto::kScramSha256);
  }

  // Exact-size copies, so ASan sees any read past a message.
  const std::string mechanism(pieces[0]);
  const std::string clientFirst(pieces.size() > 1 ? pieces[1] : std::string_view{});
  const auto first = server.clientFirst(mechanism, clientFirst);
  const bool firstOk = checkStep(first, input);
  if (firstOk) {
    FUZZ_REQUIRE(mechanism == proto::kScramSha256 || (tls && mechanism == proto::kScramSha256Plus));
    FUZZ_REQUIRE(!clientFirst.empty() && clientFirst.size() <= proto::kScramMaxMessage);
    // r=<client nonce><server nonce>,s=<salt>,i=<iterations>
    const std::string& sf = std::get<std::string>(first);
    const std::string tail =
        std::string(kServerNonce) + ",s=" + std::string(kSaltBase64) + ",i=4096";
    FUZZ_REQUIRE(sf.size() > 2 + tail.size() && sf.compare(0, 2, "r=") == 0);
    FUZZ_REQUIRE(sf.compare(sf.size() - tail.size(), tail.size(), tail) == 0);
    FUZZ_REQUIRE(clientFirst.find(sf.substr(2, sf.size() - 2 - tail.size())) != std::string::npos);
  }

  bool finalOk = false;
  if (pieces.size() > 2) {
    const std::string clientFinal(pieces[2]);
    const auto fin = server.clientFinal(clientFinal);
    finalOk = checkStep(fin, input);
    if (finalOk) {
      FUZZ_REQUIRE(firstOk && !mock);
      // v=base64(32-byte ServerSignature)
      const std::string& v = std::get<std::string>(fin);
      FUZZ_REQUIRE(v.size() == 46 && v.compare(0, 2, "v=") == 0);
      for (char c : v.substr(2)) FUZZ_REQUIRE(isBase64Char(c));
      checkDeservedSuccess(tls, mechanism, clientFirst, std::get<std::string>(first), clientFinal,
                           v);
    }
    if (!tls && !mock && mechanism == proto::kScramSha256 && clientFirst == kRfcClientFirst &&
        clientFinal == kRfcClientFinal) {
      FUZZ_REQUIRE(finalOk && std::get<std::string>(fin) == kRfcServerFinal);
    }
  } else {
    // No client-final-message in the input: an empty one must be refused.
    FUZZ_REQUIRE(!checkStep(server.clientFinal(""), input));
  }

  // Whatever happened, the exchange is over: every further step fails.
  for (std::size_t i = 3; i < pieces.size(); ++i) {
    const std::string extra(pieces[i]);
    if (i % 2 == 1) {
      FUZZ_REQUIRE(!checkStep(server.clientFirst(proto::kScramSha256, extra), input));
    } else {
      FUZZ_REQUIRE(!checkStep(server.clientFinal(extra), input));
    }
  }
  return 0;
}
