#include "config/config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

namespace pghandoff::config {

// Readable failure output for EXPECT_EQ on error lists.
void PrintTo(const ConfigError& e, std::ostream* os) {
  *os << "{" << e.path << ", " << e.line << ", \"" << e.message << "\"}";
}

namespace {

using std::chrono::milliseconds;

EnvLookup envFrom(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](std::string_view name) -> std::optional<std::string> {
    auto it = vars.find(std::string(name));
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

const EnvLookup kNoEnv = envFrom({});

// A minimal valid document; its four lines are numbered 1-4, so a case
// appended to it starts at line 5.
constexpr std::string_view kBase =
    "source: { url: \"postgres://u@h/db\" }\n"
    "client_tls: { mode: disable }\n"
    "auth: { method: trust }\n"
    "admin: { listen: null }\n";

LoadResult load(std::string_view yaml, const EnvLookup& env = kNoEnv) {
  return loadConfigString(yaml, env);
}

std::string repoRoot() {
  std::string file = __FILE__;
  const std::string suffix = "tests/unit/config_test.cpp";
  return file.substr(0, file.size() - suffix.size());
}

// A syntactically valid SCRAM-SHA-256 verifier (the bytes need not match any password).
const std::string kVerifier =
    "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA=";

// ------------------------------------------------------------------ valid configs

TEST(ConfigLoad, MinimalUsesDefaults) {
  LoadResult r = load(kBase);
  ASSERT_TRUE(r.errors.empty()) << formatErrors(r, "t");
  ASSERT_TRUE(r.config);
  const Config& c = *r.config;
  EXPECT_EQ(c.listen, (Endpoint{"0.0.0.0", 6432}));
  EXPECT_EQ(c.sourceUrl, "postgres://u@h/db");
  EXPECT_EQ(c.targetUrl, "");
  EXPECT_EQ(c.clientTls.mode, TlsMode::kDisable);
  EXPECT_EQ(c.auth.method, AuthMethod::kTrust);
  EXPECT_FALSE(c.admin.listen.has_value());
  EXPECT_EQ(c.mirror.mode, MirrorMode::kSync);
  EXPECT_EQ(c.mirror.nondeterministic, Nondeterministic::kReject);
  EXPECT_EQ(c.mirror.onDivergence, OnDivergence::kLog);
  EXPECT_EQ(c.mirror.onTargetError, OnTargetError::kFailClient);
  EXPECT_FALSE(c.mirror.twoPhaseCommit);
  EXPECT_EQ(c.flip.drainTimeout, milliseconds(5000));
  EXPECT_EQ(c.flip.onTimeout, FlipOnTimeout::kAbandon);
  EXPECT_EQ(c.limits.maxClientConnections, 1000u);
  EXPECT_EQ(c.limits.maxMessageBytes, 64ull << 20);
  EXPECT_EQ(c.limits.startupTimeout, milliseconds(10000));
  EXPECT_EQ(c.limits.shutdownTimeout, milliseconds(30000));
  EXPECT_EQ(c.state.dir, "/var/lib/pghandoff");
  EXPECT_EQ(c.log.level, "info");
  EXPECT_EQ(c.log.format, LogFormat::kText);
  EXPECT_EQ(c.threads, 0u);
}

TEST(ConfigLoad, EveryKeySet) {
  const std::string yaml =
      "listen: \"[::1]:0\"\n"
      "source:\n  url: postgres://a:b@src/db\n"
      "target:\n  url: host=tgt dbname=db\n"
      "client_tls: { cert: /abs/c.pem, key: rel/k.pem, mode: require }\n"
      "auth:\n"
      "  method: md5\n"
      "  users:\n"
      "    - { name: app, password: md50123456789abcdef0123456789abcdef }\n"
      "    - name: ro\n"
      "      password: \"" +
      kVerifier +
      "\"\n"
      "admin: { listen: \"localhost:9000\", token: t0k }\n"
      "mirror: { mode: async, nondeterministic: warn, on_divergence: pause-mirroring,"
      " on_target_error: degrade, two_phase_commit: true }\n"
      "flip: { drain_timeout: 250ms, on_timeout: cancel }\n"
      "limits: { max_client_connections: 5, max_message_bytes: 512KiB, startup_timeout: 2m,"
      " shutdown_timeout: 0 }\n"
      "state: { dir: state, journal_segment: 8MiB }\n"
      "log: { level: debug, format: json }\n"
      "threads: 4\n";
  LoadResult r = loadConfigString(yaml, kNoEnv, "x.yaml", "/etc/pgh");
  ASSERT_TRUE(r.errors.empty()) << formatErrors(r, "x.yaml");
  const Config& c = *r.config;
  EXPECT_EQ(c.listen, (Endpoint{"::1", 0}));
  EXPECT_EQ(c.sourceUrl, "postgres://a:b@src/db");
  EXPECT_EQ(c.targetUrl, "host=tgt dbname=db");
  EXPECT_EQ(c.clientTls.cert, "/abs/c.pem");
  EXPECT_EQ(c.clientTls.key, "/etc/pgh/rel/k.pem");
  EXPECT_EQ(c.clientTls.mode, TlsMode::kRequire);
  EXPECT_EQ(c.auth.method, AuthMethod::kMd5);
  ASSERT_EQ(c.auth.users.size(), 2u);
  EXPECT_EQ(c.auth.users[0].name, "app");
  EXPECT_EQ(c.auth.users[0].password, "md50123456789abcdef0123456789abcdef");
  EXPECT_EQ(c.auth.users[1].name, "ro");
  EXPECT_EQ(c.auth.users[1].password, kVerifier);
  EXPECT_EQ(c.admin.listen, (Endpoint{"localhost", 9000}));
  EXPECT_EQ(c.admin.token, "t0k");
  EXPECT_EQ(c.mirror.mode, MirrorMode::kAsync);
  EXPECT_EQ(c.state.journalSegment, 8ull << 20);
  EXPECT_EQ(c.mirror.nondeterministic, Nondeterministic::kWarn);
  EXPECT_EQ(c.mirror.onDivergence, OnDivergence::kPauseMirroring);
  EXPECT_EQ(c.mirror.onTargetError, OnTargetError::kDegrade);
  EXPECT_TRUE(c.mirror.twoPhaseCommit);
  EXPECT_EQ(c.flip.drainTimeout, milliseconds(250));
  EXPECT_EQ(c.flip.onTimeout, FlipOnTimeout::kCancel);
  EXPECT_EQ(c.limits.maxClientConnections, 5u);
  EXPECT_EQ(c.limits.maxMessageBytes, 512u * 1024u);
  EXPECT_EQ(c.limits.startupTimeout, milliseconds(120000));
  EXPECT_EQ(c.limits.shutdownTimeout, milliseconds(0));
  EXPECT_EQ(c.state.dir, "/etc/pgh/state");
  EXPECT_EQ(c.log.level, "debug");
  EXPECT_EQ(c.log.format, LogFormat::kJson);
  EXPECT_EQ(c.threads, 4u);
}

TEST(ConfigLoad, EmptySectionsKeepDefaults) {
  LoadResult r = load(std::string(kBase) + "mirror:\nlimits:\n");
  ASSERT_TRUE(r.config) << formatErrors(r, "t");
  EXPECT_EQ(r.config->mirror.mode, MirrorMode::kSync);
}

// ------------------------------------------------------------------ the example file

TEST(ConfigExample, LoadsAndMatchesSpec) {
  const std::string path = repoRoot() + "config/pghandoff.example.yaml";
  ASSERT_TRUE(std::filesystem::exists(path)) << path;
  EnvLookup env =
      envFrom({{"SOURCE_DATABASE_URL", "postgres://app:srcpw@old.example.com/app?sslmode=require"},
               {"TARGET_DATABASE_URL", "postgres://app:tgtpw@new.example.com:6543/app"},
               {"APP_PASSWORD", "apppw"},
               {"PGHANDOFF_ADMIN_TOKEN", "admintoken"}});
  LoadResult r = loadConfigFile(path, env);
  ASSERT_TRUE(r.errors.empty()) << formatErrors(r, path);
  const Config& c = *r.config;
  EXPECT_EQ(c.listen, (Endpoint{"0.0.0.0", 6432}));
  EXPECT_EQ(c.sourceUrl, "postgres://app:srcpw@old.example.com/app?sslmode=require");
  EXPECT_EQ(c.targetUrl, "postgres://app:tgtpw@new.example.com:6543/app");
  EXPECT_EQ(c.clientTls.cert, repoRoot() + "config/server.crt");
  EXPECT_EQ(c.clientTls.key, repoRoot() + "config/server.key");
  EXPECT_EQ(c.clientTls.mode, TlsMode::kPrefer);
  ASSERT_EQ(c.auth.users.size(), 1u);
  EXPECT_EQ(c.auth.users[0].name, "app");
  EXPECT_EQ(c.auth.users[0].password, "apppw");
  EXPECT_EQ(c.auth.method, AuthMethod::kScramSha256);
  EXPECT_EQ(c.admin.listen, (Endpoint{"127.0.0.1", 9187}));
  EXPECT_EQ(c.admin.token, "admintoken");
  EXPECT_EQ(c.flip.drainTimeout, milliseconds(5000));
  EXPECT_EQ(c.limits.maxMessageBytes, 64ull << 20);
  EXPECT_EQ(c.state.dir, "/var/lib/pghandoff");
  EXPECT_EQ(c.log.format, LogFormat::kText);
}

TEST(ConfigExample, MissingEnvironmentIsReportedPerKey) {
  const std::string path = repoRoot() + "config/pghandoff.example.yaml";
  LoadResult r = loadConfigFile(path, kNoEnv);
  ASSERT_FALSE(r.config);
  ASSERT_EQ(r.errors.size(), 4u) << formatErrors(r, path);
  EXPECT_EQ(r.errors[0].path, "source.url");
  EXPECT_EQ(
      r.errors[0].message,
      "environment variable SOURCE_DATABASE_URL is not set (use ${NAME:-default} for a default)");
  EXPECT_EQ(r.errors[1].path, "target.url");
  EXPECT_EQ(r.errors[2].path, "auth.users[0].password");
  EXPECT_EQ(r.errors[3].path, "admin.token");
  for (const auto& e : r.errors) EXPECT_GT(e.line, 0) << e.path;
}

// ------------------------------------------------------------------ one bad value at a time

struct BadCase {
  std::string yaml;  // appended to kBase, so its first line is line 5
  std::string path;
  int line;
  std::string message;
};

TEST(ConfigErrors, EachBadValueNamesPathAndLine) {
  const std::string kTopKeys =
      "listen, source, target, client_tls, auth, admin, mirror, flip, limits, state, log, threads";
  const BadCase cases[] = {
      {"mirror:\n  mode: fast\n", "mirror.mode", 6, "invalid value \"fast\" (expected sync|async)"},
      {"mirror: { on_divergence: pause }\n", "mirror.on_divergence", 5,
       "invalid value \"pause\" (expected log|pause-mirroring|fail-client)"},
      {"mirror: { on_target_error: }\n", "mirror.on_target_error", 5,
       "missing value (expected fail-client|degrade)"},
      {"mirror: { nondeterministic: [a] }\n", "mirror.nondeterministic", 5,
       "expected a single value, got a list"},
      {"mirror: { two_phase_commit: yes }\n", "mirror.two_phase_commit", 5,
       "invalid value \"yes\" (expected true|false)"},
      {"\n\nlimits:\n  max_message_bytes: 2GiB\n", "limits.max_message_bytes", 8,
       "must be at least 1KiB and at most 1GiB-1 (1073741823 bytes)"},
      {"limits: { max_message_bytes: 1GiB }\n", "limits.max_message_bytes", 5,
       "must be at least 1KiB and at most 1GiB-1 (1073741823 bytes)"},
      {"limits: { max_message_bytes: 1023 }\n", "limits.max_message_bytes", 5,
       "must be at least 1KiB and at most 1GiB-1 (1073741823 bytes)"},
      {"state: { journal_segment: 1000 }\n", "state.journal_segment", 5,
       "must be at least 1KiB and at most 1TiB"},
      {"state: { journal_segment: big }\n", "state.journal_segment", 5,
       "invalid size \"big\" (expected e.g. 64MiB, 512KiB)"},
      {"limits: { max_message_bytes: 64XB }\n", "limits.max_message_bytes", 5,
       "invalid size \"64XB\" (expected e.g. 64MiB, 512KiB, 1000)"},
      {"limits:\n  max_mesage_bytes: 1\n", "limits.max_mesage_bytes", 6,
       "unknown key (expected one of: max_client_connections, max_message_bytes, startup_timeout, "
       "shutdown_timeout)"},
      {"limits: { max_client_connections: 0 }\n", "limits.max_client_connections", 5,
       "must be between 1 and 4294967295"},
      {"limits: { max_client_connections: 1e3 }\n", "limits.max_client_connections", 5,
       "invalid number \"1e3\" (expected a whole number)"},
      {"limits: { startup_timeout: 0s }\n", "limits.startup_timeout", 5, "must be greater than 0"},
      {"flip: { drain_timeout: 5 }\n", "flip.drain_timeout", 5,
       "invalid duration \"5\" (expected e.g. 250ms, 5s, 2m, 1h)"},
      {"flip: { on_timeout: wait }\n", "flip.on_timeout", 5,
       "invalid value \"wait\" (expected abandon|cancel)"},
      {"listen: 0.0.0.0:70000\n", "listen", 5,
       "invalid address \"0.0.0.0:70000\" (expected host:port, e.g. 0.0.0.0:6432 or "
       "\"[::1]:6432\")"},
      {"listen: ::1:6432\n", "listen", 5,
       "invalid address \"::1:6432\" (expected host:port, e.g. 0.0.0.0:6432 or \"[::1]:6432\")"},
      {"listen: { host: x }\n", "listen", 5, "expected a single value, got a mapping"},
      {"threads: 2000\n", "threads", 5, "must be between 0 and 1024"},
      {"threads: -1\n", "threads", 5, "invalid number \"-1\" (expected a whole number)"},
      {"log: { level: verbose }\n", "log.level", 5,
       "invalid value \"verbose\" (expected trace|debug|info|warn|error|critical|off)"},
      {"log: { format: xml }\n", "log.format", 5, "invalid value \"xml\" (expected text|json)"},
      {"bogus: 1\n", "bogus", 5, "unknown key (expected one of: " + kTopKeys + ")"},
      {"mirror: 5\n", "mirror", 5, "expected a mapping of keys to values"},
      {"state: { dir: \"/a\\x00b\" }\n", "state.dir", 5, "must not contain a NUL character"},
      {"source: { url: \"postgres://x@y/z\" }\n", "source", 5,
       "duplicate key (first given at line 1)"},
      {"state: { dir: /a, dir: /b }\n", "state.dir", 5, "duplicate key (first given at line 5)"},
      {"state: { path: /a }\n", "state.path", 5,
       "unknown key (expected one of: dir, journal_segment)"},
      {"target: { url: \"postgres://h:0/db\" }\n", "target.url", 5,
       "invalid connection string: invalid port number (expected 1-65535)"},
  };
  for (const auto& c : cases) {
    LoadResult r = load(std::string(kBase) + c.yaml);
    EXPECT_FALSE(r.config) << c.yaml;
    ASSERT_EQ(r.errors.size(), 1u) << c.yaml << formatErrors(r, "t");
    EXPECT_EQ(r.errors[0].path, c.path) << c.yaml;
    EXPECT_EQ(r.errors[0].line, c.line) << c.yaml;
    EXPECT_EQ(r.errors[0].message, c.message) << c.yaml;
  }
}

// ------------------------------------------------------------------ cross-key validation

TEST(ConfigErrors, RequiredKeysOfAnEmptyDocument) {
  LoadResult r = load("");
  ASSERT_FALSE(r.config);
  const std::vector<ConfigError> expected = {
      {"source.url", 0, "required (a libpq URL such as postgres://user@host/db)"},
      {"client_tls.cert", 0, "required unless client_tls.mode is disable"},
      {"client_tls.key", 0, "required unless client_tls.mode is disable"},
      {"admin.token", 0,
       "required when admin.listen is set (set admin.listen: null to disable the admin API)"},
      {"auth.users", 0, "at least one user is required unless auth.method is trust"},
  };
  EXPECT_EQ(r.errors, expected);
}

TEST(ConfigErrors, RequiredKeysPointAtTheirSection) {
  LoadResult r = load(
      "source:\n"
      "  url: \"\"\n"
      "client_tls:\n"
      "  cert: c.pem\n"
      "admin:\n"
      "  listen: 127.0.0.1:1\n"
      "auth:\n"
      "  method: scram-sha-256\n");
  const std::vector<ConfigError> expected = {
      {"source.url", 2, "required (a libpq URL such as postgres://user@host/db)"},
      {"client_tls.key", 3, "required unless client_tls.mode is disable"},
      {"admin.token", 5,
       "required when admin.listen is set (set admin.listen: null to disable the admin API)"},
      {"auth.users", 7, "at least one user is required unless auth.method is trust"},
  };
  EXPECT_EQ(r.errors, expected);
}

TEST(ConfigErrors, Users) {
  LoadResult r = load(
      "source: { url: \"postgres://u@h/db\" }\n"                            // 1
      "client_tls: { mode: disable }\n"                                     // 2
      "admin: { listen: null }\n"                                           // 3
      "auth:\n"                                                             // 4
      "  users:\n"                                                          // 5
      "    - { name: app, password: a }\n"                                  // 6
      "    - { name: app, password: b }\n"                                  // 7
      "    - { name: \"\", password: c }\n"                                 // 8
      "    - { password: d }\n"                                             // 9
      "    - { name: x }\n"                                                 // 10
      "    - { name: y, pasword: e }\n"                                     // 11
      "    - { name: z, password: md50123456789abcdef0123456789abcdef }\n"  // 12
      "    - { name: w, password: \"SCRAM-SHA-256$4096:abc\" }\n"           // 13
      "    - just-a-name\n");                                               // 14
  const std::vector<ConfigError> expected = {
      {"auth.users[5].pasword", 11, "unknown key (expected one of: name, password)"},
      {"auth.users[8]", 14, "expected a mapping of keys to values"},
      {"auth.users[1].name", 7, "duplicate user name \"app\" (first given at line 6)"},
      {"auth.users[2].name", 8, "must not be empty"},
      {"auth.users[3].name", 9, "required"},
      {"auth.users[4].password", 10, "required unless auth.method is trust"},
      {"auth.users[5].password", 11, "required unless auth.method is trust"},
      {"auth.users[6].password", 12,
       "an MD5 hash cannot verify scram-sha-256 logins; give the plaintext or a SCRAM verifier"},
      {"auth.users[7].password", 13,
       "malformed SCRAM verifier (expected "
       "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)"},
  };
  EXPECT_EQ(r.errors, expected);
  EXPECT_EQ(formatErrors(r, "x").find("SCRAM-SHA-256$4096:abc"), std::string::npos);
}

TEST(ConfigErrors, AllErrorsAtOnce) {
  LoadResult r = load(
      "listen: nowhere\n"
      "source: { url: \"postgres://u@h/db\" }\n"
      "client_tls: { mode: disable }\n"
      "auth: { method: trust, extra: 1 }\n"
      "admin: { listen: null }\n"
      "mirror: { mode: sometimes }\n"
      "flip: { drain_timeout: soon }\n"
      "limits: { max_message_bytes: 0 }\n");
  const std::vector<ConfigError> expected = {
      {"listen", 1,
       "invalid address \"nowhere\" (expected host:port, e.g. 0.0.0.0:6432 or \"[::1]:6432\")"},
      {"auth.extra", 4, "unknown key (expected one of: users, method)"},
      {"mirror.mode", 6, "invalid value \"sometimes\" (expected sync|async)"},
      {"flip.drain_timeout", 7, "invalid duration \"soon\" (expected e.g. 250ms, 5s, 2m, 1h)"},
      {"limits.max_message_bytes", 8,
       "must be at least 1KiB and at most 1GiB-1 (1073741823 bytes)"},
  };
  EXPECT_EQ(r.errors, expected);
}

TEST(ConfigErrors, SyntaxErrorIsOneErrorWithLine) {
  LoadResult r = load("source: { url: x }\nmirror: { mode: sync\nlimits: {}\n");
  ASSERT_FALSE(r.config);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].path, "");
  EXPECT_GT(r.errors[0].line, 1);
  EXPECT_EQ(r.errors[0].message.rfind("YAML syntax error: ", 0), 0u) << r.errors[0].message;
}

TEST(ConfigErrors, NonMappingDocument) {
  LoadResult r = load("- a\n- b\n");
  ASSERT_FALSE(r.config);
  ASSERT_GE(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0], (ConfigError{"", 1, "expected a mapping of keys to values"}));
}

TEST(ConfigErrors, UnreadableFile) {
  LoadResult r = loadConfigFile("/nonexistent/pghandoff.yaml", kNoEnv);
  ASSERT_FALSE(r.config);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].line, 0);
  EXPECT_EQ(r.errors[0].message, "cannot read the file: No such file or directory");
  EXPECT_EQ(formatErrors(r, "/nonexistent/pghandoff.yaml"),
            "/nonexistent/pghandoff.yaml: cannot read the file: No such file or directory\n");
}

TEST(ConfigErrors, FormatErrors) {
  LoadResult r;
  r.errors = {{"limits.max_message_bytes", 12, "too big"},
              {"source.url", 0, "required"},
              {"", 3, "syntax"}};
  EXPECT_EQ(formatErrors(r, "p.yaml"),
            "p.yaml:12: limits.max_message_bytes: too big\n"
            "p.yaml: source.url: required\n"
            "p.yaml:3: syntax\n");
}

// ------------------------------------------------------------------ secrets

TEST(ConfigSecrets, BadUrlWithPasswordIsNotEchoed) {
  const char* urls[] = {
      "postgres://app:Hunter2Secret@db:notaport/app",
      "postgres://app:Hunter2Secret/app",
      "postgres://app:Hunter2Secret@db/app?sslmode=bogus",
      "host=db password=Hunter2Secret sslmode=nope",
  };
  for (const char* url : urls) {
    // Literal in the file and through ${VAR}: neither may be echoed.
    for (bool viaEnv : {false, true}) {
      std::string yaml = std::string("source: { url: \"") + (viaEnv ? "${SRC}" : url) +
                         "\" }\nclient_tls: { mode: disable }\nauth: { method: trust }\n"
                         "admin: { listen: null }\n";
      LoadResult r = load(yaml, envFrom({{"SRC", url}}));
      ASSERT_EQ(r.errors.size(), 1u) << url;
      EXPECT_EQ(r.errors[0].path, "source.url");
      EXPECT_EQ(r.errors[0].line, 1);
      EXPECT_EQ(r.errors[0].message.rfind("invalid connection string: ", 0), 0u);
      std::string text = formatErrors(r, "f.yaml");
      EXPECT_EQ(text.find("Hunter2"), std::string::npos) << text;
    }
  }
}

TEST(ConfigSecrets, SecretKeysNeverEchoed) {
  LoadResult r = load(
      "source: { url: [\"postgres://u:Hunter2Secret@h/db\"] }\n"
      "client_tls: { mode: disable }\n"
      "auth: { users: [{ name: a, password: \"SCRAM-SHA-256$Hunter2Secret\" }] }\n"
      "admin: { token: \"${TOK\" }\n");
  EXPECT_EQ(r.errors.size(), 3u) << formatErrors(r, "f");
  EXPECT_EQ(formatErrors(r, "f").find("Hunter2"), std::string::npos) << formatErrors(r, "f");
}

// ------------------------------------------------------------------ ${VAR} expansion

TEST(ConfigEnv, Expansion) {
  EnvLookup env =
      envFrom({{"HOST", "db.internal"}, {"EMPTY", ""}, {"TRICK", "${HOST}"}, {"TOK", "t"}});
  LoadResult r = load(
      "source: { url: \"postgres://u@${HOST}:${PORT:-5433}/db\" }\n"
      "client_tls: { mode: disable }\n"
      "auth: { method: trust, users: [{ name: \"${EMPTY:-fallback}\", password: \"a$$b$c${EMPTY}\" "
      "},"
      " { name: \"${TRICK}\" }] }\n"
      "admin: { listen: \"${ADMIN_LISTEN:-127.0.0.1:9999}\", token: \"${TOK}\" }\n"
      "log: { level: \"${LEVEL:-}warn\" }\n",
      env);
  ASSERT_TRUE(r.config) << formatErrors(r, "t");
  EXPECT_EQ(r.config->sourceUrl, "postgres://u@db.internal:5433/db");
  EXPECT_EQ(r.config->auth.users[0].name, "fallback");
  EXPECT_EQ(r.config->auth.users[0].password, "a$b$c");
  EXPECT_EQ(r.config->auth.users[1].name, "${HOST}");  // expanded text is not expanded again
  EXPECT_EQ(r.config->admin.listen, (Endpoint{"127.0.0.1", 9999}));
  EXPECT_EQ(r.config->log.level, "warn");
}

TEST(ConfigEnv, ScramVerifierDollarsAreLiteral) {
  LoadResult r = load(
      "source: { url: \"postgres://u@h/db\" }\n"
      "client_tls: { mode: disable }\n"
      "admin: { listen: null }\n"
      "auth: { users: [{ name: a, password: \"" +
      kVerifier + "\" }] }\n");
  ASSERT_TRUE(r.config) << formatErrors(r, "t");
  EXPECT_EQ(r.config->auth.users[0].password, kVerifier);
}

TEST(ConfigEnv, Errors) {
  LoadResult r = load(std::string(kBase) +
                      "state: { dir: \"/x/${A}/${B}\" }\n"  // 5
                      "log: { level: \"${oops\" }\n"        // 6
                      "target: { url: \"${1X}\" }\n"        // 7
                      "threads: \"${N:-$HOME}\"\n");        // 8
  const std::vector<ConfigError> expected = {
      {"state.dir", 5,
       "environment variables A, B are not set (use ${NAME:-default} for a default)"},
      {"log.level", 6, "unterminated ${ (missing '}'); write $$ for a literal $"},
      {"target.url", 7, "malformed ${...}: expected ${NAME} or ${NAME:-default}"},
      {"threads", 8, "a ${NAME:-default} default cannot contain '$'"},
  };
  EXPECT_EQ(r.errors, expected);
}

TEST(ConfigEnv, ProcessEnv) {
  ::setenv("PGHANDOFF_CONFIG_TEST_VAR", "v1", 1);
  EnvLookup env = processEnv();
  EXPECT_EQ(env("PGHANDOFF_CONFIG_TEST_VAR"), std::optional<std::string>("v1"));
  EXPECT_EQ(env("PGHANDOFF_CONFIG_TEST_UNSET_VAR"), std::nullopt);
}

// ------------------------------------------------------------------ files and helpers

TEST(ConfigFile, RelativePathsResolveAgainstTheFilesDirectory) {
  std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / "pghandoff_config_test";
  std::filesystem::create_directories(dir);
  std::filesystem::path file = dir / "p.yaml";
  {
    std::ofstream out(file);
    out << "source: { url: \"postgres://u@h/db\" }\n"
           "client_tls: { cert: tls/c.pem, key: ../k.pem }\n"
           "auth: { method: trust }\n"
           "admin: { listen: null }\n"
           "state: { dir: st }\n";
  }
  LoadResult r = loadConfigFile(file.string(), kNoEnv);
  ASSERT_TRUE(r.config) << formatErrors(r, file.string());
  EXPECT_EQ(r.config->clientTls.cert, (dir / "tls/c.pem").lexically_normal().string());
  EXPECT_EQ(r.config->clientTls.key, (dir.parent_path() / "k.pem").lexically_normal().string());
  EXPECT_EQ(r.config->state.dir, (dir / "st").lexically_normal().string());
  std::filesystem::remove_all(dir);
}

TEST(ConfigHelpers, ParseDuration) {
  EXPECT_EQ(parseDuration("5s"), milliseconds(5000));
  EXPECT_EQ(parseDuration("250ms"), milliseconds(250));
  EXPECT_EQ(parseDuration("2m"), milliseconds(120000));
  EXPECT_EQ(parseDuration("1h"), milliseconds(3600000));
  EXPECT_EQ(parseDuration("0"), milliseconds(0));
  for (const char* bad : {"", "5", "s", "5 s", "-5s", "1.5s", "5sec", "5S", "99999999999h"}) {
    EXPECT_EQ(parseDuration(bad), std::nullopt) << bad;
  }
}

TEST(ConfigHelpers, ParseSize) {
  EXPECT_EQ(parseSize("1000"), 1000u);
  EXPECT_EQ(parseSize("1000B"), 1000u);
  EXPECT_EQ(parseSize("512KiB"), 512u * 1024);
  EXPECT_EQ(parseSize("64MiB"), 64ull << 20);
  EXPECT_EQ(parseSize("64 MiB"), 64ull << 20);
  EXPECT_EQ(parseSize("1GiB"), 1ull << 30);
  EXPECT_EQ(parseSize("64MB"), 64ull << 20);  // PostgreSQL GUC convention: 1024-based
  EXPECT_EQ(parseSize("8kB"), 8192u);
  for (const char* bad : {"", "MiB", "1.5MiB", "-1", "64mib", "64M", "1TiB", "99999999999999GiB"}) {
    EXPECT_EQ(parseSize(bad), std::nullopt) << bad;
  }
}

TEST(ConfigHelpers, ParseEndpoint) {
  EXPECT_EQ(parseEndpoint("0.0.0.0:6432"), (Endpoint{"0.0.0.0", 6432}));
  EXPECT_EQ(parseEndpoint("[::1]:6432"), (Endpoint{"::1", 6432}));
  EXPECT_EQ(parseEndpoint("localhost:0"), (Endpoint{"localhost", 0}));
  for (const char* bad :
       {"", "6432", ":6432", "h:", "h:65536", "h:-1", "::1:6432", "[::1]", "[::1]6432", "h :1"}) {
    EXPECT_EQ(parseEndpoint(bad), std::nullopt) << bad;
  }
  EXPECT_EQ(toString(Endpoint{"::1", 5}), "[::1]:5");
  EXPECT_EQ(toString(Endpoint{"h", 5}), "h:5");
}

TEST(ConfigHelpers, EnumNames) {
  EXPECT_EQ(toString(OnDivergence::kPauseMirroring), "pause-mirroring");
  EXPECT_EQ(toString(AuthMethod::kScramSha256), "scram-sha-256");
  EXPECT_EQ(toString(OnTargetError::kFailClient), "fail-client");
  EXPECT_EQ(toString(TlsMode::kDisable), "disable");
  EXPECT_EQ(toString(LogFormat::kJson), "json");
}

}  // namespace
}  // namespace pghandoff::config
