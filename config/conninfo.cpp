#include "config/conninfo.h"

#include <array>
#include <cctype>
#include <charconv>
#include <utility>
#include <vector>

namespace pghandoff::config {
namespace {

struct SslModeName {
  SslMode mode;
  std::string_view name;
};
constexpr std::array<SslModeName, 6> kSslModes{{
    {SslMode::kDisable, "disable"},
    {SslMode::kAllow, "allow"},
    {SslMode::kPrefer, "prefer"},
    {SslMode::kRequire, "require"},
    {SslMode::kVerifyCa, "verify-ca"},
    {SslMode::kVerifyFull, "verify-full"},
}};

// Where a password value sits in the input, so redactUrl() can replace it
// without re-serialising (and thereby normalising) the rest of the string.
struct Span {
  std::size_t begin;
  std::size_t end;
};

struct Parsed {
  ConnInfo info;
  std::vector<Span> passwordSpans;
};

// Internal result: the error text follows the "never a raw value" rule.
struct ParseOutcome {
  std::optional<Parsed> parsed;
  std::string error;
};

bool startsWithNoCase(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(s[i])) != prefix[i]) return false;
  }
  return true;
}

bool isSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

// A keyword is echoed in errors only if it looks like one; anything else may
// be a fragment of a secret.
std::string safeName(std::string_view key) {
  if (key.empty() || key.size() > 40) return "(invalid)";
  for (char c : key) {
    if (!(std::islower(static_cast<unsigned char>(c)) ||
          std::isdigit(static_cast<unsigned char>(c)) || c == '_')) {
      return "(invalid)";
    }
  }
  return "\"" + std::string(key) + "\"";
}

std::optional<std::uint64_t> parseUnsigned(std::string_view s, std::uint64_t max) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  std::uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || v > max) return std::nullopt;
  return v;
}

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// RFC 3986 percent-decoding as libpq does it ('+' stays '+'); %00 is refused
// because every value ends up in a NUL-terminated startup packet field.
std::optional<std::string> percentDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    int hi = hexValue(s[i + 1]);
    int lo = hexValue(s[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    char c = static_cast<char>(hi * 16 + lo);
    if (c == '\0') return std::nullopt;
    out.push_back(c);
    i += 2;
  }
  return out;
}

// Applies one keyword. Returns an error text or "" on success.
std::string applyParam(ConnInfo& info, std::string_view key, std::string value) {
  if (key == "host") {
    if (value.find(',') != std::string::npos) return "multiple hosts are not supported";
    if (!value.empty()) info.host = std::move(value);
  } else if (key == "port") {
    if (value.find(',') != std::string::npos) return "multiple ports are not supported";
    if (!value.empty()) {
      auto p = parseUnsigned(value, 65535);
      if (!p || *p == 0) return "invalid port number (expected 1-65535)";
      info.port = static_cast<std::uint16_t>(*p);
    }
  } else if (key == "user") {
    info.user = std::move(value);
  } else if (key == "password") {
    info.password = std::move(value);
  } else if (key == "dbname") {
    info.dbname = std::move(value);
  } else if (key == "sslmode") {
    auto m = parseSslMode(value);
    if (!m) return "invalid sslmode (expected disable|allow|prefer|require|verify-ca|verify-full)";
    info.sslmode = *m;
  } else if (key == "sslrootcert") {
    info.sslrootcert = std::move(value);
  } else if (key == "sslcert") {
    info.sslcert = std::move(value);
  } else if (key == "sslkey") {
    info.sslkey = std::move(value);
  } else if (key == "application_name") {
    info.applicationName = std::move(value);
  } else if (key == "connect_timeout") {
    // Seconds, as in libpq; bounded so the millisecond value cannot overflow.
    auto t = parseUnsigned(value, 86400 * 365);
    if (!t) return "invalid connect_timeout (expected a whole number of seconds)";
    info.connectTimeout = std::chrono::seconds(*t);
  } else if (key == "options") {
    info.options = std::move(value);
  } else {
    return "unknown connection parameter " + safeName(key);
  }
  return "";
}

void finish(ConnInfo& info) {
  if (info.dbname.empty()) info.dbname = info.user;
}

ParseOutcome fail(std::string error) {
  return ParseOutcome{std::nullopt, std::move(error)};
}

// postgresql://[user[:password]@][host][:port][/dbname][?param=value&...]
ParseOutcome parseUrl(std::string_view s, std::size_t schemeLen) {
  Parsed out;
  const std::size_t authBegin = schemeLen;
  std::size_t authEnd = s.find_first_of("/?", authBegin);
  if (authEnd == std::string_view::npos) authEnd = s.size();
  std::string_view authority = s.substr(authBegin, authEnd - authBegin);

  std::string_view hostport = authority;
  std::size_t at = authority.rfind('@');
  if (at != std::string_view::npos) {
    std::string_view userinfo = authority.substr(0, at);
    hostport = authority.substr(at + 1);
    std::size_t colon = userinfo.find(':');
    std::string_view rawUser = userinfo.substr(0, colon);
    auto user = percentDecode(rawUser);
    if (!user) return fail("invalid percent-encoding in the user name");
    out.info.user = std::move(*user);
    if (colon != std::string_view::npos) {
      std::string_view rawPassword = userinfo.substr(colon + 1);
      auto password = percentDecode(rawPassword);
      if (!password) return fail("invalid percent-encoding in the password");
      out.info.password = std::move(*password);
      std::size_t pBegin = authBegin + colon + 1;
      out.passwordSpans.push_back({pBegin, pBegin + rawPassword.size()});
    }
  }

  std::string_view rawHost;
  std::string_view rawPort;
  bool bracketed = false;
  if (!hostport.empty() && hostport.front() == '[') {
    std::size_t close = hostport.find(']');
    if (close == std::string_view::npos) return fail("missing ']' after an IPv6 host");
    rawHost = hostport.substr(1, close - 1);
    if (rawHost.empty()) return fail("empty IPv6 host");
    bracketed = true;
    std::string_view rest = hostport.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return fail("unexpected characters after an IPv6 host");
      rawPort = rest.substr(1);
    }
  } else {
    std::size_t colon = hostport.find(':');
    if (colon != std::string_view::npos &&
        hostport.find(':', colon + 1) != std::string_view::npos) {
      return fail("an IPv6 host must be enclosed in []");
    }
    rawHost = hostport.substr(0, colon);
    if (colon != std::string_view::npos) rawPort = hostport.substr(colon + 1);
  }
  if (rawHost.find(',') != std::string_view::npos || rawPort.find(',') != std::string_view::npos) {
    return fail("multiple hosts are not supported");
  }
  if (!rawHost.empty()) {
    auto host = percentDecode(rawHost);
    if (!host) return fail("invalid percent-encoding in the host");
    if (!bracketed && host->find(':') != std::string::npos) {
      return fail("an IPv6 host must be enclosed in []");
    }
    out.info.host = std::move(*host);
  }
  if (std::string err = applyParam(out.info, "port", std::string(rawPort)); !err.empty()) {
    return fail(std::move(err));
  }

  std::size_t pos = authEnd;
  if (pos < s.size() && s[pos] == '/') {
    std::size_t q = s.find('?', pos);
    if (q == std::string_view::npos) q = s.size();
    auto db = percentDecode(s.substr(pos + 1, q - pos - 1));
    if (!db) return fail("invalid percent-encoding in the database name");
    out.info.dbname = std::move(*db);
    pos = q;
  }
  if (pos < s.size() && s[pos] == '?') {
    ++pos;
    while (pos <= s.size()) {
      std::size_t amp = s.find('&', pos);
      if (amp == std::string_view::npos) amp = s.size();
      std::string_view item = s.substr(pos, amp - pos);
      if (!item.empty()) {
        std::size_t eq = item.find('=');
        if (eq == std::string_view::npos) return fail("query parameter without '=' in the URL");
        auto key = percentDecode(item.substr(0, eq));
        std::string_view rawValue = item.substr(eq + 1);
        auto value = percentDecode(rawValue);
        if (!key || !value) return fail("invalid percent-encoding in a URL query parameter");
        if (*key == "password") {
          std::size_t vBegin = pos + eq + 1;
          out.passwordSpans.push_back({vBegin, vBegin + rawValue.size()});
        }
        if (*key == "ssl") {
          // libpq accepts this JDBC spelling, with "true" as the only value.
          if (*value != "true") return fail("invalid ssl parameter (only ssl=true is accepted)");
          out.info.sslmode = SslMode::kRequire;
        } else if (std::string err = applyParam(out.info, *key, std::move(*value)); !err.empty()) {
          return fail(std::move(err));
        }
      }
      pos = amp + 1;
    }
  }
  finish(out.info);
  return ParseOutcome{std::move(out), ""};
}

// keyword = value [...], values optionally single-quoted; backslash escapes
// the next character in both quoted and unquoted values (libpq's conninfo_parse).
ParseOutcome parseKeywordValue(std::string_view s) {
  Parsed out;
  std::size_t i = 0;
  const std::size_t n = s.size();
  while (true) {
    while (i < n && isSpace(s[i])) ++i;
    if (i == n) break;
    std::size_t kBegin = i;
    while (i < n && !isSpace(s[i]) && s[i] != '=') ++i;
    std::string_view key = s.substr(kBegin, i - kBegin);
    while (i < n && isSpace(s[i])) ++i;
    if (i == n || s[i] != '=') {
      return fail("missing '=' after a keyword in the connection string");
    }
    ++i;
    while (i < n && isSpace(s[i])) ++i;
    std::size_t vBegin = i;
    std::string value;
    if (i < n && s[i] == '\'') {
      ++i;
      bool closed = false;
      while (i < n) {
        if (s[i] == '\\' && i + 1 < n) {
          value.push_back(s[i + 1]);
          i += 2;
        } else if (s[i] == '\'') {
          ++i;
          closed = true;
          break;
        } else {
          value.push_back(s[i++]);
        }
      }
      if (!closed) return fail("unterminated quoted value in the connection string");
    } else {
      while (i < n && !isSpace(s[i])) {
        if (s[i] == '\\' && i + 1 < n) {
          value.push_back(s[i + 1]);
          i += 2;
        } else {
          value.push_back(s[i++]);
        }
      }
    }
    if (key == "password") out.passwordSpans.push_back({vBegin, i});
    if (std::string err = applyParam(out.info, key, std::move(value)); !err.empty()) {
      return fail(std::move(err));
    }
  }
  finish(out.info);
  return ParseOutcome{std::move(out), ""};
}

ParseOutcome parseAny(std::string_view s) {
  for (std::string_view scheme : {"postgresql://", "postgres://"}) {
    if (startsWithNoCase(s, scheme)) return parseUrl(s, scheme.size());
  }
  if (std::size_t sep = s.find("://"); sep != std::string_view::npos) {
    std::string_view scheme = s.substr(0, sep);
    bool plain = !scheme.empty() && scheme.size() <= 20 &&
                 scheme.find_first_of(" =") == std::string_view::npos;
    if (plain) return fail("unsupported URL scheme (expected postgres:// or postgresql://)");
  }
  return parseKeywordValue(s);
}

}  // namespace

std::string_view toString(SslMode mode) {
  for (const auto& m : kSslModes) {
    if (m.mode == mode) return m.name;
  }
  return "?";
}

std::optional<SslMode> parseSslMode(std::string_view s) {
  for (const auto& m : kSslModes) {
    if (m.name == s) return m.mode;
  }
  return std::nullopt;
}

ConnInfoResult parseConnInfo(std::string_view s) {
  ParseOutcome r = parseAny(s);
  if (!r.parsed) return ConnInfoResult{std::nullopt, std::move(r.error)};
  return ConnInfoResult{std::move(r.parsed->info), ""};
}

std::string redactUrl(std::string_view s) {
  ParseOutcome r = parseAny(s);
  if (!r.parsed) return "<unparseable connection string>";
  std::string out;
  std::size_t pos = 0;
  // Spans are recorded in input order and never overlap.
  for (const Span& span : r.parsed->passwordSpans) {
    out.append(s.substr(pos, span.begin - pos));
    if (span.end > span.begin) out.append("****");
    pos = span.end;
  }
  out.append(s.substr(pos));
  return out;
}

std::string describe(const ConnInfo& info) {
  std::string out;
  if (info.host.find(':') != std::string::npos) {
    out = "[" + info.host + "]";
  } else {
    out = info.host;
  }
  out += ":" + std::to_string(info.port) + "/" + info.dbname;
  out += " user=" + info.user;
  out += " sslmode=" + std::string(toString(info.sslmode));
  return out;
}

}  // namespace pghandoff::config
