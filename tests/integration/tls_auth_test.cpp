// TLS and authentication through the real proxy (RELIABILITY.md §4 security
// checklist; B23, B26, B29-B31, F21): real libpq clients against the proxy's
// client_tls modes and auth methods, the proxy against sources with TLS-only
// pg_hba and every password method, and a secret-redaction canary run over
// logs, /metrics and /status.
//
// libpq keeps the SQLSTATE of a connection-time error to itself; with
// PQERRORS_VERBOSE set between PQconnectStart and PQconnectPoll the message it
// builds reads "FATAL:  28P01: password authentication failed ...", which
// attempt() parses. A libpq-side failure (certificate, channel binding) has
// no SQLSTATE at all.

#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <gtest/gtest.h>
#include <libpq-fe.h>

#include "protocol/backend.h"
#include "protocol/error.h"
#include "protocol/frontend.h"
#include "protocol/md5auth.h"
#include "protocol/scram.h"
#include "protocol/startup.h"
#include "tests/support/certs.h"
#include "tests/support/pg_cluster.h"
#include "tests/support/pq.h"
#include "tests/support/process.h"
#include "tests/support/proxy_process.h"

namespace pghandoff::test {
namespace {

using Clock = std::chrono::steady_clock;

// ---- libpq connection attempts ------------------------------------------------

struct PgConnDeleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};
using PgConnPtr = std::unique_ptr<PGconn, PgConnDeleter>;

struct Attempt {
  PgConnPtr conn;
  bool ok = false;
  bool timedOut = false;
  std::string error;     // PQerrorMessage as is
  std::string severity;  // of the last server error in it ("" when libpq failed by itself)
  std::string sqlstate;
  std::string message;  // primary text of that error
  std::chrono::milliseconds elapsed{0};
};

// The last "FATAL:  XXXXX: text" (or ERROR/PANIC) of a verbose libpq error:
// with sslmode=prefer or several addresses libpq concatenates one message
// per try.
void parseServerError(Attempt& a) {
  std::size_t best = std::string::npos;
  std::string sev;
  for (const std::string s : {"FATAL", "ERROR", "PANIC"}) {
    const auto p = a.error.rfind(s + ":  ");
    if (p != std::string::npos && (best == std::string::npos || p > best)) {
      best = p;
      sev = s;
    }
  }
  if (best == std::string::npos) {
    return;
  }
  std::string rest = a.error.substr(best + sev.size() + 3);
  rest = rest.substr(0, rest.find('\n'));
  a.severity = sev;
  if (rest.size() >= 7 && rest[5] == ':' && rest[6] == ' ') {
    a.sqlstate = rest.substr(0, 5);
    a.message = rest.substr(7);
  } else {
    a.message = rest;
  }
}

// One non-blocking connection with a hard deadline, so that a proxy that
// hangs fails the test instead of stalling it.
Attempt attempt(const std::string& conninfo, std::chrono::milliseconds deadline = 20s) {
  Attempt a;
  const auto t0 = Clock::now();
  a.conn.reset(PQconnectStart(conninfo.c_str()));
  if (!a.conn) {
    a.error = "PQconnectStart: out of memory";
    return a;
  }
  PGconn* c = a.conn.get();
  PQsetErrorVerbosity(c, PQERRORS_VERBOSE);
  PostgresPollingStatusType st =
      PQstatus(c) == CONNECTION_BAD ? PGRES_POLLING_FAILED : PGRES_POLLING_WRITING;
  while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(t0 + deadline - Clock::now());
    if (left.count() <= 0) {
      a.timedOut = true;
      break;
    }
    pollfd p{PQsocket(c), static_cast<short>(st == PGRES_POLLING_READING ? POLLIN : POLLOUT), 0};
    const int n = ::poll(&p, 1, static_cast<int>(left.count()));
    if (n == 0) {
      a.timedOut = true;
      break;
    }
    st = PQconnectPoll(c);
  }
  a.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
  a.ok = !a.timedOut && PQstatus(c) == CONNECTION_OK;
  a.error = PQerrorMessage(c);
  parseServerError(a);
  return a;
}

// First column of the first row, or "<error: ...>".
std::string scalar(PGconn* c, const std::string& sql) {
  PGresult* r = PQexec(c, sql.c_str());
  std::string out;
  if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0) {
    out = PQgetvalue(r, 0, 0);
  } else {
    out = std::string("<error: ") + PQerrorMessage(c) + ">";
  }
  PQclear(r);
  return out;
}

std::string conninfoQuote(const std::string& v) {
  std::string out = "'";
  for (const char ch : v) {
    if (ch == '\'' || ch == '\\') {
      out.push_back('\\');
    }
    out.push_back(ch);
  }
  return out + "'";
}

// key=value conninfo for the proxy; password empty means none is given.
std::string proxyConninfo(const ProxyProcess& p, const std::string& user,
                          const std::string& password, const std::string& extra = "sslmode=disable",
                          const std::string& host = "127.0.0.1",
                          const std::string& db = "postgres") {
  std::string s = "host=" + host + " port=" + std::to_string(p.port()) +
                  " dbname=" + conninfoQuote(db) + " user=" + conninfoQuote(user) +
                  " connect_timeout=15";
  if (!password.empty()) {
    s += " password=" + conninfoQuote(password);
  }
  return s + " " + extra;
}

std::size_t countOf(const std::string& haystack, const std::string& needle) {
  std::size_t n = 0;
  for (auto p = haystack.find(needle); p != std::string::npos;
       p = haystack.find(needle, p + needle.size())) {
    ++n;
  }
  return n;
}

std::string failedFor(const std::string& user) {
  return "password authentication failed for user \"" + user + "\"";
}

const char* const kAuthFailedMetric =
    "pghandoff_client_connections_rejected_total{reason=\"auth_failed\"}";
const char* const kTlsRejectMetric = "pghandoff_client_connections_rejected_total{reason=\"tls\"}";

// proxy.metric() with the proxy's log tail when the scrape itself fails.
double metricOf(ProxyProcess& proxy, const std::string& name) {
  try {
    return proxy.metric(name);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "scraping " << name << ": " << e.what() << "\nproxy log tail:\n"
                  << tailFile(proxy.logFile());
    return std::nan("");
  }
}

// ---- a raw protocol client for what libpq will not send (B29-B31) --------------

class RawClient {
 public:
  explicit RawClient(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval tv{10, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawClient() {
    if (ssl_ != nullptr) {
      SSL_free(ssl_);
    }
    if (ctx_ != nullptr) {
      SSL_CTX_free(ctx_);
    }
    ::close(fd_);
  }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  [[nodiscard]] bool connected() const { return connected_; }

  // SSLRequest, 'S', handshake without verification (the test only needs the
  // proxy's certificate for channel binding).
  bool startTls() {
    std::vector<std::uint8_t> req;
    protocol::encodeSslRequest(req);
    if (!send(req)) {
      return false;
    }
    std::uint8_t answer = 0;
    if (::recv(fd_, &answer, 1, 0) != 1 || answer != 'S') {
      return false;
    }
    ctx_ = SSL_CTX_new(TLS_client_method());
    ssl_ = SSL_new(ctx_);
    SSL_set_fd(ssl_, fd_);
    return SSL_connect(ssl_) == 1;
  }

  std::vector<std::uint8_t> peerEndPoint() const {
    X509* cert = SSL_get1_peer_certificate(ssl_);
    std::vector<std::uint8_t> der;
    if (cert != nullptr) {
      const int len = i2d_X509(cert, nullptr);
      der.resize(static_cast<std::size_t>(std::max(len, 0)));
      unsigned char* p = der.data();
      i2d_X509(cert, &p);
      X509_free(cert);
    }
    return protocol::tlsServerEndPoint(der).value_or(std::vector<std::uint8_t>{});
  }

  bool send(const std::vector<std::uint8_t>& bytes) {
    std::size_t done = 0;
    while (done < bytes.size()) {
      const int n = ssl_ != nullptr ? SSL_write(ssl_, bytes.data() + done,
                                                static_cast<int>(bytes.size() - done))
                                    : static_cast<int>(::send(fd_, bytes.data() + done,
                                                              bytes.size() - done, MSG_NOSIGNAL));
      if (n <= 0) {
        return false;
      }
      done += static_cast<std::size_t>(n);
    }
    return true;
  }

  // One backend message (type, body); nullopt on EOF, error or the 10 s timeout.
  std::optional<std::pair<char, std::vector<std::uint8_t>>> read() {
    while (true) {
      if (buf_.size() >= 5) {
        const std::uint32_t len = (std::uint32_t(buf_[1]) << 24) | (std::uint32_t(buf_[2]) << 16) |
                                  (std::uint32_t(buf_[3]) << 8) | std::uint32_t(buf_[4]);
        if (len < 4 || len > 1000000) {
          return std::nullopt;
        }
        if (buf_.size() >= 1 + len) {
          std::vector<std::uint8_t> body(buf_.begin() + 5, buf_.begin() + 1 + len);
          const char type = static_cast<char>(buf_[0]);
          buf_.erase(buf_.begin(), buf_.begin() + 1 + len);
          return std::make_pair(type, std::move(body));
        }
      }
      std::uint8_t chunk[4096];
      const int n = ssl_ != nullptr ? SSL_read(ssl_, chunk, sizeof chunk)
                                    : static_cast<int>(::recv(fd_, chunk, sizeof chunk, 0));
      if (n <= 0) {
        return std::nullopt;
      }
      buf_.insert(buf_.end(), chunk, chunk + n);
    }
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  std::vector<std::uint8_t> buf_;
};

// What the proxy answered to a hand-made SCRAM exchange: the ErrorResponse,
// or nullopt (with `why`) if there was none.
struct ScramProbe {
  std::vector<std::string> mechanisms;
  std::optional<protocol::ErrorFields> error;
  std::string why;
};

// Startup as `user`, then SCRAM with the given client; stops at the first
// ErrorResponse.
ScramProbe probeScram(RawClient& c, const std::string& user, protocol::ScramClient& scram,
                      bool expectSaslList) {
  ScramProbe out;
  protocol::StartupMessage sm;
  sm.parameters = {{"user", user}, {"database", "postgres"}};
  std::vector<std::uint8_t> bytes;
  protocol::encodeStartup(sm, bytes);
  if (!c.send(bytes)) {
    out.why = "send startup failed";
    return out;
  }
  bool sentInitial = false;
  while (true) {
    auto msg = c.read();
    if (!msg) {
      out.why = "connection closed without an ErrorResponse";
      return out;
    }
    if (msg->first == 'E') {
      out.error = protocol::decodeErrorBody(msg->second);
      if (!out.error) {
        out.why = "undecodable ErrorResponse";
      }
      return out;
    }
    if (msg->first != 'R') {
      out.why = std::string("unexpected message type ") + msg->first;
      return out;
    }
    auto auth = protocol::decodeAuthBody(msg->second);
    if (!auth) {
      out.why = "undecodable authentication request";
      return out;
    }
    bytes.clear();
    if (auth->code == static_cast<std::int32_t>(protocol::AuthCode::kSasl) && !sentInitial) {
      out.mechanisms = auth->mechanisms;
      if (!expectSaslList) {
        out.why = "mechanism list only";
        return out;
      }
      auto first = scram.clientFirst();
      if (std::holds_alternative<protocol::AuthFailure>(first)) {
        out.why = "clientFirst failed";
        return out;
      }
      protocol::encodeSaslInitial(scram.mechanism(), std::get<std::string>(first), bytes);
      sentInitial = true;
    } else if (auth->code == static_cast<std::int32_t>(protocol::AuthCode::kSaslContinue)) {
      auto final = scram.serverFirst(protocol::asString(auth->data));
      if (std::holds_alternative<protocol::AuthFailure>(final)) {
        out.why = "serverFirst failed: " + std::get<protocol::AuthFailure>(final).message;
        return out;
      }
      protocol::encodeSaslResponse(std::get<std::string>(final), bytes);
    } else {
      out.why = "unexpected authentication code " + std::to_string(auth->code);
      return out;
    }
    if (!c.send(bytes)) {
      out.why = "send failed";
      return out;
    }
  }
}

// Regression: every FATAL the proxy wrote itself used to crash the whole proxy
// ("free(): invalid pointer") because GCC 12 destroys a braced temporary passed
// into a co_await expression twice (`co_await sendError({"FATAL", ...})`). The
// proxy now names such values first. The tests below that end in a
// proxy-written FATAL and then require the proxy to keep serving (and to exit
// 0 on SIGTERM) catch that class of bug.

// ---- fixture: certificates and one default (scram-sha-256, plain TCP) source --

class TlsAuth : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    certs_ = makeTestCerts();
    wrongCa_ = makeSelfSignedCert(certs_.dir, "localhost");
    source_ = std::make_unique<PgCluster>();
  }
  static void TearDownTestSuite() { source_.reset(); }

  static ProxyOptions plainOptions() {
    ProxyOptions o;
    o.sourceUrl = source_->url();
    return o;
  }
  static ProxyOptions tlsOptions(const std::string& mode) {
    ProxyOptions o = plainOptions();
    o.tlsMode = mode;
    o.certFile = certs_.serverCert;
    o.keyFile = certs_.serverKey;
    return o;
  }
  static std::string verifyFull() { return "sslmode=verify-full sslrootcert=" + certs_.caCert; }

  static TestCerts certs_;
  static CertPair wrongCa_;
  static std::unique_ptr<PgCluster> source_;
};
TestCerts TlsAuth::certs_;
CertPair TlsAuth::wrongCa_;
std::unique_ptr<PgCluster> TlsAuth::source_;

// ---- client side: client_tls modes ---------------------------------------------

TEST_F(TlsAuth, PreferServesVerifiedTlsAndPlaintext) {
  ProxyProcess proxy(tlsOptions("prefer"));

  for (const std::string host : {"localhost", "127.0.0.1"}) {  // DNS and IP SAN
    Attempt a = attempt(proxyConninfo(proxy, "app", "app-secret", verifyFull(), host));
    ASSERT_TRUE(a.ok) << host << ": " << a.error;
    EXPECT_EQ(PQsslInUse(a.conn.get()), 1);
    const char* proto = PQsslAttribute(a.conn.get(), "protocol");
    const std::string protocol = proto != nullptr ? proto : "";
    EXPECT_TRUE(protocol == "TLSv1.2" || protocol == "TLSv1.3") << protocol;
    EXPECT_EQ(scalar(a.conn.get(), "SELECT 40 + 2"), "42");
  }

  Attempt plain = attempt(proxyConninfo(proxy, "app", "app-secret", "sslmode=disable"));
  ASSERT_TRUE(plain.ok) << plain.error;
  EXPECT_EQ(PQsslInUse(plain.conn.get()), 0);
  EXPECT_EQ(scalar(plain.conn.get(), "SELECT 1"), "1");

  // A client that trusts another root refuses the proxy's certificate.
  Attempt wrong = attempt(proxyConninfo(proxy, "app", "app-secret",
                                        "sslmode=verify-full sslrootcert=" + wrongCa_.cert));
  EXPECT_FALSE(wrong.ok);
  EXPECT_FALSE(wrong.timedOut);
  EXPECT_NE(wrong.error.find("certificate verify failed"), std::string::npos) << wrong.error;
  EXPECT_EQ(wrong.sqlstate, "");
}

TEST_F(TlsAuth, RequireRefusesPlaintextWith28000) {  // B23
  ProxyProcess proxy(tlsOptions("require"));
  const double before = metricOf(proxy, kTlsRejectMetric);

  Attempt plain = attempt(proxyConninfo(proxy, "app", "app-secret", "sslmode=disable"));
  EXPECT_FALSE(plain.ok);
  EXPECT_FALSE(plain.timedOut);
  EXPECT_EQ(plain.severity, "FATAL") << plain.error;
  EXPECT_EQ(plain.sqlstate, "28000") << plain.error;
  EXPECT_EQ(plain.message,
            "pghandoff requires SSL for user \"app\" (client_tls.mode is require), no encryption");
  EXPECT_EQ(metricOf(proxy, kTlsRejectMetric) - before, 1.0);

  for (const std::string mode : {"require", "prefer"}) {
    Attempt tls = attempt(proxyConninfo(proxy, "app", "app-secret", "sslmode=" + mode));
    ASSERT_TRUE(tls.ok) << mode << ": " << tls.error;
    EXPECT_EQ(PQsslInUse(tls.conn.get()), 1);
    EXPECT_EQ(scalar(tls.conn.get(), "SELECT 2"), "2");
  }
  Attempt verified = attempt(proxyConninfo(proxy, "app", "app-secret", verifyFull(), "localhost"));
  ASSERT_TRUE(verified.ok) << verified.error;
  EXPECT_EQ(metricOf(proxy, kTlsRejectMetric) - before, 1.0);
}

TEST_F(TlsAuth, DisableAnswersNoToSslRequest) {
  ProxyProcess proxy(plainOptions());  // client_tls.mode: disable

  Attempt req = attempt(proxyConninfo(proxy, "app", "app-secret", "sslmode=require"));
  EXPECT_FALSE(req.ok);
  EXPECT_FALSE(req.timedOut);
  EXPECT_NE(req.error.find("server does not support SSL, but SSL was required"), std::string::npos)
      << req.error;
  EXPECT_EQ(req.sqlstate, "");

  for (const std::string mode : {"disable", "prefer"}) {
    Attempt a = attempt(proxyConninfo(proxy, "app", "app-secret", "sslmode=" + mode));
    ASSERT_TRUE(a.ok) << mode << ": " << a.error;
    EXPECT_EQ(PQsslInUse(a.conn.get()), 0);
    EXPECT_EQ(scalar(a.conn.get(), "SELECT 3"), "3");
  }
}

// ---- client side: auth methods -------------------------------------------------

TEST_F(TlsAuth, ScramPasswordsVerifiersAndUnknownUsers) {  // B26
  const auto made = protocol::makeScramVerifier("verif-pw");
  ASSERT_TRUE(made.has_value());
  const std::string madeVerifier = protocol::formatScramVerifier(*made);
  source_->psql("DROP ROLE IF EXISTS pgverif; CREATE ROLE pgverif LOGIN PASSWORD 'pg-verif-pw'");
  const std::string pgVerifier =
      source_->psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'pgverif'");
  ASSERT_EQ(pgVerifier.rfind("SCRAM-SHA-256$4096:", 0), 0U) << pgVerifier;

  ProxyOptions o = plainOptions();
  o.users = {{"app", "app-secret"}, {"verif", madeVerifier}, {"pgverif", pgVerifier}};
  ProxyProcess proxy(o);
  const double failedBefore = metricOf(proxy, kAuthFailedMetric);

  Attempt ok = attempt(proxyConninfo(proxy, "app", "app-secret"));
  ASSERT_TRUE(ok.ok) << ok.error;
  // The proxy logs in to the source as the URL's user, not as the app's.
  EXPECT_EQ(scalar(ok.conn.get(), "SELECT current_user"), "postgres");

  Attempt wrong = attempt(proxyConninfo(proxy, "app", "not-the-secret"));
  EXPECT_FALSE(wrong.ok);
  EXPECT_EQ(wrong.severity, "FATAL") << wrong.error;
  EXPECT_EQ(wrong.sqlstate, "28P01") << wrong.error;
  EXPECT_EQ(wrong.message, failedFor("app"));

  // No user enumeration: an unknown user walks the same exchange and gets
  // the same answer, naming the user it gave.
  Attempt nobody = attempt(proxyConninfo(proxy, "nobody", "not-the-secret"));
  EXPECT_FALSE(nobody.ok);
  EXPECT_EQ(nobody.severity, wrong.severity);
  EXPECT_EQ(nobody.sqlstate, wrong.sqlstate);
  EXPECT_EQ(nobody.message, failedFor("nobody"));
  std::string shape = nobody.error;
  for (auto p = shape.find("\"nobody\""); p != std::string::npos; p = shape.find("\"nobody\"")) {
    shape.replace(p, 8, "\"app\"");
  }
  EXPECT_EQ(shape, wrong.error);

  for (const auto& [user, pw] : std::vector<std::pair<std::string, std::string>>{
           {"verif", "verif-pw"}, {"pgverif", "pg-verif-pw"}}) {
    Attempt v = attempt(proxyConninfo(proxy, user, pw));
    ASSERT_TRUE(v.ok) << user << ": " << v.error;
    EXPECT_EQ(scalar(v.conn.get(), "SELECT 5"), "5");
    Attempt bad = attempt(proxyConninfo(proxy, user, pw + "x"));
    EXPECT_FALSE(bad.ok);
    EXPECT_EQ(bad.sqlstate, "28P01") << bad.error;
    EXPECT_EQ(bad.message, failedFor(user));
  }
  EXPECT_EQ(metricOf(proxy, kAuthFailedMetric) - failedBefore, 4.0);

  // Over plaintext the proxy offers no SCRAM-SHA-256-PLUS: libpq gives up by
  // itself (B31 from the client's side), and that is not an auth failure.
  Attempt cb =
      attempt(proxyConninfo(proxy, "app", "app-secret", "sslmode=disable channel_binding=require"));
  EXPECT_FALSE(cb.ok);
  EXPECT_FALSE(cb.timedOut);
  EXPECT_NE(cb.error.find("channel binding required, but SSL not in use"), std::string::npos)
      << cb.error;
  EXPECT_EQ(cb.sqlstate, "");

  // Checked after authentication, as PostgreSQL does.
  Attempt db =
      attempt(proxyConninfo(proxy, "app", "app-secret", "sslmode=disable", "127.0.0.1", "nope"));
  EXPECT_FALSE(db.ok);
  EXPECT_EQ(db.severity, "FATAL") << db.error;
  EXPECT_EQ(db.sqlstate, "3D000") << db.error;
  EXPECT_EQ(db.message, "database \"nope\" does not exist");
  Attempt dbBadPw =
      attempt(proxyConninfo(proxy, "app", "wrong", "sslmode=disable", "127.0.0.1", "nope"));
  EXPECT_EQ(dbBadPw.sqlstate, "28P01") << dbBadPw.error;
  EXPECT_EQ(metricOf(proxy, kAuthFailedMetric) - failedBefore, 5.0);
}

TEST_F(TlsAuth, ChannelBindingRequireOverTlsLeavesNoSecretInLog) {
  ProxyProcess proxy(tlsOptions("require"));
  for (const std::string host : {"localhost", "127.0.0.1"}) {
    Attempt a = attempt(
        proxyConninfo(proxy, "app", "app-secret", verifyFull() + " channel_binding=require", host));
    ASSERT_TRUE(a.ok) << host << ": " << a.error;
    EXPECT_EQ(PQsslInUse(a.conn.get()), 1);
    EXPECT_EQ(scalar(a.conn.get(), "SELECT 'bound'"), "bound");
  }
  Attempt wrong = attempt(
      proxyConninfo(proxy, "app", "app-secretX", "sslmode=require channel_binding=require"));
  EXPECT_EQ(wrong.sqlstate, "28P01") << wrong.error;
  EXPECT_EQ(proxy.stop(), 0) << tailFile(proxy.logFile());  // SIGTERM: a clean exit, no crash
  const std::string log = proxy.log();
  EXPECT_EQ(countOf(log, "app-secret"), 0U);
  // base64("p=tls-server-end-point,,") and base64("n,,") open every
  // client-final-message: no SCRAM message is logged, even at debug.
  EXPECT_EQ(countOf(log, "cD10bHMtc2VydmVyLWVuZC1wb2ludCws"), 0U);
  EXPECT_EQ(countOf(log, "c=biws"), 0U);
  EXPECT_EQ(countOf(log, "SCRAM-SHA-256$"), 0U);
}

// B29, B30, B31: what libpq never sends, by hand.
TEST_F(TlsAuth, ChannelBindingAbuseIsRefused) {
  ProxyProcess proxy(tlsOptions("prefer"));
  const double failedBefore = metricOf(proxy, kAuthFailedMetric);
  {
    // B29: over TLS the proxy lists PLUS; a client answering "y" (I could
    // bind, but you did not offer it) means someone stripped PLUS.
    RawClient c(proxy.port());
    ASSERT_TRUE(c.connected());
    ASSERT_TRUE(c.startTls());
    const auto cbind = c.peerEndPoint();
    ASSERT_EQ(cbind.size(), 32U);
    protocol::ScramClient scram("app-secret", cbind, /*serverOffersPlus=*/false);
    const ScramProbe p = probeScram(c, "app", scram, true);
    EXPECT_EQ(p.mechanisms, (std::vector<std::string>{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}));
    ASSERT_TRUE(p.error.has_value()) << p.why;
    EXPECT_EQ(p.error->severity, "FATAL");
    EXPECT_EQ(p.error->code, "28000");
    EXPECT_EQ(p.error->message, "SCRAM channel binding negotiation error");
  }
  {
    // B30: PLUS with binding data that is not the proxy's certificate (a
    // man in the middle's), even with the right password.
    RawClient c(proxy.port());
    ASSERT_TRUE(c.startTls());
    std::vector<std::uint8_t> cbind = c.peerEndPoint();
    ASSERT_EQ(cbind.size(), 32U);
    cbind[0] ^= 0xff;
    protocol::ScramClient scram("app-secret", cbind, /*serverOffersPlus=*/true);
    ASSERT_EQ(scram.mechanism(), "SCRAM-SHA-256-PLUS");
    const ScramProbe p = probeScram(c, "app", scram, true);
    ASSERT_TRUE(p.error.has_value()) << p.why;
    EXPECT_EQ(p.error->severity, "FATAL");
    EXPECT_EQ(p.error->code, "28000");
    EXPECT_EQ(p.error->message, "SCRAM channel binding check failed");
  }
  {
    // B31: PLUS selected over plaintext, where it was not offered.
    RawClient c(proxy.port());
    ASSERT_TRUE(c.connected());
    protocol::ScramClient scram("app-secret", std::vector<std::uint8_t>(32, 7), true);
    const ScramProbe p = probeScram(c, "app", scram, true);
    EXPECT_EQ(p.mechanisms, (std::vector<std::string>{"SCRAM-SHA-256"}));
    ASSERT_TRUE(p.error.has_value()) << p.why;
    EXPECT_EQ(p.error->severity, "FATAL");
    EXPECT_EQ(p.error->code, "08P01");
    EXPECT_EQ(p.error->message, "client selected an invalid SASL authentication mechanism");
  }
  {
    // Control: the same hand-made client with the right binding logs in.
    RawClient c(proxy.port());
    ASSERT_TRUE(c.startTls());
    protocol::ScramClient scram("app-secret", c.peerEndPoint(), true);
    const ScramProbe p = probeScram(c, "app", scram, true);
    EXPECT_FALSE(p.error.has_value()) << p.error->message;
    EXPECT_EQ(p.why, "unexpected authentication code 12");  // AuthenticationSASLFinal
  }
  EXPECT_EQ(metricOf(proxy, kAuthFailedMetric) - failedBefore, 3.0);
}

TEST_F(TlsAuth, Md5MethodWithPlaintextHashAndScramSecrets) {
  const auto made = protocol::makeScramVerifier("scram-only-pw");
  ASSERT_TRUE(made.has_value());
  ProxyOptions o = plainOptions();
  o.authMethod = "md5";
  o.users = {{"app", "app-secret"},
             {"hashed", protocol::md5StoredHash("hashed-pw", "hashed")},
             {"scramonly", protocol::formatScramVerifier(*made)}};
  ProxyProcess proxy(o);
  const double failedBefore = metricOf(proxy, kAuthFailedMetric);

  // "hashed" has nothing but an MD5 hash: only the MD5 exchange can log it in.
  for (const auto& [user, pw] : std::vector<std::pair<std::string, std::string>>{
           {"app", "app-secret"}, {"hashed", "hashed-pw"}, {"scramonly", "scram-only-pw"}}) {
    Attempt a = attempt(proxyConninfo(proxy, user, pw));
    ASSERT_TRUE(a.ok) << user << ": " << a.error;
    EXPECT_EQ(scalar(a.conn.get(), "SELECT 6"), "6");
    Attempt bad = attempt(proxyConninfo(proxy, user, pw + "!"));
    EXPECT_FALSE(bad.ok);
    EXPECT_EQ(bad.severity, "FATAL") << bad.error;
    EXPECT_EQ(bad.sqlstate, "28P01") << bad.error;
    EXPECT_EQ(bad.message, failedFor(user));
  }
  Attempt nobody = attempt(proxyConninfo(proxy, "nobody", "whatever"));
  EXPECT_FALSE(nobody.ok);
  EXPECT_EQ(nobody.severity, "FATAL") << nobody.error;
  EXPECT_EQ(nobody.sqlstate, "28P01") << nobody.error;
  EXPECT_EQ(nobody.message, failedFor("nobody"));
  EXPECT_EQ(metricOf(proxy, kAuthFailedMetric) - failedBefore, 4.0);
}

TEST_F(TlsAuth, TrustMethodChecksOnlyTheUserList) {
  ProxyOptions o = plainOptions();
  o.authMethod = "trust";
  o.users = {{"app", ""}, {"other", "other-pw"}};
  ProxyProcess proxy(o);

  Attempt app = attempt(proxyConninfo(proxy, "app", ""));
  ASSERT_TRUE(app.ok) << app.error;
  EXPECT_EQ(scalar(app.conn.get(), "SELECT 7"), "7");
  EXPECT_EQ(PQconnectionUsedPassword(app.conn.get()), 0);
  Attempt other = attempt(proxyConninfo(proxy, "other", "any-password-at-all"));
  ASSERT_TRUE(other.ok) << other.error;
  EXPECT_EQ(PQconnectionUsedPassword(other.conn.get()), 0);

  Attempt x = attempt(proxyConninfo(proxy, "x", ""));
  EXPECT_FALSE(x.ok);
  EXPECT_EQ(x.severity, "FATAL") << x.error;
  EXPECT_EQ(x.sqlstate, "28000") << x.error;
  EXPECT_EQ(x.message, "role \"x\" does not exist");

  Attempt db = attempt(proxyConninfo(proxy, "app", "", "sslmode=disable", "127.0.0.1", "nope"));
  EXPECT_EQ(db.sqlstate, "3D000") << db.error;
  EXPECT_EQ(db.message, "database \"nope\" does not exist");
}

// ---- server side: the proxy's connection to the source ---------------------------

std::string sourceUrlAt(const PgCluster& c, const std::string& host, const std::string& password,
                        const std::string& query) {
  return "postgresql://postgres:" + urlEncode(password) + "@" + host + ":" +
         std::to_string(c.port()) + "/postgres?" + query;
}

TEST_F(TlsAuth, HostsslOnlySourceNeverGetsPlaintext) {  // F21
  ClusterOptions co;
  co.ssl = true;
  co.certDir = certs_.dir;
  co.hostsslOnly = true;
  PgCluster tls(co);
  const std::string pw = tls.superPassword();
  const std::string sslOfBackend = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

  for (const std::string& url :
       {sourceUrlAt(tls, "localhost", pw,
                    "sslmode=verify-full&sslrootcert=" + urlEncode(certs_.caCert)),
        sourceUrlAt(tls, "127.0.0.1", pw,
                    "sslmode=verify-full&sslrootcert=" + urlEncode(certs_.caCert)),
        sourceUrlAt(tls, "127.0.0.1", pw, "sslmode=require")}) {
    ProxyOptions o;
    o.sourceUrl = url;
    ProxyProcess proxy(o);
    Attempt a = attempt(proxyConninfo(proxy, "app", "app-secret"));
    ASSERT_TRUE(a.ok) << url << ": " << a.error;
    EXPECT_EQ(scalar(a.conn.get(), sslOfBackend), "t") << url;
    EXPECT_EQ(countOf(proxy.log(), pw), 0U);
  }

  {
    // sslmode=disable: the server's own refusal reaches the client as FATAL.
    ProxyOptions o;
    o.sourceUrl = sourceUrlAt(tls, "127.0.0.1", pw, "sslmode=disable");
    ProxyProcess proxy(o);
    Attempt a = attempt(proxyConninfo(proxy, "app", "app-secret"));
    EXPECT_FALSE(a.ok);
    EXPECT_FALSE(a.timedOut);
    EXPECT_LT(a.elapsed, 10s);
    EXPECT_EQ(a.severity, "FATAL") << a.error;
    EXPECT_EQ(a.sqlstate, "28000") << a.error;
    // The cluster rejects plain TCP with "hostnossl ... reject" lines.
    EXPECT_EQ(a.message,
              "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"postgres\", "
              "database \"postgres\", no encryption");
  }

  // verify-full against a root that did not sign the server's certificate:
  // refused, and never retried in plaintext.
  const std::size_t logBefore = tls.log().size();
  for (const std::string host : {"localhost", "127.0.0.1"}) {
    ProxyOptions o;
    o.sourceUrl =
        sourceUrlAt(tls, host, pw, "sslmode=verify-full&sslrootcert=" + urlEncode(wrongCa_.cert));
    ProxyProcess proxy(o);
    Attempt a = attempt(proxyConninfo(proxy, "app", "app-secret"));
    EXPECT_FALSE(a.ok);
    EXPECT_FALSE(a.timedOut);
    EXPECT_LT(a.elapsed, 10s);
    EXPECT_EQ(a.severity, "FATAL") << a.error;
    EXPECT_EQ(a.sqlstate, "08001") << a.error;
    EXPECT_NE(a.message.find("SSL"), std::string::npos) << a.message;
    EXPECT_NE(a.message.find("certificate verify failed"), std::string::npos) << a.message;
    EXPECT_EQ(countOf(proxy.log(), pw), 0U);
  }
  // The server saw TLS handshakes the proxy abandoned, and no plaintext
  // startup (hostssl only: one would be logged as "no encryption").
  EXPECT_TRUE(waitFor(
      [&] { return countOf(tls.log().substr(logBefore), "could not accept SSL connection") >= 2; },
      5s))
      << tls.log().substr(logBefore);
  EXPECT_EQ(countOf(tls.log().substr(logBefore), "no encryption"), 0U)
      << tls.log().substr(logBefore);
}

TEST_F(TlsAuth, SourcePasswordMethodsAndWrongSourcePassword) {
  struct Case {
    std::string method;
    PgCluster* cluster;
  };
  std::vector<std::unique_ptr<PgCluster>> owned;
  std::vector<Case> cases{{"scram-sha-256", source_.get()}};
  for (const std::string method : {"md5", "password", "trust"}) {
    ClusterOptions co;
    co.hbaMethod = method;
    owned.push_back(std::make_unique<PgCluster>(co));
    cases.push_back({method, owned.back().get()});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.method);
    PgCluster& cl = *c.cluster;
    const std::string wrongPw = "wrong-src-" + randomHex(10);
    {
      ProxyOptions o;
      o.sourceUrl = cl.url();
      ProxyProcess proxy(o);
      Attempt a = attempt(proxyConninfo(proxy, "app", "app-secret"));
      ASSERT_TRUE(a.ok) << a.error;
      EXPECT_EQ(scalar(a.conn.get(), "SELECT current_user"), "postgres");
      // The method the server really applied to the proxy's connection.
      EXPECT_EQ(scalar(a.conn.get(),
                       "SELECT auth_method FROM pg_hba_file_rules "
                       "WHERE type = 'host' AND 'all' = ANY(database)"),
                c.method);
      if (c.method == "md5") {
        // An MD5-stored password: PostgreSQL really runs the MD5 exchange.
        EXPECT_EQ(scalar(a.conn.get(),
                         "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'postgres'"),
                  "md5");
      }
      a.conn.reset();
      proxy.stop();
      EXPECT_EQ(countOf(proxy.log(), cl.superPassword()), 0U);
    }
    {
      ProxyOptions o;
      o.sourceUrl = cl.url("postgres", "postgres", wrongPw);
      ProxyProcess proxy(o);
      const std::size_t serverLogBefore = cl.log().size();
      Attempt a = attempt(proxyConninfo(proxy, "app", "app-secret"));
      if (c.method == "trust") {
        // The server never asks: a wrong password cannot matter.
        ASSERT_TRUE(a.ok) << a.error;
        EXPECT_EQ(scalar(a.conn.get(), "SELECT 8"), "8");
      } else {
        EXPECT_FALSE(a.ok);
        EXPECT_FALSE(a.timedOut);
        EXPECT_EQ(a.severity, "FATAL") << a.error;
        EXPECT_EQ(a.sqlstate, "28P01") << a.error;
        EXPECT_EQ(a.message, failedFor("postgres"));
        // One client attempt, one upstream attempt: known-bad credentials
        // are not retried (RELIABILITY §4).
        EXPECT_EQ(countOf(cl.log().substr(serverLogBefore), failedFor("postgres")), 1U)
            << cl.log().substr(serverLogBefore);
      }
      a.conn.reset();
      proxy.stop();
      EXPECT_EQ(countOf(proxy.log(), wrongPw), 0U);
    }
  }
}

// ---- secret redaction canary -------------------------------------------------------

void runCanaryScenario(PgCluster& source, const TestCerts& certs, const std::string& format) {
  const std::string tag = randomHex(12);
  const std::string appPw = "cnryapp" + tag;
  const std::string vappPw = "cnryvapp" + tag;
  const std::string srcPw = "cnrysrc" + tag;
  const std::string badSrcPw = "cnrybadsrc" + tag;
  const std::string token = "cnrytok" + tag;
  const std::string wrongPw = "cnrywrong" + tag;
  const auto verifier = protocol::makeScramVerifier(vappPw);
  ASSERT_TRUE(verifier.has_value());
  const std::string verifierText = protocol::formatScramVerifier(*verifier);
  const std::string verifierKeys = verifierText.substr(verifierText.rfind('$') + 1);
  const std::string role = "canary_" + tag;
  source.createRole(role, srcPw);

  ProxyOptions o;
  o.sourceUrl = source.url("postgres", role, srcPw);
  o.tlsMode = "prefer";
  o.certFile = certs.serverCert;
  o.keyFile = certs.serverKey;
  o.users = {{"app", appPw}, {"vapp", verifierText}};
  o.adminToken = token;
  o.logLevel = "debug";
  o.logFormat = format;
  ProxyProcess proxy(o);

  ProxyOptions badOptions = o;
  badOptions.sourceUrl = source.url("postgres", role, badSrcPw);
  ProxyProcess badSource(badOptions);

  std::string clientSide;  // everything the clients were told
  const std::string verify = "sslmode=verify-full sslrootcert=" + certs.caCert;
  for (const std::string& extra :
       {std::string("sslmode=disable"), verify + " channel_binding=require"}) {
    Attempt a = attempt(proxyConninfo(proxy, "app", appPw, extra, "localhost"));
    ASSERT_TRUE(a.ok) << a.error;
    EXPECT_EQ(scalar(a.conn.get(), "SELECT current_user"), role);
    Attempt v = attempt(proxyConninfo(proxy, "vapp", vappPw, extra, "localhost"));
    ASSERT_TRUE(v.ok) << v.error;
    for (const std::string user : {"app", "vapp", "nobody"}) {
      Attempt bad = attempt(proxyConninfo(proxy, user, wrongPw, extra, "localhost"));
      EXPECT_EQ(bad.sqlstate, "28P01") << bad.error;
      clientSide += bad.error;
    }
    // The source refuses the proxy: its error is relayed.
    Attempt up = attempt(proxyConninfo(badSource, "app", appPw, extra, "localhost"));
    EXPECT_EQ(up.sqlstate, "28P01") << up.error;
    clientSide += up.error;
    // An unknown database, after a good password.
    Attempt db = attempt(proxyConninfo(proxy, "app", appPw, extra, "localhost", "nope"));
    EXPECT_EQ(db.sqlstate, "3D000") << db.error;
    clientSide += db.error;
  }

  const std::string metrics = proxy.metrics();
  const HttpResponse status = proxy.http("GET", "/status");
  EXPECT_EQ(status.status, 200);
  const HttpResponse denied = httpRequest(proxy.adminPort(), "GET", "/status", {},
                                          {{"Authorization", "Bearer " + wrongPw}});
  EXPECT_EQ(denied.status, 401);
  const std::string badMetrics = badSource.metrics();

  EXPECT_TRUE(proxy.signal(SIGHUP));
  EXPECT_TRUE(waitFor([&] { return proxy.log().find("reload done") != std::string::npos; }, 10s))
      << proxy.log();
  EXPECT_EQ(proxy.stop(), 0);
  EXPECT_EQ(badSource.stop(), 0);

  const std::vector<std::pair<std::string, std::string>> texts = {
      {"proxy log", proxy.log()},   {"bad-source proxy log", badSource.log()},
      {"/metrics", metrics},        {"bad-source /metrics", badMetrics},
      {"/status", status.body},     {"401 body", denied.body},
      {"client errors", clientSide}};
  for (const std::string& canary :
       {appPw, vappPw, srcPw, badSrcPw, token, wrongPw, verifierText, verifierKeys}) {
    for (const auto& [what, text] : texts) {
      EXPECT_EQ(countOf(text, canary), 0U) << "canary " << canary << " found in " << what;
    }
  }
  // The runs did happen and were logged (a silent log would pass trivially),
  // and the source URL's user is logged, just not its password.
  EXPECT_NE(proxy.log().find("authentication failed for user"), std::string::npos);
  EXPECT_NE(proxy.log().find("user=" + role), std::string::npos) << proxy.log();
  EXPECT_NE(badSource.log().find("login to the source failed"), std::string::npos);

  if (format == "json") {
    std::size_t lines = 0;
    std::istringstream in(proxy.log() + badSource.log());
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty()) {
        continue;
      }
      ++lines;
      EXPECT_EQ(line.rfind("{\"ts\":\"", 0), 0U) << line;
      EXPECT_TRUE(line.size() >= 2 && line.compare(line.size() - 2, 2, "\"}") == 0) << line;
    }
    EXPECT_GT(lines, 10U);
  }
}

TEST_F(TlsAuth, SecretCanariesTextLog) {
  runCanaryScenario(*source_, certs_, "text");
}
TEST_F(TlsAuth, SecretCanariesJsonLog) {
  runCanaryScenario(*source_, certs_, "json");
}

}  // namespace
}  // namespace pghandoff::test
