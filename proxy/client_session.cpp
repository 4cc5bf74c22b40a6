#include "proxy/client_session.h"

#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <variant>

#include "protocol/frame.h"
#include "protocol/frontend.h"
#include "protocol/md5auth.h"
#include "protocol/scram.h"
#include "proxy/logging.h"
#include "proxy/metrics.h"
#include "proxy/watchdog.h"

namespace pghandoff::proxy {

namespace sqlstate = protocol::sqlstate;
using labels::RejectReason;
using labels::Side;

namespace {

// PostgreSQL truncates user and database names to NAMEDATALEN - 1 (B12).
constexpr std::size_t kMaxNameLength = 63;

std::string truncateName(std::string s) {
  if (s.size() > kMaxNameLength) s.resize(kMaxNameLength);
  return s;
}

bool isTrueish(const std::string& v) {
  return v == "true" || v == "on" || v == "yes" || v == "1" || v == "database";
}

}  // namespace

ClientSession::ClientSession(tcp::socket socket, std::shared_ptr<const Runtime> rt,
                             Registry& registry, bool admitted, std::uint64_t id)
    : rt_(std::move(rt)),
      registry_(registry),
      phases_(registry.phases()),
      id_(id),
      admitted_(admitted),
      ex_(socket.get_executor()),
      client_(std::move(socket), rt_->clientTls ? *rt_->clientTls->context : *rt_->plain) {
  error_code ec;
  auto ep = client_.socket().remote_endpoint(ec);
  if (!ec) clientAddress_ = ep.address().to_string() + ":" + std::to_string(ep.port());
  client_.socket().set_option(tcp::no_delay(true), ec);
  metrics().clientConnectionsTotal().inc();
  metrics().clientConnections().inc();
}

ClientSession::~ClientSession() {
  if (inTransaction_) phases_.end();  // the server rolled it back when the connection closed
  metrics().clientConnections().dec();
  if (admitted_) registry_.release();
}

ClientSession::Info ClientSession::info() const {
  auto st = static_cast<SessionState>(publicState_.load(std::memory_order_acquire));
  bool named = st != SessionState::kStartup;
  return Info{id_,
              toString(st),
              publicTx_.load(std::memory_order_relaxed),
              named ? user_ : std::string(),
              named ? applicationName_ : std::string(),
              clientAddress_,
              named && client_.isTls()};
}

awaitable<void> ClientSession::run() {
  auto self = shared_from_this();
  registry_.add(self);
  co_await runInner();
  closing_ = true;
  client_.close();
  for (int i : {kSourceIdx, kTargetIdx}) {
    if (up_[i].conn) {
      up_[i].conn->stream().close();
      up_[i].conn.reset();
      metrics().serverConnections(sideLabel(i)).dec();
    }
  }
  machine_.closed();
  publicState_.store(static_cast<int>(SessionState::kClosed), std::memory_order_release);
  registry_.remove(this, proxyKey_);
  spdlog::debug("session {}: closed", id_);
}

awaitable<void> ClientSession::runInner() {
  // Startup and authentication are bounded by limits.startup_timeout: a
  // watchdog closes the socket, so a slowloris client (B5, B6) cannot hold a
  // connection slot.
  Watchdog watchdog(ex_, rt_->cfg.limits.startupTimeout, [self = shared_from_this()] {
    self->startupTimedOut_ = true;
    self->client_.close();
  });
  bool ok = co_await startupPhase();
  watchdog.disarm();
  if (startupTimedOut_) {
    metrics().clientConnectionsRejectedTotal(RejectReason::kStartupTimeout).inc();
    spdlog::info("session {}: startup timed out after {} ms ({})", id_,
                 rt_->cfg.limits.startupTimeout.count(), clientAddress_);
    co_return;
  }
  if (!ok) co_return;

  publicState_.store(static_cast<int>(SessionState::kIdle), std::memory_order_release);
  using namespace asio::experimental::awaitable_operators;
  while (true) {
    if (mode_ == Mode::kStream) {
      // One coroutine per direction; whichever ends first closes the
      // sockets so that the other ends too.
      co_await (clientToServer() && serverToClient());
    } else {
      // Request by request, to both servers in turn.
      co_await lockstep();
    }
    if (!handover_) break;
    // A transaction boundary asked for another mode or side: arrange the
    // server sessions and go on with the request that is waiting.
    handover_ = false;
    if (!co_await arrangeSides()) break;
  }
}

// ---------------------------------------------------------------------------
// Startup

awaitable<std::optional<protocol::Bytes>> ClientSession::readStartupPacket() {
  while (true) {
    auto h = protocol::parseStartupHeader(cbuf_.pending());
    if (h.status == protocol::FrameStatus::kOk && cbuf_.pendingSize() >= h.length) {
      co_return cbuf_.pending().subspan(0, h.length);
    }
    if (h.status == protocol::FrameStatus::kBadLength ||
        h.status == protocol::FrameStatus::kTooLarge) {
      // B3/B4: PostgreSQL closes without a reply; so do we, before
      // allocating anything for the claimed length.
      metrics().clientConnectionsRejectedTotal(RejectReason::kProtocol).inc();
      spdlog::info("session {}: invalid length of startup packet ({})", id_, clientAddress_);
      co_return std::nullopt;
    }
    auto [ec, n] = co_await client_.readSome(cbuf_.freeSpace());
    if (ec) {
      if (startupTimedOut_) co_return std::nullopt;  // counted once, by runInner
      if (cbuf_.pendingSize() > 0) {
        metrics().clientConnectionsRejectedTotal(RejectReason::kProtocol).inc();
        spdlog::info("session {}: incomplete startup packet ({})", id_, clientAddress_);
      } else {
        spdlog::debug("session {}: closed before startup ({})", id_, clientAddress_);
      }
      co_return std::nullopt;
    }
    cbuf_.commit(n);
  }
}

awaitable<bool> ClientSession::startupPhase() {
  bool sslDone = false, gssDone = false;
  protocol::StartupMessage startup;
  while (true) {
    auto packet = co_await readStartupPacket();
    if (!packet) co_return false;
    protocol::Reader r(*packet);
    (void)r.int32();
    std::int32_t code = r.int32();
    std::size_t packetSize = packet->size();

    if (code == protocol::kCancelRequestCode) {
      co_await handleCancel(*packet);
      co_return false;
    }
    if (code == protocol::kSslRequestCode || code == protocol::kGssEncRequestCode) {
      bool ssl = code == protocol::kSslRequestCode;
      // Inside TLS a GSSENCRequest is a duplicate too (PostgreSQL marks GSS done once SSL is up).
      if ((ssl && (sslDone || client_.isTls())) || (!ssl && (gssDone || client_.isTls()))) {
        prepareFatal(sqlstate::kProtocolViolation, "duplicate encryption request");  // B16
        co_await flushError();
        co_return false;
      }
      // Data after the request but before our answer would be read as if it
      // came through the encrypted channel (CVE-2021-23214, B15/B17).
      if (cbuf_.pendingSize() > packetSize) {
        metrics().clientConnectionsRejectedTotal(RejectReason::kProtocol).inc();
        prepareFatal(sqlstate::kProtocolViolation,
                     ssl ? "received unencrypted data after SSL request"
                         : "received unencrypted data after GSSAPI encryption request");
        co_await flushError();
        co_return false;
      }
      cbuf_.consume(packetSize);
      bool accept = ssl && rt_->clientTls.has_value();
      std::uint8_t answer = accept ? 'S' : 'N';
      if (auto [ec, n] = co_await client_.writeAll(asio::buffer(&answer, 1)); ec) co_return false;
      if (ssl)
        sslDone = true;
      else
        gssDone = true;
      if (accept) {
        auto [hec] =
            co_await client_.tls().async_handshake(ssl::stream_base::server, kUseAwaitable);
        if (hec) {
          metrics().clientConnectionsRejectedTotal(RejectReason::kTls).inc();
          spdlog::info("session {}: TLS handshake failed ({}): {}", id_, clientAddress_,
                       hec.message());
          co_return false;
        }
        client_.setTls();
      }
      continue;
    }
    if ((code >> 16) != 3) {
      metrics().clientConnectionsRejectedTotal(RejectReason::kProtocol).inc();
      prepareFatal(sqlstate::kFeatureNotSupported,
                   "unsupported frontend protocol " + std::to_string(code >> 16) + "." +
                       std::to_string(code & 0xffff) + ": server supports 3.0 to 3.0");  // B7
      co_await flushError();
      co_return false;
    }
    protocol::StartupError err{};
    auto decoded = protocol::decodeStartup(*packet, &err);
    cbuf_.consume(packetSize);
    if (!decoded) {
      metrics().clientConnectionsRejectedTotal(RejectReason::kProtocol).inc();
      prepareFatal(sqlstate::kProtocolViolation, "invalid startup packet layout");  // B9, B10
      co_await flushError();
      co_return false;
    }
    startup = std::move(*decoded);
    break;
  }

  // Protocol 3.x with x > 0 and _pq_ options: answer NegotiateProtocolVersion
  // and go on with 3.0, as PostgreSQL and PgBouncer do (B8).
  std::vector<std::string> unrecognised;
  for (const auto& [k, v] : startup.parameters) {
    if (k.rfind("_pq_.", 0) == 0) {
      unrecognised.push_back(k);
    } else if (k == "user") {
      user_ = truncateName(v);
    } else if (k == "database") {
      database_ = truncateName(v);
    } else if (k == "replication") {
      if (isTrueish(v)) {
        prepareFatal(sqlstate::kFeatureNotSupported,
                     "pghandoff does not support replication connections");  // B13
        co_await flushError();
        co_return false;
      }
    } else {
      if (k == "application_name") applicationName_ = sanitizeForLog(v, 64);
      // Passed on to the server only after authentication (B14).
      passOn_.emplace_back(k, v);
    }
  }
  if ((startup.protocol & 0xffff) != 0 || !unrecognised.empty()) {
    std::vector<std::uint8_t> out;
    // PostgreSQL sends PG_PROTOCOL_LATEST (the full 3.0 code) and libpq
    // compares it as such, whatever the docs say of "newest minor".
    protocol::encodeNegotiateProtocolVersion(protocol::kProtocol30, unrecognised, out);
    if (!co_await writeClient(out)) co_return false;
  }
  if (user_.empty()) {
    prepareFatal(sqlstate::kInvalidAuthSpec,
                 "no PostgreSQL user name specified in startup packet");  // B11
    co_await flushError();
    co_return false;
  }
  if (database_.empty()) database_ = user_;

  if (rt_->cfg.clientTls.mode == config::TlsMode::kRequire && !client_.isTls()) {
    metrics().clientConnectionsRejectedTotal(RejectReason::kTls).inc();
    prepareFatal(sqlstate::kInvalidAuthSpec,
                 "pghandoff requires SSL for user \"" + sanitizeForLog(user_, 63) +
                     "\" (client_tls.mode is require), no encryption");  // B23
    co_await flushError();
    co_return false;
  }
  if (!admitted_) {
    metrics().clientConnectionsRejectedTotal(RejectReason::kTooMany).inc();
    prepareFatal(sqlstate::kTooManyConnections, "sorry, too many clients already");
    co_await flushError();
    co_return false;
  }

  machine_.startAuthentication();
  publicState_.store(static_cast<int>(SessionState::kAuthenticating), std::memory_order_release);
  if (!co_await authenticate()) co_return false;

  if (database_ != rt_->source.dbname) {
    prepareFatal(sqlstate::kInvalidCatalogName,
                 "database \"" + sanitizeForLog(database_, 63) + "\" does not exist",
                 "pghandoff serves the database \"" + rt_->source.dbname + "\"");
    co_await flushError();
    co_return false;
  }

  machine_.startConnecting();
  publicState_.store(static_cast<int>(SessionState::kConnecting), std::memory_order_release);
  // Log in where the current phase's answers come from; the other side, when
  // a transaction needs it, is opened then (arrangeSides).
  Phase now = phases_.current();
  relay_ = targetAuthoritative(now) && rt_->target ? kTargetIdx : kSourceIdx;
  co_return co_await connectSide(relay_, true, nullptr);
}

awaitable<void> ClientSession::handleCancel(protocol::Bytes packet) {
  auto req = protocol::decodeCancel(packet);
  if (!req) {
    spdlog::debug("session {}: malformed CancelRequest", id_);  // B21: no reply
    co_return;
  }
  auto target = registry_.findByCancelKey({req->pid, req->key});
  if (!target) {
    // No reply and no difference in timing worth an oracle (B22).
    metrics().cancelRequestsTotal(labels::CancelResult::kUnknown).inc();
    co_return;
  }
  metrics().cancelRequestsTotal(labels::CancelResult::kForwarded).inc();
  spdlog::debug("session {}: forwarding cancel to session {}", id_, target->id_);
  // While mirroring, the statement may be running on either side.
  for (const auto& t : target->cancelTargets()) (void)co_await sendCancel(ex_, t.endpoint, t.key);
}

// ---------------------------------------------------------------------------
// Authentication of the client by the proxy (auth.users).

awaitable<std::optional<std::vector<std::uint8_t>>> ClientSession::readAuthMessage() {
  while (true) {
    auto h = protocol::parseFrontendHeader(cbuf_.pending(), protocol::kAuthLimit);
    if (h.status == protocol::FrameStatus::kOk) {
      if (h.type != 'p') {
        prepareFatal(sqlstate::kProtocolViolation,
                     "expected password response, got message type " +
                         std::to_string(static_cast<int>(h.type)));  // B24
        co_await flushError();
        co_return std::nullopt;
      }
      if (cbuf_.pendingSize() >= h.total()) {
        auto body = cbuf_.pending().subspan(5, h.bodySize());
        std::vector<std::uint8_t> out(body.begin(), body.end());
        cbuf_.consume(h.total());
        co_return out;
      }
    } else if (h.status != protocol::FrameStatus::kNeedMore) {
      std::string msg = h.status == protocol::FrameStatus::kBadType
                            ? "expected password response, got message type " +
                                  std::to_string(static_cast<int>(h.type))
                            : std::string("invalid password packet size");  // B25
      prepareFatal(sqlstate::kProtocolViolation, std::move(msg));
      co_await flushError();
      co_return std::nullopt;
    }
    auto [ec, n] = co_await client_.readSome(cbuf_.freeSpace());
    // psql disconnects here to prompt for a password: not an error.
    if (ec) co_return std::nullopt;
    cbuf_.commit(n);
  }
}

awaitable<bool> ClientSession::authenticate() {
  const UserSecret* secret = nullptr;
  if (auto it = rt_->users.find(user_); it != rt_->users.end()) secret = &it->second;
  std::vector<std::uint8_t> out;
  switch (rt_->cfg.auth.method) {
    case config::AuthMethod::kTrust:
      if (secret == nullptr && !rt_->users.empty()) {
        prepareFatal(sqlstate::kInvalidAuthSpec,
                     "role \"" + sanitizeForLog(user_, 63) + "\" does not exist");
        co_await flushError();
        co_return false;
      }
      break;
    case config::AuthMethod::kMd5:
      // As in PostgreSQL: a user whose secret is a SCRAM verifier logs in
      // with SCRAM even where md5 is configured.
      if (secret != nullptr && secret->md5.empty()) {
        if (!co_await authenticateScram(user_, secret)) co_return false;
      } else if (!co_await authenticateMd5(user_, secret)) {
        co_return false;
      }
      break;
    case config::AuthMethod::kScramSha256:
      if (!co_await authenticateScram(user_, secret)) co_return false;
      break;
  }
  protocol::encodeAuthOk(out);
  co_return co_await writeClient(out);
}

awaitable<bool> ClientSession::authenticateScram(const std::string& user,
                                                 const UserSecret* secret) {
  // Unknown users (and users without a SCRAM secret) walk a mock exchange
  // and fail at the end with the same message as a wrong password (B26).
  bool mock = secret == nullptr || !secret->scram;
  protocol::ScramVerifier verifier =
      mock ? protocol::mockScramVerifier(user, rt_->mockSecret) : *secret->scram;
  std::vector<std::uint8_t> cbind;
  if (client_.isTls() && rt_->clientTls) cbind = rt_->clientTls->endPoint;
  protocol::ScramServer server(user, std::move(verifier), mock, std::move(cbind));
  std::vector<std::uint8_t> out;
  protocol::encodeAuthSasl(server.mechanisms(), out);
  if (!co_await writeClient(out)) co_return false;

  // Counts, logs and prepares the FATAL; the caller flushes it.
  auto authFailed = [this](const protocol::AuthFailure& f) {
    metrics().clientConnectionsRejectedTotal(RejectReason::kAuthFailed).inc();
    spdlog::info("session {}: authentication failed for user \"{}\" ({}): {}", id_,
                 sanitizeForLog(user_, 63), clientAddress_, sanitizeForLog(f.message, 200));
    prepareFatal(f.sqlstate, f.message);
  };

  auto first = co_await readAuthMessage();
  if (!first) co_return false;
  auto initial = protocol::decodeSaslInitialBody(*first);
  if (!initial || !initial->data) {
    authFailed({sqlstate::kProtocolViolation, "malformed SCRAM message"});
    co_await flushError();
    co_return false;
  }
  auto serverFirst = server.clientFirst(initial->mechanism, protocol::asString(*initial->data));
  if (auto* f = std::get_if<protocol::AuthFailure>(&serverFirst)) {
    authFailed(*f);
    co_await flushError();
    co_return false;
  }
  out.clear();
  protocol::encodeAuthSaslContinue(std::get<std::string>(serverFirst), out);
  if (!co_await writeClient(out)) co_return false;

  auto final = co_await readAuthMessage();
  if (!final) co_return false;
  auto serverFinal = server.clientFinal(protocol::asString(*final));
  if (auto* f = std::get_if<protocol::AuthFailure>(&serverFinal)) {
    authFailed(*f);
    co_await flushError();
    co_return false;
  }
  out.clear();
  protocol::encodeAuthSaslFinal(std::get<std::string>(serverFinal), out);
  co_return co_await writeClient(out);
}

awaitable<bool> ClientSession::authenticateMd5(const std::string& user, const UserSecret* secret) {
  std::array<std::uint8_t, 4> salt{};
  if (RAND_bytes(salt.data(), 4) != 1) {
    prepareFatal(sqlstate::kInternalError, "could not generate random salt");
    co_await flushError();
    co_return false;
  }
  std::vector<std::uint8_t> out;
  protocol::encodeAuthMd5(salt.data(), out);
  if (!co_await writeClient(out)) co_return false;
  auto msg = co_await readAuthMessage();
  if (!msg) co_return false;
  auto response = protocol::decodePasswordBody(*msg);
  // An unknown user is checked against a hash no password matches, so the
  // work and the answer are the same as for a wrong password (B26).
  std::string stored = secret != nullptr ? secret->md5 : protocol::md5StoredHash("\x01", user);
  bool ok = response && protocol::md5Verify(stored, salt, *response) && secret != nullptr;
  if (!ok) {
    metrics().clientConnectionsRejectedTotal(RejectReason::kAuthFailed).inc();
    spdlog::info("session {}: md5 authentication failed for user \"{}\" ({})", id_,
                 sanitizeForLog(user_, 63), clientAddress_);
    prepareFatal(sqlstate::kInvalidPassword,
                 "password authentication failed for user \"" + user + "\"");
    co_await flushError();
    co_return false;
  }
  co_return true;
}

// ---------------------------------------------------------------------------
// Login to the servers

awaitable<bool> ClientSession::connectSide(int idx, bool first, std::string* failure) {
  if (!first && idx == journalSide(txPhase_)) {
    // The journal stands in for this side (seeding, or an async mirror). It
    // gets the session state the way a late server session would.
    auto journal = registry_.journal();
    if (!journal || journal->failed()) {
      if (failure != nullptr) *failure = "the journal could not be written";
      co_return false;
    }
    Upstream& j = up_[idx];
    j.journal = true;
    j.txStatus = 'I';
    journal_ = std::move(journal);
    journalSession_ = journal_->openSession(passOn_);
    journalBytes_.clear();
    journalReadies_ = 0;
    std::string why;
    const int other = idx == kTargetIdx ? kSourceIdx : kTargetIdx;
    bool copied = !up_[other].conn;
    if (!copied) copied = co_await copySessionState(other, idx, why);
    if (!copied) {
      closeSide(idx);
      if (failure != nullptr) *failure = "could not copy the session state: " + why;
      co_return false;
    }
    spdlog::debug("session {}: recording writes for the {} in the journal", id_, sideName(idx));
    co_return true;
  }
  const config::ConnInfo& info = idx == kTargetIdx ? *rt_->target : rt_->source;
  Upstream& u = up_[idx];
  u.conn.emplace(ex_, idx == kTargetIdx ? rt_->targetTls : rt_->sourceTls);
  u.buf = RelayBuffer();
  u.txStatus = 'I';
  auto timeout =
      info.connectTimeout.count() > 0 ? info.connectTimeout : std::chrono::milliseconds(10000);
  LoginResult login = co_await u.conn->login(info, passOn_, timeout);
  if (!login.ok) {
    spdlog::warn("session {}: login to the {} failed: {} ({})", id_, sideName(idx),
                 login.error.message, login.error.code);
    u.conn.reset();
    if (!first) {
      if (failure != nullptr) *failure = login.error.message;
      co_return false;
    }
    prepareError(login.error);
    co_await flushError();
    co_return false;
  }
  metrics().serverConnections(sideLabel(idx)).inc();
  u.key = login.key;
  u.endpoint = login.endpoint;
  u.txStatus = login.txStatus;
  publishCancelTargets();
  if (!first) {
    // The client saw the first side's ParameterStatus and key; this side's
    // are the proxy's business. Its session state comes from the side
    // already open.
    int other = idx == kTargetIdx ? kSourceIdx : kTargetIdx;
    std::string why;
    bool copied = !up_[other].conn;
    if (!copied) copied = co_await copySessionState(other, idx, why);
    if (!copied) {
      spdlog::warn("session {}: could not copy the session state to the {}: {}", id_, sideName(idx),
                   why);
      closeSide(idx);
      if (failure != nullptr) *failure = "could not copy the session state: " + why;
      co_return false;
    }
    spdlog::debug("session {}: opened the {} side", id_, sideName(idx));
    co_return true;
  }
  // The client gets its own secret cancel key: the server's never leaves the
  // proxy, so a cancel always goes through the registry to the right session.
  proxyKey_ = registry_.newCancelKey(shared_from_this(), login.key.pid);
  std::vector<std::uint8_t> out = std::move(login.replay);
  protocol::encodeBackendKey(*proxyKey_, out);
  protocol::encodeReadyForQuery(login.txStatus, out);
  machine_.ready(login.txStatus);
  spdlog::debug("session {}: ready on the {} (user \"{}\", application \"{}\")", id_, sideName(idx),
                sanitizeForLog(user_, 63), applicationName_);
  co_return co_await writeClient(out);
}

void ClientSession::closeSide(int idx) {
  Upstream& u = up_[idx];
  if (u.journal) {
    u.journal = false;
    journal_.reset();
    journalBytes_.clear();
    journalReadies_ = 0;
    return;
  }
  if (!u.conn) return;
  if (!u.writing) {
    // Best effort, like libpq's PQfinish: a Terminate if the socket takes it now.
    std::vector<std::uint8_t> out;
    protocol::encodeTerminate(out);
    error_code ignored;
    u.conn->stream().socket().non_blocking(true, ignored);
    if (!u.conn->stream().isTls()) {
      u.conn->stream().socket().send(asio::buffer(out), 0, ignored);
    }
  }
  u.conn->stream().close();
  u.conn.reset();
  metrics().serverConnections(sideLabel(idx)).dec();
  publishCancelTargets();
}

void ClientSession::publishCancelTargets() {
  std::vector<CancelTarget> t;
  for (const Upstream& u : up_) {
    if (u.conn) t.push_back({u.endpoint, u.key});
  }
  std::lock_guard lock(cancelMu_);
  cancelTargets_ = std::move(t);
}

std::vector<ClientSession::CancelTarget> ClientSession::cancelTargets() const {
  std::lock_guard lock(cancelMu_);
  return cancelTargets_;
}

awaitable<bool> ClientSession::arrangeSides() {
  Phase p = txPhase_;
  if (targetAuthoritative(p) || lockstepPhase(p)) {
    if (!rt_->target) {
      // setPhase refuses such phases without target.url; a phase file from
      // another configuration could still say so.
      closing_ = true;
      prepareFatal(sqlstate::kInternalError,
                   "phase " + std::string(phaseName(p)) + " needs target.url, which is not set");
      co_await flushError();
      co_return false;
    }
  }
  int auth = targetAuthoritative(p) ? kTargetIdx : kSourceIdx;
  if (lockstepPhase(p)) {
    mode_ = Mode::kLockstep;
    // A side is a journal while seeding (the target) and under an async
    // mirror (the side that is not authoritative), else a server; a journal
    // given up (an earlier seed, a flip) is left. What does not fit is ended,
    // and the right one opened when a request needs it.
    const int js = journalSide(p);
    for (int i : {kSourceIdx, kTargetIdx}) {
      if (up_[i].journal && (i != js || registry_.journal() != journal_)) closeSide(i);
    }
    if (js >= 0 && up_[js].conn) closeSide(js);
    // The authoritative side must be there; the mirror may fail to open,
    // which mirror.on_target_error handles per request.
    if (!up_[auth].conn) {
      std::string why;
      if (!co_await connectSide(auth, false, &why)) {
        closing_ = true;
        prepareFatal(sqlstate::kConnectionFailure,
                     std::string("pghandoff could not connect to the ") + sideName(auth) +
                         " server: " + why);
        co_await flushError();
        co_return false;
      }
    }
    co_return true;
  }
  mode_ = Mode::kStream;
  relay_ = auth;
  if (!up_[auth].conn) {
    std::string why;
    if (!co_await connectSide(auth, false, &why)) {
      closing_ = true;
      prepareFatal(
          sqlstate::kConnectionFailure,
          std::string("pghandoff could not connect to the ") + sideName(auth) + " server: " + why);
      co_await flushError();
      co_return false;
    }
  }
  // The side no longer used is ended: its session state would go stale.
  closeSide(auth == kSourceIdx ? kTargetIdx : kSourceIdx);
  co_return true;
}

// ---------------------------------------------------------------------------
// Relay

void ClientSession::onClientFrameForMetrics(char type) {
  if (type == 'Q' || type == 'S' || type == 'F') {
    if (sentCount_ < sent_.size()) {
      sent_[(sentHead_ + sentCount_) % sent_.size()] = std::chrono::steady_clock::now();
    }
    ++sentCount_;
  }
}

void ClientSession::onReadyForMetrics() {
  if (sentCount_ == 0) return;
  // More than 64 pipelined requests: the extra ones are not timed.
  if (sentCount_ <= sent_.size()) {
    metrics()
        .queryDurationSeconds(sideLabel(relay_))
        .observe(std::chrono::steady_clock::now() - sent_[sentHead_]);
  }
  sentHead_ = (sentHead_ + 1) % sent_.size();
  --sentCount_;
}

protocol::StatementKind ClientSession::classify(std::string_view sql) {
  return classification(sql).kind;
}

const protocol::Classification& ClientSession::classification(std::string_view sql) {
  // Memoize short texts only: comparing a long one costs what the shared
  // cache's hash does, and keeping a copy of it would pin its memory.
  constexpr std::size_t kMemoBytes = 4096;
  if (scratchValid_ && sql == scratchSql_) return scratch_;
  registry_.classifier().get(sql, scratch_);
  scratchValid_ = sql.size() <= kMemoBytes;
  if (scratchValid_) scratchSql_.assign(sql);
  return scratch_;
}

namespace {
// queries_total has kind read|write: a read is what may be served by the
// read side alone; everything else (writes, transaction control, session
// state, unknown) takes the write path.
labels::QueryKind queryKind(protocol::StatementKind k) {
  return k == protocol::StatementKind::kRead ? labels::QueryKind::kRead : labels::QueryKind::kWrite;
}
}  // namespace

void ClientSession::trackStatement(char type, protocol::Bytes body, bool whole) {
  switch (type) {
    case 'Q':
      if (auto sql = protocol::decodeQueryBody(body)) {
        metrics().queriesTotal(sideLabel(relay_), queryKind(classify(*sql))).inc();
      } else {
        metrics().queriesTotal(sideLabel(relay_), labels::QueryKind::kWrite).inc();
      }
      break;
    case 'P':
      if (auto p = protocol::decodeParseBody(body)) {
        const protocol::Classification& c = classification(p->query);
        statements_.onParse(p->statement, StatementTracker::infoOf(c));
        // Named statements (and any with per-server values) are remembered:
        // a mirroring phase may run them later and must know their text.
        if ((c.hasNondeterministic || !p->statement.empty()) && whole) {
          statements_.rememberParse(p->statement, body);
        }
      }
      break;
    case 'B':
      // Streamed Binds (huge parameters) carry the names at the front.
      if (auto b = protocol::decodeBindNames(body)) {
        statements_.onBind(b->portal, b->statement);
      } else if (!whole) {
        statements_.onBind("", "\x01unknown");
      }
      break;
    case 'E':
      if (auto portal = protocol::decodeExecutePortal(body)) {
        metrics().queriesTotal(sideLabel(relay_), queryKind(statements_.onExecute(*portal))).inc();
      }
      break;
    case 'C':
      if (auto c = protocol::decodeCloseBody(body)) statements_.onClose(c->kind, c->name);
      break;
    default:
      break;
  }
}

awaitable<void> ClientSession::clientToServer() {
  const auto maxLen = static_cast<std::uint32_t>(rt_->cfg.limits.maxMessageBytes);
  Upstream& up = up_[relay_];
  Stream& server = up.conn->stream();
  while (true) {
    // Work that starts at a transaction boundary takes the phase barrier
    // before anything of it is forwarded (a lone Terminate does not: it ends
    // the session). The phase may need another mode or side: hand over.
    if (!inTransaction_ && !cbuf_.midMessage()) {
      auto h = protocol::parseFrontendHeader(cbuf_.unscanned(), maxLen);
      if (h.status == protocol::FrameStatus::kOk && h.type != 'X') {
        // The gate is nearly always open: only a held transaction needs the
        // coroutine.
        if (!tryBeginTransaction()) {
          bool begun = co_await beginTransaction();
          if (!begun) co_return;
        }
        if (!modeFits(txPhase_)) {
          handover_ = true;
          error_code ignored;
          up.conn->stream().socket().cancel(ignored);  // serverToClient returns
          co_return;
        }
      }
    }
    bool terminate = false;
    auto res = cbuf_.scan(
        [maxLen](protocol::Bytes b) { return protocol::parseFrontendHeader(b, maxLen); },
        // Bodies needed for classification; Bind may stream (only its names
        // at the front are read).
        [](char t) { return t == 'Q' || t == 'P' || t == 'E' || t == 'C'; },
        [this, &terminate](const protocol::FrameHeader& h, protocol::Bytes body, bool whole) {
          onClientFrameForMetrics(h.type);
          trackStatement(h.type, body, whole);
          if (machine_.onClientFrame(h.type) == ClientVerdict::kForwardThenClose) {
            terminate = true;
            return false;
          }
          return true;
        });
    publish();
    if (res.status == RelayBuffer::ScanStatus::kError) {
      // B33-B36: the stream cannot be trusted any more.
      metrics().clientConnectionsRejectedTotal(RejectReason::kProtocol).inc();
      std::string msg = res.header.status == protocol::FrameStatus::kBadType
                            ? "invalid frontend message type " +
                                  std::to_string(static_cast<unsigned char>(res.header.type))
                        : res.header.status == protocol::FrameStatus::kTooLarge
                            ? "message of " + std::to_string(res.header.length) +
                                  " bytes exceeds limits.max_message_bytes"
                            : std::string("invalid message length");
      spdlog::info("session {}: {} ({})", id_, msg, clientAddress_);
      pendingFatal_ = protocol::ErrorFields{"FATAL", sqlstate::kProtocolViolation, msg, "", ""};
      // Forward what was whole before the bad frame, then end the session.
      if (cbuf_.hasReady()) {
        up.writing = true;
        co_await server.writeAll(cbuf_.ready());
        up.writing = false;
        cbuf_.consumeReady();
      }
      co_await closeServerGracefully(machine_.serverBusy());
      co_return;
    }
    if (cbuf_.hasReady()) {
      auto bytes = cbuf_.ready().size();
      // Nearly always one send() takes it all: no coroutine frame for that.
      error_code ec;
      const std::size_t sent = server.trySend(cbuf_.ready(), ec);
      if (!ec && sent < bytes) {
        up.writing = true;
        auto [wec, n] = co_await server.writeRest(cbuf_.ready(), sent);
        up.writing = false;
        ec = wec;
      }
      if (ec) {
        // The server is gone; serverToClient tells the client.
        co_return;
      }
      metrics().bytesTotal(labels::Direction::kClientToServer).inc(bytes);
      cbuf_.consumeReady();
    }
    if (terminate) {
      // The server closes its side after Terminate; serverToClient sees EOF.
      closing_ = true;
      co_return;
    }
    if (closing_) co_return;
    auto [ec, n] = co_await client_.readSome(cbuf_.freeSpace());
    if (ec) {
      if (closing_) co_return;
      // The client vanished (F10): cancel its query, roll back its
      // transaction by ending the server session.
      spdlog::debug("session {}: client disconnected ({})", id_,
                    ec == asio::error::eof ? "eof" : ec.message());
      closing_ = true;
      co_await closeServerGracefully(machine_.serverBusy());
      co_return;
    }
    cbuf_.commit(n);
  }
}

bool ClientSession::tryBeginTransaction() {
  auto phase = phases_.tryBegin();
  if (!phase) return false;
  inTransaction_ = true;
  txPhase_ = *phase;
  return true;
}

awaitable<bool> ClientSession::beginTransaction() {
  while (true) {
    if (tryBeginTransaction()) co_return true;
    // A flip or a pause holds new transactions: the client sees a pause.
    if (!holdTimer_) holdTimer_ = std::make_shared<asio::steady_timer>(ex_);
    spdlog::debug("session {}: held at the phase barrier", id_);
    co_await phases_.waitForOpen(holdTimer_);
    spdlog::debug("session {}: released from the phase barrier{}", id_,
                  shutdownRequested_ ? " (shutting down)" : "");
    if (closing_ || forced_) co_return false;  // serverToClient ends the session
    if (shutdownRequested_) {
      // Graceful shutdown while held: the new transaction never started, so
      // the session is at a boundary and ends as PostgreSQL's smart shutdown
      // would end it.
      closing_ = true;
      prepareShutdownFatal();
      co_await flushError();

      co_await closeServerGracefully(false);
      client_.close();
      co_return false;
    }
  }
}

void ClientSession::endTransaction() {
  if (!inTransaction_) return;
  inTransaction_ = false;
  phases_.end();
}

awaitable<void> ClientSession::closeServerGracefully(bool cancelFirst) {
  closing_ = true;
  for (int i : {kSourceIdx, kTargetIdx}) {
    Upstream& u = up_[i];
    if (!u.conn) continue;
    if (cancelFirst) {
      spdlog::debug("session {}: cancelling the running query on the {}", id_, sideName(i));
      (void)co_await sendCancel(ex_, u.endpoint, u.key);
    }
    if (!u.conn) continue;
    // Mid-message (a streamed frame only partly forwarded) the Terminate
    // would land inside it.
    bool midMessage = mode_ == Mode::kStream && i == relay_ && cbuf_.midMessage();
    if (!u.writing && !midMessage) {
      std::vector<std::uint8_t> out;
      protocol::encodeTerminate(out);
      u.writing = true;
      co_await u.conn->stream().writeAll(asio::buffer(out));
      u.writing = false;
    }
    if (u.conn) u.conn->stream().close();
  }
}

awaitable<void> ClientSession::serverToClient() {
  const auto maxLen = static_cast<std::uint32_t>(rt_->cfg.limits.maxMessageBytes);
  Upstream& up = up_[relay_];
  RelayBuffer& sbuf = up.buf;
  Stream& server = up.conn->stream();
  while (true) {
    bool outOfSync = false;
    auto res =
        sbuf.scan([maxLen](protocol::Bytes b) { return protocol::parseBackendHeader(b, maxLen); },
                  [](char t) { return SessionMachine::serverBodyNeeded(t); },
                  [this, &outOfSync](const protocol::FrameHeader& h, protocol::Bytes body, bool) {
                    if (machine_.onServerFrame(h.type, body) == ServerVerdict::kOutOfSync) {
                      outOfSync = true;
                      return false;
                    }
                    if (h.type == 'Z') {
                      onReadyForMetrics();
                      if (machine_.atTransactionBoundary()) endTransaction();
                    }
                    if (h.type == 'E') {
                      if (auto e = protocol::decodeErrorBody(body)) {
                        metrics().clientErrorsTotal(sqlStateLabel(e->code)).inc();
                        if (e->severity == "FATAL" || e->severity == "PANIC")
                          serverSentFatal_ = true;
                      }
                    }
                    return true;
                  });
    publish();
    if (res.status == RelayBuffer::ScanStatus::kError || outOfSync) {
      // B50: the server's stream cannot be trusted; forward nothing more.
      spdlog::error("session {}: lost synchronization with the {} ({})", id_, sideName(relay_),
                    outOfSync ? "unexpected ReadyForQuery" : protocol::toString(res.header.status));
      metrics().internalBugsTotal().inc();
      co_await closeServerGracefully(false);
      if (!sbuf.midMessage()) {
        protocol::ErrorFields e{
            "FATAL", sqlstate::kProtocolViolation,
            std::string("pghandoff lost synchronization with the ") + sideName(relay_) + " server",
            "", ""};
        prepareError(e);
        co_await flushError();
      }
      client_.close();
      co_return;
    }
    if (sbuf.hasReady()) {
      auto bytes = sbuf.ready().size();
      error_code ec;
      const std::size_t sent = client_.trySend(sbuf.ready(), ec);
      if (!ec && sent < bytes) {
        clientWriting_ = true;
        auto [wec, n] = co_await client_.writeRest(sbuf.ready(), sent);
        clientWriting_ = false;
        ec = wec;
      }
      if (ec) {
        if (!closing_) {
          closing_ = true;
          co_await closeServerGracefully(machine_.serverBusy());
        }
        client_.close();
        co_return;
      }
      metrics().bytesTotal(labels::Direction::kServerToClient).inc(bytes);
      sbuf.consumeReady();
    }
    if ((shutdownRequested_ && machine_.atTransactionBoundary() && !cbuf_.midMessage()) ||
        forced_) {
      // Graceful shutdown at a transaction boundary (or forced at the
      // timeout): the client hears why, the server session ends cleanly.
      co_await closeServerGracefully(forced_ && machine_.serverBusy());
      if (!sbuf.midMessage()) {
        prepareShutdownFatal();
        co_await flushError();
      }
      client_.close();
      co_return;
    }
    if (handover_ && !forced_) co_return;  // clientToServer changes mode at a boundary
    auto [ec, n] = co_await server.readSome(sbuf.freeSpace());
    if (ec) {
      if (ec == asio::error::operation_aborted && (shutdownRequested_ || forced_) && !closing_) {
        continue;  // woken up to look at the shutdown flags
      }
      if (ec == asio::error::operation_aborted && handover_ && !forced_ && !closing_) co_return;
      if (!closing_ || pendingFatal_) {
        closing_ = true;
        if (!sbuf.midMessage()) {
          if (pendingFatal_) {
            prepareError(*pendingFatal_);
            co_await flushError();
          } else if (serverSentFatal_) {
            // The server said why it ended the session (e.g. 57P01 at its
            // shutdown); that was relayed and is the client's last word.
          } else {
            spdlog::warn("session {}: the {} closed the connection: {}", id_, sideName(relay_),
                         ec.message());
            protocol::ErrorFields e{
                "FATAL", sqlstate::kConnectionFailure,
                std::string("pghandoff lost the connection to the ") + sideName(relay_) + " server",
                "", ""};
            prepareError(e);
            co_await flushError();
          }
        }
      }
      client_.close();
      co_return;
    }
    sbuf.commit(n);
  }
}

// ---------------------------------------------------------------------------
// Shutdown

void ClientSession::requestShutdown() {
  asio::post(ex_, [self = shared_from_this()] {
    self->shutdownRequested_ = true;
    if (self->holdTimer_) self->holdTimer_->cancel();  // held at the barrier: end now
    auto st = static_cast<SessionState>(self->publicState_.load(std::memory_order_relaxed));
    if (st == SessionState::kStartup || st == SessionState::kAuthenticating ||
        st == SessionState::kConnecting) {
      self->client_.close();
      return;
    }
    error_code ignored;
    if (self->mode_ == Mode::kLockstep) {
      // The lockstep relay waits for the client at a boundary: wake it.
      if (self->lockstepIdle_) self->client_.socket().cancel(ignored);
      return;
    }
    // Wake the relay if it is waiting on an idle server.
    Upstream& up = self->up_[self->relay_];
    if (up.conn && self->machine_.atTransactionBoundary() && !up.writing) {
      up.conn->stream().socket().cancel(ignored);
    }
  });
}

void ClientSession::cancelForFlip() {
  asio::post(ex_, [self = shared_from_this()] {
    if (!self->inTransaction_ || self->closing_ || self->forced_) return;
    spdlog::info("session {}: ending its open transaction for a phase change", self->id_);
    self->flipCancelled_ = true;
    self->closeNow();  // in this same step: the transaction cannot end in between
  });
}

void ClientSession::forceClose() {
  asio::post(ex_, [self = shared_from_this()] { self->closeNow(); });
}

void ClientSession::closeNow() {
  if (holdTimer_) holdTimer_->cancel();
  forced_ = true;
  shutdownRequested_ = true;
  if (!up_[kSourceIdx].conn && !up_[kTargetIdx].conn) {
    client_.close();
    return;
  }
  error_code ignored;
  for (Upstream& u : up_) {
    if (u.conn) u.conn->stream().socket().cancel(ignored);
  }
  // The lockstep relay may wait for the client, in a transaction too.
  if (mode_ == Mode::kLockstep && !clientWriting_) client_.socket().cancel(ignored);
  // A client that does not read keeps serverToClient in a write: cut it.
  if (clientWriting_) client_.close();
}

// ---------------------------------------------------------------------------
// Writing to the client

awaitable<bool> ClientSession::writeClient(const std::vector<std::uint8_t>& bytes) {
  auto [ec, n] = co_await client_.writeAll(asio::buffer(bytes));
  co_return !ec;
}

void ClientSession::prepareError(const protocol::ErrorFields& e) {
  metrics().clientErrorsTotal(sqlStateLabel(e.code)).inc();
  errorOut_.clear();
  protocol::encodeError(e, errorOut_);
}

void ClientSession::prepareShutdownFatal() {
  prepareFatal(sqlstate::kAdminShutdown,
               flipCancelled_ ? "terminating connection: its transaction was still open when a "
                                "phase change reached flip.drain_timeout (flip.on_timeout: cancel)"
                              : "terminating connection due to administrator command");
}

void ClientSession::prepareFatal(const char* code, std::string message, std::string detail) {
  prepareError(protocol::ErrorFields{"FATAL", code, std::move(message), std::move(detail), ""});
}

awaitable<void> ClientSession::flushError() {
  clientWriting_ = true;
  co_await client_.writeAll(asio::buffer(errorOut_));
  clientWriting_ = false;
}

}  // namespace pghandoff::proxy
