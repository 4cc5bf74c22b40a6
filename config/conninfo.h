// libpq connection strings: URLs and keyword=value lists.
// https://www.postgresql.org/docs/15/libpq-connect.html#LIBPQ-CONNSTRING
//
// Both forms accept the same keywords (host, port, user, password, dbname,
// sslmode, sslrootcert, sslcert, sslkey, application_name, connect_timeout,
// options); anything else is an error, so a typo never silently weakens TLS.
// In the URL form they may also appear as query parameters, plus libpq's
// JDBC-compatible `ssl=true` (= sslmode=require).
//
// Deviations from libpq, on purpose:
//  - one host only (no "h1,h2" failover lists, no hostaddr): the proxy talks
//    to exactly one source and one target;
//  - in the URL authority the credentials end at the LAST '@' (libpq: the
//    first), so an unencoded '@' in a password still parses, and never leaks
//    into the host part of an error message;
//  - the scheme is matched case-insensitively.
//
// Error strings never contain the password, nor any other raw value that a
// mis-split password could end up in (host, port, query values): they name
// the component only.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pghandoff::config {

enum class SslMode { kDisable, kAllow, kPrefer, kRequire, kVerifyCa, kVerifyFull };

struct ConnInfo {
  std::string host = "localhost";  // a name, an IPv4/IPv6 literal (no brackets) or a socket dir
  std::uint16_t port = 5432;
  std::string user;
  std::string password;
  std::string dbname;  // defaults to user when empty (libpq rule)
  SslMode sslmode = SslMode::kPrefer;
  std::string sslrootcert;
  std::string sslcert;
  std::string sslkey;
  std::string applicationName;
  std::chrono::milliseconds connectTimeout{0};  // 0 = wait forever (libpq); given in seconds
  std::string options;                          // command-line options sent at startup

  bool operator==(const ConnInfo&) const = default;
};

struct [[nodiscard]] ConnInfoResult {
  std::optional<ConnInfo> info;
  std::string error;  // set when !info; never includes the password
};

// Parses "postgres://..." / "postgresql://..." URLs (percent-decoded,
// [ipv6] hosts, ?param=value&...) and "host=x port=y password='a b'" lists
// (single quotes, backslash escapes). An empty string yields the defaults.
[[nodiscard]] ConnInfoResult parseConnInfo(std::string_view s);

// The same string with each password value replaced by "****", in both forms
// (also "?password=" in URLs). "<unparseable connection string>" when the
// string does not parse, since then we cannot know where the password is.
[[nodiscard]] std::string redactUrl(std::string_view s);

// "host:port/dbname user=... sslmode=..." for logs; never the password.
// IPv6 hosts are bracketed: "[::1]:5432/app user=app sslmode=require".
[[nodiscard]] std::string describe(const ConnInfo& info);

[[nodiscard]] std::string_view toString(SslMode mode);
[[nodiscard]] std::optional<SslMode> parseSslMode(std::string_view s);

}  // namespace pghandoff::config
