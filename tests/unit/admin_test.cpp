#include "proxy/admin.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "proxy/metrics.h"

namespace pghandoff::proxy {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr const char* kToken = "tok-Zq81-secret";

struct HttpResponse {
  int status = 0;
  std::string head;  // status line and headers
  std::string body;
  [[nodiscard]] std::string header(const std::string& name) const {
    auto p = head.find("\r\n" + name + ": ");
    if (p == std::string::npos) return "<none>";
    p += name.size() + 4;
    return head.substr(p, head.find("\r\n", p) - p);
  }
};

// A blocking TCP client on plain POSIX sockets, every read bounded by a deadline so a broken
// server fails the test instead of hanging it.
class RawClient {
 public:
  explicit RawClient(std::uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd_ < 0) throw std::runtime_error("socket");
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    ::inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd_);
      throw std::runtime_error("connect");
    }
  }
  ~RawClient() { ::close(fd_); }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  bool send(std::string_view s) {
    while (!s.empty()) {
      ssize_t n = ::send(fd_, s.data(), s.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      s.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  // > 0 bytes appended to buf_, 0 on orderly close or reset, -1 on timeout.
  int readSome(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    pollfd p{fd_, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) return -1;
    char tmp[16384];
    ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n <= 0) return 0;  // EOF or ECONNRESET: the server closed
    buf_.append(tmp, static_cast<std::size_t>(n));
    return static_cast<int>(n);
  }

  std::optional<HttpResponse> readResponse(std::chrono::milliseconds timeout = 5000ms) {
    const auto deadline = Clock::now() + timeout;
    std::size_t end;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (readSome(deadline) <= 0) return std::nullopt;
    }
    HttpResponse r;
    r.head = buf_.substr(0, end + 2);
    r.status = std::stoi(r.head.substr(9, 3));
    std::size_t length = 0;
    if (std::string cl = r.header("Content-Length"); cl != "<none>") length = std::stoul(cl);
    while (buf_.size() < end + 4 + length) {
      if (readSome(deadline) <= 0) return std::nullopt;
    }
    r.body = buf_.substr(end + 4, length);
    buf_.erase(0, end + 4 + length);
    return r;
  }

  // True when the server closes the connection before the deadline (data is discarded).
  bool waitClosed(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      int n = readSome(deadline);
      if (n == 0) return true;
      if (n < 0) return false;
    }
  }

 private:
  int fd_ = -1;
  std::string buf_;
};

std::string get(const std::string& path, const std::string& extraHeaders = "") {
  return "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n" + extraHeaders + "\r\n";
}
std::string post(const std::string& path, const std::string& body,
                 const std::string& extraHeaders = "") {
  return "POST " + path + " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n" +
         extraHeaders + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}
std::string bearer(const std::string& token = kToken) {
  return "Authorization: Bearer " + token + "\r\n";
}

class AdminTest : public ::testing::Test {
 protected:
  void start(AdminOptions options = {.timeout = 5000ms}, AdminHooks hooks = {}) {
    if (!hooks.healthy) hooks.healthy = [this] { return healthy_.load(); };
    if (!hooks.statusJson) {
      hooks.statusJson = [] { return std::string(R"({"phase":"source-only","clients":3})"); };
    }
    if (!hooks.phase) hooks.phase = [] { return std::string("source-only"); };
    server_ = std::make_unique<AdminServer>(io_, "127.0.0.1", 0, kToken, hooks, options);
    server_->start();
    thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    // stop() must close the acceptor and every connection, so run() returns by itself.
    if (server_) server_->stop();
    if (thread_.joinable()) thread_.join();
    server_.reset();
  }

  HttpResponse exchange(const std::string& request) {
    RawClient c(server_->port());
    EXPECT_TRUE(c.send(request));
    auto r = c.readResponse();
    if (!r) {
      ADD_FAILURE() << "no response to: " << request.substr(0, 80);
      return {};
    }
    return *r;
  }

  boost::asio::io_context io_;
  std::atomic<bool> healthy_{true};
  std::unique_ptr<AdminServer> server_;
  std::thread thread_;
};

TEST_F(AdminTest, HealthzNeedsNoToken) {
  start();
  auto r = exchange(get("/healthz"));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"status":"ok"})");
  EXPECT_EQ(r.header("Content-Type"), "application/json");
  healthy_ = false;
  r = exchange(get("/healthz"));
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body, R"({"status":"unavailable"})");
}

TEST_F(AdminTest, StatusNeedsTheRightToken) {
  start();
  auto r = exchange(get("/status"));
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.body, R"({"error":"unauthorized"})");
  EXPECT_EQ(r.header("WWW-Authenticate"), R"(Bearer realm="pghandoff")");

  r = exchange(get("/status", bearer("tok-Zq81-secreT")));
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.body, R"({"error":"unauthorized"})");
  r = exchange(get("/status", bearer(std::string(kToken) + "x")));
  EXPECT_EQ(r.status, 401);
  r = exchange(get("/status", "Authorization: Basic dG9rOnNlY3JldA==\r\n"));
  EXPECT_EQ(r.status, 401);
  r = exchange(get("/status", "Authorization: Bearer\r\n"));
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.head.find(kToken), std::string::npos);

  r = exchange(get("/status", bearer()));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"phase":"source-only","clients":3})");
  EXPECT_EQ(r.header("Content-Type"), "application/json");
  // The scheme is case-insensitive (RFC 7235).
  r = exchange(get("/status", "Authorization: bearer " + std::string(kToken) + "\r\n"));
  EXPECT_EQ(r.status, 200);
}

TEST_F(AdminTest, MetricsAndPhase) {
  start();
  auto r = exchange(get("/metrics"));
  EXPECT_EQ(r.status, 401);
  r = exchange(get("/metrics", bearer()));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_NE(r.body.find("\npghandoff_build_info{version=\"" PGHANDOFF_VERSION "\"} 1\n"),
            std::string::npos);

  r = exchange(get("/phase", bearer()));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"phase":"source-only"})");
}

TEST_F(AdminTest, WrongMethodAndUnknownPath) {
  start();
  auto r = exchange(get("/pause", bearer()));
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.header("Allow"), "POST");
  EXPECT_EQ(r.body, R"({"error":"method not allowed"})");
  r = exchange("DELETE /phase HTTP/1.1\r\nHost: x\r\n" + bearer() + "\r\n");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.header("Allow"), "GET, POST");
  r = exchange(post("/status", "{}", bearer()));
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.header("Allow"), "GET");
  r = exchange(get("/nope", bearer()));
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.body, R"({"error":"not found"})");
  // Auth comes before the method check: no token, no information.
  r = exchange(get("/pause"));
  EXPECT_EQ(r.status, 401);
}

TEST_F(AdminTest, PostPhaseValidatesThenWithoutHooksIsNotBuilt) {
  start();
  auto r = exchange(post("/phase", "{", bearer()));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body,
            R"({"error":"body must be a JSON object of strings, e.g. {\"phase\": \"mirror\", )"
            R"(\"drain_timeout\": \"5s\"}"})");
  r = exchange(post("/phase", R"({"phase":"nope"})", bearer()));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body, R"({"error":"unknown phase; expected one of source-only, seeding, mirror, )"
                    R"(mirror-read-target, reverse-mirror, target-only"})");
  r = exchange(post("/phase", R"({"phase":1})", bearer()));
  EXPECT_EQ(r.status, 400);
  r = exchange(post("/phase", R"({"drain_timeout":"5s"})", bearer()));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body, R"({"error":"phase is required"})");
  r = exchange(post("/phase", R"({"phase":"mirror","drain_timeout":"soon"})", bearer()));
  EXPECT_EQ(r.status, 400);
  r = exchange(post("/phase", R"({"phase":"mirror","force":"yes"})", bearer()));
  EXPECT_EQ(r.status, 400);
  r = exchange(post("/phase", R"({"phase":"mirror"})"));
  EXPECT_EQ(r.status, 401);  // auth before validation

  // Without control hooks (a build that cannot change phases): 501.
  const std::string notBuilt = R"json({"error":"not built yet"})json";
  r = exchange(post("/phase", R"( {"phase": "mirror", "drain_timeout": "250ms"} )", bearer()));
  EXPECT_EQ(r.status, 501);
  EXPECT_EQ(r.body, notBuilt);
  r = exchange(post("/pause", "", bearer()));
  EXPECT_EQ(r.status, 501);
  EXPECT_EQ(r.body, notBuilt);
  r = exchange(post("/resume", "", bearer()));
  EXPECT_EQ(r.status, 501);
}

TEST_F(AdminTest, ControlRequestsReachTheirHooksAfterValidation) {
  std::vector<std::string> calls;  // only touched on the admin thread
  AdminHooks hooks;
  hooks.setPhase =
      [&calls](std::string phase,
               std::optional<std::chrono::milliseconds> d) -> boost::asio::awaitable<AdminReply> {
    calls.push_back("phase " + phase + " " + (d ? std::to_string(d->count()) : "-"));
    co_return AdminReply{409, R"({"error":"refused"})"};
  };
  hooks.pause =
      [&calls](std::optional<std::chrono::milliseconds> d) -> boost::asio::awaitable<AdminReply> {
    calls.push_back("pause " + (d ? std::to_string(d->count()) : std::string("-")));
    co_return AdminReply{200, R"({"paused":true})"};
  };
  hooks.resume = [&calls] {
    calls.push_back("resume");
    return AdminReply{200, R"({"paused":false})"};
  };
  start({.timeout = 5000ms}, hooks);

  auto r = exchange(post("/phase", R"({"phase":"mirror","drain_timeout":"250ms"})", bearer()));
  EXPECT_EQ(r.status, 409);
  EXPECT_EQ(r.body, R"({"error":"refused"})");
  EXPECT_EQ(r.header("Content-Type"), "application/json");
  r = exchange(post("/phase", R"({"phase":"target-only"})", bearer()));
  EXPECT_EQ(r.status, 409);
  r = exchange(post("/pause", "", bearer()));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"paused":true})");
  r = exchange(post("/pause", R"({"drain_timeout":"2s"})", bearer()));
  EXPECT_EQ(r.status, 200);
  r = exchange(post("/resume", "", bearer()));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"paused":false})");

  // Refused before any hook runs: bad bodies, unknown fields, bad durations, no token.
  EXPECT_EQ(exchange(post("/pause", R"({"phase":"mirror"})", bearer())).status, 400);
  EXPECT_EQ(exchange(post("/pause", R"({"drain_timeout":"0s"})", bearer())).status, 400);
  EXPECT_EQ(exchange(post("/pause", "[", bearer())).status, 400);
  EXPECT_EQ(exchange(post("/resume", R"({"x":"y"})", bearer())).status, 400);
  EXPECT_EQ(
      exchange(post("/phase", R"({"phase":"mirror","drain_timeout":"-1s"})", bearer())).status,
      400);
  EXPECT_EQ(exchange(post("/pause", "")).status, 401);
  EXPECT_EQ(exchange(post("/resume", "")).status, 401);

  server_->stop();
  thread_.join();
  EXPECT_EQ(calls, (std::vector<std::string>{"phase mirror 250", "phase target-only -", "pause -",
                                             "pause 2000", "resume"}));
}

TEST_F(AdminTest, OversizedBodyAndHeader) {
  start();
  auto r = exchange(post("/phase", std::string(70 * 1024, 'x'), bearer()));
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(r.body, R"({"error":"request body too large"})");
  r = exchange(get("/healthz", "X-Big: " + std::string(9 * 1024, 'a') + "\r\n"));
  EXPECT_EQ(r.status, 431);
  EXPECT_EQ(r.body, R"({"error":"request header too large"})");
  // A body at the limit is fine (and then fails JSON validation).
  r = exchange(post("/phase", std::string(64 * 1024, ' '), bearer()));
  EXPECT_EQ(r.status, 400);
}

TEST_F(AdminTest, MalformedRequestLineIs400) {
  start();
  auto r = exchange("GARBAGE\r\n\r\n");
  EXPECT_EQ(r.status, 400);
}

TEST_F(AdminTest, KeepAlive) {
  start();
  RawClient c(server_->port());
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(c.send(get("/healthz")));
    auto r = c.readResponse();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, 200);
  }
  ASSERT_TRUE(c.send(get("/healthz", "Connection: close\r\n")));
  auto r = c.readResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
  EXPECT_TRUE(c.waitClosed(5000ms));
}

TEST_F(AdminTest, IdleAndSlowConnectionsAreClosed) {
  start({.timeout = 200ms});
  RawClient idle(server_->port());
  RawClient slow(server_->port());
  ASSERT_TRUE(slow.send("POST /phase HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{\""));
  const auto t0 = Clock::now();
  EXPECT_TRUE(idle.waitClosed(5000ms));
  EXPECT_TRUE(slow.waitClosed(5000ms));
  const auto elapsed = Clock::now() - t0;
  EXPECT_LT(elapsed, 3000ms);

  // Idle after a first request counts too.
  RawClient kept(server_->port());
  ASSERT_TRUE(kept.send(get("/healthz")));
  auto r = kept.readResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
  const auto t1 = Clock::now();
  EXPECT_TRUE(kept.waitClosed(5000ms));
  EXPECT_GE(Clock::now() - t1, 100ms);  // not closed right after the response
}

TEST_F(AdminTest, ConnectionBudget) {
  start({.timeout = 10'000ms, .maxConnections = 2});
  RawClient a(server_->port());
  RawClient b(server_->port());
  // Make sure both are accepted and registered before the third arrives.
  ASSERT_TRUE(a.send(get("/healthz")));
  ASSERT_TRUE(a.readResponse().has_value());
  ASSERT_TRUE(b.send(get("/healthz")));
  ASSERT_TRUE(b.readResponse().has_value());
  RawClient c(server_->port());
  EXPECT_TRUE(c.waitClosed(5000ms));
  // The admitted ones keep working.
  ASSERT_TRUE(a.send(get("/healthz")));
  auto r = a.readResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
}

TEST_F(AdminTest, StopClosesOpenConnections) {
  start();
  RawClient a(server_->port());
  ASSERT_TRUE(a.send(get("/healthz")));
  ASSERT_TRUE(a.readResponse().has_value());
  server_->stop();
  EXPECT_TRUE(a.waitClosed(5000ms));
  thread_.join();  // nothing left to run
}

TEST_F(AdminTest, BindFailureNamesTheAddress) {
  start();
  const std::uint16_t taken = server_->port();
  try {
    AdminServer second(io_, "127.0.0.1", taken, kToken, {});
    FAIL() << "bind to a taken port succeeded";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("127.0.0.1:" + std::to_string(taken)), std::string::npos)
        << e.what();
  }
}

// ---- the JSON parser on its own ---------------------------------------------------------------

using Members = std::vector<std::pair<std::string, std::string>>;

TEST(AdminJson, ParsesFlatObjectsOfStrings) {
  EXPECT_EQ(parseFlatJsonObject("{}"), Members{});
  EXPECT_EQ(parseFlatJsonObject(" \t\r\n{ } \n"), Members{});
  EXPECT_EQ(parseFlatJsonObject(R"({"phase":"mirror","drain_timeout":"5s"})"),
            (Members{{"phase", "mirror"}, {"drain_timeout", "5s"}}));
  EXPECT_EQ(parseFlatJsonObject(R"({"a":"q\"b\\s\/\n\t\u0041\u00e9\ud83d\ude00"})"),
            (Members{{"a", "q\"b\\s/\n\tA\xc3\xa9\xf0\x9f\x98\x80"}}));
  EXPECT_EQ(parseFlatJsonObject("{\"k\":\"\xc3\xa9\"}"), (Members{{"k", "\xc3\xa9"}}));
}

TEST(AdminJson, RejectsEverythingElse) {
  for (std::string_view bad : {
           "",
           "{",
           "}",
           "[]",
           "\"x\"",
           "null",
           R"({"a"})",
           R"({"a":})",
           R"({"a":"b",})",
           R"({"a":"b"}x)",
           R"({"a":"b"}{})",
           R"({"a":1})",
           R"({"a":true})",
           R"({"a":null})",
           R"({"a":{"b":"c"}})",
           R"({"a":["b"]})",
           R"({a:"b"})",
           R"({'a':'b'})",
           R"({"a":"b","a":"c"})",
           R"({"a":"\x"})",
           R"({"a":"\u12"})",
           R"({"a":"\ud800"})",
           R"({"a":"\udc00"})",
           R"({"a":"\ud800\u0041"})",
           "{\"a\":\"b\nc\"}",
           "{\"a\":\"\xc3\"}",
           "{\"a\":\"\xc0\xaf\"}",
           "{\"a\":\"\xed\xa0\x80\"}",
           "{\"a\":\"\xf4\x90\x80\x80\"}",
           "{\"a\":\"\xff\"}",
           R"({"a":"b")",
           "{\"a\":\"b",
       }) {
    EXPECT_EQ(parseFlatJsonObject(bad), std::nullopt) << bad;
  }
  std::string many = "{";
  for (std::size_t i = 0; i <= kMaxJsonMembers; ++i) {
    many += (i ? ",\"" : "\"") + std::to_string(i) + "\":\"v\"";
  }
  many += "}";
  EXPECT_EQ(parseFlatJsonObject(many), std::nullopt);
}

TEST(AdminJson, Escape) {
  EXPECT_EQ(jsonEscape("plain"), "plain");
  EXPECT_EQ(jsonEscape("a\"b\\c\nd\x01"), "a\\\"b\\\\c\\nd\\u0001");
  // Round trip through the parser.
  EXPECT_EQ(parseFlatJsonObject("{\"k\":\"" + jsonEscape("x\"\\\n\t\x1f") + "\"}"),
            (Members{{"k", "x\"\\\n\t\x1f"}}));
}

}  // namespace
}  // namespace pghandoff::proxy
