// Statement classification: read, write, transaction control, session state or
// unknown, from PostgreSQL's own grammar (libpg_query), for routing and mirroring
// (DESIGN.md hard problems 2 and 3, SPEC §2).
//
// The text is what a client sends in a Query message ('Q', possibly several
// statements) or a Parse message ('P', one statement, possibly with $n params).
// https://www.postgresql.org/docs/15/protocol-flow.html#PROTOCOL-FLOW-SIMPLE-QUERY
//
// Correctness first: whenever the proxy cannot know what a statement does, the
// answer is kUnknown, which callers must treat as a write.
//
// Choices worth knowing (all tested in tests/unit/sql_classify_test.cpp):
// - A SELECT calling a function that is not a known built-in (pg_catalog with no
//   volatile overload in PostgreSQL 15, or a known harmless volatile one) is
//   kUnknown: its volatility lives in the server's pg_proc, which a proxy cannot
//   see without asking. Schema-qualified calls outside pg_catalog are never
//   assumed built-in. Overload resolution is not modelled (a user function with
//   a built-in's name in search_path is taken for the built-in).
// - Side-effect functions (nextval, setval, currval/lastval (their value is per
//   server session), advisory locks, pg_notify, txid_current, pg_backend_pid,
//   set_config, large objects, ...) make a SELECT a write.
// - SELECT ... FOR UPDATE/SHARE anywhere (also in subqueries) is a write.
// - A writable CTE (INSERT/UPDATE/DELETE/MERGE anywhere inside) is a write;
//   SELECT ... INTO is a write (it creates a table).
// - EXPLAIN without ANALYZE executes nothing: read, no flags. EXPLAIN ANALYZE is
//   classified as the statement it runs.
// - COPY ... FROM is a write; COPY ... TO STDOUT a read (or the kind of its
//   query: COPY (INSERT ... RETURNING) TO STDOUT is a write); COPY TO a server
//   file or PROGRAM is a write (a side effect on the server).
// - Cursors: DECLARE takes the kind of its query (a plain SELECT is a read);
//   FETCH, MOVE and CLOSE are reads. All four set `cursor`: cursor state lives
//   on one server, so a caller must send FETCH/MOVE/CLOSE where it sent the
//   DECLARE. A cursor over a volatile query runs it at FETCH time: callers should
//   remember the DECLARE's classification per portal name.
// - LISTEN/UNLISTEN/NOTIFY are session statements with `listenNotify` set (SPEC
//   §2: they live on the authoritative side). pg_notify() also sets it.
// - EXECUTE (of a PREPAREd statement), CALL and DO are kUnknown: what they run is
//   not in the text. PREPARE and DEALLOCATE are session statements.
// - Flags (side effects, nondeterminism) are collected only from expressions the
//   statement evaluates now: DML, SELECT, COPY, DECLARE, EXECUTE/CALL arguments,
//   CREATE TABLE AS, ALTER TABLE ADD COLUMN / ALTER COLUMN TYPE ... USING. Stored
//   expressions (CREATE TABLE ... DEFAULT now(), CREATE VIEW, SET DEFAULT, a
//   PREPAREd body) are not evaluated, so they set no flag. Column defaults that a
//   write fills in implicitly (serial, DEFAULT now()) are not visible in the text.
// - Every other utility/DDL statement is a write. A parse error is kUnknown with
//   parseError set (libpg_query rejects the whole string, so `statements` is
//   empty). An empty string (or only comments/semicolons) is a read with no
//   statements: PostgreSQL answers it with EmptyQueryResponse.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

namespace pghandoff::protocol {

enum class StatementKind : std::uint8_t { kRead, kWrite, kTransaction, kSession, kUnknown };

// Which transaction-control statement (TransactionStmt.kind): a mirror must
// order COMMIT-like statements differently from the others (DESIGN hard
// problem 4: the mirror commits first).
enum class TxControl : std::uint8_t {
  kNone,
  kBegin,            // BEGIN, START TRANSACTION
  kCommit,           // COMMIT, END (and COMMIT AND CHAIN)
  kRollback,         // ROLLBACK, ABORT
  kSavepoint,        // SAVEPOINT, RELEASE, ROLLBACK TO
  kPrepare,          // PREPARE TRANSACTION
  kCommitPrepared,   // COMMIT PREPARED
  kRollbackPrepared  // ROLLBACK PREPARED
};

[[nodiscard]] const char* toString(StatementKind k);

// The kind that wins when a string holds several statements:
// write > unknown > session > transaction > read.
[[nodiscard]] StatementKind strongest(StatementKind a, StatementKind b);

struct Classification {
  // For a multi-statement string the strongest of `statements`.
  StatementKind kind = StatementKind::kUnknown;
  std::vector<StatementKind> statements;  // one per statement, in order
  bool parseError = false;                // libpg_query could not parse: kind is kUnknown
  // Flags for mirroring (determinism, routing to the authoritative side).
  bool hasSideEffectFunction = false;  // nextval, setval, advisory locks, pg_notify, ...
  bool hasNondeterministic = false;    // now(), current_timestamp, random(), 'now'::date, ...
  bool hasUserFunction = false;        // a call the proxy cannot prove built-in
  bool selectForUpdate = false;        // FOR UPDATE/NO KEY UPDATE/SHARE/KEY SHARE
  bool listenNotify = false;           // LISTEN/UNLISTEN/NOTIFY, pg_notify()
  bool copyFrom = false;
  bool copyTo = false;
  bool cursor = false;  // DECLARE/FETCH/MOVE/CLOSE: state on the server that ran DECLARE
  // The first transaction-control statement of the string (kNone if none).
  TxControl txControl = TxControl::kNone;
  // A statement PostgreSQL refuses inside a transaction block (VACUUM, CREATE
  // INDEX CONCURRENTLY, CREATE/DROP DATABASE, ALTER SYSTEM, ...): a proxy must
  // not wrap it in BEGIN/COMMIT.
  bool noTransactionBlock = false;
  // Every statement is a SELECT whose only effects are on sequences (nextval,
  // setval, currval, lastval) or advisory locks: while two servers are
  // written it runs on the authoritative side alone (SPEC §2: advisory locks
  // live there; its sequences are the ones in use).
  bool authoritativeEffectsOnly = false;

  bool operator==(const Classification&) const = default;
};

// Never throws; a failure of any kind (allocation included) yields kUnknown.
[[nodiscard]] Classification classify(std::string_view sql);

// Thread-safe cache in front of classify(), keyed by the exact statement text:
// pgbench -M extended (and most drivers) send the same unnamed statement text in
// every Parse message, so a hit must be cheap. A hit takes one shard mutex, a
// hash of the text and a copy of the result (use the out-parameter overload to
// reuse a Classification's vector and avoid any allocation).
//
// Bounded: at most `capacity` entries and kMaxCacheBytes of text; a shard that is
// full is cleared (simplest bound; a workload's hot set refills it at once).
// Texts longer than kMaxCachedSqlBytes are classified but not cached (bulk
// INSERTs are rarely repeated verbatim and would evict the hot set).
class ClassificationCache {
 public:
  static constexpr std::size_t kMaxCachedSqlBytes = 8 * 1024;
  static constexpr std::size_t kMaxCacheBytes = 16 * 1024 * 1024;

  explicit ClassificationCache(std::size_t capacity = 10000);
  ~ClassificationCache();
  ClassificationCache(const ClassificationCache&) = delete;
  ClassificationCache& operator=(const ClassificationCache&) = delete;

  [[nodiscard]] Classification get(std::string_view sql);
  // Same as get(), writing into `out` (its vector's capacity is reused).
  void get(std::string_view sql, Classification& out);

  [[nodiscard]] std::size_t size() const;
  [[nodiscard]] std::uint64_t hits() const;
  [[nodiscard]] std::uint64_t misses() const;

 private:
  struct Shard;
  std::unique_ptr<Shard[]> shards_;
  std::size_t shardCount_ = 1;
  std::size_t shardCapacity_ = 0;  // 0: caching disabled
  std::size_t shardBytes_ = 0;
};

}  // namespace pghandoff::protocol
