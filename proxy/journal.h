// The catch-up journal of phase `seeding` (SPEC §1, DESIGN hard problem 6).
//
// While `pghandoff seed` dumps the source and restores the target, sessions
// run in lockstep with the journal standing in for the target: what the
// target would have been sent (the client's bytes, or the text with values
// pinned on the source: proxy/insert_pin.h) is appended to the session's
// stream, and at each commit that wrote, the stream so far becomes one
// journal transaction, written durably (group commit: one fdatasync for all
// sessions committing at once) with the source's transaction id BEFORE the
// source is asked to commit. Its outcome is noted after; when a crash loses
// that note, the source itself says (pg_xact_status). A sequence number
// taken at that point orders the transactions as the source committed them
// wherever they conflict: a transaction waiting for another's row lock can
// only reach its own commit after the other committed.
//
// The replay (proxy/seed.h) runs every journal transaction in sequence order
// on the target, each session's on a connection of its own: committed ones
// (and not in the dump's snapshot) with their commit, the others aborted
// (their session state — SET, prepared statements — still carried over).
//
// The file: "PGHJOURNAL2\n", then records [u32 length][u8 type][payload]
// [u32 crc32 of type+payload]: 'I' the journal's random id, 'S' a
// session's startup parameters, 'T' a transaction, 'O' an outcome. A torn tail (a crash mid-write)
// ends the journal at the last whole record.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "protocol/buffer.h"
#include "proxy/asio.h"

namespace pghandoff::proxy {

using StartupParams = std::vector<std::pair<std::string, std::string>>;

struct JournalTx {
  std::uint64_t seq = 0;      // assigned by Journal::commit
  std::uint64_t session = 0;  // Journal::openSession's number
  std::uint64_t xid = 0;      // the source's full transaction id (xid8)
  std::uint32_t readies = 0;  // ReadyForQuery messages `bytes` draws from a server
  std::uint32_t commitReadies = 0;
  std::uint64_t at = 0;              // when it was journaled (microseconds since the epoch)
  bool implicit = false;             // an implicit transaction (extended protocol, no BEGIN)
  std::vector<std::uint8_t> bytes;   // the session's stream up to the commit
  std::vector<std::uint8_t> commit;  // the commit request itself
};

struct JournalContents {
  std::map<std::uint64_t, StartupParams> sessions;
  std::vector<JournalTx> txs;              // in sequence order
  std::map<std::uint64_t, bool> outcomes;  // seq -> committed
  std::uint64_t id = 0;                    // the journal's own random number
  std::size_t validBytes = 0;              // up to the last whole record
  bool torn = false;                       // damaged or partial records after it
};

// Encoding, pure (unit-tested).
void encodeJournalHeader(std::vector<std::uint8_t>& out);
void encodeSessionRecord(std::uint64_t session, const StartupParams& params,
                         std::vector<std::uint8_t>& out);
void encodeTxRecord(const JournalTx& tx, std::vector<std::uint8_t>& out);
void encodeJournalIdRecord(std::uint64_t id, std::vector<std::uint8_t>& out);
void encodeOutcomeRecord(std::uint64_t seq, bool committed, std::vector<std::uint8_t>& out);
// nullopt when the header is wrong (not a journal).
std::optional<JournalContents> parseJournal(protocol::Bytes data);
// Records only (after the header), appended to `out`: the bytes of the whole
// records read; `out.torn` set at a damaged one (an incomplete one just ends
// the read).
std::size_t parseJournalRecords(protocol::Bytes data, JournalContents& out);
std::size_t journalHeaderSize();
std::uint32_t crc32(protocol::Bytes data, std::uint32_t crc = 0);

class Journal {
 public:
  // A new, empty journal at `file` (an older one is replaced), with a
  // random id of its own. Throws std::runtime_error naming the file.
  static std::shared_ptr<Journal> create(const std::filesystem::path& file);
  // An existing journal, appended to after its last whole record (a torn
  // tail is cut off). Throws std::runtime_error.
  static std::shared_ptr<Journal> reopen(const std::filesystem::path& file);
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  // A session that will write transactions; its startup parameters are
  // written with the next batch.
  std::uint64_t openSession(const StartupParams& params);
  // Appends `tx` (its seq assigned here) and completes once it is on disk:
  // its seq, or 0 when the journal failed (a write or fsync error).
  awaitable<std::uint64_t> commit(JournalTx tx);
  // The outcome of a committed-to-journal transaction, written with the
  // next batch (not waited for: the source can tell when it is lost).
  void outcome(std::uint64_t seq, bool committed);

  [[nodiscard]] std::uint64_t durableBytes() const { return durable_.load(); }
  [[nodiscard]] std::uint64_t transactions() const { return txCount_.load(); }
  // Tells this journal from any other (an async mirror's replay position
  // names the journal it belongs to).
  [[nodiscard]] std::uint64_t id() const { return id_; }
  [[nodiscard]] bool failed() const { return failed_.load(); }
  [[nodiscard]] const std::filesystem::path& file() const { return file_; }
  // Stops the writer (what is queued is written first).
  void close();

 private:
  struct Waiter {
    std::shared_ptr<asio::steady_timer> timer;
    std::atomic<bool> done{false};
    bool ok = false;
  };
  Journal(std::filesystem::path file, int fd, std::uint64_t size, std::uint64_t nextSeq,
          std::uint64_t nextSession, std::uint64_t id);
  void writerLoop();

  std::filesystem::path file_;
  std::uint64_t id_ = 0;
  int fd_ = -1;
  std::atomic<std::uint64_t> durable_{0};
  std::atomic<std::uint64_t> txCount_{0};
  std::atomic<bool> failed_{false};

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::uint8_t> pending_;
  std::vector<std::shared_ptr<Waiter>> waiters_;
  std::uint64_t nextSeq_ = 1;
  std::uint64_t nextSession_ = 1;
  bool stopping_ = false;
  std::thread writer_;
};

}  // namespace pghandoff::proxy
