// The lockstep relay: how a session runs in the phases that write to both
// servers (SPEC §1 mirror, mirror-read-target, reverse-mirror; SPEC §2).
//
// Request by request. A read goes to the phase's read side and streams back.
// Anything else (writes, unknown statements, session state, transaction
// control) runs on the authoritative side first, its answer held; then the
// same bytes run on the mirror; the two outcomes (command tags with row
// counts, SQLSTATEs) are compared; then the held answer is released. The
// order is what keeps two sessions that touch one row from deadlocking
// across the servers (DESIGN hard problem 4): a statement takes its locks on
// the authoritative side before the mirror sees it, so a conflicting session
// waits there, never on the mirror; and COMMIT goes to the mirror first, so
// the authoritative side — where others wait — releases its locks last, and
// a mirror that cannot commit leaves the authoritative transaction to roll
// back (mirror.on_target_error: fail-client) instead of a divergence.
//
// An autocommit write is wrapped in a BEGIN/COMMIT the proxy adds on both
// sides, so that it can still be rolled back on the authoritative side when
// the mirror fails, and so that what is still in flight to a mirror given up
// after mirror.timeout cannot commit there by itself later.
//
// Per-server values (SPEC §2): an INSERT's column defaults (serial, identity,
// now(), uuid) and the volatile calls in its rows are fetched once on the
// authoritative side and written into the text both sides run
// (proxy/insert_pin.h); transaction-time values elsewhere (now(),
// CURRENT_TIMESTAMP, 'now'::date, ...) are pinned to the authoritative side's
// value (simple Query and extended protocol); whatever else computes values
// per server (random() in an UPDATE, ...) follows mirror.nondeterministic
// (reject | warn).
//
// Triggers fire on both servers: each trigger of a written table is judged
// from its PL/pgSQL body; one that would compute values per server follows
// mirror.nondeterministic too.
//
// Not built yet (issue 3, next steps): making such triggers deterministic;
// COPY FROM through the extended protocol (0A000); two-phase commit; async
// mode. Notifications arriving while a session is idle are
// delivered with its next answer.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <random>

#include "protocol/frame.h"
#include "protocol/frontend.h"
#include "protocol/sql_determinism.h"
#include "proxy/client_session.h"
#include "proxy/logging.h"
#include "proxy/watchdog.h"

namespace pghandoff::proxy {

namespace sqlstate = protocol::sqlstate;
using labels::DivergenceKind;
using labels::MirrorErrorReason;
using protocol::StatementKind;
using protocol::TxControl;

namespace {

// The authoritative answer is held up to this size; past it, what precedes
// the last completion message is released (a later error after rows is a
// valid PostgreSQL answer).
constexpr std::size_t kHoldLimit = 1 << 20;
constexpr std::size_t kNone = static_cast<std::size_t>(-1);

// The proxy's own statements, named: GCC 12 cannot pass a string literal
// straight into a co_await'ed call ("array used as initializer").
constexpr std::string_view kRollback = "ROLLBACK";
constexpr std::string_view kCommit = "COMMIT";
constexpr std::string_view kBegin = "BEGIN";
// The authoritative transaction's timestamp, in ISO form with its offset, so
// that the mirror parses it back to the same instant whatever its DateStyle.
constexpr std::string_view kPinTimeQuery =
    "SELECT pg_catalog.to_char(pg_catalog.now(), 'YYYY-MM-DD HH24:MI:SS.US TZH:TZM')";
// A journal stream (proxy/journal.h) past this size between transactions is
// replaced by the session state it amounts to.
constexpr std::size_t kJournalStreamLimit = 1 << 20;
// The source's transaction id of a transaction that wrote (NULL otherwise).
constexpr std::string_view kXidQuery = "SELECT pg_catalog.pg_current_xact_id_if_assigned()::text";
// Puts a transaction in the failed state (any error does).
constexpr std::string_view kFailTransaction = "SELECT 1/0 -- pghandoff: the mirror failed";

bool onlyTag(const std::vector<std::string>& results, std::string_view tag) {
  return results.size() == 1 && results[0] == tag;
}

// Only transaction-time values (the same all through a transaction) can be
// pinned after the fact, from the authoritative side's transaction.
bool timePinnable(const protocol::DeterminismAnalysis& det) {
  return det.parsed && det.unsupported.empty() && !det.calls.empty() &&
         std::all_of(det.calls.begin(), det.calls.end(), [](const protocol::VolatileCall& c) {
           return c.kind == protocol::VolatileCall::Kind::kTransactionTime && c.function != "age" &&
                  (c.function[0] != '\'' || c.function == "'now'");
         });
}

// Each call replaced by the pinned value as a literal of the call's type.
std::optional<std::string> pinText(std::string_view sql, const protocol::DeterminismAnalysis& det,
                                   const std::string& value) {
  std::vector<protocol::Replacement> reps;
  for (const auto& c : det.calls) {
    reps.push_back(
        {c.begin, c.end, c.function[0] == '\'' ? "'" + value + "'" : "'" + value + "'::" + c.type});
  }
  return protocol::substitute(sql, std::move(reps));
}

bool isCompletion(char t) {
  return t == 'C' || t == 'I' || t == 'E';
}

// The first word(s) of a command tag without its counts: "INSERT 0 3" ->
// "INSERT", "SELECT 2" -> "SELECT".
std::string_view tagCommand(std::string_view tag) {
  while (!tag.empty() &&
         (std::isdigit(static_cast<unsigned char>(tag.back())) != 0 || tag.back() == ' ')) {
    tag.remove_suffix(1);
  }
  return tag;
}

DivergenceKind divergenceKind(const std::vector<std::string>& a,
                              const std::vector<std::string>& m) {
  if (a.size() != m.size()) return DivergenceKind::kCommandTag;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i] == m[i]) continue;
    if (a[i].rfind("ERROR", 0) == 0 || m[i].rfind("ERROR", 0) == 0) return DivergenceKind::kError;
    return tagCommand(a[i]) == tagCommand(m[i]) ? DivergenceKind::kRowCount
                                                : DivergenceKind::kCommandTag;
  }
  return DivergenceKind::kCommandTag;
}

std::string summary(const std::vector<std::string>& results) {
  std::string s;
  for (const auto& r : results) {
    if (!s.empty()) s += ", ";
    s += r;
  }
  return s.empty() ? "(nothing)" : s;
}

const char* expectedCommitTag(TxControl t) {
  switch (t) {
    case TxControl::kPrepare:
      return "PREPARE TRANSACTION";
    case TxControl::kCommitPrepared:
      return "COMMIT PREPARED";
    default:
      return "COMMIT";
  }
}

// What a session set that a new server session must get too: session-level
// settings (replayed as SET), SQL PREPAREd statements (their text again) and
// protocol-level named statements (a Parse with the same name, text and
// parameter types: PREPARE cannot recreate a utility statement such as
// pgbench's "BEGIN;").
// The settings that change how values are read and printed are copied even
// when they are the first server's defaults (RELIABILITY F26: the servers may
// have different ones; '2020-01-01 10:00' must be the same instant on both).
// set_config takes a list (search_path) the way the configuration file does.
constexpr std::string_view kSessionStateQuery =
    "SELECT 'q', pg_catalog.format('SELECT pg_catalog.set_config(%L, %L, false)', name, "
    "setting), NULL FROM pg_catalog.pg_settings WHERE source = 'session' OR name IN "
    "('TimeZone', 'DateStyle', 'IntervalStyle', 'extra_float_digits', 'bytea_output', "
    "'standard_conforming_strings') "
    "UNION ALL "
    "SELECT CASE WHEN from_sql THEN 'q' ELSE 'p' END, CASE WHEN from_sql THEN statement "
    "ELSE name END, CASE WHEN from_sql THEN NULL ELSE statement || pg_catalog.chr(1) || "
    "pg_catalog.array_to_string(parameter_types::pg_catalog.oid[], ',') END "
    "FROM pg_catalog.pg_prepared_statements";

}  // namespace

// ---------------------------------------------------------------------------
// The loop

awaitable<void> ClientSession::lockstep() {
  const auto maxLen = static_cast<std::uint32_t>(rt_->cfg.limits.maxMessageBytes);
  while (true) {
    if (clientGone_ || closing_) {
      closing_ = true;
      co_await closeServerGracefully(false);
      client_.close();
      co_return;
    }
    if (forced_ || (shutdownRequested_ && !inTransaction_ && cbuf_.pendingSize() == 0 &&
                    unitFrames_.empty())) {
      // Graceful shutdown at a boundary (or forced): as the streaming relay.
      co_await closeServerGracefully(false);
      prepareShutdownFatal();
      co_await flushError();
      client_.close();
      co_return;
    }
    // New work at a boundary takes the barrier; the phase may want another
    // mode or side.
    if (!inTransaction_ && !cbuf_.midMessage() && unitFrames_.empty()) {
      auto h = protocol::parseFrontendHeader(cbuf_.unscanned(), maxLen);
      if (h.status == protocol::FrameStatus::kOk && h.type != 'X') {
        if (!co_await beginTransaction()) co_return;
        if (!modeFits(txPhase_)) {
          handover_ = true;
          co_return;
        }
      }
    }
    // One frame at a time.
    char type = 0;
    std::size_t at = 0, total = 0;
    const auto* readyStart = static_cast<const std::uint8_t*>(cbuf_.ready().data());
    auto res =
        cbuf_.scan([maxLen](protocol::Bytes b) { return protocol::parseFrontendHeader(b, maxLen); },
                   [](char t) { return t == 'Q'; },
                   [&](const protocol::FrameHeader& h, protocol::Bytes body, bool) {
                     type = h.type;
                     at = static_cast<std::size_t>(body.data() - 5 - readyStart);
                     total = h.total();
                     (void)machine_.onClientFrame(h.type);
                     return false;
                   });
    publish();
    if (res.status == RelayBuffer::ScanStatus::kError) {
      metrics().clientConnectionsRejectedTotal(labels::RejectReason::kProtocol).inc();
      spdlog::info("session {}: invalid frontend message ({})", id_, clientAddress_);
      closing_ = true;
      co_await closeServerGracefully(false);
      prepareFatal(sqlstate::kProtocolViolation, "invalid frontend message");
      co_await flushError();
      client_.close();
      co_return;
    }
    const auto ready = cbuf_.ready();
    const protocol::Bytes bytes(static_cast<const std::uint8_t*>(ready.data()), ready.size());
    if (type == 0) {
      // The streamed rest of a large extended-protocol message.
      if (!unitFrames_.empty()) unit_.insert(unit_.end(), bytes.begin(), bytes.end());
      cbuf_.consumeReady();
      lockstepIdle_ = !inTransaction_;
      if (shutdownRequested_ && lockstepIdle_ && cbuf_.pendingSize() == 0 && unitFrames_.empty()) {
        continue;
      }
      auto [ec, n] = co_await client_.readSome(cbuf_.freeSpace());
      lockstepIdle_ = false;
      if (ec) {
        if (ec == asio::error::operation_aborted && (shutdownRequested_ || forced_)) continue;
        // The client vanished (F10): nothing runs on the servers between
        // requests; ending the server sessions rolls back an open transaction.
        spdlog::debug("session {}: client disconnected", id_);
        closing_ = true;
        co_await closeServerGracefully(false);
        co_return;
      }
      cbuf_.commit(n);
      continue;
    }
    bool ok = true;
    switch (type) {
      case 'X':
        closing_ = true;
        co_await closeServerGracefully(false);
        client_.close();
        co_return;
      case 'Q': {
        if (!unitFrames_.empty()) {
          // A Query in the middle of an extended batch: the batch so far is
          // answered first, as a server would.
          ok = co_await mirrorExtended(false);
          if (!ok) co_return;
        }
        ok = co_await mirrorQuery(bytes.subspan(at, total));
        cbuf_.consumeReady();
        break;
      }
      case 'd':
      case 'c':
      case 'f':
        cbuf_.consumeReady();  // CopyData/Done/Fail outside COPY: ignored, as PostgreSQL does
        break;
      default: {
        // Parse, Bind, Describe, Execute, Close, Sync, Flush, FunctionCall:
        // collected up to Sync (or Flush), then run as one request.
        const std::size_t offset = unit_.size() + at;
        unit_.insert(unit_.end(), bytes.begin(), bytes.end());
        unitFrames_.push_back(FrameRef{type, offset, total});
        cbuf_.consumeReady();
        if (type == 'S' || type == 'F') {
          ok = co_await mirrorExtended(true);
        } else if (type == 'H' || (unit_.size() > kHoldLimit && !cbuf_.midMessage())) {
          ok = co_await mirrorExtended(false);  // a long batch: answered as at a Flush
        }
        break;
      }
    }
    if (!ok) co_return;
  }
}

// ---------------------------------------------------------------------------
// Requests

awaitable<bool> ClientSession::mirrorQuery(protocol::Bytes frame) {
  auto text = protocol::decodeQueryBody(frame.subspan(5));
  Unit u;
  u.bytes = frame;
  u.sql = text ? *text : std::string_view{};
  const protocol::Classification& c = classification(u.sql);
  u.info = StatementTracker::infoOf(c);
  u.txControl = c.txControl != TxControl::kNone;
  u.single = c.statements.size() == 1;
  u.executes = true;
  u.count = std::max<std::size_t>(1, c.statements.size());
  u.isQuery = true;
  co_return co_await runUnit(u);
}

awaitable<bool> ClientSession::mirrorExtended(bool ready) {
  Unit u;
  u.bytes = unit_;
  u.ready = ready;
  u.info.kind = StatementKind::kRead;
  std::size_t executes = 0, pinnableExecutes = 0, nondeterministicExecutes = 0;
  std::vector<std::pair<std::string_view, std::size_t>> binds;  // portal -> Bind frame index
  for (std::size_t fi = 0; fi < unitFrames_.size(); ++fi) {
    const FrameRef& f = unitFrames_[fi];
    const protocol::Bytes whole(unit_.data() + f.offset, f.length);
    const protocol::Bytes body = whole.subspan(5);
    switch (f.type) {
      case 'P': {
        if (auto pm = protocol::decodeParseBody(body)) {
          statements_.onParse(pm->statement, StatementTracker::infoOf(classification(pm->query)));
          statements_.rememberParse(pm->statement, body);
          if (u.sql.empty()) u.sql = pm->query;
        }
        u.sessionPart.insert(u.sessionPart.end(), whole.begin(), whole.end());
        ++u.sessionExpected;
        ++u.expected;
        break;
      }
      case 'B':
        if (auto b = protocol::decodeBindNames(body)) {
          statements_.onBind(b->portal, b->statement);
          binds.emplace_back(b->portal, fi);
        } else {
          statements_.onBind("", "\x01unknown");
        }
        ++u.expected;
        break;
      case 'E': {
        auto portal = protocol::decodeExecutePortal(body);
        StatementTracker::Info info =
            portal ? statements_.executeInfo(*portal) : StatementTracker::Info{};
        ++executes;
        if (info.kind == StatementKind::kWrite || info.kind == StatementKind::kUnknown ||
            info.nondeterministic) {
          // Its text, analysed once: for the column-default check and for
          // pinning. Known when the portal was bound in this request.
          std::size_t bindFrame = kNone;
          const std::vector<std::uint8_t>* parse = nullptr;
          for (auto it = binds.rbegin(); portal && it != binds.rend(); ++it) {
            if (it->first != *portal) continue;
            bindFrame = it->second;
            const FrameRef& bf = unitFrames_[bindFrame];
            auto bn = protocol::decodeBindNames(
                protocol::Bytes(unit_.data() + bf.offset + 5, bf.length - 5));
            if (bn) parse = statements_.parseOf(bn->statement);
            break;
          }
          auto pm = parse ? protocol::decodeParseBody(*parse) : std::nullopt;
          if (pm) {
            u.writeBindFrame = bindFrame;
            u.writeParse = parse;
            u.analyses.push_back(registry_.analyses().get(pm->query));
          } else {
            u.analysesComplete = false;
          }
          if (info.nondeterministic) {
            ++nondeterministicExecutes;
            if (pm && timePinnable(u.analyses.back()->determinism)) {
              u.pinSites.push_back({bindFrame, parse, u.analyses.size() - 1});
              ++pinnableExecutes;
            }
          }
        }
        u.info.kind = protocol::strongest(u.info.kind, info.kind);
        u.info.authoritativeOnly = u.info.authoritativeOnly || info.authoritativeOnly;
        u.info.copyFrom = u.info.copyFrom || info.copyFrom;
        u.info.noTransactionBlock = u.info.noTransactionBlock || info.noTransactionBlock;
        u.info.nondeterministic = u.info.nondeterministic || info.nondeterministic;
        if (info.tx != TxControl::kNone) {
          u.txControl = true;
          u.info.tx = info.tx;
        }
        ++u.expected;
        break;
      }
      case 'C':
        if (auto c = protocol::decodeCloseBody(body)) {
          statements_.onClose(c->kind, c->name);
          if (c->kind == 'S') {
            u.sessionPart.insert(u.sessionPart.end(), whole.begin(), whole.end());
            ++u.sessionExpected;
          }
        }
        ++u.expected;
        break;
      case 'D':
        ++u.expected;
        break;
      case 'F':  // FunctionCall: what it runs is not known
        ++executes;
        u.info.kind = protocol::strongest(u.info.kind, StatementKind::kUnknown);
        break;
      default:
        break;
    }
  }
  u.extPinnable = nondeterministicExecutes > 0 && pinnableExecutes == nondeterministicExecutes;
  u.executes = executes > 0;
  u.single = executes <= 1;
  u.count = executes;
  if (executes != 1) u.info.tx = TxControl::kNone;
  if (!u.sessionPart.empty()) {
    if (ready) {
      protocol::encodeSync(u.sessionPart);
    } else {
      protocol::Writer w(u.sessionPart);
      w.begin('H');
      w.end();
    }
  }
  // A Sync that ends an implicit transaction a Flush batch wrote in commits
  // it: the mirror first, like a COMMIT.
  u.implicitCommit = ready && implicitWrite_;
  bool ok = true;
  if (extSkip_) {
    // The servers ignore everything after an error until Sync; so does the
    // proxy (nothing is sent, nothing is answered).
    if (ready) {
      extSkip_ = false;
      implicitWrite_ = false;
      ok = co_await syncAfterError();
    }
  } else {
    ok = co_await runUnit(u);
  }
  unit_.clear();
  unitFrames_.clear();
  co_return ok;
}

// After an error in a Flush batch, a Sync ends the implicit transaction on
// every side that took part.
awaitable<bool> ClientSession::syncAfterError() {
  const int a = targetAuthoritative(txPhase_) ? kTargetIdx : kSourceIdx;
  const int m = a == kSourceIdx ? kTargetIdx : kSourceIdx;
  std::vector<std::uint8_t> sync;
  protocol::encodeSync(sync);
  if (hasSide(m)) {
    Outcome mo;
    bool done = co_await exchange(m, sync, Sink::kDiscard, mo, 0);
    if (!done) mirrorFailed(m, MirrorErrorReason::kTargetDown, "connection lost");
  }
  Outcome ao;
  bool done = co_await exchange(a, sync, Sink::kHold, ao, 0);
  if (!done) {
    co_await lockstepLost(a);
    co_return false;
  }
  co_return co_await finishUnit(ao.txStatus);
}

awaitable<bool> ClientSession::answer(bool ready, char status) {
  if (ready) co_return co_await finishUnit(status);
  if (!held_.empty() && !clientGone_) {
    clientWriting_ = true;
    auto [ec, n] = co_await client_.writeAll(asio::buffer(held_));
    clientWriting_ = false;
    if (ec) clientGone_ = true;
  }
  held_.clear();
  heldCompletion_ = kNone;
  co_return !clientGone_;
}

awaitable<bool> ClientSession::refuseUnit(const Unit& u, int a, const protocol::ErrorFields& e) {
  // The request runs nowhere; as with any error, an open transaction fails
  // (on the authoritative side, for real) and a Flush batch skips to Sync.
  const char clientTx = machine_.transactionStatus();
  holdError(e);
  bool failed = clientTx == 'I';
  if (!failed) failed = co_await failTransaction(a);
  if (!failed) {
    co_await lockstepLost(a);
    co_return false;
  }
  if (!u.ready) extSkip_ = true;
  co_return co_await answer(u.ready, clientTx == 'I' ? 'I' : 'E');
}

awaitable<bool> ClientSession::rollBackWrapper(int a) {
  Outcome rb;
  const bool rolledBack = co_await runOwn(a, kRollback, rb);
  if (!rolledBack && !up_[a].conn) {
    co_await lockstepLost(a);
    co_return false;
  }
  co_return true;
}

awaitable<bool> ClientSession::failTransaction(int a) {
  // The client was told its transaction failed: make it so on the
  // authoritative side, whose aborted state then answers what follows
  // (25P02, COMMIT -> ROLLBACK, ROLLBACK TO SAVEPOINT) as PostgreSQL does.
  Outcome o;
  co_await runOwn(a, kFailTransaction, o);
  co_return up_[a].conn.has_value();
}

awaitable<bool> ClientSession::runUnit(const Unit& u) {
  const Phase p = txPhase_;
  const int a = targetAuthoritative(p) ? kTargetIdx : kSourceIdx;
  const int m = a == kSourceIdx ? kTargetIdx : kSourceIdx;
  const int r = readsFromTarget(p) ? kTargetIdx : kSourceIdx;
  const char clientTx = machine_.transactionStatus();
  const auto kind =
      u.info.kind == StatementKind::kRead ? labels::QueryKind::kRead : labels::QueryKind::kWrite;
  const std::size_t expect = u.ready ? 0 : u.expected;
  const bool writes =
      u.info.kind == StatementKind::kWrite || u.info.kind == StatementKind::kUnknown;
  // A simple Query's text, analysed once (per-server values, what it writes)
  // when it may write; reads need none of it.
  static const protocol::StatementAnalysis kNotAnalysed;
  std::shared_ptr<const protocol::StatementAnalysis> queryAnalysis;
  if (u.isQuery && (writes || u.info.nondeterministic)) {
    queryAnalysis = registry_.analyses().get(u.sql);
  }
  const protocol::DeterminismAnalysis& det =
      queryAnalysis ? queryAnalysis->determinism : kNotAnalysed.determinism;
  const protocol::DeterminismAnalysis* queryDet = u.isQuery ? &det : nullptr;

  catalogError_.reset();
  if (journaling(m) && clientTx == 'I' && !implicitWrite_ &&
      journalBytes_.size() > kJournalStreamLimit) {
    // A session that keeps reading (each request's Parse reaches the journal)
    // and seldom writes: between transactions its stream is nothing but
    // session state, taken afresh from the source instead.
    journalBytes_.clear();
    journalReadies_ = 0;
    std::string why;
    if (!co_await copySessionState(a, m, why)) {
      spdlog::warn("session {}: could not compact its journal stream: {}", id_, why);
      if (!up_[a].conn) {
        co_await lockstepLost(a);
        co_return false;
      }
    }
  }
  if (u.info.copyFrom && u.isQuery && !registry_.mirrorBroken()) {
    // COPY fills the defaults of the columns it does not list.
    bool fills = false;
    std::string column;
    bool alive = co_await fillsVolatileDefault(a, u, queryDet, fills, column);
    if (!alive) {
      co_await lockstepLost(a);
      co_return false;
    }
    if (catalogError_) co_return co_await refuseUnit(u, a, *catalogError_);
    if (fills && rt_->cfg.mirror.nondeterministic == config::Nondeterministic::kReject) {
      metrics().nondeterministicRejectedTotal().inc();
      const protocol::ErrorFields refusal{
          "ERROR", sqlstate::kFeatureNotSupported,
          "pghandoff cannot mirror this statement deterministically: it fills the column "
          "default of " +
              column + ", which each server would compute for itself (a sequence, now(), ...)",
          "mirror.nondeterministic is reject; the statement ran on neither server.",
          "List the column and pass its values, or set mirror.nondeterministic: warn."};
      co_return co_await refuseUnit(u, a, refusal);
    }
    if (!hasSide(m) && clientTx == 'I') {
      std::string why;
      (void)co_await connectSide(m, false, &why);
    }
    if (hasSide(m)) co_return co_await mirrorCopyIn(u, a, m, true);
  }
  if (u.info.copyFrom && !u.isQuery) {
    const protocol::ErrorFields refusal{
        "ERROR", sqlstate::kFeatureNotSupported,
        "not built yet: pghandoff mirrors COPY FROM in a simple Query only, in phase " +
            std::string(phaseName(p)) + " (issue 3 step 3)",
        "", ""};
    co_return co_await refuseUnit(u, a, refusal);
  }

  // One side alone: reads; what lives on the authoritative side (LISTEN/NOTIFY,
  // cursors, sequences, advisory locks; everything once the mirror is broken
  // under `degrade`); in a failed transaction everything but transaction
  // control (the authoritative side answers 25P02 itself: nothing to mirror,
  // nothing to pin); and what ends a transaction whose mirror was lost inside
  // it (which rolled it back there already).
  const bool read =
      !u.implicitCommit &&
      (!u.executes || (u.info.kind == StatementKind::kRead && !u.info.authoritativeOnly));
  const bool endsFailedTx = u.single && (u.info.tx == TxControl::kRollback ||
                                         (u.info.tx == TxControl::kCommit && clientTx == 'E'));
  if (read || u.info.authoritativeOnly || registry_.mirrorBroken() ||
      (clientTx == 'E' && !u.txControl) || (!hasSide(m) && clientTx != 'I' && endsFailedTx)) {
    int side = read && clientTx != 'E' ? r : a;
    if (side != a && !up_[side].conn) {
      std::string why;
      bool opened = clientTx == 'I';
      if (opened) opened = co_await connectSide(side, false, &why);
      if (!opened) side = a;
    }
    // COPY FROM STDIN with the mirror broken (degrade): on the authoritative
    // side alone, its data relayed as it comes.
    if (u.info.copyFrom && u.isQuery) co_return co_await mirrorCopyIn(u, a, m, false);
    if (u.count > 0) metrics().queriesTotal(sideLabel(side), kind).inc(u.count);
    Outcome o;
    bool answered = co_await exchange(side, u.bytes, Sink::kStream, o, expect);
    if (!answered) {
      co_await lockstepLost(side);
      co_return false;
    }
    if (o.error && !u.ready) extSkip_ = true;
    // The other side gets the same named statements (none are made in a
    // failed transaction).
    const int other = side == a ? m : a;
    if (!u.sessionPart.empty() && hasSide(other) && !registry_.mirrorBroken() && clientTx != 'E') {
      Outcome so;
      bool done = co_await exchange(other, u.sessionPart, Sink::kDiscard, so,
                                    u.ready ? 0 : u.sessionExpected);
      if (!done && other == a) {
        co_await lockstepLost(a);
        co_return false;
      }
      if (!done) {
        mirrorFailed(m, MirrorErrorReason::kTargetDown, "connection lost");
      } else if (so.error && !o.error) {
        reportDivergence(DivergenceKind::kError, u.sql, o, so);
        mirrorFailed(m, MirrorErrorReason::kError, "Parse failed: " + so.error->code);
      }
    }
    co_return co_await answer(u.ready, o.txStatus);
  }

  // Both sides. The mirror must be there; it is opened at a boundary only
  // (mid-transaction a new server session would not be in the transaction).
  if (!hasSide(m)) {
    std::string why = "not connected inside the transaction";
    bool opened = clientTx == 'I';
    if (opened) opened = co_await connectSide(m, false, &why);
    if (!opened) {
      mirrorFailed(m, MirrorErrorReason::kTargetDown, why);
      if (rt_->cfg.mirror.onTargetError == config::OnTargetError::kFailClient) {
        // Refused before the authoritative side is touched; 57P03 (cannot
        // connect now) tells the client it may try again (RELIABILITY F1).
        const protocol::ErrorFields refusal{
            "ERROR", sqlstate::kCannotConnectNow,
            std::string("pghandoff could not reach the ") + sideName(m) +
                " server to mirror this statement: " + why,
            "Nothing was executed (mirror.on_target_error: fail-client).", ""};
        co_return co_await refuseUnit(u, a, refusal);
      }
      co_return co_await runUnit(u);  // degraded: the authoritative side alone
    }
  }
  const bool commitLike =
      u.implicitCommit || (u.single && clientTx == 'T' &&
                           (u.info.tx == TxControl::kCommit || u.info.tx == TxControl::kPrepare ||
                            u.info.tx == TxControl::kCommitPrepared));
  if (commitLike) co_return co_await mirrorCommit(u, a, m);
  if (u.single && clientTx == 'E' && u.info.tx == TxControl::kCommit) {
    // COMMIT of a failed transaction is a ROLLBACK: the mirror's transaction
    // (which never saw the failed statement) must not commit.
    Outcome mo;
    co_await runOwn(m, kRollback, mo);
    metrics().queriesTotal(sideLabel(a), kind).inc();
    Outcome ao;
    bool answered = co_await exchange(a, u.bytes, Sink::kHold, ao, expect);
    if (!answered) {
      co_await lockstepLost(a);
      co_return false;
    }
    co_return co_await answer(u.ready, ao.txStatus);
  }

  const bool wrap =
      u.ready && clientTx == 'I' && !u.txControl && !u.info.noTransactionBlock &&
      (u.info.kind == StatementKind::kWrite || u.info.kind == StatementKind::kUnknown);
  // The mirror's copy is wrapped too: if it has to be given up (a timeout),
  // what is still in flight to it must not commit on its own later.
  const bool wrapMirror = wrap;

  // Values computed per server in the text: the classifier's flag, or any
  // call the analysis located (nextval() and friends are side effects to the
  // classifier, and per-server values all the same).
  bool perServer = u.info.nondeterministic;
  if (u.isQuery) perServer = perServer || !det.calls.empty();
  for (const auto& d : u.analyses) perServer = perServer || !d->determinism.calls.empty();
  const bool pinnable = u.ready && !u.txControl && (wrap || clientTx == 'T');

  // Triggers fire on both servers: one that would compute values per server
  // (now(), a sequence, ...) makes the write nondeterministic, whatever the
  // statement's own text.
  if (writes && !registry_.mirrorBroken()) {
    std::string trigger;
    if (!co_await perServerTrigger(a, u, queryDet, trigger)) {
      co_await lockstepLost(a);
      co_return false;
    }
    // The catalog could not be read (an aborted transaction, a cancel): the
    // request gets that error, as it would have.
    if (catalogError_) co_return co_await refuseUnit(u, a, *catalogError_);
    if (!trigger.empty()) {
      bool refused = false;
      if (!co_await nondeterministicPolicy(u, a, trigger, refused)) co_return false;
      if (refused) co_return true;
    }
  }

  // An INSERT's per-server values (column defaults, volatile calls in its
  // rows) are fetched once on the authoritative side and written into the
  // text both sides run (proxy/insert_pin.h).
  bool insertChecked = false;
  if (writes && pinnable && u.single) {
    std::string_view text;
    const protocol::StatementAnalysis* analysis = nullptr;
    if (u.isQuery) {
      text = u.sql;
      analysis = queryAnalysis.get();
    } else if (u.writeParse != nullptr && u.writeBindFrame != kNone && u.analyses.size() == 1) {
      if (auto pm = protocol::decodeParseBody(*u.writeParse)) {
        text = pm->query;
        analysis = u.analyses[0].get();
      }
    }
    const protocol::DeterminismAnalysis* d = analysis ? &analysis->determinism : nullptr;
    const protocol::InsertShape& shape = analysis ? analysis->insert : kNotAnalysed.insert;
    if (shape.ok) {
      const DefaultsEntry* info = nullptr;
      if (!co_await tableInfo(a, shape.schema, shape.table, info)) {
        co_await lockstepLost(a);
        co_return false;
      }
      std::string why;
      bool none = false;
      auto plan = planInsert(text, shape, *d, info->columns, why, none);
      if (plan && !u.isQuery && plan->prestepUsesParams) {
        plan.reset();
        why =
            "it inserts the rows of a query with parameters through the extended protocol, "
            "which pghandoff does not pin yet";
      }
      if (plan) co_return co_await runPinnedInsert(u, a, m, *plan, text, wrap, clientTx);
      if (!none) {
        bool refused = false;
        if (!co_await nondeterministicPolicy(u, a, why, refused)) co_return false;
        if (refused) co_return true;
      }
      insertChecked = true;  // nothing per server, or warned
    }
  }

  // Transaction-time values (now(), CURRENT_TIMESTAMP, CURRENT_DATE, 'now'::date,
  // ...) in a statement whose transaction stays open after it: pinned to the
  // authoritative side's value, read there right after the statement in the
  // same transaction (so it is the value the statement used), and written into
  // the mirror's copy of the text as literals of the same types.
  bool pinTime = false;
  if (!insertChecked && u.info.nondeterministic && pinnable) {
    pinTime = u.isQuery ? timePinnable(det) : u.extPinnable;
  }
  if (!insertChecked) {
    // Column defaults the statement fills (serial, DEFAULT now(), ...) are
    // invisible in its text: the catalog says.
    bool volatileDefault = false;
    std::string defaultColumn;
    if (writes) {
      bool alive = co_await fillsVolatileDefault(a, u, queryDet, volatileDefault, defaultColumn);
      if (!alive) {
        co_await lockstepLost(a);
        co_return false;
      }
    }
    if ((perServer && !pinTime) || volatileDefault) {
      // Values each server would compute for itself: SPEC §2's policy.
      const std::string reason =
          volatileDefault
              ? "it fills the column default of " + defaultColumn +
                    ", which each server would compute for itself (a sequence, now(), ...)"
              : std::string(
                    "it computes values (now(), random(), gen_random_uuid(), "
                    "nextval(), ...) that would differ between the two servers");
      bool refused = false;
      if (!co_await nondeterministicPolicy(u, a, reason, refused)) co_return false;
      if (refused) co_return true;
    }
  }

  // 1. The authoritative side.
  std::vector<std::uint8_t> out;
  if (wrap) protocol::encodeQuery(kBegin, out);
  out.insert(out.end(), u.bytes.begin(), u.bytes.end());
  if (pinTime) protocol::encodeQuery(kPinTimeQuery, out);
  if (u.count > 0) metrics().queriesTotal(sideLabel(a), kind).inc(u.count);
  Outcome ao, pinned;
  // (No co_await inside || or &&: GCC 12 miscompiles it.)
  bool answered = co_await exchangeWrapped(a, out, wrap, Sink::kHold, ao, expect);
  if (answered && pinTime) answered = co_await pump(a, Sink::kCollect, pinned, 0);
  if (!answered) {
    co_await lockstepLost(a);
    co_return false;
  }
  if (ao.error && !u.ready) extSkip_ = true;
  // When the authoritative side failed and its transaction goes away anyway
  // (the proxy's wrapper, or the client's block that must now roll back),
  // the mirror need not see the request.
  if (ao.error && (wrap || (clientTx != 'I' && !u.txControl) || !u.ready)) {
    if (wrap) {
      if (!co_await rollBackWrapper(a)) co_return false;
    }
    co_return co_await answer(u.ready, wrap ? 'I' : ao.txStatus);
  }
  if (!u.ready && clientTx == 'I') implicitWrite_ = true;

  // 2. The mirror, with the same bytes (or the text with pinned values).
  out.clear();
  if (wrapMirror) protocol::encodeQuery(kBegin, out);
  std::optional<std::string> rewritten;
  if (pinTime && !pinned.error && pinned.rows.size() == 1 && pinned.rows[0].size() == 1 &&
      pinned.rows[0][0]) {
    const std::string& value = *pinned.rows[0][0];
    if (u.isQuery) {
      rewritten = pinText(u.sql, det, value);
    } else {
      auto ext = pinnedExtended(u, value);
      if (!ext.empty()) {
        rewritten = std::string();  // marks success; the frames are in ext
        out.insert(out.end(), ext.begin(), ext.end());
      }
    }
  }
  if (rewritten && u.isQuery) {
    protocol::encodeQuery(*rewritten, out);
  } else if (rewritten) {
    // the extended frames are in `out` already
  } else {
    if (pinTime) {
      spdlog::warn("session {}: could not pin the time values of a statement; mirrored as is", id_);
    }
    out.insert(out.end(), u.bytes.begin(), u.bytes.end());
  }
  if (u.count > 0) metrics().queriesTotal(sideLabel(m), kind).inc(u.count);
  Outcome mo;
  bool mirrored = co_await exchangeWrapped(m, out, wrapMirror, Sink::kDiscard, mo, expect);

  co_return co_await settle(u, FailBoth{a, m, wrap, wrapMirror, clientTx, u.ready}, ao, mo,
                            mirrored);
}

awaitable<bool> ClientSession::nondeterministicPolicy(const Unit& u, int a,
                                                      const std::string& reason, bool& refused) {
  refused = false;
  const auto fp = protocol::fingerprint(u.sql);
  const std::string id = fp ? *fp : std::string("(unparsable)");
  if (rt_->cfg.mirror.nondeterministic == config::Nondeterministic::kReject) {
    metrics().nondeterministicRejectedTotal().inc();
    spdlog::info("session {}: refused nondeterministic statement {}", id_, id);
    const protocol::ErrorFields refusal{
        "ERROR", sqlstate::kFeatureNotSupported,
        "pghandoff cannot mirror this statement deterministically: " + reason,
        "mirror.nondeterministic is reject; the statement ran on neither server.",
        "Pass the values as literals or parameters, or set mirror.nondeterministic: warn."};
    refused = true;
    co_return co_await refuseUnit(u, a, refusal);
  }
  if (registry_.firstWarning(id)) {
    spdlog::warn(
        "statement {} computes values that may differ between the servers ({}); mirrored anyway "
        "(mirror.nondeterministic: warn); warned once per statement",
        id, reason);
  }
  co_return true;
}

awaitable<bool> ClientSession::runPinnedInsert(const Unit& u, int a, int m, const InsertPlan& plan,
                                               std::string_view text, bool wrap, char clientTx) {
  const std::string sql(text);
  // 0. The values, computed once on the authoritative side in the
  // statement's own transaction.
  std::vector<std::uint8_t> out;
  if (wrap) protocol::encodeQuery(kBegin, out);
  protocol::encodeQuery(plan.prestep, out);
  metrics().queriesTotal(sideLabel(a), labels::QueryKind::kWrite).inc();
  Outcome pre;
  pre.collectLimit = kMaxPinnedBytes;
  bool answered = co_await exchangeWrapped(a, out, wrap, Sink::kCollect, pre, 0);
  if (!answered) {
    co_await lockstepLost(a);
    co_return false;
  }
  std::optional<std::string> timeValue;
  if (!pre.error && plan.path == InsertPlan::Path::kQuery && plan.needsTime) {
    if (!pre.rows.empty() && !pre.rows[0].empty()) {
      timeValue = pre.rows[0].back();
    } else {
      Outcome t;
      out.clear();
      protocol::encodeQuery(kPinTimeQuery, out);
      answered = co_await exchange(a, out, Sink::kCollect, t, 0);
      if (!answered) {
        co_await lockstepLost(a);
        co_return false;
      }
      if (t.rows.size() == 1 && t.rows[0].size() == 1) timeValue = t.rows[0][0];
    }
  }
  std::optional<PinnedTexts> texts;
  if (!pre.error && !pre.overLimit && pre.rows.size() <= kMaxPinnedRows) {
    if (plan.path == InsertPlan::Path::kValues) {
      std::vector<std::optional<std::string>> values;
      for (auto& row : pre.rows) values.push_back(row.empty() ? std::nullopt : std::move(row[0]));
      texts = finishValues(sql, plan, values);
    } else {
      texts = finishQuery(plan, pre.rows, pre.types, timeValue);
    }
  }
  if (!texts) {
    // Undo what the prestep did (sequence calls, a writable CTE).
    if (wrap) {
      if (!co_await rollBackWrapper(a)) co_return false;
    }
    if (pre.error) {
      // What the statement itself would have met (no such table, a bad
      // value, ...): that error is the answer.
      holdError(*pre.error);
      co_return co_await answer(u.ready, wrap ? 'I' : pre.txStatus);
    }
    if (!pre.overLimit && pre.rows.size() <= kMaxPinnedRows) {
      metrics().internalBugsTotal().inc();
      spdlog::error("session {}: could not rewrite an INSERT with its pinned values", id_);
    }
    metrics().nondeterministicRejectedTotal().inc();
    const protocol::ErrorFields refusal{
        "ERROR", sqlstate::kFeatureNotSupported,
        pre.overLimit || pre.rows.size() > kMaxPinnedRows
            ? "pghandoff cannot mirror this statement deterministically: it inserts more rows "
              "than pghandoff pins at once (" +
                  std::to_string(kMaxPinnedRows) + " rows, " +
                  std::to_string(kMaxPinnedBytes >> 20) + " MiB)"
            : std::string("pghandoff could not write this INSERT's values for both servers"),
        "The statement ran on neither server.", "Insert the rows in smaller statements."};
    co_return co_await refuseUnit(u, a, refusal);
  }

  // 1. The authoritative side runs its text; its answer is the client's.
  out.clear();
  Outcome ao;
  if (u.isQuery) {
    protocol::encodeQuery(texts->authoritative, out);
  } else {
    out = rewrittenExtended(u, texts->authoritative);
    ao.dropLeading = 2;  // the proxy's Close and Parse
  }
  answered = co_await exchange(a, out, Sink::kHold, ao, 0);
  if (!answered) {
    co_await lockstepLost(a);
    co_return false;
  }
  if (ao.error) {
    if (wrap) {
      if (!co_await rollBackWrapper(a)) co_return false;
    }
    co_return co_await answer(u.ready, wrap ? 'I' : ao.txStatus);
  }

  // 2. The mirror, with the same values.
  out.clear();
  if (wrap) protocol::encodeQuery(kBegin, out);
  if (u.isQuery) {
    protocol::encodeQuery(texts->mirror, out);
  } else {
    const auto frames = rewrittenExtended(u, texts->mirror);
    out.insert(out.end(), frames.begin(), frames.end());
  }
  metrics().queriesTotal(sideLabel(m), labels::QueryKind::kWrite).inc();
  Outcome mo;
  bool mirrored = co_await exchangeWrapped(m, out, wrap, Sink::kDiscard, mo, 0);
  co_return co_await settle(u, FailBoth{a, m, wrap, wrap, clientTx, u.ready}, ao, mo, mirrored);
}

std::vector<std::uint8_t> ClientSession::rewrittenExtended(const Unit& u, const std::string& text) {
  constexpr std::string_view kName = "pghandoff_insert";
  std::vector<std::uint8_t> out;
  protocol::Reader pr(*u.writeParse);
  (void)pr.cstring();
  (void)pr.cstring();
  const protocol::Bytes types = pr.rest();
  {
    protocol::Writer w(out);
    w.begin('C').byte('S').cstring(kName);
    w.end();
  }
  {
    protocol::Writer p(out);
    p.begin('P').cstring(kName).cstring(text).raw(types);
    p.end();
  }
  for (std::size_t fi = 0; fi < unitFrames_.size(); ++fi) {
    const FrameRef& f = unitFrames_[fi];
    const protocol::Bytes whole(unit_.data() + f.offset, f.length);
    if (fi != u.writeBindFrame) {
      out.insert(out.end(), whole.begin(), whole.end());
      continue;
    }
    protocol::Reader br(whole.subspan(5));
    const std::string_view portal = br.cstring();
    (void)br.cstring();
    const protocol::Bytes rest = br.rest();
    protocol::Writer b(out);
    b.begin('B').cstring(portal).cstring(kName).raw(rest);
    b.end();
  }
  return out;
}

// After both sides ran a request: compare, apply the policies, commit (the
// mirror first) what the proxy wrapped, answer the client.
awaitable<bool> ClientSession::settle(const Unit& u, FailBoth fb, const Outcome& ao,
                                      const Outcome& mo, bool mirrored) {
  const int a = fb.a, m = fb.m;
  const bool wrap = fb.wrap, wrapMirror = fb.wrapMirror;
  const char clientTx = fb.clientTx;
  const bool failClient = rt_->cfg.mirror.onTargetError == config::OnTargetError::kFailClient;
  const bool failClientOnDivergence =
      rt_->cfg.mirror.onDivergence == config::OnDivergence::kFailClient;
  if (mo.journaled) {
    // Recorded for the target: no answer to compare (the replay checks that
    // what committed here commits there).
  } else if (!mirrored) {
    mirrorFailed(m, MirrorErrorReason::kTargetDown, "connection lost");
    if (failClient && (wrap || clientTx != 'I' || !u.ready)) {
      const std::string why = std::string("pghandoff lost the ") + sideName(m) +
                              " server while mirroring this statement "
                              "(mirror.on_target_error: fail-client)";
      co_return co_await failBoth(fb, why);
    }
  } else if (mo.error && !ao.error) {
    // The mirror refused what the authoritative side accepted.
    reportDivergence(DivergenceKind::kError, u.sql, ao, mo);
    mirrorFailed(m, MirrorErrorReason::kError, "the statement failed: " + mo.error->code);
    if (failClient && (wrap || clientTx != 'I' || !u.ready)) {
      const std::string why = std::string("the ") + sideName(m) +
                              " server refused this statement: " + mo.error->message +
                              " (SQLSTATE " + mo.error->code +
                              "; mirror.on_target_error: fail-client)";
      co_return co_await failBoth(fb, why);
    }
  } else if (ao.results != mo.results) {
    reportDivergence(divergenceKind(ao.results, mo.results), u.sql, ao, mo);
    if (failClientOnDivergence && (wrap || clientTx != 'I' || !u.ready)) {
      const std::string why = std::string("the ") + sideName(m) +
                              " server answered this statement differently (" +
                              summary(mo.results) + " instead of " + summary(ao.results) +
                              "; mirror.on_divergence: fail-client)";
      co_return co_await failBoth(fb, why);
    }
    if (rt_->cfg.mirror.onDivergence == config::OnDivergence::kPauseMirroring) {
      spdlog::error("mirror paused after a divergence (mirror.on_divergence: pause-mirroring)");
      registry_.markMirrorBroken();
    }
  }

  // 3. Commit: the mirror first, then the authoritative side (both prepared
  // first under mirror.two_phase_commit).
  if (wrap && wrapMirror && up_[m].conn && !journaling(m) && rt_->cfg.mirror.twoPhaseCommit &&
      registry_.twoPhaseUsable()) {
    std::optional<protocol::ErrorFields> refusal;
    std::string why;
    const TwoPhase r = co_await commitTwoPhase(a, m, refusal, why);
    if (r == TwoPhase::kLost) {
      co_await lockstepLost(a);
      co_return false;
    }
    if (r == TwoPhase::kRefused) {
      held_.clear();
      holdError(*refusal);
      co_return co_await finishUnit('I');
    }
    if (r == TwoPhase::kMirrorFailed) {
      mirrorFailed(m, MirrorErrorReason::kCommitFailed, why);
      if (failClient) {
        const std::string failure = std::string("the ") + sideName(m) +
                                    " server could not prepare this statement's transaction (" +
                                    why + "; mirror.on_target_error: fail-client)";
        co_return co_await failBoth(fb, failure);
      }
      Outcome ac;
      co_await runOwn(a, kCommit, ac);
      if (!up_[a].conn) {
        co_await lockstepLost(a);
        co_return false;
      }
    }
    co_return co_await finishUnit('I');
  }
  std::uint64_t journalSeq = 0;
  std::shared_ptr<Journal> journal = journal_;
  if (wrapMirror && journaling(m)) {
    std::vector<std::uint8_t> commit;
    protocol::encodeQuery(kCommit, commit);
    if (!co_await journalCommit(a, false, commit, 1, journalSeq)) {
      co_await lockstepLost(a);
      co_return false;
    }
    if (journalFailed_) {
      // mirror.mode async: the journal is the mirror's commit.
      mirrorFailed(m, MirrorErrorReason::kCommitFailed, "the journal could not be written");
      if (failClient) {
        const std::string why =
            "pghandoff could not write this statement's transaction to its journal "
            "(mirror.on_target_error: fail-client)";
        co_return co_await failBoth(fb, why);
      }
    }
  }
  if (wrapMirror && up_[m].conn) {
    Outcome mc;
    bool committed = co_await runOwn(m, kCommit, mc);
    if (!committed || !onlyTag(mc.results, kCommit)) {
      mirrorFailed(m, MirrorErrorReason::kCommitFailed, "COMMIT failed: " + summary(mc.results));
      if (failClient) {
        const std::string why = std::string("the ") + sideName(m) +
                                " server could not commit this statement "
                                "(mirror.on_target_error: fail-client)";
        co_return co_await failBoth(fb, why);
      }
    }
  }
  if (wrap) {
    Outcome ac;
    co_await runOwn(a, kCommit, ac);
    if (!up_[a].conn) {
      co_await lockstepLost(a);
      co_return false;
    }
    if (journalSeq != 0) journal->outcome(journalSeq, onlyTag(ac.results, kCommit));
    if (!onlyTag(ac.results, kCommit)) {
      // Committed on the mirror, not here (a deferred constraint, say).
      if (!mo.journaled) reportDivergence(DivergenceKind::kCommit, u.sql, ac, mo);
      held_.clear();
      if (ac.error) holdError(*ac.error);
    }
    co_return co_await finishUnit('I');
  }
  co_return co_await answer(u.ready, ao.txStatus);
}

// The mirror's copy of an extended request: each Bind of a statement with
// transaction-time values is preceded by a Parse of the text with the pinned
// values under a statement name of the proxy's, and binds that instead (same
// parameter types, same parameters). The proxy's names are closed first (a
// Close of a name that does not exist is not an error), so an earlier request
// that stopped at an error cannot leave one behind. Empty on failure.
std::vector<std::uint8_t> ClientSession::pinnedExtended(const Unit& u, const std::string& value) {
  std::vector<std::uint8_t> out;
  auto name = [](std::size_t k) { return "pghandoff_pin_" + std::to_string(k); };
  for (std::size_t k = 0; k < u.pinSites.size(); ++k) {
    protocol::Writer w(out);
    w.begin('C').byte('S').cstring(name(k));
    w.end();
  }
  for (std::size_t fi = 0; fi < unitFrames_.size(); ++fi) {
    const FrameRef& f = unitFrames_[fi];
    const protocol::Bytes whole(unit_.data() + f.offset, f.length);
    std::size_t site = u.pinSites.size();
    for (std::size_t k = 0; k < u.pinSites.size(); ++k) {
      if (u.pinSites[k].bindFrame == fi) site = k;
    }
    if (site == u.pinSites.size()) {
      out.insert(out.end(), whole.begin(), whole.end());
      continue;
    }
    const auto& ps = u.pinSites[site];
    // Parse body: name, query, then the parameter types (kept as they are).
    protocol::Reader pr(*ps.parse);
    (void)pr.cstring();
    const std::string_view query = pr.cstring();
    const protocol::Bytes types = pr.rest();
    auto text = pinText(query, u.analyses[ps.analysis]->determinism, value);
    // Bind body: portal, statement, then formats and parameters (kept).
    protocol::Reader br(whole.subspan(5));
    const std::string_view portal = br.cstring();
    (void)br.cstring();
    const protocol::Bytes rest = br.rest();
    if (!pr.ok() || !br.ok() || !text) return {};
    protocol::Writer p(out);
    p.begin('P').cstring(name(site)).cstring(*text).raw(types);
    p.end();
    protocol::Writer b(out);
    b.begin('B').cstring(portal).cstring(name(site)).raw(rest);
    b.end();
  }
  return out;
}

namespace {

// Does a write leave a column with a per-server default to that default?
// (Positional VALUES without a column list cannot be told apart: assumed.)
bool fillsDefault(const protocol::WriteTarget& w, const std::vector<TableColumn>& columns,
                  std::string& which) {
  if (w.op == protocol::WriteTarget::Op::kDelete) return false;
  if (w.op == protocol::WriteTarget::Op::kUpdate && !w.explicitDefault) return false;
  for (const auto& col : columns) {
    if (!col.volatileDefault || col.generated) continue;
    const bool named = std::find(w.columns.begin(), w.columns.end(), col.name) != w.columns.end();
    if (!named || w.explicitDefault || w.op == protocol::WriteTarget::Op::kMerge) {
      which = (w.schema.empty() ? w.table : w.schema + "." + w.table) + "." + col.name;
      return true;
    }
  }
  return false;
}

int eventOf(protocol::WriteTarget::Op op) {
  switch (op) {
    case protocol::WriteTarget::Op::kInsert:
    case protocol::WriteTarget::Op::kCopyFrom:
      return 4;
    case protocol::WriteTarget::Op::kDelete:
      return 8;
    case protocol::WriteTarget::Op::kUpdate:
      return 16;
    case protocol::WriteTarget::Op::kMerge:
      return 4 | 8 | 16;
  }
  return 4 | 8 | 16;
}

}  // namespace

// The tables a request writes: a simple Query's analysis, or each Execute's.
std::vector<const protocol::WriteTarget*> ClientSession::writesOf(
    const Unit& u, const protocol::DeterminismAnalysis* query) {
  std::vector<const protocol::WriteTarget*> writes;
  if (query != nullptr) {
    for (const auto& w : query->writes) writes.push_back(&w);
  }
  for (const auto& d : u.analyses) {
    for (const auto& w : d->determinism.writes) writes.push_back(&w);
  }
  return writes;
}

awaitable<bool> ClientSession::tableInfo(int a, const std::string& schema, const std::string& table,
                                         const DefaultsEntry*& out) {
  const std::string name =
      schema.empty() ? sqlIdentifier(table) : sqlIdentifier(schema) + "." + sqlIdentifier(table);
  const auto now = std::chrono::steady_clock::now();
  auto it = defaults_.find(name);
  if (it == defaults_.end() || now - it->second.at > std::chrono::seconds(5)) {
    // Read where the statement will run, the name resolved by this session's
    // search_path. A table that does not exist has no columns (the statement
    // fails on its own). An identity column's default is a nextval of its
    // sequence.
    const std::string literal = sqlLiteral(name);
    const std::string q =
        "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attidentity, "
        "a.attgenerated <> '', CASE WHEN a.attidentity <> '' THEN 'pg_catalog.nextval(' || "
        "pg_catalog.quote_literal(pg_catalog.pg_get_serial_sequence(a.attrelid::pg_catalog."
        "regclass::pg_catalog.text, a.attname)) || '::pg_catalog.regclass)' ELSE "
        "pg_catalog.pg_get_expr(d.adbin, d.adrelid) END, (SELECT c.relkind FROM "
        "pg_catalog.pg_class c WHERE c.oid = a.attrelid) FROM pg_catalog.pg_attribute a LEFT JOIN "
        "pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE "
        "a.attrelid = pg_catalog.to_regclass(" +
        literal + ") AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum";
    std::vector<std::uint8_t> msg;
    protocol::encodeQuery(q, msg);
    Outcome o;
    bool answered = co_await exchange(a, msg, Sink::kCollect, o, 0);
    if (!answered) co_return false;
    if (o.error) {
      // In an aborted transaction, or cancelled: the request gets this error
      // (runUnit), nothing is cached.
      if (!catalogError_) catalogError_ = *o.error;
      uncached_ = DefaultsEntry{now, {}, {}};
      out = &uncached_;
      co_return true;
    }
    DefaultsEntry entry{now, {}, {}};
    for (const auto& row : o.rows) {
      if (row.size() < 5 || !row[0] || !row[1]) continue;
      TableColumn c;
      c.name = *row[0];
      c.type = *row[1];
      c.identity = row[2] && !row[2]->empty() ? (*row[2])[0] : 0;
      c.generated = row[3] && *row[3] == "t";
      c.defaultExpr = row[4] ? *row[4] : std::string();
      c.volatileDefault = c.identity != 0;
      // A view's column without a default of its own takes the base table's,
      // which this read does not see: per server for all the proxy knows.
      if (row.size() > 5 && row[5] && *row[5] == "v" && c.defaultExpr.empty()) {
        c.volatileDefault = true;
      }
      if (!c.volatileDefault && !c.generated && !c.defaultExpr.empty()) {
        protocol::Classification cl;
        registry_.classifier().get("SELECT " + c.defaultExpr, cl);
        c.volatileDefault = cl.parseError || cl.hasNondeterministic || cl.hasSideEffectFunction ||
                            cl.hasUserFunction;
      }
      entry.columns.push_back(std::move(c));
    }
    // Its triggers (enabled for ordinary sessions), and whether each would
    // compute values per server when it fires on the mirror too.
    if (!entry.columns.empty()) {
      const std::string tq =
          "SELECT t.tgname, t.tgtype, l.lanname, n.nspname, CASE WHEN l.lanname = 'plpgsql' THEN "
          "pg_catalog.pg_get_functiondef(p.oid) END FROM pg_catalog.pg_trigger t JOIN "
          "pg_catalog.pg_proc p ON p.oid = t.tgfoid JOIN pg_catalog.pg_language l ON l.oid = "
          "p.prolang JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE t.tgrelid = "
          "pg_catalog.to_regclass(" +
          literal + ") AND NOT t.tgisinternal AND t.tgenabled IN ('O', 'A') ORDER BY 1";
      msg.clear();
      protocol::encodeQuery(tq, msg);
      Outcome to;
      answered = co_await exchange(a, msg, Sink::kCollect, to, 0);
      if (!answered) co_return false;
      if (to.error) {
        if (!catalogError_) catalogError_ = *to.error;
        uncached_ = std::move(entry);
        out = &uncached_;
        co_return true;
      }
      for (const auto& row : to.rows) {
        if (row.size() < 5 || !row[0] || !row[1] || !row[2] || !row[3]) continue;
        TableTrigger t;
        t.name = *row[0];
        t.events = std::atoi(row[1]->c_str()) & (4 | 8 | 16);
        if (*row[2] != "plpgsql") {
          // Built-in trigger functions (tsvector_update_trigger, ...) compute
          // from the row alone; others cannot be read.
          if (*row[3] != "pg_catalog") t.perServer = "its function is written in " + *row[2];
        } else if (!row[4]) {
          t.perServer = "its function cannot be read";
        } else {
          auto judged = protocol::analyzeTriggerFunction(*row[4]);
          t.perServer = judged.reason;
          if (!judged.perServer && catalogDepth_ < 2) {
            // What it inserts gets its column defaults filled on each server.
            ++catalogDepth_;
            for (const auto& w : judged.writes) {
              const DefaultsEntry* inserted = nullptr;
              bool alive = co_await tableInfo(a, w.schema, w.table, inserted);
              if (!alive) {
                --catalogDepth_;
                co_return false;
              }
              std::string which;
              if (fillsDefault(w, inserted->columns, which)) {
                t.perServer = "it fills the column default of " + which;
                break;
              }
            }
            --catalogDepth_;
          }
          if (judged.perServer && t.perServer.empty())
            t.perServer = "it computes values per server";
        }
        entry.triggers.push_back(std::move(t));
      }
    }
    if (defaults_.size() > 1000) defaults_.clear();
    it = defaults_.insert_or_assign(name, std::move(entry)).first;
  }
  out = &it->second;
  co_return true;
}

awaitable<bool> ClientSession::perServerTrigger(int a, const Unit& u,
                                                const protocol::DeterminismAnalysis* query,
                                                std::string& which) {
  which.clear();
  const std::vector<const protocol::WriteTarget*> writes = writesOf(u, query);
  for (const protocol::WriteTarget* w : writes) {
    const DefaultsEntry* info = nullptr;
    if (!co_await tableInfo(a, w->schema, w->table, info)) co_return false;
    for (const auto& t : info->triggers) {
      if ((t.events & eventOf(w->op)) == 0 || t.perServer.empty()) continue;
      which = "its trigger " + t.name + " on " +
              (w->schema.empty() ? w->table : w->schema + "." + w->table) +
              " would compute values on each server for itself (" + t.perServer + ")";
      co_return true;
    }
  }
  co_return true;
}

awaitable<bool> ClientSession::fillsVolatileDefault(int a, const Unit& u,
                                                    const protocol::DeterminismAnalysis* query,
                                                    bool& fills, std::string& which) {
  fills = false;
  const std::vector<const protocol::WriteTarget*> writes = writesOf(u, query);
  for (const protocol::WriteTarget* wp : writes) {
    const protocol::WriteTarget& w = *wp;
    if (w.op == protocol::WriteTarget::Op::kDelete) continue;
    if (w.op == protocol::WriteTarget::Op::kUpdate && !w.explicitDefault) continue;
    const DefaultsEntry* info = nullptr;
    if (!co_await tableInfo(a, w.schema, w.table, info)) co_return false;
    if (fillsDefault(w, info->columns, which)) {
      fills = true;
      co_return true;
    }
  }
  if (!u.analysesComplete) {
    // A statement whose text the proxy never saw (prepared before it could
    // look): its defaults cannot be checked.
    spdlog::debug("session {}: column defaults not checked (statement text unknown)", id_);
  }
  co_return true;
}

// COPY FROM STDIN (simple Query): the statement starts on the authoritative
// side, then on the mirror; the client's data goes to both as it comes; the
// two results ("COPY n") are compared like any statement's.
awaitable<bool> ClientSession::mirrorCopyIn(const Unit& u, int a, int m, bool withMirror) {
  const char clientTx = machine_.transactionStatus();
  // Alone (the mirror broken under degrade) the COPY runs as on one server.
  const bool wrap = withMirror && clientTx == 'I' && !u.txControl;
  const bool wrapMirror = wrap;  // see runUnit
  std::vector<std::uint8_t> out;
  if (wrap) protocol::encodeQuery(kBegin, out);
  out.insert(out.end(), u.bytes.begin(), u.bytes.end());
  metrics().queriesTotal(sideLabel(a), labels::QueryKind::kWrite).inc(u.count);
  Outcome ao;
  ao.stopAtCopyIn = true;
  bool answered = co_await exchangeWrapped(a, out, wrap, Sink::kHold, ao, 0);
  if (!answered) {
    co_await lockstepLost(a);
    co_return false;
  }
  if (!ao.copyIn) {
    // The COPY did not start (no such table, ...): nothing to mirror.
    if (wrap) {
      if (!co_await rollBackWrapper(a)) co_return false;
    }
    co_return co_await answer(true, wrap ? 'I' : ao.txStatus);
  }
  std::vector<std::uint8_t> mirrorOut;
  if (wrapMirror) protocol::encodeQuery(kBegin, mirrorOut);
  mirrorOut.insert(mirrorOut.end(), u.bytes.begin(), u.bytes.end());
  // The client may send its data now. The Query it came in is done with
  // (the buffer it sits in takes the data next).
  const std::string sql(u.sql);
  Unit unit = u;
  unit.sql = sql;
  unit.bytes = {};
  cbuf_.consumeReady();
  if (!co_await answer(false, 'I')) co_return false;

  Outcome mo;
  mo.stopAtCopyIn = true;
  bool mirrored = false;
  if (withMirror) {
    metrics().queriesTotal(sideLabel(m), labels::QueryKind::kWrite).inc(u.count);
    mirrored = co_await exchangeWrapped(m, mirrorOut, wrapMirror, Sink::kDiscard, mo, 0);
  }
  bool toMirror = mirrored && mo.copyIn;

  if (!co_await relayCopyData(a, m, toMirror)) co_return false;

  Outcome aEnd;
  answered = co_await pump(a, Sink::kHold, aEnd, 0);
  if (!answered) {
    co_await lockstepLost(a);
    co_return false;
  }
  if (!withMirror) co_return co_await answer(true, aEnd.txStatus);
  aEnd.results.insert(aEnd.results.begin(), ao.results.begin(), ao.results.end());
  Outcome mEnd = mo;
  if (toMirror) {
    mEnd = Outcome{};
    mirrored = co_await pump(m, Sink::kDiscard, mEnd, 0);
    mEnd.results.insert(mEnd.results.begin(), mo.results.begin(), mo.results.end());
  } else if (mirrored && mo.copyIn) {
    mirrored = false;  // lost while the data was sent
  }
  co_return co_await settle(unit, FailBoth{a, m, wrap, wrapMirror, clientTx, true}, aEnd, mEnd,
                            mirrored);
}

awaitable<bool> ClientSession::relayCopyData(int a, int m, bool& toMirror) {
  const auto maxLen = static_cast<std::uint32_t>(rt_->cfg.limits.maxMessageBytes);
  while (true) {
    bool end = false;
    auto res =
        cbuf_.scan([maxLen](protocol::Bytes b) { return protocol::parseFrontendHeader(b, maxLen); },
                   [](char) { return false; },
                   [this, &end](const protocol::FrameHeader& h, protocol::Bytes, bool) {
                     (void)machine_.onClientFrame(h.type);
                     // CopyData, and Flush/Sync which the server ignores in COPY; the
                     // rest ends the COPY (CopyDone, CopyFail; anything else the server
                     // answers with an error).
                     if (h.type == 'd' || h.type == 'H' || h.type == 'S') return true;
                     end = true;
                     return false;
                   });
    if (res.status == RelayBuffer::ScanStatus::kError) {
      metrics().clientConnectionsRejectedTotal(labels::RejectReason::kProtocol).inc();
      closing_ = true;
      co_await closeServerGracefully(false);
      prepareFatal(sqlstate::kProtocolViolation, "invalid frontend message during COPY");
      co_await flushError();
      client_.close();
      co_return false;
    }
    if (cbuf_.hasReady()) {
      const auto ready = cbuf_.ready();
      const protocol::Bytes bytes(static_cast<const std::uint8_t*>(ready.data()), ready.size());
      metrics().bytesTotal(labels::Direction::kClientToServer).inc(bytes.size());
      if (!co_await sendTo(a, bytes)) {
        co_await lockstepLost(a);
        co_return false;
      }
      if (toMirror) {
        bool sent = co_await sendTo(m, bytes);
        if (!sent) {
          toMirror = false;
          mirrorFailed(m, MirrorErrorReason::kTargetDown, "connection lost during COPY");
        }
      }
      cbuf_.consumeReady();
    }
    if (end) co_return true;
    auto [ec, n] = co_await client_.readSome(cbuf_.freeSpace());
    if (ec) {
      // The client vanished mid-COPY: ending the server sessions aborts it.
      spdlog::debug("session {}: client disconnected during COPY", id_);
      closing_ = true;
      co_await closeServerGracefully(false);
      co_return false;
    }
    cbuf_.commit(n);
  }
}

// Undo on the authoritative side what the mirror could not follow: roll back
// the proxy's wrapper, or fail the client's open transaction.
awaitable<bool> ClientSession::failBoth(FailBoth f, std::string why) {
  if (hasSide(f.m) && f.wrapMirror) {
    Outcome rb;
    co_await runOwn(f.m, kRollback, rb);
  }
  held_.clear();
  char st = 'I';
  if (f.wrap) {
    Outcome rb;
    bool rolledBack = co_await runOwn(f.a, kRollback, rb);
    if (!rolledBack && !up_[f.a].conn) {
      co_await lockstepLost(f.a);
      co_return false;
    }
  } else {
    if (!co_await failTransaction(f.a)) {
      co_await lockstepLost(f.a);
      co_return false;
    }
    st = up_[f.a].txStatus;
    if (!f.ready) extSkip_ = true;
  }
  std::string detail =
      std::string(f.wrap ? "The statement was rolled back on the "
                         : "The transaction must be rolled back; it was not committed on the ") +
      sideName(f.a) + (f.wrap ? " too." : " either.");
  holdError(protocol::ErrorFields{"ERROR", sqlstate::kSystemError, std::move(why),
                                  std::move(detail), ""});
  co_return co_await answer(f.ready, st);
}

bool ClientSession::commitAnswered(const Unit& u, const Outcome& o) {
  return !o.error && o.txStatus == 'I' &&
         (u.implicitCommit || onlyTag(o.results, expectedCommitTag(u.info.tx)));
}

// COMMIT (or PREPARE TRANSACTION, COMMIT PREPARED, or the Sync that ends an
// implicit transaction) of an open transaction: the mirror first, so that a
// mirror that cannot commit leaves the authoritative transaction to roll back.
awaitable<bool> ClientSession::mirrorCommit(const Unit& u, int a, int m) {
  implicitWrite_ = false;
  const bool failClient = rt_->cfg.mirror.onTargetError == config::OnTargetError::kFailClient;
  const std::size_t expect = u.ready ? 0 : u.expected;

  if (journaling(m)) {
    // Seeding, or an async mirror: the transaction goes to the journal,
    // durably, before the authoritative side commits it; its outcome is
    // noted after.
    if (u.info.tx == TxControl::kPrepare || u.info.tx == TxControl::kCommitPrepared) {
      const protocol::ErrorFields refusal{
          "ERROR", sqlstate::kFeatureNotSupported,
          "pghandoff does not carry prepared transactions (PREPARE TRANSACTION, COMMIT "
          "PREPARED) through its journal (while the target is seeded, or under mirror.mode "
          "async)",
          "The transaction is still open; roll it back or COMMIT it.", ""};
      co_return co_await refuseUnit(u, a, refusal);
    }
    std::uint64_t seq = 0;
    std::shared_ptr<Journal> journal = journal_;
    const std::uint32_t commitReadies = u.ready ? 1 : 0;
    if (!co_await journalCommit(a, u.implicitCommit, u.bytes, commitReadies, seq)) {
      co_await lockstepLost(a);
      co_return false;
    }
    if (journalFailed_) {
      // mirror.mode async: the journal is the mirror's commit.
      mirrorFailed(m, MirrorErrorReason::kCommitFailed, "the journal could not be written");
      if (failClient) {
        if (!co_await rollBackWrapper(a)) co_return false;
        holdError(protocol::ErrorFields{
            "ERROR", sqlstate::kSystemError,
            "pghandoff could not write the transaction to its journal "
            "(mirror.on_target_error: fail-client)",
            std::string("The transaction was rolled back on the ") + sideName(a) + ".", ""});
        co_return co_await answer(u.ready, 'I');
      }
    }
    metrics().queriesTotal(sideLabel(a), labels::QueryKind::kWrite).inc();
    Outcome ao;
    bool answered = co_await exchange(a, u.bytes, Sink::kHold, ao, expect);
    if (!answered) {
      // The outcome is the source's to tell (pg_xact_status) at the replay.
      co_await lockstepLost(a);
      co_return false;
    }
    if (seq != 0) journal->outcome(seq, commitAnswered(u, ao));
    co_return co_await answer(u.ready, ao.txStatus);
  }

  // A plain COMMIT (or END), simple or extended, under two-phase commit: the
  // proxy prepares and commits on both, then the client's own COMMIT runs on
  // the authoritative side in an empty transaction of the proxy's, so that
  // its answer is exactly PostgreSQL's. (COMMIT AND CHAIN and implicit
  // commits keep the mirror-first order.)
  std::string plain(u.sql);
  while (!plain.empty() &&
         (plain.back() == ';' || std::isspace(static_cast<unsigned char>(plain.back())) != 0)) {
    plain.pop_back();
  }
  while (!plain.empty() && std::isspace(static_cast<unsigned char>(plain.front())) != 0) {
    plain.erase(plain.begin());
  }
  for (char& ch : plain) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  if (rt_->cfg.mirror.twoPhaseCommit && registry_.twoPhaseUsable() && u.ready && u.single &&
      !u.implicitCommit && u.info.tx == TxControl::kCommit &&
      (plain == "COMMIT" || plain == "END" || plain == "COMMIT TRANSACTION" ||
       plain == "COMMIT WORK")) {
    std::optional<protocol::ErrorFields> refusal;
    std::string why;
    metrics().queriesTotal(sideLabel(m), labels::QueryKind::kWrite).inc();
    metrics().queriesTotal(sideLabel(a), labels::QueryKind::kWrite).inc();
    const TwoPhase r = co_await commitTwoPhase(a, m, refusal, why);
    if (r == TwoPhase::kLost) {
      co_await lockstepLost(a);
      co_return false;
    }
    if (r == TwoPhase::kRefused) {
      holdError(*refusal);
      co_return co_await finishUnit('I');
    }
    if (r == TwoPhase::kMirrorFailed) {
      mirrorFailed(m, MirrorErrorReason::kCommitFailed, why);
      if (failClient) {
        if (!co_await rollBackWrapper(a)) co_return false;
        holdError(protocol::ErrorFields{
            "ERROR", sqlstate::kSystemError,
            std::string("the ") + sideName(m) + " server could not prepare the transaction (" +
                why + "; mirror.on_target_error: fail-client)",
            std::string("The transaction was rolled back on the ") + sideName(a) + " too.", ""});
        co_return co_await finishUnit('I');
      }
      Outcome ac;
      bool answered = co_await exchange(a, u.bytes, Sink::kHold, ac, 0);
      if (!answered) {
        co_await lockstepLost(a);
        co_return false;
      }
      co_return co_await answer(true, ac.txStatus);
    }
    std::vector<std::uint8_t> out;
    protocol::encodeQuery(kBegin, out);
    out.insert(out.end(), u.bytes.begin(), u.bytes.end());
    Outcome ac;
    const bool answered = co_await exchangeWrapped(a, out, true, Sink::kHold, ac, 0);
    if (!answered) {
      co_await lockstepLost(a);
      co_return false;
    }
    co_return co_await answer(true, ac.txStatus);
  }

  metrics().queriesTotal(sideLabel(m), labels::QueryKind::kWrite).inc();
  Outcome mo;
  bool sent = co_await exchange(m, u.bytes, Sink::kDiscard, mo, expect);
  const bool committed = sent && commitAnswered(u, mo);
  if (!committed) {
    mirrorFailed(m, sent ? MirrorErrorReason::kCommitFailed : MirrorErrorReason::kTargetDown,
                 sent ? "commit answered " + summary(mo.results) : "connection lost");
    if (failClient) {
      if (up_[m].conn && mo.txStatus != 'I') {
        Outcome rb;
        co_await runOwn(m, kRollback, rb);
      }
      if (!co_await rollBackWrapper(a)) co_return false;
      holdError(protocol::ErrorFields{
          "ERROR", sqlstate::kSystemError,
          std::string("the ") + sideName(m) + " server could not commit the transaction (" +
              (sent ? summary(mo.results) : std::string("connection lost")) +
              "; mirror.on_target_error: fail-client)",
          std::string("The transaction was rolled back on the ") + sideName(a) + " too.", ""});
      co_return co_await answer(u.ready, 'I');
    }
  }
  metrics().queriesTotal(sideLabel(a), labels::QueryKind::kWrite).inc();
  Outcome ao;
  bool answered = co_await exchange(a, u.bytes, Sink::kHold, ao, expect);
  if (!answered) {
    co_await lockstepLost(a);
    co_return false;
  }
  if (sent && (ao.results != mo.results || (ao.error.has_value() != mo.error.has_value()))) {
    // Committed on the mirror only: the one divergence the order cannot
    // prevent (DESIGN hard problem 5; two-phase commit is not built yet).
    reportDivergence(DivergenceKind::kCommit, u.sql, ao, mo);
  }
  co_return co_await answer(u.ready, ao.txStatus);
}

awaitable<bool> ClientSession::journalCommit(int a, bool implicit, protocol::Bytes commit,
                                             std::uint32_t commitReadies, std::uint64_t& seq) {
  seq = 0;
  journalFailed_ = false;
  std::shared_ptr<Journal> journal = journal_;
  // The transaction id on the authoritative side, assigned once it wrote.
  Outcome xo;
  std::vector<std::uint8_t> q;
  bool answered = false;
  if (implicit) {
    // In an implicit transaction of the extended protocol a simple Query
    // would commit it: the same question through the extended protocol,
    // under the proxy's own statement and portal names.
    protocol::encodeNamedRun("pghandoff_xid", kXidQuery, q);
    protocol::Writer h(q);
    h.begin('H');
    h.end();
    answered = co_await sendTo(a, q);
    // CloseComplete twice, ParseComplete, BindComplete, CommandComplete.
    if (answered) answered = co_await pump(a, Sink::kCollect, xo, 5);
  } else {
    protocol::encodeQuery(kXidQuery, q);
    answered = co_await exchange(a, q, Sink::kCollect, xo, 0);
  }
  if (!answered) co_return false;
  std::uint64_t xid = 0;
  if (!xo.error && xo.rows.size() == 1 && xo.rows[0].size() == 1 && xo.rows[0][0]) {
    xid = std::strtoull(xo.rows[0][0]->c_str(), nullptr, 10);
  } else if (xo.error) {
    spdlog::error("session {}: could not read the source's transaction id: {}", id_,
                  xo.error->message);
  }
  if (xid == 0 || !journal) {
    // Nothing written: nothing for the replay to commit. The stream keeps
    // what it did (session state) for the session's next transaction.
    journalBytes_.insert(journalBytes_.end(), commit.begin(), commit.end());
    journalReadies_ += commitReadies;
    co_return true;
  }
  JournalTx tx;
  tx.session = journalSession_;
  tx.xid = xid;
  tx.readies = journalReadies_;
  tx.commitReadies = commitReadies;
  tx.implicit = implicit;
  tx.at = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                         std::chrono::system_clock::now().time_since_epoch())
                                         .count());
  tx.bytes = std::move(journalBytes_);
  tx.commit.assign(commit.begin(), commit.end());
  journalBytes_.clear();
  journalReadies_ = 0;
  seq = co_await journal->commit(std::move(tx));
  if (seq == 0 && journals(txPhase_)) {
    spdlog::error("session {}: the catch-up journal failed; the seed must be run again", id_);
  } else if (seq == 0) {
    journalFailed_ = true;
  }
  co_return true;
}

awaitable<ClientSession::TwoPhase> ClientSession::commitTwoPhase(
    int a, int m, std::optional<protocol::ErrorFields>& refusal, std::string& why) {
  const std::string gid =
      twoPhaseGidPrefix() + std::to_string(id_) + "_" + std::to_string(++gidCounter_);
  const std::string prepare = "PREPARE TRANSACTION '" + gid + "'";
  const std::string commit = "COMMIT PREPARED '" + gid + "'";
  const std::string rollback = "ROLLBACK PREPARED '" + gid + "'";
  // 1. The mirror prepares first: if it cannot, nothing is committed anywhere.
  Outcome mp;
  const bool mPrepared = co_await runOwn(m, prepare, mp);
  if (!mPrepared || !onlyTag(mp.results, "PREPARE TRANSACTION")) {
    // Lost on the way, the mirror may have prepared it all the same:
    // undecided, to be rolled back wherever it is.
    if (!up_[m].conn) registry_.addPending(gid, false);
    why = up_[m].conn ? "PREPARE TRANSACTION answered " + summary(mp.results)
                      : std::string("connection lost");
    if (mp.error) why = mp.error->message + " (SQLSTATE " + mp.error->code + ")";
    co_return TwoPhase::kMirrorFailed;
  }
  // 2. The authoritative side: a deferred constraint or a serialization
  // failure shows here, before anything is committed: the mirror rolls back.
  Outcome ap;
  const bool aPrepared = co_await runOwn(a, prepare, ap);
  if (!aPrepared || !onlyTag(ap.results, "PREPARE TRANSACTION")) {
    Outcome rb;
    bool rolledBack = false;
    if (up_[m].conn) rolledBack = co_await runOwn(m, rollback, rb);
    // Either side's outcome unknown (a lost connection): undecided.
    if (!rolledBack || !up_[a].conn) registry_.addPending(gid, false);
    if (!up_[a].conn) co_return TwoPhase::kLost;
    refusal = ap.error ? *ap.error
                       : protocol::ErrorFields{"ERROR", sqlstate::kSystemError,
                                               "the transaction could not be prepared", "", ""};
    co_return TwoPhase::kRefused;
  }
  // 3. Decided. The mirror commits first; one that misses it gets it later.
  Outcome mc;
  const bool mCommitted = co_await runOwn(m, commit, mc);
  if (!mCommitted) {
    registry_.addPending(gid, true);
    mirrorFailed(m, MirrorErrorReason::kCommitFailed,
                 "COMMIT PREPARED did not complete; it is retried");
  }
  Outcome ac;
  const bool aCommitted = co_await runOwn(a, commit, ac);
  if (!aCommitted) {
    registry_.addPending(gid, true);
    if (!up_[a].conn) co_return TwoPhase::kLost;
  }
  co_return TwoPhase::kCommitted;
}

// ---------------------------------------------------------------------------
// Talking to one side

awaitable<bool> ClientSession::sendTo(int idx, protocol::Bytes bytes) {
  Upstream& u = up_[idx];
  if (u.journal) {
    journalBytes_.insert(journalBytes_.end(), bytes.begin(), bytes.end());
    co_return true;
  }
  if (!u.conn) co_return false;
  u.writing = true;
  auto [ec, n] = co_await u.conn->stream().writeAll(asio::buffer(bytes.data(), bytes.size()));
  u.writing = false;
  sentAt_[idx] = std::chrono::steady_clock::now();
  co_return !ec;
}

awaitable<bool> ClientSession::exchange(int idx, protocol::Bytes bytes, Sink sink, Outcome& out,
                                        std::size_t expected) {
  bool sent = co_await sendTo(idx, bytes);
  if (!sent) co_return false;
  co_return co_await pump(idx, sink, out, expected);
}

awaitable<bool> ClientSession::exchangeWrapped(int idx, protocol::Bytes bytes, bool wrapped,
                                               Sink sink, Outcome& out, std::size_t expected) {
  if (!co_await sendTo(idx, bytes)) co_return false;
  if (wrapped) {
    Outcome begin;
    if (!co_await pump(idx, Sink::kDiscard, begin, 0)) co_return false;
  }
  co_return co_await pump(idx, sink, out, expected);
}

awaitable<bool> ClientSession::runOwn(int idx, std::string_view sql, Outcome& out) {
  if (!hasSide(idx)) co_return false;
  std::vector<std::uint8_t> q;
  protocol::encodeQuery(sql, q);
  bool answered = co_await exchange(idx, q, Sink::kDiscard, out, 0);
  if (!answered) {
    closeSide(idx);
    co_return false;
  }
  co_return !out.error;
}

awaitable<bool> ClientSession::pump(int idx, Sink sink, Outcome& out, std::size_t expected) {
  const auto maxLen = static_cast<std::uint32_t>(rt_->cfg.limits.maxMessageBytes);
  Upstream& u = up_[idx];
  if (u.journal) {
    // No server answers: the request is recorded; the ReadyForQuery a server
    // would send is counted for the replay (a batch without Sync draws none,
    // nor does a COPY waiting for its data).
    out.journaled = true;
    if (out.stopAtCopyIn) {
      out.copyIn = true;
    } else if (expected == 0) {
      ++journalReadies_;
    }
    out.txStatus = up_[targetAuthoritative(txPhase_) ? kTargetIdx : kSourceIdx].txStatus;
    u.txStatus = out.txStatus;
    co_return true;
  }
  if (!u.conn) co_return false;
  const bool toClient = sink == Sink::kStream || sink == Sink::kHold;
  std::size_t completions = 0;
  // The mirror's answer to a mirrored request is bounded by mirror.timeout: a
  // frozen target must not hang the client (its reads are not bounded: they
  // are the client's own queries).
  std::optional<Watchdog> deadline;
  const int auth = targetAuthoritative(txPhase_) ? kTargetIdx : kSourceIdx;
  if (sink == Sink::kDiscard && writesBoth(txPhase_) && idx != auth) {
    deadline.emplace(ex_, rt_->cfg.mirror.timeout, [self = shared_from_this(), idx] {
      self->mirrorTimedOut_ = true;
      if (self->up_[idx].conn) {
        error_code ignored;
        self->up_[idx].conn->stream().socket().cancel(ignored);
      }
    });
  }
  while (true) {
    bool done = false, outOfSync = false, copyIn = false;
    std::size_t dropTail = 0;    // the ReadyForQuery or CopyInResponse that ends the chunk
    std::size_t skipPrefix = 0;  // the proxy's own messages that start the chunk
    const auto* chunk = static_cast<const std::uint8_t*>(u.buf.ready().data());
    std::size_t lastFrame = kNone, lastCompletion = kNone;
    auto res = u.buf.scan(
        [maxLen](protocol::Bytes b) { return protocol::parseBackendHeader(b, maxLen); },
        [sink](char t) {
          return t == 'Z' || t == 'E' || t == 'C' || t == 'S' || t == '1' || t == '3' ||
                 ((t == 'D' || t == 'T') && sink == Sink::kCollect);
        },
        [&](const protocol::FrameHeader& h, protocol::Bytes body, bool) {
          const std::size_t at = static_cast<std::size_t>(body.data() - 5 - chunk);
          if (out.dropLeading > 0 && h.type != 'E' && h.type != 'Z') {
            // The proxy's own Close/Parse at the head of a rewritten request.
            --out.dropLeading;
            if (at == skipPrefix) skipPrefix = at + h.total();
            return true;
          }
          switch (h.type) {
            case 'Z': {
              auto st = protocol::decodeReadyForQueryBody(body);
              if (!st) {
                outOfSync = true;
                return false;
              }
              out.txStatus = *st;
              u.txStatus = *st;
              done = true;
              dropTail = h.total();
              return false;
            }
            case 'G':  // CopyInResponse
              if (out.stopAtCopyIn) {
                out.copyIn = true;
                done = true;
                break;
              }
              // COPY FROM STDIN the classifier did not see: fail it.
              copyIn = true;
              dropTail = h.total();
              return false;
            case 'C': {
              auto tag = protocol::decodeCommandCompleteBody(body);
              out.results.emplace_back(tag ? std::string(*tag) : std::string("?"));
              break;
            }
            case 'I':
              out.results.emplace_back("EMPTY");
              break;
            case 'E': {
              auto e = protocol::decodeErrorBody(body);
              out.results.emplace_back("ERROR " + (e ? e->code : std::string("?")));
              if (e && !out.error) out.error = *e;
              if (e && toClient) {
                metrics().clientErrorsTotal(sqlStateLabel(e->code)).inc();
                if (e->severity == "FATAL" || e->severity == "PANIC") serverSentFatal_ = true;
              }
              break;
            }
            case 'T':
              if (sink == Sink::kCollect) {
                if (auto types = protocol::decodeRowDescriptionTypes(body)) out.types = *types;
              }
              break;
            case 'D':
              if (sink == Sink::kCollect) {
                out.collected += h.total();
                if (out.collected > out.collectLimit) {
                  out.overLimit = true;
                  out.rows.clear();
                  break;
                }
                if (auto row = protocol::decodeDataRowBody(body)) {
                  std::vector<std::optional<std::string>> cols;
                  for (const auto& col : *row) {
                    cols.emplace_back(col ? std::optional<std::string>(*col) : std::nullopt);
                  }
                  out.rows.push_back(std::move(cols));
                }
              }
              break;
            default:
              break;
          }
          if (toClient) {
            (void)machine_.onServerFrame(h.type, body);
            lastFrame = at;
            if (isCompletion(h.type)) lastCompletion = at;
          }
          if (expected > 0) {
            // A batch without Sync: each message's answer ends in one of
            // these; after an error the server is silent until Sync.
            if (h.type == 'E') {
              done = true;
              return false;
            }
            if (h.type == '1' || h.type == '2' || h.type == '3' || h.type == 'n' || h.type == 'T' ||
                h.type == 'C' || h.type == 'I' || h.type == 's') {
              if (++completions == expected) {
                done = true;
                return false;
              }
            }
          }
          return !done;
        });
    if (res.status == RelayBuffer::ScanStatus::kError || outOfSync) {
      spdlog::error("session {}: lost synchronization with the {}", id_, sideName(idx));
      metrics().internalBugsTotal().inc();
      co_return false;
    }
    const std::size_t n = u.buf.ready().size() - dropTail - skipPrefix;
    if (n > 0 && toClient && !clientGone_) {
      const auto* bytes = static_cast<const std::uint8_t*>(u.buf.ready().data()) + skipPrefix;
      if (sink == Sink::kStream) {
        clientWriting_ = true;
        auto [ec, w] = co_await client_.writeAll(asio::buffer(bytes, n));
        clientWriting_ = false;
        if (ec) clientGone_ = true;  // drain the side to its ReadyForQuery, then end
      } else {
        if (lastFrame != kNone) {
          heldCompletion_ = lastCompletion != kNone && lastCompletion == lastFrame
                                ? held_.size() + lastCompletion - skipPrefix
                                : kNone;
        }
        held_.insert(held_.end(), bytes, bytes + n);
        if (held_.size() > kHoldLimit) {
          // Release all but a final completion message.
          std::size_t keep = heldCompletion_ != kNone ? held_.size() - heldCompletion_ : 0;
          clientWriting_ = true;
          auto [ec, w] = co_await client_.writeAll(asio::buffer(held_.data(), held_.size() - keep));
          clientWriting_ = false;
          if (ec) clientGone_ = true;
          held_.erase(held_.begin(), held_.end() - static_cast<std::ptrdiff_t>(keep));
          heldCompletion_ = keep > 0 ? 0 : kNone;
        }
      }
    }
    u.buf.consumeReady();
    if (copyIn) {
      // Nothing to send: fail the COPY so that the server ends the statement.
      std::vector<std::uint8_t> fail;
      protocol::Writer w(fail);
      w.begin('f').cstring("pghandoff does not mirror COPY FROM STDIN yet");
      w.end();
      if (!co_await sendTo(idx, fail)) co_return false;
      continue;
    }
    if (done) {
      metrics()
          .queryDurationSeconds(sideLabel(idx))
          .observe(std::chrono::steady_clock::now() - sentAt_[idx]);
      co_return true;
    }
    auto [ec, r] = co_await u.conn->stream().readSome(u.buf.freeSpace());
    if (ec) co_return false;
    u.buf.commit(r);
  }
}

// ---------------------------------------------------------------------------
// Answers to the client

void ClientSession::holdError(const protocol::ErrorFields& e) {
  metrics().clientErrorsTotal(sqlStateLabel(e.code)).inc();
  protocol::encodeError(e, held_);
}

awaitable<bool> ClientSession::finishUnit(char status) {
  protocol::encodeReadyForQuery(status, held_);
  // Not a local array: GCC 12 cannot copy one into a coroutine frame.
  (void)machine_.onServerFrame('Z', protocol::Bytes(held_).last(1));
  if (machine_.atTransactionBoundary()) endTransaction();
  publish();
  bool ok = true;
  if (!clientGone_) {
    clientWriting_ = true;
    auto [ec, n] = co_await client_.writeAll(asio::buffer(held_));
    clientWriting_ = false;
    if (ec) clientGone_ = true;
  }
  held_.clear();
  heldCompletion_ = static_cast<std::size_t>(-1);
  if (clientGone_) ok = false;
  if (!ok) {
    closing_ = true;
    co_await closeServerGracefully(false);
  }
  co_return ok;
}

awaitable<void> ClientSession::lockstepLost(int idx) {
  closing_ = true;
  if (!held_.empty() && !clientGone_) {
    // What the side said before it went (its FATAL, say).
    co_await writeClient(held_);
    held_.clear();
  }
  co_await closeServerGracefully(false);
  if (forced_) {
    prepareShutdownFatal();
    co_await flushError();
  } else if (!serverSentFatal_) {
    spdlog::warn("session {}: lost the {} server", id_, sideName(idx));
    prepareFatal(sqlstate::kConnectionFailure,
                 std::string("pghandoff lost the connection to the ") + sideName(idx) + " server");
    co_await flushError();
  }
  client_.close();
}

// ---------------------------------------------------------------------------
// Mirror failures and divergences

void ClientSession::mirrorFailed(int m, MirrorErrorReason reason, const std::string& what) {
  if (mirrorTimedOut_) {
    // Its connection is in an unknown state (the request may still run):
    // ended, and opened again at the next transaction boundary.
    mirrorTimedOut_ = false;
    reason = MirrorErrorReason::kTimeout;
    spdlog::warn("session {}: the mirror ({}) did not answer within mirror.timeout ({} ms)", id_,
                 sideName(m), rt_->cfg.mirror.timeout.count());
  }
  metrics().mirrorErrorsTotal(reason).inc();
  spdlog::warn("session {}: the mirror ({}) failed: {}", id_, sideName(m),
               reason == MirrorErrorReason::kTimeout ? std::string("timeout") : what);
  if (reason == MirrorErrorReason::kTargetDown || reason == MirrorErrorReason::kTimeout) {
    closeSide(m);
  }
  if (rt_->cfg.mirror.onTargetError == config::OnTargetError::kDegrade &&
      !registry_.mirrorBroken()) {
    registry_.markMirrorBroken();
    spdlog::error(
        "mirror broken: writes go to the authoritative side only from now on "
        "(mirror.on_target_error: degrade); the {} must be seeded again",
        sideName(m));
  }
}

void ClientSession::reportDivergence(DivergenceKind kind, std::string_view sql, const Outcome& a,
                                     const Outcome& m) {
  metrics().divergencesTotal(kind).inc();
  // The statement's fingerprint, never its text: literals may be secrets.
  auto fp = protocol::fingerprint(sql);
  spdlog::warn("session {}: divergence ({}) on statement {}: authoritative {} / mirror {}", id_,
               labels::DivergenceKindDim::kValues[static_cast<std::size_t>(kind)],
               fp ? *fp : std::string("(unparsable)"), summary(a.results), summary(m.results));
}

// ---------------------------------------------------------------------------
// Session state for a server session opened late

awaitable<bool> ClientSession::copySessionState(int from, int to, std::string& failure) {
  Outcome state;
  std::vector<std::uint8_t> q;
  protocol::encodeQuery(kSessionStateQuery, q);
  bool answered = co_await exchange(from, q, Sink::kCollect, state, 0);
  if (!answered) {
    failure = std::string("the ") + sideName(from) + " server went away";
    co_return false;
  }
  if (state.error) {
    failure = "reading the session state failed: " + state.error->message;
    co_return false;
  }
  // One request per item, each ending in ReadyForQuery: a Query, or a
  // Parse and a Sync.
  std::vector<std::uint8_t> out;
  std::vector<std::string> seen;
  std::size_t requests = 0;
  for (const auto& row : state.rows) {
    if (row.size() < 3 || !row[0] || !row[1]) continue;
    if (*row[0] == "q") {
      // A multi-statement PREPARE text is listed once per statement it made.
      if (std::find(seen.begin(), seen.end(), *row[1]) != seen.end()) continue;
      seen.push_back(*row[1]);
      protocol::encodeQuery(*row[1], out);
    } else {
      if (!row[2]) continue;
      const std::string& packed = *row[2];
      const auto cut = packed.rfind('\x01');
      if (cut == std::string::npos) continue;
      std::vector<std::int32_t> oids;
      std::string_view list(packed.data() + cut + 1, packed.size() - cut - 1);
      while (!list.empty()) {
        const auto comma = list.find(',');
        const std::string_view item = list.substr(0, comma);
        std::int32_t oid = 0;
        for (char ch : item) oid = oid * 10 + (ch - '0');
        oids.push_back(oid);
        list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
      }
      protocol::Writer w(out);
      w.begin('P').cstring(*row[1]).cstring(std::string_view(packed.data(), cut));
      w.int16(static_cast<std::int16_t>(oids.size()));
      for (auto oid : oids) w.int32(oid);
      w.end();
      protocol::encodeSync(out);
    }
    ++requests;
  }
  if (requests == 0) co_return true;
  if (!co_await sendTo(to, out)) {
    failure = std::string("the ") + sideName(to) + " server went away";
    co_return false;
  }
  for (std::size_t i = 0; i < requests; ++i) {
    Outcome o;
    bool answered = co_await pump(to, Sink::kDiscard, o, 0);
    if (!answered) {
      failure = std::string("the ") + sideName(to) + " server went away";
      co_return false;
    }
    if (o.error) {
      failure = "replaying the session state failed: " + o.error->message + " (SQLSTATE " +
                o.error->code + ")";
      co_return false;
    }
  }
  spdlog::debug("session {}: copied {} session setting(s) and statement(s) to the {}", id_,
                requests, sideName(to));
  co_return true;
}

}  // namespace pghandoff::proxy
