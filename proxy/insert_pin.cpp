// Pinning an INSERT: see insert_pin.h.
#include "proxy/insert_pin.h"

#include <algorithm>

namespace pghandoff::proxy {

using protocol::InsertShape;
using protocol::VolatileCall;

std::string sqlLiteral(const std::optional<std::string>& value) {
  if (!value) return "NULL";
  std::string out = "E'";
  out.reserve(value->size() + 3);
  for (char c : *value) {
    if (c == '\'' || c == '\\') out += c;
    out += c;
  }
  out += '\'';
  return out;
}

std::string sqlIdentifier(std::string_view name) {
  // Always quoted: a column named "user" or "order" is common, and a quoted
  // name is the name exactly as the catalog has it.
  std::string out = "\"";
  for (char c : name) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

namespace {

bool isTransactionTime(const VolatileCall& c) {
  return c.kind == VolatileCall::Kind::kTransactionTime && c.function != "age";
}

bool isLiteralCall(const VolatileCall& c) {
  return !c.function.empty() && c.function[0] == '\'';
}

// The expression the prestep evaluates for a call.
std::string callExpression(std::string_view sql, const VolatileCall& c) {
  const std::string_view text = sql.substr(c.begin, c.end - c.begin);
  if (isLiteralCall(c)) return "CAST(" + std::string(text) + " AS " + c.type + ")";
  return std::string(text);
}

// The prestep can evaluate the call by itself: no parameter, and a
// sequence's name written as a literal.
bool standalone(std::string_view sql, const VolatileCall& c) {
  const std::string_view text = sql.substr(c.begin, c.end - c.begin);
  if (text.find('$') != std::string_view::npos) return false;
  if (c.kind == VolatileCall::Kind::kSequence && c.function != "lastval") {
    return c.argument && !c.argument->empty() && (*c.argument)[0] == '\'';
  }
  return true;
}

const TableColumn* findColumn(const std::vector<TableColumn>& table, std::string_view name) {
  for (const auto& c : table) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

// The type to cast a fetched value to in the rewritten INSERT, so that it
// reaches the column as the original expression would have (assignment cast
// from its own type); none (untyped) for text-like and unknown types, which
// the column's input function takes directly.
std::string_view castFor(std::uint32_t oid) {
  switch (oid) {
    case 16:
      return "::pg_catalog.bool";
    case 17:
      return "::pg_catalog.bytea";
    case 18:
      return "::pg_catalog.\"char\"";
    case 20:
      return "::pg_catalog.int8";
    case 21:
      return "::pg_catalog.int2";
    case 23:
      return "::pg_catalog.int4";
    case 26:
      return "::pg_catalog.oid";
    case 114:
      return "::pg_catalog.json";
    case 650:
      return "::pg_catalog.cidr";
    case 700:
      return "::pg_catalog.float4";
    case 701:
      return "::pg_catalog.float8";
    case 790:
      return "::pg_catalog.money";
    case 829:
      return "::pg_catalog.macaddr";
    case 869:
      return "::pg_catalog.inet";
    case 1042:
      return "::pg_catalog.bpchar";
    case 1082:
      return "::pg_catalog.date";
    case 1083:
      return "::pg_catalog.time";
    case 1114:
      return "::pg_catalog.timestamp";
    case 1184:
      return "::pg_catalog.timestamptz";
    case 1186:
      return "::pg_catalog.interval";
    case 1266:
      return "::pg_catalog.timetz";
    case 1560:
      return "::pg_catalog.bit";
    case 1562:
      return "::pg_catalog.varbit";
    case 1700:
      return "::pg_catalog.numeric";
    case 2950:
      return "::pg_catalog.uuid";
    case 3802:
      return "::pg_catalog.jsonb";
    case 1000:
      return "::pg_catalog.bool[]";
    case 1005:
      return "::pg_catalog.int2[]";
    case 1007:
      return "::pg_catalog.int4[]";
    case 1016:
      return "::pg_catalog.int8[]";
    case 1021:
      return "::pg_catalog.float4[]";
    case 1022:
      return "::pg_catalog.float8[]";
    case 1231:
      return "::pg_catalog.numeric[]";
    case 2951:
      return "::pg_catalog.uuid[]";
    case 3807:
      return "::pg_catalog.jsonb[]";
    default:
      return "";
  }
}

struct Scope {
  std::size_t begin, end;
};

bool inside(const VolatileCall& c, Scope s) {
  return c.begin >= s.begin && c.end <= s.end;
}

}  // namespace

std::optional<InsertPlan> planInsert(std::string_view sql, const InsertShape& shape,
                                     const protocol::DeterminismAnalysis& det,
                                     const std::vector<TableColumn>& table, std::string& why,
                                     bool& none) {
  none = false;
  if (!shape.ok || !det.parsed) {
    why = "the statement could not be analysed";
    return std::nullopt;
  }
  if (table.empty()) {
    none = true;  // no such table (the statement fails by itself) or no columns
    return std::nullopt;
  }
  const Scope with{shape.withBegin, shape.insertBegin};
  const Scope source{shape.sourceBegin, shape.sourceEnd};
  const Scope conflict{shape.tailBegin, shape.returningBegin};

  // The columns the statement gives values for.
  std::vector<std::string> given = shape.columns;
  const bool positional = !shape.columnList;
  if (positional && shape.source == InsertShape::Source::kValues) {
    const std::size_t k = shape.rows.empty() ? 0 : shape.rows[0].size();
    if (k > table.size()) {
      none = true;  // more values than columns: the statement fails by itself
      return std::nullopt;
    }
    for (std::size_t i = 0; i < k; ++i) given.push_back(table[i].name);
  }
  if (shape.source == InsertShape::Source::kValues) {
    for (const auto& row : shape.rows) {
      if (row.size() != given.size()) {
        none = true;  // VALUES lists of other lengths: the statement fails by itself
        return std::nullopt;
      }
    }
  }
  std::vector<const TableColumn*> givenCols;
  for (const auto& name : given) {
    const TableColumn* c = findColumn(table, name);
    if (c == nullptr) {
      none = true;  // no such column: the statement fails by itself
      return std::nullopt;
    }
    givenCols.push_back(c);
  }
  // A column whose per-server default the catalog read could not show (an
  // updatable view's: the base table's) cannot be computed ahead.
  auto unknownDefault = [&](const TableColumn& c) {
    if (!c.volatileDefault || !c.defaultExpr.empty()) return false;
    why = "it inserts through a view and leaves " + c.name +
          " to a default of the table below, which pghandoff does not read; give every column";
    return true;
  };
  // Defaulted columns the statement leaves to their default.
  std::vector<const TableColumn*> added;
  for (const auto& c : table) {
    if (!c.volatileDefault || c.generated) continue;
    const bool named = std::find(given.begin(), given.end(), c.name) != given.end();
    // A positional query source covers columns the prestep's width tells.
    if (named) continue;
    if (unknownDefault(c)) return std::nullopt;
    added.push_back(&c);
  }

  // Calls outside the source: transaction time in WITH / ON CONFLICT is
  // pinned; anything else there cannot be; RETURNING is left alone.
  for (const auto& c : det.calls) {
    if (inside(c, source) || c.begin >= shape.returningBegin) continue;
    if ((inside(c, with) || inside(c, conflict)) && isTransactionTime(c) && standalone(sql, c)) {
      continue;
    }
    why = "it computes " + c.function +
          " outside the rows it inserts (in a WITH or ON CONFLICT "
          "clause), where each server would compute it for itself";
    return std::nullopt;
  }

  InsertPlan plan;
  bool anyAlways = false;
  if (shape.source != InsertShape::Source::kQuery) {
    plan.path = InsertPlan::Path::kValues;
    std::vector<std::string> exprs;
    auto slot = [&](std::string expr) {
      exprs.push_back(std::move(expr));
      return exprs.size() - 1;
    };
    auto defaultSlot = [&](const TableColumn& c) {
      if (c.identity == 'a') anyAlways = true;
      return slot("(" + c.defaultExpr + ")::" + c.type);
    };
    // Calls in the WITH clause come first in the text; the prestep evaluates
    // in text order.
    for (const auto& c : det.calls) {
      if (!inside(c, with)) continue;
      plan.edits.push_back(
          {c.begin,
           c.end,
           {{"", slot(callExpression(sql, c)), isLiteralCall(c) ? "" : "::" + c.type}}});
    }
    for (std::size_t r = 0; r < shape.rows.size(); ++r) {
      const auto& row = shape.rows[r];
      for (std::size_t i = 0; i < row.size(); ++i) {
        const auto& item = row[i];
        if (item.isDefault) {
          const TableColumn& c = *givenCols[i];
          if (unknownDefault(c)) return std::nullopt;
          if (c.volatileDefault && !c.generated) {
            plan.edits.push_back({item.begin, item.end, {{"", defaultSlot(c), ""}}});
          }
          continue;
        }
        for (const auto& c : det.calls) {
          if (c.begin < item.begin || c.end > item.end) continue;
          if (!standalone(sql, c)) {
            why = "it computes " + c.function +
                  " from a parameter or column, which the proxy cannot evaluate ahead";
            return std::nullopt;
          }
          plan.edits.push_back(
              {c.begin,
               c.end,
               {{"", slot(callExpression(sql, c)), isLiteralCall(c) ? "" : "::" + c.type}}});
        }
      }
      if (!added.empty()) {
        InsertPlan::Edit e{shape.rowCloses[r], shape.rowCloses[r], {}};
        for (const TableColumn* c : added) {
          e.pieces.push_back({", ", SIZE_MAX, ""});
          e.pieces.push_back({"", defaultSlot(*c), ""});
        }
        plan.edits.push_back(std::move(e));
      }
    }
    if (shape.source == InsertShape::Source::kDefaultValues) {
      if (!added.empty()) {
        // DEFAULT VALUES -> (added) VALUES (v, ...)
        InsertPlan::Edit e{shape.sourceBegin, shape.sourceEnd, {{"VALUES (", SIZE_MAX, ""}}};
        for (std::size_t i = 0; i < added.size(); ++i) {
          if (i > 0) e.pieces.push_back({", ", SIZE_MAX, ""});
          e.pieces.push_back({"", defaultSlot(*added[i]), ""});
        }
        e.pieces.push_back({")", SIZE_MAX, ""});
        plan.edits.push_back(std::move(e));
      }
    }
    for (const auto& c : det.calls) {
      if (!inside(c, conflict)) continue;
      plan.edits.push_back(
          {c.begin,
           c.end,
           {{"", slot(callExpression(sql, c)), isLiteralCall(c) ? "" : "::" + c.type}}});
    }
    if (exprs.empty()) {
      none = true;
      return std::nullopt;
    }
    // The added columns' names, and OVERRIDING SYSTEM VALUE for an identity
    // column GENERATED ALWAYS.
    if (anyAlways && shape.overriding == InsertShape::Overriding::kUser) {
      why = "OVERRIDING USER VALUE asks each server to generate the identity values";
      return std::nullopt;
    }
    const bool needOverriding = anyAlways && shape.overriding == InsertShape::Overriding::kNone;
    if (!added.empty()) {
      std::string names;
      for (const TableColumn* c : added) names += ", " + sqlIdentifier(c->name);
      if (shape.columnList) {
        plan.edits.push_back(
            {shape.columnListClose, shape.columnListClose, {{names, SIZE_MAX, ""}}});
        if (needOverriding) {
          plan.edits.push_back({shape.overridingEnd,
                                shape.overridingEnd,
                                {{" OVERRIDING SYSTEM VALUE", SIZE_MAX, ""}}});
        }
      } else {
        std::string list;
        for (const auto& g : given) list += (list.empty() ? "" : ", ") + sqlIdentifier(g);
        list += given.empty() ? names.substr(2) : names;
        plan.edits.push_back(
            {shape.targetEnd,
             shape.targetEnd,
             {{" (" + list + ")" + (needOverriding ? " OVERRIDING SYSTEM VALUE" : ""), SIZE_MAX,
               ""}}});
      }
    } else if (needOverriding) {
      plan.edits.push_back(
          {shape.overridingEnd, shape.overridingEnd, {{" OVERRIDING SYSTEM VALUE", SIZE_MAX, ""}}});
    }
    plan.slots = exprs.size();
    plan.prestep = "VALUES ";
    for (std::size_t i = 0; i < exprs.size(); ++i) {
      if (i > 0) plan.prestep += ", ";
      plan.prestep += "((" + exprs[i] + ")::pg_catalog.text)";
    }
    return plan;
  }

  // The query path.
  plan.path = InsertPlan::Path::kQuery;
  for (const auto& c : det.calls) {
    if (inside(c, with) || inside(c, conflict)) {
      plan.timeCalls.push_back(c);
      plan.needsTime = true;
    }
  }
  if (shape.overriding == InsertShape::Overriding::kUser) {
    why = "OVERRIDING USER VALUE asks each server to generate the identity values";
    return std::nullopt;
  }
  plan.columns = shape.columns;
  for (const auto& c : table) plan.tableColumns.push_back(c.name);
  plan.withText = std::string(sql.substr(shape.withBegin, shape.insertBegin - shape.withBegin));
  plan.withOffset = shape.withBegin;
  plan.withDml = shape.withDml;
  plan.head = std::string(sql.substr(shape.insertBegin, shape.targetEnd - shape.insertBegin));
  plan.overriding =
      shape.overriding == InsertShape::Overriding::kSystem ? " OVERRIDING SYSTEM VALUE" : "";
  plan.tail = std::string(sql.substr(shape.tailBegin, shape.statementEnd - shape.tailBegin));
  plan.tailOffset = shape.tailBegin;
  plan.prestepUsesParams = !shape.params.empty();
  std::string select = plan.withText + "SELECT pghandoff_src.*";
  for (const TableColumn* c : added) {
    plan.added.push_back(c->name);
    plan.addedIdentity.push_back(c->identity);
    select += ", (" + c->defaultExpr + ")::" + c->type;
  }
  if (plan.needsTime) {
    select += ", pg_catalog.to_char(pg_catalog.now(), 'YYYY-MM-DD HH24:MI:SS.US TZH:TZM')";
  }
  select += " FROM (" +
            std::string(sql.substr(shape.sourceBegin, shape.sourceEnd - shape.sourceBegin)) +
            ") AS pghandoff_src";
  plan.prestep = std::move(select);
  return plan;
}

std::optional<PinnedTexts> finishValues(std::string_view sql, const InsertPlan& plan,
                                        const std::vector<std::optional<std::string>>& values) {
  if (plan.path != InsertPlan::Path::kValues || values.size() != plan.slots) return std::nullopt;
  std::vector<protocol::Replacement> reps;
  reps.reserve(plan.edits.size());
  for (const auto& e : plan.edits) {
    std::string text;
    for (const auto& p : e.pieces) {
      text += p.text;
      if (p.slot != SIZE_MAX) {
        text += sqlLiteral(values[p.slot]);
        if (values[p.slot]) text += p.cast;
      }
    }
    reps.push_back({e.begin, e.end, std::move(text)});
  }
  auto out = protocol::substitute(sql, std::move(reps));
  if (!out) return std::nullopt;
  return PinnedTexts{*out, *out};
}

std::optional<PinnedTexts> finishQuery(
    const InsertPlan& plan, const std::vector<std::vector<std::optional<std::string>>>& rows,
    const std::vector<std::uint32_t>& types, const std::optional<std::string>& timeValue) {
  if (plan.path != InsertPlan::Path::kQuery) return std::nullopt;
  const std::size_t extra = plan.added.size() + (plan.needsTime ? 1 : 0);
  if (types.size() < extra) return std::nullopt;
  const std::size_t width = types.size() - extra;  // the source's columns
  // The columns the source fills, then the added ones it does not cover.
  std::vector<std::string> columns = plan.columns;
  if (columns.empty()) {
    if (width > plan.tableColumns.size()) return std::nullopt;
    columns.assign(plan.tableColumns.begin(),
                   plan.tableColumns.begin() + static_cast<std::ptrdiff_t>(width));
  }
  std::vector<std::size_t> use;  // indexes into plan.added
  bool anyAlways = false;
  for (std::size_t i = 0; i < plan.added.size(); ++i) {
    if (std::find(columns.begin(), columns.end(), plan.added[i]) != columns.end()) continue;
    use.push_back(i);
    if (plan.addedIdentity[i] == 'a') anyAlways = true;
  }
  std::string list;
  for (const auto& c : columns) list += (list.empty() ? "" : ", ") + sqlIdentifier(c);
  for (std::size_t i : use) list += (list.empty() ? "" : ", ") + sqlIdentifier(plan.added[i]);

  std::string body =
      plan.head + " (" + list + ")" +
      (plan.overriding.empty() && anyAlways ? " OVERRIDING SYSTEM VALUE" : plan.overriding);
  if (rows.empty()) {
    body += " SELECT ";
    for (std::size_t i = 0; i < width + use.size(); ++i) body += i == 0 ? "NULL" : ", NULL";
    body += " WHERE false";
  } else {
    body += " VALUES ";
    bool firstRow = true;
    for (const auto& row : rows) {
      if (row.size() != types.size()) return std::nullopt;
      body += firstRow ? "(" : ", (";
      firstRow = false;
      for (std::size_t i = 0; i < width; ++i) {
        if (i > 0) body += ", ";
        body += sqlLiteral(row[i]);
        if (row[i]) body += castFor(types[i]);
      }
      for (std::size_t k = 0; k < use.size(); ++k) {
        if (width + k > 0) body += ", ";
        body += sqlLiteral(row[width + use[k]]);
      }
      body += ")";
    }
  }
  // The tail (ON CONFLICT, RETURNING) with transaction-time calls pinned.
  std::string tail = plan.tail;
  std::string with = plan.withText;
  if (plan.needsTime) {
    if (!timeValue) return std::nullopt;
    std::vector<protocol::Replacement> tailReps, withReps;
    for (const auto& c : plan.timeCalls) {
      const std::string lit =
          isLiteralCall(c) ? "'" + *timeValue + "'" : "'" + *timeValue + "'::" + c.type;
      if (c.begin >= plan.tailOffset) {
        tailReps.push_back({c.begin - plan.tailOffset, c.end - plan.tailOffset, lit});
      } else {
        withReps.push_back({c.begin - plan.withOffset, c.end - plan.withOffset, lit});
      }
    }
    auto t = protocol::substitute(tail, std::move(tailReps));
    auto w = protocol::substitute(with, std::move(withReps));
    if (!t || !w) return std::nullopt;
    tail = *t;
    with = *w;
  }
  if (!tail.empty()) body += " " + tail;
  PinnedTexts out;
  // A writable CTE ran in the prestep on the authoritative side; the mirror
  // runs it now. A read-only WITH is harmless on both.
  out.authoritative = (plan.withDml ? std::string() : with) + body;
  out.mirror = with + body;
  return out;
}

}  // namespace pghandoff::proxy
