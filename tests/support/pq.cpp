#include "tests/support/pq.h"

#include <libpq-fe.h>

#include <stdexcept>

namespace pghandoff::test {
namespace {

std::string trimmed(const char* s) {
  std::string out = s == nullptr ? "" : s;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ' || out.back() == '\r')) {
    out.pop_back();
  }
  return out;
}

std::string field(const PGresult* res, int code) {
  const char* v = PQresultErrorField(res, code);
  return v == nullptr ? "" : v;
}

}  // namespace

struct PqConn::State {
  PGconn* conn = nullptr;
  std::vector<std::string> notices;

  ~State() {
    if (conn != nullptr) {
      PQfinish(conn);
    }
  }
};

const std::string& PqResult::value(std::size_t row, std::size_t col) const {
  return rows.at(row).at(col);
}

bool PqResult::isNull(std::size_t row, std::size_t col) const {
  return nulls.at(row).at(col);
}

PqConn::PqConn(const std::string& conninfo) : state_(std::make_unique<State>()) {
  state_->conn = PQconnectdb(conninfo.c_str());
  if (state_->conn == nullptr) {
    throw std::runtime_error("PQconnectdb: out of memory");
  }
  // Collect notices instead of libpq's default print to stderr.
  PQsetNoticeReceiver(
      state_->conn,
      [](void* arg, const PGresult* res) {
        static_cast<State*>(arg)->notices.push_back(field(res, PG_DIAG_MESSAGE_PRIMARY));
      },
      state_.get());
}

PqConn::~PqConn() = default;
PqConn::PqConn(PqConn&&) noexcept = default;
PqConn& PqConn::operator=(PqConn&&) noexcept = default;

bool PqConn::ok() const {
  return state_ && PQstatus(state_->conn) == CONNECTION_OK;
}

std::string PqConn::error() const {
  return state_ ? trimmed(PQerrorMessage(state_->conn)) : "moved-from connection";
}

PqResult PqConn::exec(const std::string& sql) {
  return run(sql, nullptr);
}

PqResult PqConn::execParams(const std::string& sql, const std::vector<std::string>& params) {
  return run(sql, &params, Mode::kParams);
}

PqResult PqConn::prepare(const std::string& name, const std::string& sql) {
  std::vector<std::string> nameAndSql{name, sql};
  return run(sql, &nameAndSql, Mode::kPrepare);
}

PqResult PqConn::execPrepared(const std::string& name, const std::vector<std::string>& params) {
  return run(name, &params, Mode::kPrepared);
}

PqResult PqConn::run(const std::string& sql, const std::vector<std::string>* params, Mode mode) {
  PqResult out;
  if (!state_) {
    out.status = "NO_CONNECTION";
    out.error = "moved-from connection";
    return out;
  }
  PGresult* res = nullptr;
  std::vector<const char*> values;
  if (params != nullptr) {
    for (const auto& p : *params) values.push_back(p.c_str());
  }
  const int n = static_cast<int>(values.size());
  switch (mode) {
    case Mode::kSimple:
      res = PQexec(state_->conn, sql.c_str());
      break;
    case Mode::kParams:
      res = PQexecParams(state_->conn, sql.c_str(), n, nullptr, values.data(), nullptr, nullptr, 0);
      break;
    case Mode::kPrepare:  // params = {name, sql}
      res = PQprepare(state_->conn, values.at(0), values.at(1), 0, nullptr);
      break;
    case Mode::kPrepared:  // sql = the statement's name
      res = PQexecPrepared(state_->conn, sql.c_str(), n, values.data(), nullptr, nullptr, 0);
      break;
  }
  if (res == nullptr) {
    out.status = "NO_RESULT";
    out.error = error();
    return out;
  }
  const ExecStatusType st = PQresultStatus(res);
  out.status = PQresStatus(st);
  out.ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY ||
           st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_SINGLE_TUPLE;
  if (!out.ok) {
    out.sqlstate = field(res, PG_DIAG_SQLSTATE);
    out.error = field(res, PG_DIAG_MESSAGE_PRIMARY);
    if (out.error.empty()) {
      out.error = trimmed(PQresultErrorMessage(res));
    }
    if (out.error.empty()) {
      out.error = error();
    }
  }
  out.commandTag = PQcmdStatus(res);
  out.affected = PQcmdTuples(res);
  const int nf = PQnfields(res);
  const int nt = PQntuples(res);
  for (int c = 0; c < nf; ++c) {
    out.columns.emplace_back(PQfname(res, c));
  }
  out.rows.reserve(static_cast<std::size_t>(nt));
  for (int r = 0; r < nt; ++r) {
    std::vector<std::string> row;
    std::vector<bool> nullRow;
    for (int c = 0; c < nf; ++c) {
      const bool isNull = PQgetisnull(res, r, c) != 0;
      nullRow.push_back(isNull);
      row.emplace_back(isNull ? std::string()
                              : std::string(PQgetvalue(res, r, c),
                                            static_cast<std::size_t>(PQgetlength(res, r, c))));
    }
    out.rows.push_back(std::move(row));
    out.nulls.push_back(std::move(nullRow));
  }
  PQclear(res);
  return out;
}

PqResult PqConn::execOrThrow(const std::string& sql) {
  PqResult r = exec(sql);
  if (!r.ok) {
    throw std::runtime_error("query failed [" + r.sqlstate + "]: " + r.error);
  }
  return r;
}

const std::vector<std::string>& PqConn::notices() const {
  static const std::vector<std::string> kNone;
  return state_ ? state_->notices : kNone;
}

int PqConn::backendPid() const {
  return state_ ? PQbackendPID(state_->conn) : 0;
}

pg_conn* PqConn::raw() const {
  return state_ ? state_->conn : nullptr;
}

std::string queryOne(const std::string& conninfo, const std::string& sql) {
  PqConn conn(conninfo);
  if (!conn.ok()) {
    // Not the conninfo: it may carry a password.
    throw std::runtime_error("connection failed: " + conn.error());
  }
  const PqResult r = conn.execOrThrow(sql);
  if (r.rows.empty() || r.rows[0].empty()) {
    throw std::runtime_error("query returned no rows");
  }
  return r.rows[0][0];
}

}  // namespace pghandoff::test
