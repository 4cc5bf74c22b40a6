// pghandoff verify (SPEC §3): schema and data of both sides compared on one
// consistent cut. The cut: while the proxy holds new transactions (POST
// /pause, in-flight ones drained), each side exports a REPEATABLE READ
// snapshot, then the proxy resumes at once; the worker sessions adopt those
// snapshots (SET TRANSACTION SNAPSHOT) and compare while traffic flows.
//
// Data: every table chunked by primary key on the source (every
// --chunk-rows-th key), each chunk's count and order-independent hash (a sum
// of 64-bit slices of md5(row text)) taken on both sides at once, differing
// chunks narrowed down to their rows. Tables without a primary key compare
// multisets of row hashes.
#include "migrate/verify.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <functional>
#include <iterator>
#include <limits>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <string_view>
#include <thread>
#include <utility>

#include "migrate/admin_client.h"
#include "migrate/cli_support.h"
#include "migrate/commands.h"
#include "migrate/pg.h"
#include "proxy/admin.h"

namespace pghandoff::migrate {

namespace verify {

// ================================================================ pure parts

namespace {

void addSchema(std::vector<Difference>& out, const std::string& object, std::string detail) {
  out.push_back(Difference{"schema", object, std::move(detail), ""});
}

std::string identityText(char c) {
  if (c == 'a') return "identity always";
  if (c == 'd') return "identity by default";
  return "no identity";
}

std::string defaultText(const ColumnDesc& c) {
  if (c.generated == 's') return "generated always as (" + c.defaultExpr + ") stored";
  if (c.defaultExpr.empty()) return "no default";
  return "default " + c.defaultExpr;
}

const ColumnDesc* findColumn(const std::vector<ColumnDesc>& cols, const std::string& name) {
  for (const auto& c : cols) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

// Skips one identifier (plain or double-quoted) at s[i]; returns the index after it.
std::size_t skipIdent(const std::string& s, std::size_t i) {
  if (i < s.size() && s[i] == '"') {
    ++i;
    while (i < s.size()) {
      if (s[i] == '"') {
        if (i + 1 < s.size() && s[i + 1] == '"') {
          i += 2;
          continue;
        }
        return i + 1;
      }
      ++i;
    }
    return i;
  }
  while (i < s.size() && s[i] != ' ' && s[i] != '.' && s[i] != '(') ++i;
  return i;
}

bool startsWith(const std::string& s, std::size_t at, std::string_view prefix) {
  return s.compare(at, prefix.size(), prefix) == 0;
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (i > 0) out += sep;
    out += parts[i];
  }
  return out;
}

std::string keyTuple(const TableShape& t) {
  std::vector<std::string> cols;
  for (const auto& k : t.keyColumns) cols.push_back("r." + quoteIdent(k));
  if (cols.size() == 1) return cols[0];
  return "(" + join(cols, ", ") + ")";
}

std::string paramTuple(const TableShape& t, int first) {
  std::vector<std::string> ps;
  for (std::size_t i = 0; i < t.keyColumns.size(); ++i) {
    ps.push_back("$" + std::to_string(first + static_cast<int>(i)) + "::" + t.keyTypes[i]);
  }
  if (ps.size() == 1) return ps[0];
  return "(" + join(ps, ", ") + ")";
}

std::string keyOrder(const TableShape& t) {
  std::vector<std::string> cols;
  for (const auto& k : t.keyColumns) cols.push_back("r." + quoteIdent(k));
  return join(cols, ", ");
}

std::string fromClause(const TableShape& t) {
  return " FROM " + qualified(t.schema, t.name) + " AS r";
}

}  // namespace

std::string normaliseIndexDef(const std::string& def, const std::string& /*schema*/,
                              const std::string& table) {
  // CREATE [UNIQUE] INDEX name ON [ONLY] [schema.]table USING method (...)
  std::size_t i = 0;
  std::string out;
  if (startsWith(def, i, "CREATE ")) i += 7;
  if (startsWith(def, i, "UNIQUE ")) {
    out += "UNIQUE ";
    i += 7;
  }
  if (!startsWith(def, i, "INDEX ")) return def;  // not a form we know: compare as is
  i += 6;
  if (startsWith(def, i, "CONCURRENTLY ")) i += 13;
  i = skipIdent(def, i);
  if (!startsWith(def, i, " ON ")) return def;
  i += 4;
  out += "INDEX ON ";
  if (startsWith(def, i, "ONLY ")) {
    out += "ONLY ";
    i += 5;
  }
  i = skipIdent(def, i);
  if (i < def.size() && def[i] == '.') i = skipIdent(def, i + 1);
  out += table;
  out += def.substr(i);
  return out;
}

std::vector<Difference> diffSchemas(const SchemaDesc& s, const SchemaDesc& t) {
  std::vector<Difference> out;
  for (const auto& [name, st] : s.tables) {
    auto it = t.tables.find(name);
    if (it == t.tables.end()) {
      addSchema(out, name, "table " + name + " missing on target");
      continue;
    }
    const auto& tcols = it->second.columns;
    for (const auto& c : st.columns) {
      const std::string obj = name + "." + c.name;
      const ColumnDesc* tc = findColumn(tcols, c.name);
      if (tc == nullptr) {
        addSchema(out, obj, "column " + obj + " missing on target");
        continue;
      }
      if (c.type != tc->type) {
        addSchema(out, obj,
                  "column " + obj + " type " + c.type + " on source, " + tc->type + " on target");
      }
      if (c.notNull != tc->notNull) {
        addSchema(out, obj,
                  "column " + obj + " " + (c.notNull ? "NOT NULL" : "nullable") + " on source, " +
                      (tc->notNull ? "NOT NULL" : "nullable") + " on target");
      }
      if (c.generated != tc->generated || c.defaultExpr != tc->defaultExpr) {
        addSchema(out, obj,
                  "column " + obj + " " + defaultText(c) + " on source, " + defaultText(*tc) +
                      " on target");
      }
      if (c.identity != tc->identity) {
        addSchema(out, obj,
                  "column " + obj + " " + identityText(c.identity) + " on source, " +
                      identityText(tc->identity) + " on target");
      }
    }
    for (const auto& c : tcols) {
      if (findColumn(st.columns, c.name) == nullptr) {
        const std::string obj = name + "." + c.name;
        addSchema(out, obj, "column " + obj + " extra on target");
      }
    }
  }
  for (const auto& [name, tt] : t.tables) {
    if (s.tables.count(name) == 0) addSchema(out, name, "table " + name + " extra on target");
  }
  // A table on one side only was said once; its parts are not listed again.
  auto onBoth = [&](const std::string& table) {
    return table.empty() || (s.tables.count(table) != 0 && t.tables.count(table) != 0);
  };

  for (const auto& [name, si] : s.indexes) {
    auto it = t.indexes.find(name);
    if (it == t.indexes.end()) {
      if (onBoth(si.table)) addSchema(out, name, "index " + name + " missing on target");
    } else if (si.def != it->second.def || si.table != it->second.table) {
      addSchema(
          out, name,
          "index " + name + " differs: " + si.def + " on source, " + it->second.def + " on target");
    }
  }
  for (const auto& [name, ti] : t.indexes) {
    if (s.indexes.count(name) == 0 && onBoth(ti.table)) {
      addSchema(out, name, "index " + name + " extra on target");
    }
  }

  for (const auto& [key, sc] : s.constraints) {
    const std::string what = "constraint " + sc.name + " on " + sc.table;
    auto it = t.constraints.find(key);
    if (it == t.constraints.end()) {
      if (onBoth(sc.table)) addSchema(out, sc.table, what + " missing on target");
    } else if (sc.def != it->second.def) {
      addSchema(out, sc.table,
                what + " differs: " + sc.def + " on source, " + it->second.def + " on target");
    }
  }
  for (const auto& [key, tc] : t.constraints) {
    if (s.constraints.count(key) == 0 && onBoth(tc.table)) {
      addSchema(out, tc.table, "constraint " + tc.name + " on " + tc.table + " extra on target");
    }
  }

  for (const auto& [name, sq] : s.sequences) {
    auto it = t.sequences.find(name);
    if (it == t.sequences.end()) {
      if (onBoth(sq.ownerTable)) addSchema(out, name, "sequence " + name + " missing on target");
      continue;
    }
    const auto& tq = it->second;
    auto field = [&](const std::string& what, const std::string& a, const std::string& b) {
      if (a != b) {
        addSchema(out, name,
                  "sequence " + name + " " + what + " " + a + " on source, " + b + " on target");
      }
    };
    field("type", sq.type, tq.type);
    field("increment", std::to_string(sq.increment), std::to_string(tq.increment));
    field("minvalue", std::to_string(sq.min), std::to_string(tq.min));
    field("maxvalue", std::to_string(sq.max), std::to_string(tq.max));
    field("cycle", sq.cycle ? "on" : "off", tq.cycle ? "on" : "off");
  }
  for (const auto& [name, tq] : t.sequences) {
    if (s.sequences.count(name) == 0 && onBoth(tq.ownerTable)) {
      addSchema(out, name, "sequence " + name + " extra on target");
    }
  }

  for (const auto& [name, version] : s.extensions) {
    auto it = t.extensions.find(name);
    if (it == t.extensions.end()) {
      addSchema(out, name, "extension " + name + " missing on target");
    } else if (it->second != version) {
      addSchema(
          out, name,
          "extension " + name + " version " + version + " on source, " + it->second + " on target");
    }
  }
  for (const auto& [name, version] : t.extensions) {
    if (s.extensions.count(name) == 0) {
      addSchema(out, name, "extension " + name + " extra on target");
    }
  }
  return out;
}

std::vector<RowDiff> diffRowHashes(const std::vector<RowHash>& source,
                                   const std::vector<RowHash>& target) {
  std::map<std::vector<std::string>, const std::string*> onTarget;
  for (const auto& r : target) onTarget.emplace(r.key, &r.hash);
  std::set<std::vector<std::string>> seen;
  std::vector<RowDiff> out;
  for (const auto& r : source) {
    seen.insert(r.key);
    auto it = onTarget.find(r.key);
    if (it == onTarget.end()) {
      out.push_back(RowDiff{RowDiffKind::kMissingOnTarget, r.key});
    } else if (*it->second != r.hash) {
      out.push_back(RowDiff{RowDiffKind::kDiffers, r.key});
    }
  }
  for (const auto& r : target) {
    if (seen.count(r.key) == 0) out.push_back(RowDiff{RowDiffKind::kExtraOnTarget, r.key});
  }
  return out;
}

std::vector<MultisetDiff> diffMultisets(const std::map<std::string, std::int64_t>& source,
                                        const std::map<std::string, std::int64_t>& target) {
  std::vector<MultisetDiff> out;
  auto s = source.begin();
  auto t = target.begin();
  while (s != source.end() || t != target.end()) {
    if (t == target.end() || (s != source.end() && s->first < t->first)) {
      if (s->second != 0) out.push_back(MultisetDiff{s->first, s->second});
      ++s;
    } else if (s == source.end() || t->first < s->first) {
      if (t->second != 0) out.push_back(MultisetDiff{t->first, -t->second});
      ++t;
    } else {
      if (s->second != t->second) out.push_back(MultisetDiff{s->first, s->second - t->second});
      ++s;
      ++t;
    }
  }
  return out;
}

std::string formatKey(const std::vector<std::string>& columns,
                      const std::vector<std::string>& values) {
  return "(" + join(columns, ", ") + ")=(" + join(values, ", ") + ")";
}

std::string describeRowDiff(const std::vector<std::string>& keyColumns, const RowDiff& d) {
  const std::string key = formatKey(keyColumns, d.key);
  switch (d.kind) {
    case RowDiffKind::kDiffers:
      return "row " + key + " differs";
    case RowDiffKind::kMissingOnTarget:
      return "row " + key + " missing on target";
    case RowDiffKind::kExtraOnTarget:
      return "row " + key + " extra on target";
  }
  return "row " + key;
}

std::string rowTextExpr(const TableShape& t) {
  std::vector<std::string> cols;
  for (const auto& c : t.columns) cols.push_back("r." + quoteIdent(c));
  return "ROW(" + join(cols, ", ") + ")::text";
}

std::string boundariesSql(const TableShape& t, std::int64_t chunkRows) {
  std::vector<std::string> sel, outer;
  for (std::size_t i = 0; i < t.keyColumns.size(); ++i) {
    sel.push_back("r." + quoteIdent(t.keyColumns[i]) + "::text AS k" + std::to_string(i));
    outer.push_back("w.k" + std::to_string(i));
  }
  return "SELECT " + join(outer, ", ") + " FROM (SELECT " + join(sel, ", ") +
         ", row_number() OVER (ORDER BY " + keyOrder(t) + ") AS rn" + fromClause(t) +
         ") AS w WHERE w.rn % " + std::to_string(std::max<std::int64_t>(chunkRows, 1)) +
         " = 0 ORDER BY w.rn";
}

std::string rangePredicate(const TableShape& t, bool lower, bool upper) {
  std::string out;
  int next = 1;
  if (lower) {
    out += keyTuple(t) + " > " + paramTuple(t, next);
    next += static_cast<int>(t.keyColumns.size());
  }
  if (upper) {
    if (!out.empty()) out += " AND ";
    out += keyTuple(t) + " <= " + paramTuple(t, next);
  }
  return out;
}

namespace {
std::string whereRange(const TableShape& t, bool lower, bool upper) {
  std::string p = rangePredicate(t, lower, upper);
  return p.empty() ? "" : " WHERE " + p;
}
std::string md5Row(const TableShape& t) {
  return "md5(" + rowTextExpr(t) + ")";
}
}  // namespace

std::string chunkChecksumSql(const TableShape& t, bool lower, bool upper) {
  // sum(bigint) is numeric: no overflow. The first 16 hex digits of the md5
  // as a signed 64-bit integer.
  return "SELECT count(*)::text, coalesce(sum(('x' || substr(" + md5Row(t) +
         ", 1, 16))::bit(64)::bigint), 0)::text" + fromClause(t) + whereRange(t, lower, upper);
}

std::string chunkRowsSql(const TableShape& t, bool lower, bool upper) {
  std::vector<std::string> sel;
  for (const auto& k : t.keyColumns) sel.push_back("r." + quoteIdent(k) + "::text");
  sel.push_back(md5Row(t));
  return "SELECT " + join(sel, ", ") + fromClause(t) + whereRange(t, lower, upper) + " ORDER BY " +
         keyOrder(t);
}

std::string multisetSql(const TableShape& t) {
  return "SELECT " + md5Row(t) + " AS h, count(*)" + fromClause(t) + " GROUP BY 1";
}

std::string rowsByHashSql(const TableShape& t) {
  return "SELECT w.h, min(w.t) FROM (SELECT " + md5Row(t) + " AS h, " + rowTextExpr(t) + " AS t" +
         fromClause(t) + ") AS w WHERE w.h = ANY($1::text[]) GROUP BY w.h ORDER BY 2";
}

bool sequenceBehind(std::int64_t lastValue, bool isCalled, std::int64_t increment,
                    std::optional<std::int64_t> columnMax, std::optional<std::int64_t> columnMin) {
  constexpr auto kMax = std::numeric_limits<std::int64_t>::max();
  constexpr auto kMin = std::numeric_limits<std::int64_t>::min();
  if (increment >= 0) {
    if (!columnMax) return false;
    if (!isCalled) return lastValue <= *columnMax;
    if (lastValue > kMax - increment) return false;  // next would overflow: past any value
    return lastValue + increment <= *columnMax;
  }
  if (!columnMin) return false;
  if (!isCalled) return lastValue >= *columnMin;
  if (lastValue < kMin - increment) return false;
  return lastValue + increment >= *columnMin;
}

std::string authoritativeSide(const std::string& phase) {
  if (phase == "source-only" || phase == "seeding" || phase == "mirror" ||
      phase == "mirror-read-target") {
    return "source";
  }
  if (phase == "reverse-mirror" || phase == "target-only") return "target";
  return "";
}

std::string jsonString(const std::string& s) {
  return "\"" + proxy::jsonEscape(s) + "\"";
}

}  // namespace verify

// ================================================================ the command

namespace {

using namespace verify;
using Clock = std::chrono::steady_clock;
using Params = std::vector<std::optional<std::string>>;

constexpr std::size_t kMaxRowsPrinted = 20;     // per table
constexpr std::size_t kMaxChunksNarrowed = 20;  // per table
constexpr std::size_t kMaxRowText = 300;        // characters of a keyless row shown

double msSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

std::string fmtMs(double ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", ms);
  return buf;
}

// The same output settings on both sides, so that a row's text is the same
// wherever it is stored; search_path pg_catalog so that the catalog
// functions qualify every name alike. No timeouts: a long chunk must not be
// cancelled, and the exporting sessions sit idle in their transactions.
constexpr const char* kSessionSettings =
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; "
    "SET extra_float_digits = 3; SET bytea_output = 'hex'; SET search_path = pg_catalog; "
    "SET statement_timeout = 0; SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0";
constexpr const char* kBeginCut = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

PgConn openSide(const std::string& url, const std::string& side) {
  PgConn c = PgConn::open(url, side, "pghandoff verify");
  c.exec(kSessionSettings);
  return c;
}

std::string trimmed(const char* s) {
  std::string out = s == nullptr ? "" : s;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// Asynchronous send and collect, so one worker keeps both servers busy.
void sendQuery(PgConn& c, const std::string& sql, const Params& params) {
  int ok = 0;
  if (params.empty()) {
    ok = PQsendQuery(c.raw(), sql.c_str());
  } else {
    std::vector<const char*> values;
    values.reserve(params.size());
    for (const auto& p : params) values.push_back(p ? p->c_str() : nullptr);
    ok = PQsendQueryParams(c.raw(), sql.c_str(), static_cast<int>(values.size()), nullptr,
                           values.data(), nullptr, nullptr, 0);
  }
  if (ok == 0) throw PgError(c.side() + " server: " + trimmed(PQerrorMessage(c.raw())), "08006");
}

PgResult collect(PgConn& c) {
  PgResult last;
  std::optional<PgError> error;
  while (PGresult* raw = PQgetResult(c.raw())) {
    PgResult r(raw);
    const auto st = PQresultStatus(raw);
    if (st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE) {
      if (!error) {
        const char* state = PQresultErrorField(raw, PG_DIAG_SQLSTATE);
        error.emplace(c.side() + " server: " + trimmed(PQresultErrorMessage(raw)),
                      state == nullptr ? "" : state);
      }
    } else {
      last = r;
    }
  }
  if (!error && PQstatus(c.raw()) != CONNECTION_OK) {
    error.emplace(c.side() + " server: connection lost: " + trimmed(PQerrorMessage(c.raw())),
                  "08006");
  }
  if (error) throw *error;
  return last;
}

struct Pair {
  PgResult source, target;
};

// The two statements may differ (a snapshot id per side); usually they are one.
Pair execBoth(PgConn& s, PgConn& t, const std::string& sqlS, const std::string& sqlT,
              const Params& ps, const Params& pt) {
  sendQuery(s, sqlS, ps);
  try {
    sendQuery(t, sqlT, pt);
  } catch (...) {
    try {
      (void)collect(s);
    } catch (...) {
    }
    throw;
  }
  Pair out;
  std::exception_ptr first;
  try {
    out.source = collect(s);
  } catch (...) {
    first = std::current_exception();
  }
  try {
    out.target = collect(t);
  } catch (...) {
    if (!first) first = std::current_exception();
  }
  if (first) std::rethrow_exception(first);
  return out;
}

Pair execBoth(PgConn& s, PgConn& t, const std::string& sql, const Params& ps, const Params& pt) {
  return execBoth(s, t, sql, sql, ps, pt);
}

struct Worker {
  PgConn source, target;
};

// fn(worker, i) for i in [0, count) over the workers' threads; the first
// exception stops the others and is rethrown.
void parallelFor(std::vector<Worker>& workers, std::size_t count,
                 const std::function<void(Worker&, std::size_t)>& fn) {
  if (count == 0) return;
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex mu;
  auto loop = [&](Worker& w) {
    for (;;) {
      if (failed.load()) return;
      const std::size_t i = next.fetch_add(1);
      if (i >= count) return;
      try {
        fn(w, i);
      } catch (...) {
        std::lock_guard lock(mu);
        if (!error) error = std::current_exception();
        failed.store(true);
        return;
      }
    }
  };
  const std::size_t n = std::min(workers.size(), count);
  std::vector<std::thread> threads;
  for (std::size_t k = 1; k < n; ++k) threads.emplace_back(loop, std::ref(workers[k]));
  loop(workers[0]);
  for (auto& th : threads) th.join();
  if (error) std::rethrow_exception(error);
}

// fn(worker) once per worker, each on its own thread.
void forEachWorker(std::vector<Worker>& workers, const std::function<void(Worker&)>& fn) {
  std::vector<std::exception_ptr> errors(workers.size());
  std::vector<std::thread> threads;
  for (std::size_t k = 0; k < workers.size(); ++k) {
    threads.emplace_back([&, k] {
      try {
        fn(workers[k]);
      } catch (...) {
        errors[k] = std::current_exception();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

// ---------------------------------------------------------------- catalogs

std::string userSchemas(const std::string& alias) {
  return alias + ".nspname NOT IN ('pg_catalog', 'information_schema', 'pghandoff') AND " + alias +
         ".nspname NOT LIKE 'pg\\_toast%' AND " + alias + ".nspname NOT LIKE 'pg\\_temp%'";
}

struct SequenceFeed {
  std::string sequence;  // "schema.seq"
  std::string seqSchema, seqName;
  std::string table;  // "schema.table"
  std::string tableSchema, tableName, column;
  std::int64_t increment = 1;
};

struct Catalog {
  SchemaDesc desc;
  std::map<std::string, std::pair<std::string, std::string>>
      tableNames;  // display -> (schema, name)
  std::map<std::string, std::vector<std::pair<std::string, std::string>>> primaryKeys;  // col, type
  std::vector<SequenceFeed> feeds;
};

using Wanted = std::function<bool(const std::string&)>;

Catalog readCatalog(PgConn& c, const Wanted& wanted, bool withExtensions) {
  Catalog cat;
  auto tables = c.exec(
      "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
      "ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND " +
      userSchemas("n"));
  for (int i = 0; i < tables.rows(); ++i) {
    const std::string name = tables.get(i, 0) + "." + tables.get(i, 1);
    if (!wanted(name)) continue;
    cat.desc.tables[name].partitioned = tables.get(i, 2) == "p";
    cat.tableNames[name] = {tables.get(i, 0), tables.get(i, 1)};
  }
  auto cols = c.exec(
      "SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), "
      "a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated "
      "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
      "JOIN pg_namespace n ON n.oid = c.relnamespace "
      "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
      "WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p') AND " +
      userSchemas("n") + " ORDER BY n.nspname, c.relname, a.attnum");
  for (int i = 0; i < cols.rows(); ++i) {
    auto it = cat.desc.tables.find(cols.get(i, 0) + "." + cols.get(i, 1));
    if (it == cat.desc.tables.end()) continue;
    ColumnDesc col;
    col.name = cols.get(i, 2);
    col.type = cols.get(i, 3);
    col.notNull = cols.getBool(i, 4);
    col.defaultExpr = cols.get(i, 5);
    const std::string ident = cols.get(i, 6), gen = cols.get(i, 7);
    col.identity = ident.empty() ? 0 : ident[0];
    col.generated = gen.empty() ? 0 : gen[0];
    it->second.columns.push_back(std::move(col));
  }
  auto pks = c.exec(
      "SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod) "
      "FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
      "JOIN pg_namespace n ON n.oid = c.relnamespace "
      "CROSS JOIN LATERAL generate_series(0, i.indnkeyatts - 1) AS k(pos) "
      "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[k.pos] "
      "WHERE i.indisprimary AND c.relkind = 'r' AND " +
      userSchemas("n") + " ORDER BY n.nspname, c.relname, k.pos");
  for (int i = 0; i < pks.rows(); ++i) {
    const std::string name = pks.get(i, 0) + "." + pks.get(i, 1);
    if (!wanted(name)) continue;
    cat.primaryKeys[name].emplace_back(pks.get(i, 2), pks.get(i, 3));
  }
  auto idx = c.exec(
      "SELECT n.nspname, ci.relname, ct.relname, pg_get_indexdef(i.indexrelid) "
      "FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid "
      "JOIN pg_class ct ON ct.oid = i.indrelid JOIN pg_namespace n ON n.oid = ct.relnamespace "
      "WHERE ct.relkind IN ('r', 'p') AND " +
      userSchemas("n"));
  for (int i = 0; i < idx.rows(); ++i) {
    const std::string table = idx.get(i, 0) + "." + idx.get(i, 2);
    if (!wanted(table)) continue;
    cat.desc.indexes[idx.get(i, 0) + "." + idx.get(i, 1)] =
        IndexDesc{table, normaliseIndexDef(idx.get(i, 3), idx.get(i, 0), table)};
  }
  auto cons = c.exec(
      "SELECT n.nspname, c.relname, con.conname, pg_get_constraintdef(con.oid) "
      "FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid "
      "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND " +
      userSchemas("n"));
  for (int i = 0; i < cons.rows(); ++i) {
    const std::string table = cons.get(i, 0) + "." + cons.get(i, 1);
    if (!wanted(table)) continue;
    cat.desc.constraints[table + "." + cons.get(i, 2)] =
        ConstraintDesc{table, cons.get(i, 2), cons.get(i, 3)};
  }
  auto seqs = c.exec(
      "SELECT n.nspname, c.relname, format_type(s.seqtypid, NULL), s.seqincrement, s.seqmin, "
      "s.seqmax, s.seqcycle, (SELECT tn.nspname || '.' || t.relname FROM pg_depend d "
      "JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace "
      "WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid "
      "AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') LIMIT 1) "
      "FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid "
      "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE " +
      userSchemas("n"));
  for (int i = 0; i < seqs.rows(); ++i) {
    const std::string name = seqs.get(i, 0) + "." + seqs.get(i, 1);
    SequenceDesc d;
    d.type = seqs.get(i, 2);
    d.increment = seqs.getInt(i, 3);
    d.min = seqs.getInt(i, 4);
    d.max = seqs.getInt(i, 5);
    d.cycle = seqs.getBool(i, 6);
    d.ownerTable = seqs.get(i, 7);
    if (!wanted(d.ownerTable.empty() ? name : d.ownerTable)) continue;
    cat.desc.sequences[name] = d;
  }
  if (withExtensions) {
    auto ext = c.exec("SELECT extname, extversion FROM pg_extension");
    for (int i = 0; i < ext.rows(); ++i) cat.desc.extensions[ext.get(i, 0)] = ext.get(i, 1);
  }
  // Sequences that feed a column: serial and OWNED BY ('a'), identity ('i'),
  // and a default calling nextval() on a sequence owned by nothing.
  auto feeds = c.exec(
      "SELECT sn.nspname, s.relname, tn.nspname, t.relname, a.attname, q.seqincrement "
      "FROM (SELECT d.objid AS seq, d.refobjid AS tbl, d.refobjsubid AS att FROM pg_depend d "
      "      WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass "
      "      AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0 "
      "      UNION SELECT d.refobjid, ad.adrelid, ad.adnum FROM pg_attrdef ad JOIN pg_depend d "
      "      ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid "
      "      AND d.refclassid = 'pg_class'::regclass) AS f "
      "JOIN pg_class s ON s.oid = f.seq AND s.relkind = 'S' "
      "JOIN pg_namespace sn ON sn.oid = s.relnamespace "
      "JOIN pg_sequence q ON q.seqrelid = s.oid "
      "JOIN pg_class t ON t.oid = f.tbl AND t.relkind IN ('r', 'p') "
      "JOIN pg_namespace tn ON tn.oid = t.relnamespace "
      "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = f.att AND NOT a.attisdropped "
      "WHERE " +
      userSchemas("tn") + " ORDER BY 1, 2, 3, 4, 5");
  for (int i = 0; i < feeds.rows(); ++i) {
    SequenceFeed f;
    f.seqSchema = feeds.get(i, 0);
    f.seqName = feeds.get(i, 1);
    f.sequence = f.seqSchema + "." + f.seqName;
    f.tableSchema = feeds.get(i, 2);
    f.tableName = feeds.get(i, 3);
    f.table = f.tableSchema + "." + f.tableName;
    f.column = feeds.get(i, 4);
    f.increment = feeds.getInt(i, 5);
    if (!wanted(f.table)) continue;
    cat.feeds.push_back(std::move(f));
  }
  return cat;
}

// ---------------------------------------------------------------- data

struct ChunkResult {
  std::int64_t countSource = 0, countTarget = 0;
  std::string sumSource, sumTarget;
  Clock::time_point start, end;
  [[nodiscard]] bool same() const { return countSource == countTarget && sumSource == sumTarget; }
};

struct TableWork {
  std::string name;
  TableShape shape;
  bool keyed = false;
  std::vector<std::vector<std::string>> bounds;
  std::vector<ChunkResult> chunks;
  std::int64_t rowsSource = 0, rowsTarget = 0;
  std::vector<Difference> differences;
  std::size_t differingChunks = 0, narrowedChunks = 0;
  double ms = 0;
  bool identical = true;
};

Params chunkParams(const TableWork& t, std::size_t chunk) {
  Params p;
  if (chunk > 0) {
    for (const auto& v : t.bounds[chunk - 1]) p.emplace_back(v);
  }
  if (chunk < t.bounds.size()) {
    for (const auto& v : t.bounds[chunk]) p.emplace_back(v);
  }
  return p;
}

std::vector<RowHash> rowHashes(const PgResult& r, std::size_t keyCols) {
  std::vector<RowHash> out;
  out.reserve(static_cast<std::size_t>(r.rows()));
  for (int i = 0; i < r.rows(); ++i) {
    RowHash h;
    for (std::size_t k = 0; k < keyCols; ++k) h.key.push_back(r.get(i, static_cast<int>(k)));
    h.hash = r.get(i, static_cast<int>(keyCols));
    out.push_back(std::move(h));
  }
  return out;
}

std::map<std::string, std::int64_t> multiset(const PgResult& r) {
  std::map<std::string, std::int64_t> out;
  for (int i = 0; i < r.rows(); ++i) out[r.get(i, 0)] = r.getInt(i, 1);
  return out;
}

std::string shortened(const std::string& s) {
  if (s.size() <= kMaxRowText) return s;
  return s.substr(0, kMaxRowText) + "...";
}

// ---------------------------------------------------------------- the cut

// POST /resume when it goes out of scope unless resumed already: a failed
// export must not leave the application's transactions held.
class PauseGuard {
 public:
  explicit PauseGuard(const AdminEndpoint* ep) : ep_(ep) {}
  ~PauseGuard() {
    try {
      resume();
    } catch (...) {
    }
  }
  PauseGuard(const PauseGuard&) = delete;
  PauseGuard& operator=(const PauseGuard&) = delete;
  void arm() { armed_ = true; }
  // Returns a warning ("" when resumed or nothing to do).
  std::string resume() {
    if (!armed_) return {};
    armed_ = false;
    try {
      auto r = adminCall(*ep_, "POST", "/resume", "", std::chrono::seconds(15));
      if (r.status != 200) {
        return "POST /resume answered HTTP " + std::to_string(r.status) + ": " + r.body;
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr,
                   "pghandoff verify: WARNING: could not resume the proxy (%s); run "
                   "`pghandoff status` and POST /resume to its admin API\n",
                   e.what());
      return std::string("could not resume the proxy: ") + e.what();
    }
    return {};
  }

 private:
  const AdminEndpoint* ep_;
  bool armed_ = false;
};

struct Options {
  bool json = false;
  bool noPause = false;
  int jobs = 4;
  std::int64_t chunkRows = 10000;
  std::optional<std::regex> tables;
  std::string tablesText;
};

constexpr const char* kUsage =
    "usage: pghandoff verify --config FILE [--tables REGEX] [--json] [--jobs N] [--no-pause] "
    "[--chunk-rows N]\n"
    "  --tables REGEX    only tables whose schema.table the regular expression finds\n"
    "  --json            one JSON object on stdout\n"
    "  --jobs N          worker connections per side (default 4)\n"
    "  --no-pause        no write pause through the proxy: each side's snapshot is consistent,\n"
    "                    but writes made between the two show as differences\n"
    "  --chunk-rows N    rows per checksum chunk (default 10000)\n"
    "exit 0 = identical, 1 = differences (listed), 2 = could not run\n";

int usageError(const std::string& msg) {
  std::fprintf(stderr, "pghandoff verify: %s\n%s", msg.c_str(), kUsage);
  return 2;
}

// Unknown arguments are errors, like unknown config keys; "" when all are known.
std::string checkArgs(const Args& args) {
  static const std::set<std::string> withValue{"--config", "--tables", "--jobs", "--chunk-rows"};
  static const std::set<std::string> flags{"--json", "--no-pause"};
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const auto eq = a.find('=');
    if (withValue.count(a.substr(0, eq)) != 0) {
      if (eq == std::string::npos && ++i >= args.size()) return a + " needs a value";
      continue;
    }
    if (flags.count(a) == 0) return "unknown argument " + a;
  }
  return {};
}

bool parsePositive(const std::string& s, std::int64_t max, std::int64_t& out) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos || s.size() > 12) {
    return false;
  }
  const std::int64_t v = std::stoll(s);
  if (v < 1 || v > max) return false;
  out = v;
  return true;
}

int runVerifyImpl(const Args& args) {
  if (hasFlag(args, "--help") || hasFlag(args, "-h")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (auto bad = checkArgs(args); !bad.empty()) return usageError(bad);
  Options opt;
  opt.json = hasFlag(args, "--json");
  opt.noPause = hasFlag(args, "--no-pause");
  if (const auto j = optionValue(args, "--jobs"); !j.empty()) {
    std::int64_t v = 0;
    if (!parsePositive(j, 64, v)) return usageError("--jobs must be a number from 1 to 64");
    opt.jobs = static_cast<int>(v);
  }
  if (const auto c = optionValue(args, "--chunk-rows"); !c.empty()) {
    if (!parsePositive(c, 100000000, opt.chunkRows)) {
      return usageError("--chunk-rows must be a positive number");
    }
  }
  if (hasFlag(args, "--tables") || !optionValue(args, "--tables").empty()) {
    opt.tablesText = optionValue(args, "--tables");
    if (opt.tablesText.empty()) return usageError("--tables needs a regular expression");
    try {
      opt.tables.emplace(opt.tablesText, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      return usageError(std::string("--tables: not a valid regular expression: ") + e.what());
    }
  }
  auto cfg = loadConfigFor(args, "verify");
  if (!cfg) return 2;
  if (cfg->targetUrl.empty()) {
    std::fprintf(stderr, "pghandoff verify: the config has no target (target.url)\n");
    return 2;
  }
  const Wanted wanted = [&](const std::string& name) {
    return !opt.tables || std::regex_search(name, *opt.tables);
  };

  // The proxy: which side is authoritative, and the write pause.
  const auto endpoint = adminFromConfig(*cfg);
  std::string phase;
  std::string adminProblem;
  bool alreadyPaused = false;
  if (!endpoint) {
    adminProblem = "the admin API is disabled in the config (admin.listen)";
  } else {
    try {
      auto r = adminCall(*endpoint, "GET", "/phase", "", std::chrono::seconds(5));
      if (r.status == 200) {
        phase = jsonMember(r.body, "phase");
        auto st = adminCall(*endpoint, "GET", "/status", "", std::chrono::seconds(5));
        alreadyPaused = st.status == 200 && st.body.find("\"paused\":true") != std::string::npos;
      } else {
        adminProblem = "the admin API at " + endpoint->host + ":" + std::to_string(endpoint->port) +
                       " answered GET /phase with HTTP " + std::to_string(r.status) +
                       (r.status == 401 ? " (check admin.token)" : "");
      }
    } catch (const std::exception& e) {
      adminProblem = "cannot reach the proxy's admin API at " + endpoint->host + ":" +
                     std::to_string(endpoint->port) + " (" + e.what() + ")";
    }
  }
  if (!adminProblem.empty() && !opt.noPause) {
    std::fprintf(stderr,
                 "pghandoff verify: %s.\nverify pauses writes through the proxy for a consistent "
                 "cut of both sides: start the proxy (pghandoff proxy --config ...), or pass "
                 "--no-pause to compare without a write pause.\n",
                 adminProblem.c_str());
    return 2;
  }
  const std::string authoritative = authoritativeSide(phase);  // "" = both count
  auto isAuthoritative = [&](const std::string& side) {
    return authoritative.empty() || authoritative == side;
  };

  // Every session is open before the pause: only the two exports are inside it.
  PgConn exportSource = openSide(cfg->sourceUrl, "source");
  PgConn exportTarget = openSide(cfg->targetUrl, "target");
  std::vector<Worker> workers(static_cast<std::size_t>(opt.jobs));
  for (auto& w : workers) {
    w.source = openSide(cfg->sourceUrl, "source");
    w.target = openSide(cfg->targetUrl, "target");
  }

  double pauseMs = 0;
  bool paused = false;
  std::string snapSource, snapTarget;
  std::vector<std::string> notes;
  {
    PauseGuard guard(endpoint ? &*endpoint : nullptr);
    const auto t0 = Clock::now();
    if (!opt.noPause) {
      // Armed before asking: a pause that took hold after our timeout is
      // released too (a resume of an unpaused proxy changes nothing).
      if (!alreadyPaused) guard.arm();
      auto r = adminCall(*endpoint, "POST", "/pause", R"({"drain_timeout":"5s"})",
                         std::chrono::seconds(20));
      if (r.status != 200) {
        std::fprintf(stderr,
                     "pghandoff verify: the proxy did not pause writes (POST /pause answered HTTP "
                     "%d: %s); nothing was compared\n",
                     r.status, r.body.c_str());
        return 2;
      }
      paused = true;
    }
    (void)execBoth(exportSource, exportTarget, kBeginCut, {}, {});
    auto snaps = execBoth(exportSource, exportTarget, "SELECT pg_export_snapshot()", {}, {});
    snapSource = snaps.source.rows() > 0 ? snaps.source.get(0, 0) : "";
    snapTarget = snaps.target.rows() > 0 ? snaps.target.get(0, 0) : "";
    if (paused) {
      if (auto warn = guard.resume(); !warn.empty()) notes.push_back(warn);
      pauseMs = msSince(t0);
    }
  }
  if (alreadyPaused) notes.push_back("the proxy was already paused; verify left it paused");

  // Every worker adopts the cut: BEGIN first, then SET TRANSACTION SNAPSHOT
  // as the transaction's first statement (each its own round trip).
  forEachWorker(workers, [&](Worker& w) {
    (void)execBoth(w.source, w.target, kBeginCut, {}, {});
    (void)execBoth(w.source, w.target, "SET TRANSACTION SNAPSHOT " + w.source.literal(snapSource),
                   "SET TRANSACTION SNAPSHOT " + w.target.literal(snapTarget), {}, {});
  });

  const auto tStart = Clock::now();
  // Schema, on the exporting sessions (they hold the cut), both sides at once.
  const bool withExtensions = !opt.tables;
  Catalog src, tgt;
  {
    std::exception_ptr tgtError;
    std::thread th([&] {
      try {
        tgt = readCatalog(exportTarget, wanted, withExtensions);
      } catch (...) {
        tgtError = std::current_exception();
      }
    });
    try {
      src = readCatalog(exportSource, wanted, withExtensions);
    } catch (...) {
      th.join();
      throw;
    }
    th.join();
    if (tgtError) std::rethrow_exception(tgtError);
  }
  std::vector<Difference> schemaDiffs = diffSchemas(src.desc, tgt.desc);

  // The data plan: tables on both sides that hold rows of their own.
  std::vector<TableWork> work;
  for (const auto& [name, st] : src.desc.tables) {
    auto tt = tgt.desc.tables.find(name);
    if (tt == tgt.desc.tables.end() || st.partitioned || tt->second.partitioned) continue;
    TableWork w;
    w.name = name;
    w.shape.schema = src.tableNames[name].first;
    w.shape.name = src.tableNames[name].second;
    for (const auto& c : st.columns) {
      if (findColumn(tt->second.columns, c.name) != nullptr) w.shape.columns.push_back(c.name);
    }
    auto pk = src.primaryKeys.find(name);
    if (pk != src.primaryKeys.end()) {
      // The source's key ranges are applied to the target with the source's
      // types: only when each key column exists there with the same type
      // (else the whole-row multiset compares the table; the schema
      // difference is listed anyway).
      bool allShared = true;
      for (const auto& [col, type] : pk->second) {
        const ColumnDesc* there = findColumn(tt->second.columns, col);
        if (there == nullptr || there->type != type) allShared = false;
      }
      if (allShared) {
        w.keyed = true;
        for (const auto& [col, type] : pk->second) {
          w.shape.keyColumns.push_back(col);
          w.shape.keyTypes.push_back(type);
        }
      }
    }
    work.push_back(std::move(w));
  }

  // Chunk boundaries, from the source.
  std::vector<std::size_t> keyed;
  for (std::size_t i = 0; i < work.size(); ++i) {
    if (work[i].keyed) keyed.push_back(i);
  }
  parallelFor(workers, keyed.size(), [&](Worker& w, std::size_t i) {
    TableWork& t = work[keyed[i]];
    auto r = w.source.exec(boundariesSql(t.shape, opt.chunkRows));
    for (int row = 0; row < r.rows(); ++row) {
      std::vector<std::string> b;
      for (int c = 0; c < r.cols(); ++c) b.push_back(r.get(row, c));
      t.bounds.push_back(std::move(b));
    }
  });
  std::vector<std::pair<std::size_t, std::size_t>> chunkTasks;
  for (std::size_t i = 0; i < work.size(); ++i) {
    work[i].chunks.resize(work[i].keyed ? work[i].bounds.size() + 1 : 1);
    for (std::size_t c = 0; c < work[i].chunks.size(); ++c) chunkTasks.emplace_back(i, c);
  }
  // Per chunk, both sides at once: count and hash sum.
  parallelFor(workers, chunkTasks.size(), [&](Worker& w, std::size_t i) {
    TableWork& t = work[chunkTasks[i].first];
    const std::size_t c = chunkTasks[i].second;
    ChunkResult& out = t.chunks[c];
    out.start = Clock::now();
    const bool lower = t.keyed && c > 0;
    const bool upper = t.keyed && c < t.bounds.size();
    const Params p = t.keyed ? chunkParams(t, c) : Params{};
    auto r = execBoth(w.source, w.target, chunkChecksumSql(t.shape, lower, upper), p, p);
    out.countSource = r.source.getInt(0, 0);
    out.sumSource = r.source.get(0, 1);
    out.countTarget = r.target.getInt(0, 0);
    out.sumTarget = r.target.get(0, 1);
    out.end = Clock::now();
  });

  // Narrowing down: differing chunks of keyed tables (the first few per
  // table), and whole keyless tables.
  struct NarrowTask {
    std::size_t table, chunk;
    std::vector<RowHash> source, target;
    std::map<std::string, std::int64_t> msSource, msTarget;
    double ms = 0;
  };
  std::vector<NarrowTask> narrow;
  for (std::size_t i = 0; i < work.size(); ++i) {
    auto& t = work[i];
    for (std::size_t c = 0; c < t.chunks.size(); ++c) {
      t.rowsSource += t.chunks[c].countSource;
      t.rowsTarget += t.chunks[c].countTarget;
      if (t.chunks[c].same()) continue;
      ++t.differingChunks;
      if (t.narrowedChunks < kMaxChunksNarrowed) {
        ++t.narrowedChunks;
        narrow.push_back(NarrowTask{i, c, {}, {}, {}, {}, 0});
      }
    }
  }
  parallelFor(workers, narrow.size(), [&](Worker& w, std::size_t i) {
    NarrowTask& n = narrow[i];
    TableWork& t = work[n.table];
    const auto t0 = Clock::now();
    struct Timed {
      NarrowTask& n;
      Clock::time_point t0;
      ~Timed() { n.ms = msSince(t0); }
    } timed{n, t0};
    if (t.keyed) {
      const bool lower = n.chunk > 0, upper = n.chunk < t.bounds.size();
      const Params p = chunkParams(t, n.chunk);
      auto r = execBoth(w.source, w.target, chunkRowsSql(t.shape, lower, upper), p, p);
      n.source = rowHashes(r.source, t.shape.keyColumns.size());
      n.target = rowHashes(r.target, t.shape.keyColumns.size());
    } else {
      auto r = execBoth(w.source, w.target, multisetSql(t.shape), {}, {});
      n.msSource = multiset(r.source);
      n.msTarget = multiset(r.target);
    }
  });

  // Keyless tables: the differing rows' text, from the side that has them.
  struct TextTask {
    std::size_t table;
    bool fromTarget;
    std::vector<MultisetDiff> diffs;
    std::map<std::string, std::string> text;
  };
  std::vector<TextTask> texts;
  std::map<std::size_t, std::vector<MultisetDiff>> keylessDiffs;
  for (const auto& n : narrow) {
    const TableWork& t = work[n.table];
    if (t.keyed) continue;
    auto d = diffMultisets(n.msSource, n.msTarget);
    keylessDiffs[n.table] = d;
    TextTask fromSource{n.table, false, {}, {}}, fromTarget{n.table, true, {}, {}};
    for (std::size_t k = 0; k < d.size() && k < kMaxRowsPrinted; ++k) {
      (d[k].delta > 0 ? fromSource : fromTarget).diffs.push_back(d[k]);
    }
    if (!fromSource.diffs.empty()) texts.push_back(std::move(fromSource));
    if (!fromTarget.diffs.empty()) texts.push_back(std::move(fromTarget));
  }
  parallelFor(workers, texts.size(), [&](Worker& w, std::size_t i) {
    TextTask& task = texts[i];
    std::string arr = "{";
    for (std::size_t k = 0; k < task.diffs.size(); ++k) {
      arr += (k == 0 ? "" : ",") + task.diffs[k].hash;  // hex digits: no quoting needed
    }
    arr += "}";
    PgConn& c = task.fromTarget ? w.target : w.source;
    auto r = c.exec(rowsByHashSql(work[task.table].shape), Params{arr});
    for (int row = 0; row < r.rows(); ++row) task.text[r.get(row, 0)] = r.get(row, 1);
  });

  // Differences per table.
  for (std::size_t i = 0; i < work.size(); ++i) {
    TableWork& t = work[i];
    if (t.differingChunks == 0) continue;
    t.identical = false;
    if (t.rowsSource != t.rowsTarget) {
      t.differences.push_back(Difference{"count", t.name,
                                         "table " + t.name + " has " +
                                             std::to_string(t.rowsSource) + " rows on source, " +
                                             std::to_string(t.rowsTarget) + " on target",
                                         ""});
    }
    std::size_t listed = 0, unlisted = 0;
    if (t.keyed) {
      // One diff over all narrowed chunks: a row that a collation placed in
      // another chunk on the target is then not reported twice.
      std::vector<RowHash> s, g;
      for (auto& n : narrow) {
        if (n.table != i) continue;
        std::move(n.source.begin(), n.source.end(), std::back_inserter(s));
        std::move(n.target.begin(), n.target.end(), std::back_inserter(g));
      }
      for (const auto& d : diffRowHashes(s, g)) {
        if (listed >= kMaxRowsPrinted) {
          ++unlisted;
          continue;
        }
        ++listed;
        t.differences.push_back(Difference{"row", t.name,
                                           describeRowDiff(t.shape.keyColumns, d) + " in " + t.name,
                                           formatKey(t.shape.keyColumns, d.key)});
      }
    } else {
      const auto& d = keylessDiffs[i];
      std::map<std::string, std::string> text;
      for (const auto& task : texts) {
        if (task.table == i) text.insert(task.text.begin(), task.text.end());
      }
      for (const auto& m : d) {
        if (listed >= kMaxRowsPrinted) {
          ++unlisted;
          continue;
        }
        ++listed;
        const auto it = text.find(m.hash);
        const std::string row = shortened(it == text.end() ? "md5 " + m.hash : it->second);
        const std::int64_t copies = m.delta > 0 ? m.delta : -m.delta;
        t.differences.push_back(Difference{
            "row", t.name,
            "row " + row + (m.delta > 0 ? " missing on target" : " extra on target") +
                (copies > 1 ? " (" + std::to_string(copies) + " copies)" : "") + " in " + t.name,
            row});
      }
    }
    if (unlisted > 0) {
      t.differences.push_back(Difference{
          "row", t.name, std::to_string(unlisted) + " more differing rows in " + t.name, ""});
    }
    if (t.differingChunks > t.narrowedChunks) {
      t.differences.push_back(Difference{
          "row", t.name,
          std::to_string(t.differingChunks) + " chunks of " + t.name + " differ; only the first " +
              std::to_string(t.narrowedChunks) + " were narrowed down to rows",
          ""});
    }
    if (t.differences.empty()) {
      // Counts and row hashes agree again once narrowed: the sums differed
      // by placement only (a collation) -- identical after all.
      t.identical = true;
    }
  }
  for (auto& t : work) {
    if (t.chunks.empty()) continue;
    auto first = t.chunks.front().start, last = t.chunks.front().end;
    for (const auto& c : t.chunks) {
      first = std::min(first, c.start);
      last = std::max(last, c.end);
    }
    t.ms = std::chrono::duration<double, std::milli>(last - first).count();
  }
  for (const auto& n : narrow) work[n.table].ms += n.ms;
  const double dataMs = msSince(tStart);

  // Sequences: each must be ahead of the column it feeds.
  struct SeqTask {
    bool target;
    const SequenceFeed* feed;
    bool behind = false;
    std::string detail;
  };
  std::vector<SeqTask> seqTasks;
  for (const auto& f : src.feeds) seqTasks.push_back(SeqTask{false, &f, false, ""});
  for (const auto& f : tgt.feeds) seqTasks.push_back(SeqTask{true, &f, false, ""});
  parallelFor(workers, seqTasks.size(), [&](Worker& w, std::size_t i) {
    SeqTask& s = seqTasks[i];
    const SequenceFeed& f = *s.feed;
    PgConn& c = s.target ? w.target : w.source;
    const std::string col = "r." + quoteIdent(f.column);
    const std::string from = " FROM " + qualified(f.tableSchema, f.tableName) + " AS r";
    auto r = c.exec("SELECT q.last_value::text, q.is_called, (SELECT max(" + col + ")::text" +
                    from + "), (SELECT min(" + col + ")::text" + from + ") FROM " +
                    qualified(f.seqSchema, f.seqName) + " AS q");
    if (r.rows() == 0) return;
    auto asInt = [&](int col) -> std::optional<std::int64_t> {
      if (r.isNull(0, col)) return std::nullopt;
      try {
        std::size_t used = 0;
        const std::string v = r.get(0, col);
        const auto n = std::stoll(v, &used);
        if (used != v.size()) return std::nullopt;
        return n;
      } catch (const std::exception&) {
        return std::nullopt;
      }
    };
    const auto last = asInt(0);
    const auto max = asInt(2), min = asInt(3);
    if (!last) return;
    const bool called = r.getBool(0, 1);
    s.behind = sequenceBehind(*last, called, f.increment, max, min);
    if (s.behind) {
      const std::int64_t next = called ? *last + f.increment : *last;
      s.detail = "sequence " + f.sequence + " on " + (s.target ? "target" : "source") +
                 " is behind " + f.table + "." + f.column + ": its next value is " +
                 std::to_string(next) + ", the column's " +
                 (f.increment >= 0 ? "max is " + r.get(0, 2) : "min is " + r.get(0, 3));
    }
  });
  std::vector<Difference> seqDiffs;
  std::size_t seqChecked = seqTasks.size();
  for (const auto& s : seqTasks) {
    if (!s.behind) continue;
    const std::string side = s.target ? "target" : "source";
    if (isAuthoritative(side)) {
      seqDiffs.push_back(Difference{"sequence", s.feed->sequence, s.detail, ""});
    } else {
      notes.push_back(s.detail + " (expected on the non-authoritative side in phase " + phase +
                      ": the flip copies sequences)");
    }
  }
  // The exporting transactions end last: the workers were on their snapshots.
  (void)exportSource.tryExec("COMMIT");
  (void)exportTarget.tryExec("COMMIT");
  const double totalMs = msSince(tStart);

  // ---------------------------------------------------------------- report
  std::vector<Difference> all = schemaDiffs;
  std::int64_t rows = 0;
  for (const auto& t : work) {
    all.insert(all.end(), t.differences.begin(), t.differences.end());
    rows += t.rowsSource;
  }
  all.insert(all.end(), seqDiffs.begin(), seqDiffs.end());
  const bool identical = all.empty();
  const double rowsPerSecond = dataMs > 0 ? static_cast<double>(rows) * 1000.0 / dataMs : 0;
  char rpsBuf[32];
  std::snprintf(rpsBuf, sizeof rpsBuf, "%.0f", rowsPerSecond);

  if (opt.json) {
    std::ostringstream o;
    o << "{\"identical\":" << (identical ? "true" : "false")
      << ",\"pause_ms\":" << (paused ? fmtMs(pauseMs) : "null")
      << ",\"paused\":" << (paused ? "true" : "false")
      << ",\"phase\":" << (phase.empty() ? "null" : jsonString(phase))
      << ",\"authoritative\":" << jsonString(authoritative.empty() ? "both" : authoritative)
      << ",\"differences\":[";
    for (std::size_t i = 0; i < all.size(); ++i) {
      const auto& d = all[i];
      o << (i == 0 ? "" : ",") << "{\"kind\":" << jsonString(d.kind)
        << ",\"object\":" << jsonString(d.object) << ",\"detail\":" << jsonString(d.detail)
        << ",\"key\":" << (d.key.empty() ? "null" : jsonString(d.key)) << "}";
    }
    o << "],\"notes\":[";
    for (std::size_t i = 0; i < notes.size(); ++i) o << (i == 0 ? "" : ",") << jsonString(notes[i]);
    o << "],\"tables\":[";
    for (std::size_t i = 0; i < work.size(); ++i) {
      const auto& t = work[i];
      o << (i == 0 ? "" : ",") << "{\"name\":" << jsonString(t.name)
        << ",\"rows_source\":" << t.rowsSource << ",\"rows_target\":" << t.rowsTarget
        << ",\"chunks\":" << t.chunks.size() << ",\"keyed\":" << (t.keyed ? "true" : "false")
        << ",\"identical\":" << (t.identical ? "true" : "false") << ",\"ms\":" << fmtMs(t.ms)
        << "}";
    }
    o << "],\"sequences_checked\":" << seqChecked << ",\"rows_per_second\":" << rpsBuf
      << ",\"elapsed_ms\":" << fmtMs(totalMs) << "}\n";
    std::fputs(o.str().c_str(), stdout);
  } else {
    std::string out;
    if (paused) {
      out += "cut: both sides' snapshots taken during a " + fmtMs(pauseMs) +
             " ms write pause of the proxy";
    } else {
      out +=
          "cut: no write pause (--no-pause): each side's snapshot is consistent, but writes made "
          "between the two show as differences";
    }
    out += phase.empty() ? " (proxy not reached; both sides are held to the sequence check)\n"
                         : " (phase " + phase + ", the " + authoritative + " is authoritative)\n";
    auto count = [](std::size_t n, const std::string& one, const std::string& many) {
      return std::to_string(n) + " " + (n == 1 ? one : many);
    };
    out += "schema: " + count(src.desc.tables.size(), "table", "tables") + ", " +
           count(src.desc.indexes.size(), "index", "indexes") + ", " +
           count(src.desc.constraints.size(), "constraint", "constraints") + ", " +
           count(src.desc.sequences.size(), "sequence", "sequences") +
           (withExtensions ? ", " + count(src.desc.extensions.size(), "extension", "extensions")
                           : "") +
           (opt.tables ? " matching /" + opt.tablesText + "/" : "") + ": ";
    if (schemaDiffs.empty()) {
      out += "identical\n";
    } else {
      out += std::to_string(schemaDiffs.size()) + " differences\n";
      for (const auto& d : schemaDiffs) out += "  " + d.detail + "\n";
    }
    out += "data:\n";
    std::size_t width = 5;
    for (const auto& t : work) width = std::max(width, t.name.size());
    char line[512];
    std::snprintf(line, sizeof line, "  %-*s %12s %12s %7s  %-10s %10s\n", static_cast<int>(width),
                  "table", "rows source", "rows target", "chunks", "result", "time");
    out += line;
    for (const auto& t : work) {
      std::snprintf(line, sizeof line, "  %-*s %12lld %12lld %7zu  %-10s %7s ms%s\n",
                    static_cast<int>(width), t.name.c_str(), static_cast<long long>(t.rowsSource),
                    static_cast<long long>(t.rowsTarget), t.chunks.size(),
                    t.identical ? "identical" : "DIFFERS", fmtMs(t.ms).c_str(),
                    t.keyed ? "" : "  (no primary key: whole-row multiset)");
      out += line;
      for (const auto& d : t.differences) out += "    " + d.detail + "\n";
    }
    out += "sequences: " + std::to_string(seqChecked) + " checked, " +
           std::to_string(seqDiffs.size()) + " behind\n";
    for (const auto& d : seqDiffs) out += "  " + d.detail + "\n";
    for (const auto& n : notes) out += "note: " + n + "\n";
    out += "total: " + std::to_string(rows) + " rows compared in " + fmtMs(dataMs) + " ms (" +
           rpsBuf + " rows/s, " + std::to_string(opt.jobs) + " workers per side)\n";
    out += identical ? "result: identical\n"
                     : "result: " + std::to_string(all.size()) + " differences\n";
    std::fputs(out.c_str(), stdout);
  }
  return identical ? 0 : 1;
}

}  // namespace

int runVerify(const Args& args) {
  try {
    return runVerifyImpl(args);
  } catch (const PgError& e) {
    std::fprintf(stderr, "pghandoff verify: %s\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pghandoff verify: %s\n", e.what());
  }
  return 2;
}

}  // namespace pghandoff::migrate
