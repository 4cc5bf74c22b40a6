// A small RAII layer over libpq for the migration commands (check, seed,
// verify): connections, results, errors with their SQLSTATE. Connection
// strings are never printed: errors name the side ("source", "target").
#pragma once

#include <libpq-fe.h>

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace pghandoff::migrate {

class PgError : public std::runtime_error {
 public:
  PgError(std::string message, std::string sqlstate = {})
      : std::runtime_error(std::move(message)), sqlstate_(std::move(sqlstate)) {}
  [[nodiscard]] const std::string& sqlstate() const { return sqlstate_; }

 private:
  std::string sqlstate_;
};

class PgResult {
 public:
  PgResult() = default;
  explicit PgResult(PGresult* r) : r_(r, &PQclear) {}
  [[nodiscard]] int rows() const { return r_ ? PQntuples(r_.get()) : 0; }
  [[nodiscard]] int cols() const { return r_ ? PQnfields(r_.get()) : 0; }
  [[nodiscard]] bool isNull(int row, int col) const { return PQgetisnull(r_.get(), row, col) != 0; }
  // "" for NULL.
  [[nodiscard]] std::string get(int row, int col) const {
    return std::string(PQgetvalue(r_.get(), row, col),
                       static_cast<std::size_t>(PQgetlength(r_.get(), row, col)));
  }
  [[nodiscard]] std::optional<std::string> opt(int row, int col) const {
    if (isNull(row, col)) return std::nullopt;
    return get(row, col);
  }
  [[nodiscard]] long long getInt(int row, int col) const { return std::stoll(get(row, col)); }
  [[nodiscard]] bool getBool(int row, int col) const { return get(row, col) == "t"; }
  [[nodiscard]] std::string colName(int col) const { return PQfname(r_.get(), col); }
  [[nodiscard]] PGresult* raw() const { return r_.get(); }

 private:
  std::shared_ptr<PGresult> r_;
};

class PgConn {
 public:
  // Connects (blocking). `side` names the server in errors ("source",
  // "target"). `applicationName` is set unless the conninfo sets one.
  // Throws PgError; the message never holds the connection string.
  static PgConn open(const std::string& conninfo, std::string side,
                     const std::string& applicationName = "pghandoff");

  PgConn() = default;
  PgConn(PgConn&&) noexcept = default;
  PgConn& operator=(PgConn&&) noexcept = default;

  // Runs one or more statements; the last result. Throws PgError on error.
  PgResult exec(std::string_view sql);
  // One statement with text parameters (nullopt = NULL).
  PgResult exec(std::string_view sql, const std::vector<std::optional<std::string>>& params);
  // The first column of the first row ("" when none or NULL).
  std::string value(std::string_view sql);
  // Like exec, but an error is returned (its SQLSTATE and message) instead of thrown.
  struct Tried {
    PgResult result;
    std::string sqlstate;  // empty on success
    std::string message;
  };
  Tried tryExec(std::string_view sql);

  [[nodiscard]] int serverVersion() const { return PQserverVersion(c_.get()); }
  [[nodiscard]] const std::string& side() const { return side_; }
  [[nodiscard]] PGconn* raw() const { return c_.get(); }
  [[nodiscard]] explicit operator bool() const { return c_ != nullptr; }
  // Quotes an identifier / a literal for this connection's encoding.
  [[nodiscard]] std::string ident(std::string_view name) const;
  [[nodiscard]] std::string literal(std::string_view value) const;

 private:
  std::shared_ptr<PGconn> c_;
  std::string side_;
};

// A qualified name, quoted: "schema"."table".
std::string quoteIdent(std::string_view name);
std::string qualified(std::string_view schema, std::string_view name);

}  // namespace pghandoff::migrate
