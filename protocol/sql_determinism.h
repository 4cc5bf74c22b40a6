// Determinism analysis: which values a statement computes differently on two
// servers (SPEC §2 "fixed once and applied identically"; DESIGN.md hard problem
// 3), where they are in the text, and what the statement writes. A later step
// pins each value once (on the authoritative side) and rewrites the statement
// for both sides with substitute(). Pure: PostgreSQL's own parser and scanner
// (libpg_query), no hand-written lexing.
//
// Rules (all tested in tests/unit/sql_determinism_test.cpp):
// - Only expressions the statement evaluates now count, the same rule as
//   sql_classify.h: SELECT/VALUES, INSERT/UPDATE/DELETE/MERGE (WHERE, SET, ON
//   CONFLICT DO UPDATE, RETURNING, subqueries, writable CTEs), CREATE TABLE AS /
//   SELECT INTO, EXPLAIN ANALYZE, COPY (query) TO, COPY FROM ... WHERE, DECLARE,
//   EXECUTE/CALL arguments, ALTER TABLE ... ALTER COLUMN TYPE ... USING.
//   Stored expressions (CREATE TABLE ... DEFAULT now(), views, function bodies,
//   SET DEFAULT) are not calls: they are evaluated later, by other statements.
// - Built-in functions count unqualified or qualified with pg_catalog; with any
//   other schema the call is a user function (not reported). Extension
//   functions (uuid-ossp's uuid_generate_v1/v1mc/v4, pgcrypto's gen_random_uuid,
//   gen_random_bytes, gen_salt) count whatever their schema: extensions are
//   installed into user schemas.
// - A call nested inside another reported call (age(now())) is covered by the
//   outer one and not reported: pinning the outer value pins both.
// - 'now'/'today'/'tomorrow'/'yesterday' cast to a date/time type ('now'::date,
//   date 'today', CAST('now' AS timestamptz)): the range covers the string
//   literal only, and the cast stays in the text, so a pinned literal gets the
//   same type, typmod and time zone rules as the original.
// - What cannot be pinned from the text alone goes to `unsupported`, one
//   human-readable reason each (deduplicated): a DO block; CALL (the procedure
//   body); volatile calls in a PREPARE body (evaluated at each EXECUTE, so the
//   caller must refuse or handle the PREPARE: EXECUTE itself is analysed for its
//   arguments only); ALTER TABLE ADD COLUMN with a volatile default or
//   serial/identity (fills existing rows AND stores the default);
//   CREATE MATERIALIZED VIEW over a volatile query (unless WITH NO DATA); a
//   volatile function used as a FROM item; aggregate/window syntax on one;
//   TABLESAMPLE; a bare 'now'/'today' literal whose type only its context
//   knows; random(min, max); per-server values such as txid_current() or
//   pg_backend_pid(). Statements that only store expressions (CREATE TABLE ...
//   DEFAULT now(), CREATE FUNCTION, CREATE VIEW) add nothing: they do not
//   diverge themselves. Functions that are not built-in (user functions, whose
//   volatility is in pg_proc) are Classification::hasUserFunction, not repeated
//   here. Column defaults a write fills in (serial, identity, DEFAULT now()) are
//   invisible in the text: `writes` tells the later step where to look.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace pghandoff::protocol {

// One call whose value differs between two servers, located in the statement text.
struct VolatileCall {
  enum class Kind : std::uint8_t {
    kTransactionTime,  // now(), transaction_timestamp(), CURRENT_TIMESTAMP[(p)], CURRENT_DATE,
                       // CURRENT_TIME[(p)], LOCALTIMESTAMP[(p)], LOCALTIME[(p)], age(ts),
                       // 'now'/'today'/'tomorrow'/'yesterday' cast to a date/time type
    kStatementTime,    // statement_timestamp()
    kClockTime,        // clock_timestamp(), timeofday()
    kRandom,           // random(), random_normal(), gen_random_bytes(), gen_salt()
    kUuid,             // gen_random_uuid(), uuid_generate_v1/v1mc/v4 (uuid-ossp)
    kSequence,         // nextval(); currval()/lastval() too (their value is per server session)
  };
  Kind kind = Kind::kTransactionTime;
  // Lower-case name as PostgreSQL resolves it: "now", "current_timestamp",
  // "nextval", ...; for a literal, the literal's value in quotes: "'now'", "'today'".
  std::string function;
  // Byte range [begin, end) in the analysed text: the function name (schema
  // included) through its closing parenthesis; the SQL keyword and its optional
  // (precision); or the string literal of a 'now'-style cast.
  std::size_t begin = 0;
  std::size_t end = 0;
  // The type to cast a pinned literal to: "timestamptz", "timestamp", "date",
  // "timetz", "time", "text", "double precision", "uuid", "bigint", "interval",
  // "bytea". For CURRENT_TIMESTAMP(p) and friends the precision is part of the
  // type ("timestamptz(3)"), so the pinned value is rounded the way the server
  // would round it. For a 'now'-style literal the cast's own type name.
  std::string type;
  // nextval/currval: the sequence argument's text exactly as written (e.g.
  // "'public.t_id_seq'" or "'t_id_seq'::regclass"); otherwise none.
  std::optional<std::string> argument;

  bool operator==(const VolatileCall&) const = default;
};

[[nodiscard]] const char* toString(VolatileCall::Kind k);

// What a statement writes, for the later step that adds values for column
// defaults (serial, identity, DEFAULT now()), which are invisible in the text.
struct WriteTarget {
  enum class Op : std::uint8_t { kInsert, kUpdate, kDelete, kMerge, kCopyFrom };
  Op op = Op::kInsert;
  std::string schema;  // empty when unqualified
  std::string table;
  // INSERT's explicit column list (empty: all columns in table order); UPDATE's
  // SET targets, in order; COPY FROM's column list.
  std::vector<std::string> columns;
  bool insertSelect = false;   // INSERT ... SELECT (any query source other than plain VALUES)
  std::size_t valuesRows = 0;  // rows of a VALUES list; INSERT ... DEFAULT VALUES is 1 row
  // DEFAULT appears in VALUES (or INSERT ... DEFAULT VALUES), UPDATE SET col =
  // DEFAULT, ON CONFLICT DO UPDATE SET col = DEFAULT, or a MERGE action.
  bool explicitDefault = false;
  bool onConflictNothing = false;
  bool onConflictUpdate = false;
  bool returning = false;  // has its own RETURNING
  // Byte offset just past this statement's last token (comments and the ';'
  // excluded): where " RETURNING ..." can be appended when !returning. For a DML
  // inside a WITH, the end of that inner statement (before the CTE's ')'); for
  // COPY (INSERT ...) TO, before the ')'. 0 for COPY FROM (nothing to append).
  std::size_t statementEnd = 0;
  bool inCte = false;  // inside a WITH (writable CTE)

  bool operator==(const WriteTarget&) const = default;
};

struct DeterminismAnalysis {
  bool parsed = false;              // false: libpg_query rejected the text; nothing else is set
  std::vector<VolatileCall> calls;  // in text order, ranges never overlap
  std::vector<WriteTarget> writes;  // in text order (of the target table's name)
  std::vector<std::string> unsupported;  // why the text alone cannot pin everything (see above)
};

// The shape of a string holding one INSERT (with its WITH clause, if any), for
// rewriting it with explicit values (proxy/insert_pin.h): where each part of the
// text is. Offsets are byte offsets into the analysed text.
struct InsertShape {
  enum class Source : std::uint8_t { kValues, kDefaultValues, kQuery };
  enum class Overriding : std::uint8_t { kNone, kUser, kSystem };
  struct Item {
    std::size_t begin = 0;  // one expression of a VALUES row, [begin, end)
    std::size_t end = 0;
    bool isDefault = false;  // the DEFAULT keyword
    bool operator==(const Item&) const = default;
  };
  bool ok = false;  // false: not one plain INSERT (or not understood); nothing else is set
  std::size_t withBegin = 0;    // the WITH keyword (== insertBegin when there is none)
  std::size_t insertBegin = 0;  // the INSERT keyword
  bool withDml = false;         // a CTE that writes (INSERT/UPDATE/DELETE/MERGE)
  std::string schema;           // the target table as written (schema empty when unqualified)
  std::string table;
  std::size_t targetEnd = 0;  // just past "INSERT INTO name [AS alias]"
  bool columnList = false;
  std::size_t columnListClose = 0;  // the ')' ending the column list
  std::vector<std::string> columns;
  Overriding overriding = Overriding::kNone;
  std::size_t overridingEnd = 0;  // just past OVERRIDING ... VALUE (or columnList/targetEnd)
  Source source = Source::kQuery;
  std::size_t sourceBegin = 0;          // VALUES / DEFAULT VALUES / the query
  std::size_t sourceEnd = 0;            // just past its last token
  std::vector<std::vector<Item>> rows;  // kValues: each row's expressions
  std::vector<std::size_t> rowCloses;   // kValues: each row's ')'
  std::size_t tailBegin = 0;            // ON CONFLICT or RETURNING, else statementEnd
  std::size_t returningBegin = 0;       // the RETURNING keyword, else statementEnd
  std::size_t statementEnd = 0;         // just past the last token (';' excluded)
  std::vector<int> params;              // $n numbers used in [withBegin, sourceEnd), sorted, unique
};

// Never throws; ok == false for anything but a single INSERT statement.
[[nodiscard]] InsertShape analyzeInsert(std::string_view sql);

// A PL/pgSQL trigger function (pg_get_functiondef's CREATE FUNCTION text),
// judged for what a mirror would compute differently when the trigger fires
// on both servers: calls with per-server values (now(), nextval(), random(),
// clock time, uuids), side effects, functions that are not known built-ins,
// dynamic SQL (EXECUTE), and anything that does not parse. `writes` lists the
// tables its statements write (the caller checks their column defaults).
struct TriggerFunctionAnalysis {
  bool perServer = false;
  std::string reason;  // what, when perServer
  std::vector<WriteTarget> writes;
};
[[nodiscard]] TriggerFunctionAnalysis analyzeTriggerFunction(std::string_view createFunction);

// Never throws; any failure (allocation included) yields parsed == false.
// An embedded NUL is a parse failure (a Query/Parse message carries a C string).
[[nodiscard]] DeterminismAnalysis analyzeDeterminism(std::string_view sql);

struct Replacement {
  std::size_t begin = 0;
  std::size_t end = 0;
  std::string text;
};

// Applies non-overlapping replacements (in any order) to `sql`; nullopt if two
// overlap, a range is out of bounds or reversed. Empty ranges are insertions;
// two insertions at one offset are an overlap (their order would be ambiguous).
[[nodiscard]] std::optional<std::string> substitute(std::string_view sql,
                                                    std::vector<Replacement> replacements);

// libpg_query's fingerprint (16 hex digits): equal for texts that differ only in
// literal values, comments or whitespace. For logging divergences without
// literal values. nullopt when the text does not parse.
[[nodiscard]] std::optional<std::string> fingerprint(std::string_view sql);

// A statement's analyses, computed once per text (DESIGN hard problem 2: "analysed
// once, at Parse" — a prepared statement executed a million times is analysed once).
struct StatementAnalysis {
  DeterminismAnalysis determinism;
  InsertShape insert;  // ok only for a single top-level INSERT
};

// Thread-safe, bounded (cleared when full; a workload's hot set refills it);
// texts longer than kMaxCachedSqlBytes are analysed but not kept.
class AnalysisCache {
 public:
  static constexpr std::size_t kMaxCachedSqlBytes = 8 * 1024;
  explicit AnalysisCache(std::size_t capacity = 5000) : capacity_(capacity) {}
  [[nodiscard]] std::shared_ptr<const StatementAnalysis> get(std::string_view sql);

 private:
  // Looked up by string_view: a hit allocates nothing.
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };
  std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<const StatementAnalysis>, Hash, std::equal_to<>>
      map_;
  std::size_t capacity_;
};

}  // namespace pghandoff::protocol
