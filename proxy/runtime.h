// What sessions share: an immutable snapshot of the configuration and what
// was built from it (TLS contexts, user secrets), swapped whole on SIGHUP,
// and the registry of live sessions (cancel keys, shutdown, /status).
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "config/config.h"
#include "config/conninfo.h"
#include "protocol/backend.h"
#include "protocol/scram.h"
#include "protocol/sql_classify.h"
#include "protocol/sql_determinism.h"
#include "proxy/tls.h"

namespace pghandoff::proxy {

struct UserSecret {
  std::optional<protocol::ScramVerifier> scram;
  std::string md5;  // "md5..." or empty when only a SCRAM verifier was configured
};

struct Runtime {
  config::Config cfg;
  config::ConnInfo source;
  std::optional<ServerTls> clientTls;  // absent when client_tls.mode is disable
  std::shared_ptr<ssl::context> sourceTls;
  std::optional<config::ConnInfo> target;  // absent when target.url is not set
  std::shared_ptr<ssl::context> targetTls;
  std::shared_ptr<ssl::context> plain;
  std::map<std::string, UserSecret, std::less<>> users;
  std::vector<std::uint8_t> mockSecret;  // per process: mock SCRAM salts for unknown users
};

// Builds a runtime from a validated config. Throws std::runtime_error with a
// message naming the key for what only shows at this point (unreadable TLS
// files, a bad SCRAM verifier string).
[[nodiscard]] std::shared_ptr<const Runtime> buildRuntime(const config::Config& cfg,
                                                          std::vector<std::uint8_t> mockSecret);

// Two-phase commit transaction ids start "pghandoff_" (what a restarted proxy
// looks for), then a token unique to this process (so that its recovery leaves
// the live process's own alone): "pghandoff_<16 hex>_".
[[nodiscard]] const std::string& twoPhaseGidPrefix();

class ClientSession;
class Journal;
class PhaseController;

class Registry {
 public:
  explicit Registry(PhaseController& phases) : phases_(phases) {}
  // The migration phase and its barrier, shared by every session.
  PhaseController& phases() { return phases_; }

  // `mirror.on_target_error: degrade` gave up on the target: writes go to the
  // authoritative side only until a re-seed (SPEC §2). Sticky for the life
  // of the process.
  // Sticky across restarts too: a marker file under state.dir, written when
  // the mirror breaks and read at start (remove it once the target has been
  // seeded again).
  [[nodiscard]] bool mirrorBroken() const { return mirrorBroken_.load(std::memory_order_acquire); }
  void markMirrorBroken();
  // A new seed: the target will hold everything again (the marker removed).
  void clearMirrorBroken();
  // The marker's path; true when it exists already (an earlier run broke it).
  bool useBrokenMarker(std::filesystem::path file);

  // True the first time a statement fingerprint is seen here (bounded: the
  // set is cleared past 10,000): for warnings logged once per statement.
  [[nodiscard]] bool firstWarning(const std::string& fingerprint) {
    std::lock_guard lock(mu_);
    if (warned_.size() >= 10000) warned_.clear();
    return warned_.insert(fingerprint).second;
  }

  // mirror.two_phase_commit is on and both servers allow prepared
  // transactions (max_prepared_transactions > 0): checked by the server's
  // recovery pass; until then, and when they do not, commits keep the
  // mirror-first order.
  [[nodiscard]] bool twoPhaseUsable() const {
    return twoPhaseUsable_.load(std::memory_order_acquire);
  }
  void setTwoPhaseUsable(bool v) { twoPhaseUsable_.store(v, std::memory_order_release); }

  // Two-phase commit: prepared transactions a session could not finish on
  // some side (its connection was lost): decided ones (`commit`, prepared on
  // both) and undecided ones (an outcome unknown before both prepared: rolled
  // back). The server finishes them wherever they are still prepared.
  struct PendingPrepared {
    std::string gid;
    bool commit;
  };
  void addPending(std::string gid, bool commit) {
    std::lock_guard lock(mu_);
    pending_.push_back({std::move(gid), commit});
  }
  [[nodiscard]] std::vector<PendingPrepared> takePending() {
    std::lock_guard lock(mu_);
    return std::exchange(pending_, {});
  }

  // Phase seeding: the catch-up journal sessions record their writes in
  // (proxy/journal.h); null outside a seed.
  [[nodiscard]] std::shared_ptr<Journal> journal() const {
    std::lock_guard lock(mu_);
    return journal_;
  }
  void setJournal(std::shared_ptr<Journal> j) {
    std::lock_guard lock(mu_);
    hasJournal_.store(j != nullptr, std::memory_order_release);
    journal_ = std::move(j);
  }
  // journal() != nullptr without the lock: sessions ask at every
  // transaction of a mirroring phase.
  [[nodiscard]] bool hasJournal() const { return hasJournal_.load(std::memory_order_acquire); }

  // Statement classification shared by every session (cached by text).
  protocol::ClassificationCache& classifier() { return classifier_; }
  // Determinism and INSERT-shape analyses, likewise.
  protocol::AnalysisCache& analyses() { return analyses_; }

  // Admission: false when max_client_connections are already in use.
  [[nodiscard]] bool admit(std::uint32_t max) {
    std::uint32_t n = clients_.load(std::memory_order_relaxed);
    while (n < max) {
      if (clients_.compare_exchange_weak(n, n + 1, std::memory_order_relaxed)) return true;
    }
    return false;
  }
  void release() { clients_.fetch_sub(1, std::memory_order_relaxed); }

  void add(const std::shared_ptr<ClientSession>& s);
  void remove(const ClientSession* s, std::optional<protocol::BackendKeyData> key);
  // The session's BackendKeyData: the server's pid and a fresh random key,
  // unique among live sessions.
  [[nodiscard]] protocol::BackendKeyData newCancelKey(const std::shared_ptr<ClientSession>& s,
                                                      std::int32_t serverPid);
  [[nodiscard]] std::shared_ptr<ClientSession> findByCancelKey(protocol::BackendKeyData k);
  [[nodiscard]] std::vector<std::shared_ptr<ClientSession>> all();
  [[nodiscard]] std::size_t size();

 private:
  static std::uint64_t packKey(protocol::BackendKeyData k) {
    return (std::uint64_t(std::uint32_t(k.pid)) << 32) | std::uint32_t(k.key);
  }
  PhaseController& phases_;
  std::atomic<bool> mirrorBroken_{false};
  std::filesystem::path brokenMarker_;
  std::atomic<bool> twoPhaseUsable_{false};
  protocol::ClassificationCache classifier_;
  protocol::AnalysisCache analyses_;
  std::atomic<std::uint32_t> clients_{0};
  mutable std::mutex mu_;
  std::unordered_map<const ClientSession*, std::weak_ptr<ClientSession>> sessions_;
  std::unordered_map<std::uint64_t, std::weak_ptr<ClientSession>> byKey_;
  std::unordered_set<std::string> warned_;  // under mu_
  std::vector<PendingPrepared> pending_;    // under mu_
  std::shared_ptr<Journal> journal_;        // under mu_
  std::atomic<bool> hasJournal_{false};     // journal_ != nullptr
};

}  // namespace pghandoff::proxy
