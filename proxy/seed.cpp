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
                             std::filesystem::path file, PgSnapshot snapshot)
    : rt_(std::move(rt)),
      ex_(std::move(ex)),
      file_(std::move(file)),
      snapshot_(std::move(snapshot)) {}

JournalReplay::~JournalReplay() {
  close();
}

void JournalReplay::close() {
  for (auto& [id, c] : conns_) {
    if (c.server) c.server->stream().close();
  }
  conns_.clear();
  if (source_) source_->stream().close();
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
    source_ = std::make_shared<ServerConnection>(ex_, rt_->sourceTls);
    const StartupParams params = {{"application_name", "pghandoff seed replay"}};
    LoginResult login = co_await source_->login(rt_->source, params, std::chrono::seconds(10));
    if (!login.ok) {
      source_.reset();
      error = "cannot reach the source to ask how a transaction ended: " + login.error.message;
      co_return std::nullopt;
    }
  }
  const std::string sql =
      "SELECT pg_catalog.pg_xact_status('" + std::to_string(xid) + "'::pg_catalog.xid8)";
  QueryRows r = co_await simpleQuery(*source_, sql);
  if (r.error || r.rows.size() != 1 || r.rows[0].empty() || !r.rows[0][0]) {
    error = "the source could not say how transaction " + std::to_string(xid) +
            " ended: " + (r.error ? *r.error : std::string("no answer"));
    if (r.error && *r.error == "connection lost") source_.reset();
    co_return std::nullopt;
  }
  const std::string& st = *r.rows[0][0];
  if (st == "committed") co_return 'c';
  if (st == "aborted") co_return 'a';
  co_return 'p';
}

awaitable<std::optional<std::string>> JournalReplay::run(std::uint64_t durable, bool final) {
  if (auto err = co_await readMore(durable)) co_return err;
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (!queue_.empty()) {
    const JournalTx& tx = queue_.front().first;
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
  c.server = std::make_shared<ServerConnection>(ex_, rt_->targetTls);
  const config::ConnInfo& info = *rt_->target;
  LoginResult login = co_await c.server->login(info, params, std::chrono::seconds(10));
  if (!login.ok)
    co_return "cannot log in to the target to replay the journal: " + login.error.message;
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
    out.insert(out.end(), tx.commit.begin(), tx.commit.end());
    readies += tx.commitReadies;
  } else {
    protocol::encodeQuery(kAbort, out);
    protocol::encodeQuery(kRollback, out);
    readies += 2;
  }
  // Written while the answers are read: a large request must not wait for
  // the server, which waits for its answers to be taken.
  bool sent = false;
  Reply reply;
  using namespace asio::experimental::awaitable_operators;
  co_await (sendAll(*c, out, sent) && readReplies(*c, readies, reply));
  if (!sent || reply.lost) {
    co_return "lost the target while replaying the journal (transaction " + std::to_string(tx.xid) +
        ")";
  }
  if (!commit) co_return std::nullopt;
  // What the source committed must commit here: no error in the commit
  // itself, not a failed transaction before it, and no transaction left
  // open after it.
  const std::string where = "journal transaction " + std::to_string(tx.seq) + " (source xid " +
                            std::to_string(tx.xid) + ")";
  for (const auto& [before, message] : reply.errors) {
    if (before >= tx.readies) {
      co_return "the target could not commit " + where + ": " + message;
    }
  }
  if (tx.readies > 0 && tx.commitReadies > 0 && reply.statuses[tx.readies - 1] == 'E') {
    co_return "the target failed " + where + ": " +
        (reply.errors.empty() ? std::string("an error") : reply.errors.back().second);
  }
  if (!reply.statuses.empty() && reply.statuses.back() != 'I') {
    co_return "the target left " + where + " open after its commit";
  }
  if (!reply.errors.empty()) {
    stats_.statementErrors += reply.errors.size();
    spdlog::warn("seed: {} had {} failed statement(s) on the target, as on the source: {}", where,
                 reply.errors.size(), reply.errors.front().second);
  }
  co_return std::nullopt;
}

}  // namespace pghandoff::proxy
