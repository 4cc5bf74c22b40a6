#include "proxy/admin.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <map>
#include <stdexcept>

#include "config/config.h"
#include "proxy/asio.h"
#include "proxy/metrics.h"

namespace pghandoff::proxy {

namespace beast = boost::beast;
namespace http = boost::beast::http;
using namespace std::chrono_literals;

namespace {

using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;
using Digest = std::array<unsigned char, 32>;

constexpr std::string_view kNotBuilt = R"json({"error":"not built yet"})json";
// Bytes read and thrown away after an error response, so that closing a socket with unread
// request bytes does not reset the connection before the client has read the response.
constexpr std::size_t kLingerBytes = 1024 * 1024;
constexpr std::chrono::milliseconds kLingerTime = 1000ms;

Digest sha256(std::string_view s) {
  Digest d{};
  unsigned int len = 0;
  if (EVP_Digest(s.data(), s.size(), d.data(), &len, EVP_sha256(), nullptr) != 1 ||
      len != d.size()) {
    // Without a digest nothing can be compared; an all-zero digest never matches because the
    // configured one is computed the same way only for a non-empty token (see authorised()).
    throw std::runtime_error("admin: SHA-256 unavailable");
  }
  return d;
}

// ---- JSON ------------------------------------------------------------------------------------

bool isHex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

std::uint32_t hexValue(char c) {
  if (c >= '0' && c <= '9') return static_cast<std::uint32_t>(c - '0');
  if (c >= 'a' && c <= 'f') return static_cast<std::uint32_t>(c - 'a' + 10);
  return static_cast<std::uint32_t>(c - 'A' + 10);
}

void appendUtf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

class JsonCursor {
 public:
  explicit JsonCursor(std::string_view s) : s_(s) {}

  void skipWhitespace() {
    while (i_ < s_.size() &&
           (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) {
      ++i_;
    }
  }
  bool consume(char c) {
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  [[nodiscard]] bool atEnd() const { return i_ == s_.size(); }

  // A JSON string; the cursor is at its opening quote.
  std::optional<std::string> string() {
    if (!consume('"')) return std::nullopt;
    std::string out;
    while (i_ < s_.size()) {
      auto c = static_cast<unsigned char>(s_[i_]);
      if (c == '"') {
        ++i_;
        return out;
      }
      if (c < 0x20) return std::nullopt;  // control characters must be escaped
      if (c == '\\') {
        if (!escape(out)) return std::nullopt;
      } else if (c < 0x80) {
        out += static_cast<char>(c);
        ++i_;
      } else if (!utf8(out)) {
        return std::nullopt;
      }
    }
    return std::nullopt;  // unterminated
  }

 private:
  bool escape(std::string& out) {
    ++i_;  // the backslash
    if (i_ >= s_.size()) return false;
    char e = s_[i_++];
    switch (e) {
      case '"':
        out += '"';
        return true;
      case '\\':
        out += '\\';
        return true;
      case '/':
        out += '/';
        return true;
      case 'b':
        out += '\b';
        return true;
      case 'f':
        out += '\f';
        return true;
      case 'n':
        out += '\n';
        return true;
      case 'r':
        out += '\r';
        return true;
      case 't':
        out += '\t';
        return true;
      case 'u':
        break;
      default:
        return false;
    }
    auto unit = hex4();
    if (!unit) return false;
    std::uint32_t cp = *unit;
    if (cp >= 0xDC00 && cp <= 0xDFFF) return false;  // lone low surrogate
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      // A high surrogate must be followed by an escaped low one.
      if (!(i_ + 1 < s_.size() && s_[i_] == '\\' && s_[i_ + 1] == 'u')) return false;
      i_ += 2;
      auto low = hex4();
      if (!low || *low < 0xDC00 || *low > 0xDFFF) return false;
      cp = 0x10000 + ((cp - 0xD800) << 10) + (*low - 0xDC00);
    }
    appendUtf8(out, cp);
    return true;
  }

  std::optional<std::uint32_t> hex4() {
    if (s_.size() - i_ < 4) return std::nullopt;
    std::uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s_[i_ + static_cast<std::size_t>(k)];
      if (!isHex(c)) return std::nullopt;
      v = (v << 4) | hexValue(c);
    }
    i_ += 4;
    return v;
  }

  // One multi-byte UTF-8 sequence, checked for shortest form, surrogates and range.
  bool utf8(std::string& out) {
    auto c = static_cast<unsigned char>(s_[i_]);
    std::size_t len = 0;
    std::uint32_t cp = 0;
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (s_.size() - i_ < len) return false;
    for (std::size_t k = 1; k < len; ++k) {
      auto cc = static_cast<unsigned char>(s_[i_ + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    out.append(s_.substr(i_, len));
    i_ += len;
    return true;
  }

  std::string_view s_;
  std::size_t i_ = 0;
};

// ---- HTTP ------------------------------------------------------------------------------------

Response jsonResponse(http::status status, std::string body, unsigned version, bool keepAlive) {
  Response res{status, version};
  res.set(http::field::content_type, "application/json");
  res.set(http::field::cache_control, "no-store");
  res.keep_alive(keepAlive);
  res.body() = std::move(body);
  res.prepare_payload();
  return res;
}

Response errorResponse(http::status status, std::string_view message, const Request& req) {
  return jsonResponse(status, R"({"error":")" + jsonEscape(message) + "\"}", req.version(),
                      req.keep_alive());
}

struct Route {
  std::string_view path;
  bool get;
  bool post;
  bool auth;
  std::string_view allow;
};

constexpr std::array kRoutes{
    Route{"/healthz", true, false, false, "GET"},
    Route{"/status", true, false, true, "GET"},
    Route{"/metrics", true, false, true, "GET"},
    Route{"/phase", true, true, true, "GET, POST"},
    Route{"/pause", false, true, true, "POST"},
    Route{"/resume", false, true, true, "POST"},
    Route{"/seed", true, false, true, "GET"},
    Route{"/seed/start", false, true, true, "POST"},
    Route{"/seed/heartbeat", false, true, true, "POST"},
    Route{"/seed/finish", false, true, true, "POST"},
    Route{"/seed/abort", false, true, true, "POST"},
};

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

}  // namespace

// ---- public helpers ----------------------------------------------------------------------------

std::optional<std::vector<std::pair<std::string, std::string>>> parseFlatJsonObject(
    std::string_view in) {
  JsonCursor cur(in);
  std::vector<std::pair<std::string, std::string>> members;
  cur.skipWhitespace();
  if (!cur.consume('{')) return std::nullopt;
  cur.skipWhitespace();
  if (!cur.consume('}')) {
    for (;;) {
      if (members.size() == kMaxJsonMembers) return std::nullopt;
      cur.skipWhitespace();
      auto key = cur.string();
      if (!key) return std::nullopt;
      cur.skipWhitespace();
      if (!cur.consume(':')) return std::nullopt;
      cur.skipWhitespace();
      auto value = cur.string();  // anything but a string is a wrong type
      if (!value) return std::nullopt;
      for (const auto& m : members) {
        if (m.first == *key) return std::nullopt;  // duplicate keys are ambiguous
      }
      members.emplace_back(std::move(*key), std::move(*value));
      cur.skipWhitespace();
      if (cur.consume('}')) break;
      if (!cur.consume(',')) return std::nullopt;
    }
  }
  cur.skipWhitespace();
  if (!cur.atEnd()) return std::nullopt;
  return members;
}

std::string jsonEscape(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size() + 2);
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xF];
        } else {
          out += ch;
        }
    }
  }
  return out;
}

// ---- server ------------------------------------------------------------------------------------

struct AdminServer::State {
  State(asio::io_context& io, AdminHooks h, AdminOptions o)
      : strand(asio::make_strand(io)), acceptor(strand), hooks(std::move(h)), options(o) {}

  asio::strand<asio::io_context::executor_type> strand;
  tcp::acceptor acceptor;
  AdminHooks hooks;
  AdminOptions options;
  bool tokenConfigured = false;
  Digest tokenDigest{};
  // Open connections, touched only on the strand; stop() closes them.
  std::map<std::uint64_t, std::shared_ptr<beast::tcp_stream>> sessions;
  std::uint64_t nextId = 0;
  bool stopped = false;

  // B53: compare digests of equal length in constant time, so neither the token's content
  // nor its length leaks through timing. An empty configured token admits nobody.
  [[nodiscard]] bool authorised(const Request& req) const {
    auto it = req.find(http::field::authorization);
    if (it == req.end() || !tokenConfigured) return false;
    std::string_view v(it->value().data(), it->value().size());
    constexpr std::string_view kScheme = "bearer";
    if (v.size() <= kScheme.size() || !iequals(v.substr(0, kScheme.size()), kScheme) ||
        (v[kScheme.size()] != ' ' && v[kScheme.size()] != '\t')) {
      return false;
    }
    v.remove_prefix(kScheme.size());
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
    if (v.empty()) return false;
    Digest presented = sha256(v);
    return CRYPTO_memcmp(presented.data(), tokenDigest.data(), presented.size()) == 0;
  }

  // A validated control request, run by handleAsync after the synchronous checks.
  struct Control {
    enum class Kind { kNone, kPhase, kPause, kResume, kSeed } kind = Kind::kNone;
    std::string phase;  // kSeed: the action
    std::optional<std::chrono::milliseconds> drainTimeout;
  };

  // Parses {"phase": ..., "drain_timeout": ...} (POST /phase) or {"drain_timeout": ...}
  // (POST /pause, where an empty body is fine). Fills `out` or returns the 400 to send.
  std::optional<Response> parseControlBody(const Request& req, bool wantPhase, Control& out) const {
    // B59: validate the whole body before anything could change.
    if (!wantPhase && req.body().find_first_not_of(" \t\r\n") == std::string::npos) {
      return std::nullopt;
    }
    auto members = parseFlatJsonObject(req.body());
    if (!members) {
      return errorResponse(http::status::bad_request,
                           wantPhase ? R"(body must be a JSON object of strings, e.g. {"phase": )"
                                       R"("mirror", "drain_timeout": "5s"})"
                                     : R"(body must be empty or a JSON object of strings, e.g. )"
                                       R"({"drain_timeout": "5s"})",
                           req);
    }
    std::optional<std::string_view> phase;
    for (const auto& [key, value] : *members) {
      if (key == "phase" && wantPhase) {
        phase = value;
      } else if (key == "drain_timeout") {
        auto d = config::parseDuration(value);
        if (!d || d->count() <= 0) {
          return errorResponse(http::status::bad_request,
                               "drain_timeout must be a duration such as 5s or 250ms", req);
        }
        out.drainTimeout = *d;
      } else {
        return errorResponse(http::status::bad_request,
                             wantPhase
                                 ? "unknown field; expected phase and optionally drain_timeout"
                                 : "unknown field; expected only drain_timeout",
                             req);
      }
    }
    if (!wantPhase) return std::nullopt;
    if (!phase) return errorResponse(http::status::bad_request, "phase is required", req);
    if (!phaseFromName(*phase)) {
      // B56. The name is not echoed: it is peer input.
      std::string msg = "unknown phase; expected one of";
      const char* sep = " ";
      for (auto name : labels::PhaseDim::kValues) {
        msg += sep;
        msg += name;
        sep = ", ";
      }
      return errorResponse(http::status::bad_request, msg, req);
    }
    out.phase = std::string(*phase);
    return std::nullopt;
  }

  // Every request: the synchronous checks in handle(), then the control hook if any.
  awaitable<Response> handleAsync(const Request& req) const {
    Control control;
    Response res = handle(req, control);
    if (control.kind == Control::Kind::kNone) co_return res;
    AdminReply reply{501, std::string(kNotBuilt)};
    try {
      switch (control.kind) {
        case Control::Kind::kPhase:
          if (hooks.setPhase) reply = co_await hooks.setPhase(control.phase, control.drainTimeout);
          break;
        case Control::Kind::kPause:
          if (hooks.pause) reply = co_await hooks.pause(control.drainTimeout);
          break;
        case Control::Kind::kResume:
          if (hooks.resume) reply = hooks.resume();
          break;
        case Control::Kind::kSeed:
          if (hooks.seed) reply = co_await hooks.seed(control.phase, control.drainTimeout);
          break;
        case Control::Kind::kNone:
          break;
      }
    } catch (const std::exception& e) {
      spdlog::error("admin: control request failed: {}", e.what());
      reply = AdminReply{500, R"({"error":"internal error"})"};
    }
    co_return jsonResponse(static_cast<http::status>(reply.status), std::move(reply.json),
                           req.version(), req.keep_alive());
  }

  Response handle(const Request& req, Control& control) const {
    std::string_view target(req.target().data(), req.target().size());
    std::string_view path = target.substr(0, target.find('?'));
    const Route* route = nullptr;
    for (const auto& r : kRoutes) {
      if (r.path == path) route = &r;
    }
    if (route == nullptr) return errorResponse(http::status::not_found, "not found", req);
    if (route->auth && !authorised(req)) {
      Response res = errorResponse(http::status::unauthorized, "unauthorized", req);
      res.set(http::field::www_authenticate, R"(Bearer realm="pghandoff")");
      return res;
    }
    const bool isGet = req.method() == http::verb::get;
    const bool isPost = req.method() == http::verb::post;
    if (!((isGet && route->get) || (isPost && route->post))) {
      // B55: state changes only via POST; nothing else is served.
      Response res = errorResponse(http::status::method_not_allowed, "method not allowed", req);
      res.set(http::field::allow, route->allow);
      return res;
    }
    try {
      if (path == "/healthz") {
        bool ok = hooks.healthy && hooks.healthy();
        return jsonResponse(ok ? http::status::ok : http::status::service_unavailable,
                            ok ? R"({"status":"ok"})" : R"({"status":"unavailable"})",
                            req.version(), req.keep_alive());
      }
      if (path == "/metrics") {
        Response res{http::status::ok, req.version()};
        res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
        res.set(http::field::cache_control, "no-store");
        res.keep_alive(req.keep_alive());
        if (hooks.refreshGauges) hooks.refreshGauges();
        res.body() = renderMetrics();
        res.prepare_payload();
        return res;
      }
      if (path == "/status") {
        if (!hooks.statusJson) {
          return errorResponse(http::status::service_unavailable, "status not available", req);
        }
        return jsonResponse(http::status::ok, hooks.statusJson(), req.version(), req.keep_alive());
      }
      if (path == "/phase" && isGet) {
        if (!hooks.phase) {
          return errorResponse(http::status::service_unavailable, "phase not available", req);
        }
        return jsonResponse(http::status::ok, R"({"phase":")" + jsonEscape(hooks.phase()) + "\"}",
                            req.version(), req.keep_alive());
      }
      if (path == "/seed" && isGet) {
        if (!hooks.seedJson) {
          return errorResponse(http::status::service_unavailable, "seed not available", req);
        }
        return jsonResponse(http::status::ok, hooks.seedJson(), req.version(), req.keep_alive());
      }
      if (path.rfind("/seed/", 0) == 0) {
        if (auto bad = parseControlBody(req, false, control)) return std::move(*bad);
        control.kind = Control::Kind::kSeed;
        control.phase = std::string(path.substr(6));
        return Response{};
      }
      // POST /phase, /pause, /resume: validated here, run by handleAsync.
      if (path == "/resume") {
        if (req.body().find_first_not_of(" \t\r\n") != std::string::npos) {
          return errorResponse(http::status::bad_request, "POST /resume takes no body", req);
        }
        control.kind = Control::Kind::kResume;
        return Response{};
      }
      const bool isPhase = path == "/phase";
      if (auto bad = parseControlBody(req, isPhase, control)) return std::move(*bad);
      control.kind = isPhase ? Control::Kind::kPhase : Control::Kind::kPause;
      return Response{};
    } catch (const std::exception& e) {
      spdlog::error("admin: {} failed: {}", path, e.what());
      return errorResponse(http::status::internal_server_error, "internal error", req);
    }
  }

  void closeAll() {
    stopped = true;
    error_code ignored;
    acceptor.close(ignored);
    for (auto& [id, stream] : sessions) stream->close();
  }
};

namespace {

void logSpawnFailure(std::exception_ptr e) {
  if (!e) return;
  // Sessions report errors as values; an exception escaping one is a bug, not peer input.
  metrics().internalBugsTotal().inc();
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    spdlog::error("admin: connection handler failed: {}", ex.what());
  } catch (...) {
    spdlog::error("admin: connection handler failed");
  }
}

// Sends an error for a request that could not be read, then closes gracefully: half-close and
// read what the client still sends, so that the close does not turn into a reset that destroys
// the response in the client's receive buffer.
awaitable<void> failAndClose(std::shared_ptr<AdminServer::State> st, beast::tcp_stream& stream,
                             http::status status, std::string_view message) {
  Response res{status, 11};
  res.set(http::field::content_type, "application/json");
  res.set(http::field::connection, "close");
  res.body() = R"({"error":")" + jsonEscape(message) + "\"}";
  res.prepare_payload();
  stream.expires_after(st->options.timeout);
  auto [ec, n] = co_await http::async_write(stream, res, kUseAwaitable);
  if (ec) co_return;
  error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
  stream.expires_after(std::min<std::chrono::milliseconds>(st->options.timeout, kLingerTime));
  std::array<char, 4096> scratch;
  std::size_t total = 0;
  while (total < kLingerBytes && !st->stopped) {
    auto [rec, got] = co_await stream.async_read_some(asio::buffer(scratch), kUseAwaitable);
    if (rec) break;
    total += got;
  }
}

awaitable<void> session(std::shared_ptr<AdminServer::State> st,
                        std::shared_ptr<beast::tcp_stream> stream, std::uint64_t id) {
  struct Unregister {
    AdminServer::State& st;
    std::uint64_t id;
    ~Unregister() { st.sessions.erase(id); }
  } unregister{*st, id};

  beast::flat_buffer buffer;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(st->options.headerLimit));
    parser.body_limit(st->options.bodyLimit);
    // One deadline for the whole request, so a slow body cannot hold the connection either.
    stream->expires_after(st->options.timeout);
    auto [ec, n] = co_await http::async_read(*stream, buffer, parser, kUseAwaitable);
    if (ec) {
      if (ec == http::error::header_limit) {
        co_await failAndClose(st, *stream, http::status::request_header_fields_too_large,
                              "request header too large");
      } else if (ec == http::error::body_limit) {
        co_await failAndClose(st, *stream, http::status::payload_too_large,
                              "request body too large");
      } else if (ec.category() == http::make_error_code(http::error::bad_method).category() &&
                 ec != http::error::end_of_stream && ec != http::error::partial_message) {
        co_await failAndClose(st, *stream, http::status::bad_request, "malformed request");
      }
      // end of stream, timeout, reset, stop(): just close.
      break;
    }
    Response res = co_await st->handleAsync(parser.get());
    const bool keepAlive = res.keep_alive();
    stream->expires_after(st->options.timeout);
    auto [wec, wn] = co_await http::async_write(*stream, res, kUseAwaitable);
    if (wec || !keepAlive || st->stopped) break;
  }
  error_code ignored;
  stream->socket().shutdown(tcp::socket::shutdown_both, ignored);
  stream->close();
}

awaitable<void> acceptLoop(std::shared_ptr<AdminServer::State> st) {
  while (!st->stopped) {
    auto [ec, socket] = co_await st->acceptor.async_accept(kUseAwaitable);
    if (ec) {
      if (st->stopped || !st->acceptor.is_open()) co_return;
      spdlog::warn("admin: accept failed: {}", ec.message());
      // EMFILE and friends persist for a while: back off instead of spinning.
      asio::steady_timer backoff(st->strand, 100ms);
      co_await backoff.async_wait(kUseAwaitable);
      continue;
    }
    if (st->sessions.size() >= st->options.maxConnections) {
      // The admin port's own budget: excess connections are closed at once so they cannot
      // crowd out an operator or starve the data plane.
      spdlog::debug("admin: connection limit {} reached, closing a new connection",
                    st->options.maxConnections);
      error_code ignored;
      socket.close(ignored);
      continue;
    }
    auto stream = std::make_shared<beast::tcp_stream>(std::move(socket));
    const std::uint64_t id = st->nextId++;
    st->sessions.emplace(id, stream);
    asio::co_spawn(st->strand, session(st, std::move(stream), id), logSpawnFailure);
  }
}

std::string describe(const std::string& host, std::uint16_t port) {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

}  // namespace

AdminServer::AdminServer(asio::io_context& io, const std::string& host, std::uint16_t port,
                         std::string token, AdminHooks hooks, AdminOptions options)
    : state_(std::make_shared<State>(io, std::move(hooks), options)) {
  if (!token.empty()) {
    state_->tokenConfigured = true;
    state_->tokenDigest = sha256(token);
  }
  // Keep only the digest.
  OPENSSL_cleanse(token.data(), token.size());

  const std::string where = describe(host, port);
  error_code ec;
  tcp::endpoint endpoint;
  auto address = asio::ip::make_address(host, ec);
  if (!ec) {
    endpoint = tcp::endpoint(address, port);
  } else {
    tcp::resolver resolver(io);
    auto results = resolver.resolve(host, std::to_string(port), tcp::resolver::passive, ec);
    if (ec || results.empty()) {
      throw std::runtime_error("admin: cannot resolve listen address " + where + ": " +
                               (ec ? ec.message() : std::string("no address")));
    }
    endpoint = results.begin()->endpoint();
  }
  auto& acceptor = state_->acceptor;
  const auto fail = [&](const char* what) {
    throw std::runtime_error("admin: cannot " + std::string(what) + " " + where + ": " +
                             ec.message());
  };
  if (acceptor.open(endpoint.protocol(), ec); ec) fail("open a socket for");
  if (acceptor.set_option(asio::socket_base::reuse_address(true), ec); ec) fail("configure");
  if (acceptor.bind(endpoint, ec); ec) fail("bind");
  if (acceptor.listen(asio::socket_base::max_listen_connections, ec); ec) fail("listen on");
  port_ = acceptor.local_endpoint(ec).port();
  if (ec) fail("read the local address of");
}

AdminServer::~AdminServer() {
  stop();
}

void AdminServer::start() {
  asio::co_spawn(state_->strand, acceptLoop(state_), logSpawnFailure);
}

void AdminServer::stop() {
  asio::dispatch(state_->strand, [st = state_] { st->closeAll(); });
}

std::uint16_t AdminServer::port() const {
  return port_;
}

}  // namespace pghandoff::proxy
