// pghandoff.yaml: the configuration of SPEC §4 as plain structs.
//
// The default member initialisers below are the single source of truth for
// defaults; the loader only overwrites what the file sets.
//
// Loading rules (all errors are collected, never only the first):
//  - `${VAR}` and `${VAR:-default}` expand from the environment in every
//    scalar VALUE (not in keys) before it is parsed; `:-` applies when VAR is
//    unset or empty (shell rule); `$$` is a literal `$`; any other `$` is
//    literal too (SCRAM verifiers contain `$`). Expanded text is not expanded
//    again. An unset variable without default is an error naming the key, the
//    line and the variable, never a value.
//  - Unknown and duplicate keys are errors; so are bad values, with the YAML
//    path ("auth.users[1].name") and the 1-based line.
//  - Relative paths (client_tls.cert/key, state.dir) are resolved against the
//    config file's directory. Files are not opened here: the proxy checks them
//    at start-up.
//  - Messages never contain a secret (passwords, admin.token, URLs).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pghandoff::config {

enum class TlsMode { kDisable, kPrefer, kRequire };  // client_tls.mode
enum class AuthMethod { kScramSha256, kMd5, kTrust };
enum class MirrorMode { kSync, kAsync };
enum class Nondeterministic { kReject, kWarn };
enum class OnDivergence { kLog, kPauseMirroring, kFailClient };
enum class OnTargetError { kFailClient, kDegrade };
enum class FlipOnTimeout { kAbandon, kCancel };
enum class LogFormat { kText, kJson };

// "0.0.0.0:6432", "[::1]:6432" (quote it in YAML: a bare '[' starts a
// sequence), "localhost:6432". Port 0 is allowed: the OS picks a free port,
// which tests use. host holds IPv6 literals without brackets.
struct Endpoint {
  std::string host;
  std::uint16_t port = 0;
  bool operator==(const Endpoint&) const = default;
};

// password as written, after ${VAR} expansion: plaintext, a SCRAM verifier
// "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>" (as in pg_authid),
// or an MD5 hash "md5<32 hex>". Empty only with auth.method trust.
struct UserEntry {
  std::string name;
  std::string password;
};

struct Config {
  Endpoint listen{"0.0.0.0", 6432};
  std::string sourceUrl;  // source.url, required; a valid libpq URL/keyword string
  std::string targetUrl;  // target.url, optional for now (empty = none)

  struct ClientTls {
    std::string cert;  // required unless mode is disable; resolved path
    std::string key;
    TlsMode mode = TlsMode::kPrefer;
  } clientTls;

  struct Auth {
    std::vector<UserEntry> users;  // required (non-empty) unless method is trust
    AuthMethod method = AuthMethod::kScramSha256;
  } auth;

  struct Admin {
    // null or "" in YAML (`listen: ~`) disables the admin API.
    std::optional<Endpoint> listen = Endpoint{"127.0.0.1", 9187};
    std::string token;  // required (non-empty) when listen is set
  } admin;

  struct Mirror {
    MirrorMode mode = MirrorMode::kSync;
    Nondeterministic nondeterministic = Nondeterministic::kReject;
    OnDivergence onDivergence = OnDivergence::kLog;
    OnTargetError onTargetError = OnTargetError::kFailClient;
    bool twoPhaseCommit = false;  // two_phase_commit: true|false
    // How long the mirror may take to answer one request before it counts as
    // failed (mirror.on_target_error, mirror_errors_total{reason="timeout"}):
    // a frozen target must not hang the client. > 0. Beyond SPEC §4.
    std::chrono::milliseconds timeout{30000};
  } mirror;

  struct Flip {
    std::chrono::milliseconds drainTimeout{5000};  // > 0
    FlipOnTimeout onTimeout = FlipOnTimeout::kAbandon;
  } flip;

  struct Limits {
    std::uint32_t maxClientConnections = 1000;         // >= 1
    std::uint64_t maxMessageBytes = 64ull << 20;       // 1 KiB .. 1 GiB - 1
    std::chrono::milliseconds startupTimeout{10000};   // > 0
    std::chrono::milliseconds shutdownTimeout{30000};  // >= 0
  } limits;

  struct State {
    std::string dir = "/var/lib/pghandoff";  // resolved path
    // mirror.mode async: the journal is cut into segments of about this size
    // (a short pause of new transactions at each cut); applied ones removed.
    std::uint64_t journalSegment = 64ull << 20;  // 1 KiB .. 1 TiB
  } state;

  struct Log {
    std::string level = "info";  // trace|debug|info|warn|error|critical|off (spdlog names)
    LogFormat format = LogFormat::kText;
  } log;

  unsigned threads = 0;  // worker threads, 0 = number of cores; at most 1024
};

struct ConfigError {
  std::string path;  // "limits.max_message_bytes", "auth.users[1].name"; "" for syntax errors
  int line = 0;      // 1-based; 0 if unknown (e.g. a required key that is absent)
  std::string message;
  bool operator==(const ConfigError&) const = default;
};

struct [[nodiscard]] LoadResult {
  std::optional<Config> config;  // set iff errors is empty
  std::vector<ConfigError> errors;
};

using EnvLookup = std::function<std::optional<std::string>(std::string_view)>;

// Errors carry no file name (pass it to formatErrors); fileName is accepted for
// symmetry and future use. baseDir is what relative paths resolve against.
[[nodiscard]] LoadResult loadConfigString(std::string_view yaml, const EnvLookup& env,
                                          std::string_view fileName = "<string>",
                                          const std::string& baseDir = ".");
// Reads the file (an unreadable file is one error, line 0); relative paths
// resolve against the file's directory.
[[nodiscard]] LoadResult loadConfigFile(const std::string& path, const EnvLookup& env);

// std::getenv.
[[nodiscard]] EnvLookup processEnv();

// One line per error, each ending in '\n':
//   "<file>:<line>: <path>: <message>"; the ":<line>" part is left out when
//   line is 0 and the "<path>: " part when path is empty.
[[nodiscard]] std::string formatErrors(const LoadResult& result, std::string_view fileName);

// "5s", "250ms", "2m", "1h", "0": a whole number and a unit (ms, s, m, h).
// A bare number other than 0 is refused: its unit would be a guess.
[[nodiscard]] std::optional<std::chrono::milliseconds> parseDuration(std::string_view s);

// Bytes: "1000" (plain bytes), "512KiB", "64MiB", "1GiB"; "B" is accepted.
// Following PostgreSQL's GUC convention, "kB", "MB", "GB" are also accepted
// and are 1024-based too (so "64MB" == "64MiB"). Optional space before the unit.
[[nodiscard]] std::optional<std::uint64_t> parseSize(std::string_view s);

// "host:port" / "[v6]:port"; nullopt when malformed.
[[nodiscard]] std::optional<Endpoint> parseEndpoint(std::string_view s);
// Inverse of parseEndpoint: brackets IPv6 hosts.
[[nodiscard]] std::string toString(const Endpoint& endpoint);

// YAML spellings, e.g. toString(OnDivergence::kPauseMirroring) == "pause-mirroring".
[[nodiscard]] std::string_view toString(TlsMode v);
[[nodiscard]] std::string_view toString(AuthMethod v);
[[nodiscard]] std::string_view toString(MirrorMode v);
[[nodiscard]] std::string_view toString(Nondeterministic v);
[[nodiscard]] std::string_view toString(OnDivergence v);
[[nodiscard]] std::string_view toString(OnTargetError v);
[[nodiscard]] std::string_view toString(FlipOnTimeout v);
[[nodiscard]] std::string_view toString(LogFormat v);

}  // namespace pghandoff::config
