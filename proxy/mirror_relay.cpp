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
// An autocommit write is wrapped in a BEGIN/COMMIT the proxy adds on the
// authoritative side, so that it can still be rolled back when the mirror
// fails; on the mirror it is wrapped too when mirror.on_divergence is
// fail-client (else it commits by itself, which is the mirror-first commit).
//
// Not built yet (issue 3 steps 3-5): the extended query protocol and COPY
// FROM STDIN in these phases (answered with 0A000), deterministic values
// (now(), sequences, ...: SPEC §2), notifications arriving while a session is
// idle are delivered with its next answer, two-phase commit.
#include <spdlog/spdlog.h>

#include "protocol/frame.h"
#include "protocol/frontend.h"
#include "protocol/sql_determinism.h"
#include "proxy/client_session.h"
#include "proxy/logging.h"

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

bool onlyTag(const std::vector<std::string>& results, std::string_view tag) {
  return results.size() == 1 && results[0] == tag;
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
// settings and prepared statements (SQL PREPARE and protocol Parse alike; a
// named protocol statement can be recreated with PREPARE, which Bind uses by
// name).
constexpr std::string_view kSessionStateQuery =
    "SELECT pg_catalog.format('SET %I = %L', name, setting) FROM pg_catalog.pg_settings "
    "WHERE source = 'session' "
    "UNION ALL "
    "SELECT CASE WHEN from_sql THEN statement "
    "WHEN pg_catalog.cardinality(parameter_types) = 0 "
    "THEN pg_catalog.format('PREPARE %I AS %s', name, statement) "
    "ELSE pg_catalog.format('PREPARE %I(%s) AS %s', name, "
    "pg_catalog.array_to_string(parameter_types, ','), statement) END "
    "FROM pg_catalog.pg_prepared_statements";

}  // namespace

// ---------------------------------------------------------------------------
// The loop

awaitable<void> ClientSession::lockstep() {
  const auto maxLen = static_cast<std::uint32_t>(rt_->cfg.limits.maxMessageBytes);
  bool skipping = false;  // after refusing an extended-protocol message: until Sync
  while (true) {
    if (clientGone_ || closing_) {
      closing_ = true;
      co_await closeServerGracefully(false);
      client_.close();
      co_return;
    }
    if (forced_ || (shutdownRequested_ && !inTransaction_ && cbuf_.pendingSize() == 0)) {
      // Graceful shutdown at a boundary (or forced): as the streaming relay.
      co_await closeServerGracefully(false);
      protocol::ErrorFields e{
          "FATAL", sqlstate::kAdminShutdown,
          flipCancelled_ ? "terminating connection: its transaction was still open when a phase "
                           "change reached flip.drain_timeout (flip.on_timeout: cancel)"
                         : "terminating connection due to administrator command",
          "", ""};
      prepareError(e);
      co_await flushError();
      client_.close();
      co_return;
    }
    // New work at a boundary takes the barrier; the phase may want another
    // mode or side.
    if (!inTransaction_ && !cbuf_.midMessage()) {
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
    auto res =
        cbuf_.scan([maxLen](protocol::Bytes b) { return protocol::parseFrontendHeader(b, maxLen); },
                   [](char t) { return t == 'Q'; },
                   [this, &type](const protocol::FrameHeader& h, protocol::Bytes, bool) {
                     type = h.type;
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
    if (type == 0) {
      cbuf_.consumeReady();  // the streamed rest of a refused message
      lockstepIdle_ = !inTransaction_;
      if (shutdownRequested_ && lockstepIdle_ && cbuf_.pendingSize() == 0) continue;
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
    const auto ready = cbuf_.ready();
    protocol::Bytes frame(static_cast<const std::uint8_t*>(ready.data()), ready.size());
    switch (type) {
      case 'X':
        closing_ = true;
        co_await closeServerGracefully(false);
        client_.close();
        co_return;
      case 'Q':
        if (skipping) break;  // PostgreSQL too ignores all but Sync after an error
        ok = co_await mirrorQuery(frame);
        break;
      case 'S':
        skipping = false;
        ok = co_await finishUnit(machine_.transactionStatus());
        break;
      case 'H':
        if (!held_.empty()) ok = co_await writeClient(held_);
        held_.clear();
        break;
      case 'd':
      case 'c':
      case 'f':
        break;  // CopyData/Done/Fail outside COPY: ignored, as PostgreSQL does
      default:
        // Parse, Bind, Describe, Execute, Close, FunctionCall.
        if (!skipping) {
          holdError(protocol::ErrorFields{
              "ERROR", sqlstate::kFeatureNotSupported,
              "not built yet: pghandoff does not mirror the extended query protocol in phase " +
                  std::string(phaseName(txPhase_)) + " (issue 3 step 3)",
              "", "Use the simple query protocol, or a phase that writes to one server."});
          if (type == 'F') {
            ok = co_await finishUnit(machine_.transactionStatus());
          } else {
            skipping = true;
            ok = co_await writeClient(held_);
            held_.clear();
          }
        }
        break;
    }
    cbuf_.consumeReady();
    if (!ok) co_return;
  }
}

// ---------------------------------------------------------------------------
// One simple Query

awaitable<bool> ClientSession::mirrorQuery(protocol::Bytes frame) {
  auto text = protocol::decodeQueryBody(frame.subspan(5));
  const std::string_view sql = text ? *text : std::string_view{};
  registry_.classifier().get(sql, scratch_);
  const protocol::Classification c = scratch_;
  const Phase p = txPhase_;
  const int a = targetAuthoritative(p) ? kTargetIdx : kSourceIdx;
  const int m = a == kSourceIdx ? kTargetIdx : kSourceIdx;
  const int r = readsFromTarget(p) ? kTargetIdx : kSourceIdx;
  const char clientTx = machine_.transactionStatus();
  const bool single = c.statements.size() == 1;
  const auto kind =
      c.kind == StatementKind::kRead ? labels::QueryKind::kRead : labels::QueryKind::kWrite;

  // Refused here: the client's transaction fails, as PostgreSQL's would.
  auto refuse = [this, clientTx](protocol::ErrorFields e) {
    holdError(e);
    if (clientTx != 'I') poisoned_ = true;
    return clientTx == 'I' ? 'I' : 'E';
  };

  if (poisoned_) {
    if (single && (c.txControl == TxControl::kRollback || c.txControl == TxControl::kCommit)) {
      Outcome o;
      co_await runOwn(a, kRollback, o);
      if (!o.error && up_[a].txStatus != 'I') {
        co_await lockstepLost(a);
        co_return false;
      }
      if (up_[m].conn) {
        Outcome mo;
        co_await runOwn(m, kRollback, mo);  // lost: runOwn closed it
      }
      poisoned_ = false;
      protocol::encodeCommandComplete("ROLLBACK", held_);
      co_return co_await finishUnit('I');
    }
    holdError(protocol::ErrorFields{
        "ERROR", sqlstate::kInFailedTransaction,
        "current transaction is aborted, commands ignored until end of transaction block", "", ""});
    co_return co_await finishUnit('E');
  }
  if (c.copyFrom) {
    char st = refuse(
        protocol::ErrorFields{"ERROR", sqlstate::kFeatureNotSupported,
                              "not built yet: pghandoff does not mirror COPY FROM in phase " +
                                  std::string(phaseName(p)) + " (issue 3 step 3)",
                              "", ""});
    co_return co_await finishUnit(st);
  }

  // Reads, and what lives on the authoritative side alone (LISTEN/NOTIFY,
  // cursors; everything once the mirror is broken under `degrade`).
  const bool read = c.kind == StatementKind::kRead && !c.cursor && !c.listenNotify;
  if (read || c.listenNotify || c.cursor || registry_.mirrorBroken()) {
    int side = read && clientTx != 'E' ? r : a;
    if (side != a && !up_[side].conn) {
      std::string why;
      bool opened = clientTx == 'I';
      if (opened) opened = co_await connectSide(side, false, &why);
      if (!opened) side = a;
    }
    metrics().queriesTotal(sideLabel(side), kind).inc();
    Outcome o;
    bool answered = co_await exchange(side, frame, Sink::kStream, o);
    if (!answered) {
      co_await lockstepLost(side);
      co_return false;
    }
    co_return co_await finishUnit(o.txStatus);
  }

  // Both sides. The mirror must be there; it is opened at a boundary only
  // (mid-transaction a new server session would not be in the transaction).
  if (!up_[m].conn) {
    std::string why = "not connected inside the transaction";
    bool opened = clientTx == 'I';
    if (opened) opened = co_await connectSide(m, false, &why);
    if (!opened) {
      mirrorFailed(m, MirrorErrorReason::kTargetDown, why);
      if (rt_->cfg.mirror.onTargetError == config::OnTargetError::kFailClient) {
        char st = refuse(protocol::ErrorFields{
            "ERROR", sqlstate::kSystemError,
            std::string("pghandoff could not reach the ") + sideName(m) +
                " server to mirror this statement: " + why,
            "Nothing was executed (mirror.on_target_error: fail-client).", ""});
        co_return co_await finishUnit(st);
      }
      co_return co_await mirrorQuery(frame);  // degraded: the authoritative side alone
    }
  }
  if (single && clientTx == 'T' &&
      (c.txControl == TxControl::kCommit || c.txControl == TxControl::kPrepare ||
       c.txControl == TxControl::kCommitPrepared)) {
    co_return co_await mirrorCommit(frame, a, m);
  }
  if (single && clientTx == 'E' && c.txControl == TxControl::kCommit) {
    // COMMIT of a failed transaction is a ROLLBACK: the mirror's transaction
    // (which never saw the failed statement) must not commit.
    Outcome mo;
    co_await runOwn(m, kRollback, mo);
    Outcome ao;
    metrics().queriesTotal(sideLabel(a), kind).inc();
    bool answered = co_await exchange(a, frame, Sink::kHold, ao);
    if (!answered) {
      co_await lockstepLost(a);
      co_return false;
    }
    co_return co_await finishUnit(ao.txStatus);
  }

  const bool wrap = clientTx == 'I' && c.txControl == TxControl::kNone && !c.noTransactionBlock &&
                    (c.kind == StatementKind::kWrite || c.kind == StatementKind::kUnknown);
  const bool failClientOnDivergence =
      rt_->cfg.mirror.onDivergence == config::OnDivergence::kFailClient;
  const bool wrapMirror = wrap && failClientOnDivergence;

  // 1. The authoritative side.
  std::vector<std::uint8_t> out;
  if (wrap) protocol::encodeQuery(kBegin, out);
  out.insert(out.end(), frame.begin(), frame.end());
  metrics().queriesTotal(sideLabel(a), kind).inc();
  Outcome begin, ao;
  // (No co_await inside || or &&: GCC 12 miscompiles it.)
  bool answered = co_await sendTo(a, out);
  if (answered && wrap) answered = co_await pump(a, Sink::kDiscard, begin);
  if (answered) answered = co_await pump(a, Sink::kHold, ao);
  if (!answered) {
    co_await lockstepLost(a);
    co_return false;
  }
  // When the authoritative side failed and its transaction goes away anyway
  // (the proxy's wrapper, or the client's block that must now roll back),
  // the mirror need not see the statement.
  if (ao.error && (wrap || (clientTx != 'I' && c.txControl == TxControl::kNone))) {
    if (wrap) {
      Outcome rb;
      bool rolledBack = co_await runOwn(a, kRollback, rb);
      if (!rolledBack && !up_[a].conn) {
        co_await lockstepLost(a);
        co_return false;
      }
    }
    co_return co_await finishUnit(wrap ? 'I' : ao.txStatus);
  }

  // 2. The mirror, with the same bytes.
  out.clear();
  if (wrapMirror) protocol::encodeQuery(kBegin, out);
  out.insert(out.end(), frame.begin(), frame.end());
  metrics().queriesTotal(sideLabel(m), kind).inc();
  Outcome mbegin, mo;
  bool mirrored = co_await sendTo(m, out);
  if (mirrored && wrapMirror) mirrored = co_await pump(m, Sink::kDiscard, mbegin);
  if (mirrored) mirrored = co_await pump(m, Sink::kDiscard, mo);

  const bool failClient = rt_->cfg.mirror.onTargetError == config::OnTargetError::kFailClient;
  if (!mirrored) {
    mirrorFailed(m, MirrorErrorReason::kTargetDown, "connection lost");
    if (failClient && (wrap || clientTx != 'I')) {
      const std::string why = std::string("pghandoff lost the ") + sideName(m) +
                              " server while mirroring this statement "
                              "(mirror.on_target_error: fail-client)";
      co_return co_await failBoth(FailBoth{a, m, wrap, wrapMirror, clientTx, ao.txStatus}, why);
    }
  } else if (mo.error && !ao.error) {
    // The mirror refused what the authoritative side accepted.
    reportDivergence(DivergenceKind::kError, sql, ao, mo);
    mirrorFailed(m, MirrorErrorReason::kError, "the statement failed: " + mo.error->code);
    if (failClient && (wrap || clientTx != 'I')) {
      const std::string why = std::string("the ") + sideName(m) +
                              " server refused this statement: " + mo.error->message +
                              " (SQLSTATE " + mo.error->code +
                              "; mirror.on_target_error: fail-client)";
      co_return co_await failBoth(FailBoth{a, m, wrap, wrapMirror, clientTx, ao.txStatus}, why);
    }
  } else if (ao.results != mo.results) {
    reportDivergence(divergenceKind(ao.results, mo.results), sql, ao, mo);
    if (failClientOnDivergence && (wrap || clientTx != 'I')) {
      const std::string why = std::string("the ") + sideName(m) +
                              " server answered this statement differently (" +
                              summary(mo.results) + " instead of " + summary(ao.results) +
                              "; mirror.on_divergence: fail-client)";
      co_return co_await failBoth(FailBoth{a, m, wrap, wrapMirror, clientTx, ao.txStatus}, why);
    }
    if (rt_->cfg.mirror.onDivergence == config::OnDivergence::kPauseMirroring) {
      spdlog::error("mirror paused after a divergence (mirror.on_divergence: pause-mirroring)");
      registry_.markMirrorBroken();
    }
  }

  // 3. Commit: the mirror first, then the authoritative side.
  if (wrapMirror && up_[m].conn) {
    Outcome mc;
    bool committed = co_await runOwn(m, kCommit, mc);
    if (!committed || !onlyTag(mc.results, kCommit)) {
      mirrorFailed(m, MirrorErrorReason::kCommitFailed, "COMMIT failed: " + summary(mc.results));
      if (failClient) {
        const std::string why = std::string("the ") + sideName(m) +
                                " server could not commit this statement "
                                "(mirror.on_target_error: fail-client)";
        co_return co_await failBoth(FailBoth{a, m, wrap, wrapMirror, clientTx, ao.txStatus}, why);
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
    if (!onlyTag(ac.results, kCommit)) {
      // Committed on the mirror, not here (a deferred constraint, say).
      reportDivergence(DivergenceKind::kCommit, sql, ac, mo);
      held_.clear();
      if (ac.error) holdError(*ac.error);
      co_return co_await finishUnit('I');
    }
    co_return co_await finishUnit('I');
  }
  co_return co_await finishUnit(ao.txStatus);
}

// Undo on the authoritative side what the mirror could not follow: roll back
// the proxy's wrapper, or fail the client's open transaction.
awaitable<bool> ClientSession::failBoth(FailBoth f, std::string why) {
  if (up_[f.m].conn && (f.wrapMirror || f.clientTx == 'T')) {
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
  } else if (f.clientTx != 'I' || f.aTx != 'I') {
    poisoned_ = true;
    st = 'E';
  }
  std::string detail =
      std::string(f.wrap ? "The statement was rolled back on the "
                         : "The transaction must be rolled back; it was not committed on the ") +
      sideName(f.a) + (f.wrap ? " too." : " either.");
  holdError(protocol::ErrorFields{"ERROR", sqlstate::kSystemError, std::move(why),
                                  std::move(detail), ""});
  co_return co_await finishUnit(st);
}

// COMMIT (or PREPARE TRANSACTION, COMMIT PREPARED) of an open transaction:
// the mirror first, so that a mirror that cannot commit leaves the
// authoritative transaction to roll back.
awaitable<bool> ClientSession::mirrorCommit(protocol::Bytes frame, int a, int m) {
  auto text = protocol::decodeQueryBody(frame.subspan(5));
  const std::string_view sql = text ? *text : std::string_view{};
  const std::string expected = expectedCommitTag(scratch_.txControl);
  const bool failClient = rt_->cfg.mirror.onTargetError == config::OnTargetError::kFailClient;

  metrics().queriesTotal(sideLabel(m), labels::QueryKind::kWrite).inc();
  Outcome mo;
  bool sent = co_await sendTo(m, frame);
  if (sent) sent = co_await pump(m, Sink::kDiscard, mo);
  if (!sent || !onlyTag(mo.results, expected)) {
    mirrorFailed(m, sent ? MirrorErrorReason::kCommitFailed : MirrorErrorReason::kTargetDown,
                 sent ? "commit answered " + summary(mo.results) : "connection lost");
    if (failClient) {
      if (up_[m].conn && mo.txStatus != 'I') {
        Outcome rb;
        co_await runOwn(m, kRollback, rb);
      }
      Outcome rb;
      bool rolledBack = co_await runOwn(a, kRollback, rb);
      if (!rolledBack && !up_[a].conn) {
        co_await lockstepLost(a);
        co_return false;
      }
      holdError(protocol::ErrorFields{
          "ERROR", sqlstate::kSystemError,
          std::string("the ") + sideName(m) + " server could not commit the transaction (" +
              (sent ? summary(mo.results) : std::string("connection lost")) +
              "; mirror.on_target_error: fail-client)",
          std::string("The transaction was rolled back on the ") + sideName(a) + " too.", ""});
      co_return co_await finishUnit('I');
    }
  }
  metrics().queriesTotal(sideLabel(a), labels::QueryKind::kWrite).inc();
  Outcome ao;
  bool answered = co_await exchange(a, frame, Sink::kHold, ao);
  if (!answered) {
    co_await lockstepLost(a);
    co_return false;
  }
  if (sent && ao.results != mo.results) {
    // Committed on the mirror only: the one divergence the order cannot
    // prevent (DESIGN hard problem 5; two-phase commit is not built yet).
    reportDivergence(DivergenceKind::kCommit, sql, ao, mo);
  }
  co_return co_await finishUnit(ao.txStatus);
}

// ---------------------------------------------------------------------------
// Talking to one side

awaitable<bool> ClientSession::sendTo(int idx, protocol::Bytes bytes) {
  Upstream& u = up_[idx];
  if (!u.conn) co_return false;
  u.writing = true;
  auto [ec, n] = co_await u.conn->stream().writeAll(asio::buffer(bytes.data(), bytes.size()));
  u.writing = false;
  sentAt_[idx] = std::chrono::steady_clock::now();
  co_return !ec;
}

awaitable<bool> ClientSession::exchange(int idx, protocol::Bytes bytes, Sink sink, Outcome& out) {
  bool sent = co_await sendTo(idx, bytes);
  if (!sent) co_return false;
  co_return co_await pump(idx, sink, out);
}

awaitable<bool> ClientSession::runOwn(int idx, std::string_view sql, Outcome& out) {
  if (!up_[idx].conn) co_return false;
  std::vector<std::uint8_t> q;
  protocol::encodeQuery(sql, q);
  bool answered = co_await exchange(idx, q, Sink::kDiscard, out);
  if (!answered) {
    closeSide(idx);
    co_return false;
  }
  co_return !out.error;
}

awaitable<bool> ClientSession::pump(int idx, Sink sink, Outcome& out) {
  const auto maxLen = static_cast<std::uint32_t>(rt_->cfg.limits.maxMessageBytes);
  Upstream& u = up_[idx];
  if (!u.conn) co_return false;
  const bool toClient = sink == Sink::kStream || sink == Sink::kHold;
  while (true) {
    bool done = false, outOfSync = false, copyIn = false;
    std::size_t dropTail = 0;  // the ReadyForQuery or CopyInResponse that ends the chunk
    const auto* chunk = static_cast<const std::uint8_t*>(u.buf.ready().data());
    std::size_t lastFrame = kNone, lastCompletion = kNone;
    auto res = u.buf.scan(
        [maxLen](protocol::Bytes b) { return protocol::parseBackendHeader(b, maxLen); },
        [sink](char t) {
          return t == 'Z' || t == 'E' || t == 'C' || t == 'S' ||
                 (t == 'D' && sink == Sink::kCollect);
        },
        [&](const protocol::FrameHeader& h, protocol::Bytes body, bool) {
          const std::size_t at = static_cast<std::size_t>(body.data() - 5 - chunk);
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
            case 'G':  // CopyInResponse: COPY FROM STDIN the classifier did not see
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
            case 'D':
              if (sink == Sink::kCollect) {
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
          return true;
        });
    if (res.status == RelayBuffer::ScanStatus::kError || outOfSync) {
      spdlog::error("session {}: lost synchronization with the {}", id_, sideName(idx));
      metrics().internalBugsTotal().inc();
      co_return false;
    }
    const std::size_t n = u.buf.ready().size() - dropTail;
    if (n > 0 && toClient && !clientGone_) {
      const auto* bytes = static_cast<const std::uint8_t*>(u.buf.ready().data());
      if (sink == Sink::kStream) {
        clientWriting_ = true;
        auto [ec, w] = co_await client_.writeAll(asio::buffer(bytes, n));
        clientWriting_ = false;
        if (ec) clientGone_ = true;  // drain the side to its ReadyForQuery, then end
      } else {
        if (lastFrame != kNone) {
          heldCompletion_ = lastCompletion != kNone && lastCompletion == lastFrame
                                ? held_.size() + lastCompletion
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
    prepareFatal(sqlstate::kAdminShutdown,
                 flipCancelled_
                     ? "terminating connection: its transaction was still open when a phase "
                       "change reached flip.drain_timeout (flip.on_timeout: cancel)"
                     : "terminating connection due to administrator command");
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
  metrics().mirrorErrorsTotal(reason).inc();
  spdlog::warn("session {}: the mirror ({}) failed: {}", id_, sideName(m), what);
  if (reason == MirrorErrorReason::kTargetDown) closeSide(m);
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
  bool answered = co_await exchange(from, q, Sink::kCollect, state);
  if (!answered) {
    failure = std::string("the ") + sideName(from) + " server went away";
    co_return false;
  }
  if (state.error) {
    failure = "reading the session state failed: " + state.error->message;
    co_return false;
  }
  std::vector<std::string> statements;
  for (const auto& row : state.rows) {
    if (row.empty() || !row[0]) continue;
    // A multi-statement PREPARE text is listed once per statement it created.
    if (std::find(statements.begin(), statements.end(), *row[0]) == statements.end()) {
      statements.push_back(*row[0]);
    }
  }
  if (statements.empty()) co_return true;
  std::vector<std::uint8_t> out;
  for (const auto& s : statements) protocol::encodeQuery(s, out);
  if (!co_await sendTo(to, out)) {
    failure = std::string("the ") + sideName(to) + " server went away";
    co_return false;
  }
  for (std::size_t i = 0; i < statements.size(); ++i) {
    Outcome o;
    if (!co_await pump(to, Sink::kDiscard, o)) {
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
                statements.size(), sideName(to));
  co_return true;
}

}  // namespace pghandoff::proxy
