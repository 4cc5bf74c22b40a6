#include "proxy/upstream.h"

#include <variant>

#include "protocol/frame.h"
#include "protocol/frontend.h"
#include "protocol/md5auth.h"
#include "protocol/scram.h"
#include "protocol/startup.h"
#include "proxy/tls.h"
#include "proxy/watchdog.h"

namespace pghandoff::proxy {

namespace {

using protocol::ErrorFields;

LoginResult fail(std::string message, const char* code = protocol::sqlstate::kUnableToConnect) {
  LoginResult r;
  r.error = ErrorFields{"FATAL", code, std::move(message), "", ""};
  return r;
}

std::string where(const config::ConnInfo& info) {
  return "server at \"" + info.host + "\", port " + std::to_string(info.port);
}

// Reads one whole backend message into `msg` (type, body). Startup-phase
// messages are small; anything over the auth limit is a protocol error.
awaitable<std::optional<std::pair<char, std::vector<std::uint8_t>>>> readMessage(
    Stream& s, std::vector<std::uint8_t>& buf) {
  while (true) {
    auto h = protocol::parseBackendHeader(buf, protocol::kAuthLimit);
    if (h.status == protocol::FrameStatus::kOk && buf.size() >= h.total()) {
      std::vector<std::uint8_t> body(buf.begin() + 5, buf.begin() + static_cast<long>(h.total()));
      buf.erase(buf.begin(), buf.begin() + static_cast<long>(h.total()));
      co_return std::make_pair(h.type, std::move(body));
    }
    if (h.status != protocol::FrameStatus::kOk && h.status != protocol::FrameStatus::kNeedMore) {
      co_return std::nullopt;
    }
    std::uint8_t chunk[4096];
    auto [ec, n] = co_await s.readSome(asio::buffer(chunk));
    if (ec) co_return std::nullopt;
    buf.insert(buf.end(), chunk, chunk + n);
  }
}

}  // namespace

awaitable<LoginResult> ServerConnection::login(
    const config::ConnInfo& info, const std::vector<std::pair<std::string, std::string>>& params,
    std::chrono::milliseconds timeout) {
  // The connection object outlives login (the session owns it).
  Watchdog watchdog(stream_.socket().get_executor(), timeout, [this] { stream_.close(); });
  LoginResult r = co_await loginSteps(info, params);
  watchdog.disarm();
  if (watchdog.expired()) {
    r = fail("connection to " + where(info) + " timed out after " +
             std::to_string(timeout.count()) + " ms");
  }
  co_return r;
}

awaitable<LoginResult> ServerConnection::loginSteps(
    const config::ConnInfo& info, const std::vector<std::pair<std::string, std::string>>& params) {
  auto ex = stream_.socket().get_executor();
  tcp::resolver resolver(ex);
  auto [rec, endpoints] =
      co_await resolver.async_resolve(info.host, std::to_string(info.port), kUseAwaitable);
  if (rec) co_return fail("could not translate host name \"" + info.host + "\": " + rec.message());
  auto [cec, endpoint] = co_await asio::async_connect(stream_.socket(), endpoints, kUseAwaitable);
  if (cec) co_return fail("connection to " + where(info) + " failed: " + cec.message());
  error_code ignored;
  stream_.socket().set_option(tcp::no_delay(true), ignored);
  stream_.socket().set_option(asio::socket_base::keep_alive(true), ignored);

  using config::SslMode;
  bool tlsWanted = info.sslmode == SslMode::kPrefer || info.sslmode == SslMode::kRequire ||
                   info.sslmode == SslMode::kVerifyCa || info.sslmode == SslMode::kVerifyFull;
  if (tlsWanted) {
    std::vector<std::uint8_t> req;
    protocol::encodeSslRequest(req);
    auto [wec, wn] = co_await stream_.writeAll(asio::buffer(req));
    if (wec) co_return fail("connection to " + where(info) + " failed: " + wec.message());
    std::uint8_t answer = 0;
    auto [aec, an] =
        co_await asio::async_read(stream_.socket(), asio::buffer(&answer, 1), kUseAwaitable);
    if (aec) co_return fail("connection to " + where(info) + " lost during SSL negotiation");
    if (answer == 'S') {
      // Bytes the server sent before the handshake would be read as if they
      // came through TLS (CVE-2021-23222): refuse them (B46).
      if (stream_.socket().available(ignored) > 0) {
        co_return fail("received unencrypted data after SSL response from " + where(info),
                       protocol::sqlstate::kProtocolViolation);
      }
      prepareUpstreamStream(stream_.tls(), info);
      auto [hec] = co_await stream_.tls().async_handshake(ssl::stream_base::client, kUseAwaitable);
      if (hec) {
        co_return fail("SSL connection to " + where(info) + " failed: " + hec.message());
      }
      stream_.setTls();
    } else if (answer == 'N') {
      if (info.sslmode != SslMode::kPrefer) {
        co_return fail(where(info) + " does not support SSL, but SSL was required");
      }
    } else {
      // An 'E' here comes from a server that cannot even start a backend; its
      // text is not trusted and not relayed (CVE-2024-10977, B47).
      co_return fail("invalid response to SSL negotiation from " + where(info),
                     protocol::sqlstate::kProtocolViolation);
    }
  }

  protocol::StartupMessage sm;
  sm.parameters.emplace_back("user", info.user);
  sm.parameters.emplace_back("database", info.dbname);
  bool haveAppName = false;
  std::string options = info.options;
  for (const auto& [k, v] : params) {
    if (k == "application_name") haveAppName = true;
    if (k == "options") {
      options = options.empty() ? v : options + " " + v;
      continue;
    }
    sm.parameters.emplace_back(k, v);
  }
  if (!haveAppName && !info.applicationName.empty()) {
    sm.parameters.emplace_back("application_name", info.applicationName);
  }
  if (!options.empty()) sm.parameters.emplace_back("options", options);
  std::vector<std::uint8_t> out;
  protocol::encodeStartup(sm, out);
  if (auto [ec, n] = co_await stream_.writeAll(asio::buffer(out)); ec) {
    co_return fail("connection to " + where(info) + " lost: " + ec.message());
  }

  LoginResult result;
  std::vector<std::uint8_t> buf;
  std::optional<protocol::ScramClient> scram;
  bool authenticated = false;
  bool scramVerified = false;
  while (true) {
    auto msg = co_await readMessage(stream_, buf);
    if (!msg) co_return fail("connection to " + where(info) + " lost during login");
    auto& [type, body] = *msg;
    out.clear();
    switch (type) {
      case 'R': {
        auto auth = protocol::decodeAuthBody(body);
        if (!auth) co_return fail("malformed authentication request from " + where(info));
        switch (static_cast<protocol::AuthCode>(auth->code)) {
          case protocol::AuthCode::kOk:
            // After a SCRAM exchange, AuthenticationOk counts only once the
            // server proved it knows the password (its signature in
            // SASLFinal); a spoofing server could skip SASLFinal.
            if (scram && !scramVerified) {
              co_return fail(where(info) + " skipped the SCRAM server signature",
                             protocol::sqlstate::kProtocolViolation);
            }
            authenticated = true;
            break;
          case protocol::AuthCode::kCleartextPassword:
            if (info.password.empty())
              co_return fail("the server asks for a password, but the URL has none");
            protocol::encodePassword(info.password, out);
            break;
          case protocol::AuthCode::kMd5Password: {
            if (info.password.empty())
              co_return fail("the server asks for a password, but the URL has none");
            if (auth->md5Salt.size() != 4) co_return fail("malformed MD5 request");
            std::array<std::uint8_t, 4> salt{};
            std::copy(auth->md5Salt.begin(), auth->md5Salt.end(), salt.begin());
            protocol::encodePassword(
                protocol::md5Response(protocol::md5StoredHash(info.password, info.user), salt),
                out);
            break;
          }
          case protocol::AuthCode::kSasl: {
            if (info.password.empty())
              co_return fail("the server asks for a password, but the URL has none");
            bool plus = false, plain = false;
            for (const auto& m : auth->mechanisms) {
              if (m == "SCRAM-SHA-256-PLUS") plus = true;
              if (m == "SCRAM-SHA-256") plain = true;
            }
            if (!plus && !plain)
              co_return fail("none of the server's SASL mechanisms are supported");
            std::vector<std::uint8_t> cbind;
            if (stream_.isTls()) {
              if (auto ep = protocol::tlsServerEndPoint(peerCertificateDer(stream_.tls()))) {
                cbind = std::move(*ep);
              }
            }
            scram.emplace(info.password, cbind, plus);
            auto first = scram->clientFirst();
            if (auto* f = std::get_if<protocol::AuthFailure>(&first)) {
              co_return fail("SCRAM with " + where(info) + " failed: " + f->message);
            }
            protocol::encodeSaslInitial(scram->mechanism(), std::get<std::string>(first), out);
            break;
          }
          case protocol::AuthCode::kSaslContinue: {
            if (!scram) co_return fail("unexpected SASL continue from " + where(info));
            auto next = scram->serverFirst(protocol::asString(auth->data));
            if (auto* f = std::get_if<protocol::AuthFailure>(&next)) {
              co_return fail("SCRAM with " + where(info) + " failed: " + f->message);
            }
            protocol::encodeSaslResponse(std::get<std::string>(next), out);
            break;
          }
          case protocol::AuthCode::kSaslFinal: {
            if (!scram) co_return fail("unexpected SASL final from " + where(info));
            if (auto f = scram->serverFinal(protocol::asString(auth->data))) {
              co_return fail("SCRAM with " + where(info) + " failed: " + f->message);
            }
            scramVerified = true;
            break;
          }
          default:
            co_return fail("authentication method " + std::to_string(auth->code) +
                           " requested by " + where(info) + " is not supported");
        }
        if (!out.empty()) {
          if (auto [ec, n] = co_await stream_.writeAll(asio::buffer(out)); ec) {
            co_return fail("connection to " + where(info) + " lost during login");
          }
        }
        break;
      }
      case 'E': {
        auto e = protocol::decodeErrorBody(body);
        if (!e) co_return fail("malformed error from " + where(info));
        result.error = std::move(*e);
        result.error.severity = "FATAL";
        co_return result;
      }
      case 'S':
      case 'N': {
        protocol::Writer w(result.replay);
        w.begin(type).raw(protocol::Bytes(body));
        w.end();
        break;
      }
      case 'K': {
        auto k = protocol::decodeBackendKeyBody(body);
        if (!k) co_return fail("malformed BackendKeyData from " + where(info));
        result.key = *k;
        break;
      }
      case 'v':  // NegotiateProtocolVersion: we asked for plain 3.0
        break;
      case 'Z': {
        auto st = protocol::decodeReadyForQueryBody(body);
        if (!st || !authenticated) co_return fail("protocol violation from " + where(info));
        result.txStatus = *st;
        result.ok = true;
        result.endpoint = endpoint;
        co_return result;
      }
      default:
        co_return fail("unexpected message during login from " + where(info),
                       protocol::sqlstate::kProtocolViolation);
    }
  }
}

awaitable<bool> sendCancel(asio::any_io_executor ex, tcp::endpoint endpoint,
                           protocol::BackendKeyData key) {
  auto sock = std::make_shared<tcp::socket>(ex);
  Watchdog watchdog(ex, std::chrono::seconds(5), [sock] {
    error_code ignored;
    sock->close(ignored);
  });
  auto [cec] = co_await sock->async_connect(endpoint, kUseAwaitable);
  if (cec) co_return false;
  std::vector<std::uint8_t> out;
  protocol::encodeCancel({key.pid, key.key}, out);
  auto [wec, wn] = co_await asio::async_write(*sock, asio::buffer(out), kUseAwaitable);
  if (wec) co_return false;
  // The server closes the connection when it has processed the request.
  std::uint8_t b;
  co_await sock->async_read_some(asio::buffer(&b, 1), kUseAwaitable);
  co_return true;
}

}  // namespace pghandoff::proxy
