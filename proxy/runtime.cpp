#include "proxy/runtime.h"

#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <random>
#include <stdexcept>

#include "protocol/md5auth.h"
#include "proxy/client_session.h"

namespace pghandoff::proxy {

std::shared_ptr<const Runtime> buildRuntime(const config::Config& cfg,
                                            std::vector<std::uint8_t> mockSecret) {
  auto rt = std::make_shared<Runtime>();
  rt->cfg = cfg;
  auto parsed = config::parseConnInfo(cfg.sourceUrl);
  if (!parsed.info) throw std::runtime_error("source.url: " + parsed.error);
  rt->source = *parsed.info;
  if (cfg.clientTls.mode != config::TlsMode::kDisable) {
    rt->clientTls = makeServerTls(cfg.clientTls.cert, cfg.clientTls.key);
  }
  rt->sourceTls = makeUpstreamTls(rt->source);
  if (!cfg.targetUrl.empty()) {
    auto t = config::parseConnInfo(cfg.targetUrl);
    if (!t.info) throw std::runtime_error("target.url: " + t.error);
    rt->target = *t.info;
    rt->targetTls = makeUpstreamTls(*rt->target);
  }
  rt->plain = makePlainContext();
  for (std::size_t i = 0; i < cfg.auth.users.size(); ++i) {
    const auto& u = cfg.auth.users[i];
    UserSecret s;
    const std::string& pw = u.password;
    if (pw.rfind("SCRAM-SHA-256$", 0) == 0) {
      s.scram = protocol::parseScramVerifier(pw);
      if (!s.scram) {
        throw std::runtime_error("auth.users[" + std::to_string(i) +
                                 "].password: not a valid SCRAM-SHA-256 verifier");
      }
    } else if (pw.size() == 35 && pw.rfind("md5", 0) == 0) {
      s.md5 = pw;
    } else {
      // Plaintext in the file (usually from ${VAR}): only derived verifiers
      // are kept in memory.
      s.scram = protocol::makeScramVerifier(pw);
      if (!s.scram) throw std::runtime_error("could not derive a SCRAM verifier (RNG failure)");
      s.md5 = protocol::md5StoredHash(pw, u.name);
    }
    rt->users.emplace(u.name, std::move(s));
  }
  rt->mockSecret = std::move(mockSecret);
  return rt;
}

void Registry::add(const std::shared_ptr<ClientSession>& s) {
  std::lock_guard lock(mu_);
  sessions_.emplace(s.get(), s);
}

void Registry::remove(const ClientSession* s, std::optional<protocol::BackendKeyData> key) {
  std::lock_guard lock(mu_);
  sessions_.erase(s);
  if (key) byKey_.erase(packKey(*key));
}

protocol::BackendKeyData Registry::newCancelKey(const std::shared_ptr<ClientSession>& s,
                                                std::int32_t serverPid) {
  std::lock_guard lock(mu_);
  while (true) {
    protocol::BackendKeyData k;
    std::uint8_t raw[4];
    if (RAND_bytes(raw, sizeof raw) != 1) throw std::runtime_error("RAND_bytes failed");
    // The pid is the server backend's own, so that what the client sees in
    // NotificationResponse and pg_backend_pid() matches its BackendKeyData
    // (clients skip their own NOTIFYs that way). The secret key is ours and
    // random: the server's key never leaves the proxy.
    k.pid = serverPid;
    k.key = static_cast<std::int32_t>((std::uint32_t(raw[0]) << 24) | (raw[1] << 16) |
                                      (raw[2] << 8) | raw[3]);
    if (byKey_.emplace(packKey(k), s).second) return k;
  }
}

std::shared_ptr<ClientSession> Registry::findByCancelKey(protocol::BackendKeyData k) {
  std::lock_guard lock(mu_);
  auto it = byKey_.find(packKey(k));
  return it == byKey_.end() ? nullptr : it->second.lock();
}

std::vector<std::shared_ptr<ClientSession>> Registry::all() {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<ClientSession>> out;
  out.reserve(sessions_.size());
  for (auto& [k, w] : sessions_) {
    if (auto p = w.lock()) out.push_back(std::move(p));
  }
  return out;
}

std::size_t Registry::size() {
  std::lock_guard lock(mu_);
  return sessions_.size();
}

const std::string& twoPhaseGidPrefix() {
  static const std::string prefix = [] {
    std::random_device rd;
    std::array<char, 40> buf{};
    std::snprintf(buf.data(), buf.size(), "pghandoff_%08x%08x_", rd(), rd());
    return std::string(buf.data());
  }();
  return prefix;
}

void Registry::markMirrorBroken() {
  if (mirrorBroken_.exchange(true, std::memory_order_acq_rel)) return;
  if (brokenMarker_.empty()) return;
  std::error_code ec;
  std::filesystem::create_directories(brokenMarker_.parent_path(), ec);
  std::ofstream out(brokenMarker_, std::ios::trunc);
  out << "The mirror broke (mirror.on_target_error: degrade): the target missed writes.\n"
         "Seed the target again, then remove this file.\n";
  out.flush();
  if (!out) {
    spdlog::error("cannot write {}: after a restart the broken mirror would be forgotten",
                  brokenMarker_.string());
  }
}

void Registry::clearMirrorBroken() {
  mirrorBroken_.store(false, std::memory_order_release);
  if (brokenMarker_.empty()) return;
  std::error_code ec;
  std::filesystem::remove(brokenMarker_, ec);
}

bool Registry::useBrokenMarker(std::filesystem::path file) {
  brokenMarker_ = std::move(file);
  std::error_code ec;
  if (!std::filesystem::exists(brokenMarker_, ec)) return false;
  mirrorBroken_.store(true, std::memory_order_release);
  return true;
}

}  // namespace pghandoff::proxy
