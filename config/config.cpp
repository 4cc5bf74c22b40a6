#include "config/config.h"

#include <yaml-cpp/yaml.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <utility>

#include "config/conninfo.h"

namespace pghandoff::config {
namespace {

// ---------------------------------------------------------------- enum names

template <typename E>
struct EnumName {
  E value;
  std::string_view name;
};

constexpr std::array<EnumName<TlsMode>, 3> kTlsModes{
    {{TlsMode::kDisable, "disable"}, {TlsMode::kPrefer, "prefer"}, {TlsMode::kRequire, "require"}}};
constexpr std::array<EnumName<AuthMethod>, 3> kAuthMethods{
    {{AuthMethod::kScramSha256, "scram-sha-256"},
     {AuthMethod::kMd5, "md5"},
     {AuthMethod::kTrust, "trust"}}};
constexpr std::array<EnumName<MirrorMode>, 2> kMirrorModes{
    {{MirrorMode::kSync, "sync"}, {MirrorMode::kAsync, "async"}}};
constexpr std::array<EnumName<Nondeterministic>, 2> kNondeterministic{
    {{Nondeterministic::kReject, "reject"}, {Nondeterministic::kWarn, "warn"}}};
constexpr std::array<EnumName<OnDivergence>, 3> kOnDivergence{
    {{OnDivergence::kLog, "log"},
     {OnDivergence::kPauseMirroring, "pause-mirroring"},
     {OnDivergence::kFailClient, "fail-client"}}};
constexpr std::array<EnumName<OnTargetError>, 2> kOnTargetError{
    {{OnTargetError::kFailClient, "fail-client"}, {OnTargetError::kDegrade, "degrade"}}};
constexpr std::array<EnumName<FlipOnTimeout>, 2> kFlipOnTimeout{
    {{FlipOnTimeout::kAbandon, "abandon"}, {FlipOnTimeout::kCancel, "cancel"}}};
constexpr std::array<EnumName<LogFormat>, 2> kLogFormats{
    {{LogFormat::kText, "text"}, {LogFormat::kJson, "json"}}};
// spdlog's level names (spdlog::level::from_str), so the proxy can pass it on.
constexpr std::array<std::string_view, 7> kLogLevels{"trace", "debug",    "info", "warn",
                                                     "error", "critical", "off"};

template <typename E, std::size_t N>
std::string_view nameOf(const std::array<EnumName<E>, N>& table, E v) {
  for (const auto& e : table) {
    if (e.value == v) return e.name;
  }
  return "?";
}

template <typename E, std::size_t N>
std::string choices(const std::array<EnumName<E>, N>& table) {
  std::string out;
  for (const auto& e : table) {
    if (!out.empty()) out += '|';
    out += e.name;
  }
  return out;
}

// ---------------------------------------------------------------- scalars

// Values of non-secret keys are echoed to help the operator; bounded and
// without control characters so a message stays one line.
std::string quote(std::string_view s) {
  constexpr std::size_t kMax = 64;
  std::string out = "\"";
  for (std::size_t i = 0; i < s.size() && i < kMax; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    out += (c < 0x20 || c == 0x7f) ? '?' : static_cast<char>(c);
  }
  if (s.size() > kMax) out += "...";
  out += '"';
  return out;
}

std::optional<std::uint64_t> parseDigits(std::string_view s) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  std::uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

std::size_t leadingDigits(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
  return i;
}

bool isVarStart(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}
bool isVarChar(char c) {
  return isVarStart(c) || (c >= '0' && c <= '9');
}

struct Expansion {
  std::string value;
  std::string error;  // never contains a value, only variable names
};

// ${VAR}, ${VAR:-default}, $$. Any other '$' is literal: SCRAM verifiers and
// passwords contain '$', and a stray '$' should not need escaping. Expanded
// text is never re-scanned, so an environment value cannot inject ${...}.
Expansion expandEnv(std::string_view in, const EnvLookup& env) {
  Expansion out;
  std::vector<std::string> missing;
  std::size_t i = 0;
  while (i < in.size()) {
    char c = in[i];
    if (c != '$' || i + 1 >= in.size()) {
      out.value += c;
      ++i;
      continue;
    }
    if (in[i + 1] == '$') {
      out.value += '$';
      i += 2;
      continue;
    }
    if (in[i + 1] != '{') {
      out.value += c;
      ++i;
      continue;
    }
    std::size_t close = in.find('}', i + 2);
    if (close == std::string_view::npos) {
      out.error = "unterminated ${ (missing '}'); write $$ for a literal $";
      return out;
    }
    std::string_view body = in.substr(i + 2, close - i - 2);
    std::size_t nameLen = 0;
    while (nameLen < body.size() && isVarChar(body[nameLen])) ++nameLen;
    std::string_view name = body.substr(0, nameLen);
    std::string_view rest = body.substr(nameLen);
    bool hasDefault = rest.starts_with(":-");
    if (name.empty() || !isVarStart(name.front()) || (!rest.empty() && !hasDefault)) {
      out.error = "malformed ${...}: expected ${NAME} or ${NAME:-default}";
      return out;
    }
    std::string_view def = hasDefault ? rest.substr(2) : std::string_view{};
    if (def.find('$') != std::string_view::npos) {
      out.error = "a ${NAME:-default} default cannot contain '$'";
      return out;
    }
    std::optional<std::string> v = env ? env(name) : std::nullopt;
    if (hasDefault && (!v || v->empty())) {
      out.value += def;
    } else if (v) {
      out.value += *v;
    } else {
      missing.emplace_back(name);
    }
    i = close + 1;
  }
  if (!missing.empty()) {
    out.error = missing.size() == 1 ? "environment variable " : "environment variables ";
    for (std::size_t k = 0; k < missing.size(); ++k) {
      if (k > 0) out.error += ", ";
      out.error += missing[k];
    }
    out.error += missing.size() == 1 ? " is not set" : " are not set";
    out.error += " (use ${NAME:-default} for a default)";
  }
  return out;
}

// ---------------------------------------------------------------- SCRAM / MD5 shapes

bool isBase64(std::string_view s) {
  if (s.empty() || s.size() % 4 != 0) return false;
  std::size_t pad = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (c == '=') {
      ++pad;
    } else if ((alnum || c == '+' || c == '/') && pad == 0) {
      continue;
    } else {
      return false;
    }
  }
  return pad <= 2;
}

// pg_authid's format: SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>,
// salt and keys in base64, keys being SHA-256 outputs (32 bytes = 44 chars).
bool isScramVerifier(std::string_view s) {
  constexpr std::string_view kPrefix = "SCRAM-SHA-256$";
  if (!s.starts_with(kPrefix)) return false;
  s.remove_prefix(kPrefix.size());
  std::size_t dollar = s.find('$');
  if (dollar == std::string_view::npos) return false;
  std::string_view iterSalt = s.substr(0, dollar);
  std::string_view keys = s.substr(dollar + 1);
  std::size_t c1 = iterSalt.find(':');
  std::size_t c2 = keys.find(':');
  if (c1 == std::string_view::npos || c2 == std::string_view::npos) return false;
  auto iterations = parseDigits(iterSalt.substr(0, c1));
  if (!iterations || *iterations == 0 || *iterations > 0x7fffffff) return false;
  std::string_view stored = keys.substr(0, c2);
  std::string_view server = keys.substr(c2 + 1);
  return isBase64(iterSalt.substr(c1 + 1)) && stored.size() == 44 && isBase64(stored) &&
         server.size() == 44 && isBase64(server);
}

// PostgreSQL's own test (isMD5 in crypt.c): "md5" + 32 hex digits, else plaintext.
bool isMd5Hash(std::string_view s) {
  if (s.size() != 35 || !s.starts_with("md5")) return false;
  for (char c : s.substr(3)) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// ---------------------------------------------------------------- the loader

std::string join(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

int lineOf(const YAML::Node& n) {
  YAML::Mark m = n.Mark();
  return m.is_null() ? 0 : m.line + 1;  // yaml-cpp lines are 0-based
}

class Loader {
 public:
  Loader(const EnvLookup& env, std::string baseDir) : env_(env), baseDir_(std::move(baseDir)) {}

  LoadResult run(std::string_view yaml);

 private:
  using Handler = std::function<void(const std::string& path, const YAML::Node& value)>;
  struct Field {
    std::string_view key;
    Handler handler;
  };
  struct UserMeta {
    std::string path;
    int line = 0;
    int nameLine = 0;
    bool nameSeen = false;
    bool nameOk = false;
    bool passwordOk = true;
  };

  void root(const YAML::Node& node);
  void users(const std::string& path, const YAML::Node& node);
  void crossValidate();

  void error(const std::string& path, int line, std::string message) {
    errorPaths_.insert(path);
    errors_.push_back(ConfigError{path, line, std::move(message)});
  }
  void error(const std::string& path, const YAML::Node& n, std::string message) {
    int line = lineOf(n);
    if (line == 0) line = lineFor(path);
    error(path, line, std::move(message));
  }
  bool hasError(const std::string& path) const { return errorPaths_.count(path) > 0; }
  // The line of the key itself if present, else of its closest present parent.
  int lineFor(std::string path) const {
    while (true) {
      if (auto it = lines_.find(path); it != lines_.end()) return it->second;
      std::size_t dot = path.rfind('.');
      if (dot == std::string::npos) return 0;
      path.resize(dot);
    }
  }

  void walkMap(const std::string& path, const YAML::Node& node, const std::vector<Field>& fields);

  // Expanded scalar text; null reads as "". nullopt after reporting an error.
  std::optional<std::string> text(const std::string& path, const YAML::Node& n);
  template <typename E, std::size_t N>
  void enumField(const std::string& path, const YAML::Node& n,
                 const std::array<EnumName<E>, N>& table, E& out);
  void durationField(const std::string& path, const YAML::Node& n, std::chrono::milliseconds& out,
                     bool allowZero);
  void endpointField(const std::string& path, const YAML::Node& n, std::optional<Endpoint>& out,
                     bool allowNull);
  void pathField(const std::string& path, const YAML::Node& n, std::string& out);
  template <typename T>
  void uintField(const std::string& path, const YAML::Node& n, T& out, std::uint64_t min,
                 std::uint64_t max);
  void stringField(const std::string& path, const YAML::Node& n, std::string& out) {
    if (auto s = text(path, n)) out = std::move(*s);
  }

  std::string resolvePath(const std::string& p) const {
    if (p.empty()) return p;
    std::filesystem::path fp(p);
    if (fp.is_absolute()) return p;
    return (std::filesystem::path(baseDir_) / fp).lexically_normal().string();
  }

  const EnvLookup& env_;
  std::string baseDir_;
  Config cfg_;
  std::vector<ConfigError> errors_;
  std::set<std::string> errorPaths_;
  std::map<std::string, int> lines_;
  std::vector<UserMeta> userMeta_;
};

void Loader::walkMap(const std::string& path, const YAML::Node& node,
                     const std::vector<Field>& fields) {
  if (node.IsNull()) return;  // "mirror:" with nothing under it keeps the defaults
  if (!node.IsMap()) {
    error(path.empty() ? "" : path, node, "expected a mapping of keys to values");
    return;
  }
  std::map<std::string, int> seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    // Copies: yaml-cpp's iterator yields a temporary pair, references into it dangle.
    const YAML::Node keyNode = it->first;
    const YAML::Node value = it->second;
    if (!keyNode.IsScalar()) {
      error(path, keyNode, "keys must be plain names");
      continue;
    }
    const std::string& key = keyNode.Scalar();
    std::string childPath = join(path, key);
    int keyLine = lineOf(keyNode);
    if (auto [prev, inserted] = seen.emplace(key, keyLine); !inserted) {
      error(childPath, keyLine,
            "duplicate key (first given at line " + std::to_string(prev->second) + ")");
      continue;
    }
    const Field* field = nullptr;
    for (const auto& f : fields) {
      if (f.key == key) field = &f;
    }
    if (field == nullptr) {
      std::string known;
      for (const auto& f : fields) known += (known.empty() ? "" : ", ") + std::string(f.key);
      error(childPath, keyLine, "unknown key (expected one of: " + known + ")");
      continue;
    }
    lines_[childPath] = keyLine;
    field->handler(childPath, value);
  }
}

std::optional<std::string> Loader::text(const std::string& path, const YAML::Node& n) {
  if (n.IsNull()) return std::string();
  if (!n.IsScalar()) {
    error(path, n,
          n.IsMap() ? "expected a single value, got a mapping"
                    : "expected a single value, got a list");
    return std::nullopt;
  }
  Expansion e = expandEnv(n.Scalar(), env_);
  if (!e.error.empty()) {
    error(path, n, e.error);
    return std::nullopt;
  }
  // Values end up in NUL-terminated protocol fields and C APIs (paths, libpq).
  if (e.value.find('\0') != std::string::npos) {
    error(path, n, "must not contain a NUL character");
    return std::nullopt;
  }
  return std::move(e.value);
}

template <typename E, std::size_t N>
void Loader::enumField(const std::string& path, const YAML::Node& n,
                       const std::array<EnumName<E>, N>& table, E& out) {
  auto s = text(path, n);
  if (!s) return;
  for (const auto& e : table) {
    if (e.name == *s) {
      out = e.value;
      return;
    }
  }
  error(path, n,
        (s->empty() ? std::string("missing value") : "invalid value " + quote(*s)) + " (expected " +
            choices(table) + ")");
}

void Loader::durationField(const std::string& path, const YAML::Node& n,
                           std::chrono::milliseconds& out, bool allowZero) {
  auto s = text(path, n);
  if (!s) return;
  auto d = parseDuration(*s);
  if (!d) {
    error(path, n, "invalid duration " + quote(*s) + " (expected e.g. 250ms, 5s, 2m, 1h)");
  } else if (!allowZero && d->count() == 0) {
    error(path, n, "must be greater than 0");
  } else {
    out = *d;
  }
}

void Loader::endpointField(const std::string& path, const YAML::Node& n,
                           std::optional<Endpoint>& out, bool allowNull) {
  auto s = text(path, n);
  if (!s) return;
  if (s->empty() && allowNull) {
    out.reset();
    return;
  }
  auto ep = parseEndpoint(*s);
  if (!ep) {
    error(path, n,
          (s->empty() ? std::string("missing address") : "invalid address " + quote(*s)) +
              " (expected host:port, e.g. 0.0.0.0:6432 or \"[::1]:6432\")");
    return;
  }
  out = std::move(*ep);
}

void Loader::pathField(const std::string& path, const YAML::Node& n, std::string& out) {
  if (auto s = text(path, n)) out = resolvePath(*s);
}

template <typename T>
void Loader::uintField(const std::string& path, const YAML::Node& n, T& out, std::uint64_t min,
                       std::uint64_t max) {
  auto s = text(path, n);
  if (!s) return;
  auto v = parseDigits(*s);
  if (!v) {
    error(path, n, "invalid number " + quote(*s) + " (expected a whole number)");
  } else if (*v < min || *v > max) {
    error(path, n, "must be between " + std::to_string(min) + " and " + std::to_string(max));
  } else {
    out = static_cast<T>(*v);
  }
}

void Loader::users(const std::string& path, const YAML::Node& node) {
  if (node.IsNull()) return;
  if (!node.IsSequence()) {
    error(path, node, "expected a list of {name, password}");
    return;
  }
  for (std::size_t i = 0; i < node.size(); ++i) {
    const YAML::Node item = node[i];
    UserMeta meta;
    meta.path = path + "[" + std::to_string(i) + "]";
    meta.line = lineOf(item);
    lines_[meta.path] = meta.line;
    UserEntry user;
    walkMap(meta.path, item,
            {{"name",
              [&](const std::string& p, const YAML::Node& v) {
                meta.nameSeen = true;
                meta.nameLine = lineOf(v) != 0 ? lineOf(v) : lineFor(p);
                if (auto s = text(p, v)) {
                  user.name = std::move(*s);
                  meta.nameOk = true;
                }
              }},
             {"password", [&](const std::string& p, const YAML::Node& v) {
                if (auto s = text(p, v)) {
                  user.password = std::move(*s);
                } else {
                  meta.passwordOk = false;
                }
              }}});
    if (!item.IsNull() && !item.IsMap()) {
      meta.passwordOk = false;
      meta.nameSeen = true;  // already reported as "expected a mapping"
    }
    cfg_.auth.users.push_back(std::move(user));
    userMeta_.push_back(std::move(meta));
  }
}

void Loader::root(const YAML::Node& node) {
  auto section = [this](std::vector<Field> fields) {
    return [this, fields = std::move(fields)](const std::string& p, const YAML::Node& v) {
      walkMap(p, v, fields);
    };
  };
  walkMap(
      "", node,
      {
          {"listen",
           [this](const std::string& p, const YAML::Node& v) {
             std::optional<Endpoint> ep;
             endpointField(p, v, ep, false);
             if (ep) cfg_.listen = *ep;
           }},
          {"source", section({{"url", [this](const std::string& p, const YAML::Node& v) {
                                 stringField(p, v, cfg_.sourceUrl);
                               }}})},
          {"target", section({{"url", [this](const std::string& p, const YAML::Node& v) {
                                 stringField(p, v, cfg_.targetUrl);
                               }}})},
          {"client_tls",
           section({
               {"cert", [this](const std::string& p,
                               const YAML::Node& v) { pathField(p, v, cfg_.clientTls.cert); }},
               {"key", [this](const std::string& p,
                              const YAML::Node& v) { pathField(p, v, cfg_.clientTls.key); }},
               {"mode",
                [this](const std::string& p, const YAML::Node& v) {
                  enumField(p, v, kTlsModes, cfg_.clientTls.mode);
                }},
           })},
          {"auth", section({
                       {"users", [this](const std::string& p, const YAML::Node& v) { users(p, v); }},
                       {"method",
                        [this](const std::string& p, const YAML::Node& v) {
                          enumField(p, v, kAuthMethods, cfg_.auth.method);
                        }},
                   })},
          {"admin",
           section({
               {"listen",
                [this](const std::string& p, const YAML::Node& v) {
                  endpointField(p, v, cfg_.admin.listen, true);
                }},
               {"token", [this](const std::string& p,
                                const YAML::Node& v) { stringField(p, v, cfg_.admin.token); }},
           })},
          {"mirror",
           section({
               {"mode", [this](const std::string& p,
                               const YAML::Node& v) { enumField(p, v, kMirrorModes, cfg_.mirror.mode); }},
               {"nondeterministic",
                [this](const std::string& p, const YAML::Node& v) {
                  enumField(p, v, kNondeterministic, cfg_.mirror.nondeterministic);
                }},
               {"on_divergence",
                [this](const std::string& p, const YAML::Node& v) {
                  enumField(p, v, kOnDivergence, cfg_.mirror.onDivergence);
                }},
               {"on_target_error",
                [this](const std::string& p, const YAML::Node& v) {
                  enumField(p, v, kOnTargetError, cfg_.mirror.onTargetError);
                }},
               {"timeout",
                [this](const std::string& p, const YAML::Node& v) {
                  durationField(p, v, cfg_.mirror.timeout, false);
                }},
               {"two_phase_commit",
                [this](const std::string& p, const YAML::Node& v) {
                  auto s = text(p, v);
                  if (!s) return;
                  // YAML 1.2 core schema booleans only; yes/no/on/off are too easy to misread.
                  if (*s == "true" || *s == "True" || *s == "TRUE") {
                    cfg_.mirror.twoPhaseCommit = true;
                  } else if (*s == "false" || *s == "False" || *s == "FALSE") {
                    cfg_.mirror.twoPhaseCommit = false;
                  } else {
                    error(p, v, "invalid value " + quote(*s) + " (expected true|false)");
                  }
                }},
           })},
          {"flip",
           section({
               {"drain_timeout",
                [this](const std::string& p, const YAML::Node& v) {
                  durationField(p, v, cfg_.flip.drainTimeout, false);
                }},
               {"on_timeout",
                [this](const std::string& p, const YAML::Node& v) {
                  enumField(p, v, kFlipOnTimeout, cfg_.flip.onTimeout);
                }},
           })},
          {"limits",
           section({
               {"max_client_connections",
                [this](const std::string& p, const YAML::Node& v) {
                  uintField(p, v, cfg_.limits.maxClientConnections, 1, 0xffffffffu);
                }},
               {"max_message_bytes",
                [this](const std::string& p, const YAML::Node& v) {
                  auto s = text(p, v);
                  if (!s) return;
                  auto size = parseSize(*s);
                  constexpr std::uint64_t kMin = 1024;
                  constexpr std::uint64_t kMax = (1ull << 30) - 1;  // PostgreSQL's MaxAllocSize
                  if (!size) {
                    error(p, v, "invalid size " + quote(*s) + " (expected e.g. 64MiB, 512KiB, 1000)");
                  } else if (*size < kMin || *size > kMax) {
                    error(p, v, "must be at least 1KiB and at most 1GiB-1 (1073741823 bytes)");
                  } else {
                    cfg_.limits.maxMessageBytes = *size;
                  }
                }},
               {"startup_timeout",
                [this](const std::string& p, const YAML::Node& v) {
                  durationField(p, v, cfg_.limits.startupTimeout, false);
                }},
               {"shutdown_timeout",
                [this](const std::string& p, const YAML::Node& v) {
                  durationField(p, v, cfg_.limits.shutdownTimeout, true);
                }},
           })},
          {"state", section({
                        {"dir",
                         [this](const std::string& p, const YAML::Node& v) {
                           pathField(p, v, cfg_.state.dir);
                         }},
                        {"journal_segment",
                         [this](const std::string& p, const YAML::Node& v) {
                           auto s = text(p, v);
                           if (!s) return;
                           auto size = parseSize(*s);
                           if (!size) {
                             error(p, v,
                                   "invalid size " + quote(*s) + " (expected e.g. 64MiB, 512KiB)");
                           } else if (*size < 1024 || *size > (1ull << 40)) {
                             error(p, v, "must be at least 1KiB and at most 1TiB");
                           } else {
                             cfg_.state.journalSegment = *size;
                           }
                         }},
                    })},
          {"log",
           section({
               {"level",
                [this](const std::string& p, const YAML::Node& v) {
                  auto s = text(p, v);
                  if (!s) return;
                  for (auto l : kLogLevels) {
                    if (l == *s) {
                      cfg_.log.level = *s;
                      return;
                    }
                  }
                  error(p, v,
                        "invalid value " + quote(*s) +
                            " (expected trace|debug|info|warn|error|critical|off)");
                }},
               {"format",
                [this](const std::string& p, const YAML::Node& v) {
                  enumField(p, v, kLogFormats, cfg_.log.format);
                }},
           })},
          {"threads",
           [this](const std::string& p, const YAML::Node& v) {
             uintField(p, v, cfg_.threads, 0, 1024);
           }},
      });
}

void Loader::crossValidate() {
  // A key that already has an error is not reported again as "required".
  auto requireUrl = [this](const std::string& path, const std::string& url, bool required) {
    if (hasError(path)) return;
    if (url.empty()) {
      if (required)
        error(path, lineFor(path), "required (a libpq URL such as postgres://user@host/db)");
      return;
    }
    ConnInfoResult r = parseConnInfo(url);
    // r.error is built never to contain the password; the URL itself is not echoed.
    if (!r.info) error(path, lineFor(path), "invalid connection string: " + r.error);
  };
  requireUrl("source.url", cfg_.sourceUrl, true);
  requireUrl("target.url", cfg_.targetUrl, false);

  if (cfg_.clientTls.mode != TlsMode::kDisable) {
    for (auto [path, value] :
         {std::pair<std::string, const std::string*>{"client_tls.cert", &cfg_.clientTls.cert},
          std::pair<std::string, const std::string*>{"client_tls.key", &cfg_.clientTls.key}}) {
      if (value->empty() && !hasError(path)) {
        error(path, lineFor(path), "required unless client_tls.mode is disable");
      }
    }
  }

  if (cfg_.admin.listen && cfg_.admin.token.empty() && !hasError("admin.token") &&
      !hasError("admin.listen")) {
    error("admin.token", lineFor("admin.token"),
          "required when admin.listen is set (set admin.listen: null to disable the admin API)");
  }

  const bool trust = cfg_.auth.method == AuthMethod::kTrust;
  if (!trust && cfg_.auth.users.empty() && !hasError("auth.users")) {
    error("auth.users", lineFor("auth.users"),
          "at least one user is required unless auth.method is trust");
  }
  std::map<std::string, int> names;
  for (std::size_t i = 0; i < cfg_.auth.users.size(); ++i) {
    const UserEntry& u = cfg_.auth.users[i];
    const UserMeta& m = userMeta_[i];
    const std::string namePath = m.path + ".name";
    const std::string passwordPath = m.path + ".password";
    if (!m.nameSeen) {
      error(namePath, m.line, "required");
    } else if (m.nameOk && u.name.empty()) {
      error(namePath, m.nameLine, "must not be empty");
    } else if (m.nameOk) {
      // User names are not secrets: PostgreSQL logs them too.
      if (auto [prev, inserted] = names.emplace(u.name, m.nameLine); !inserted) {
        error(namePath, m.nameLine,
              "duplicate user name " + quote(u.name) + " (first given at line " +
                  std::to_string(prev->second) + ")");
      }
    }
    if (!m.passwordOk) continue;
    if (u.password.empty()) {
      if (!trust)
        error(passwordPath, lineFor(passwordPath), "required unless auth.method is trust");
    } else if (u.password.starts_with("SCRAM-SHA-256$") && !isScramVerifier(u.password)) {
      error(passwordPath, lineFor(passwordPath),
            "malformed SCRAM verifier (expected "
            "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)");
    } else if (cfg_.auth.method == AuthMethod::kScramSha256 && isMd5Hash(u.password)) {
      error(
          passwordPath, lineFor(passwordPath),
          "an MD5 hash cannot verify scram-sha-256 logins; give the plaintext or a SCRAM verifier");
    }
  }
}

LoadResult Loader::run(std::string_view yaml) {
  YAML::Node doc;
  try {
    doc = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    // yaml-cpp's messages describe the syntax ("end of map not found"), never the content.
    int line = e.mark.is_null() ? 0 : e.mark.line + 1;
    return LoadResult{std::nullopt, {ConfigError{"", line, "YAML syntax error: " + e.msg}}};
  }
  try {
    root(doc);
    crossValidate();
  } catch (const YAML::Exception& e) {
    // Defensive: node access should not throw on a parsed document.
    int line = e.mark.is_null() ? 0 : e.mark.line + 1;
    errors_.push_back(ConfigError{"", line, "YAML error: " + e.msg});
  }
  if (!errors_.empty()) return LoadResult{std::nullopt, std::move(errors_)};
  return LoadResult{std::move(cfg_), {}};
}

}  // namespace

// ---------------------------------------------------------------- public API

std::optional<std::chrono::milliseconds> parseDuration(std::string_view s) {
  std::size_t n = leadingDigits(s);
  auto v = parseDigits(s.substr(0, n));
  if (!v || *v > 1'000'000'000ull) return std::nullopt;
  std::string_view unit = s.substr(n);
  std::int64_t count = static_cast<std::int64_t>(*v);
  if (unit.empty()) {
    if (count == 0) return std::chrono::milliseconds(0);
    return std::nullopt;
  }
  if (unit == "ms") return std::chrono::milliseconds(count);
  if (unit == "s") return std::chrono::milliseconds(count * 1000);
  if (unit == "m") return std::chrono::milliseconds(count * 60'000);
  if (unit == "h") return std::chrono::milliseconds(count * 3'600'000);
  return std::nullopt;
}

std::optional<std::uint64_t> parseSize(std::string_view s) {
  std::size_t n = leadingDigits(s);
  auto v = parseDigits(s.substr(0, n));
  if (!v) return std::nullopt;
  std::string_view unit = s.substr(n);
  if (unit.starts_with(' ')) unit.remove_prefix(1);
  int shift = -1;
  if (unit.empty() || unit == "B") {
    shift = 0;
  } else if (unit == "KiB" || unit == "kB") {
    shift = 10;
  } else if (unit == "MiB" || unit == "MB") {
    shift = 20;
  } else if (unit == "GiB" || unit == "GB") {
    shift = 30;
  }
  if (shift < 0 || *v > (~0ull >> shift)) return std::nullopt;
  return *v << shift;
}

std::optional<Endpoint> parseEndpoint(std::string_view s) {
  std::string_view host;
  std::string_view port;
  if (s.starts_with('[')) {
    std::size_t close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':')
      return std::nullopt;
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    std::size_t colon = s.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return std::nullopt;  // IPv6 needs []
  }
  if (host.empty() || host.find_first_of(" \t[]/") != std::string_view::npos) return std::nullopt;
  auto p = parseDigits(port);
  if (!p || port.size() > 5 || *p > 65535) return std::nullopt;
  return Endpoint{std::string(host), static_cast<std::uint16_t>(*p)};
}

std::string toString(const Endpoint& e) {
  std::string host = e.host.find(':') != std::string::npos ? "[" + e.host + "]" : e.host;
  return host + ":" + std::to_string(e.port);
}

std::string_view toString(TlsMode v) {
  return nameOf(kTlsModes, v);
}
std::string_view toString(AuthMethod v) {
  return nameOf(kAuthMethods, v);
}
std::string_view toString(MirrorMode v) {
  return nameOf(kMirrorModes, v);
}
std::string_view toString(Nondeterministic v) {
  return nameOf(kNondeterministic, v);
}
std::string_view toString(OnDivergence v) {
  return nameOf(kOnDivergence, v);
}
std::string_view toString(OnTargetError v) {
  return nameOf(kOnTargetError, v);
}
std::string_view toString(FlipOnTimeout v) {
  return nameOf(kFlipOnTimeout, v);
}
std::string_view toString(LogFormat v) {
  return nameOf(kLogFormats, v);
}

LoadResult loadConfigString(std::string_view yaml, const EnvLookup& env,
                            std::string_view /*fileName: errors carry no file; see formatErrors*/,
                            const std::string& baseDir) {
  Loader loader(env, baseDir);
  return loader.run(yaml);
}

LoadResult loadConfigFile(const std::string& path, const EnvLookup& env) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    int err = errno;
    return LoadResult{
        std::nullopt,
        {ConfigError{"", 0, "cannot read the file: " + std::string(std::strerror(err))}}};
  }
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) {
    return LoadResult{std::nullopt, {ConfigError{"", 0, "cannot read the file"}}};
  }
  std::string baseDir = std::filesystem::path(path).parent_path().string();
  if (baseDir.empty()) baseDir = ".";
  return loadConfigString(buf.str(), env, path, baseDir);
}

EnvLookup processEnv() {
  return [](std::string_view name) -> std::optional<std::string> {
    const char* v = std::getenv(std::string(name).c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

std::string formatErrors(const LoadResult& result, std::string_view fileName) {
  std::string out;
  for (const auto& e : result.errors) {
    out += fileName;
    if (e.line > 0) out += ":" + std::to_string(e.line);
    out += ": ";
    if (!e.path.empty()) out += e.path + ": ";
    out += e.message;
    out += '\n';
  }
  return out;
}

}  // namespace pghandoff::config
