#pragma once

// Thin RAII libpq helpers for tests: connect, run SQL, get rows as strings and
// the SQLSTATE of an error.

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

struct pg_conn;

namespace pghandoff::test {

struct PqResult {
  bool ok = false;         // PGRES_COMMAND_OK / TUPLES_OK / COPY_* / EMPTY_QUERY
  std::string status;      // PQresStatus(), e.g. "PGRES_TUPLES_OK", "PGRES_FATAL_ERROR"
  std::string sqlstate;    // PG_DIAG_SQLSTATE of an error, "" on success
  std::string error;       // primary error message (PG_DIAG_MESSAGE_PRIMARY or PQerrorMessage)
  std::string commandTag;  // PQcmdStatus(), e.g. "INSERT 0 3"
  std::string affected;    // PQcmdTuples(), "" when not applicable
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;  // NULL is "" here ...
  std::vector<std::vector<bool>> nulls;        // ... and true here

  // rows[row][col]; throws std::out_of_range.
  [[nodiscard]] const std::string& value(std::size_t row = 0, std::size_t col = 0) const;
  [[nodiscard]] bool isNull(std::size_t row = 0, std::size_t col = 0) const;
};

class PqConn {
 public:
  // Connects synchronously (PQconnectdb); check ok(). conninfo may be a URL
  // or key=value string.
  explicit PqConn(const std::string& conninfo);
  ~PqConn();
  PqConn(PqConn&&) noexcept;
  PqConn& operator=(PqConn&&) noexcept;
  PqConn(const PqConn&) = delete;
  PqConn& operator=(const PqConn&) = delete;

  // CONNECTION_OK right now (PQstatus).
  [[nodiscard]] bool ok() const;
  // PQerrorMessage, trimmed.
  [[nodiscard]] std::string error() const;
  // PQexec: with several statements the result is the last one's (or the
  // first error's). A broken connection gives ok=false with the error.
  PqResult exec(const std::string& sql);
  // PQexecParams (the extended query protocol: Parse/Bind/Describe/Execute/
  // Sync), text parameters.
  PqResult execParams(const std::string& sql, const std::vector<std::string>& params);
  // PQprepare / PQexecPrepared: a named statement (Parse 'name' ... Sync),
  // then Bind/Execute of it.
  PqResult prepare(const std::string& name, const std::string& sql);
  PqResult execPrepared(const std::string& name, const std::vector<std::string>& params);
  // exec() that throws std::runtime_error (message and SQLSTATE) unless ok.
  PqResult execOrThrow(const std::string& sql);
  // NOTICE/WARNING messages received so far (primary text), instead of stderr.
  [[nodiscard]] const std::vector<std::string>& notices() const;
  [[nodiscard]] int backendPid() const;
  [[nodiscard]] pg_conn* raw() const;

 private:
  enum class Mode { kSimple, kParams, kPrepare, kPrepared };
  PqResult run(const std::string& sql, const std::vector<std::string>* params,
               Mode mode = Mode::kSimple);
  struct State;
  std::unique_ptr<State> state_;
};

// Connects, runs sql and returns the first column of the first row. Throws
// std::runtime_error on a failed connection, a failed query or no rows.
std::string queryOne(const std::string& conninfo, const std::string& sql);

}  // namespace pghandoff::test
