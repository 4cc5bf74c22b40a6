// The proxy's side of `pghandoff seed` (SPEC §1 seeding, §3 seed; DESIGN
// hard problem 6): the snapshot the dump is taken from, and the replay of
// the catch-up journal (proxy/journal.h) on the target.
//
// POST /seed/start holds new transactions, waits for those in flight, and —
// with none running — exports a snapshot on the source (REPEATABLE READ,
// pg_export_snapshot, kept open by the proxy until the seed ends) and moves
// to `seeding`. Every transaction that then writes through the proxy starts
// after the snapshot, so the dump has none of them and the journal has all
// of them; the snapshot's own xmin/xmax/xip (pg_current_snapshot) still
// decides each replayed transaction (pg_visible_in_snapshot's rule), so a
// transaction the dump does hold is never applied twice.
//
// POST /seed/finish replays the journal on the target while traffic flows,
// round after round, until little is left; then, at a barrier (new
// transactions held, in-flight ones drained), the rest, the sequences set
// from the source, and the flip to `mirror`. GET /seed reports progress.
//
// The seed command renews a lease (POST /seed/heartbeat); a seed whose
// command died (or an explicit POST /seed/abort) goes back to `source-only`
// and its journal is removed. A proxy restarted in `seeding` keeps journaling
// but its snapshot is gone: only a new seed can go on.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/asio.h"
#include "proxy/journal.h"
#include "proxy/runtime.h"
#include "proxy/upstream.h"

namespace pghandoff::proxy {

// pg_current_snapshot() as text: "xmin:xmax:xip,xip,...".
struct PgSnapshot {
  std::uint64_t xmin = 0;
  std::uint64_t xmax = 0;
  std::vector<std::uint64_t> xip;
};
[[nodiscard]] std::optional<PgSnapshot> parsePgSnapshot(std::string_view text);
// pg_visible_in_snapshot(xid, snapshot) for a committed transaction: it
// finished before the snapshot was taken.
[[nodiscard]] bool visibleInSnapshot(const PgSnapshot& s, std::uint64_t xid);

// Where a journal is replayed: the seed's to the target (ruled by the dump's
// snapshot); an async mirror's (mirror.mode: async) to the side that is not
// authoritative, each applied transaction recording its number on that side
// (pghandoff.mirror_position, in the same transaction), so that a replay
// started again (the proxy restarted, the side's connection lost) applies
// none twice.
struct ReplayOptions {
  bool toSource = false;    // the destination: the source (reverse-mirror), else the target
  bool positioned = false;  // keep pghandoff.mirror_position on the destination
  std::uint64_t journalId = 0;
  // Journals written after this one: a position naming one of them means
  // this one was applied to its end.
  std::vector<std::uint64_t> laterJournalIds;
  std::string application = "pghandoff seed replay";
};

class JournalReplay {
 public:
  struct Stats {
    std::uint64_t applied = 0;          // committed on the source, committed on the target
    std::uint64_t inSnapshot = 0;       // committed before the snapshot: the dump has it
    std::uint64_t notCommitted = 0;     // rolled back (or never committed) on the source
    std::uint64_t statementErrors = 0;  // errors inside applied transactions (savepoints)
    std::uint64_t readBytes = 0;        // of the journal file
    std::uint64_t queued = 0;           // read, not yet replayed
    std::uint64_t alreadyApplied = 0;   // at or before the destination's position
    // When the oldest transaction not yet replayed was journaled (microseconds
    // since the epoch); 0 when none is read and waiting.
    std::uint64_t oldestAt = 0;
    [[nodiscard]] std::uint64_t done() const {
      return applied + inSnapshot + notCommitted + alreadyApplied;
    }
  };

  JournalReplay(std::shared_ptr<const Runtime> rt, asio::any_io_executor ex,
                std::filesystem::path file, PgSnapshot snapshot, ReplayOptions options = {});
  ~JournalReplay();
  JournalReplay(const JournalReplay&) = delete;
  JournalReplay& operator=(const JournalReplay&) = delete;

  // Reads the journal up to `durable` bytes and replays, in sequence order,
  // every transaction whose outcome is known; an undecided one is asked of
  // the source (pg_xact_status) once it is a few seconds old, or at once when
  // `final` (every transaction drained: one still in progress is waited for a
  // little). The error that fails the seed, or nullopt.
  awaitable<std::optional<std::string>> run(std::uint64_t durable, bool final);
  [[nodiscard]] const Stats& stats() const { return stats_; }
  void close();
  // Closes the server connections under a run() that may be waiting on them
  // (a destination that does not answer): it returns with an error. The
  // replay is then only good for close().
  void abort();

 private:
  struct Conn {
    std::shared_ptr<ServerConnection> server;
    std::vector<std::uint8_t> buf;
  };
  struct Reply {
    std::vector<char> statuses;  // of each ReadyForQuery, in order
    std::vector<std::pair<std::size_t, std::string>>
        errors;  // (ReadyForQuery count before, message)
    bool lost = false;
  };
  awaitable<std::optional<std::string>> readMore(std::uint64_t durable);
  awaitable<std::optional<std::string>> apply(const JournalTx& tx, bool commit);
  awaitable<std::optional<std::string>> connFor(std::uint64_t session, Conn*& out);
  awaitable<void> sendAll(Conn& c, const std::vector<std::uint8_t>& bytes, bool& ok);
  awaitable<void> readReplies(Conn& c, std::size_t readies, Reply& reply);
  // 'c' committed, 'a' aborted, 'p' in progress (on the side the journal
  // was written from); nullopt with `error` set.
  awaitable<std::optional<char>> sourceStatus(std::uint64_t xid, std::string& error);
  // positioned: the destination's pghandoff.mirror_position (made if
  // missing), read once.
  awaitable<std::optional<std::string>> loadPosition();
  [[nodiscard]] const config::ConnInfo& destination() const;
  [[nodiscard]] const config::ConnInfo& origin() const;

  std::shared_ptr<const Runtime> rt_;
  asio::any_io_executor ex_;
  std::filesystem::path file_;
  PgSnapshot snapshot_;
  ReplayOptions options_;
  std::optional<std::uint64_t> position_;  // positioned: the last seq applied there
  int fd_ = -1;
  std::uint64_t offset_ = 0;
  std::vector<std::uint8_t> tail_;  // read, not yet a whole record
  std::map<std::uint64_t, StartupParams> sessions_;
  std::map<std::uint64_t, Conn> conns_;
  std::deque<std::pair<JournalTx, std::chrono::steady_clock::time_point>> queue_;
  std::map<std::uint64_t, bool> outcomes_;
  std::shared_ptr<ServerConnection> source_;
  Stats stats_;
};

// The seed as the proxy sees it (ProxyServer::seed_, on the main context).
struct SeedState {
  enum class Stage : std::uint8_t { kNone, kSeeding, kCatchingUp, kDone, kFailed, kOrphaned };
  Stage stage = Stage::kNone;
  bool busy = false;  // a start, finish or abort is under way
  std::shared_ptr<Journal> journal;
  std::shared_ptr<ServerConnection> snapshotConn;  // holds the exported snapshot
  std::string snapshotName;
  std::string snapshotText;  // pg_current_snapshot()
  std::unique_ptr<JournalReplay> replay;
  std::chrono::steady_clock::time_point lastBeat{};
  std::string error;
  std::string previous = "none";  // "interrupted": an earlier seed left a partial restore
  double barrierMs = 0;
  std::uint64_t journalTransactionsAtEnd = 0;
};

}  // namespace pghandoff::proxy
