// Pinning an INSERT (SPEC §2 "fixed once and applied identically"; DESIGN hard
// problem 3): the values an INSERT would compute on each server for itself —
// column defaults it fills (serial, identity, DEFAULT now(), DEFAULT
// gen_random_uuid(), ...) and volatile calls in what it inserts (random(),
// nextval('s'), clock_timestamp(), ...) — are computed once, on the
// authoritative side, inside the statement's own transaction; then BOTH sides
// run the INSERT with those values written in as literals. The technique
// DESIGN.md names ("fetch the values once and send both sides identical
// explicit values"), chosen over pgpool-II's table lock because it also fixes
// uuids, clock time and multi-row/INSERT ... SELECT row order, and costs one
// round trip instead of serialising every inserter.
//
// Two paths:
// - VALUES (and DEFAULT VALUES): the client's text stays as it is; only the
//   DEFAULT items of such columns and the volatile calls inside the rows are
//   replaced by literals, and the defaulted columns the statement leaves out
//   are added to its column list with a literal per row. The authoritative
//   side first runs a parameterless `VALUES ((expr)::text), ...` that computes
//   every value in the order the INSERT would (row by row, left to right).
//   Parameters ($n) and everything else in the text are untouched, so the
//   extended protocol binds the rewritten text with the client's own Bind.
// - A query (INSERT ... SELECT, TABLE, a set operation): its rows are fetched
//   first on the authoritative side (`SELECT src.*, <defaults> FROM (<query>)
//   AS src`), then both sides insert those rows as literals. Bounded (rows and
//   bytes); a writable CTE in its WITH runs there once, and again on the mirror
//   with its own (deterministic) rows.
// Transaction-time calls in a WITH or ON CONFLICT clause are pinned too (one
// value per transaction); other volatile calls there, OVERRIDING USER VALUE,
// and parameters inside a volatile call are not: the caller applies
// mirror.nondeterministic. Calls in RETURNING are left alone (the client gets
// the authoritative side's answer; the mirror's is only compared by its tag).
//
// Sequences: the authoritative side's advance as they would have; the
// mirror's are not used while it mirrors, and are set from the authoritative
// side's at the flip that makes it authoritative (proxy/sequence_sync.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/sql_determinism.h"

namespace pghandoff::proxy {

// One column of the target table, from the authoritative side's catalog.
struct TableColumn {
  std::string name;        // attname
  std::string type;        // format_type(atttypid, atttypmod)
  char identity = 0;       // 'a' GENERATED ALWAYS, 'd' BY DEFAULT, 0 none
  bool generated = false;  // GENERATED ALWAYS AS (...) STORED
  // The default as an expression (pg_get_expr; for an identity column a
  // nextval of its sequence); empty when none.
  std::string defaultExpr;
  bool volatileDefault = false;  // computed per server: serial, identity, now(), uuid, ...
};

struct InsertPlan {
  enum class Path : std::uint8_t { kValues, kQuery };
  Path path = Path::kValues;
  // Runs on the authoritative side first, in the statement's transaction.
  // kValues: one text column, one row per value. kQuery: the source's rows
  // with the added columns' values (and the transaction time last when
  // needsTime).
  std::string prestep;
  bool prestepUsesParams = false;  // kQuery only: references the client's $n

  // --- internal to finish()
  struct Piece {
    std::string text;             // literal text
    std::size_t slot = SIZE_MAX;  // or a prestep value
    std::string cast;             // appended to the slot's literal ("::type")
  };
  struct Edit {
    std::size_t begin = 0;
    std::size_t end = 0;
    std::vector<Piece> pieces;
  };
  std::vector<Edit> edits;  // kValues
  std::size_t slots = 0;    // kValues: values the prestep returns
  // kQuery
  std::vector<std::string> columns;       // the client's list (empty: positional)
  std::vector<std::string> tableColumns;  // in table order (positional lists)
  std::vector<std::string> added;         // defaulted columns added, in prestep order
  std::vector<char> addedIdentity;
  std::string withText;  // [withBegin, insertBegin)
  std::size_t withOffset = 0;
  bool withDml = false;
  std::string head;        // [insertBegin, targetEnd)
  std::string overriding;  // " OVERRIDING SYSTEM VALUE" or ""
  bool anyAlways = false;  // an added column is GENERATED ALWAYS AS IDENTITY
  std::string tail;        // [tailBegin, statementEnd)
  std::size_t tailOffset = 0;
  std::vector<protocol::VolatileCall> timeCalls;  // in WITH/tail: pinned to the time value
  bool needsTime = false;
};

// The plan; or nullopt with `why` (for the refusal message) when the INSERT
// cannot be pinned, or with `none` set when it computes nothing per server
// (outside RETURNING).
[[nodiscard]] std::optional<InsertPlan> planInsert(std::string_view sql,
                                                   const protocol::InsertShape& shape,
                                                   const protocol::DeterminismAnalysis& det,
                                                   const std::vector<TableColumn>& table,
                                                   std::string& why, bool& none);

// The statements the two sides run, with the prestep's answer written in.
struct PinnedTexts {
  std::string authoritative;
  std::string mirror;
};

// kValues: `values` one per slot, in order (NULL as nullopt).
[[nodiscard]] std::optional<PinnedTexts> finishValues(
    std::string_view sql, const InsertPlan& plan,
    const std::vector<std::optional<std::string>>& values);

// kQuery: the prestep's rows and its columns' type OIDs; `timeValue` when
// plan.needsTime (from the last column, or a separate query when no rows).
[[nodiscard]] std::optional<PinnedTexts> finishQuery(
    const InsertPlan& plan, const std::vector<std::vector<std::optional<std::string>>>& rows,
    const std::vector<std::uint32_t>& types, const std::optional<std::string>& timeValue);

// 'text' as an escape string literal E'...' (safe whatever
// standard_conforming_strings says); NULL for nullopt.
[[nodiscard]] std::string sqlLiteral(const std::optional<std::string>& value);
// "name" quoted as an identifier when it needs to be.
[[nodiscard]] std::string sqlIdentifier(std::string_view name);

// The most rows and bytes a query path fetches to pin (past them: the policy).
constexpr std::size_t kMaxPinnedRows = 10000;
constexpr std::size_t kMaxPinnedBytes = 8u << 20;

}  // namespace pghandoff::proxy
