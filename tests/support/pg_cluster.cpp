#include "tests/support/pg_cluster.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <stdexcept>

#include "tests/support/pq.h"
#include "tests/support/process.h"

namespace pghandoff::test {
namespace {

namespace fs = std::filesystem;

constexpr const char* kServerUser = "postgres";
constexpr const char* kDirPrefix = "pghandoff-pg";

// initdb and pg_ctl refuse to run as root.
std::string serverOsUser() {
  return isRoot() ? kServerUser : "";
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) {
    return {};
  }
  const auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

// Live children of pid (backends and auxiliary processes of a postmaster).
std::vector<int> childrenOf(int pid) {
  std::vector<int> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    std::ifstream in("/proc/" + name + "/stat");
    std::string stat;
    if (!std::getline(in, stat)) {
      continue;
    }
    const auto close = stat.rfind(')');
    if (close == std::string::npos) {
      continue;
    }
    std::istringstream rest(stat.substr(close + 1));
    char state = '\0';
    int ppid = 0;
    rest >> state >> ppid;
    if (ppid == pid && state != 'Z' && state != 'X') {
      out.push_back(std::stoi(name));
    }
  }
  return out;
}

int readPostmasterPid(const std::string& dataDir) {
  std::ifstream in(dataDir + "/postmaster.pid");
  int pid = 0;
  if (!(in >> pid)) {
    return 0;
  }
  return pid;
}

// SIGKILL the postmaster and all its children, as when the host dies. The
// children must be named one by one: every PostgreSQL child calls setsid(),
// so they are not in the postmaster's process group. SIGSTOP first so the
// postmaster cannot fork while we list its children.
void killCluster(int pid) {
  if (pid <= 0 || !processAlive(pid)) {
    return;
  }
  ::kill(pid, SIGSTOP);
  std::vector<int> victims = childrenOf(pid);
  ::kill(pid, SIGKILL);
  for (const int child : victims) {
    ::kill(child, SIGKILL);
  }
  victims.push_back(pid);
  waitFor(
      [&victims] {
        for (const int v : victims) {
          if (processAlive(v)) {
            return false;
          }
        }
        return true;
      },
      30s, 5ms);
}

// pg_ctl stop -m immediate; SIGKILL if that fails.
void stopClusterDir(const std::string& dataDir) noexcept {
  try {
    const int pid = readPostmasterPid(dataDir);
    if (pid <= 0 || !processAlive(pid)) {
      return;
    }
    RunOptions o;
    o.argv = {pgBinDir() + "/pg_ctl", "-D", dataDir, "-m", "immediate", "-w", "-t", "30", "stop"};
    o.asUser = serverOsUser();
    o.cwd = "/";
    o.timeout = 40s;
    const ProcessResult r = run(o);
    if (r.exitCode != 0 || processAlive(pid)) {
      killCluster(pid);
    }
  } catch (...) {  // best effort: we are cleaning up
  }
}

// Clusters (and cert and proxy dirs) left behind by test binaries that died
// without running destructors (crash, SIGKILL by a ctest timeout).
void reapAbandonedClusters() {
  reapAbandonedDirs([](const std::string& dir) { stopClusterDir(dir + "/data"); });
}

std::string conninfoQuote(const std::string& v) {
  std::string out = "'";
  for (const char c : v) {
    if (c == '\'' || c == '\\') {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  out.push_back('\'');
  return out;
}

// "a=b c=d" or "a=b&c=d" -> pairs.
std::vector<std::pair<std::string, std::string>> splitExtra(const std::string& extra) {
  std::vector<std::pair<std::string, std::string>> out;
  std::string token;
  auto flush = [&] {
    if (token.empty()) {
      return;
    }
    const auto eq = token.find('=');
    if (eq == std::string::npos) {
      out.emplace_back(token, "");
    } else {
      out.emplace_back(token.substr(0, eq), token.substr(eq + 1));
    }
    token.clear();
  };
  for (const char c : extra) {
    if (c == ' ' || c == '&') {
      flush();
    } else {
      token.push_back(c);
    }
  }
  flush();
  return out;
}

std::size_t readFileSize(const std::string& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  return ec ? 0 : static_cast<std::size_t>(size);
}

void copyCertFile(const std::string& from, const std::string& to, unsigned mode) {
  writeFile(to, readFile(from), mode);
  chownToUser(to, kServerUser);
}

// initdb once per machine and PostgreSQL build, into
// <tempRoot()>/pghandoff-pgtemplate-<uid>-<key>/data; every cluster copies it.
// Built under a reapable name and renamed into place, so concurrent test
// binaries never see a half-made template.
std::string templateDataDir() {
  static std::mutex mutex;
  const std::lock_guard lock(mutex);
  const std::string initdb = pgBinDir() + "/initdb";
  struct stat st {};
  if (::stat(initdb.c_str(), &st) != 0) {
    throw std::runtime_error("PgCluster: no initdb at " + initdb + " (set PGHANDOFF_PG_BIN)");
  }
  // Bump kTemplateVersion when the initdb arguments change.
  constexpr int kTemplateVersion = 2;
  const std::size_t key = std::hash<std::string>{}(initdb + ":" + std::to_string(st.st_mtime) +
                                                   ":" + std::to_string(kTemplateVersion));
  const std::string final = tempRoot() + "/pghandoff-pgtemplate-" + std::to_string(::geteuid()) +
                            "-" + std::to_string(key);
  if (fs::exists(final + "/data/PG_VERSION")) {
    return final + "/data";
  }
  const std::string build = makeTempDir(std::string(kDirPrefix) + "-tbuild");
  try {
    markOwned(build);
    chownToUser(build, kServerUser);
    const std::string pwfile = build + "/pwfile";
    writeFile(pwfile, randomHex(32) + "\n", 0600);  // replaced per cluster
    chownToUser(pwfile, kServerUser);
    RunOptions o;
    o.argv = {initdb,
              "-D",
              build + "/data",
              "--auth-local=trust",
              "--auth-host=scram-sha-256",  // pg_hba.conf is rewritten per cluster
              "--username=postgres",
              "--pwfile=" + pwfile,
              "-E",
              "UTF8",
              "--locale=C.UTF-8",
              "--no-sync",  // clusters are thrown away and run with fsync=off
              "--no-instructions",
              "--wal-segsize=1"};  // 1 MiB instead of 16: less to copy per cluster
    o.asUser = serverOsUser();
    o.cwd = "/";  // postgres may not be allowed into our working directory
    o.timeout = 120s;
    const ProcessResult r = run(o);
    ::unlink(pwfile.c_str());
    if (r.exitCode != 0) {
      throw std::runtime_error("initdb failed (exit " + std::to_string(r.exitCode) + "): " + r.err +
                               r.out);
    }
    unmarkOwned(build);
    if (::rename(build.c_str(), final.c_str()) != 0) {
      // Another test binary won the race; its template is as good as ours.
      std::error_code ec;
      fs::remove_all(build, ec);
    }
  } catch (...) {
    std::error_code ec;
    fs::remove_all(build, ec);
    throw;
  }
  if (!fs::exists(final + "/data/PG_VERSION")) {
    throw std::runtime_error("PgCluster: template " + final + " is incomplete");
  }
  return final + "/data";
}

}  // namespace

std::string pgBinDir() {
  const char* env = std::getenv("PGHANDOFF_PG_BIN");
  return env != nullptr && *env != '\0' ? env : "/usr/lib/postgresql/15/bin";
}

std::string quoteIdent(const std::string& ident) {
  std::string out = "\"";
  for (const char c : ident) {
    if (c == '"') {
      out.push_back('"');
    }
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

std::string quoteLiteral(const std::string& value) {
  std::string out = "'";
  for (const char c : value) {
    if (c == '\'') {
      out.push_back('\'');
    }
    out.push_back(c);
  }
  out.push_back('\'');
  return out;
}

std::string urlEncode(const std::string& s) {
  static constexpr std::string_view kHex = "0123456789ABCDEF";
  std::string out;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~') {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4U]);
      out.push_back(kHex[c & 0xFU]);
    }
  }
  return out;
}

PgCluster::PgCluster(ClusterOptions options) : options_(std::move(options)) {
  static std::once_flag reaped;
  std::call_once(reaped, reapAbandonedClusters);
  if (options_.ssl && options_.certDir.empty()) {
    throw std::runtime_error("PgCluster: ssl needs certDir");
  }
  dir_ = makeTempDir(kDirPrefix);
  try {
    markOwned(dir_);
    chownToUser(dir_, kServerUser);
    superPassword_ = randomHex(32);
    initdb();
    writeConfig();
    std::string failure;
    // The port was free when freePort() looked; another process may take it
    // before the postmaster binds it, so retry with a new one.
    for (int attempt = 0;; ++attempt) {
      port_ = freePort();
      if (tryStart(failure)) {
        setSuperPassword();
        break;
      }
      const bool collision = failure.find("Address already in use") != std::string::npos ||
                             failure.find("could not bind") != std::string::npos;
      if (!collision || attempt >= 4) {
        throw std::runtime_error("PgCluster: server did not start: " + failure);
      }
    }
  } catch (...) {
    stopImmediate();
    throw;
  }
}

PgCluster::~PgCluster() {
  stopImmediate();
}

void PgCluster::stopImmediate() noexcept {
  if (dir_.empty()) {
    return;
  }
  stopClusterDir(dataDir());
  running_ = false;
  std::error_code ec;
  fs::remove_all(dir_, ec);
  dir_.clear();
}

std::string PgCluster::pgBin(const std::string& tool) const {
  return pgBinDir() + "/" + tool;
}

void PgCluster::initdb() {
  // A copy of a pristine template costs ~0.15 s where initdb costs 1-3 s.
  RunOptions o;
  o.argv = {"cp", "-a", templateDataDir(), dataDir()};
  o.timeout = 120s;
  const ProcessResult r = run(o);
  if (r.exitCode != 0) {
    throw std::runtime_error("copying the initdb template failed: " + r.err);
  }
}

void PgCluster::setSuperPassword() {
  // Over the unix socket (local trust): the template's password is unknown.
  PqConn conn("host=" + dir_ + " port=" + std::to_string(port_) +
              " dbname=postgres user=postgres sslmode=disable");
  if (!conn.ok()) {
    throw std::runtime_error("PgCluster: local superuser connection failed: " + conn.error());
  }
  const PqResult r = conn.exec("ALTER ROLE postgres PASSWORD " + quoteLiteral(superPassword_));
  if (!r.ok) {
    throw std::runtime_error("PgCluster: setting the superuser password failed: " + r.error);
  }
}

void PgCluster::writeConfig() {
  std::ostringstream conf;
  conf << "\n# --- pghandoff test cluster ---\n"
       << "listen_addresses = '127.0.0.1'\n"
       << "unix_socket_directories = '" << dir_ << "'\n"
       << "max_connections = 100\n"
       << "shared_buffers = 32MB\n"
       << "fsync = off\n"
       << "full_page_writes = off\n"
       << "synchronous_commit = off\n"
       // md5 auth only works against md5-hashed passwords.
       << "password_encryption = '" << (options_.hbaMethod == "md5" ? "md5" : "scram-sha-256")
       << "'\n"
       << "log_min_messages = warning\n"
       << "logging_collector = off\n"
       << "max_prepared_transactions = " << options_.maxPreparedTransactions << "\n";
  if (options_.ssl) {
    copyCertFile(options_.certDir + "/server.crt", dir_ + "/server.crt", 0644);
    copyCertFile(options_.certDir + "/server.key", dir_ + "/server.key", 0600);
    copyCertFile(options_.certDir + "/ca.crt", dir_ + "/ca.crt", 0644);
    conf << "ssl = on\n"
         << "ssl_cert_file = '" << dir_ << "/server.crt'\n"
         << "ssl_key_file = '" << dir_ << "/server.key'\n"
         << "ssl_ca_file = '" << dir_ << "/ca.crt'\n";
  } else {
    conf << "ssl = off\n";
  }
  for (const auto& line : options_.extraConf) {
    conf << line << "\n";
  }
  std::ofstream out(dataDir() + "/postgresql.conf", std::ios::app);
  out << conf.str();
  if (!out.flush()) {
    throw std::runtime_error("cannot append to postgresql.conf");
  }

  const std::string& m = options_.hbaMethod;
  std::ostringstream hba;
  hba << "# pghandoff test cluster\n"
      << "local all all trust\n"
      << "local replication all trust\n";
  if (options_.hostsslOnly) {
    hba << "hostssl all all 127.0.0.1/32 " << m << "\n"
        << "hostssl replication all 127.0.0.1/32 " << m << "\n"
        << "hostnossl all all 127.0.0.1/32 reject\n"
        << "hostnossl replication all 127.0.0.1/32 reject\n";
  } else {
    hba << "host all all 127.0.0.1/32 " << m << "\n"
        << "host replication all 127.0.0.1/32 " << m << "\n";
  }
  const std::string hbaFile = dataDir() + "/pg_hba.conf";
  writeFile(hbaFile, hba.str(), 0600);
  chownToUser(hbaFile, kServerUser);
}

bool PgCluster::tryStart(std::string& failure) {
  // After kill9() the old postmaster may linger as an unreaped zombie whose
  // pid would make the new postmaster believe it still runs.
  // The same holds for the lock file beside the unix socket: both are only
  // ours, since the socket directory is this cluster's own.
  const int old = readPostmasterPid(dataDir());
  if (old > 0 && !processAlive(old)) {
    ::unlink((dataDir() + "/postmaster.pid").c_str());
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir_, ec)) {
      if (entry.path().filename().string().rfind(".s.PGSQL.", 0) == 0) {
        fs::remove(entry.path(), ec);
      }
    }
  }
  const std::size_t logBefore = readFileSize(logFile());
  RunOptions o;
  o.argv = {pgBin("pg_ctl"),
            "-D",
            dataDir(),
            "-l",
            logFile(),
            "-w",
            "-t",
            "60",
            "-o",
            "-p " + std::to_string(port_),
            "start"};
  o.asUser = serverOsUser();
  o.cwd = "/";
  o.timeout = 90s;
  const ProcessResult r = run(o);
  if (r.exitCode == 0) {
    running_ = true;
    return true;
  }
  std::string newLog = tailFile(logFile(), std::string::npos);
  if (newLog.size() > logBefore) {
    newLog.erase(0, logBefore);
  }
  failure = "pg_ctl exit " + std::to_string(r.exitCode) + (r.timedOut ? " (timed out)" : "") +
            ": " + r.err + "\nserver log:\n" + newLog;
  // A postmaster that half-started must not outlive the failed attempt.
  stopClusterDir(dataDir());
  return false;
}

void PgCluster::start() {
  std::string failure;
  if (!tryStart(failure)) {
    throw std::runtime_error("PgCluster::start: " + failure);
  }
}

void PgCluster::stop() {
  RunOptions o;
  o.argv = {pgBin("pg_ctl"), "-D", dataDir(), "-m", "fast", "-w", "-t", "60", "stop"};
  o.asUser = serverOsUser();
  o.cwd = "/";
  o.timeout = 90s;
  const ProcessResult r = run(o);
  running_ = false;
  if (r.exitCode != 0) {
    throw std::runtime_error("PgCluster::stop: pg_ctl exit " + std::to_string(r.exitCode) + ": " +
                             r.err);
  }
}

void PgCluster::restart() {
  stop();
  start();
}

void PgCluster::kill9() {
  const int pid = postmasterPid();
  if (pid <= 0) {
    throw std::runtime_error("PgCluster::kill9: no postmaster.pid");
  }
  killCluster(pid);
  running_ = false;
}

int PgCluster::postmasterPid() const {
  return readPostmasterPid(dataDir());
}

std::string PgCluster::log() const {
  return tailFile(logFile(), std::string::npos);
}

std::string PgCluster::url(const std::string& db, const std::string& user,
                           const std::optional<std::string>& password,
                           const std::string& extra) const {
  const std::string pw = password.value_or(superPassword_);
  std::string u = "postgresql://" + urlEncode(user);
  if (!pw.empty()) {
    u += ":" + urlEncode(pw);
  }
  u += "@" + host() + ":" + std::to_string(port_) + "/" + urlEncode(db);
  char sep = '?';
  for (const auto& [k, v] : splitExtra(extra)) {
    u += sep + urlEncode(k) + "=" + urlEncode(v);
    sep = '&';
  }
  return u;
}

std::string PgCluster::urlVia(std::uint16_t port) const {
  return "postgresql://postgres:" + urlEncode(superPassword_) +
         "@127.0.0.1:" + std::to_string(port) + "/postgres?sslmode=disable";
}

void PgCluster::pgbenchInit(int scale) const {
  const ProcessResult init =
      run({pgBinDir() + "/pgbench", "-i", "-q", "-s", std::to_string(scale), "-h", "127.0.0.1",
           "-p", std::to_string(port_), "-U", "postgres", "postgres"},
          {{"PGPASSWORD", superPassword_}}, std::chrono::seconds(120));
  if (init.exitCode != 0) throw std::runtime_error("pgbench -i failed: " + init.err);
}

std::string PgCluster::conninfo(const std::string& db, const std::string& user,
                                const std::optional<std::string>& password,
                                const std::string& extra) const {
  const std::string pw = password.value_or(superPassword_);
  std::string c = "host=" + host() + " port=" + std::to_string(port_) +
                  " dbname=" + conninfoQuote(db) + " user=" + conninfoQuote(user);
  if (!pw.empty()) {
    c += " password=" + conninfoQuote(pw);
  }
  for (const auto& [k, v] : splitExtra(extra)) {
    c += " " + k + "=" + conninfoQuote(v);
  }
  return c;
}

std::string PgCluster::psql(const std::string& sql, const std::string& db) {
  // sslmode=prefer so hostssl-only clusters work too.
  const std::string target = "host=" + host() + " port=" + std::to_string(port_) +
                             " user=postgres dbname=" + conninfoQuote(db) + " sslmode=prefer";
  const ProcessResult r =
      run({pgBin("psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", target, "-f", "-"},
          {{"PGPASSWORD", superPassword_},
           {"PGCONNECT_TIMEOUT", "10"},
           {"PGAPPNAME", "pghandoff-test-psql"}},
          60s, sql);
  if (r.exitCode != 0) {
    throw std::runtime_error("psql failed (exit " + std::to_string(r.exitCode) +
                             (r.timedOut ? ", timed out" : "") + "): " + trim(r.err));
  }
  return trim(r.out);
}

void PgCluster::createRole(const std::string& name, const std::string& password, bool login) {
  psql("CREATE ROLE " + quoteIdent(name) + (login ? " LOGIN" : " NOLOGIN") + " PASSWORD " +
       quoteLiteral(password) + ";");
}

void PgCluster::createDatabase(const std::string& name, const std::string& owner) {
  psql("CREATE DATABASE " + quoteIdent(name) + " OWNER " + quoteIdent(owner) + ";");
}

}  // namespace pghandoff::test
