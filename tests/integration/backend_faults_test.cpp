// RELIABILITY.md §3d (backend -> proxy: the source server is untrusted) and
// login failures against the real proxy, whose source is a scripted fake
// PostgreSQL server (tests/support/fake_server.h). Each case checks the exact
// SQLSTATE and message the client gets, what the fake saw the proxy do, the
// counters, and that the proxy keeps serving other clients.
// Rows covered: B46, B47, B48, B49, B50, B51 (unsolicited ReadyForQuery).

#include <libpq-fe.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "protocol/crypto.h"
#include "protocol/error.h"
#include "tests/support/fake_server.h"
#include "tests/support/pq.h"
#include "tests/support/process.h"
#include "tests/support/proxy_process.h"
#include "tests/support/raw_client.h"

namespace pghandoff::test {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr const char* kFakeUser = "fakeuser";
constexpr const char* kFakePassword = "fake-pass-1";
constexpr milliseconds kClientTimeout{5000};

const char* const kLostSync = "pghandoff lost synchronization with the source server";

class BackendFaults : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fake_ = std::make_unique<FakeServer>();
    proxy_ = std::make_unique<ProxyProcess>(optionsFor("sslmode=disable&connect_timeout=3"));
  }
  static void TearDownTestSuite() {
    proxy_.reset();
    fake_.reset();
  }

  void SetUp() override { fake_->setScript({}); }

  void TearDown() override {
    // Every script must have run to its end (the proxy closed or finished
    // with the fake), and the proxy must have survived whatever it was sent.
    EXPECT_TRUE(fake_->waitIdle(std::chrono::seconds(5))) << "a fake connection is still open";
    if (!proxy_->running()) {
      ADD_FAILURE() << "the proxy died; log tail:\n" << tailFile(proxy_->logFile(), 1500);
      proxy_->restart();
    }
    fake_->setScript({});
  }

  static std::string fakeUrl(const std::string& extra) {
    return std::string("postgresql://") + kFakeUser + ":" + kFakePassword +
           "@127.0.0.1:" + std::to_string(fake_->port()) + "/postgres?" + extra;
  }
  static ProxyOptions optionsFor(const std::string& extra) {
    ProxyOptions o;
    o.sourceUrl = fakeUrl(extra);
    return o;
  }
  // `server at "127.0.0.1", port N` as the proxy names the fake in messages.
  static std::string where() {
    return "server at \"127.0.0.1\", port " + std::to_string(fake_->port());
  }

  static LoginResult loginTo(const ProxyProcess& p) {
    LoginOptions o;
    o.timeout = kClientTimeout;
    return login(p.port(), o);
  }
  static RawClient loginOk(const ProxyProcess& p) {
    LoginOptions o;
    o.timeout = kClientTimeout;
    return loginOrThrow(p.port(), o);
  }

  // A counter's value; a missing sample counts as 0 (labelled counters
  // appear once first incremented).
  static double counter(ProxyProcess& p, const std::string& name) {
    double v = p.metric(name);
    return std::isnan(v) ? 0.0 : v;
  }

  // The proxy still serves a good client: log in (fake: trust) and SELECT.
  static void expectStillServing(ProxyProcess& p) {
    fake_->setScript({});
    auto c = loginOk(p);
    auto q = simpleQuery(c, "SELECT 1", kClientTimeout);
    ASSERT_EQ(q.types(), "TDCZ");
    ASSERT_EQ(q.rows.size(), 1U);
    EXPECT_EQ(q.rows[0][0], std::optional<std::string>("1"));
  }

  static std::unique_ptr<FakeServer> fake_;
  static std::unique_ptr<ProxyProcess> proxy_;  // source sslmode=disable, connect_timeout=3
};

std::unique_ptr<FakeServer> BackendFaults::fake_;
std::unique_ptr<ProxyProcess> BackendFaults::proxy_;

std::string messageTypes(const std::vector<FakeMessage>& ms) {
  std::string s;
  for (const auto& m : ms) s.push_back(m.type);
  return s;
}

std::vector<std::uint8_t> bytesOf(std::string_view s) {
  return {s.begin(), s.end()};
}

// ---- Baselines: the fake itself works through the proxy ----------------------------

TEST_F(BackendFaults, TrustLoginAndQueryThroughTheProxy) {
  const int before = fake_->connectionCount();
  {
    PqConn c(proxy_->url());
    ASSERT_TRUE(c.ok()) << c.error();
    auto r = c.exec("SELECT 1");
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.value(), "1");
    EXPECT_EQ(std::string(PQparameterStatus(c.raw(), "server_version")), "15.99 (fake)");
  }
  ASSERT_TRUE(fake_->waitFinished(before + 1, std::chrono::seconds(5)));
  EXPECT_EQ(fake_->connectionCount(), before + 1);
  auto rec = fake_->record(static_cast<std::size_t>(before));
  ASSERT_TRUE(rec);
  EXPECT_FALSE(rec->sslRequested);
  ASSERT_TRUE(rec->startup);
  ASSERT_NE(rec->startup->find("user"), nullptr);
  EXPECT_EQ(*rec->startup->find("user"), kFakeUser);
  ASSERT_NE(rec->startup->find("database"), nullptr);
  EXPECT_EQ(*rec->startup->find("database"), "postgres");
  EXPECT_EQ(messageTypes(rec->messages), "QX");
  EXPECT_EQ(querySql(rec->messages[0]), std::optional<std::string>("SELECT 1"));
}

TEST_F(BackendFaults, ScramLoginWithTheFakeSucceeds) {
  auto outcome = std::make_shared<std::atomic<int>>(-1);
  fake_->setScript([outcome](FakeConn& c) {
    if (!c.readStartup()) return;
    auto o = c.scramLogin({kFakePassword, {}, {}, false});
    *outcome = static_cast<int>(o);
    if (o != FakeConn::ScramOutcome::kOk) return;
    if (!c.send(FakeConn::loginTail())) return;
    (void)c.serveQueries();
  });
  auto c = loginOk(*proxy_);
  auto q = simpleQuery(c, "SELECT 1", kClientTimeout);
  EXPECT_EQ(q.types(), "TDCZ");
  EXPECT_EQ(outcome->load(), static_cast<int>(FakeConn::ScramOutcome::kOk));
}

// ---- B46 / B47: the answer to SSLRequest ----------------------------------------------

TEST_F(BackendFaults, B46ExtraBytesAfterSslAnswerAreRefused) {
  ProxyProcess tlsProxy(optionsFor("sslmode=require&connect_timeout=3"));
  fake_->setScript([](FakeConn& c) {
    // 'S' and plaintext bytes in one write: they would be taken as if they
    // had come through TLS (CVE-2021-23222).
    c.setSslAnswer(std::string("S") + "injected-plaintext-after-S");
    (void)c.readStartup();
    (void)c.readUntilClose(std::chrono::seconds(3));
  });
  const int before = fake_->connectionCount();
  auto r = loginTo(tlsProxy);
  EXPECT_FALSE(r.ok);
  ASSERT_TRUE(r.error) << r.failure;
  EXPECT_EQ(r.error->severity, "FATAL");
  EXPECT_EQ(r.error->code, "08P01");
  EXPECT_EQ(r.error->message, "received unencrypted data after SSL response from " + where());

  ASSERT_TRUE(fake_->waitFinished(before + 1, std::chrono::seconds(5)));
  auto rec = fake_->record(static_cast<std::size_t>(before));
  ASSERT_TRUE(rec);
  EXPECT_TRUE(rec->sslRequested);
  // No TLS ClientHello (nor anything else) after our answer: the proxy closed.
  EXPECT_TRUE(rec->trailingBytes.empty()) << rec->trailingBytes.size() << " bytes after 'S'";
  EXPECT_TRUE(rec->peerClosed);
  EXPECT_FALSE(rec->startup);
  EXPECT_TRUE(tlsProxy.running());
}

TEST_F(BackendFaults, B47ErrorAnswerToSslRequestIsNotRelayed) {
  ProxyProcess tlsProxy(optionsFor("sslmode=prefer&connect_timeout=3"));
  const std::string canary = "CANARY-" + randomHex(16);
  std::string text;
  while (text.size() < 4000) text += canary + " spoofed server message; ";
  std::vector<std::uint8_t> answer;
  // What a server that cannot start a backend sends instead of 'S'/'N': an
  // ErrorResponse (type 'E'), here a long one carrying the canary.
  protocol::encodeError({"FATAL", "XX000", text, canary, canary}, answer);
  std::string answerText(answer.begin(), answer.end());
  fake_->setScript([answerText](FakeConn& c) {
    c.setSslAnswer(answerText);
    (void)c.readStartup();
    (void)c.readUntilClose(std::chrono::seconds(3));
  });
  const int before = fake_->connectionCount();
  auto r = loginTo(tlsProxy);
  EXPECT_FALSE(r.ok);
  ASSERT_TRUE(r.error) << r.failure;
  EXPECT_EQ(r.error->severity, "FATAL");
  EXPECT_EQ(r.error->code, "08P01");
  EXPECT_EQ(r.error->message, "invalid response to SSL negotiation from " + where());
  for (const auto& m : r.messages) {
    std::string body(m.body.begin(), m.body.end());
    EXPECT_EQ(body.find(canary), std::string::npos) << "the server's text reached the client";
  }
  ASSERT_TRUE(fake_->waitFinished(before + 1, std::chrono::seconds(5)));
  auto rec = fake_->record(static_cast<std::size_t>(before));
  ASSERT_TRUE(rec);
  EXPECT_TRUE(rec->sslRequested);
  EXPECT_TRUE(rec->peerClosed);
  EXPECT_FALSE(rec->startup);  // no plaintext fallback after 'E'
  EXPECT_TRUE(rec->trailingBytes.empty());
  const std::string log = tlsProxy.log();
  EXPECT_NE(log.find("invalid response to SSL negotiation"), std::string::npos);
  EXPECT_EQ(log.find(canary), std::string::npos) << "the server's text reached the proxy log";
}

// ---- B48: ErrorResponse without any field ----------------------------------------------

TEST_F(BackendFaults, B48EmptyErrorResponseIsRelayedAndCounted) {
  fake_->setScript([](FakeConn& c) {
    if (!c.readStartup() || !c.sendTrustLogin()) return;
    int n = 0;
    (void)c.serveQueries([&n](std::string_view) {
      if (n++ % 2 == 0) {
        // ErrorResponse with no fields: just the terminator.
        auto out = backendMessage('E', std::string_view("\0", 1));
        auto z = readyForQuery('I');
        out.insert(out.end(), z.begin(), z.end());
        return out;
      }
      return rowsResponse({"?column?"}, {{"2"}}, "SELECT 1");
    });
  });
  const std::string xx = "pghandoff_client_errors_total{sqlstate=\"XX000\"}";
  const double before = counter(*proxy_, xx);

  auto c = loginOk(*proxy_);
  auto q1 = simpleQuery(c, "SELECT broken", kClientTimeout);
  ASSERT_EQ(q1.types(), "EZ");
  // Relayed unchanged: the body is the lone terminator.
  EXPECT_EQ(q1.messages[0].body, std::vector<std::uint8_t>{0});
  ASSERT_EQ(q1.errors.size(), 1U);
  EXPECT_EQ(q1.errors[0].code, "XX000");  // as decodeErrorBody reads a missing SQLSTATE
  EXPECT_EQ(q1.txStatus, 'I');
  auto q2 = simpleQuery(c, "SELECT 2", kClientTimeout);
  ASSERT_EQ(q2.types(), "TDCZ");
  EXPECT_EQ(q2.rows[0][0], std::optional<std::string>("2"));
  EXPECT_EQ(counter(*proxy_, xx) - before, 1.0);

  // libpq sees an error result and the session goes on.
  PqConn pq(proxy_->url());
  ASSERT_TRUE(pq.ok()) << pq.error();
  auto r1 = pq.exec("SELECT broken");
  EXPECT_FALSE(r1.ok);
  EXPECT_EQ(r1.status, "PGRES_FATAL_ERROR");
  EXPECT_EQ(r1.sqlstate, "");
  auto r2 = pq.exec("SELECT 2");
  ASSERT_TRUE(r2.ok) << r2.error;
  EXPECT_EQ(r2.value(), "2");
  EXPECT_EQ(counter(*proxy_, xx) - before, 2.0);
}

// ---- B49: SCRAM from a hostile or broken server -----------------------------------------

struct ScramCase {
  const char* name;
  FakeConn::Scram scram;
  const char* sqlstate;
  std::string messageSuffix;  // after `SCRAM with <where> failed: `, or the whole message
  bool wholeMessage = false;
  std::string proxyMessages;  // what the fake read from the proxy before the close
};

void PrintTo(const ScramCase& c, std::ostream* os) {
  *os << c.name;
}

// Replaces the value of SCRAM attribute `name` ("r", "s", "i") in a
// comma-separated SCRAM message.
std::string replaceAttribute(const std::string& msg, char name, const std::string& value) {
  std::string out;
  std::size_t pos = 0;
  while (pos <= msg.size()) {
    std::size_t end = msg.find(',', pos);
    if (end == std::string::npos) end = msg.size();
    std::string part = msg.substr(pos, end - pos);
    if (part.size() >= 2 && part[0] == name && part[1] == '=') part = part.substr(0, 2) + value;
    if (!out.empty()) out += ',';
    out += part;
    pos = end + 1;
  }
  return out;
}

class BackendFaultsScram : public BackendFaults, public ::testing::WithParamInterface<ScramCase> {};

TEST_P(BackendFaultsScram, B49LoginRefused) {
  const ScramCase& tc = GetParam();
  auto outcome = std::make_shared<std::atomic<int>>(-1);
  fake_->setScript([outcome, scram = tc.scram](FakeConn& c) {
    if (!c.readStartup()) return;
    auto o = c.scramLogin(scram);
    *outcome = static_cast<int>(o);
    if (o == FakeConn::ScramOutcome::kOk) (void)c.send(FakeConn::loginTail());
    (void)c.readUntilClose(std::chrono::seconds(3));
  });
  const int before = fake_->connectionCount();
  auto r = loginTo(*proxy_);
  EXPECT_FALSE(r.ok);
  ASSERT_TRUE(r.error) << r.failure;
  EXPECT_EQ(r.error->severity, "FATAL");
  EXPECT_EQ(r.error->code, tc.sqlstate);
  if (tc.wholeMessage) {
    // Not prefixed with "SCRAM with ...": the whole message names the server
    // once (a74a9f9 fixed a doubled "server at server at" found here).
    EXPECT_EQ(r.error->message, where() + tc.messageSuffix);
  } else {
    EXPECT_EQ(r.error->message, "SCRAM with " + where() + " failed: " + tc.messageSuffix);
  }
  ASSERT_TRUE(fake_->waitFinished(before + 1, std::chrono::seconds(5)));
  auto rec = fake_->record(static_cast<std::size_t>(before));
  ASSERT_TRUE(rec);
  EXPECT_EQ(messageTypes(rec->messages), tc.proxyMessages);
  EXPECT_TRUE(rec->peerClosed);
  EXPECT_TRUE(rec->trailingBytes.empty());
  EXPECT_TRUE(proxy_->running());
  expectStillServing(*proxy_);
}

FakeConn::Scram scramWith(std::function<std::string(const std::string&, const std::string&)> first,
                          std::function<std::string(const std::string&)> final = {},
                          bool skip = false) {
  return FakeConn::Scram{kFakePassword, std::move(first), std::move(final), skip};
}

const std::string kHugeSalt = [] {
  std::vector<std::uint8_t> salt(2000, 0xA5);
  return protocol::base64Encode(salt);
}();

INSTANTIATE_TEST_SUITE_P(
    Cases, BackendFaultsScram,
    ::testing::Values(
        // (a) The server's nonce must extend the client's (RFC 5802 §5.1).
        ScramCase{"ForeignNonce", scramWith([](const std::string& m, const std::string&) {
                    return replaceAttribute(m, 'r', "Zm9yZWlnbi1ub25jZS1ub3QtZXh0ZW5kaW5n");
                  }),
                  "08001", "invalid SCRAM response (nonce mismatch)", false, "p"},
        // (b) i=0: no PBKDF2 at all would be a zero-work key.
        ScramCase{"ZeroIterations", scramWith([](const std::string& m, const std::string&) {
                    return replaceAttribute(m, 'i', "0");
                  }),
                  "08001", "malformed SCRAM message (invalid iteration count)", false, "p"},
        // (c) A 2000-byte salt: the message exceeds the SASL size cap.
        ScramCase{"HugeSalt", scramWith([](const std::string& m, const std::string&) {
                    return replaceAttribute(m, 's', kHugeSalt);
                  }),
                  "08001", "malformed SCRAM message (server-first-message)", false, "p"},
        // A 3000-character nonce that does extend the client's.
        ScramCase{"HugeNonce", scramWith([](const std::string& m, const std::string& clientNonce) {
                    return replaceAttribute(m, 'r', clientNonce + std::string(3000, 'x'));
                  }),
                  "08001", "malformed SCRAM message (server-first-message)", false, "p"},
        // (d) A server that does not know the password cannot sign.
        ScramCase{"WrongServerSignature",
                  scramWith({},
                            [](const std::string&) {
                              std::vector<std::uint8_t> sig(32, 0x42);
                              return "v=" + protocol::base64Encode(sig);
                            }),
                  "08001", "incorrect server signature", false, "pp"},
        // (e) AuthenticationOk without AuthenticationSASLFinal.
        ScramCase{"SkippedServerFinal", scramWith({}, {}, true), "08P01",
                  " skipped the SCRAM server signature", true, "pp"}),
    [](const ::testing::TestParamInfo<ScramCase>& info) { return std::string(info.param.name); });

// ---- B50 / B51: the server's stream goes out of sync ------------------------------------

TEST_F(BackendFaults, B50ShortTypeWithLongLengthClosesTheServerConnection) {
  fake_->setScript([](FakeConn& c) {
    if (!c.readStartup() || !c.sendTrustLogin()) return;
    if (!c.readMessage()) return;  // the client's Query
    // ReadyForQuery claiming 40000 bytes: a small message type never is that
    // long, so the stream cannot be trusted (libpq's VALID_LONG_MESSAGE_TYPE).
    (void)c.send(rawFrame('Z', 40000, "I"));
    (void)c.readUntilClose(std::chrono::seconds(3));
  });
  const std::string bugs = "pghandoff_internal_bugs_total";
  const double bugsBefore = counter(*proxy_, bugs);
  const int before = fake_->connectionCount();

  auto c = loginOk(*proxy_);
  ASSERT_TRUE(c.send(queryMessage("SELECT 1")));
  auto res = c.readUntilClose(kClientTimeout);
  EXPECT_TRUE(res.closed);
  EXPECT_EQ(res.types(), "E");
  auto errors = res.errors();
  ASSERT_EQ(errors.size(), 1U);
  EXPECT_EQ(errors[0].severity, "FATAL");
  EXPECT_EQ(errors[0].code, "08P01");
  EXPECT_EQ(errors[0].message, kLostSync);
  EXPECT_EQ(counter(*proxy_, bugs) - bugsBefore, 1.0);

  ASSERT_TRUE(fake_->waitFinished(before + 1, std::chrono::seconds(5)));
  auto rec = fake_->record(static_cast<std::size_t>(before));
  ASSERT_TRUE(rec);
  // The proxy ended the server session (Terminate) and closed it.
  EXPECT_EQ(messageTypes(rec->messages), "Q");
  EXPECT_EQ(rec->trailingBytes, bytesOf(std::string_view("X\0\0\0\4", 5)));
  EXPECT_TRUE(rec->peerClosed);
  expectStillServing(*proxy_);
}

TEST_F(BackendFaults, B51UnsolicitedReadyForQueryWhileIdleIsLostSync) {
  auto idle = std::make_shared<FakeEvent>();
  auto sent = std::make_shared<std::atomic<bool>>(false);
  fake_->setScript([idle, sent](FakeConn& c) {
    if (!c.readStartup() || !c.sendTrustLogin()) return;
    if (!idle->wait(std::chrono::seconds(5))) return;
    *sent = c.send(readyForQuery('I'));
    (void)c.readUntilClose(std::chrono::seconds(3));
  });
  const std::string bugs = "pghandoff_internal_bugs_total";
  const double bugsBefore = counter(*proxy_, bugs);
  const int before = fake_->connectionCount();

  auto c = loginOk(*proxy_);
  idle->set();
  auto res = c.readUntilClose(kClientTimeout);
  EXPECT_TRUE(res.closed);
  EXPECT_EQ(res.types(), "E");
  auto errors = res.errors();
  ASSERT_EQ(errors.size(), 1U);
  EXPECT_EQ(errors[0].severity, "FATAL");
  EXPECT_EQ(errors[0].code, "08P01");
  EXPECT_EQ(errors[0].message, kLostSync);
  EXPECT_EQ(counter(*proxy_, bugs) - bugsBefore, 1.0);

  ASSERT_TRUE(fake_->waitFinished(before + 1, std::chrono::seconds(5)));
  auto rec = fake_->record(static_cast<std::size_t>(before));
  ASSERT_TRUE(rec);
  EXPECT_TRUE(sent->load());  // read once the script returned: no race with its store
  EXPECT_EQ(messageTypes(rec->messages), "");
  EXPECT_EQ(rec->trailingBytes, bytesOf(std::string_view("X\0\0\0\4", 5)));
  EXPECT_TRUE(rec->peerClosed);
  expectStillServing(*proxy_);
}

// ---- Asynchronous messages while idle ----------------------------------------------------

TEST_F(BackendFaults, AsyncNoticeAndParameterStatusAreRelayedWhileIdle) {
  auto idle = std::make_shared<FakeEvent>();
  fake_->setScript([idle](FakeConn& c) {
    if (!c.readStartup() || !c.sendTrustLogin()) return;
    if (!idle->wait(std::chrono::seconds(5))) return;
    std::vector<std::uint8_t> out;
    protocol::encodeError({"NOTICE", "00000", "fake async notice", "", ""}, out, 'N');
    protocol::encodeParameterStatus("TimeZone", "Europe/Paris", out);
    if (!c.send(out)) return;
    (void)c.serveQueries();
  });
  PqConn c(proxy_->url());
  ASSERT_TRUE(c.ok()) << c.error();
  EXPECT_EQ(std::string(PQparameterStatus(c.raw(), "TimeZone")), "UTC");
  EXPECT_TRUE(c.notices().empty());
  idle->set();
  bool seen = waitFor(
      [&] {
        // libpq parses asynchronous messages when asked whether it is busy.
        if (PQconsumeInput(c.raw()) == 0) return true;
        (void)PQisBusy(c.raw());
        const char* tz = PQparameterStatus(c.raw(), "TimeZone");
        return !c.notices().empty() && tz != nullptr && std::string(tz) == "Europe/Paris";
      },
      kClientTimeout);
  EXPECT_TRUE(seen);
  ASSERT_TRUE(c.ok()) << c.error();
  EXPECT_EQ(c.notices(), std::vector<std::string>{"fake async notice"});
  EXPECT_EQ(std::string(PQparameterStatus(c.raw(), "TimeZone")), "Europe/Paris");
  auto r = c.exec("SELECT 1");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.value(), "1");
}

// ---- Login failures ------------------------------------------------------------------------

TEST_F(BackendFaults, UnsupportedAuthenticationMethodIsRefused) {
  fake_->setScript([](FakeConn& c) {
    if (!c.readStartup()) return;
    // AuthenticationGSS (code 7).
    (void)c.send(backendMessage('R', std::string_view("\0\0\0\7", 4)));
    (void)c.readUntilClose(std::chrono::seconds(3));
  });
  const int before = fake_->connectionCount();
  auto r = loginTo(*proxy_);
  EXPECT_FALSE(r.ok);
  ASSERT_TRUE(r.error) << r.failure;
  EXPECT_EQ(r.error->severity, "FATAL");
  EXPECT_EQ(r.error->code, "08001");
  EXPECT_EQ(r.error->message,
            "authentication method 7 requested by " + where() + " is not supported");
  ASSERT_TRUE(fake_->waitFinished(before + 1, std::chrono::seconds(5)));
  auto rec = fake_->record(static_cast<std::size_t>(before));
  ASSERT_TRUE(rec);
  EXPECT_EQ(messageTypes(rec->messages), "");
  EXPECT_TRUE(rec->trailingBytes.empty());
  EXPECT_TRUE(rec->peerClosed);
}

TEST_F(BackendFaults, SilentServerTimesOutWithinConnectTimeout) {
  ProxyProcess p(optionsFor("sslmode=disable&connect_timeout=1"));
  fake_->setScript([](FakeConn& c) {
    if (!c.readStartup()) return;
    (void)c.readUntilClose(std::chrono::seconds(5));  // never answers
  });
  const int before = fake_->connectionCount();
  // The client's own SCRAM login with the proxy comes first; time the
  // source login from its start, as close as the client can see it.
  const auto start = Clock::now();
  auto r = loginTo(p);
  const auto elapsed = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
  EXPECT_FALSE(r.ok);
  ASSERT_TRUE(r.error) << r.failure;
  EXPECT_EQ(r.error->severity, "FATAL");
  EXPECT_EQ(r.error->code, "08001");
  EXPECT_EQ(r.error->message, "connection to " + where() + " timed out after 1000 ms");
  EXPECT_GE(elapsed.count(), 1000);
  EXPECT_LT(elapsed.count(), 2000);
  ASSERT_TRUE(fake_->waitFinished(before + 1, std::chrono::seconds(5)));
  auto rec = fake_->record(static_cast<std::size_t>(before));
  ASSERT_TRUE(rec);
  EXPECT_TRUE(rec->startup);
  EXPECT_TRUE(rec->peerClosed);
}

TEST_F(BackendFaults, ServerClosingAfterStartupIsLostDuringLogin) {
  fake_->setScript([](FakeConn& c) {
    if (!c.readStartup()) return;
    c.close();
  });
  auto r = loginTo(*proxy_);
  EXPECT_FALSE(r.ok);
  ASSERT_TRUE(r.error) << r.failure;
  EXPECT_EQ(r.error->severity, "FATAL");
  EXPECT_EQ(r.error->code, "08001");
  EXPECT_EQ(r.error->message, "connection to " + where() + " lost during login");
  expectStillServing(*proxy_);
}

}  // namespace
}  // namespace pghandoff::test
