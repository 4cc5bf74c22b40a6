// One application connection: startup (SSLRequest, GSSENCRequest,
// CancelRequest, StartupMessage), the proxy's own authentication of the
// client, login to the source, then the relay in both directions.
// https://www.postgresql.org/docs/15/protocol-flow.html
#pragma once

#include <array>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "protocol/backend.h"
#include "protocol/error.h"
#include "protocol/sql_determinism.h"
#include "protocol/startup.h"
#include "proxy/asio.h"
#include "proxy/insert_pin.h"
#include "proxy/journal.h"
#include "proxy/metrics.h"
#include "proxy/phase.h"
#include "proxy/relay_buffer.h"
#include "proxy/runtime.h"
#include "proxy/session_machine.h"
#include "proxy/statement_tracker.h"
#include "proxy/stream.h"
#include "proxy/upstream.h"

namespace pghandoff::proxy {

class ClientSession : public std::enable_shared_from_this<ClientSession> {
 public:
  ClientSession(tcp::socket socket, std::shared_ptr<const Runtime> rt, Registry& registry,
                bool admitted, std::uint64_t id);
  ~ClientSession();

  [[nodiscard]] awaitable<void> run();

  // Graceful shutdown: close at the next transaction boundary with 57P01.
  // Called on any thread; the work is posted to the session's executor.
  void requestShutdown();
  // Past the shutdown timeout: close now.
  void forceClose();
  // flip.on_timeout: cancel — if this session holds a transaction open across
  // a phase change past flip.drain_timeout, end it (57P01; the server rolls
  // the transaction back). Called on any thread.
  void cancelForFlip();

  // For /status (a snapshot, read from another thread; values are relaxed).
  struct Info {
    std::uint64_t id;
    std::string state;
    char txStatus;
    std::string user;
    std::string applicationName;
    std::string clientAddress;
    bool tls;
  };
  [[nodiscard]] Info info() const;

  // For CancelRequests from other connections: where this session's server
  // sessions are (one, or two while mirroring). Called on any thread.
  struct CancelTarget {
    tcp::endpoint endpoint;
    protocol::BackendKeyData key;
  };
  [[nodiscard]] std::vector<CancelTarget> cancelTargets() const;

 private:
  enum class Startup : std::uint8_t { kContinue, kDone, kClose };

  awaitable<void> runInner();
  awaitable<bool> startupPhase();
  awaitable<std::optional<protocol::Bytes>> readStartupPacket();
  awaitable<void> handleCancel(protocol::Bytes packet);
  awaitable<bool> authenticate();
  awaitable<bool> authenticateScram(const std::string& user, const UserSecret* secret);
  awaitable<bool> authenticateMd5(const std::string& user, const UserSecret* secret);
  awaitable<std::optional<std::vector<std::uint8_t>>> readAuthMessage();
  // One server session per side: up_[kSourceIdx] and up_[kTargetIdx].
  static constexpr int kSourceIdx = 0;
  static constexpr int kTargetIdx = 1;
  struct Upstream {
    std::optional<ServerConnection> conn;
    RelayBuffer buf;  // server -> proxy
    protocol::BackendKeyData key{};
    tcp::endpoint endpoint;
    char txStatus = 'I';   // as its last ReadyForQuery said (lockstep)
    bool writing = false;  // a write to it is in progress
    // Phase seeding (the target) or an async mirror (the side that is not
    // authoritative): the side is a journal (proxy/journal.h), not a server:
    // what it is sent is recorded, its answers are the authoritative side's.
    bool journal = false;
  };
  [[nodiscard]] bool hasSide(int idx) const {
    return up_[idx].conn.has_value() || up_[idx].journal;
  }
  [[nodiscard]] bool journaling(int idx) const { return up_[idx].journal; }
  [[nodiscard]] static labels::Side sideLabel(int idx) {
    return idx == kTargetIdx ? labels::Side::kTarget : labels::Side::kSource;
  }
  [[nodiscard]] static const char* sideName(int idx) {
    return idx == kTargetIdx ? "target" : "source";
  }
  // Logs in to one side. The first side of a session answers the client
  // (ParameterStatus, BackendKeyData, ReadyForQuery); a later one gets the
  // session state of the side already open (SET, prepared statements).
  // False with the reason in `failure` (for a later side) or the client told
  // (for the first).
  awaitable<bool> connectSide(int idx, bool first, std::string* failure);
  void closeSide(int idx);  // Terminate, close, count
  void publishCancelTargets();
  awaitable<bool> copySessionState(int from, int to, std::string& failure);

  awaitable<void> clientToServer();
  awaitable<void> serverToClient();
  awaitable<void> closeServerGracefully(bool cancelFirst);
  // At a transaction boundary, after the barrier: the relay mode and the
  // server sessions the phase needs (connect what is missing, end what is
  // no longer used). False when the session must end (the client was told).
  awaitable<bool> arrangeSides();
  [[nodiscard]] bool modeFits(Phase p) const {
    if (!lockstepPhase(p)) {
      return mode_ == Mode::kStream && relay_ == (targetAuthoritative(p) ? 1 : 0);
    }
    // The journal stands in for one side when the phase has one (the
    // seed's, or an async mirror's: the server sets it); the journal it is
    // must be the current one.
    const int js = journalSide(p);
    for (int i : {kSourceIdx, kTargetIdx}) {
      if (up_[i].journal) {
        return mode_ == Mode::kLockstep && i == js && registry_.journal() == journal_;
      }
    }
    return mode_ == Mode::kLockstep && !(js >= 0 && up_[js].conn);
  }
  // The side a journal stands in for in phase `p`: the target while seeding,
  // the side that is not authoritative under mirror.mode async (the server
  // sets the registry's journal for the phases that use one); -1 when both
  // sides are servers.
  [[nodiscard]] int journalSide(Phase p) const {
    if (!lockstepPhase(p) || !registry_.hasJournal()) return -1;
    return targetAuthoritative(p) ? kSourceIdx : kTargetIdx;
  }

  // ---- the lockstep relay of the phases that write to both servers
  // (proxy/mirror_relay.cpp)
  awaitable<void> lockstep();
  struct Outcome {
    // Per statement: the CommandComplete tag, "EMPTY" for EmptyQueryResponse,
    // "ERROR <sqlstate>" for an ErrorResponse.
    std::vector<std::string> results;
    std::optional<protocol::ErrorFields> error;                 // the first ErrorResponse
    std::vector<std::vector<std::optional<std::string>>> rows;  // Sink::kCollect only
    char txStatus = 'I';
    bool stopAtCopyIn =
        false;            // in: stop at CopyInResponse (forwarded) instead of failing the COPY
    bool copyIn = false;  // out: the side waits for COPY data
    // Sink::kCollect: the columns' type OIDs (from RowDescription); rows past
    // collectLimit bytes are not kept (overLimit set).
    std::vector<std::uint32_t> types;
    std::size_t collectLimit = SIZE_MAX;
    std::size_t collected = 0;
    bool overLimit = false;
    // in: the first so many messages of the answer are the proxy's own
    // (Close/Parse of a rewritten statement) and do not reach the client.
    std::size_t dropLeading = 0;
    bool journaled = false;  // out: recorded in the journal; no server answered
  };
  enum class Sink : std::uint8_t {
    kStream,   // to the client as it arrives
    kHold,     // to held_, released when the mirror has answered
    kDiscard,  // the proxy's own statements and the mirror's answers
    kCollect,  // the proxy's own queries: keep the rows
  };
  // Reads one side's answer up to its ReadyForQuery (not forwarded: the
  // caller answers the client's ReadyForQuery itself). False when the side
  // is lost (closed, reset, out of sync).
  // `expected` > 0: a batch without Sync, done after that many answered
  // messages (or an error).
  awaitable<bool> pump(int idx, Sink sink, Outcome& out, std::size_t expected);
  awaitable<bool> sendTo(int idx, protocol::Bytes bytes);
  awaitable<bool> exchange(int idx, protocol::Bytes bytes, Sink sink, Outcome& out,
                           std::size_t expected);
  // `bytes` starts with the proxy's own BEGIN when `wrapped` (its answer is
  // read and dropped first).
  awaitable<bool> exchangeWrapped(int idx, protocol::Bytes bytes, bool wrapped, Sink sink,
                                  Outcome& out, std::size_t expected);
  // Runs one of the proxy's own statements on a side; false when the side is
  // lost or the statement failed.
  awaitable<bool> runOwn(int idx, std::string_view sql, Outcome& out);
  // One request: a simple Query, or extended-protocol messages up to Sync
  // (or Flush), or a FunctionCall.
  struct Unit {
    protocol::Bytes bytes;  // as the client sent it
    // Parse and Close(statement) frames (+ Sync or Flush): what the side that
    // does not run a read request gets, so both keep the same statements.
    std::vector<std::uint8_t> sessionPart;
    std::size_t sessionExpected = 0;
    std::string_view sql;         // for the divergence log's fingerprint
    StatementTracker::Info info;  // the strongest kind it runs, and flags
    bool txControl = false;       // a transaction-control statement anywhere
    bool executes = false;        // runs a statement (Query, Execute, FunctionCall)
    bool single = true;           // one statement
    bool ready = true;            // ends in ReadyForQuery; else a Flush batch
    bool implicitCommit = false;  // a Sync ending an implicit transaction that wrote
    bool isQuery = false;         // a simple Query
    std::size_t expected = 0;     // messages the servers answer (a Flush batch)
    std::size_t count = 0;        // statements, for queries_total
    // Extended protocol: where transaction-time values can be pinned for the
    // mirror (a Bind in this request of a statement whose text has them).
    struct PinSite {
      std::size_t bindFrame;                   // index in unitFrames_
      const std::vector<std::uint8_t>* parse;  // the statement's Parse body
      std::size_t analysis;                    // its query's, in `analyses`
    };
    std::vector<PinSite> pinSites;
    // Extended protocol: the analysis of each statement it executes that may
    // write or has per-server values; complete when every text was known.
    std::vector<std::shared_ptr<const protocol::StatementAnalysis>> analyses;
    bool analysesComplete = true;
    bool extPinnable = false;  // every nondeterministic Execute has a PinSite
    // Extended protocol, one Execute that may write, bound in this request:
    // its Bind frame and its statement's Parse body (an INSERT can be pinned).
    std::size_t writeBindFrame = static_cast<std::size_t>(-1);
    const std::vector<std::uint8_t>* writeParse = nullptr;
  };
  // Does the request fill a column default the servers would compute each
  // for itself (serial/identity, DEFAULT now(), gen_random_uuid(), ...)? Asks
  // the authoritative side's catalog (cached a few seconds). False when that
  // side is lost.
  // `query`: a simple Query's analysis (the extended protocol's are in u).
  awaitable<bool> fillsVolatileDefault(int a, const Unit& u,
                                       const protocol::DeterminismAnalysis* query, bool& fills,
                                       std::string& which);
  struct TableTrigger {
    std::string name;
    int events = 0;         // tgtype bits: 4 INSERT, 8 DELETE, 16 UPDATE
    std::string perServer;  // why it would compute values per server; empty: it would not
  };
  struct DefaultsEntry {
    std::chrono::steady_clock::time_point at;
    std::vector<TableColumn> columns;  // in table order; empty: no such table
    std::vector<TableTrigger> triggers;
  };
  // A trigger that fires for one of the request's writes and would compute
  // values per server on the mirror: its description in `which`. False when
  // the authoritative side is lost.
  [[nodiscard]] static std::vector<const protocol::WriteTarget*> writesOf(
      const Unit& u, const protocol::DeterminismAnalysis* query);
  awaitable<bool> perServerTrigger(int a, const Unit& u, const protocol::DeterminismAnalysis* query,
                                   std::string& which);
  int catalogDepth_ = 0;  // tableInfo inside tableInfo (a trigger's target tables)
  // The first error a catalog read met during the current request (runUnit),
  // and what such a read returned (not cached).
  std::optional<protocol::ErrorFields> catalogError_;
  DefaultsEntry uncached_;
  std::unordered_map<std::string, DefaultsEntry> defaults_;
  // The table's columns and triggers as the authoritative side's catalog
  // has them (the name resolved by this session's search_path), cached a few
  // seconds. False when that side is lost.
  awaitable<bool> tableInfo(int a, const std::string& schema, const std::string& table,
                            const DefaultsEntry*& out);
  // mirror.nondeterministic for a request that computes values per server:
  // reject (answered here: `refused` set) or warn (once per fingerprint).
  // False when the session must end.
  awaitable<bool> nondeterministicPolicy(const Unit& u, int a, const std::string& reason,
                                         bool& refused);
  // An INSERT with its per-server values fetched once on the authoritative
  // side and written into both sides' text (proxy/insert_pin.h).
  awaitable<bool> runPinnedInsert(const Unit& u, int a, int m, const InsertPlan& plan,
                                  std::string_view text, bool wrap, char clientTx);
  // The unit's frames with the write's Bind re-pointed to `text`, parsed
  // first under the proxy's own name (Close + Parse lead, answered first).
  [[nodiscard]] std::vector<std::uint8_t> rewrittenExtended(const Unit& u, const std::string& text);
  // The mirror's copy of an extended request with the pinned values.
  [[nodiscard]] std::vector<std::uint8_t> pinnedExtended(const Unit& u, const std::string& value);
  awaitable<bool> mirrorQuery(protocol::Bytes frame);
  awaitable<bool> mirrorExtended(bool ready);
  awaitable<bool> runUnit(const Unit& u);
  awaitable<bool> mirrorCommit(const Unit& u, int a, int m);
  // A side's answer to a commit request (`u`) says it committed.
  [[nodiscard]] static bool commitAnswered(const Unit& u, const Outcome& o);
  // Phase seeding, at a commit that the journal stands in for the target:
  // the transaction so far, with the source's transaction id, written
  // durably before the source commits (`seq` set; 0 when the transaction
  // wrote nothing, or the journal failed and the seed is void). False when
  // the authoritative side is lost.
  awaitable<bool> journalCommit(int a, bool implicit, protocol::Bytes commit,
                                std::uint32_t commitReadies, std::uint64_t& seq);
  // After journalCommit under mirror.mode async: the transaction wrote but
  // the journal could not take it (a write or fsync error).
  bool journalFailed_ = false;
  std::shared_ptr<Journal> journal_;        // while a side is a journal
  std::uint64_t journalSession_ = 0;        // its number in the journal
  std::vector<std::uint8_t> journalBytes_;  // the stream since the last journal transaction
  std::uint32_t journalReadies_ = 0;        // ReadyForQuery answers that stream draws
  // mirror.two_phase_commit: PREPARE TRANSACTION on the mirror, then on the
  // authoritative side; COMMIT PREPARED on the mirror, then the authoritative
  // side. A failing PREPARE on either side leaves nothing committed anywhere.
  enum class TwoPhase : std::uint8_t {
    kCommitted,     // on both (or decided: a mirror that missed COMMIT PREPARED gets it later)
    kMirrorFailed,  // the mirror could not prepare: nothing committed; `why` says
    kRefused,       // the authoritative side could not prepare: `refusal` is the answer
    kLost,          // the authoritative side is gone (the session must end)
  };
  awaitable<TwoPhase> commitTwoPhase(int a, int m, std::optional<protocol::ErrorFields>& refusal,
                                     std::string& why);
  std::uint64_t gidCounter_ = 0;
  awaitable<bool> syncAfterError();
  awaitable<bool> answer(bool ready, char status);
  awaitable<bool> failTransaction(int a);
  // Rolls back the open transaction on the authoritative side (the proxy's
  // wrapper, or a client's whose commit the mirror could not follow); false
  // (the session ended) when that side is lost.
  awaitable<bool> rollBackWrapper(int a);
  // Answers a request with an error without running it anywhere.
  awaitable<bool> refuseUnit(const Unit& u, int a, const protocol::ErrorFields& e);
  struct FailBoth {
    int a, m;
    bool wrap, wrapMirror;
    char clientTx;
    bool ready;
  };
  awaitable<bool> failBoth(FailBoth f, std::string why);
  awaitable<bool> settle(const Unit& u, FailBoth fb, const Outcome& ao, const Outcome& mo,
                         bool mirrored);
  // COPY FROM STDIN (simple Query): to both sides, or (withMirror false, the
  // mirror broken under degrade) to the authoritative side alone.
  awaitable<bool> mirrorCopyIn(const Unit& u, int a, int m, bool withMirror);
  // The client's CopyData up to CopyDone/CopyFail, to the authoritative side
  // and (while it follows) the mirror. False when the session must end.
  awaitable<bool> relayCopyData(int a, int m, bool& toMirror);
  // The mirror failed (lost, or an error the authoritative side did not
  // have): mirror.on_target_error decides.
  void mirrorFailed(int m, labels::MirrorErrorReason reason, const std::string& what);
  void reportDivergence(labels::DivergenceKind kind, std::string_view sql, const Outcome& a,
                        const Outcome& m);
  // The client's answer to one request: held_ then ReadyForQuery(status).
  awaitable<bool> finishUnit(char status);
  void holdError(const protocol::ErrorFields& e);
  awaitable<void> lockstepLost(int idx);

  // forceClose's work, on the session's executor: serverToClient wakes, ends
  // the server session (cancelling a running query) and tells the client.
  void closeNow();
  // Takes the phase barrier before work starts at a transaction boundary;
  // waits while a flip or a pause holds new transactions. False when the
  // session is ending instead.
  awaitable<bool> beginTransaction();
  // beginTransaction's step when the gate is open, without a coroutine.
  bool tryBeginTransaction();
  void endTransaction();

  // Errors to the client: prepared by plain functions, sent by a coroutine
  // without arguments. No temporary ever lives in a co_await expression:
  // GCC 12 destroys such temporaries twice (the proxy crashed on every FATAL).
  void prepareError(const protocol::ErrorFields& e);  // and count it
  void prepareFatal(const char* code, std::string message, std::string detail = {});
  // 57P01 at a graceful shutdown, or for flip.on_timeout: cancel.
  void prepareShutdownFatal();
  awaitable<void> flushError();
  awaitable<bool> writeClient(const std::vector<std::uint8_t>& bytes);

  void onClientFrameForMetrics(char type);
  // Counts queries_total by what the statement does; keeps the extended-
  // protocol statement/portal map.
  void trackStatement(char type, protocol::Bytes body, bool whole);
  [[nodiscard]] protocol::StatementKind classify(std::string_view sql);
  // The statement's classification, from a one-entry memo of this session
  // (an application sends the same few statements over and over) or else
  // from the shared cache, whose shard lock both workers would take.
  const protocol::Classification& classification(std::string_view sql);
  void onReadyForMetrics();

  std::shared_ptr<const Runtime> rt_;
  Registry& registry_;
  PhaseController& phases_;
  std::uint64_t id_;
  bool admitted_;
  asio::any_io_executor ex_;
  Stream client_;
  Upstream up_[2];
  enum class Mode : std::uint8_t { kStream, kLockstep };
  Mode mode_ = Mode::kStream;
  int relay_ = kSourceIdx;  // the side the streaming relay serves
  bool handover_ = false;   // the streaming relay stops for a change of mode or side
  RelayBuffer cbuf_;        // client -> server
  SessionMachine machine_;
  StatementTracker statements_;
  protocol::Classification scratch_;  // reused: a cache hit allocates nothing
  std::string scratchSql_;            // the text scratch_ classifies
  bool scratchValid_ = false;

  std::string user_;
  std::string database_;
  std::string applicationName_;
  std::string clientAddress_;
  std::vector<std::pair<std::string, std::string>> passOn_;  // startup parameters for the server
  std::optional<protocol::BackendKeyData> proxyKey_;
  mutable std::mutex cancelMu_;
  std::vector<CancelTarget> cancelTargets_;  // under cancelMu_

  // Relay coordination (all on the session's executor).
  bool closing_ = false;  // the session is ending; no more errors to the client
  bool clientWriting_ = false;
  bool shutdownRequested_ = false;
  bool forced_ = false;
  bool serverSentFatal_ = false;
  bool startupTimedOut_ = false;  // set by the startup watchdog
  bool flipCancelled_ = false;    // forced_ by cancelForFlip, not by shutdown

  // The phase barrier (proxy/phase.h): held from the first message of a
  // transaction to the ReadyForQuery that ends it.
  bool inTransaction_ = false;
  Phase txPhase_ = Phase::kSourceOnly;
  std::shared_ptr<asio::steady_timer> holdTimer_;  // waiting for the gate to open
  std::vector<std::uint8_t> errorOut_;
  // Lockstep: the authoritative answer held until the mirror has answered;
  // offset of the last frame when it is a completion (CommandComplete,
  // EmptyQueryResponse, ErrorResponse) that must stay held.
  std::vector<std::uint8_t> held_;
  std::size_t heldCompletion_ = static_cast<std::size_t>(-1);
  bool lockstepIdle_ = false;    // waiting for the client at a boundary
  bool clientGone_ = false;      // a write to the client failed: drain, then end
  bool mirrorTimedOut_ = false;  // mirror.timeout passed while waiting for the mirror
  std::array<std::chrono::steady_clock::time_point, 2> sentAt_{};  // per side
  // Extended-protocol messages collected up to Sync (or Flush).
  struct FrameRef {
    char type;
    std::size_t offset;
    std::size_t length;
  };
  std::vector<std::uint8_t> unit_;
  std::vector<FrameRef> unitFrames_;
  bool implicitWrite_ = false;  // a Flush batch wrote in the implicit transaction Sync ends
  bool extSkip_ = false;        // an error in a Flush batch: nothing until Sync
  std::optional<protocol::ErrorFields> pendingFatal_;  // sent by serverToClient as its last word

  // Query timing: send times of requests awaiting ReadyForQuery.
  std::array<std::chrono::steady_clock::time_point, 64> sent_{};
  std::uint32_t sentHead_ = 0, sentCount_ = 0;

  // What info() may read from other threads. user_, applicationName_ and
  // clientAddress_ are written before publicState_ leaves kStartup (release)
  // and read only after (acquire).
  std::atomic<int> publicState_{0};
  std::atomic<char> publicTx_{'I'};
  void publish() {
    publicState_.store(static_cast<int>(machine_.state()), std::memory_order_release);
    publicTx_.store(machine_.transactionStatus(), std::memory_order_relaxed);
  }
};

}  // namespace pghandoff::proxy
