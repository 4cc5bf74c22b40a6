#include "migrate/pg.h"

#include <cstring>

#include "proxy/insert_pin.h"

namespace pghandoff::migrate {

namespace {

std::string trimmed(const char* s) {
  std::string out = s == nullptr ? "" : s;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

std::string sqlstateOf(const PGresult* r) {
  const char* s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  return s == nullptr ? "" : s;
}

}  // namespace

PgConn PgConn::open(const std::string& conninfo, std::string side,
                    const std::string& applicationName) {
  // expand_dbname: the dbname value may be a URL or a keyword list; what it
  // holds overrides the keywords before it, so application_name goes first
  // (the URL's own application_name wins).
  const char* keys[] = {"application_name", "dbname", nullptr};
  const char* vals[] = {applicationName.c_str(), conninfo.c_str(), nullptr};
  PGconn* c = PQconnectdbParams(keys, vals, 1);
  if (c == nullptr) throw PgError("cannot connect to the " + side + " server: out of memory");
  PgConn out;
  out.c_.reset(c, &PQfinish);
  out.side_ = std::move(side);
  if (PQstatus(c) != CONNECTION_OK) {
    throw PgError("cannot connect to the " + out.side_ + " server: " + trimmed(PQerrorMessage(c)),
                  "08001");
  }
  return out;
}

PgResult PgConn::exec(std::string_view sql) {
  auto t = tryExec(sql);
  if (!t.sqlstate.empty()) throw PgError(side_ + " server: " + t.message, t.sqlstate);
  return t.result;
}

PgConn::Tried PgConn::tryExec(std::string_view sql) {
  const std::string q(sql);
  PgResult r(PQexec(c_.get(), q.c_str()));
  Tried t;
  const auto st = r.raw() == nullptr ? PGRES_FATAL_ERROR : PQresultStatus(r.raw());
  if (st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE || st == PGRES_NONFATAL_ERROR) {
    t.sqlstate = r.raw() == nullptr ? "08006" : sqlstateOf(r.raw());
    if (t.sqlstate.empty()) t.sqlstate = "08006";
    t.message = trimmed(r.raw() != nullptr ? PQresultErrorMessage(r.raw()) : nullptr);
    if (t.message.empty()) t.message = trimmed(PQerrorMessage(c_.get()));
    return t;
  }
  t.result = std::move(r);
  return t;
}

PgResult PgConn::exec(std::string_view sql, const std::vector<std::optional<std::string>>& params) {
  const std::string q(sql);
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const auto& p : params) values.push_back(p ? p->c_str() : nullptr);
  PgResult r(PQexecParams(c_.get(), q.c_str(), static_cast<int>(values.size()), nullptr,
                          values.data(), nullptr, nullptr, 0));
  const auto st = r.raw() == nullptr ? PGRES_FATAL_ERROR : PQresultStatus(r.raw());
  if (st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE) {
    const std::string state = r.raw() == nullptr ? "08006" : sqlstateOf(r.raw());
    throw PgError(
        side_ + " server: " +
            trimmed(r.raw() != nullptr ? PQresultErrorMessage(r.raw()) : PQerrorMessage(c_.get())),
        state);
  }
  return r;
}

std::string PgConn::value(std::string_view sql) {
  auto r = exec(sql);
  if (r.rows() == 0 || r.cols() == 0 || r.isNull(0, 0)) return {};
  return r.get(0, 0);
}

std::string PgConn::ident(std::string_view name) const {
  char* q = PQescapeIdentifier(c_.get(), name.data(), name.size());
  if (q == nullptr) throw PgError(side_ + " server: cannot quote an identifier");
  std::string out(q);
  PQfreemem(q);
  return out;
}

std::string PgConn::literal(std::string_view value) const {
  char* q = PQescapeLiteral(c_.get(), value.data(), value.size());
  if (q == nullptr) throw PgError(side_ + " server: cannot quote a literal");
  std::string out(q);
  PQfreemem(q);
  return out;
}

std::string quoteIdent(std::string_view name) {
  return proxy::sqlIdentifier(name);
}

std::string qualified(std::string_view schema, std::string_view name) {
  return quoteIdent(schema) + "." + quoteIdent(name);
}

}  // namespace pghandoff::migrate
