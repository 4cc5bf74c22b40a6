// pghandoff seed (SPEC §3; proxy/seed.h for the proxy's side):
//   1. the target must be empty (or --clean, or left partly restored by an
//      interrupted seed, which is cleared);
//   2. POST /seed/start: the proxy holds new transactions, exports a snapshot
//      on the source with none running, moves to `seeding` (writes go to the
//      source and to the catch-up journal);
//   3. pg_dump --snapshot of it (directory format, --jobs), then
//      pg_restore --jobs --no-owner --no-acl into the target;
//   4. POST /seed/finish: the proxy replays the journal on the target, then
//      at a barrier the rest, the sequences and the flip to `mirror`.
// A lease (POST /seed/heartbeat every 2 s) ties the seed to this process:
// Ctrl-C or a crash sends the proxy back to source-only; Ctrl-C also clears
// what was restored. --dry-run seeds a scratch database on the target server
// instead and reports the timings, without touching the proxy.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "config/conninfo.h"
#include "migrate/admin_client.h"
#include "migrate/cli_support.h"
#include "migrate/commands.h"
#include "migrate/pg.h"

extern char** environ;

namespace pghandoff::migrate {

namespace {

using Clock = std::chrono::steady_clock;
std::atomic<bool> gInterrupted{false};

void onSignal(int) {
  gInterrupted = true;
}

double seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

std::string human(double bytes) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return buf;
}

std::string findTool(const std::string& name) {
  if (const char* path = std::getenv("PATH")) {
    std::string p = path;
    std::size_t at = 0;
    while (at <= p.size()) {
      auto colon = p.find(':', at);
      std::string dir = p.substr(at, colon == std::string::npos ? std::string::npos : colon - at);
      if (!dir.empty() && ::access((dir + "/" + name).c_str(), X_OK) == 0) return dir + "/" + name;
      if (colon == std::string::npos) break;
      at = colon + 1;
    }
  }
  for (const char* dir : {"/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"}) {
    std::string f = std::string(dir) + "/" + name;
    if (::access(f.c_str(), X_OK) == 0) return f;
  }
  return {};
}

// libpq's environment for a connection: nothing secret on a command line.
std::map<std::string, std::string> pgEnv(const config::ConnInfo& c, const std::string& dbname) {
  std::map<std::string, std::string> env;
  env["PGHOST"] = c.host;
  env["PGPORT"] = std::to_string(c.port);
  env["PGUSER"] = c.user;
  if (!c.password.empty()) env["PGPASSWORD"] = c.password;
  env["PGDATABASE"] = dbname.empty() ? (c.dbname.empty() ? c.user : c.dbname) : dbname;
  env["PGSSLMODE"] = std::string(config::toString(c.sslmode));
  if (!c.sslrootcert.empty()) env["PGSSLROOTCERT"] = c.sslrootcert;
  if (!c.sslcert.empty()) env["PGSSLCERT"] = c.sslcert;
  if (!c.sslkey.empty()) env["PGSSLKEY"] = c.sslkey;
  if (c.connectTimeout.count() > 0) {
    env["PGCONNECT_TIMEOUT"] =
        std::to_string(std::max<long long>(1, c.connectTimeout.count() / 1000));
  }
  if (!c.options.empty()) env["PGOPTIONS"] = c.options;
  env["PGAPPNAME"] = "pghandoff seed";
  return env;
}

struct ChildResult {
  int exitCode = -1;
  std::vector<std::string> stderrLines;
};

// Runs a tool with `env` added (PG* from the parent dropped), its stderr
// read line by line (`onLine`), `tick` called about every 500 ms. SIGINT
// to us reaches it too (same process group).
ChildResult runTool(const std::vector<std::string>& argv,
                    const std::map<std::string, std::string>& env,
                    const std::function<void(const std::string&)>& onLine,
                    const std::function<void()>& tick) {
  ChildResult result;
  int err[2];
  if (::pipe2(err, O_CLOEXEC) != 0) return result;
  std::vector<std::string> envStrings;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "PG", 2) == 0) continue;
    envStrings.emplace_back(*e);
  }
  for (const auto& [k, v] : env) envStrings.push_back(k + "=" + v);
  std::vector<char*> envp, args;
  for (auto& s : envStrings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argvCopy = argv;
  for (auto& a : argvCopy) args.push_back(a.data());
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(err[0]);
    ::close(err[1]);
    return result;
  }
  if (pid == 0) {
    ::dup2(err[1], 2);
    ::execve(args[0], args.data(), envp.data());
    std::fprintf(stderr, "cannot run %s: %s\n", args[0], std::strerror(errno));
    ::_exit(127);
  }
  ::close(err[1]);
  std::string partial;
  std::array<char, 8192> buf{};
  auto lastTick = Clock::now();
  while (true) {
    pollfd p{err[0], POLLIN, 0};
    const int r = ::poll(&p, 1, 200);
    if (r > 0) {
      const ssize_t n = ::read(err[0], buf.data(), buf.size());
      if (n <= 0) break;
      partial.append(buf.data(), static_cast<std::size_t>(n));
      std::size_t nl;
      while ((nl = partial.find('\n')) != std::string::npos) {
        std::string line = partial.substr(0, nl);
        partial.erase(0, nl + 1);
        if (onLine) onLine(line);
        result.stderrLines.push_back(std::move(line));
        if (result.stderrLines.size() > 2000) {
          result.stderrLines.erase(result.stderrLines.begin(), result.stderrLines.begin() + 1000);
        }
      }
    }
    if (Clock::now() - lastTick > std::chrono::milliseconds(500)) {
      lastTick = Clock::now();
      if (tick) tick();
    }
  }
  ::close(err[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exitCode = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

std::uint64_t dirBytes(const std::string& dir) {
  std::uint64_t total = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) total += it->file_size(ec);
  }
  return total;
}

class Progress {
 public:
  Progress(std::string step, int tables, double bytes)
      : step_(std::move(step)), tables_(tables), bytes_(bytes), tty_(::isatty(1) != 0) {}
  void update(int tablesDone, double bytesDone) {
    const double el = seconds(Clock::now() - start_);
    const double rate = el > 0 ? bytesDone / el : 0;
    const double frac = bytes_ > 0 ? std::min(1.0, bytesDone / bytes_)
                                   : (tables_ > 0 ? double(tablesDone) / tables_ : 0);
    const double eta = frac > 0.01 ? el / frac - el : -1;
    char line[256];
    const int width = 24;
    std::string bar(static_cast<std::size_t>(frac * width), '#');
    bar.resize(width, '.');
    std::snprintf(line, sizeof line, "%-8s [%s] %3.0f%%  %d/%d tables  %s  %s/s  ETA %s",
                  step_.c_str(), bar.c_str(), frac * 100, tablesDone, tables_,
                  human(bytesDone).c_str(), human(rate).c_str(),
                  eta < 0 ? "?" : (std::to_string(static_cast<int>(eta + 0.5)) + "s").c_str());
    if (tty_) {
      std::printf("\r%s\x1b[K", line);
      std::fflush(stdout);
    } else if (Clock::now() - lastPlain_ > std::chrono::seconds(5)) {
      lastPlain_ = Clock::now();
      std::printf("%s\n", line);
      std::fflush(stdout);
    }
  }
  void done() {
    if (tty_) std::printf("\n");
    std::fflush(stdout);
  }

 private:
  std::string step_;
  int tables_;
  double bytes_;
  bool tty_;
  Clock::time_point start_ = Clock::now();
  Clock::time_point lastPlain_{};
};

// User objects in the target database (what a seed would collide with; the
// proxy's own schema, pghandoff, is not the application's).
long long targetObjects(PgConn& t) {
  return std::stoll(t.value(
      "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = "
      "c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pghandoff') "
      "AND n.nspname "
      "NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' AND c.relkind IN "
      "('r','p','S','v','m','f')"));
}

// Empties the target database: every user schema dropped, public made anew.
void clearTarget(PgConn& t) {
  auto schemas = t.exec(
      "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname NOT IN ('pg_catalog', "
      "'information_schema') AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp%'");
  for (int i = 0; i < schemas.rows(); ++i) {
    t.exec("DROP SCHEMA " + quoteIdent(schemas.get(i, 0)) + " CASCADE");
  }
  t.exec(
      "CREATE SCHEMA public; ALTER SCHEMA public OWNER TO pg_database_owner; GRANT USAGE ON "
      "SCHEMA public TO PUBLIC");
  t.exec("SELECT pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata");
}

struct Sizes {
  int tables = 0;
  double bytes = 0;
};

Sizes sourceSizes(PgConn& s) {
  auto r = s.exec(
      "SELECT count(*), COALESCE(sum(pg_catalog.pg_table_size(c.oid)), 0) FROM pg_catalog.pg_class "
      "c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','m') "
      "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE "
      "'pg\\_toast%'");
  return {static_cast<int>(r.getInt(0, 0)), std::stod(r.get(0, 1))};
}

// pg_restore's errors that do not matter here: objects a fresh database
// already has, and ownership/privileges of a non-superuser target user.
bool harmless(const std::string& line) {
  return line.find("already exists") != std::string::npos ||
         line.find("must be owner of") != std::string::npos ||
         line.find("errors ignored on restore") != std::string::npos ||
         line.find("Command was:") != std::string::npos;
}

struct Timings {
  double snapshot = 0, dump = 0, restore = 0, catchUp = 0, total = 0;
};

bool dumpAndRestore(const config::ConnInfo& src, const config::ConnInfo& tgt,
                    const std::string& targetDb, const std::string& snapshot, int jobs,
                    const Sizes& sizes, const std::string& dir, Timings& t, std::string& error) {
  const std::string pgDump = findTool("pg_dump");
  const std::string pgRestore = findTool("pg_restore");
  if (pgDump.empty() || pgRestore.empty()) {
    error = "pg_dump and pg_restore are needed (PATH, /usr/lib/postgresql/15/bin)";
    return false;
  }
  // Dump.
  auto at = Clock::now();
  {
    Progress bar("dump", sizes.tables, sizes.bytes);
    int done = 0;
    std::vector<std::string> argv = {
        pgDump,          "--format=directory", "--jobs=" + std::to_string(jobs),
        "--file=" + dir, "--verbose",          "--no-sync"};
    if (!snapshot.empty()) argv.push_back("--snapshot=" + snapshot);
    // The proxy's own schema (an async mirror's replay position) stays out.
    argv.push_back("--exclude-schema=pghandoff");
    auto r = runTool(
        argv, pgEnv(src, ""),
        [&](const std::string& line) {
          if (line.find("finished item") != std::string::npos ||
              line.find("dumping contents of table") != std::string::npos) {
            ++done;
          }
        },
        [&] { bar.update(std::min(done, sizes.tables), static_cast<double>(dirBytes(dir))); });
    bar.update(sizes.tables, static_cast<double>(dirBytes(dir)));
    bar.done();
    if (gInterrupted) {
      error = "interrupted";
      return false;
    }
    if (r.exitCode != 0) {
      error = "pg_dump failed (exit " + std::to_string(r.exitCode) + ")";
      for (const auto& l : r.stderrLines) {
        if (l.find("error") != std::string::npos) error += "\n  " + l;
      }
      return false;
    }
  }
  t.dump = seconds(Clock::now() - at);
  std::printf("dump     %.1f s, %s\n", t.dump, human(static_cast<double>(dirBytes(dir))).c_str());
  std::fflush(stdout);
  // Restore.
  at = Clock::now();
  {
    Progress bar("restore", sizes.tables, 0);
    int done = 0;
    std::vector<std::string> argv = {
        pgRestore,   "--jobs=" + std::to_string(jobs), "--no-owner", "--no-acl",
        "--verbose", "--dbname=" + targetDb,           dir};
    auto env = pgEnv(tgt, targetDb);
    auto r = runTool(
        argv, env,
        [&](const std::string& line) {
          if (line.find("processing data for table") != std::string::npos) ++done;
        },
        [&] { bar.update(std::min(done, sizes.tables), 0); });
    bar.update(sizes.tables, 0);
    bar.done();
    if (gInterrupted) {
      error = "interrupted";
      return false;
    }
    if (r.exitCode != 0) {
      std::string bad;
      for (const auto& l : r.stderrLines) {
        if (l.find("error:") != std::string::npos && !harmless(l)) bad += "\n  " + l;
      }
      if (!bad.empty()) {
        error = "pg_restore failed:" + bad;
        return false;
      }
    }
  }
  t.restore = seconds(Clock::now() - at);
  std::printf("restore  %.1f s (--jobs %d, --no-owner --no-acl)\n", t.restore, jobs);
  std::fflush(stdout);
  return true;
}

std::string makeTempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/pghandoff-seed-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) return {};
  return tmpl;
}

int dryRun(const config::Config& cfg, const config::ConnInfo& src, const config::ConnInfo& tgt,
           int jobs) {
  Timings t;
  const auto start = Clock::now();
  std::string scratch = "pghandoff_dryrun_" + std::to_string(::getpid());
  std::string tmp = makeTempDir();
  try {
    PgConn s = PgConn::open(cfg.sourceUrl, "source", "pghandoff seed --dry-run");
    PgConn tAdmin = PgConn::open(cfg.targetUrl, "target", "pghandoff seed --dry-run");
    Sizes sizes = sourceSizes(s);
    tAdmin.exec("CREATE DATABASE " + quoteIdent(scratch));
    auto at = Clock::now();
    s.exec("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
    const std::string snap = s.value("SELECT pg_catalog.pg_export_snapshot()");
    t.snapshot = seconds(Clock::now() - at);
    std::printf("dry run: seeding the scratch database %s on the target server\n", scratch.c_str());
    std::string error;
    const bool ok = dumpAndRestore(src, tgt, scratch, snap, jobs, sizes, tmp + "/dump", t, error);
    s.exec("COMMIT");
    tAdmin.exec("DROP DATABASE " + quoteIdent(scratch));
    std::filesystem::remove_all(tmp);
    if (!ok) {
      std::fprintf(stderr, "pghandoff seed --dry-run: %s\n", error.c_str());
      return 2;
    }
    t.total = seconds(Clock::now() - start);
    std::printf(
        "dry run done: snapshot %.2f s, dump %.1f s, restore %.1f s, total %.1f s "
        "(%d tables, %s); the scratch database was dropped\n",
        t.snapshot, t.dump, t.restore, t.total, sizes.tables, human(sizes.bytes).c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pghandoff seed --dry-run: %s\n", e.what());
    try {
      PgConn tAdmin = PgConn::open(cfg.targetUrl, "target", "pghandoff seed --dry-run");
      tAdmin.exec("DROP DATABASE IF EXISTS " + quoteIdent(scratch));
    } catch (const std::exception&) {
    }
    std::filesystem::remove_all(tmp);
    return 2;
  }
}

}  // namespace

int runSeed(const Args& args) {
  auto cfg = loadConfigFor(args, "seed");
  if (!cfg) return 2;
  int jobs = 4;
  if (auto j = optionValue(args, "--jobs"); !j.empty()) jobs = std::max(1, std::atoi(j.c_str()));
  const bool clean = hasFlag(args, "--clean");
  if (cfg->targetUrl.empty()) {
    std::fprintf(stderr, "pghandoff seed: target.url is not set in the configuration\n");
    return 2;
  }
  auto src = config::parseConnInfo(cfg->sourceUrl);
  auto tgt = config::parseConnInfo(cfg->targetUrl);
  if (!src.info || !tgt.info) {
    std::fprintf(stderr, "pghandoff seed: %s\n", (!src.info ? src.error : tgt.error).c_str());
    return 2;
  }
  if (hasFlag(args, "--dry-run")) return dryRun(*cfg, *src.info, *tgt.info, jobs);

  auto admin = adminFromConfig(*cfg);
  if (!admin) {
    std::fprintf(stderr,
                 "pghandoff seed: the admin API is disabled in the configuration; the "
                 "seed drives the proxy through it\n");
    return 2;
  }
  struct sigaction sa {};
  sa.sa_handler = onSignal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  Timings t;
  const auto start = Clock::now();
  PgConn target, source;
  Sizes sizes;
  try {
    source = PgConn::open(cfg->sourceUrl, "source", "pghandoff seed");
    target = PgConn::open(cfg->targetUrl, "target", "pghandoff seed");
    sizes = sourceSizes(source);
    const long long existing = targetObjects(target);
    if (existing > 0) {
      auto seed = adminCall(*admin, "GET", "/seed");
      const bool interrupted = jsonMember(seed.body, "previous") == "interrupted";
      if (!clean && !interrupted) {
        std::fprintf(stderr,
                     "pghandoff seed: the target database already holds %lld tables, sequences "
                     "or views; seed an empty database, or pass --clean to drop them first\n",
                     existing);
        return 1;
      }
      std::printf("clearing the target (%s)\n",
                  interrupted ? "an interrupted seed left a partial restore" : "--clean");
      clearTarget(target);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pghandoff seed: %s\n", e.what());
    return 2;
  }

  // 2. Seeding.
  auto at = Clock::now();
  AdminReply started;
  try {
    started = adminCall(*admin, "POST", "/seed/start", "");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pghandoff seed: %s\n", e.what());
    return 2;
  }
  if (started.status != 200) {
    std::fprintf(stderr, "pghandoff seed: the proxy refused to start the seed (HTTP %d): %s\n",
                 started.status, started.body.c_str());
    return started.status == 409 ? 1 : 2;
  }
  t.snapshot = seconds(Clock::now() - at);
  const std::string snapshot = jsonMember(started.body, "snapshot");
  std::printf("seeding: the proxy journals writes; snapshot %s exported on the source (%.2f s)\n",
              snapshot.c_str(), t.snapshot);
  std::fflush(stdout);

  std::atomic<bool> stopBeat{false}, leaseLost{false};
  std::thread beat([&] {
    while (!stopBeat) {
      for (int i = 0; i < 20 && !stopBeat; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      if (stopBeat) break;
      try {
        auto r = adminCall(*admin, "POST", "/seed/heartbeat", "", std::chrono::seconds(5));
        if (r.status == 409) leaseLost = true;
      } catch (const std::exception&) {
      }
    }
  });
  auto giveUp = [&](const std::string& why, bool clear) {
    stopBeat = true;
    beat.join();
    std::fprintf(stderr, "pghandoff seed: %s\n", why.c_str());
    try {
      auto r = adminCall(*admin, "POST", "/seed/abort", "");
      if (r.status == 200) {
        std::fprintf(stderr, "the proxy is back in source-only; the source was not changed\n");
      } else {
        std::fprintf(stderr, "the proxy did not give the seed up (HTTP %d): %s\n", r.status,
                     r.body.c_str());
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "cannot reach the proxy to give the seed up: %s\n", e.what());
    }
    if (clear) {
      try {
        clearTarget(target);
        std::fprintf(stderr, "what was restored into the target was dropped\n");
      } catch (const std::exception& e) {
        std::fprintf(stderr, "could not clear the target: %s\n", e.what());
      }
    }
    return gInterrupted ? 130 : 2;
  };

  // 3. Dump and restore.
  std::string tmp = makeTempDir();
  if (tmp.empty()) return giveUp("cannot create a temporary directory", false);
  std::string error;
  const std::string targetDb = tgt.info->dbname.empty() ? tgt.info->user : tgt.info->dbname;
  const bool ok = dumpAndRestore(*src.info, *tgt.info, targetDb, snapshot, jobs, sizes,
                                 tmp + "/dump", t, error);
  std::filesystem::remove_all(tmp);
  if (!ok) return giveUp(error, true);
  if (leaseLost) return giveUp("the proxy gave the seed up (its lease lapsed)", true);

  // 4. Catch up and flip to mirror.
  at = Clock::now();
  try {
    auto r = adminCall(*admin, "POST", "/seed/finish", "");
    if (r.status != 202) return giveUp("the proxy could not replay the journal: " + r.body, true);
    std::string last;
    while (true) {
      if (gInterrupted) {
        // The replay finishes on its own (it cannot be cut halfway); then
        // the seed is given up.
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
      auto s = adminCall(*admin, "GET", "/seed");
      const std::string stage = jsonMember(s.body, "stage");
      const std::string line = "catch-up: " + jsonMember(s.body, "applied") + " of " +
                               jsonMember(s.body, "journal_transactions") +
                               " journaled transactions applied, " + jsonMember(s.body, "queued") +
                               " queued";
      if (line != last && ::isatty(1) != 0) {
        std::printf("\r%s\x1b[K", line.c_str());
        std::fflush(stdout);
        last = line;
      }
      if (stage == "done") {
        if (::isatty(1) != 0) std::printf("\n");
        t.catchUp = seconds(Clock::now() - at);
        std::printf(
            "catch-up %.1f s: %s journaled transactions applied (%s rolled back on the "
            "source, %s already in the snapshot); barrier %s ms\n",
            t.catchUp, jsonMember(s.body, "applied").c_str(),
            jsonMember(s.body, "not_committed").c_str(), jsonMember(s.body, "in_snapshot").c_str(),
            jsonMember(s.body, "barrier_ms").c_str());
        break;
      }
      if (stage != "catching-up") {
        if (::isatty(1) != 0) std::printf("\n");
        return giveUp("the catch-up failed: " + jsonMember(s.body, "error"), true);
      }
    }
  } catch (const std::exception& e) {
    return giveUp(e.what(), true);
  }
  stopBeat = true;
  beat.join();
  t.total = seconds(Clock::now() - start);
  std::printf(
      "seeded: phase mirror. snapshot %.2f s, dump %.1f s, restore %.1f s, catch-up %.1f s, "
      "total %.1f s (%d tables, %s)\n",
      t.snapshot, t.dump, t.restore, t.catchUp, t.total, sizes.tables, human(sizes.bytes).c_str());
  return 0;
}

}  // namespace pghandoff::migrate
