#include "protocol/scram.h"

#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <climits>

#include "protocol/buffer.h"
#include "protocol/crypto.h"
#include "protocol/error.h"

namespace pghandoff::protocol {
namespace {

// PostgreSQL's texts (src/backend/libpq/auth-scram.c), so clients see what a
// real server would say.
constexpr const char* kMalformed = "malformed SCRAM message";
constexpr const char* kInvalidMechanism =
    "client selected an invalid SASL authentication mechanism";
constexpr std::string_view kCbindType = "tls-server-end-point";
constexpr std::string_view kCbindHeader = "p=tls-server-end-point,,";
// PostgreSQL's SCRAM_RAW_NONCE_LEN and SCRAM_DEFAULT_SALT_LEN.
constexpr std::size_t kRawNonceLength = 18;
constexpr std::size_t kSaltLength = 16;

// A cursor over "attr=value,attr=value" (RFC 5802 section 7). Never reads past
// its input; a trailing ',' leaves it not done() and makes the next read fail.
class AttrReader {
 public:
  explicit AttrReader(std::string_view s) : s_(s) {}

  [[nodiscard]] bool done() const { return pos_ == s_.size() && !afterComma_; }
  [[nodiscard]] std::size_t position() const { return pos_; }

  // attr-val = ALPHA "=" value; returns the attribute letter and the value.
  [[nodiscard]] std::optional<std::pair<char, std::string_view>> readAny() {
    if (s_.size() - pos_ < 2) return std::nullopt;
    char attr = s_[pos_];
    if (!((attr >= 'a' && attr <= 'z') || (attr >= 'A' && attr <= 'Z')) || s_[pos_ + 1] != '=') {
      return std::nullopt;
    }
    std::size_t begin = pos_ + 2;
    std::size_t end = s_.find(',', begin);
    if (end == std::string_view::npos) end = s_.size();
    std::string_view value = s_.substr(begin, end - begin);
    afterComma_ = end < s_.size();
    pos_ = afterComma_ ? end + 1 : end;
    return std::pair{attr, value};
  }

  // The next attribute must be `attr`.
  [[nodiscard]] std::optional<std::string_view> read(char attr) {
    std::size_t save = pos_;
    auto a = readAny();
    if (!a || a->first != attr) {
      pos_ = save;
      return std::nullopt;
    }
    return a->second;
  }

 private:
  std::string_view s_;
  std::size_t pos_ = 0;
  bool afterComma_ = false;
};

// RFC 5802 "printable": %x21-2B / %x2D-7E (printable ASCII except ',').
bool isPrintable(std::string_view s) {
  for (char c : s) {
    if (c < 0x21 || c > 0x7E || c == ',') return false;
  }
  return true;
}

// Checks common to every SCRAM message before any parsing: bounded size and no
// NUL (PostgreSQL compares the length with strlen()).
bool acceptableMessage(std::string_view data) {
  return !data.empty() && data.size() <= kScramMaxMessage &&
         data.find('\0') == std::string_view::npos;
}

// "i=" posit-number, capped.
std::optional<int> parseIterations(std::string_view s) {
  if (s.empty() || s.size() > 10 || s[0] == '0') return std::nullopt;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  long long v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || ptr != s.data() + s.size()) return std::nullopt;
  if (v < 1 || v > kScramMaxIterations) return std::nullopt;
  return static_cast<int>(v);
}

std::optional<std::string> makeNonce() {
  std::array<std::uint8_t, kRawNonceLength> raw{};
  if (!randomBytes(raw)) return std::nullopt;
  return base64Encode(raw);
}

// Printable, bounded rendering of a peer-supplied string for an error message.
std::string sanitize(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 64)) out.push_back(c >= 0x20 && c < 0x7F ? c : '?');
  return out;
}

std::string concat(std::string_view a, std::string_view b, std::string_view c) {
  std::string out;
  out.reserve(a.size() + b.size() + c.size() + 2);
  out.append(a).append(",").append(b).append(",").append(c);
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// Verifiers

std::optional<ScramVerifier> makeScramVerifier(std::string_view password, int iterations) {
  std::array<std::uint8_t, kSaltLength> salt{};
  if (!randomBytes(salt)) return std::nullopt;
  return makeScramVerifier(password, salt, iterations);
}

std::optional<ScramVerifier> makeScramVerifier(std::string_view password,
                                               std::span<const std::uint8_t> salt, int iterations) {
  if (iterations < 1 || iterations > kScramMaxIterations || salt.empty()) return std::nullopt;
  auto salted = pbkdf2HmacSha256(asBytes(password), salt, iterations);
  if (!salted) return std::nullopt;
  auto clientKey = hmacSha256(*salted, asBytes("Client Key"));
  auto serverKey = hmacSha256(*salted, asBytes("Server Key"));
  secureZero(*salted);
  if (!clientKey || !serverKey) return std::nullopt;
  auto storedKey = sha256(*clientKey);
  secureZero(*clientKey);
  if (!storedKey) return std::nullopt;
  ScramVerifier v;
  v.iterations = iterations;
  v.salt.assign(salt.begin(), salt.end());
  v.storedKey.assign(storedKey->begin(), storedKey->end());
  v.serverKey.assign(serverKey->begin(), serverKey->end());
  return v;
}

std::optional<ScramVerifier> parseScramVerifier(std::string_view s) {
  constexpr std::string_view kPrefix = "SCRAM-SHA-256$";
  if (s.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  s.remove_prefix(kPrefix.size());
  auto colon1 = s.find(':');
  if (colon1 == std::string_view::npos) return std::nullopt;
  auto dollar = s.find('$', colon1 + 1);
  if (dollar == std::string_view::npos) return std::nullopt;
  auto colon2 = s.find(':', dollar + 1);
  if (colon2 == std::string_view::npos) return std::nullopt;

  auto iterations = parseIterations(s.substr(0, colon1));
  auto salt = base64Decode(s.substr(colon1 + 1, dollar - colon1 - 1));
  auto storedKey = base64Decode(s.substr(dollar + 1, colon2 - dollar - 1));
  auto serverKey = base64Decode(s.substr(colon2 + 1));
  if (!iterations || !salt || salt->empty() || !storedKey || storedKey->size() != kSha256Size ||
      !serverKey || serverKey->size() != kSha256Size) {
    return std::nullopt;
  }
  return ScramVerifier{*iterations, std::move(*salt), std::move(*storedKey), std::move(*serverKey)};
}

std::string formatScramVerifier(const ScramVerifier& v) {
  return "SCRAM-SHA-256$" + std::to_string(v.iterations) + ":" + base64Encode(v.salt) + "$" +
         base64Encode(v.storedKey) + ":" + base64Encode(v.serverKey);
}

ScramVerifier mockScramVerifier(std::string_view user, std::span<const std::uint8_t> processSecret,
                                int iterations) {
  // PostgreSQL: salt = SHA-256(user || mock_auth_nonce), truncated to 16 bytes.
  std::string input(user);
  input.append(asString(processSecret));
  ScramVerifier v;
  v.iterations = iterations;
  auto digest = sha256(asBytes(input));
  v.salt.assign(kSaltLength, 0);
  if (digest) std::copy_n(digest->begin(), kSaltLength, v.salt.begin());
  // The keys are never used for success (ScramServer fails a mock exchange
  // regardless), but they are derived from the secret rather than left zero so
  // a mock verifier used by mistake without isMock still admits nobody.
  auto stored = hmacSha256(processSecret, asBytes("mock StoredKey " + std::string(user)));
  auto server = hmacSha256(processSecret, asBytes("mock ServerKey " + std::string(user)));
  v.storedKey.assign(kSha256Size, 0xFF);
  v.serverKey.assign(kSha256Size, 0xFF);
  if (stored) v.storedKey.assign(stored->begin(), stored->end());
  if (server) v.serverKey.assign(server->begin(), server->end());
  return v;
}

// ---------------------------------------------------------------------------
// Server

ScramServer::ScramServer(std::string user, ScramVerifier verifier, bool isMock,
                         std::vector<std::uint8_t> channelBinding)
    : user_(std::move(user)),
      verifier_(std::move(verifier)),
      doomed_(isMock),
      channelBinding_(std::move(channelBinding)) {
  // An unusable verifier (config bug) behaves like an unknown user, as in
  // PostgreSQL's scram_init(): the exchange runs and fails at the end.
  if (verifier_.storedKey.size() != kSha256Size || verifier_.serverKey.size() != kSha256Size ||
      verifier_.salt.empty() || verifier_.iterations < 1) {
    doomed_ = true;
  }
}

std::vector<std::string> ScramServer::mechanisms() const {
  if (!channelBinding_.empty()) {
    return {std::string(kScramSha256Plus), std::string(kScramSha256)};
  }
  return {std::string(kScramSha256)};
}

AuthFailure ScramServer::fail(const char* sqlstate, std::string message) {
  state_ = State::kFailed;
  return AuthFailure{sqlstate, std::move(message)};
}

std::variant<std::string, AuthFailure> ScramServer::clientFirst(std::string_view mechanism,
                                                                std::string_view data) {
  if (state_ != State::kInit) return fail(sqlstate::kProtocolViolation, kMalformed);
  const bool tls = !channelBinding_.empty();
  // PLUS is only valid if we advertised it, i.e. over TLS (B31).
  if (mechanism == kScramSha256Plus && tls) {
    bindingInUse_ = true;
  } else if (mechanism == kScramSha256) {
    bindingInUse_ = false;
  } else {
    return fail(sqlstate::kProtocolViolation, kInvalidMechanism);  // B27, B31
  }
  if (!acceptableMessage(data)) return fail(sqlstate::kProtocolViolation, kMalformed);

  // gs2-header = gs2-cbind-flag "," [ authzid ] ","
  std::size_t pos = 0;
  switch (data[0]) {
    case 'n':
      if (bindingInUse_) return fail(sqlstate::kProtocolViolation, kMalformed);
      pos = 1;
      break;
    case 'y':
      // The client supports channel binding but thinks we do not: over TLS we
      // advertised PLUS, so someone stripped it from AuthenticationSASL (B29).
      if (bindingInUse_) return fail(sqlstate::kProtocolViolation, kMalformed);
      if (tls) {
        return fail(sqlstate::kInvalidAuthSpec, "SCRAM channel binding negotiation error");
      }
      pos = 1;
      break;
    case 'p': {
      if (!bindingInUse_) return fail(sqlstate::kProtocolViolation, kMalformed);
      if (data.size() < 2 || data[1] != '=') return fail(sqlstate::kProtocolViolation, kMalformed);
      std::size_t comma = data.find(',', 2);
      if (comma == std::string_view::npos) return fail(sqlstate::kProtocolViolation, kMalformed);
      if (data.substr(2, comma - 2) != kCbindType) {
        return fail(sqlstate::kProtocolViolation, "unsupported SCRAM channel-binding type");
      }
      pos = comma;
      break;
    }
    default:
      return fail(sqlstate::kProtocolViolation, kMalformed);
  }
  if (pos >= data.size() || data[pos] != ',') return fail(sqlstate::kProtocolViolation, kMalformed);
  ++pos;
  if (pos < data.size() && data[pos] == 'a') {
    return fail(sqlstate::kFeatureNotSupported,
                "client uses authorization identity, but it is not supported");
  }
  if (pos >= data.size() || data[pos] != ',') return fail(sqlstate::kProtocolViolation, kMalformed);
  ++pos;
  std::string_view gs2Header = data.substr(0, pos);
  std::string_view bare = data.substr(pos);

  // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
  if (!bare.empty() && bare[0] == 'm') {
    return fail(sqlstate::kFeatureNotSupported, "client requires an unsupported SCRAM extension");
  }
  AttrReader reader(bare);
  // The user name is ignored: the startup packet's user counts (as in PostgreSQL).
  if (!reader.read('n')) return fail(sqlstate::kProtocolViolation, kMalformed);
  auto nonce = reader.read('r');
  if (!nonce || nonce->empty()) return fail(sqlstate::kProtocolViolation, kMalformed);
  if (!isPrintable(*nonce)) {
    return fail(sqlstate::kProtocolViolation, "non-printable characters in SCRAM nonce");
  }
  // Unknown extensions MUST be ignored (RFC 5802), but a repeated or misplaced
  // standard attribute, or a broken attribute, is malformed (B28).
  while (!reader.done()) {
    auto attr = reader.readAny();
    if (!attr || attr->first == 'n' || attr->first == 'r' || attr->first == 'm') {
      return fail(sqlstate::kProtocolViolation, kMalformed);
    }
  }

  if (serverNonce_.empty()) {
    auto generated = makeNonce();
    if (!generated) return fail(sqlstate::kInternalError, "could not generate random nonce");
    serverNonce_ = std::move(*generated);
  }
  gs2Header_ = gs2Header;
  clientFirstBare_ = bare;
  clientNonce_ = *nonce;
  serverFirst_ = "r=" + clientNonce_ + serverNonce_ + ",s=" + base64Encode(verifier_.salt) +
                 ",i=" + std::to_string(verifier_.iterations);
  state_ = State::kFirstSent;
  return serverFirst_;
}

std::variant<std::string, AuthFailure> ScramServer::clientFinal(std::string_view data) {
  if (state_ != State::kFirstSent) return fail(sqlstate::kProtocolViolation, kMalformed);
  if (!acceptableMessage(data)) return fail(sqlstate::kProtocolViolation, kMalformed);

  // client-final-message = channel-binding "," nonce ["," extensions] "," proof
  AttrReader reader(data);
  auto cbind = reader.read('c');
  if (!cbind) return fail(sqlstate::kProtocolViolation, kMalformed);
  if (bindingInUse_) {
    // c= must be base64(gs2-header + hash of our certificate) (B30).
    std::string input(kCbindHeader);
    input.append(asString(channelBinding_));
    if (!constantTimeEqual(*cbind, base64Encode(asBytes(input)))) {
      return fail(sqlstate::kInvalidAuthSpec, "SCRAM channel binding check failed");
    }
  } else if (!(*cbind == "biws" && gs2Header_ == "n,,") &&
             !(*cbind == "eSws" && gs2Header_ == "y,,")) {
    // "n,," or "y,," base64-encoded, repeating the flag of client-first.
    return fail(sqlstate::kProtocolViolation,
                "unexpected SCRAM channel-binding attribute in client-final-message");
  }
  auto nonce = reader.read('r');
  if (!nonce) return fail(sqlstate::kProtocolViolation, kMalformed);

  std::size_t proofStart = 0;
  std::string_view proof;
  while (true) {
    if (reader.done()) return fail(sqlstate::kProtocolViolation, kMalformed);  // no proof
    proofStart = reader.position();
    auto attr = reader.readAny();
    if (!attr || attr->first == 'c' || attr->first == 'r') {
      return fail(sqlstate::kProtocolViolation, kMalformed);
    }
    if (attr->first == 'p') {
      proof = attr->second;
      break;
    }
  }
  if (!reader.done()) return fail(sqlstate::kProtocolViolation, kMalformed);  // proof must be last
  auto proofBytes = base64Decode(proof);
  if (!proofBytes || proofBytes->size() != kSha256Size) {
    return fail(sqlstate::kProtocolViolation, kMalformed);
  }
  // The nonce must be exactly ours: client nonce followed by server nonce (B28).
  if (nonce->size() != clientNonce_.size() + serverNonce_.size() ||
      nonce->substr(0, clientNonce_.size()) != clientNonce_ ||
      nonce->substr(clientNonce_.size()) != serverNonce_) {
    return fail(sqlstate::kProtocolViolation, kMalformed);
  }

  // proofStart > 0: c= and r= precede it; drop the ',' before "p=".
  std::string authMessage = concat(clientFirstBare_, serverFirst_, data.substr(0, proofStart - 1));
  auto clientSignature = hmacSha256(verifier_.storedKey, asBytes(authMessage));
  if (!clientSignature) return fail(sqlstate::kInternalError, "could not compute SCRAM proof");
  Sha256Digest clientKey{};
  for (std::size_t i = 0; i < kSha256Size; ++i) {
    clientKey[i] = static_cast<std::uint8_t>((*proofBytes)[i] ^ (*clientSignature)[i]);
  }
  auto computedStoredKey = sha256(clientKey);
  secureZero(clientKey);
  if (!computedStoredKey) return fail(sqlstate::kInternalError, "could not compute SCRAM proof");
  // The proof is checked even for a mock exchange, so unknown users cost the
  // same time as known ones (as in PostgreSQL's scram_exchange()).
  const bool proofOk = constantTimeEqual(*computedStoredKey, verifier_.storedKey);
  if (!proofOk || doomed_) {
    return fail(sqlstate::kInvalidPassword,
                "password authentication failed for user \"" + user_ + "\"");
  }
  auto serverSignature = hmacSha256(verifier_.serverKey, asBytes(authMessage));
  if (!serverSignature) return fail(sqlstate::kInternalError, "could not compute SCRAM signature");
  state_ = State::kDone;
  return "v=" + base64Encode(*serverSignature);
}

// ---------------------------------------------------------------------------
// Client

ScramClient::ScramClient(std::string password, std::vector<std::uint8_t> channelBinding,
                         bool serverOffersPlus)
    : password_(std::move(password)),
      channelBinding_(std::move(channelBinding)),
      serverOffersPlus_(serverOffersPlus) {}

ScramClient::~ScramClient() {
  secureZero({reinterpret_cast<std::uint8_t*>(password_.data()), password_.size()});
}

std::string ScramClient::mechanism() const {
  return std::string(!channelBinding_.empty() && serverOffersPlus_ ? kScramSha256Plus
                                                                   : kScramSha256);
}

AuthFailure ScramClient::fail(const char* sqlstate, std::string message) {
  state_ = State::kFailed;
  return AuthFailure{sqlstate, std::move(message)};
}

std::variant<std::string, AuthFailure> ScramClient::clientFirst() {
  if (state_ != State::kInit)
    return fail(sqlstate::kProtocolViolation, "SCRAM exchange out of order");
  if (clientNonce_.empty()) {
    auto generated = makeNonce();
    if (!generated) return fail(sqlstate::kInternalError, "could not generate random nonce");
    clientNonce_ = std::move(*generated);
  }
  std::string gs2Header;
  if (channelBinding_.empty()) {
    gs2Header = "n,,";
  } else if (serverOffersPlus_) {
    gs2Header = kCbindHeader;
  } else {
    // We could bind, the server did not offer it: say so, so that a server
    // that does support it detects the downgrade (RFC 5802 section 6).
    gs2Header = "y,,";
  }
  clientFirstBare_ = "n=" + user_ + ",r=" + clientNonce_;
  state_ = State::kFirstSent;
  return gs2Header + clientFirstBare_;
}

std::variant<std::string, AuthFailure> ScramClient::serverFirst(std::string_view data) {
  if (state_ != State::kFirstSent) {
    return fail(sqlstate::kProtocolViolation, "SCRAM exchange out of order");
  }
  if (!acceptableMessage(data)) {
    return fail(sqlstate::kProtocolViolation, "malformed SCRAM message (server-first-message)");
  }
  // server-first-message = [reserved-mext ","] nonce "," salt "," iteration-count ["," extensions]
  AttrReader reader(data);
  auto nonce = reader.read('r');
  if (!nonce || nonce->size() <= clientNonce_.size() ||
      nonce->substr(0, clientNonce_.size()) != clientNonce_ || !isPrintable(*nonce)) {
    return fail(sqlstate::kProtocolViolation, "invalid SCRAM response (nonce mismatch)");
  }
  auto saltText = reader.read('s');
  auto salt = saltText ? base64Decode(*saltText) : std::nullopt;
  if (!salt || salt->empty()) {
    return fail(sqlstate::kProtocolViolation, "malformed SCRAM message (invalid salt)");
  }
  auto iterationsText = reader.read('i');
  auto iterations = iterationsText ? parseIterations(*iterationsText) : std::nullopt;
  if (!iterations) {
    return fail(sqlstate::kProtocolViolation, "malformed SCRAM message (invalid iteration count)");
  }
  if (!reader.done()) {
    return fail(sqlstate::kProtocolViolation,
                "malformed SCRAM message (garbage at end of server-first-message)");
  }

  std::string cbindInput;
  if (channelBinding_.empty()) {
    cbindInput = "n,,";
  } else if (serverOffersPlus_) {
    cbindInput.append(kCbindHeader).append(asString(channelBinding_));
  } else {
    cbindInput = "y,,";
  }
  std::string withoutProof = "c=" + base64Encode(asBytes(cbindInput)) + ",r=" + std::string(*nonce);
  std::string authMessage = concat(clientFirstBare_, data, withoutProof);

  auto salted = pbkdf2HmacSha256(asBytes(password_), *salt, *iterations);
  if (!salted) return fail(sqlstate::kInternalError, "could not compute SCRAM proof");
  auto clientKey = hmacSha256(*salted, asBytes("Client Key"));
  auto serverKey = hmacSha256(*salted, asBytes("Server Key"));
  secureZero(*salted);
  std::optional<Sha256Digest> storedKey, clientSignature, serverSignature;
  if (clientKey) storedKey = sha256(*clientKey);
  if (storedKey) clientSignature = hmacSha256(*storedKey, asBytes(authMessage));
  if (serverKey) serverSignature = hmacSha256(*serverKey, asBytes(authMessage));
  if (serverKey) secureZero(*serverKey);
  if (!clientKey || !clientSignature || !serverSignature) {
    if (clientKey) secureZero(*clientKey);
    return fail(sqlstate::kInternalError, "could not compute SCRAM proof");
  }
  Sha256Digest proof{};
  for (std::size_t i = 0; i < kSha256Size; ++i) {
    proof[i] = static_cast<std::uint8_t>((*clientKey)[i] ^ (*clientSignature)[i]);
  }
  secureZero(*clientKey);
  expectedServerSignature_.assign(serverSignature->begin(), serverSignature->end());
  state_ = State::kFinalSent;
  return withoutProof + ",p=" + base64Encode(proof);
}

std::optional<AuthFailure> ScramClient::serverFinal(std::string_view data) {
  if (state_ != State::kFinalSent) {
    return fail(sqlstate::kProtocolViolation, "SCRAM exchange out of order");
  }
  if (!acceptableMessage(data)) {
    return fail(sqlstate::kProtocolViolation, "malformed SCRAM message (server-final-message)");
  }
  // server-final-message = (server-error / verifier) ["," extensions]
  AttrReader reader(data);
  if (auto error = reader.read('e')) {
    return fail(sqlstate::kInvalidAuthSpec,
                "error received from server in SCRAM exchange: " + sanitize(*error));
  }
  auto verifier = reader.read('v');
  if (!verifier || !reader.done()) {
    return fail(sqlstate::kProtocolViolation, "malformed SCRAM message (server-final-message)");
  }
  auto signature = base64Decode(*verifier);
  if (!signature || signature->size() != kSha256Size) {
    return fail(sqlstate::kProtocolViolation, "malformed SCRAM message (invalid server signature)");
  }
  if (!constantTimeEqual(*signature, expectedServerSignature_)) {
    return fail(sqlstate::kInvalidAuthSpec, "incorrect server signature");
  }
  state_ = State::kDone;
  return std::nullopt;
}

// ---------------------------------------------------------------------------
// Channel binding

std::optional<std::vector<std::uint8_t>> tlsServerEndPoint(std::span<const std::uint8_t> certDer) {
  if (certDer.empty() || certDer.size() > static_cast<std::size_t>(LONG_MAX)) return std::nullopt;
  const unsigned char* p = certDer.data();
  X509* cert = d2i_X509(nullptr, &p, static_cast<long>(certDer.size()));
  if (cert == nullptr) return std::nullopt;
  auto derLength = static_cast<std::size_t>(p - certDer.data());
  // Same choice of digest as PostgreSQL (be_tls_get_certificate_hash and libpq's
  // pgtls_get_peer_certificate_hash), so both ends of a binding agree.
  int digestNid = NID_undef;
  bool ok = OBJ_find_sigid_algs(X509_get_signature_nid(cert), &digestNid, nullptr) == 1;
  X509_free(cert);
  if (!ok) return std::nullopt;
  const EVP_MD* md = nullptr;
  if (digestNid == NID_md5 || digestNid == NID_sha1) {
    md = EVP_sha256();  // RFC 5929 section 4.1
  } else {
    md = EVP_get_digestbynid(digestNid);
  }
  if (md == nullptr) return std::nullopt;
  std::vector<std::uint8_t> hash(EVP_MAX_MD_SIZE);
  unsigned int len = 0;
  if (EVP_Digest(certDer.data(), derLength, hash.data(), &len, md, nullptr) != 1) {
    return std::nullopt;
  }
  hash.resize(len);
  return hash;
}

}  // namespace pghandoff::protocol
