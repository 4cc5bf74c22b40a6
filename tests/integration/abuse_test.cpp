// Abuse at scale against the real proxy in the pass-through phase
// (source-only), RELIABILITY.md rows:
//   B6   1,000 slowloris sockets: good clients are not blocked, every slow
//        socket is closed at limits.startup_timeout and counted once.
//   B16  an SSLRequest or GSSENCRequest sent *inside* an established TLS
//        channel (client_tls prefer and require): FATAL 08P01, then the close.
//   B32  1,000 failed logins from one address as fast as possible: each gets
//        PostgreSQL's 28P01 text, good clients keep being served, and no
//        server connection is opened for any of them (the proxy authenticates
//        clients itself, before it connects upstream).
//
// Errors are decoded with the protocol/ codecs (via RawClient /
// TlsRawClient); every count is asserted as an exact before/after difference.

#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "protocol/error.h"
#include "tests/support/certs.h"
#include "tests/support/pg_cluster.h"
#include "tests/support/pq.h"
#include "tests/support/process.h"
#include "tests/support/proxy_process.h"
#include "tests/support/raw_client.h"
#include "tests/support/tls_raw_client.h"

namespace pghandoff::test {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::string rejectedMetric(const std::string& reason) {
  return "pghandoff_client_connections_rejected_total{reason=\"" + reason + "\"}";
}
std::string errorsMetric(const std::string& sqlstate) {
  return "pghandoff_client_errors_total{sqlstate=\"" + sqlstate + "\"}";
}

long long msOf(Clock::duration d) {
  return std::chrono::duration_cast<milliseconds>(d).count();
}

std::string hex(const std::vector<std::uint8_t>& bytes) {
  std::string out;
  char b[4];
  for (auto c : bytes) {
    std::snprintf(b, sizeof(b), "%02x", static_cast<unsigned>(c));
    out += b;
  }
  return out;
}

std::string typesOf(const std::vector<BackendMessage>& messages) {
  std::string s;
  for (const auto& m : messages) s.push_back(m.type);
  return s;
}

// PostgreSQL logs one "connection received" line per accepted TCP connection
// when log_connections is on (src/backend/postmaster/postmaster.c
// BackendInitialize), before authentication: it counts every connection the
// proxy opens to the source, successful or not.
std::size_t countConnectionsReceived(const std::string& log) {
  static const std::string kNeedle = "connection received: ";
  std::size_t n = 0;
  for (auto pos = log.find(kNeedle); pos != std::string::npos;
       pos = log.find(kNeedle, pos + kNeedle.size())) {
    ++n;
  }
  return n;
}

class Abuse : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    certs_ = std::make_unique<TestCerts>(makeTestCerts());
    ClusterOptions o;
    o.extraConf = {"log_connections = on"};
    source_ = std::make_unique<PgCluster>(o);
    for (const char* mode : {"prefer", "require"}) {
      ProxyOptions p;
      p.sourceUrl = source_->url();
      p.tlsMode = mode;
      p.certFile = certs_->serverCert;
      p.keyFile = certs_->serverKey;
      (std::string(mode) == "prefer" ? tlsPrefer_ : tlsRequire_) =
          std::make_unique<ProxyProcess>(p);
    }
  }
  static void TearDownTestSuite() {
    tlsRequire_.reset();
    tlsPrefer_.reset();
    source_.reset();
    certs_.reset();
  }

  static std::unique_ptr<TestCerts> certs_;
  static std::unique_ptr<PgCluster> source_;
  static std::unique_ptr<ProxyProcess> tlsPrefer_;   // client_tls.mode: prefer
  static std::unique_ptr<ProxyProcess> tlsRequire_;  // client_tls.mode: require
};

std::unique_ptr<TestCerts> Abuse::certs_;
std::unique_ptr<PgCluster> Abuse::source_;
std::unique_ptr<ProxyProcess> Abuse::tlsPrefer_;
std::unique_ptr<ProxyProcess> Abuse::tlsRequire_;

// ---------------------------------------------------------------------------
// B6 at scale

TEST_F(Abuse, B6ThousandSlowlorisSocketsDoNotBlockGoodClientsAndCloseAtStartupTimeout) {
  constexpr int kSlow = 1000;
  constexpr milliseconds kStartupTimeout{2000};
  // Accept lag on this loaded 2-core machine: the proxy's timer starts at
  // accept, our clock at connect().
  constexpr milliseconds kCloseMargin{2500};
  // RELIABILITY's slowloris sends a byte every 5 s against a 10 s timeout;
  // scaled down to the 2 s timeout here.
  constexpr milliseconds kDripInterval{1000};

  // Each slow socket costs one descriptor here and one in the proxy, which
  // inherits our limits (fork/exec).
  rlimit lim{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &lim), 0);
  if (lim.rlim_max != RLIM_INFINITY && lim.rlim_max < 2300) {
    GTEST_SKIP() << "RLIMIT_NOFILE hard limit is " << lim.rlim_max
                 << "; 1,000 slowloris sockets need ~2300 descriptors (ulimit -Hn)";
  }
  lim.rlim_cur = lim.rlim_max;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &lim), 0) << std::strerror(errno);

  ProxyOptions o;
  o.sourceUrl = source_->url();
  o.extraYaml = "limits: {max_client_connections: 2000, startup_timeout: 2s}";
  o.logLevel = "info";  // 1,000 sessions' debug lines would only slow the proxy down
  ProxyProcess proxy(o);

  const double timeouts0 = proxy.metric(rejectedMetric("startup_timeout"));
  const double protocol0 = proxy.metric(rejectedMetric("protocol"));
  const double tooMany0 = proxy.metric(rejectedMetric("too_many"));
  const double open0 = proxy.metric("pghandoff_client_connections");

  // A complete startup packet is never sent: only its first bytes, one at a time.
  const std::vector<std::uint8_t> packet =
      startupPacket({{"user", "app"}, {"database", "postgres"}});
  struct Slow {
    RawClient c;
    Clock::time_point opened;
    std::optional<Clock::time_point> closed;
    std::size_t sent = 0;
    std::size_t received = 0;
  };
  std::vector<Slow> slow;
  slow.reserve(kSlow);
  for (int i = 0; i < kSlow; ++i) {
    std::string error;
    auto c = RawClient::tryConnect(proxy.port(), &error);
    ASSERT_TRUE(c.has_value()) << "slow socket " << i << ": " << error;
    slow.push_back(Slow{std::move(*c), Clock::now(), std::nullopt, 0, 0});
    ASSERT_TRUE(slow.back().c.send(std::span<const std::uint8_t>(packet.data(), 1)));
    slow.back().sent = 1;
  }
  const Clock::time_point firstOpened = slow.front().opened;
  const Clock::time_point lastOpened = slow.back().opened;

  // Marks the slow sockets the proxy closed (EOF or reset) within timeout;
  // the number still open.
  auto pollSlow = [&slow](milliseconds timeout) {
    std::vector<pollfd> fds;
    std::vector<std::size_t> index;
    for (std::size_t i = 0; i < slow.size(); ++i) {
      if (slow[i].closed) continue;
      fds.push_back(pollfd{slow[i].c.fd(), POLLIN, 0});
      index.push_back(i);
    }
    if (fds.empty()) return std::size_t{0};
    const int r = ::poll(fds.data(), fds.size(), static_cast<int>(timeout.count()));
    std::size_t stillOpen = fds.size();
    if (r <= 0) return stillOpen;
    const auto now = Clock::now();
    for (std::size_t k = 0; k < fds.size(); ++k) {
      if (fds[k].revents == 0) continue;
      Slow& s = slow[index[k]];
      std::uint8_t buf[512];
      const ssize_t n = ::recv(s.c.fd(), buf, sizeof(buf), MSG_DONTWAIT);
      if (n > 0) {
        s.received += static_cast<std::size_t>(n);
      } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        s.closed = now;
        --stillOpen;
      }
    }
    return stillOpen;
  };

  // All 1,000 are sessions in the proxy at the same time.
  ASSERT_TRUE(waitFor(
      [&] { return proxy.metric("pghandoff_client_connections") - open0 == double(kSlow); }, 5s))
      << "client_connections grew by " << proxy.metric("pghandoff_client_connections") - open0
      << " after " << msOf(Clock::now() - firstOpened) << " ms";

  // A real libpq client logs in and queries while they are all open, without
  // waiting for any of their timeouts.
  {
    const auto g0 = Clock::now();
    PqConn good(proxy.url());
    ASSERT_TRUE(good.ok()) << good.error();
    PqResult r = good.exec("SELECT 1");
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.value(), "1");
    const auto took = Clock::now() - g0;
    EXPECT_LT(took, 1s) << "a good client took " << msOf(took)
                        << " ms with 1,000 slowloris sockets open";
  }
  const auto goodDone = Clock::now();
  EXPECT_EQ(pollSlow(milliseconds(0)), std::size_t{kSlow})
      << "slow sockets were closed before the good client finished ("
      << msOf(goodDone - firstOpened) << " ms after the first connect; startup_timeout 2 s)";

  // Keep dripping one more byte per socket every second until the proxy
  // closes them all.
  const auto deadline = lastOpened + kStartupTimeout + kCloseMargin;
  auto nextDrip = firstOpened + kDripInterval;
  std::size_t stillOpen = kSlow;
  while (stillOpen > 0 && Clock::now() < deadline) {
    if (Clock::now() >= nextDrip) {
      for (auto& s : slow) {
        // A socket the proxy just closed may refuse the byte: that is fine.
        if (!s.closed && s.sent + 1 < packet.size()) {
          (void)s.c.send(std::span<const std::uint8_t>(packet.data() + s.sent, 1));
          ++s.sent;
        }
      }
      nextDrip += kDripInterval;
    }
    const auto wakeUp = std::min(nextDrip, deadline);
    stillOpen = pollSlow(
        std::max(std::chrono::duration_cast<milliseconds>(wakeUp - Clock::now()), milliseconds(1)));
  }
  EXPECT_EQ(stillOpen, 0U) << "slow sockets still open " << msOf(Clock::now() - lastOpened)
                           << " ms after the last connect (startup_timeout 2 s)";

  // Each one was closed at its own timeout: not before, not long after.
  int early = 0, late = 0, answered = 0;
  Clock::duration minLife = Clock::duration::max(), maxLife = Clock::duration::zero();
  for (const auto& s : slow) {
    if (s.received > 0) ++answered;
    if (!s.closed) continue;
    const auto life = *s.closed - s.opened;
    minLife = std::min(minLife, life);
    maxLife = std::max(maxLife, life);
    if (life < kStartupTimeout - milliseconds(50)) ++early;
    if (life > kStartupTimeout + kCloseMargin) ++late;
  }
  EXPECT_EQ(early, 0) << "closed before startup_timeout; shortest life " << msOf(minLife) << " ms";
  EXPECT_EQ(late, 0) << "closed later than startup_timeout + " << kCloseMargin.count()
                     << " ms; longest life " << msOf(maxLife) << " ms";
  // PostgreSQL sends nothing to a client whose startup timed out; neither do we.
  EXPECT_EQ(answered, 0) << "slow sockets that received bytes before the close";
  std::printf("[ B6 ] 1000 slow sockets: lives %lld..%lld ms (startup_timeout 2000 ms)\n",
              static_cast<long long>(msOf(minLife)), static_cast<long long>(msOf(maxLife)));

  // Counted exactly once each, under startup_timeout only.
  EXPECT_TRUE(waitFor(
      [&] { return proxy.metric(rejectedMetric("startup_timeout")) - timeouts0 >= kSlow; }, 5s));
  EXPECT_EQ(proxy.metric(rejectedMetric("startup_timeout")) - timeouts0, double(kSlow));
  EXPECT_EQ(proxy.metric(rejectedMetric("protocol")) - protocol0, 0.0);
  EXPECT_EQ(proxy.metric(rejectedMetric("too_many")) - tooMany0, 0.0);
  EXPECT_TRUE(waitFor([&] { return proxy.metric("pghandoff_client_connections") == open0; }, 5s))
      << "client_connections is " << proxy.metric("pghandoff_client_connections") << ", was "
      << open0;

  // And the proxy still serves after the storm.
  PqConn after(proxy.url());
  ASSERT_TRUE(after.ok()) << after.error();
  EXPECT_EQ(after.execOrThrow("SELECT 2").value(), "2");
  EXPECT_TRUE(proxy.running());
}

// ---------------------------------------------------------------------------
// B16 after TLS is up

// Completes the TLS handshake, sends request inside TLS and expects exactly
// one FATAL 08P01 ErrorResponse, then the close.
void expectRejectedInsideTls(ProxyProcess& proxy, const std::string& mode,
                             const std::vector<std::uint8_t>& request, const char* what,
                             const std::optional<std::string>& message) {
  SCOPED_TRACE(std::string(what) + " inside TLS, client_tls.mode " + mode);
  const double errors0 = proxy.metric(errorsMetric("08P01"));
  std::string error;
  auto c = TlsRawClient::open(proxy.port(), &error);
  ASSERT_TRUE(c) << error;
  ASSERT_TRUE(c->send(request));
  const auto t0 = Clock::now();
  CloseResult r = c->readUntilClose(2s);
  ASSERT_TRUE(r.closed) << "still open after " << msOf(Clock::now() - t0) << " ms; messages \""
                        << r.types() << "\", undecoded bytes 0x" << hex(c->buffered());
  ASSERT_EQ(r.types(), "E") << "then " << r.trailingBytes << " trailing bytes 0x"
                            << hex(c->buffered());
  const auto errors = r.errors();
  ASSERT_EQ(errors.size(), 1U);
  EXPECT_EQ(errors[0].severity, "FATAL") << describe(errors[0]);
  EXPECT_EQ(errors[0].code, "08P01") << describe(errors[0]);
  if (message) {
    EXPECT_EQ(errors[0].message, *message);
  }
  EXPECT_EQ(r.trailingBytes, 0U);
  EXPECT_EQ(proxy.metric(errorsMetric("08P01")) - errors0, 1.0);
}

void expectTlsClientServed(ProxyProcess& proxy) {
  PqConn good(proxy.url("app", "app-secret", std::nullopt, "sslmode=require"));
  ASSERT_TRUE(good.ok()) << good.error();
  EXPECT_EQ(good.execOrThrow("SELECT 16").value(), "16");
}

TEST_F(Abuse, B16SslRequestInsideTlsIs08P01ThenClose) {
  for (auto* p : {tlsPrefer_.get(), tlsRequire_.get()}) {
    const std::string mode = p == tlsPrefer_.get() ? "prefer" : "require";
    expectRejectedInsideTls(*p, mode, sslRequest(), "SSLRequest",
                            std::string("duplicate encryption request"));
    expectTlsClientServed(*p);
  }
}

TEST_F(Abuse, B16GssEncRequestInsideTlsIs08P01ThenClose) {
  // PostgreSQL marks GSS done once SSL is accepted (ProcessStartupPacket(port,
  // true, SSLok == 'S')) and refuses the request; we answer 08P01 and close,
  // as for a second SSLRequest.
  for (auto* p : {tlsPrefer_.get(), tlsRequire_.get()}) {
    const std::string mode = p == tlsPrefer_.get() ? "prefer" : "require";
    expectRejectedInsideTls(*p, mode, gssEncRequest(), "GSSENCRequest",
                            std::string("duplicate encryption request"));
    expectTlsClientServed(*p);
  }
}

// ---------------------------------------------------------------------------
// B32

// Login throttling (optional in RELIABILITY B32) was deliberately NOT built:
// a failed login costs the proxy a few HMACs and no server connection, so a
// storm cannot exhaust the source's max_connections or lock roles there, and
// a per-address throttle would also throttle every application instance
// behind one NAT. What is required and checked here: the answer is
// PostgreSQL's, the same for an unknown user as for a wrong password (the
// mock SCRAM exchange of B26: same messages, same text, same SQLSTATE), good
// clients keep being served during and after the storm, and the source sees
// no connection at all for a failed login.
TEST_F(Abuse, B32ThousandFailedLoginsGet28P01AndNeverReachTheSource) {
  constexpr int kFailed = 1000;
  constexpr int kThreads = 8;
  const std::string kWrongPasswordText = "password authentication failed for user \"app\"";

  ProxyOptions o;
  o.sourceUrl = source_->url();
  o.logLevel = "info";
  ProxyProcess proxy(o);

  const double authFailed0 = proxy.metric(rejectedMetric("auth_failed"));
  const double errors0 = proxy.metric(errorsMetric("28P01"));
  const std::size_t received0 = countConnectionsReceived(source_->log());

  // Good clients: one session held open across the storm, new sessions
  // opened in a loop during it, one more after it. Each opens exactly one
  // source connection.
  PqConn steady(proxy.url());
  ASSERT_TRUE(steady.ok()) << steady.error();
  int goodSessions = 1;

  std::atomic<int> next{0}, completed{0}, mismatches{0};
  std::atomic<bool> stormOver{false};
  std::mutex mu;
  std::string firstMismatch;
  std::optional<protocol::ErrorFields> sample;  // one wrong-password error, for B26 below
  std::string sampleTypes;

  std::atomic<int> goodOk{0}, goodDuring{0}, goodFailed{0};
  std::string goodError;
  std::thread good([&] {
    while (!stormOver.load()) {
      const int before = completed.load();
      PqConn c(proxy.url());
      PqResult r = c.ok() ? c.exec("SELECT 1") : PqResult{};
      PqResult s = steady.exec("SELECT 2");
      const bool ok = c.ok() && r.ok && r.rows.size() == 1 && r.value() == "1" && s.ok &&
                      s.rows.size() == 1 && s.value() == "2";
      if (!ok) {
        ++goodFailed;
        std::lock_guard lock(mu);
        if (goodError.empty()) goodError = c.ok() ? r.error + " / " + s.error : c.error();
        continue;
      }
      ++goodOk;
      // Started after the first failed login and finished before the last one.
      if (before > 0 && completed.load() < kFailed) ++goodDuring;
    }
  });

  const auto t0 = Clock::now();
  std::vector<std::thread> storm;
  for (int t = 0; t < kThreads; ++t) {
    storm.emplace_back([&] {
      for (int i = next++; i < kFailed; i = next++) {
        LoginOptions lo;
        lo.password = "wrong-" + std::to_string(i);
        LoginResult r = login(proxy.port(), lo);
        std::string why;
        if (r.ok) {
          why = "login succeeded";
        } else if (!r.error) {
          why = "no ErrorResponse: " + r.failure;
        } else if (r.error->severity != "FATAL" || r.error->code != "28P01" ||
                   r.error->message != kWrongPasswordText) {
          why = describe(*r.error);
        } else if (auto rest = r.client.readRawUntilClose(2s); !rest || !rest->empty()) {
          why = rest ? "bytes after the FATAL" : "not closed after the FATAL";
        }
        ++completed;
        std::lock_guard lock(mu);
        if (!why.empty()) {
          ++mismatches;
          if (firstMismatch.empty()) firstMismatch = "attempt " + std::to_string(i) + ": " + why;
        } else if (!sample) {
          sample = r.error;
          sampleTypes = typesOf(r.messages);
        }
      }
    });
  }
  for (auto& t : storm) t.join();
  const auto stormTime = Clock::now() - t0;
  stormOver = true;
  good.join();
  goodSessions += goodOk.load();
  std::printf("[ B32 ] %d failed logins in %lld ms (%.0f/s), %d good sessions meanwhile\n", kFailed,
              static_cast<long long>(msOf(stormTime)),
              kFailed * 1000.0 / std::max<long long>(msOf(stormTime), 1), goodOk.load());

  EXPECT_EQ(mismatches.load(), 0) << "first: " << firstMismatch;
  EXPECT_EQ(goodFailed.load(), 0) << "first: " << goodError;
  EXPECT_GE(goodDuring.load(), 1) << "no good session ran while the storm was going on";
  EXPECT_LT(stormTime, 20s);

  // B26: a user that is not in auth.users walks the same (mock) SCRAM
  // exchange and gets the same answer, with a wrong or with app's password.
  ASSERT_TRUE(sample.has_value()) << firstMismatch;
  EXPECT_EQ(sampleTypes, "RRE");  // AuthenticationSASL, SASLContinue, ErrorResponse
  int unknownAttempts = 0;
  for (const char* password : {"wrong", "app-secret"}) {
    for (int i = 0; i < 5; ++i) {
      LoginOptions lo;
      lo.user = "mallory";
      lo.password = password;
      LoginResult r = login(proxy.port(), lo);
      ++unknownAttempts;
      ASSERT_FALSE(r.ok);
      ASSERT_TRUE(r.error.has_value()) << r.failure;
      EXPECT_EQ(typesOf(r.messages), sampleTypes);
      EXPECT_EQ(r.error->severity, sample->severity);
      EXPECT_EQ(r.error->code, "28P01");
      EXPECT_EQ(r.error->message, "password authentication failed for user \"mallory\"");
      EXPECT_EQ(r.error->detail, sample->detail);
      EXPECT_EQ(r.error->hint, sample->hint);
      auto rest = r.client.readRawUntilClose(2s);
      ASSERT_TRUE(rest.has_value()) << "not closed after the FATAL";
      EXPECT_TRUE(rest->empty());
    }
  }

  // After the storm.
  {
    PqConn c(proxy.url());
    ASSERT_TRUE(c.ok()) << c.error();
    EXPECT_EQ(c.execOrThrow("SELECT 3").value(), "3");
    ++goodSessions;
  }
  EXPECT_EQ(steady.execOrThrow("SELECT 4").value(), "4");

  const double failures = kFailed + unknownAttempts;
  EXPECT_EQ(proxy.metric(rejectedMetric("auth_failed")) - authFailed0, failures);
  EXPECT_EQ(proxy.metric(errorsMetric("28P01")) - errors0, failures);

  // The source saw exactly one connection per good session, none for the
  // 1,010 failed logins.
  const auto upstream = [&] { return countConnectionsReceived(source_->log()) - received0; };
  EXPECT_TRUE(waitFor([&] { return upstream() >= std::size_t(goodSessions); }, 5s));
  EXPECT_EQ(upstream(), std::size_t(goodSessions))
      << "source connections opened during the test; good sessions: " << goodSessions;
}

}  // namespace
}  // namespace pghandoff::test
