// libFuzzer target: the client side of SCRAM-SHA-256 (protocol/scram.h,
// ScramClient), i.e. what an untrusted source or target server sends in
// AuthenticationSASLContinue and AuthenticationSASLFinal (RELIABILITY B28, B49).
//
// Input layout: byte 0 holds flags (bit 0: the server connection is TLS, so
// channel binding data is given; bit 1: AuthenticationSASL offered
// SCRAM-SHA-256-PLUS). Bytes 1.. are split at every 0xff byte (never part of a
// valid SCRAM message) into: the server-first-message, the
// server-final-message, then extra messages that are offered alternately to
// serverFirst() and serverFinal() after the exchange and must all fail.
//
// Password "pencil", user "user" and the client nonce of the RFC 7677 test
// vector, so the RFC 7677 exchange (in the seed corpus) must produce the RFC's
// exact client-final-message and accept its server signature.
//
// Iteration bound: ScramClient accepts i= up to kScramMaxIterations
// (10,000,000), on purpose (servers may be configured that high), and runs
// PBKDF2 with it; one such input takes seconds and would stall the fuzzer.
// Inputs whose server-first-message carries an i= attribute above
// kFuzzMaxIterations (4096, PostgreSQL's default) are skipped before
// serverFirst() is called. The bound itself is unit-tested, not fuzzed.
//
// Checked: no crash, no overread; clientFirst() is exactly what RFC 5802 and
// PostgreSQL expect for the flags; a failure is final; serverFinal() succeeds
// only after serverFirst() did and only with the right server signature
// (recomputed here from the password with the crypto.h primitives); no message
// contains the password.
//
// Violations end in __builtin_trap(), so the same file works under libFuzzer
// and in the g++ corpus replay (tests/fuzz/replay), in every build type.
#include <cstddef>
#include <cstdint>
#include <optional>
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
constexpr int kFuzzMaxIterations = 4096;
// RFC 7677 section 3.
constexpr std::string_view kClientNonce = "rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kRfcServerFirst =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
constexpr std::string_view kRfcClientFinal =
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
constexpr std::string_view kRfcServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

// Stands in for the tls-server-end-point hash of the server's certificate;
// tests/fuzz/make_seeds.py uses the same bytes.
std::vector<std::uint8_t> channelBindingData() {
  std::vector<std::uint8_t> cb(32);
  for (std::size_t i = 0; i < cb.size(); ++i) cb[i] = static_cast<std::uint8_t>(i);
  return cb;
}

std::vector<std::string_view> splitPieces(std::string_view s, char separator) {
  std::vector<std::string_view> pieces;
  std::size_t start = 0;
  while (true) {
    const std::size_t end = s.find(separator, start);
    if (end == std::string_view::npos) {
      pieces.push_back(s.substr(start));
      return pieces;
    }
    pieces.push_back(s.substr(start, end - start));
    start = end + 1;
  }
}

// True if any "i=" attribute of the message (split at ',' exactly as
// ScramClient's attribute reader does) is a number above the fuzzing bound.
// Conservative: it looks at every attribute, not only the third.
bool tooManyIterations(std::string_view serverFirst) {
  for (std::string_view attr : splitPieces(serverFirst, ',')) {
    if (attr.size() < 3 || attr.substr(0, 2) != "i=") continue;
    std::string_view digits = attr.substr(2);
    bool allDigits = true;
    for (char c : digits) allDigits = allDigits && c >= '0' && c <= '9';
    if (!allDigits) continue;
    while (digits.size() > 1 && digits[0] == '0') digits.remove_prefix(1);
    if (digits.size() > 9) return true;  // >= 10^9, and no overflow below
    long value = 0;
    for (char c : digits) value = value * 10 + (c - '0');
    if (value > kFuzzMaxIterations) return true;
  }
  return false;
}

// A successful serverFinal() must have checked the server signature RFC 5802
// defines; recomputed here from the password with the crypto.h primitives,
// independently of ScramClient. Runs only on success, which is rare, so the
// second PBKDF2 costs little.
void checkDeservedSuccess(std::string_view serverFirst, std::string_view clientFinal,
                          std::string_view serverFinal) {
  std::optional<std::vector<std::uint8_t>> salt;
  int iterations = 0;
  for (std::string_view attr : splitPieces(serverFirst, ',')) {
    if (attr.substr(0, 2) == "s=") salt = proto::base64Decode(attr.substr(2));
    if (attr.substr(0, 2) == "i=") {
      for (char c : attr.substr(2)) iterations = iterations * 10 + (c - '0');
    }
  }
  FUZZ_REQUIRE(salt.has_value() && iterations >= 1 && iterations <= kFuzzMaxIterations);
  const auto salted = proto::pbkdf2HmacSha256(proto::asBytes(kPassword), *salt, iterations);
  FUZZ_REQUIRE(salted.has_value());
  const auto serverKey = proto::hmacSha256(*salted, proto::asBytes("Server Key"));
  FUZZ_REQUIRE(serverKey.has_value());
  const std::size_t proofAt = clientFinal.rfind(",p=");
  FUZZ_REQUIRE(proofAt != std::string_view::npos);
  std::string authMessage = "n=user,r=" + std::string(kClientNonce);
  authMessage.append(",").append(serverFirst).append(",").append(clientFinal.substr(0, proofAt));
  const auto signature = proto::hmacSha256(*serverKey, proto::asBytes(authMessage));
  FUZZ_REQUIRE(signature.has_value());
  FUZZ_REQUIRE(serverFinal == "v=" + proto::base64Encode(*signature));
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

bool checkStep(const std::variant<std::string, proto::AuthFailure>& r, std::string_view peerInput) {
  if (const auto* f = std::get_if<proto::AuthFailure>(&r)) {
    checkFailure(*f, peerInput);
    return false;
  }
  return true;
}

bool checkStep(const std::optional<proto::AuthFailure>& r, std::string_view peerInput) {
  if (r) {
    checkFailure(*r, peerInput);
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
  const bool offersPlus = (data[0] & 2u) != 0;
  const std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::vector<std::string_view> pieces = splitPieces(input, '\xff');
  if (tooManyIterations(pieces[0])) return -1;  // -1: do not add to the corpus

  const std::vector<std::uint8_t> cb = tls ? channelBindingData() : std::vector<std::uint8_t>{};
  proto::ScramClient client(std::string(kPassword), cb, offersPlus);
  client.setNonceForTest(std::string(kClientNonce));
  client.setUserForTest("user");

  const bool plus = tls && offersPlus;
  FUZZ_REQUIRE(client.mechanism() == (plus ? proto::kScramSha256Plus : proto::kScramSha256));
  // gs2 header: "p=tls-server-end-point,," when binding, "y,," when we could
  // bind but the server did not offer it (downgrade detection), else "n,,".
  std::string gs2 = "n,,";
  if (plus) {
    gs2 = "p=tls-server-end-point,,";
  } else if (tls) {
    gs2 = "y,,";
  }
  const auto first = client.clientFirst();
  FUZZ_REQUIRE(checkStep(first, input));
  FUZZ_REQUIRE(std::get<std::string>(first) == gs2 + "n=user,r=" + std::string(kClientNonce));

  // Exact-size copies, so ASan sees any read past a message.
  const std::string serverFirst(pieces[0]);
  const auto fin = client.serverFirst(serverFirst);
  const bool finOk = checkStep(fin, input);
  if (finOk) {
    // c=base64(gs2 header [+ binding data]),r=<nonce>,p=base64(32-byte proof)
    std::string cbindInput = gs2;
    if (plus) cbindInput.append(proto::asString(cb));
    const std::string prefix =
        "c=" + proto::base64Encode(proto::asBytes(cbindInput)) + ",r=" + std::string(kClientNonce);
    const std::string& cf = std::get<std::string>(fin);
    FUZZ_REQUIRE(cf.compare(0, prefix.size(), prefix) == 0);
    FUZZ_REQUIRE(cf.size() > prefix.size() + 47 && cf.compare(cf.size() - 47, 3, ",p=") == 0);
    for (char c : cf.substr(cf.size() - 44)) FUZZ_REQUIRE(isBase64Char(c));
    // The nonce is the server's, which must extend ours.
    const std::size_t nonceEnd = cf.size() - 47;
    const std::string nonce = cf.substr(prefix.size() - kClientNonce.size(),
                                        nonceEnd - (prefix.size() - kClientNonce.size()));
    FUZZ_REQUIRE(nonce.size() > kClientNonce.size());
    FUZZ_REQUIRE(serverFirst.find("r=" + nonce) != std::string::npos);
  }
  if (!tls && serverFirst == kRfcServerFirst) {
    FUZZ_REQUIRE(finOk && std::get<std::string>(fin) == kRfcClientFinal);
  }

  if (pieces.size() > 1) {
    const std::string serverFinal(pieces[1]);
    const bool done = checkStep(client.serverFinal(serverFinal), input);
    if (done) {
      FUZZ_REQUIRE(finOk);
      checkDeservedSuccess(serverFirst, std::get<std::string>(fin), serverFinal);
    }
    if (!tls && serverFirst == kRfcServerFirst && serverFinal == kRfcServerFinal) {
      FUZZ_REQUIRE(done);
    }
  }

  // Whatever happened, the exchange is over: every further step fails.
  for (std::size_t i = 2; i < pieces.size(); ++i) {
    const std::string extra(pieces[i]);
    if (i % 2 == 0) {
      FUZZ_REQUIRE(!checkStep(client.serverFirst(extra), input));
    } else {
      FUZZ_REQUIRE(!checkStep(client.serverFinal(extra), input));
    }
  }
  return 0;
}
