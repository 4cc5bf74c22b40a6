// Determinism analysis over libpg_query (see sql_determinism.h).
//
// Two views of the same text, both from PostgreSQL's own code:
// - pg_query_parse: the raw parse tree as JSON (read with sql_json.h). It has the
//   START of every call (`location`, a byte offset into the whole string, also
//   for the second statement of a multi-statement string), but not its end.
// - pg_query_scan: PostgreSQL's lexer, every token with its [start, end) byte
//   offsets. From a call's location, the scanner's '(' and ')' tokens give the
//   matching closing parenthesis: parentheses inside string literals, quoted
//   identifiers, dollar-quoted bodies and comments are inside other tokens, so
//   they are never miscounted. The scan result is a protobuf; it is decoded with
//   libpg_query's generated protobuf-c code (<pg_query/pg_query.pb-c.h>), whose
//   runtime and descriptors are linked into libpg_query itself.
#include "protocol/sql_determinism.h"

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "protocol/sql_classify.h"
#include "protocol/sql_json.h"

namespace pghandoff::protocol {

const char* toString(VolatileCall::Kind k) {
  switch (k) {
    case VolatileCall::Kind::kTransactionTime:
      return "transaction_time";
    case VolatileCall::Kind::kStatementTime:
      return "statement_time";
    case VolatileCall::Kind::kClockTime:
      return "clock_time";
    case VolatileCall::Kind::kRandom:
      return "random";
    case VolatileCall::Kind::kUuid:
      return "uuid";
    case VolatileCall::Kind::kSequence:
      return "sequence";
  }
  return "invalid";
}

namespace {

using sqljson::equalsIgnoreCase;
using sqljson::JsonDoc;
using sqljson::JsonType;
using sqljson::kNone;
using sqljson::ParseResultGuard;
using Kind = VolatileCall::Kind;

// ---------------------------------------------------------------------------
// Function tables.

struct FunctionInfo {
  std::string_view name;
  Kind kind;
  std::string_view type;
  bool extension;  // installed by an extension into a user schema: any schema counts
  bool sequence;   // nextval/currval: report the sequence argument
};

// clang-format off
constexpr FunctionInfo kVolatileFunctions[] = {
    {"clock_timestamp", Kind::kClockTime, "timestamptz", false, false},
    {"currval", Kind::kSequence, "bigint", false, true},
    {"gen_random_bytes", Kind::kRandom, "bytea", true, false},        // pgcrypto
    {"gen_random_uuid", Kind::kUuid, "uuid", true, false},            // core 13+, pgcrypto
    {"gen_salt", Kind::kRandom, "text", true, false},                 // pgcrypto
    {"lastval", Kind::kSequence, "bigint", false, false},
    {"nextval", Kind::kSequence, "bigint", false, true},
    {"now", Kind::kTransactionTime, "timestamptz", false, false},
    {"random", Kind::kRandom, "double precision", false, false},
    {"random_normal", Kind::kRandom, "double precision", false, false},  // 16+
    {"statement_timestamp", Kind::kStatementTime, "timestamptz", false, false},
    {"timeofday", Kind::kClockTime, "text", false, false},
    {"transaction_timestamp", Kind::kTransactionTime, "timestamptz", false, false},
    {"uuid_generate_v1", Kind::kUuid, "uuid", true, false},     // uuid-ossp
    {"uuid_generate_v1mc", Kind::kUuid, "uuid", true, false},   // uuid-ossp
    {"uuid_generate_v4", Kind::kUuid, "uuid", true, false},     // uuid-ossp
    {"uuidv4", Kind::kUuid, "uuid", false, false},              // 18+
    {"uuidv7", Kind::kUuid, "uuid", false, false},              // 18+
};
// clang-format on

// Built-ins whose value belongs to one server (its transaction ids, process,
// address, WAL position): no literal of the authoritative side's value is right
// for the other side, so they cannot be pinned.
// clang-format off
constexpr std::string_view kPerServerFunctions[] = {
    "inet_server_addr", "inet_server_port", "pg_backend_pid", "pg_conf_load_time",
    "pg_current_snapshot", "pg_current_wal_insert_lsn", "pg_current_wal_lsn",
    "pg_current_xact_id", "pg_current_xact_id_if_assigned", "pg_postmaster_start_time",
    "txid_current", "txid_current_if_assigned", "txid_current_snapshot",
};
// clang-format on
static_assert(std::ranges::is_sorted(kPerServerFunctions));
static_assert(std::ranges::is_sorted(kVolatileFunctions, {}, &FunctionInfo::name));

const FunctionInfo* findVolatile(std::string_view name) {
  const auto* it = std::ranges::lower_bound(kVolatileFunctions, name, {}, &FunctionInfo::name);
  return it != std::end(kVolatileFunctions) && it->name == name ? it : nullptr;
}

// The date/time input strings evaluated when the literal is converted:
// 'now', 'today', 'tomorrow', 'yesterday', also inside a longer input such as
// 'today 10:00' or 'now UTC' (any word of the string, case-insensitive).
bool isSpecialDateTimeLiteral(std::string_view value) {
  std::size_t p = 0;
  while (p < value.size()) {
    while (p < value.size() && (value[p] == ' ' || value[p] == '\t' || value[p] == '\n' ||
                                value[p] == '\r' || value[p] == ',')) {
      ++p;
    }
    std::size_t q = p;
    while (q < value.size() && value[q] != ' ' && value[q] != '\t' && value[q] != '\n' &&
           value[q] != '\r' && value[q] != ',') {
      ++q;
    }
    const std::string_view word = value.substr(p, q - p);
    if (equalsIgnoreCase(word, "now") || equalsIgnoreCase(word, "today") ||
        equalsIgnoreCase(word, "tomorrow") || equalsIgnoreCase(word, "yesterday")) {
      return true;
    }
    p = q;
  }
  return false;
}

std::string lowerAscii(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

// ---------------------------------------------------------------------------
// The scanner's tokens, comments dropped.

struct Token {
  std::size_t start;
  std::size_t end;
  int kind;  // PgQuery__Token
};

constexpr std::size_t kNoToken = SIZE_MAX;

struct ScanResultGuard {
  explicit ScanResultGuard(PgQueryScanResult r) : result(r) {}
  ~ScanResultGuard() { pg_query_free_scan_result(result); }
  ScanResultGuard(const ScanResultGuard&) = delete;
  ScanResultGuard& operator=(const ScanResultGuard&) = delete;
  PgQueryScanResult result;
};

struct UnpackedScanGuard {
  explicit UnpackedScanGuard(PgQuery__ScanResult* r) : result(r) {}
  ~UnpackedScanGuard() {
    if (result != nullptr) pg_query__scan_result__free_unpacked(result, nullptr);
  }
  UnpackedScanGuard(const UnpackedScanGuard&) = delete;
  UnpackedScanGuard& operator=(const UnpackedScanGuard&) = delete;
  PgQuery__ScanResult* result;
};

bool scanTokens(const char* text, std::size_t size, std::vector<Token>& out) {
  const ScanResultGuard scanned{pg_query_scan(text)};
  if (scanned.result.error != nullptr) return false;
  const UnpackedScanGuard unpacked{pg_query__scan_result__unpack(
      nullptr, scanned.result.pbuf.len,
      reinterpret_cast<const std::uint8_t*>(scanned.result.pbuf.data))};
  if (unpacked.result == nullptr) return false;
  out.reserve(unpacked.result->n_tokens);
  for (std::size_t i = 0; i < unpacked.result->n_tokens; ++i) {
    const PgQuery__ScanToken* t = unpacked.result->tokens[i];
    if (t == nullptr) return false;
    if (t->token == PG_QUERY__TOKEN__SQL_COMMENT || t->token == PG_QUERY__TOKEN__C_COMMENT) {
      continue;
    }
    if (t->start < 0 || t->end < t->start || static_cast<std::size_t>(t->end) > size) return false;
    out.push_back(Token{static_cast<std::size_t>(t->start), static_cast<std::size_t>(t->end),
                        static_cast<int>(t->token)});
  }
  return true;
}

constexpr int kOpenParen = PG_QUERY__TOKEN__ASCII_40;
constexpr int kCloseParen = PG_QUERY__TOKEN__ASCII_41;
constexpr int kDot = PG_QUERY__TOKEN__ASCII_46;
constexpr int kSemicolon = PG_QUERY__TOKEN__ASCII_59;
constexpr int kComma = PG_QUERY__TOKEN__ASCII_44;

// Lookups in the scanner's tokens, shared by the walks below.
class TokenWalker {
 protected:
  explicit TokenWalker(const std::vector<Token>& tokens) : tokens_(tokens) {}

  // The token starting exactly at `offset`, or kNoToken.
  std::size_t tokenAt(std::size_t offset) const {
    const std::size_t t = tokenAtOrAfter(offset);
    return t != kNoToken && tokens_[t].start == offset ? t : kNoToken;
  }

  std::size_t tokenAtOrAfter(std::size_t offset) const {
    const auto it = std::ranges::lower_bound(tokens_, offset, {}, &Token::start);
    return it == tokens_.end() ? kNoToken : static_cast<std::size_t>(it - tokens_.begin());
  }

  std::size_t firstTokenOfKind(std::size_t from, int kind) const {
    for (std::size_t t = from; t < tokens_.size(); ++t) {
      if (tokens_[t].kind == kind) return t;
    }
    return kNoToken;
  }

  // The ')' closing the '(' at `open`, or kNoToken when unbalanced.
  std::size_t matchingParen(std::size_t open) const {
    std::size_t depth = 0;
    for (std::size_t t = open; t < tokens_.size(); ++t) {
      if (tokens_[t].kind == kOpenParen) {
        ++depth;
      } else if (tokens_[t].kind == kCloseParen) {
        if (--depth == 0) return t;
      }
    }
    return kNoToken;
  }

  // End of the last token (';' excluded) that starts in [begin, end); 0 if none.
  std::size_t lastTokenEnd(std::size_t begin, std::size_t end) const {
    const auto it = std::ranges::lower_bound(tokens_, end, {}, &Token::start);
    for (auto t = it; t != tokens_.begin();) {
      --t;
      if (t->start < begin) break;
      if (t->kind != kSemicolon) return t->end;
    }
    return 0;
  }

  const std::vector<Token>& tokens_;
};

// ---------------------------------------------------------------------------
// The walk.

struct Output {
  std::vector<VolatileCall> calls;
  std::vector<std::pair<std::size_t, WriteTarget>> writes;  // (table name offset, target)
  std::vector<std::string> unsupported;

  void note(std::string reason) {
    if (std::find(unsupported.begin(), unsupported.end(), reason) == unsupported.end()) {
      unsupported.push_back(std::move(reason));
    }
  }
};

class Analyzer : TokenWalker {
 public:
  Analyzer(const JsonDoc& doc, std::string_view sql, const std::vector<Token>& tokens)
      : TokenWalker(tokens), doc_(doc), sql_(sql) {}

  // `item` is an element of the tree's "stmts" array.
  void topLevel(std::uint32_t item, Output& out) {
    const std::size_t begin = doc_.sizeMember(item, "stmt_location").value_or(0);
    const std::optional<std::size_t> len = doc_.sizeMember(item, "stmt_len");
    const std::size_t end = len.has_value() && *len > 0 ? begin + *len : sql_.size();
    statement(doc_.member(item, "stmt"), begin, lastTokenEnd(begin, end), out);
  }

 private:
  // `wrapper` is a node object such as {"InsertStmt": {...}}; the statement's
  // text starts at `begin` and its last token ends at `end`.
  void statement(std::uint32_t wrapper, std::size_t begin, std::size_t end, Output& out) {
    if (wrapper == kNone || doc_.at(wrapper).type != JsonType::kObject) return;
    const std::uint32_t body = doc_.at(wrapper).firstChild;
    if (body == kNone) return;
    const std::string_view type = doc_.at(body).key;

    if (type == "CreateTableAsStmt" && doc_.stringMember(body, "objtype") == "OBJECT_MATVIEW") {
      // The query fills the view now and is stored for REFRESH: a pinned
      // literal would become part of the view's definition.
      if (doc_.boolMember(doc_.member(body, "into"), "skipData")) return;
      Output stored;
      walk(body, kNone, 0, stored);
      for (const VolatileCall& c : stored.calls) {
        out.note("CREATE MATERIALIZED VIEW: " + c.function +
                 " fills the view differently on "
                 "each server");
      }
      for (std::string& reason : stored.unsupported) out.note(std::move(reason));
    } else if (type == "SelectStmt" || type == "InsertStmt" || type == "UpdateStmt" ||
               type == "DeleteStmt" || type == "MergeStmt" || type == "CreateTableAsStmt") {
      walk(body, body, end, out);
    } else if (type == "ExplainStmt") {
      // Without ANALYZE nothing runs.
      if (sqljson::explainAnalyze(doc_, body)) {
        statement(doc_.member(body, "query"), begin, end, out);
      }
    } else if (type == "CopyStmt") {
      copy(body, begin, out);
    } else if (type == "DeclareCursorStmt") {
      statement(doc_.member(body, "query"), begin, end, out);
    } else if (type == "ExecuteStmt") {
      // The arguments are evaluated now. The prepared body's calls were
      // reported (as unsupported) at its PREPARE.
      walk(body, kNone, 0, out);
    } else if (type == "CallStmt") {
      // CallStmt.funccall is the procedure itself (key "funccall", so the walk
      // does not take it for a call); its arguments are evaluated now.
      walk(body, kNone, 0, out);
      out.note("CALL: the procedure's body is not visible in the statement text");
    } else if (type == "DoStmt") {
      out.note("DO: the code block is not visible to the analysis");
    } else if (type == "PrepareStmt") {
      // Pinning here would freeze one value for every later EXECUTE.
      Output body_calls;
      statement(doc_.member(body, "query"), 0, 0, body_calls);
      for (const VolatileCall& c : body_calls.calls) {
        out.note("PREPARE: " + c.function +
                 " in the prepared statement is evaluated at each "
                 "EXECUTE");
      }
      for (std::string& reason : body_calls.unsupported) out.note(std::move(reason));
    } else if (type == "AlterTableStmt") {
      alterTable(body, out);
    }
    // Every other statement (DDL, utility) evaluates no expression now: what it
    // holds (defaults, view queries, function bodies) is stored.
  }

  void copy(std::uint32_t body, std::size_t begin, Output& out) {
    if (doc_.boolMember(body, "is_from")) {
      WriteTarget w;
      w.op = WriteTarget::Op::kCopyFrom;
      const std::size_t at = relation(body, w);
      const std::uint32_t attlist = doc_.member(body, "attlist");
      if (attlist != kNone) {
        for (std::uint32_t c = doc_.at(attlist).firstChild; c != kNone; c = doc_.at(c).next) {
          w.columns.emplace_back(doc_.stringNode(c));
        }
      }
      out.writes.emplace_back(at, std::move(w));
      // COPY ... FROM ... WHERE evaluates its condition per row.
      walk(body, kNone, 0, out);
      return;
    }
    const std::uint32_t query = doc_.member(body, "query");
    if (query == kNone) return;
    // COPY ( query ) TO: the query ends before the ')' matching the first '('.
    std::size_t end = 0;
    const std::size_t open = firstTokenOfKind(tokenAtOrAfter(begin), kOpenParen);
    const std::size_t close = open == kNoToken ? kNoToken : matchingParen(open);
    if (close != kNoToken && close > open + 1) end = tokens_[close - 1].end;
    statement(query, begin, end, out);
  }

  // Only ADD COLUMN (its default fills the existing rows now) and ALTER COLUMN
  // TYPE ... USING (rewrites every row) evaluate expressions now.
  void alterTable(std::uint32_t body, Output& out) {
    const std::uint32_t cmds = doc_.member(body, "cmds");
    if (cmds == kNone) return;
    for (std::uint32_t c = doc_.at(cmds).firstChild; c != kNone; c = doc_.at(c).next) {
      const std::uint32_t cmd = doc_.member(c, "AlterTableCmd");
      const std::string_view subtype = doc_.stringMember(cmd, "subtype");
      if (subtype == "AT_AlterColumnType") {
        walk(cmd, kNone, 0, out);  // USING is evaluated once per row, not stored
      } else if (subtype == "AT_AddColumn") {
        // The default is stored AND fills the existing rows now: a pinned
        // literal would become the stored default, so it cannot be rewritten.
        Output added;
        walk(cmd, kNone, 0, added);
        for (const VolatileCall& call : added.calls) {
          out.note("ALTER TABLE ADD COLUMN: default " + call.function +
                   " fills existing rows differently on each server");
        }
        for (std::string& reason : added.unsupported) out.note(std::move(reason));
        addColumnNumbering(cmd, out);
      }
    }
  }

  // serial and identity columns number the existing rows in physical order,
  // which differs between servers.
  void addColumnNumbering(std::uint32_t cmd, Output& out) const {
    const std::uint32_t def = doc_.member(doc_.member(cmd, "def"), "ColumnDef");
    const std::uint32_t names = doc_.member(doc_.member(def, "typeName"), "names");
    std::string_view type;
    if (names != kNone) {
      for (std::uint32_t n = doc_.at(names).firstChild; n != kNone; n = doc_.at(n).next) {
        type = doc_.stringNode(n);
      }
    }
    bool numbered = type == "serial" || type == "serial4" || type == "bigserial" ||
                    type == "serial8" || type == "smallserial" || type == "serial2";
    const std::uint32_t constraints = doc_.member(def, "constraints");
    if (constraints != kNone) {
      for (std::uint32_t k = doc_.at(constraints).firstChild; k != kNone; k = doc_.at(k).next) {
        const std::uint32_t con = doc_.member(k, "Constraint");
        if (doc_.stringMember(con, "contype") == "CONSTR_IDENTITY") numbered = true;
      }
    }
    if (numbered) {
      out.note("ALTER TABLE ADD COLUMN: serial/identity numbers existing rows in physical order");
    }
  }

  // Every node of the subtree rooted at `root` (a contiguous pre-order range).
  // `topBody` is the statement's own DML node (kNone if none) and `topEnd` the
  // end of its text.
  void walk(std::uint32_t root, std::uint32_t topBody, std::size_t topEnd, Output& out) {
    const std::uint32_t last = doc_.at(root).end;
    for (std::uint32_t i = root; i < last; ++i) {
      if (doc_.at(i).type != JsonType::kObject) continue;
      const std::string_view k = doc_.at(i).key;
      if (k == "FuncCall") {
        funcCall(i, out);
      } else if (k == "SQLValueFunction") {
        sqlValueFunction(i, out);
      } else if (k == "TypeCast") {
        typeCast(i, out);
      } else if (k == "A_Const") {
        untypedLiteral(i, out);
      } else if (k == "RangeFunction") {
        rangeFunction(i);
      } else if (k == "RangeTableSample") {
        out.note("TABLESAMPLE picks different rows on each server");
      } else if (k == "CommonTableExpr") {
        commonTableExpr(i);
      } else if (k == "InsertStmt" || k == "UpdateStmt" || k == "DeleteStmt" || k == "MergeStmt") {
        write(i, topBody, topEnd, out);
      }
    }
  }

  void funcCall(std::uint32_t call, Output& out) {
    const std::uint32_t names = doc_.member(call, "funcname");
    std::array<std::string_view, 3> parts{};
    std::size_t count = 0;
    if (names != kNone) {
      for (std::uint32_t c = doc_.at(names).firstChild; c != kNone; c = doc_.at(c).next) {
        if (count < parts.size()) parts[count] = doc_.stringNode(c);
        ++count;
      }
    }
    if (count == 0 || count > parts.size()) return;
    const std::string_view name = parts[count - 1];
    const std::string_view schema = count >= 2 ? parts[count - 2] : std::string_view{};
    // pg_catalog is searched first whatever search_path says, so an unqualified
    // built-in name means the built-in; another schema means a user function.
    const bool builtinSchema = schema.empty() || schema == "pg_catalog";
    const std::size_t args = doc_.childCount(doc_.member(call, "args"));

    const FunctionInfo* info = findVolatile(name);
    std::string_view type;
    Kind kind = Kind::kTransactionTime;
    if (info != nullptr && (builtinSchema || info->extension)) {
      type = info->type;
      kind = info->kind;
      if (name == "random" && args != 0) {
        // random(min, max) (PostgreSQL 17) has its arguments' type.
        out.note("random() with arguments: its type depends on the arguments");
        return;
      }
    } else if (builtinSchema && name == "age" && args == 1) {
      type = "interval";  // age(ts) is age(current_date, ts)
    } else {
      if (builtinSchema && std::ranges::binary_search(kPerServerFunctions, name)) {
        out.note(std::string(name) + "() returns a value that belongs to one server");
      }
      return;
    }
    if (doc_.member(call, "over") != kNone || doc_.member(call, "agg_filter") != kNone ||
        doc_.boolMember(call, "agg_within_group") || doc_.boolMember(call, "agg_star") ||
        doc_.boolMember(call, "agg_distinct") || doc_.member(call, "agg_order") != kNone) {
      out.note(std::string(name) + "() with aggregate or window syntax cannot be pinned");
      return;
    }
    if (std::ranges::binary_search(fromItems_, call)) {
      out.note(std::string(name) + "() used as a FROM item cannot be replaced by a literal");
      return;
    }

    // From the name's first token: name parts separated by '.', then '('.
    const std::optional<std::size_t> location = doc_.sizeMember(call, "location");
    const std::size_t first = location ? tokenAt(*location) : kNoToken;
    std::size_t open = kNoToken;
    for (std::size_t t = first, part = 0; t != kNoToken && part < count; ++part, t += 2) {
      if (t + 1 >= tokens_.size() || tokens_[t].kind == kOpenParen || tokens_[t].kind == kDot) {
        break;
      }
      if (tokens_[t + 1].kind == kOpenParen) {
        open = t + 1;
        break;
      }
      if (tokens_[t + 1].kind != kDot) break;
    }
    const std::size_t close = open == kNoToken ? kNoToken : matchingParen(open);
    if (close == kNoToken) {
      out.note("could not locate " + std::string(name) + "() in the text");
      return;
    }
    VolatileCall v;
    v.kind = kind;
    v.function = lowerAscii(name);
    v.begin = tokens_[first].start;
    v.end = tokens_[close].end;
    v.type = std::string(type);
    if (info != nullptr && info->sequence && close > open + 1) {
      const std::size_t argBegin = tokens_[open + 1].start;
      const std::size_t argEnd = tokens_[close - 1].end;
      v.argument = std::string(sql_.substr(argBegin, argEnd - argBegin));
    }
    out.calls.push_back(std::move(v));
  }

  // CURRENT_DATE, CURRENT_TIME[(p)], CURRENT_TIMESTAMP[(p)], LOCALTIME[(p)],
  // LOCALTIMESTAMP[(p)]; not CURRENT_USER, CURRENT_SCHEMA and the other names.
  void sqlValueFunction(std::uint32_t node, Output& out) {
    std::string_view op = doc_.stringMember(node, "op");
    if (op.empty()) op = "SVFOP_CURRENT_DATE";  // enum value 0 may be omitted
    const bool precision = op.ends_with("_N");
    if (precision) op.remove_suffix(2);
    std::string_view function;
    std::string_view type;
    if (op == "SVFOP_CURRENT_DATE") {
      function = "current_date";
      type = "date";
    } else if (op == "SVFOP_CURRENT_TIME") {
      function = "current_time";
      type = "timetz";
    } else if (op == "SVFOP_CURRENT_TIMESTAMP") {
      function = "current_timestamp";
      type = "timestamptz";
    } else if (op == "SVFOP_LOCALTIME") {
      function = "localtime";
      type = "time";
    } else if (op == "SVFOP_LOCALTIMESTAMP") {
      function = "localtimestamp";
      type = "timestamp";
    } else {
      return;
    }
    const std::optional<std::size_t> location = doc_.sizeMember(node, "location");
    const std::size_t t = location ? tokenAt(*location) : kNoToken;
    std::size_t last = t;
    if (t != kNoToken && precision) {
      last = t + 1 < tokens_.size() && tokens_[t + 1].kind == kOpenParen ? matchingParen(t + 1)
                                                                         : kNoToken;
    }
    if (t == kNoToken || last == kNoToken) {
      out.note("could not locate " + std::string(function) + " in the text");
      return;
    }
    VolatileCall v;
    v.kind = Kind::kTransactionTime;
    v.function = std::string(function);
    v.begin = tokens_[t].start;
    v.end = tokens_[last].end;
    v.type = std::string(type);
    if (precision) {
      // An omitted typmod is 0: CURRENT_TIMESTAMP(0).
      const std::optional<std::size_t> typmod = doc_.sizeMember(node, "typmod");
      v.type += "(" + std::to_string(typmod.value_or(0)) + ")";
    }
    out.calls.push_back(std::move(v));
  }

  // 'now'::timestamptz, date 'today', CAST('tomorrow' AS date): the special
  // date/time input strings are converted when the statement is parsed, on each
  // server. The literal alone is reported; the cast stays.
  void typeCast(std::uint32_t node, Output& out) {
    const std::uint32_t constant = doc_.member(doc_.member(node, "arg"), "A_Const");
    if (constant == kNone) return;
    const std::uint32_t sval = doc_.member(constant, "sval");
    if (sval == kNone) return;
    const std::uint32_t names = doc_.member(doc_.member(node, "typeName"), "names");
    std::string_view type;
    if (names != kNone) {
      for (std::uint32_t c = doc_.at(names).firstChild; c != kNone; c = doc_.at(c).next) {
        type = doc_.stringNode(c);
      }
    }
    const bool dateTime = type == "timestamp" || type == "timestamptz" || type == "date" ||
                          type == "time" || type == "timetz";
    const std::string_view value = doc_.stringMember(sval, "sval");
    if (!isSpecialDateTimeLiteral(value)) return;
    castConstants_.push_back(constant);
    if (!dateTime) {
      // 'now'::text is a plain string; a domain over a date/time type is not.
      const bool textual = type == "text" || type == "varchar" || type == "bpchar" ||
                           type == "name" || type == "char" || type == "unknown" ||
                           type == "json" || type == "jsonb" || type == "bytea";
      if (!textual) {
        out.note("'now'-style literal cast to " + std::string(type) +
                 ": the current time if that is a date/time domain");
      }
      return;
    }
    const std::optional<std::size_t> location = doc_.sizeMember(constant, "location");
    const std::size_t t = location ? tokenAt(*location) : kNoToken;
    if (t == kNoToken) {
      out.note("could not locate a 'now' literal in the text");
      return;
    }
    VolatileCall v;
    v.kind = Kind::kTransactionTime;
    v.function = "'" + lowerAscii(sqljson::trim(value)) + "'";
    v.begin = tokens_[t].start;
    v.end = tokens_[t].end;
    v.type = std::string(type);
    out.calls.push_back(std::move(v));
  }

  // A bare 'now' takes its type from its context: in a timestamp column, a
  // comparison with a date, ... it is the current time, which only the catalog
  // can tell.
  void untypedLiteral(std::uint32_t constant, Output& out) const {
    const std::uint32_t sval = doc_.member(constant, "sval");
    if (sval == kNone || !isSpecialDateTimeLiteral(doc_.stringMember(sval, "sval"))) return;
    if (std::ranges::binary_search(castConstants_, constant)) return;
    out.note("string literal 'now'/'today'/...: the current time if its context is a date/time");
  }

  // SELECT * FROM nextval('s'): a literal is not a FROM item.
  void rangeFunction(std::uint32_t node) {
    const std::uint32_t functions = doc_.member(node, "functions");
    if (functions == kNone) return;
    for (std::uint32_t f = doc_.at(functions).firstChild; f != kNone; f = doc_.at(f).next) {
      const std::uint32_t items = doc_.member(doc_.member(f, "List"), "items");
      if (items == kNone) continue;
      const std::uint32_t first = doc_.at(items).firstChild;
      const std::uint32_t call = doc_.member(first, "FuncCall");
      if (call != kNone) fromItems_.push_back(call);
    }
  }

  // WITH name [(cols)] AS [[NOT] MATERIALIZED] ( statement ): the inner
  // statement ends at the last token before the ')' matching that '('.
  void commonTableExpr(std::uint32_t cte) {
    const std::uint32_t query = doc_.member(cte, "ctequery");
    if (query == kNone || doc_.at(query).firstChild == kNone) return;
    const std::optional<std::size_t> location = doc_.sizeMember(cte, "location");
    std::size_t t = location ? tokenAt(*location) : kNoToken;
    if (t == kNoToken) return;
    ++t;                                                        // the name
    if (t < tokens_.size() && tokens_[t].kind == kOpenParen) {  // column aliases
      t = matchingParen(t);
      if (t == kNoToken) return;
      ++t;
    }
    const std::size_t open = firstTokenOfKind(t, kOpenParen);
    const std::size_t close = open == kNoToken ? kNoToken : matchingParen(open);
    if (close == kNoToken || close <= open + 1) return;
    cteEnds_.emplace_back(doc_.at(query).firstChild, tokens_[close - 1].end);
  }

  void write(std::uint32_t node, std::uint32_t topBody, std::size_t topEnd, Output& out) {
    const std::string_view k = doc_.at(node).key;
    WriteTarget w;
    if (node == topBody) {
      w.statementEnd = topEnd;
    } else {
      const auto it = std::ranges::lower_bound(cteEnds_, node, {},
                                               &std::pair<std::uint32_t, std::size_t>::first);
      if (it != cteEnds_.end() && it->first == node) {
        w.inCte = true;
        w.statementEnd = it->second;
      }
    }
    const std::size_t at = relation(node, w);
    w.returning = doc_.childCount(doc_.member(node, "returningList")) > 0;
    if (k == "InsertStmt") {
      w.op = WriteTarget::Op::kInsert;
      targetNames(doc_.member(node, "cols"), w.columns);
      const std::uint32_t select = doc_.member(doc_.member(node, "selectStmt"), "SelectStmt");
      if (select == kNone) {  // INSERT ... DEFAULT VALUES
        w.valuesRows = 1;
        w.explicitDefault = true;
      } else {
        const std::uint32_t values = doc_.member(select, "valuesLists");
        if (values != kNone) {
          w.valuesRows = doc_.childCount(values);
          w.explicitDefault = containsDefault(values);
        } else {
          w.insertSelect = true;
        }
      }
      const std::uint32_t conflict = doc_.member(node, "onConflictClause");
      const std::string_view action = doc_.stringMember(conflict, "action");
      w.onConflictNothing = action == "ONCONFLICT_NOTHING";
      w.onConflictUpdate = action == "ONCONFLICT_UPDATE";
      if (w.onConflictUpdate && containsDefault(doc_.member(conflict, "targetList"))) {
        w.explicitDefault = true;
      }
    } else if (k == "UpdateStmt") {
      w.op = WriteTarget::Op::kUpdate;
      const std::uint32_t targets = doc_.member(node, "targetList");
      targetNames(targets, w.columns);
      w.explicitDefault = containsDefault(targets);
    } else if (k == "DeleteStmt") {
      w.op = WriteTarget::Op::kDelete;
    } else {
      w.op = WriteTarget::Op::kMerge;
      const std::uint32_t whens = doc_.member(node, "mergeWhenClauses");
      w.explicitDefault = containsDefault(whens);
      if (whens != kNone) {
        for (std::uint32_t c = doc_.at(whens).firstChild; c != kNone; c = doc_.at(c).next) {
          const std::uint32_t when = doc_.member(c, "MergeWhenClause");
          if (doc_.stringMember(when, "commandType") == "CMD_INSERT" &&
              doc_.member(when, "values") == kNone) {
            w.explicitDefault = true;  // INSERT DEFAULT VALUES
          }
        }
      }
    }
    out.writes.emplace_back(at, std::move(w));
  }

  // Fills schema and table from the node's "relation" RangeVar; returns the
  // table name's offset (the sort key for text order).
  std::size_t relation(std::uint32_t node, WriteTarget& w) const {
    std::uint32_t rel = doc_.member(node, "relation");
    // MergeStmt and CopyStmt hold the RangeVar directly, like the others.
    if (doc_.member(rel, "RangeVar") != kNone) rel = doc_.member(rel, "RangeVar");
    w.schema = std::string(doc_.stringMember(rel, "schemaname"));
    w.table = std::string(doc_.stringMember(rel, "relname"));
    return doc_.sizeMember(rel, "location").value_or(0);
  }

  void targetNames(std::uint32_t list, std::vector<std::string>& out) const {
    if (list == kNone) return;
    for (std::uint32_t c = doc_.at(list).firstChild; c != kNone; c = doc_.at(c).next) {
      out.emplace_back(doc_.stringMember(doc_.member(c, "ResTarget"), "name"));
    }
  }

  bool containsDefault(std::uint32_t root) const {
    if (root == kNone) return false;
    for (std::uint32_t i = root; i < doc_.at(root).end; ++i) {
      if (doc_.at(i).key == "SetToDefault" && doc_.at(i).type == JsonType::kObject) return true;
    }
    return false;
  }

  const JsonDoc& doc_;
  std::string_view sql_;
  // Filled in pre-order, so each is sorted by node index (binary search): a node
  // is always visited after the node that fills its entry.
  std::vector<std::uint32_t> castConstants_;  // A_Const nodes under a TypeCast
  std::vector<std::uint32_t> fromItems_;      // FuncCall nodes that are FROM items
  std::vector<std::pair<std::uint32_t, std::size_t>> cteEnds_;  // DML node -> text end
};

// Parses and scans `sql`, then calls f(doc, tokens); false when either fails
// (or the text holds a NUL: a Query/Parse message carries a C string).
template <typename F>
bool withTree(std::string_view sql, F&& f) {
  if (sql.find('\0') != std::string_view::npos) return false;
  const std::string text(sql);
  const ParseResultGuard parsed{pg_query_parse(text.c_str())};
  if (parsed.result.error != nullptr || parsed.result.parse_tree == nullptr) return false;
  std::vector<Token> tokens;
  if (!scanTokens(text.c_str(), text.size(), tokens)) return false;
  JsonDoc doc;
  if (!doc.parse(parsed.result.parse_tree, std::strlen(parsed.result.parse_tree))) return false;
  f(static_cast<const JsonDoc&>(doc), static_cast<const std::vector<Token>&>(tokens));
  return true;
}

void analyzeTree(std::string_view sql, const JsonDoc& doc, const std::vector<Token>& tokens,
                 DeterminismAnalysis& result) {
  Output out;
  Analyzer analyzer(doc, sql, tokens);
  const std::uint32_t stmts = doc.member(0, "stmts");
  if (stmts != kNone) {
    for (std::uint32_t s = doc.at(stmts).firstChild; s != kNone; s = doc.at(s).next) {
      analyzer.topLevel(s, out);
    }
  }

  // Text order. A node can appear twice in the tree (UPDATE SET (a, b) = (now(),
  // 1) repeats the row for each column): keep one. A call inside another
  // reported call (age(now())) is covered by the outer one.
  std::ranges::stable_sort(out.calls, [](const VolatileCall& a, const VolatileCall& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end > b.end;
  });
  for (VolatileCall& c : out.calls) {
    if (!result.calls.empty() && c.begin < result.calls.back().end) continue;
    if (c.begin >= c.end || c.end > sql.size()) continue;
    result.calls.push_back(std::move(c));
  }
  std::ranges::stable_sort(out.writes, {}, &std::pair<std::size_t, WriteTarget>::first);
  result.writes.reserve(out.writes.size());
  for (auto& w : out.writes) result.writes.push_back(std::move(w.second));
  result.unsupported = std::move(out.unsupported);
  result.parsed = true;
}

DeterminismAnalysis analyzeOrThrow(std::string_view sql) {
  DeterminismAnalysis result;
  (void)withTree(sql, [&](const JsonDoc& doc, const std::vector<Token>& tokens) {
    analyzeTree(sql, doc, tokens, result);
  });
  return result;
}

// ---------------------------------------------------------------------------
// The shape of one INSERT (see InsertShape).

class InsertReader : TokenWalker {
 public:
  InsertReader(const JsonDoc& doc, std::string_view sql, const std::vector<Token>& tokens)
      : TokenWalker(tokens), doc_(doc), sql_(sql) {}

  bool read(std::uint32_t item, InsertShape& out) {
    const std::uint32_t stmt = doc_.member(item, "stmt");
    const std::uint32_t body = doc_.member(stmt, "InsertStmt");
    if (body == kNone) return false;
    const std::size_t begin = doc_.sizeMember(item, "stmt_location").value_or(0);
    const std::optional<std::size_t> len = doc_.sizeMember(item, "stmt_len");
    const std::size_t stmtEnd = len.has_value() && *len > 0 ? begin + *len : sql_.size();
    out.statementEnd = lastTokenEnd(begin, stmtEnd);
    if (out.statementEnd == 0) return false;

    // INSERT: the first one outside parentheses (a WITH's bodies are inside).
    std::size_t t = tokenAtOrAfter(begin);
    std::size_t depth = 0;
    for (; t < tokens_.size() && tokens_[t].start < out.statementEnd; ++t) {
      if (tokens_[t].kind == kOpenParen) ++depth;
      if (tokens_[t].kind == kCloseParen && depth > 0) --depth;
      if (depth == 0 && tokens_[t].kind == PG_QUERY__TOKEN__INSERT) break;
    }
    if (t >= tokens_.size() || tokens_[t].kind != PG_QUERY__TOKEN__INSERT) return false;
    out.insertBegin = tokens_[t].start;
    const std::uint32_t with = doc_.member(body, "withClause");
    out.withBegin = with != kNone ? doc_.sizeMember(with, "location").value_or(0) : out.insertBegin;
    if (with != kNone) {
      for (std::uint32_t i = with; i < doc_.at(with).end; ++i) {
        const std::string_view k = doc_.at(i).key;
        if (doc_.at(i).type == JsonType::kObject &&
            (k == "InsertStmt" || k == "UpdateStmt" || k == "DeleteStmt" || k == "MergeStmt")) {
          out.withDml = true;
        }
      }
    }

    // INSERT INTO name [AS alias]
    const std::uint32_t rel = doc_.member(body, "relation");
    out.schema = std::string(doc_.stringMember(rel, "schemaname"));
    out.table = std::string(doc_.stringMember(rel, "relname"));
    const std::optional<std::size_t> relAt = doc_.sizeMember(rel, "location");
    if (!relAt || out.table.empty()) return false;
    t = tokenAt(*relAt);
    if (t == kNoToken) return false;
    while (t + 2 < tokens_.size() && tokens_[t + 1].kind == kDot) t += 2;
    if (t + 2 < tokens_.size() && tokens_[t + 1].kind == PG_QUERY__TOKEN__AS) t += 2;
    if (t >= tokens_.size()) return false;
    out.targetEnd = tokens_[t].end;
    ++t;

    const std::uint32_t cols = doc_.member(body, "cols");
    if (doc_.childCount(cols) > 0) {
      if (t >= tokens_.size() || tokens_[t].kind != kOpenParen) return false;
      const std::size_t close = matchingParen(t);
      if (close == kNoToken) return false;
      out.columnList = true;
      out.columnListClose = tokens_[close].start;
      for (std::uint32_t c = doc_.at(cols).firstChild; c != kNone; c = doc_.at(c).next) {
        const std::uint32_t target = doc_.member(c, "ResTarget");
        // INSERT INTO t (a.b) or (a[1]): an assignment into part of a column.
        if (doc_.member(target, "indirection") != kNone) return false;
        out.columns.emplace_back(doc_.stringMember(target, "name"));
      }
      t = close + 1;
    }
    out.overridingEnd = t > 0 ? tokens_[t - 1].end : 0;
    const std::string_view override = doc_.stringMember(body, "override");
    if (override == "OVERRIDING_USER_VALUE" || override == "OVERRIDING_SYSTEM_VALUE") {
      if (t + 2 >= tokens_.size() || tokens_[t].kind != PG_QUERY__TOKEN__OVERRIDING) return false;
      out.overriding = override == "OVERRIDING_USER_VALUE" ? InsertShape::Overriding::kUser
                                                           : InsertShape::Overriding::kSystem;
      out.overridingEnd = tokens_[t + 2].end;
      t += 3;
    }
    if (t >= tokens_.size()) return false;
    out.sourceBegin = tokens_[t].start;

    // The tail: ON CONFLICT ..., RETURNING ...
    out.returningBegin = out.statementEnd;
    const std::uint32_t returning = doc_.member(body, "returningList");
    if (doc_.childCount(returning) > 0) {
      const std::uint32_t first = doc_.member(doc_.at(returning).firstChild, "ResTarget");
      const std::optional<std::size_t> at = doc_.sizeMember(first, "location");
      const std::size_t rt = at ? tokenAt(*at) : kNoToken;
      if (rt == kNoToken || rt == 0 || tokens_[rt - 1].kind != PG_QUERY__TOKEN__RETURNING) {
        return false;
      }
      out.returningBegin = tokens_[rt - 1].start;
    }
    out.tailBegin = out.returningBegin;
    const std::uint32_t conflict = doc_.member(body, "onConflictClause");
    if (conflict != kNone) {
      const std::optional<std::size_t> at = doc_.sizeMember(conflict, "location");
      const std::size_t ct = at ? tokenAt(*at) : kNoToken;
      if (ct == kNoToken || tokens_[ct].kind != PG_QUERY__TOKEN__ON) return false;
      out.tailBegin = std::min(out.tailBegin, tokens_[ct].start);
    }

    const std::uint32_t select = doc_.member(doc_.member(body, "selectStmt"), "SelectStmt");
    if (select == kNone) {
      if (t + 1 >= tokens_.size() || tokens_[t].kind != PG_QUERY__TOKEN__DEFAULT) return false;
      out.source = InsertShape::Source::kDefaultValues;
      out.sourceEnd = tokens_[t + 1].end;
    } else if (tokens_[t].kind == PG_QUERY__TOKEN__VALUES &&
               doc_.member(select, "valuesLists") != kNone) {
      out.source = InsertShape::Source::kValues;
      ++t;
      while (true) {
        if (t >= tokens_.size() || tokens_[t].kind != kOpenParen) return false;
        const std::size_t close = matchingParen(t);
        if (close == kNoToken) return false;
        std::vector<InsertShape::Item> row;
        std::size_t itemStart = t + 1, d = 0;
        for (std::size_t i = t + 1; i <= close; ++i) {
          const int k = tokens_[i].kind;
          if (i == close || (d == 0 && k == kComma)) {
            if (i == itemStart) return false;  // an empty item
            InsertShape::Item item{
                tokens_[itemStart].start, tokens_[i - 1].end,
                i == itemStart + 1 && tokens_[itemStart].kind == PG_QUERY__TOKEN__DEFAULT};
            row.push_back(item);
            itemStart = i + 1;
            continue;
          }
          if (k == kOpenParen) ++d;
          if (k == kCloseParen) --d;
        }
        out.rows.push_back(std::move(row));
        out.rowCloses.push_back(tokens_[close].start);
        out.sourceEnd = tokens_[close].end;
        t = close + 1;
        if (t < tokens_.size() && tokens_[t].kind == kComma) {
          ++t;
          continue;
        }
        break;
      }
      // What follows the rows must be the tail (a VALUES list with ORDER BY or
      // LIMIT is a query).
      if (t < tokens_.size() && tokens_[t].start < out.statementEnd &&
          tokens_[t].start != out.tailBegin) {
        out.source = InsertShape::Source::kQuery;
        out.rows.clear();
        out.rowCloses.clear();
        out.sourceEnd = lastTokenEnd(out.sourceBegin, out.tailBegin);
      }
    } else {
      out.source = InsertShape::Source::kQuery;
      out.sourceEnd = lastTokenEnd(out.sourceBegin, out.tailBegin);
    }
    if (out.sourceEnd == 0 || out.sourceEnd > out.tailBegin) return false;

    for (std::size_t i = tokenAtOrAfter(out.withBegin);
         i < tokens_.size() && tokens_[i].start < out.sourceEnd; ++i) {
      if (tokens_[i].kind != PG_QUERY__TOKEN__PARAM) continue;
      const std::string_view text =
          sql_.substr(tokens_[i].start + 1, tokens_[i].end - tokens_[i].start - 1);
      int n = 0;
      for (char c : text) {
        if (c < '0' || c > '9' || n > 65535) return false;
        n = n * 10 + (c - '0');
      }
      out.params.push_back(n);
    }
    std::ranges::sort(out.params);
    out.params.erase(std::unique(out.params.begin(), out.params.end()), out.params.end());
    out.ok = true;
    return true;
  }

 private:
  const JsonDoc& doc_;
  std::string_view sql_;
};

InsertShape analyzeInsertOrThrow(std::string_view sql) {
  InsertShape result;
  (void)withTree(sql, [&](const JsonDoc& doc, const std::vector<Token>& tokens) {
    const std::uint32_t stmts = doc.member(0, "stmts");
    if (doc.childCount(stmts) != 1) return;
    InsertShape shape;
    InsertReader reader(doc, sql, tokens);
    if (reader.read(doc.at(stmts).firstChild, shape)) result = std::move(shape);
  });
  return result;
}

}  // namespace

DeterminismAnalysis analyzeDeterminism(std::string_view sql) {
  try {
    return analyzeOrThrow(sql);
  } catch (...) {  // allocation failure
    return DeterminismAnalysis{};
  }
}

InsertShape analyzeInsert(std::string_view sql) {
  try {
    return analyzeInsertOrThrow(sql);
  } catch (...) {  // allocation failure
    return InsertShape{};
  }
}

namespace {

// One embedded expression or statement of a PL/pgSQL body.
void judgeQuery(std::string_view query, TriggerFunctionAnalysis& out) {
  if (out.perServer) return;
  std::string text(query);
  Classification c = classify(text);
  DeterminismAnalysis d;
  if (c.parseError) {
    // An expression ("TG_OP = 'INSERT'") or an assignment ("NEW.at := now()"):
    // as a SELECT of it, ":=" read as "=", to find its calls.
    std::string expr = text;
    for (std::size_t p = expr.find(":="); p != std::string::npos; p = expr.find(":=", p)) {
      expr.replace(p, 2, " =");
    }
    text = "SELECT " + expr;
    c = classify(text);
  }
  if (c.parseError) {
    out.perServer = true;
    out.reason = "a statement pghandoff cannot parse (" + std::string(query.substr(0, 60)) + ")";
    return;
  }
  d = analyzeDeterminism(text);
  if (!d.calls.empty()) {
    out.perServer = true;
    out.reason = "it calls " + d.calls.front().function;
    return;
  }
  if (c.hasNondeterministic || c.hasSideEffectFunction || c.hasUserFunction ||
      !d.unsupported.empty()) {
    out.perServer = true;
    out.reason = c.hasUserFunction ? "it calls a function pghandoff cannot judge"
                                   : "it computes values per server";
    return;
  }
  for (auto& w : d.writes) out.writes.push_back(std::move(w));
}

}  // namespace

TriggerFunctionAnalysis analyzeTriggerFunction(std::string_view createFunction) {
  TriggerFunctionAnalysis out;
  try {
    if (createFunction.find('\0') != std::string_view::npos) {
      out.perServer = true;
      out.reason = "its body cannot be read";
      return out;
    }
    const std::string text(createFunction);
    PgQueryPlpgsqlParseResult r = pg_query_parse_plpgsql(text.c_str());
    struct Guard {
      PgQueryPlpgsqlParseResult& r;
      ~Guard() { pg_query_free_plpgsql_parse_result(r); }
    } guard{r};
    JsonDoc doc;
    if (r.error != nullptr || r.plpgsql_funcs == nullptr ||
        !doc.parse(r.plpgsql_funcs, std::strlen(r.plpgsql_funcs))) {
      out.perServer = true;
      out.reason = "its PL/pgSQL body does not parse";
      return out;
    }
    for (std::uint32_t i = 0; i < doc.size() && !out.perServer; ++i) {
      const sqljson::JsonNode& n = doc.at(i);
      if (n.type != JsonType::kObject) continue;
      if (n.key == "PLpgSQL_stmt_dynexecute" || n.key == "PLpgSQL_stmt_dynfors" ||
          n.key == "PLpgSQL_stmt_open") {
        out.perServer = true;
        out.reason = "it runs dynamic SQL (EXECUTE) or opens a cursor";
      } else if (n.key == "PLpgSQL_expr") {
        judgeQuery(doc.stringMember(i, "query"), out);
      }
    }
  } catch (...) {
    out.perServer = true;
    out.reason = "its body cannot be read";
  }
  return out;
}

std::shared_ptr<const StatementAnalysis> AnalysisCache::get(std::string_view sql) {
  if (sql.size() <= kMaxCachedSqlBytes) {
    std::lock_guard lock(mu_);
    auto it = map_.find(sql);
    if (it != map_.end()) return it->second;
  }
  auto a = std::make_shared<StatementAnalysis>();
  a->determinism = analyzeDeterminism(sql);
  for (const auto& w : a->determinism.writes) {
    if (w.op == WriteTarget::Op::kInsert && !w.inCte) {
      a->insert = analyzeInsert(sql);
      break;
    }
  }
  if (sql.size() <= kMaxCachedSqlBytes) {
    std::lock_guard lock(mu_);
    if (map_.size() >= capacity_) map_.clear();
    map_.emplace(std::string(sql), a);
  }
  return a;
}

std::optional<std::string> substitute(std::string_view sql, std::vector<Replacement> r) {
  try {
    std::ranges::sort(r, [](const Replacement& a, const Replacement& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    std::size_t size = sql.size();
    for (std::size_t i = 0; i < r.size(); ++i) {
      if (r[i].begin > r[i].end || r[i].end > sql.size()) return std::nullopt;
      // Equal starts: two insertions, or an insertion and a replacement at one
      // offset, have no defined order; two replacements overlap.
      if (i > 0 && (r[i].begin < r[i - 1].end || r[i].begin == r[i - 1].begin)) {
        return std::nullopt;
      }
      size = size - (r[i].end - r[i].begin) + r[i].text.size();
    }
    std::string out;
    out.reserve(size);
    std::size_t p = 0;
    for (const Replacement& x : r) {
      out.append(sql.substr(p, x.begin - p));
      out.append(x.text);
      p = x.end;
    }
    out.append(sql.substr(p));
    return out;
  } catch (...) {  // allocation failure
    return std::nullopt;
  }
}

std::optional<std::string> fingerprint(std::string_view sql) {
  try {
    if (sql.find('\0') != std::string_view::npos) return std::nullopt;
    const std::string text(sql);
    struct Guard {
      explicit Guard(PgQueryFingerprintResult r) : result(r) {}
      ~Guard() { pg_query_free_fingerprint_result(result); }
      Guard(const Guard&) = delete;
      Guard& operator=(const Guard&) = delete;
      PgQueryFingerprintResult result;
    };
    const Guard fp{pg_query_fingerprint(text.c_str())};
    if (fp.result.error != nullptr || fp.result.fingerprint_str == nullptr) return std::nullopt;
    return std::string(fp.result.fingerprint_str);
  } catch (...) {
    return std::nullopt;
  }
}

}  // namespace pghandoff::protocol
