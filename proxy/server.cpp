#include "proxy/server.h"

#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <sstream>

#include "config/conninfo.h"
#include "proxy/admin.h"
#include "proxy/client_session.h"
#include "proxy/logging.h"
#include "proxy/metrics.h"
#include "proxy/sequence_sync.h"

namespace pghandoff::proxy {

namespace {
// Keeps the session alive for as long as its coroutine runs.
awaitable<void> runSession(std::shared_ptr<ClientSession> session) {
  co_await session->run();
}

tcp::endpoint resolveListen(asio::io_context& io, const config::Endpoint& ep) {
  tcp::resolver resolver(io);
  error_code ec;
  auto results = resolver.resolve(ep.host, std::to_string(ep.port), tcp::resolver::passive, ec);
  if (ec || results.empty()) {
    throw std::runtime_error("listen: cannot resolve '" + config::toString(ep) + "'");
  }
  return results.begin()->endpoint();
}
std::unique_ptr<PhaseController> makePhaseController(const config::Config& cfg) {
  PhaseStore store(cfg.state.dir);
  Phase saved = store.load();
  if (saved != Phase::kSourceOnly && cfg.targetUrl.empty()) {
    throw std::runtime_error(store.file().string() + " says the migration is in phase " +
                             std::string(phaseName(saved)) +
                             ", which needs the target, but target.url is not set");
  }
  return std::make_unique<PhaseController>(std::move(store), saved);
}
}  // namespace

ProxyServer::ProxyServer(config::Config cfg, std::string configPath)
    : configPath_(std::move(configPath)),
      phases_(makePhaseController(cfg)),
      registry_(*phases_),
      acceptor_(mainIo_),
      signals_(mainIo_, SIGTERM, SIGINT, SIGHUP) {
  brokenAtStart_ =
      registry_.useBrokenMarker(std::filesystem::path(cfg.state.dir) / "mirror-broken");
  mockSecret_.resize(32);
  RAND_bytes(mockSecret_.data(), static_cast<int>(mockSecret_.size()));
  rt_ = buildRuntime(cfg, mockSecret_);

  auto ep = resolveListen(mainIo_, cfg.listen);
  acceptor_.open(ep.protocol());
  acceptor_.set_option(asio::socket_base::reuse_address(true));
  error_code ec;
  acceptor_.bind(ep, ec);
  if (ec) {
    throw std::runtime_error("listen: cannot bind " + config::toString(cfg.listen) + ": " +
                             ec.message());
  }
  acceptor_.listen(asio::socket_base::max_listen_connections);

  if (cfg.admin.listen) {
    AdminHooks hooks;
    hooks.healthy = [this] { return accepting_.load(); };
    hooks.statusJson = [this] { return statusJson(); };
    hooks.phase = [this] { return std::string(phaseName(phases_->current())); };
    hooks.setPhase = [this](std::string name, std::optional<std::chrono::milliseconds> drain) {
      return setPhase(std::move(name), drain);
    };
    hooks.pause = [this](std::optional<std::chrono::milliseconds> drain) { return pause(drain); };
    hooks.resume = [this] { return phases_->resume(); };
    hooks.seed = [this](std::string action, std::optional<std::chrono::milliseconds> drain) {
      return seedAction(std::move(action), drain);
    };
    hooks.seedJson = [this] { return seedJson(); };
    hooks.refreshGauges = [this] { refreshGauges(); };
    admin_ = std::make_unique<AdminServer>(mainIo_, cfg.admin.listen->host, cfg.admin.listen->port,
                                           cfg.admin.token, std::move(hooks));
  }

  runtimeConfigDir_ = cfg.state.dir;
  seedAtStartup();
  asyncAtStartup();

  unsigned n = cfg.threads != 0 ? cfg.threads : std::max(1u, std::thread::hardware_concurrency());
  for (unsigned i = 0; i < n; ++i) {
    workerIo_.push_back(std::make_unique<asio::io_context>(1));
    guards_.push_back(asio::make_work_guard(*workerIo_.back()));
  }
}

awaitable<AdminReply> ProxyServer::setPhase(std::string name,
                                            std::optional<std::chrono::milliseconds> drain) {
  const Phase to = *phaseFromName(name);  // validated by the admin API
  const Phase from = phases_->current();
  // Seeding belongs to `pghandoff seed` (proxy/seed.h): it enters it, and
  // leaves it for mirror once the journal is replayed. Leaving it for
  // source-only gives the seed up.
  if (!refuseTransition(from, to) && from != to &&
      (to == Phase::kSeeding || (from == Phase::kSeeding && to != Phase::kSourceOnly))) {
    std::string body =
        "{\"error\":\"" +
        std::string(to == Phase::kSeeding
                        ? "phase seeding is entered by pghandoff seed (POST /seed/start)"
                        : "pghandoff seed leaves phase seeding once the catch-up journal is "
                          "replayed (POST /seed/finish); POST /phase can only give the seed up "
                          "(source-only)") +
        "\",\"phase\":\"" + std::string(phaseName(from)) + "\"}";
    co_return AdminReply{409, std::move(body)};
  }
  if (from == Phase::kSeeding && to == Phase::kSourceOnly) {
    const std::string why = "POST /phase source-only";
    co_return co_await seedAbort(why, true, drain);
  }
  auto rt = runtime();
  if (!refuseTransition(from, to) && to != Phase::kSourceOnly && !rt->target) {
    std::string body =
        "{\"error\":\"phase " + name +
        " needs the target: target.url is not set in the configuration\",\"phase\":\"" +
        std::string(phaseName(from)) + "\"}";
    co_return AdminReply{409, std::move(body)};
  }
  // A mirror broken under `degrade` missed writes: the target must not serve
  // reads or become authoritative until it is seeded again (RELIABILITY F1).
  if (!refuseTransition(from, to) && from != to && registry_.mirrorBroken() &&
      (readsFromTarget(to) || targetAuthoritative(to))) {
    std::string body =
        "{\"error\":\"the mirror is broken (mirror.on_target_error: degrade): the target missed "
        "writes; seed it again before phase " +
        name + "\",\"phase\":\"" + std::string(phaseName(from)) + "\"}";
    co_return AdminReply{409, std::move(body)};
  }
  // A flip that moves authority sets the new authoritative side's sequences
  // from the old one's, with every transaction drained (sequence_sync.h).
  // The connections are made before new transactions are held.
  const bool moves = !refuseTransition(from, to) && rt->target && from != to &&
                     targetAuthoritative(from) != targetAuthoritative(to);
  // mirror.mode async: the journal in use is applied to the end at the
  // barrier, and the new phase gets its own (proxy/async_mirror.cpp).
  const bool async =
      !refuseTransition(from, to) && from != to && (asyncJournal() || asyncPhase(to));
  if (!moves && !async) {
    co_return co_await phases_->flip(to, drain.value_or(rt->cfg.flip.drainTimeout),
                                     rt->cfg.flip.onTimeout, [this] { cancelInFlight(); });
  }
  BothServers sides;  // first: the old authoritative side
  if (moves) {
    const bool toTarget = targetAuthoritative(to);
    const std::string app = "pghandoff sequence sync";
    if (auto why = co_await connectBoth(!toTarget, app, sides)) {
      std::string body =
          "{\"error\":\"cannot reach the servers to carry the sequences over: " + jsonEscape(*why) +
          "\",\"phase\":\"" + std::string(phaseName(from)) + "\"}";
      co_return AdminReply{503, std::move(body)};
    }
  }
  auto oldSide = sides.first;
  auto newSide = sides.second;
  const std::chrono::milliseconds drainFor = drain.value_or(rt->cfg.flip.drainTimeout);
  // Before new transactions are held: the async replay brought close to the
  // end, so that the pause is short.
  co_await asyncPreDrain(std::chrono::steady_clock::now() + drainFor);
  // The new phase's journal made before the barrier (its file synced), the
  // old one's closed after it.
  std::shared_ptr<Journal> prepared;
  try {
    prepared = asyncPrepare(to);
  } catch (const std::exception& e) {
    std::string body =
        "{\"error\":\"cannot create the async mirror's journal: " + jsonEscape(e.what()) +
        "\",\"phase\":\"" + std::string(phaseName(from)) + "\"}";
    sides.close();
    co_return AdminReply{500, std::move(body)};
  }
  auto retired = std::make_shared<std::vector<std::shared_ptr<Journal>>>();
  // Named, not temporaries of the co_await expression (GCC 12).
  const std::function<void()> cancel = [this] { cancelInFlight(); };
  const PhaseController::BeforeSwitch before =
      [this, oldSide, newSide, from, to, moves, drainFor, prepared,
       retired]() -> awaitable<std::optional<std::string>> {
    auto asyncErr =
        co_await asyncSwitch(to, std::chrono::steady_clock::now() + drainFor, prepared, *retired);
    if (asyncErr) {
      spdlog::error("phase change {} -> {}: {}", phaseName(from), phaseName(to), *asyncErr);
      co_return asyncErr;
    }
    if (!moves) co_return std::nullopt;
    // The new authoritative side's sequences, from the old one's.
    std::size_t synced = 0;
    auto err = co_await syncSequences(*oldSide, *newSide, synced);
    if (err) {
      spdlog::error("phase change {} -> {}: {}", phaseName(from), phaseName(to), *err);
    } else {
      spdlog::info("phase change {} -> {}: {} sequences set from the {}", phaseName(from),
                   phaseName(to), synced, targetAuthoritative(to) ? "source" : "target");
    }
    co_return err;
  };
  auto reply = co_await phases_->flip(to, drainFor, rt->cfg.flip.onTimeout, cancel, before);
  sides.close();
  if (phases_->current() != to) asyncRestore(phases_->current());
  // The old journal's segments, and the prepared one if it went unused.
  if (prepared && asyncJournal() != prepared &&
      (async_.segments.empty() || async_.segments.front().journal != prepared)) {
    retired->push_back(prepared);
  }
  asyncDispose(std::move(*retired));
  co_return reply;
}

awaitable<void> ProxyServer::startAccepting() {
  // Under two-phase commit, what an earlier process left prepared is finished
  // (and whether both servers allow it is known) before the first client.
  auto rt = runtime();
  if (rt->cfg.mirror.twoPhaseCommit && rt->target) {
    const bool done = co_await resolvePrepared(true);
    asio::co_spawn(mainIo_, twoPhaseRecovery(done), asio::detached);
  }
  asio::co_spawn(mainIo_, seedLeaseLoop(), asio::detached);
  accepting_ = true;
  co_await acceptLoop();
}

awaitable<void> ProxyServer::twoPhaseRecovery(bool startDone) {
  asio::steady_timer timer(mainIo_);
  while (!shuttingDown_) {
    timer.expires_after(std::chrono::seconds(startDone ? 2 : 5));
    error_code ec;
    co_await timer.async_wait(asio::redirect_error(kUseAwaitable, ec));
    if (shuttingDown_) break;
    if (!startDone) {
      startDone = co_await resolvePrepared(true);
    } else {
      (void)co_await resolvePrepared(false);
    }
  }
}

awaitable<bool> ProxyServer::resolvePrepared(bool all) {
  std::vector<Registry::PendingPrepared> pending;
  if (!all) {
    pending = registry_.takePending();
    if (pending.empty()) co_return true;
  }
  const bool targetAuth = targetAuthoritative(phases_->current());
  BothServers sides;  // first: the authoritative side
  const std::string app = "pghandoff two-phase recovery";
  if (auto why = co_await connectBoth(targetAuth, app, sides)) {
    spdlog::warn("two-phase commit recovery: cannot reach the servers ({}); retrying", *why);
    for (auto& p : pending) registry_.addPending(std::move(p.gid), p.commit);
    co_return false;
  }
  ServerConnection& auth = *sides.first;
  ServerConnection& mirror = *sides.second;
  const std::string list =
      "SELECT gid FROM pg_catalog.pg_prepared_xacts WHERE pg_catalog.starts_with(gid, "
      "'pghandoff_') AND database = pg_catalog.current_database()";
  if (all) {
    // Both servers must allow prepared transactions.
    const std::string show = "SHOW max_prepared_transactions";
    QueryRows a = co_await simpleQuery(auth, show);
    QueryRows m = co_await simpleQuery(mirror, show);
    auto allows = [](const QueryRows& q) {
      return !q.error && q.rows.size() == 1 && !q.rows[0].empty() && q.rows[0][0] &&
             *q.rows[0][0] != "0";
    };
    const bool usable = allows(a) && allows(m);
    registry_.setTwoPhaseUsable(usable);
    if (usable) {
      spdlog::info("two-phase commit in use (mirror.two_phase_commit)");
    } else {
      spdlog::error(
          "mirror.two_phase_commit is on but the {} does not allow prepared transactions "
          "(max_prepared_transactions = 0): commits keep the mirror-first order",
          !allows(a) ? (targetAuth ? "target" : "source") : (targetAuth ? "source" : "target"));
    }
  }
  QueryRows onAuth = co_await simpleQuery(auth, list);
  QueryRows onMirror = co_await simpleQuery(mirror, list);
  bool ok = !onAuth.error && !onMirror.error;
  auto has = [](const QueryRows& q, const std::string& gid) {
    for (const auto& r : q.rows) {
      if (!r.empty() && r[0] && *r[0] == gid) return true;
    }
    return false;
  };
  // At start, every pghandoff gid an earlier process left: prepared on the
  // authoritative side (it prepares second) means decided, commit; on the
  // mirror alone, undecided, roll back. This process's own are its live
  // sessions' (they report what they leave through the pending list).
  if (all) {
    for (const QueryRows* q : {&onAuth, &onMirror}) {
      for (const auto& r : q->rows) {
        if (r.empty() || !r[0] || r[0]->rfind(twoPhaseGidPrefix(), 0) == 0) continue;
        const std::string& gid = *r[0];
        if (std::none_of(pending.begin(), pending.end(),
                         [&](const Registry::PendingPrepared& p) { return p.gid == gid; })) {
          pending.push_back({gid, has(onAuth, gid)});
        }
      }
    }
  }
  for (const auto& [gid, commit] : pending) {
    if (!ok) break;
    const bool inAuth = has(onAuth, gid), inMirror = has(onMirror, gid);
    const std::string verb = commit ? "COMMIT PREPARED '" : "ROLLBACK PREPARED '";
    const std::string sql = verb + gid + "'";
    if (inMirror) {
      QueryRows r = co_await simpleQuery(mirror, sql);
      ok = ok && !r.error;
    }
    if (inAuth && ok) {
      QueryRows r = co_await simpleQuery(auth, sql);
      ok = ok && !r.error;
    }
    if (ok && (inAuth || inMirror)) {
      spdlog::info("two-phase commit recovery: {} {}", commit ? "committed" : "rolled back", gid);
    }
  }
  if (!ok) {
    spdlog::warn("two-phase commit recovery failed ({}); retrying", onAuth.error ? *onAuth.error
                                                                    : onMirror.error
                                                                        ? *onMirror.error
                                                                        : "a statement failed");
    if (!all) {
      for (auto& p : pending) registry_.addPending(std::move(p.gid), p.commit);
    }
  }
  sides.close();
  co_return ok;
}

awaitable<std::optional<std::string>> ProxyServer::connectBoth(bool targetFirst,
                                                               const std::string& app,
                                                               BothServers& out) {
  auto rt = runtime();
  auto ex = mainIo_.get_executor();
  out.first = std::make_shared<ServerConnection>(ex, targetFirst ? rt->targetTls : rt->sourceTls);
  out.second = std::make_shared<ServerConnection>(ex, targetFirst ? rt->sourceTls : rt->targetTls);
  const std::vector<std::pair<std::string, std::string>> params = {{"application_name", app}};
  const std::chrono::milliseconds timeout(10000);
  LoginResult l1 =
      co_await out.first->login(targetFirst ? *rt->target : rt->source, params, timeout);
  LoginResult l2;
  if (l1.ok) {
    l2 = co_await out.second->login(targetFirst ? rt->source : *rt->target, params, timeout);
  }
  if (l1.ok && l2.ok) co_return std::nullopt;
  out.close();
  co_return !l1.ok ? l1.error.message : l2.error.message;
}

awaitable<AdminReply> ProxyServer::pause(std::optional<std::chrono::milliseconds> drain) {
  return phases_->pause(drain.value_or(runtime()->cfg.flip.drainTimeout));
}

void ProxyServer::cancelInFlight() {
  for (auto& s : registry_.all()) s->cancelForFlip();
}

ProxyServer::~ProxyServer() = default;

std::shared_ptr<const Runtime> ProxyServer::runtime() {
  std::lock_guard lock(rtMu_);
  return rt_;
}

int ProxyServer::run() {
  for (auto& io : workerIo_) {
    threads_.emplace_back([&io] { io->run(); });
  }
  if (admin_) admin_->start();
  asio::co_spawn(mainIo_, startAccepting(), asio::detached);
  waitForSignals();
  auto rt = runtime();
  spdlog::info("pghandoff {} listening on {} (source {}), {} worker threads", PGHANDOFF_VERSION,
               config::toString(rt->cfg.listen), config::describe(rt->source), workerIo_.size());
  if (brokenAtStart_) {
    spdlog::warn(
        "the mirror was broken by an earlier run (mirror.on_target_error: degrade): writes go "
        "to the authoritative side alone and no phase reads from the target; seed the target "
        "again, then remove {}",
        (std::filesystem::path(rt->cfg.state.dir) / "mirror-broken").string());
  }

  mainIo_.run();
  // Let the cancelled accept (and anything else already completed) finish
  // its coroutine before the contexts go away.
  error_code ignored;
  acceptor_.close(ignored);
  mainIo_.restart();
  mainIo_.poll();
  for (auto& g : guards_) g.reset();
  for (auto& io : workerIo_) io->stop();
  for (auto& t : threads_) t.join();
  spdlog::info("pghandoff stopped");
  return 0;
}

awaitable<void> ProxyServer::acceptLoop() {
  while (accepting_) {
    auto& io = *workerIo_[nextWorker_++ % workerIo_.size()];
    auto [ec, socket] = co_await acceptor_.async_accept(io, kUseAwaitable);
    if (ec) {
      if (!accepting_ || ec == asio::error::operation_aborted) break;
      // EMFILE and friends: back off instead of spinning.
      spdlog::warn("accept failed: {}", ec.message());
      asio::steady_timer t(mainIo_, std::chrono::milliseconds(100));
      co_await t.async_wait(kUseAwaitable);
      continue;
    }
    auto rt = runtime();
    bool admitted = registry_.admit(rt->cfg.limits.maxClientConnections);
    auto session = std::make_shared<ClientSession>(std::move(socket), std::move(rt), registry_,
                                                   admitted, nextSessionId_++);
    // Not `detached`: an escaped exception is logged and counted, and only
    // that session ends.
    asio::co_spawn(io, runSession(std::move(session)), [](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        metrics().internalBugsTotal().inc();
        spdlog::error("session ended with an exception: {}", ex.what());
      }
    });
  }
}

void ProxyServer::waitForSignals() {
  signals_.async_wait([this](error_code ec, int sig) {
    if (ec) return;
    if (sig == SIGHUP) {
      reload();
    } else {
      spdlog::info("received {}, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
      // A second SIGTERM/SIGINT during shutdown closes every session now.
      beginShutdown(shuttingDown_);
    }
    waitForSignals();
  });
}

void ProxyServer::beginShutdown(bool immediate) {
  auto rt = runtime();
  if (immediate) shutdownDeadline_ = std::chrono::steady_clock::now();
  if (shuttingDown_) return;
  shuttingDown_ = true;
  accepting_ = false;
  error_code ignored;
  acceptor_.close(ignored);
  for (auto& s : registry_.all()) s->requestShutdown();
  if (!immediate)
    shutdownDeadline_ = std::chrono::steady_clock::now() + rt->cfg.limits.shutdownTimeout;
  asio::co_spawn(mainIo_, shutdownLoop(), asio::detached);
}

awaitable<void> ProxyServer::shutdownLoop() {
  // Sessions close themselves at their next transaction boundary; past the
  // deadline they are closed; after 3 more seconds the process goes anyway.
  asio::steady_timer tick(mainIo_);
  std::optional<std::chrono::steady_clock::time_point> forcedAt;
  while (true) {
    auto now = std::chrono::steady_clock::now();
    std::size_t left = registry_.size();
    if (left == 0) break;
    if (forcedAt && now - *forcedAt > std::chrono::seconds(3)) {
      spdlog::warn("{} sessions did not close in time", left);
      break;
    }
    if (!forcedAt && now >= shutdownDeadline_) {
      spdlog::warn("shutdown timeout: closing {} sessions", left);
      for (auto& s : registry_.all()) s->forceClose();
      forcedAt = now;
    }
    tick.expires_after(std::chrono::milliseconds(20));
    co_await tick.async_wait(kUseAwaitable);
  }
  if (admin_) admin_->stop();
  signals_.cancel();
  mainIo_.stop();
}

void ProxyServer::reload() {
  spdlog::info("received SIGHUP, reloading {}", configPath_);
  auto loaded = config::loadConfigFile(configPath_, config::processEnv());
  if (!loaded.config) {
    spdlog::error("reload failed, keeping the running configuration:\n{}",
                  config::formatErrors(loaded, configPath_));
    return;
  }
  auto old = runtime();
  const config::Config& next = *loaded.config;
  // What a running process cannot change: say so, keep the old value.
  config::Config merged = next;
  auto keep = [&](bool changed, const char* key) {
    if (changed)
      spdlog::warn("reload: {} cannot change without a restart; keeping the old value", key);
  };
  keep(config::toString(next.listen) != config::toString(old->cfg.listen), "listen");
  merged.listen = old->cfg.listen;
  keep(next.threads != old->cfg.threads, "threads");
  merged.threads = old->cfg.threads;
  keep(next.admin.token != old->cfg.admin.token ||
           (next.admin.listen ? config::toString(*next.admin.listen) : "") !=
               (old->cfg.admin.listen ? config::toString(*old->cfg.admin.listen) : ""),
       "admin");
  merged.admin = old->cfg.admin;
  keep(next.state.dir != old->cfg.state.dir, "state.dir");
  merged.state = old->cfg.state;
  keep(next.mirror.mode != old->cfg.mirror.mode, "mirror.mode");
  merged.mirror.mode = old->cfg.mirror.mode;
  try {
    auto rt = buildRuntime(merged, mockSecret_);
    setLogLevel(merged.log.level);
    std::lock_guard lock(rtMu_);
    rt_ = std::move(rt);
  } catch (const std::exception& e) {
    spdlog::error("reload failed, keeping the running configuration: {}", e.what());
    return;
  }
  spdlog::info("reload done: new sessions use the new configuration");
}

std::string ProxyServer::statusJson() {
  auto rt = runtime();
  auto sessions = registry_.all();
  auto barrier = phases_->status();
  std::ostringstream o;
  o << "{\"version\":\"" << PGHANDOFF_VERSION << "\",\"phase\":\"" << phaseName(phases_->current())
    << "\",\"paused\":" << (barrier.paused ? "true" : "false")
    << ",\"flipping\":" << (barrier.flipping ? "true" : "false")
    << ",\"in_flight_transactions\":" << barrier.inFlight
    << ",\"last_flip\":" << barrier.lastFlipJson
    << ",\"accepting\":" << (accepting_ ? "true" : "false")
    << ",\"connections\":{\"clients\":" << metrics().clientConnections().value()
    << ",\"source\":" << metrics().serverConnections(labels::Side::kSource).value()
    << ",\"target\":" << metrics().serverConnections(labels::Side::kTarget).value() << "}"
    << ",\"source\":\"" << jsonEscape(config::describe(rt->source)) << "\"";
  if (rt->target) o << ",\"target\":\"" << jsonEscape(config::describe(*rt->target)) << "\"";
  // The mirror: off in the phases that write one server; sync (no lag, no
  // queue: a write is acknowledged once both have it) while mirroring;
  // broken once mirror.on_target_error: degrade (or on_divergence:
  // pause-mirroring) gave up on it.
  const Phase now = phases_->current();
  const char* mirrorState = registry_.mirrorBroken() ? "broken"
                            : asyncJournal()         ? "async"
                            : writesBoth(now)        ? "sync"
                                                     : "off";
  std::uint64_t divergences = 0, mirrorErrors = 0;
  for (std::size_t k = 0; k < labels::DivergenceKindDim::kValues.size(); ++k) {
    divergences += metrics().divergencesTotal(static_cast<labels::DivergenceKind>(k)).value();
  }
  for (std::size_t k = 0; k < labels::MirrorErrorReasonDim::kValues.size(); ++k) {
    mirrorErrors += metrics().mirrorErrorsTotal(static_cast<labels::MirrorErrorReason>(k)).value();
  }
  o << ",\"mirror\":{\"state\":\"" << mirrorState << "\",\"lag_seconds\":";
  if (asyncJournal() && !registry_.mirrorBroken()) {
    o << asyncLagSeconds();
  } else {
    o << (writesBoth(now) && !registry_.mirrorBroken() ? "0" : "null");
  }
  o << ",\"queue_transactions\":" << asyncQueue();
  if (asyncJournal()) {
    o << ",\"applying_to\":\"" << (async_.toSource ? "source" : "target")
      << "\",\"replay_restarts\":" << async_.restarts
      << ",\"journal_segments\":" << async_.segments.size() << ",\"journal_cuts\":" << async_.cuts;
    if (!async_.error.empty()) o << ",\"replay_error\":\"" << jsonEscape(async_.error) << "\"";
  }
  o << ",\"errors\":" << mirrorErrors
    << ",\"nondeterministic_rejected\":" << metrics().nondeterministicRejectedTotal().value()
    << "},\"divergences\":" << divergences << ",\"seed\":" << seedJson() << ",\"sessions\":[";
  std::size_t shown = 0;
  for (auto& s : sessions) {
    if (shown == 1000) break;
    auto i = s->info();
    if (shown++ > 0) o << ",";
    o << "{\"id\":" << i.id << ",\"state\":\"" << i.state << "\",\"transaction\":\"" << i.txStatus
      << "\",\"user\":\"" << jsonEscape(i.user) << "\",\"application_name\":\""
      << jsonEscape(i.applicationName) << "\",\"client\":\"" << jsonEscape(i.clientAddress)
      << "\",\"tls\":" << (i.tls ? "true" : "false") << "}";
  }
  o << "]}";
  return o.str();
}

}  // namespace pghandoff::proxy
