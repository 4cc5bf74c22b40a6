// SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677, channel binding
// tls-server-end-point from RFC 5929) as PostgreSQL uses them in the SASL
// exchange (AuthenticationSASL / SASLInitialResponse / AuthenticationSASLContinue /
// SASLResponse / AuthenticationSASLFinal).
// https://www.postgresql.org/docs/15/sasl-authentication.html
//
// The proxy plays both roles:
//  - ScramServer: toward applications, against the proxy's configured users;
//  - ScramClient: toward the source/target PostgreSQL servers.
// Pure: no I/O, no logging, no exceptions. Secrets never appear in an AuthFailure.
//
// Passwords and SASLprep: PostgreSQL normalises passwords with SASLprep
// (RFC 4013: NFKC, non-ASCII spaces mapped to ' ', some characters removed) and
// falls back to the raw bytes when that fails. We do NOT implement SASLprep: the
// password's bytes are used as they are. ASCII passwords are unaffected (SASLprep
// leaves them unchanged, or fails and PostgreSQL uses them raw). A non-ASCII
// password only works if it is already in its SASLprep form (NFKC-normalised,
// no non-ASCII spaces or "mapped to nothing" characters such as U+00AD).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace pghandoff::protocol {

inline constexpr std::string_view kScramSha256 = "SCRAM-SHA-256";
inline constexpr std::string_view kScramSha256Plus = "SCRAM-SHA-256-PLUS";
inline constexpr int kScramDefaultIterations = 4096;
// Upper bound on the iteration count we accept from a server (or a stored
// verifier): PBKDF2 cost is linear in it, so a hostile server could otherwise
// burn our CPU (RELIABILITY B49).
inline constexpr int kScramMaxIterations = 10'000'000;
// Largest SCRAM message accepted in either direction. PostgreSQL caps SASL
// messages at PG_MAX_SASL_MESSAGE_LENGTH (1024); real ones are < 200 bytes.
inline constexpr std::size_t kScramMaxMessage = 1024;

// A stored SCRAM secret, as in pg_authid.rolpassword.
struct ScramVerifier {
  int iterations = kScramDefaultIterations;
  std::vector<std::uint8_t> salt;
  std::vector<std::uint8_t> storedKey;  // H(ClientKey), 32 bytes
  std::vector<std::uint8_t> serverKey;  // HMAC(SaltedPassword, "Server Key"), 32 bytes
  bool operator==(const ScramVerifier&) const = default;
};

// With a random 16-byte salt. nullopt if the random generator or PBKDF2 fails,
// or iterations is outside [1, kScramMaxIterations].
[[nodiscard]] std::optional<ScramVerifier> makeScramVerifier(
    std::string_view password, int iterations = kScramDefaultIterations);
[[nodiscard]] std::optional<ScramVerifier> makeScramVerifier(std::string_view password,
                                                             std::span<const std::uint8_t> salt,
                                                             int iterations);
// "SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>".
// Strict: iterations in [1, kScramMaxIterations], non-empty salt, 32-byte keys.
[[nodiscard]] std::optional<ScramVerifier> parseScramVerifier(std::string_view s);
[[nodiscard]] std::string formatScramVerifier(const ScramVerifier& v);

// Verifier for a user that does not exist, as PostgreSQL's scram_mock_salt():
// the salt is derived from the user name and a per-process secret, so the same
// unknown user always gets the same salt (an attacker cannot tell "unknown" from
// "wrong password" by repeating the exchange). Use it with ScramServer(isMock =
// true): the exchange then fails at the end with the same error as a wrong
// password (RELIABILITY B26). iterations should match the configured users'.
[[nodiscard]] ScramVerifier mockScramVerifier(std::string_view user,
                                              std::span<const std::uint8_t> processSecret,
                                              int iterations = kScramDefaultIterations);

// Why an exchange failed; the proxy turns it into a FATAL ErrorResponse.
// Messages are PostgreSQL's and never contain secrets.
struct AuthFailure {
  const char* sqlstate;  // "08P01", "28P01", "28000", "0A000", "XX000"
  std::string message;
};

// One server-side exchange. Call clientFirst() with the SASLInitialResponse,
// send the result in AuthenticationSASLContinue; call clientFinal() with the
// SASLResponse, send the result in AuthenticationSASLFinal followed by
// AuthenticationOk. Any failure is final: later calls fail too.
class ScramServer {
 public:
  // user: the startup packet's user (the SCRAM "n=" attribute is ignored, as in
  // PostgreSQL). channelBinding: tls-server-end-point hash of the proxy's own
  // certificate when the client connection is TLS, empty over plaintext.
  ScramServer(std::string user, ScramVerifier verifier, bool isMock,
              std::vector<std::uint8_t> channelBinding);

  // For AuthenticationSASL: {"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"} over TLS,
  // {"SCRAM-SHA-256"} otherwise.
  [[nodiscard]] std::vector<std::string> mechanisms() const;

  // SASLInitialResponse: mechanism and data. Returns server-first-message.
  [[nodiscard]] std::variant<std::string, AuthFailure> clientFirst(std::string_view mechanism,
                                                                   std::string_view data);
  // SASLResponse. Returns server-final-message ("v=..."). Mock exchanges fail here.
  [[nodiscard]] std::variant<std::string, AuthFailure> clientFinal(std::string_view data);

  // Fixes the server's part of the nonce (appended to the client's) for test vectors.
  void setNonceForTest(std::string serverNonce) { serverNonce_ = std::move(serverNonce); }

 private:
  enum class State { kInit, kFirstSent, kDone, kFailed };
  AuthFailure fail(const char* sqlstate, std::string message);

  std::string user_;
  ScramVerifier verifier_;
  bool doomed_;
  std::vector<std::uint8_t> channelBinding_;
  State state_ = State::kInit;
  bool bindingInUse_ = false;  // SCRAM-SHA-256-PLUS selected
  std::string gs2Header_;      // "n,," | "y,," | "p=tls-server-end-point,,"
  std::string clientFirstBare_;
  std::string clientNonce_;
  std::string serverNonce_;
  std::string serverFirst_;
};

// One client-side exchange (toward PostgreSQL). Send mechanism() and
// clientFirst() in SASLInitialResponse, serverFirst(AuthenticationSASLContinue
// data) in SASLResponse, then check serverFinal(AuthenticationSASLFinal data).
// The caller must not accept AuthenticationOk unless serverFinal() succeeded:
// that is what proves the server knows the password (or was not spoofed).
class ScramClient {
 public:
  // channelBinding: tls-server-end-point hash of the server's certificate when
  // the connection is TLS (see tlsServerEndPoint()), empty over plaintext.
  // serverOffersPlus: AuthenticationSASL listed SCRAM-SHA-256-PLUS.
  ScramClient(std::string password, std::vector<std::uint8_t> channelBinding,
              bool serverOffersPlus);
  ~ScramClient();
  ScramClient(const ScramClient&) = delete;
  ScramClient& operator=(const ScramClient&) = delete;

  // "SCRAM-SHA-256-PLUS" when channel binding data is given and the server offers PLUS.
  [[nodiscard]] std::string mechanism() const;
  // gs2 header "p=tls-server-end-point,," | "y,," (TLS, server without PLUS) |
  // "n,," then "n=,r=<nonce>" (PostgreSQL ignores the SCRAM user name, as libpq
  // sends it empty). Fails only if the random generator fails.
  [[nodiscard]] std::variant<std::string, AuthFailure> clientFirst();
  // server-first-message -> client-final-message.
  [[nodiscard]] std::variant<std::string, AuthFailure> serverFirst(std::string_view data);
  // server-final-message: nullopt when the server signature is right.
  [[nodiscard]] std::optional<AuthFailure> serverFinal(std::string_view data);

  void setNonceForTest(std::string clientNonce) { clientNonce_ = std::move(clientNonce); }
  // The RFC 7677 test vector uses "n=user"; PostgreSQL clients send "n=".
  void setUserForTest(std::string user) { user_ = std::move(user); }

 private:
  enum class State { kInit, kFirstSent, kFinalSent, kDone, kFailed };
  AuthFailure fail(const char* sqlstate, std::string message);

  std::string password_;
  std::vector<std::uint8_t> channelBinding_;
  bool serverOffersPlus_;
  State state_ = State::kInit;
  std::string user_;
  std::string clientNonce_;
  std::string clientFirstBare_;
  std::vector<std::uint8_t> expectedServerSignature_;
};

// RFC 5929 tls-server-end-point channel binding data: the hash of the DER
// certificate with its signature's digest, MD5 and SHA-1 upgraded to SHA-256.
// nullopt if the certificate does not parse or its signature algorithm has no
// single digest (e.g. Ed25519), in which case channel binding is unavailable.
[[nodiscard]] std::optional<std::vector<std::uint8_t>> tlsServerEndPoint(
    std::span<const std::uint8_t> certDer);

}  // namespace pghandoff::protocol
