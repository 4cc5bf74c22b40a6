#include "proxy/seed.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <array>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <cerrno>
#include <charconv>
#include <cstring>

#include "protocol/backend.h"
#include "protocol/frame.h"
#include "protocol/frontend.h"
#include "proxy/sequence_sync.h"

namespace pghandoff::proxy {

namespace {

using Clock = std::chrono::steady_clock;

std::optional<std::uint64_t> number(std::string_view s) {
  std::uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

// What a transaction the source did not commit (or the dump holds) gets
// after its requests: its own transaction aborted, whatever state it is in.
constexpr std::string_view kAbort =
    "DO $pghandoff$BEGIN RAISE EXCEPTION 'pghandoff: not replayed'; END$pghandoff$";
constexpr std::string_view kRollback = "ROLLBACK";
constexpr std::string_view kReplaySettings = "SET synchronous_commit = off";

// The async mirror's replay position on the destination: the journal it
// belongs to and the last transaction applied from it.
constexpr std::string_view kPositionSetup =
    "CREATE SCHEMA IF NOT EXISTS pghandoff; "
    "CREATE TABLE IF NOT EXISTS pghandoff.mirror_position ("
    "id integer PRIMARY KEY CHECK (id = 1), journal numeric NOT NULL, seq bigint NOT NULL); "
    "INSERT INTO pghandoff.mirror_position VALUES (1, 0, 0) ON CONFLICT (id) DO NOTHING; "
    "SELECT journal::text, seq::text FROM pghandoff.mirror_position";

}  // namespace

std::optional<PgSnapshot> parsePgSnapshot(std::string_view text) {
  const auto c1 = text.find(':');
  if (c1 == std::string_view::npos) return std::nullopt;
  const auto c2 = text.find(':', c1 + 1);
  if (c2 == std::string_view::npos) return std::nullopt;
  PgSnapshot s;
  auto xmin = number(text.substr(0, c1));
  auto xmax = number(text.substr(c1 + 1, c2 - c1 - 1));
  if (!xmin || !xmax || *xmin > *xmax) return std::nullopt;
  s.xmin = *xmin;
  s.xmax = *xmax;
  std::string_view list = text.substr(c2 + 1);
  while (!list.empty()) {
    const auto comma = list.find(',');
    auto x = number(list.substr(0, comma));
    if (!x) return std::nullopt;
    s.xip.push_back(*x);
    list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
  }
  return s;
}

bool visibleInSnapshot(const PgSnapshot& s, std::uint64_t xid) {
  if (xid < s.xmin) return true;
  if (xid >= s.xmax) return false;
  for (auto x : s.xip) {
    if (x == xid) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------

JournalReplay::JournalReplay(std::shared_ptr<const Runtime> rt, asio::any_io_executor ex,
                             std::filesystem::path file, PgSnapshot snapshot, ReplayOptions options)
    : rt_(std::move(rt)),
      ex_(std::move(ex)),
      file_(std::move(file)),
      snapshot_(std::move(snapshot)),
      options_(std::move(options)) {}

const config::ConnInfo& JournalReplay::destination() const {
  return options_.toSource ? rt_->source : *rt_->target;
}

const config::ConnInfo& JournalReplay::origin() const {
  return options_.toSource ? *rt_->target : rt_->source;
}

JournalReplay::~JournalReplay() {
  close();
}

void JournalReplay::abort() {
  for (auto& [id, c] : conns_) {
    if (c.server) c.server->stream().close();
  }
  if (source_) source_->stream().close();
}

void JournalReplay::close() {
  abort();
  conns_.clear();
  source_.reset();
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

awaitable<std::optional<std::string>> JournalReplay::readMore(std::uint64_t durable) {
  if (fd_ < 0) {
    fd_ = ::open(file_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0)
      co_return "cannot open the journal " + file_.string() + ": " + std::strerror(errno);
    offset_ = journalHeaderSize();
    if (::lseek(fd_, static_cast<off_t>(offset_), SEEK_SET) < 0) {
      co_return "cannot read the journal " + file_.string() + ": " + std::strerror(errno);
    }
  }
  std::array<std::uint8_t, 1 << 16> chunk{};
  while (offset_ < durable) {
    const auto want =
        static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), durable - offset_));
    const ssize_t r = ::read(fd_, chunk.data(), want);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      co_return "cannot read the journal " + file_.string() + ": " +
          (r < 0 ? std::string(std::strerror(errno)) : std::string("it is shorter than written"));
    }
    tail_.insert(tail_.end(), chunk.begin(), chunk.begin() + r);
    offset_ += static_cast<std::uint64_t>(r);
  }
  stats_.readBytes = offset_;
  JournalContents got;
  const std::size_t used = parseJournalRecords(tail_, got);
  if (got.torn) co_return "the journal " + file_.string() + " is damaged";
  tail_.erase(tail_.begin(), tail_.begin() + static_cast<std::ptrdiff_t>(used));
  for (auto& [id, params] : got.sessions) sessions_[id] = std::move(params);
  for (auto& [seq, committed] : got.outcomes) outcomes_[seq] = committed;
  const auto now = Clock::now();
  for (auto& tx : got.txs) queue_.emplace_back(std::move(tx), now);
  stats_.queued = queue_.size();
  co_return std::nullopt;
}

awaitable<std::optional<char>> JournalReplay::sourceStatus(std::uint64_t xid, std::string& error) {
  if (!source_) {
    source_ = std::make_shared<ServerConnection>(
        ex_, options_.toSource ? rt_->targetTls : rt_->sourceTls);
    const StartupParams params = {{"application_name", options_.application}};
    LoginResult login = co_await source_->login(origin(), params, std::chrono::seconds(10));
    if (!login.ok) {
      source_.reset();
      error = std::string("cannot reach the ") + (options_.toSource ? "target" : "source") +
              " to ask how a transaction ended: " + login.error.message;
      co_return std::nullopt;
    }
  }
  const std::string sql =
      "SELECT pg_catalog.pg_xact_status('" + std::to_string(xid) + "'::pg_catalog.xid8)";
  QueryRows r = co_await simpleQuery(*source_, sql);
  if (r.error || r.rows.size() != 1 || r.rows[0].empty() || !r.rows[0][0]) {
    error = std::string("the ") + (options_.toSource ? "target" : "source") +
            " could not say how transaction " + std::to_string(xid) +
            " ended: " + (r.error ? *r.error : std::string("no answer"));
    if (r.error && *r.error == "connection lost") source_.reset();
    co_return std::nullopt;
  }
  const std::string& st = *r.rows[0][0];
  if (st == "committed") co_return 'c';
  if (st == "aborted") co_return 'a';
  co_return 'p';
}

awaitable<std::optional<std::string>> JournalReplay::loadPosition() {
  auto conn =
      std::make_shared<ServerConnection>(ex_, options_.toSource ? rt_->sourceTls : rt_->targetTls);
  const StartupParams params = {{"application_name", options_.application}};
  LoginResult login = co_await conn->login(destination(), params, std::chrono::seconds(10));
  const char* side = options_.toSource ? "source" : "target";
  if (!login.ok) {
    co_return std::string("cannot reach the ") + side +
        " to replay the journal: " + login.error.message;
  }
  const std::string sql(kPositionSetup);
  QueryRows r = co_await simpleQuery(*conn, sql);
  conn->stream().close();
  if (r.error || r.rows.empty() || r.rows.back().size() != 2 || !r.rows.back()[0] ||
      !r.rows.back()[1]) {
    co_return std::string("cannot keep the replay position on the ") + side +
        " (pghandoff.mirror_position): " + (r.error ? *r.error : std::string("no answer"));
  }
  const auto journal = number(*r.rows.back()[0]);
  const auto seq = number(*r.rows.back()[1]);
  // A position of another journal says nothing about this one, unless that
  // journal was written after it (this one was applied to its end).
  position_ = 0;
  if (journal && seq && *journal == options_.journalId) position_ = *seq;
  for (auto later : options_.laterJournalIds) {
    if (journal && *journal == later) position_ = UINT64_MAX;
  }
  co_return std::nullopt;
}

awaitable<std::optional<std::string>> JournalReplay::run(std::uint64_t durable, bool final) {
  if (auto err = co_await readMore(durable)) co_return err;
  if (options_.positioned && !position_) {
    if (auto err = co_await loadPosition()) co_return err;
  }
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (!queue_.empty()) {
    const JournalTx& tx = queue_.front().first;
    stats_.oldestAt = tx.at;
    if (position_ && tx.seq <= *position_) {
      // Applied before this replay started: run and rolled back all the
      // same, for the session state its requests carry (SET, Parse).
      if (auto err = co_await apply(tx, false)) co_return err;
      ++stats_.alreadyApplied;
      outcomes_.erase(tx.seq);
      queue_.pop_front();
      stats_.queued = queue_.size();
      continue;
    }
    bool committed = false;
    if (auto it = outcomes_.find(tx.seq); it != outcomes_.end()) {
      committed = it->second;
    } else {
      // No outcome noted (yet): still committing, or the proxy that wrote
      // it stopped before it could say. The source knows.
      if (!final && Clock::now() - queue_.front().second < std::chrono::seconds(2)) break;
      std::string error;
      auto st = co_await sourceStatus(tx.xid, error);
      if (!st) co_return error;
      if (*st == 'p') {
        if (!final) break;
        if (Clock::now() > deadline) {
          co_return "transaction " + std::to_string(tx.xid) +
              " is still in progress on the source after the writes were drained";
        }
        asio::steady_timer t(ex_, std::chrono::milliseconds(100));
        co_await t.async_wait(kUseAwaitable);
        continue;
      }
      committed = *st == 'c';
    }
    const bool inSnapshot = committed && visibleInSnapshot(snapshot_, tx.xid);
    if (auto err = co_await apply(tx, committed && !inSnapshot)) co_return err;
    if (!committed) {
      ++stats_.notCommitted;
    } else if (inSnapshot) {
      ++stats_.inSnapshot;
    } else {
      ++stats_.applied;
    }
    outcomes_.erase(tx.seq);
    queue_.pop_front();
    stats_.queued = queue_.size();
  }
  stats_.oldestAt = queue_.empty() ? 0 : queue_.front().first.at;
  co_return std::nullopt;
}

awaitable<std::optional<std::string>> JournalReplay::connFor(std::uint64_t session, Conn*& out) {
  if (auto it = conns_.find(session); it != conns_.end()) {
    out = &it->second;
    co_return std::nullopt;
  }
  StartupParams params;
  if (auto it = sessions_.find(session); it != sessions_.end()) params = it->second;
  Conn c;
  c.server =
      std::make_shared<ServerConnection>(ex_, options_.toSource ? rt_->sourceTls : rt_->targetTls);
  LoginResult login = co_await c.server->login(destination(), params, std::chrono::seconds(10));
  if (!login.ok) {
    co_return std::string("cannot log in to the ") + (options_.toSource ? "source" : "target") +
        " to replay the journal: " + login.error.message;
  }
  // The replay is redone from the start if the target fails before the end.
  const std::string settings(kReplaySettings);
  QueryRows set = co_await simpleQuery(*c.server, settings);
  if (set.error) co_return "cannot prepare a replay session on the target: " + *set.error;
  auto [it, inserted] = conns_.emplace(session, std::move(c));
  out = &it->second;
  co_return std::nullopt;
}

awaitable<void> JournalReplay::sendAll(Conn& c, const std::vector<std::uint8_t>& bytes, bool& ok) {
  auto [ec, n] = co_await c.server->stream().writeAll(asio::buffer(bytes));
  ok = !ec;
}

awaitable<void> JournalReplay::readReplies(Conn& c, std::size_t readies, Reply& reply) {
  std::vector<std::uint8_t> chunk(16384);
  std::size_t at = 0;
  while (reply.statuses.size() < readies) {
    while (reply.statuses.size() < readies) {
      const protocol::Bytes rest(c.buf.data() + at, c.buf.size() - at);
      const protocol::FrameHeader h = protocol::parseBackendHeader(rest, 1u << 30);
      if (h.status == protocol::FrameStatus::kNeedMore) break;
      if (h.status != protocol::FrameStatus::kOk) {
        reply.lost = true;
        co_return;
      }
      const protocol::Bytes body = rest.subspan(5, h.bodySize());
      if (h.type == 'E') {
        auto e = protocol::decodeErrorBody(body);
        reply.errors.emplace_back(reply.statuses.size(),
                                  e ? e->message + " (SQLSTATE " + e->code + ")" : "error");
      } else if (h.type == 'Z') {
        auto st = protocol::decodeReadyForQueryBody(body);
        reply.statuses.push_back(st ? *st : '?');
      }
      at += h.total();
    }
    c.buf.erase(c.buf.begin(), c.buf.begin() + static_cast<std::ptrdiff_t>(at));
    at = 0;
    if (reply.statuses.size() >= readies) break;
    auto [ec, n] = co_await c.server->stream().readSome(asio::buffer(chunk));
    if (ec) {
      reply.lost = true;
      co_return;
    }
    c.buf.insert(c.buf.end(), chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(n));
  }
}

awaitable<std::optional<std::string>> JournalReplay::apply(const JournalTx& tx, bool commit) {
  Conn* c = nullptr;
  if (auto err = co_await connFor(tx.session, c)) co_return err;
  std::vector<std::uint8_t> out = tx.bytes;
  std::size_t readies = tx.readies;
  if (commit) {
    if (options_.positioned) {
      // The position moves in the transaction itself: committed together,
      // or not at all. A commit sent as a simple Query gets a simple Query
      // before it (inside the client's transaction block); an extended one
      // gets extended messages without a Sync, which join the transaction
      // (implicit or not) that its Sync ends.
      const std::string update =
          "UPDATE pghandoff.mirror_position SET journal = " + std::to_string(options_.journalId) +
          ", seq = " + std::to_string(tx.seq);
      if (!tx.commit.empty() && tx.commit[0] == 'Q') {
        protocol::encodeQuery(update, out);
        ++readies;
      } else {
        // Without a Sync: they join the transaction the commit's Sync ends.
        protocol::encodeNamedRun("pghandoff_position", update, out);
      }
    }
    out.insert(out.end(), tx.commit.begin(), tx.commit.end());
    readies += tx.commitReadies;
  } else {
    protocol::encodeQuery(kAbort, out);
    protocol::encodeQuery(kRollback, out);
    readies += 2;
    // The statements the commit request prepares (Parse, Close) are session
    // state the session's later transactions use: made here, outside a
    // transaction, without the commit.
    std::vector<std::uint8_t> state;
    protocol::Bytes rest(tx.commit);
    while (!rest.empty()) {
      const protocol::FrameHeader h = protocol::parseFrontendHeader(rest, 1u << 30);
      if (h.status != protocol::FrameStatus::kOk) break;
      if (h.type == 'P' || h.type == 'C') {
        state.insert(state.end(), rest.begin(),
                     rest.begin() + static_cast<std::ptrdiff_t>(h.total()));
      }
      rest = rest.subspan(h.total());
    }
    if (!state.empty()) {
      protocol::encodeSync(state);
      out.insert(out.end(), state.begin(), state.end());
      ++readies;
    }
  }
  // Written while the answers are read: a large request must not wait for
  // the server, which waits for its answers to be taken.
  bool sent = false;
  Reply reply;
  using namespace asio::experimental::awaitable_operators;
  co_await (sendAll(*c, out, sent) && readReplies(*c, readies, reply));
  if (!sent || reply.lost) {
    co_return std::string("lost the ") + (options_.toSource ? "source" : "target") +
        " while replaying the journal (transaction " + std::to_string(tx.xid) + ")";
  }
  if (!commit) co_return std::nullopt;
  // What the source committed must commit here: no error in the commit
  // itself, not a failed transaction before it, and no transaction left
  // open after it.
  const std::string where = "journal transaction " + std::to_string(tx.seq) + " (xid " +
                            std::to_string(tx.xid) + " on the " +
                            (options_.toSource ? "target" : "source") + ")";
  const std::string side = options_.toSource ? "source" : "target";
  if (tx.readies > 0 && tx.commitReadies > 0 && reply.statuses[tx.readies - 1] == 'E') {
    // Failed before its commit: the error that aborted it.
    std::string message = "an error";
    for (const auto& [before, m] : reply.errors) {
      if (before < tx.readies) message = m;
    }
    co_return "the " + side + " failed " + where + ": " + message;
  }
  for (const auto& [before, message] : reply.errors) {
    if (before >= tx.readies) {
      co_return "the " + side + " could not commit " + where + ": " + message;
    }
  }
  if (!reply.statuses.empty() && reply.statuses.back() != 'I') {
    co_return "the " + side + " left " + where + " open after its commit";
  }
  if (options_.positioned) position_ = tx.seq;
  if (!reply.errors.empty()) {
    stats_.statementErrors += reply.errors.size();
    spdlog::warn("seed: {} had {} failed statement(s) on the target, as on the source: {}", where,
                 reply.errors.size(), reply.errors.front().second);
  }
  co_return std::nullopt;
}

}  // namespace pghandoff::proxy
