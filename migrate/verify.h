// The pure parts of `pghandoff verify` (SPEC §3): diffing two schema
// descriptions, diffing two lists of row hashes, and the SQL that chunks a
// table by its primary key. No database here, so all of it is unit-tested
// alone; migrate/verify.cpp reads the catalogs and runs the SQL.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace pghandoff::migrate::verify {

// One finding. kind: "schema", "row", "count" or "sequence". object is the
// qualified name of what differs ("public.t", "public.t_x_idx"), detail the
// readable sentence the report prints, key the row's key for a row
// difference ("(id)=(42)"; the row's text for a table without a primary key).
struct Difference {
  std::string kind;
  std::string object;
  std::string detail;
  std::string key;
  bool operator==(const Difference&) const = default;
};

// ---------------------------------------------------------------- schema

struct ColumnDesc {
  std::string name;
  std::string type;  // format_type()
  bool notNull = false;
  std::string defaultExpr;  // pg_get_expr(adbin); "" for none (also the generation expression)
  char identity = 0;        // attidentity: 'a' always, 'd' by default, 0 none
  char generated = 0;       // attgenerated: 's' stored, 0 none
  bool operator==(const ColumnDesc&) const = default;
};

struct TableDesc {
  std::vector<ColumnDesc> columns;  // attnum order
  bool partitioned = false;         // relkind 'p': has no rows of its own
};

struct IndexDesc {
  std::string table;  // "schema.table" it belongs to
  std::string def;    // normaliseIndexDef(pg_get_indexdef())
};

struct ConstraintDesc {
  std::string table;  // "schema.table"
  std::string name;   // conname (unique per table, not per schema)
  std::string def;    // pg_get_constraintdef(), foreign keys included
};

struct SequenceDesc {
  std::string type;  // format_type(seqtypid)
  std::int64_t increment = 1;
  std::int64_t min = 0;
  std::int64_t max = 0;
  bool cycle = false;
  std::string ownerTable;  // "schema.table" of an OWNED BY/identity column, "" when none
  bool operator==(const SequenceDesc& o) const {
    return type == o.type && increment == o.increment && min == o.min && max == o.max &&
           cycle == o.cycle;
  }
};

// One side's user schemas. Map keys are the display names: "schema.table",
// "schema.index", "schema.table.constraint", "schema.sequence", extension name.
struct SchemaDesc {
  std::map<std::string, TableDesc> tables;
  std::map<std::string, IndexDesc> indexes;
  std::map<std::string, ConstraintDesc> constraints;
  std::map<std::string, SequenceDesc> sequences;
  std::map<std::string, std::string> extensions;  // name -> version
};

// Every difference between the two, as kind "schema". Objects of a table
// that exists on one side only (its columns, indexes, constraints, owned
// sequences) are not listed again: the table's own line says it.
[[nodiscard]] std::vector<Difference> diffSchemas(const SchemaDesc& source,
                                                  const SchemaDesc& target);

// pg_get_indexdef() names the table schema-qualified or not depending on the
// search_path; the index name is the map key. Both are reduced to one form:
// "<UNIQUE >INDEX ON <table> USING ..." with the table as given.
[[nodiscard]] std::string normaliseIndexDef(const std::string& def, const std::string& schema,
                                            const std::string& table);

// ---------------------------------------------------------------- rows

// One row of a chunk: its primary key's values as text, and md5(row::text).
struct RowHash {
  std::vector<std::string> key;
  std::string hash;
};

enum class RowDiffKind { kDiffers, kMissingOnTarget, kExtraOnTarget };

struct RowDiff {
  RowDiffKind kind;
  std::vector<std::string> key;
  bool operator==(const RowDiff&) const = default;
};

// Rows whose hash differs, rows only on the source (missing on target), rows
// only on the target (extra). Source rows in their order, then target extras
// in theirs.
[[nodiscard]] std::vector<RowDiff> diffRowHashes(const std::vector<RowHash>& source,
                                                 const std::vector<RowHash>& target);

// Tables without a primary key: multisets of row hashes (hash -> copies).
// positive delta: that many copies missing on target; negative: extra.
struct MultisetDiff {
  std::string hash;
  std::int64_t delta;
  bool operator==(const MultisetDiff&) const = default;
};
[[nodiscard]] std::vector<MultisetDiff> diffMultisets(
    const std::map<std::string, std::int64_t>& source,
    const std::map<std::string, std::int64_t>& target);

// "(id)=(42)", "(a, b)=(1, x)": the way PostgreSQL prints a key in an error.
[[nodiscard]] std::string formatKey(const std::vector<std::string>& columns,
                                    const std::vector<std::string>& values);
// The sentence for a row difference: "row (id)=(42) differs".
[[nodiscard]] std::string describeRowDiff(const std::vector<std::string>& keyColumns,
                                          const RowDiff& d);

// ---------------------------------------------------------------- chunk SQL

// What the data comparison needs of a table. Columns are the ones present on
// both sides, in the source's order, so the row text is built alike on both.
struct TableShape {
  std::string schema;
  std::string name;
  std::vector<std::string> columns;
  std::vector<std::string> keyColumns;  // primary key, in index order; empty = none
  std::vector<std::string> keyTypes;    // format_type() of each, for the parameter casts
};

// The expression md5 is taken of: ROW(r."a", r."b")::text over alias r.
[[nodiscard]] std::string rowTextExpr(const TableShape& t);
// Chunk boundaries on the source: the key (as text, one column per key
// column) of every chunkRows-th row in key order.
[[nodiscard]] std::string boundariesSql(const TableShape& t, std::int64_t chunkRows);
// The range of a chunk: key > lower ($1..$k) and key <= upper (next k
// parameters); either bound may be absent (first and last chunk). "" if both are.
[[nodiscard]] std::string rangePredicate(const TableShape& t, bool lower, bool upper);
// count(*) and the sum of a 64-bit slice of md5(row text) (order-independent),
// both as text, over a chunk's range.
[[nodiscard]] std::string chunkChecksumSql(const TableShape& t, bool lower, bool upper);
// Key columns as text and md5(row text) of every row in a chunk's range, in key order.
[[nodiscard]] std::string chunkRowsSql(const TableShape& t, bool lower, bool upper);
// Tables without a key: md5(row text) and its number of copies.
[[nodiscard]] std::string multisetSql(const TableShape& t);
// The row text of the rows whose md5 is in $1 (a text[] literal), one per hash.
[[nodiscard]] std::string rowsByHashSql(const TableShape& t);

// ---------------------------------------------------------------- sequences

// Whether a sequence's next value would collide with a value already in the
// column: next = last_value (+ increment once is_called) must be above the
// column's max (below its min for a descending sequence). Empty column: fine.
[[nodiscard]] bool sequenceBehind(std::int64_t lastValue, bool isCalled, std::int64_t increment,
                                  std::optional<std::int64_t> columnMax,
                                  std::optional<std::int64_t> columnMin);

// Authoritative side of a phase name (SPEC §1): "source", "target", or ""
// for an unknown phase.
[[nodiscard]] std::string authoritativeSide(const std::string& phase);

// JSON string escaping for the --json report.
[[nodiscard]] std::string jsonString(const std::string& s);

}  // namespace pghandoff::migrate::verify
