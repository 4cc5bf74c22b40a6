// `pghandoff check` (SPEC §3): gather facts from both servers, evaluate them
// (pure, see check.h), print the report. Exit 0 = go, 1 = blockers, 2 = could
// not run.

#include "migrate/check.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <sstream>

#include "config/conninfo.h"
#include "migrate/cli_support.h"
#include "migrate/commands.h"
#include "migrate/pg.h"
#include "proxy/admin.h"

extern char** environ;

namespace pghandoff::migrate {
namespace check {

namespace {

// How many names a line lists before "and N more".
constexpr std::size_t kListed = 10;

std::string joinList(const std::vector<std::string>& names, long long total = -1) {
  std::string out;
  const std::size_t shown = std::min(names.size(), kListed);
  for (std::size_t i = 0; i < shown; ++i) {
    if (i > 0) out += ", ";
    out += names[i];
  }
  const long long all = total < 0 ? static_cast<long long>(names.size()) : total;
  if (all > static_cast<long long>(shown)) {
    out += " and " + std::to_string(all - static_cast<long long>(shown)) + " more";
  }
  return out;
}

std::string plural(long long n, const std::string& one, const std::string& many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

// Settings that follow the machine or the server's role rather than what the
// applications see: paths and listeners, logging, memory and worker sizing,
// WAL/checkpoint/replication, hardware cost knobs, and values that belong to
// one session (ours). A difference there is expected and says nothing about
// whether the application behaves the same on the target. max_connections
// and max_prepared_transactions have checks of their own (headroom,
// two-phase commit); max_prepared_transactions is still listed when it
// differs (see kAlwaysCompared).
// clang-format off
constexpr const char* kPerServer[] = {
    // paths, listeners, identity
    "data_directory", "config_file", "hba_file", "ident_file", "external_pid_file", "port",
    "listen_addresses", "unix_socket_directories", "unix_socket_group", "unix_socket_permissions",
    "cluster_name", "bonjour", "bonjour_name", "krb_server_keyfile", "event_source",
    "dynamic_shared_memory_type", "shared_memory_type", "update_process_title", "data_sync_retry",
    "restart_after_crash", "stats_temp_directory",
    // our own session's values
    "application_name", "client_encoding", "session_authorization", "role", "is_superuser",
    "in_hot_standby",
    // memory and worker sizing, hardware cost knobs
    "shared_buffers", "huge_pages", "huge_page_size", "min_dynamic_shared_memory", "temp_buffers",
    "work_mem", "hash_mem_multiplier", "maintenance_work_mem", "autovacuum_work_mem",
    "logical_decoding_work_mem", "effective_cache_size", "max_stack_depth",
    "max_files_per_process", "max_locks_per_transaction", "max_pred_locks_per_transaction",
    "max_pred_locks_per_relation", "max_pred_locks_per_page", "track_activity_query_size",
    "max_connections", "superuser_reserved_connections", "reserved_connections",
    "max_worker_processes", "max_parallel_workers", "max_parallel_workers_per_gather",
    "max_parallel_maintenance_workers", "max_logical_replication_workers",
    "max_sync_workers_per_subscription", "autovacuum_max_workers", "effective_io_concurrency",
    "maintenance_io_concurrency", "random_page_cost", "seq_page_cost",
    // durability of the files, WAL, checkpoints, replication, standby
    "fsync", "full_page_writes", "max_wal_size", "min_wal_size", "max_wal_senders",
    "max_replication_slots", "max_slot_wal_keep_size", "synchronous_standby_names", "hot_standby",
    "hot_standby_feedback", "max_standby_archive_delay", "max_standby_streaming_delay",
    "primary_conninfo", "primary_slot_name", "restore_command", "promote_trigger_file",
    "logging_collector",
};
// Whole families of per-server settings, by prefix. transaction_isolation,
// _read_only and _deferrable reflect the current transaction; their
// default_transaction_* counterparts are compared.
constexpr const char* kPerServerPrefixes[] = {
    "ssl", "log_", "syslog_", "wal_", "checkpoint_", "archive_", "recovery_", "autovacuum_",
    "bgwriter_", "vacuum_cost_", "tcp_", "debug_", "trace_", "transaction_",
};
// Compared even when both servers run them at their defaults: they change
// what a statement means or returns (dates, text, isolation, name lookup).
constexpr const char* kAlwaysCompared[] = {
    "TimeZone", "DateStyle", "IntervalStyle", "lc_messages", "lc_monetary", "lc_numeric",
    "lc_time", "standard_conforming_strings", "search_path", "default_transaction_isolation",
    "max_prepared_transactions",
};
// clang-format on

bool nameIn(const std::string& name, const auto& list) {
  return std::any_of(std::begin(list), std::end(list), [&](const char* n) { return name == n; });
}

bool isDefault(const Setting* s) {
  return s == nullptr || s->source == "default";
}

}  // namespace

const char* toString(Status s) {
  switch (s) {
    case Status::kOk:
      return "ok";
    case Status::kWarn:
      return "warn";
    case Status::kBlocker:
      return "blocker";
  }
  return "ok";
}

bool Report::go() const {
  return count(Status::kBlocker) == 0;
}

std::size_t Report::count(Status s) const {
  return static_cast<std::size_t>(
      std::count_if(items.begin(), items.end(), [s](const Item& i) { return i.status == s; }));
}

std::vector<std::string> Report::lines(Status s) const {
  std::vector<std::string> out;
  for (const auto& i : items) {
    if (i.status == s) out.push_back(i.name + ": " + i.detail);
  }
  return out;
}

const Item* Report::find(const std::string& name) const {
  for (const auto& i : items) {
    if (i.name == name) return &i;
  }
  return nullptr;
}

std::optional<int> parseVersionNumber(const std::string& text) {
  // Up to three dot-separated numbers; anything after the first number that
  // is not ".digit" ends the version ("16beta1", "15.4 (Debian ...)").
  std::vector<int> parts;
  std::size_t i = 0;
  while (parts.size() < 3) {
    if (i >= text.size() || std::isdigit(static_cast<unsigned char>(text[i])) == 0) break;
    long long n = 0;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])) != 0) {
      n = n * 10 + (text[i] - '0');
      if (n > 9999) return std::nullopt;
      ++i;
    }
    parts.push_back(static_cast<int>(n));
    if (i + 1 < text.size() && text[i] == '.' &&
        std::isdigit(static_cast<unsigned char>(text[i + 1])) != 0) {
      ++i;
    } else {
      break;
    }
  }
  if (parts.empty() || parts[0] == 0) return std::nullopt;
  if (parts[0] >= 10) {
    // Since 10 the major version is one number: "15.4" is 15, minor 4.
    return parts[0] * 10000 + (parts.size() > 1 ? parts[1] : 0);
  }
  return parts[0] * 10000 + (parts.size() > 1 ? parts[1] * 100 : 0) +
         (parts.size() > 2 ? parts[2] : 0);
}

int majorOf(int versionNum) {
  return versionNum >= 100000 ? versionNum / 10000 : versionNum / 100;
}

std::string majorName(int versionNum) {
  if (versionNum >= 100000) return std::to_string(versionNum / 10000);
  return std::to_string(versionNum / 10000) + "." + std::to_string(versionNum / 100 % 100);
}

std::optional<std::string> versionFromToolOutput(const std::string& output) {
  // "pg_dump (PostgreSQL) 15.4 (Debian 15.4-1.pgdg120+1)": the first word
  // after "(PostgreSQL) "; failing that, the first word that starts with a digit.
  std::istringstream in(output);
  std::string word;
  std::string previous;
  std::optional<std::string> firstNumeric;
  while (in >> word) {
    if (previous == "(PostgreSQL)" && parseVersionNumber(word)) return word;
    if (!firstNumeric && parseVersionNumber(word)) firstNumeric = word;
    previous = word;
  }
  return firstNumeric;
}

bool settingIsCompared(const std::string& name, const Setting* source, const Setting* target) {
  if (nameIn(name, kPerServer)) return false;
  for (const char* prefix : kPerServerPrefixes) {
    if (name.rfind(prefix, 0) == 0) return false;
  }
  // Fixed at initdb or build time (block_size, server_encoding, lc_collate,
  // server_version, data_checksums...): the version and encoding checks cover
  // what matters among them.
  if ((source != nullptr && source->context == "internal") ||
      (target != nullptr && target->context == "internal")) {
    return false;
  }
  if (nameIn(name, kAlwaysCompared)) return true;
  return !isDefault(source) || !isDefault(target);
}

Report evaluate(const Facts& source, const Facts& target, const Options& options) {
  Report r;
  r.source = {source.server, source.serverVersion, source.database, source.sizePretty};
  r.target = {target.server, target.serverVersion, target.database, target.sizePretty};
  auto add = [&r](std::string section, std::string name, Status status, std::string detail) {
    r.items.push_back({std::move(section), std::move(name), status, std::move(detail)});
  };

  // 1. Versions. pg_restore cannot load a dump into an older server (newer
  // syntax, catalogs); pg_dump refuses servers newer than itself. Minor
  // releases of one major version share catalogs and dump format: only a
  // major difference is worth a warning.
  {
    const int sm = majorOf(source.serverVersionNum);
    const int tm = majorOf(target.serverVersionNum);
    const std::string both = "source " + source.serverVersion + ", target " + target.serverVersion;
    if (tm < sm) {
      add("versions", "server versions", Status::kBlocker,
          both + ": the target (" + majorName(target.serverVersionNum) +
              ") is older than the source (" + majorName(source.serverVersionNum) +
              "); a dump does not restore into an older major version");
    } else if (tm != sm) {
      add("versions", "server versions", Status::kWarn,
          both + ": a major version upgrade (" + majorName(source.serverVersionNum) + " to " +
              majorName(target.serverVersionNum) + "); read the release notes' incompatibilities");
    } else {
      add("versions", "server versions", Status::kOk, both);
    }
    const Tool& dump = options.pgDump;
    if (dump.path.empty()) {
      add("versions", "pg_dump", Status::kBlocker,
          "not found in PATH nor in /usr/lib/postgresql/15/bin; install the PostgreSQL " +
              majorName(source.serverVersionNum) + " client programs");
    } else if (dump.versionNum == 0) {
      add("versions", "pg_dump", Status::kBlocker,
          dump.path + ": cannot tell its version from --version");
    } else if (majorOf(dump.versionNum) < sm) {
      add("versions", "pg_dump", Status::kBlocker,
          dump.path + " is " + dump.version + ", older than the source server (" +
              majorName(source.serverVersionNum) +
              "); pg_dump refuses newer servers: install the " +
              majorName(source.serverVersionNum) + " client programs");
    } else {
      add("versions", "pg_dump", Status::kOk, dump.path + " " + dump.version);
    }
    const Tool& restore = options.pgRestore;
    if (restore.path.empty()) {
      add("versions", "pg_restore", Status::kBlocker,
          "not found in PATH nor in /usr/lib/postgresql/15/bin");
    } else if (restore.versionNum == 0) {
      add("versions", "pg_restore", Status::kBlocker,
          restore.path + ": cannot tell its version from --version");
    } else if (dump.versionNum != 0 && majorOf(restore.versionNum) < majorOf(dump.versionNum)) {
      add("versions", "pg_restore", Status::kBlocker,
          restore.path + " is " + restore.version + ", older than pg_dump " + dump.version +
              "; it cannot read that pg_dump's archives");
    } else {
      add("versions", "pg_restore", Status::kOk, restore.path + " " + restore.version);
    }
  }

  // 2. Encodings and collations.
  {
    if (source.encoding != target.encoding) {
      add("encoding", "encoding", Status::kBlocker,
          "source " + source.encoding + ", target " + target.encoding +
              ": text would be converted, or refused where the target's encoding cannot hold it");
    } else {
      add("encoding", "encoding", Status::kOk, source.encoding + " on both");
    }
    auto locale = [](const Facts& f) {
      std::string s = "collate " + f.collate + ", ctype " + f.ctype;
      if (f.localeProvider == "i") {
        s += ", ICU " + f.iculocale;
      } else if (!f.localeProvider.empty() && f.localeProvider != "c") {
        s += ", provider " + f.localeProvider + (f.iculocale.empty() ? "" : " " + f.iculocale);
      }
      return s;
    };
    const bool differ = source.collate != target.collate || source.ctype != target.ctype ||
                        source.localeProvider != target.localeProvider ||
                        source.iculocale != target.iculocale;
    if (differ) {
      add("encoding", "collation", Status::kWarn,
          "source " + locale(source) + "; target " + locale(target) +
              ": text sorts and compares differently (ORDER BY, unique indexes on text, "
              "range partitions), indexes are built in the target's order");
    } else {
      add("encoding", "collation", Status::kOk, locale(source) + " on both");
    }
  }

  // 3. Sizes, as \l+ shows them.
  add("size", "database size", Status::kOk,
      "source " + source.database + " " + source.sizePretty + ", target " + target.database + " " +
          target.sizePretty);

  // 4. Extensions used on the source. pg_dump emits CREATE EXTENSION IF NOT
  // EXISTS without a version: the target's default version gets installed.
  for (const auto& [name, version] : source.extensions) {
    const std::string item = "extension " + name;
    if (auto it = target.extensions.find(name); it != target.extensions.end()) {
      if (it->second == version) {
        add("extensions", item, Status::kOk, version + " on both");
      } else {
        add("extensions", item, Status::kWarn,
            "source " + version + ", target " + it->second +
                " (installed): the functions may differ; ALTER EXTENSION ... UPDATE on the one "
                "behind");
      }
      continue;
    }
    auto av = target.availableExtensions.find(name);
    if (av == target.availableExtensions.end()) {
      add("extensions", item, Status::kBlocker,
          "source " + version +
              "; not available on the target server (not in its extension directory): install "
              "its package there");
      continue;
    }
    if (av->second.superuser && !av->second.trusted && !target.superuser) {
      add("extensions", item, Status::kBlocker,
          "not installed on the target, and creating it needs a superuser; the target user " +
              target.user + " is not one: have a superuser CREATE EXTENSION " + name +
              " on the target first");
      continue;
    }
    if (av->second.defaultVersion == version) {
      add("extensions", item, Status::kOk,
          "not installed on the target; the restore creates it (" + version + ")");
    } else {
      add("extensions", item, Status::kWarn,
          "not installed on the target; the restore creates it at version " +
              av->second.defaultVersion + " (source has " + version + ")");
    }
  }

  // 5. Settings that differ.
  {
    std::set<std::string> names;
    for (const auto& [n, s] : source.settings) names.insert(n);
    for (const auto& [n, s] : target.settings) names.insert(n);
    std::size_t compared = 0;
    std::size_t differing = 0;
    for (const auto& name : names) {
      const auto si = source.settings.find(name);
      const auto ti = target.settings.find(name);
      const Setting* s = si == source.settings.end() ? nullptr : &si->second;
      const Setting* t = ti == target.settings.end() ? nullptr : &ti->second;
      if (!settingIsCompared(name, s, t)) continue;
      ++compared;
      if (s != nullptr && t != nullptr) {
        if (s->value == t->value) continue;
        ++differing;
        add("settings", "setting " + name, Status::kWarn,
            "source '" + s->display + "' (" + s->source + "), target '" + t->display + "' (" +
                t->source + ")");
      } else {
        // Only one version has it: worth a line only when someone set it.
        const Setting* one = s != nullptr ? s : t;
        if (isDefault(one)) continue;
        ++differing;
        add("settings", "setting " + name, Status::kWarn,
            std::string(s != nullptr ? "source" : "target") + " '" + one->display + "' (" +
                one->source + "); the " + (s != nullptr ? "target" : "source") +
                " server has no such setting");
      }
    }
    if (differing == 0) {
      add("settings", "settings", Status::kOk,
          "no differences among " +
              plural(static_cast<long long>(compared), "setting", "settings") +
              " compared (non-default ones and those that change results)");
    }
  }

  // 6-8. Tables.
  if (source.tablesWithoutPrimaryKey.empty()) {
    add("tables", "tables without a primary key", Status::kOk, "none");
  } else {
    add("tables", "tables without a primary key", Status::kWarn,
        joinList(source.tablesWithoutPrimaryKey) +
            ": verify compares them by whole-row hashes; their UPDATEs and DELETEs are still "
            "mirrored");
  }
  if (source.largeObjects > 0) {
    add("tables", "large objects", Status::kWarn,
        plural(source.largeObjects, "large object", "large objects") +
            " on the source: the dump carries them, but writes to large objects through the "
            "proxy are refused");
  } else {
    add("tables", "large objects", Status::kOk, "none");
  }
  if (source.unloggedTables.empty()) {
    add("tables", "unlogged tables", Status::kOk, "none");
  } else {
    add("tables", "unlogged tables", Status::kWarn,
        joinList(source.unloggedTables) +
            ": not crash-safe on either side (a server crash empties them)");
  }

  // 9. Roles the dump references. seed restores with --no-owner --no-acl:
  // objects belong to the target user and grants are not copied.
  {
    std::vector<std::string> missing;
    for (const auto& role : source.referencedRoles) {
      if (!target.roles.contains(role)) missing.push_back(role);
    }
    if (missing.empty()) {
      add("roles", "roles", Status::kOk,
          plural(static_cast<long long>(source.referencedRoles.size()), "role owns or is granted",
                 "roles own or are granted") +
              " the source's objects; all exist on the target");
    } else {
      add("roles", "roles", Status::kWarn,
          "missing on the target: " + joinList(missing) +
              " (they own or are granted the source's objects; seed restores without owners "
              "and grants, so create them and re-grant before the applications log in there)");
    }
  }

  // 10. Connection headroom on the target during the seed and the mirror.
  {
    const long long free = static_cast<long long>(target.maxConnections) -
                           target.superuserReservedConnections - target.reservedConnections -
                           target.clientBackends;
    const long long needed =
        static_cast<long long>(source.clientBackendsOnDatabase) + options.jobs + kProxySessions;
    std::string detail = "target max_connections " + std::to_string(target.maxConnections) + " - " +
                         std::to_string(target.superuserReservedConnections) +
                         " superuser reserved";
    if (target.reservedConnections > 0) {
      detail += " - " + std::to_string(target.reservedConnections) + " reserved";
    }
    detail += " - " + std::to_string(target.clientBackends) + " in use = " + std::to_string(free) +
              " free; needed " + std::to_string(needed) + " = " +
              std::to_string(source.clientBackendsOnDatabase) + " source clients + " +
              std::to_string(options.jobs) + " seed jobs + " + std::to_string(kProxySessions) +
              " proxy sessions";
    add("connections", "connection headroom", free >= needed ? Status::kOk : Status::kBlocker,
        detail);
  }

  // 11. Prepared transactions (mirror.two_phase_commit needs both servers).
  {
    const std::string numbers = "max_prepared_transactions source " +
                                std::to_string(source.maxPreparedTransactions) + ", target " +
                                std::to_string(target.maxPreparedTransactions);
    const bool possible = source.maxPreparedTransactions > 0 && target.maxPreparedTransactions > 0;
    if (options.twoPhaseCommit && !possible) {
      add("connections", "prepared transactions", Status::kBlocker,
          numbers +
              ": mirror.two_phase_commit is on but needs both > 0 (a server restart sets it)");
    } else {
      add("connections", "prepared transactions", Status::kOk,
          numbers +
              (possible ? ": two-phase commit possible"
                        : ": two-phase commit not possible (both must be > 0)") +
              (options.twoPhaseCommit ? ", configured" : ""));
    }
  }

  // 12. The seed needs an empty target.
  if (target.userObjectCount > 0) {
    add("target", "target is empty", Status::kBlocker,
        "the target database " + target.database + " holds " +
            plural(target.userObjectCount, "object", "objects") + " (" +
            joinList(target.userObjects, target.userObjectCount) +
            "): pghandoff seed refuses a target that already holds data");
  } else {
    add("target", "target is empty", Status::kOk, "no user objects in " + target.database);
  }

  // 13. Privileges: pg_dump reads every table and sequence; pg_restore
  // creates everything as the target user.
  if (source.unreadableCount > 0) {
    add("privileges", "source read privilege", Status::kBlocker,
        "the source user " + source.user + " cannot read " +
            plural(source.unreadableCount, "table or sequence", "tables or sequences") + " (" +
            joinList(source.unreadable, source.unreadableCount) +
            "): pg_dump needs SELECT on each (and USAGE on its schema, and to bypass row-level "
            "security)");
  } else {
    add("privileges", "source read privilege", Status::kOk,
        source.user + " can read every table and sequence");
  }
  if (!target.canCreateInDatabase) {
    add("privileges", "target create privilege", Status::kBlocker,
        "the target user " + target.user + " lacks CREATE on database " + target.database +
            " (GRANT CREATE ON DATABASE " + target.database + " TO " + target.user + ")");
  } else if (source.usesPublicSchema && !target.canCreateInPublic) {
    add("privileges", "target create privilege", Status::kBlocker,
        "the target user " + target.user +
            " cannot create in schema public, which holds source objects (GRANT CREATE ON "
            "SCHEMA public TO " +
            target.user + ")");
  } else {
    add("privileges", "target create privilege", Status::kOk,
        target.user + " can create in " + target.database);
  }
  return r;
}

std::string renderText(const Report& report) {
  std::string out = "pghandoff check\n";
  auto side = [&out](const char* label, const SideSummary& s) {
    out += std::string("  ") + label + ": " + s.server + ", PostgreSQL " + s.version + ", " +
           s.database + " " + s.size + "\n";
  };
  side("source", report.source);
  side("target", report.target);
  std::vector<std::string> sections;
  for (const auto& i : report.items) {
    if (std::find(sections.begin(), sections.end(), i.section) == sections.end()) {
      sections.push_back(i.section);
    }
  }
  for (const auto& section : sections) {
    out += "\n" + section + "\n";
    for (const auto& i : report.items) {
      if (i.section != section) continue;
      std::string status = toString(i.status);
      std::transform(status.begin(), status.end(), status.begin(),
                     [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
      status.resize(std::max<std::size_t>(status.size(), 8), ' ');
      out += "  " + status + i.name + ": " + i.detail + "\n";
    }
  }
  const auto blockers = static_cast<long long>(report.count(Status::kBlocker));
  const auto warnings = static_cast<long long>(report.count(Status::kWarn));
  out += "\n";
  out += blockers == 0 ? std::string("go") : plural(blockers, "blocker", "blockers");
  if (warnings > 0) out += " (" + plural(warnings, "warning", "warnings") + ")";
  out += "\n";
  return out;
}

std::string renderJson(const Report& report) {
  auto str = [](const std::string& s) { return "\"" + proxy::jsonEscape(s) + "\""; };
  auto array = [&str](const std::vector<std::string>& v) {
    std::string out = "[";
    for (std::size_t i = 0; i < v.size(); ++i) out += (i > 0 ? "," : "") + str(v[i]);
    return out + "]";
  };
  auto side = [&str](const SideSummary& s) {
    return "{\"server\":" + str(s.server) + ",\"version\":" + str(s.version) +
           ",\"database\":" + str(s.database) + ",\"size\":" + str(s.size) + "}";
  };
  std::string out = "{\"go\":";
  out += report.go() ? "true" : "false";
  out += ",\"blockers\":" + array(report.lines(Status::kBlocker));
  out += ",\"warnings\":" + array(report.lines(Status::kWarn));
  out += ",\"checks\":[";
  for (std::size_t i = 0; i < report.items.size(); ++i) {
    const Item& it = report.items[i];
    out += (i > 0 ? "," : "");
    out += "{\"section\":" + str(it.section) + ",\"name\":" + str(it.name) +
           ",\"status\":" + str(toString(it.status)) + ",\"detail\":" + str(it.detail) + "}";
  }
  out += "],\"source\":" + side(report.source) + ",\"target\":" + side(report.target) + "}\n";
  return out;
}

// ---------------------------------------------------------------------------
// Gathering facts (libpq, blocking).

namespace {

// Schemas that hold the database's own objects (not the catalogs, not TOAST,
// not other sessions' temporary schemas, not the proxy's own pghandoff).
// `n` is pg_namespace.
constexpr const char* kUserSchema =
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pghandoff') AND "
    "n.nspname !~ '^pg_(toast|temp_)'";

// Objects that belong to an extension are not dumped one by one (CREATE
// EXTENSION brings them). `catalog` and `oid` name the object.
std::string notExtensionMember(const std::string& catalog, const std::string& oid) {
  return "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '" + catalog +
         "'::regclass AND d.objid = " + oid + " AND d.deptype = 'e')";
}

std::vector<std::string> column(const PgResult& r, int col = 0) {
  std::vector<std::string> out;
  out.reserve(static_cast<std::size_t>(r.rows()));
  for (int i = 0; i < r.rows(); ++i) out.push_back(r.get(i, col));
  return out;
}

int toInt(const std::string& s) {
  return static_cast<int>(std::stol(s));
}

}  // namespace

Facts gatherFacts(PgConn& conn, const std::string& side, const std::string& server) {
  Facts f;
  f.side = side;
  f.server = server;
  const int version = conn.serverVersion();

  // Names and values reach the report (and its JSON) as UTF-8 whatever the
  // database's encoding. client_encoding is one of the settings never compared.
  conn.exec("SET client_encoding = 'UTF8'");
  // Settings first, before anything else of ours could change a session value.
  {
    auto r = conn.exec(
        "SELECT name, coalesce(setting, ''), source, context, "
        "coalesce(current_setting(name, true), '') FROM pg_settings");
    for (int i = 0; i < r.rows(); ++i) {
      f.settings[r.get(i, 0)] = Setting{r.get(i, 1), r.get(i, 4), r.get(i, 2), r.get(i, 3)};
    }
  }
  {
    auto r = conn.exec(
        "SELECT current_user, coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = "
        "current_user), false), current_setting('server_version'), "
        "current_setting('server_version_num'), current_database(), "
        "pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, "
        "pg_size_pretty(pg_database_size(d.oid)), pg_database_size(d.oid), "
        "has_database_privilege(d.oid, 'CREATE'), "
        "coalesce((SELECT has_schema_privilege(oid, 'CREATE') FROM pg_namespace "
        "WHERE nspname = 'public'), false) "
        "FROM pg_database d WHERE d.datname = current_database()");
    if (r.rows() != 1) throw PgError(side + " server: its database is missing from pg_database");
    f.user = r.get(0, 0);
    f.superuser = r.getBool(0, 1);
    f.serverVersion = r.get(0, 2);
    f.serverVersionNum = toInt(r.get(0, 3));
    f.database = r.get(0, 4);
    f.encoding = r.get(0, 5);
    f.collate = r.get(0, 6);
    f.ctype = r.get(0, 7);
    f.sizePretty = r.get(0, 8);
    f.sizeBytes = r.getInt(0, 9);
    f.canCreateInDatabase = r.getBool(0, 10);
    f.canCreateInPublic = r.getBool(0, 11);
  }
  if (version >= 150000) {
    // 17 renamed daticulocale to datlocale (it also holds the builtin provider's locale).
    auto r = conn.exec(std::string("SELECT datlocprovider, coalesce(") +
                       (version >= 170000 ? "datlocale" : "daticulocale") +
                       ", '') FROM pg_database WHERE datname = current_database()");
    if (r.rows() == 1) {
      f.localeProvider = r.get(0, 0);
      f.iculocale = r.get(0, 1);
    }
  }
  {
    auto r = conn.exec("SELECT extname, extversion FROM pg_extension");
    for (int i = 0; i < r.rows(); ++i) f.extensions[r.get(i, 0)] = r.get(i, 1);
  }
  {
    // trusted extensions (13+) can be created by a database owner or a user
    // with CREATE on it.
    auto r = conn.exec(
        std::string(
            "SELECT e.name, coalesce(e.default_version, ''), coalesce(v.superuser, true), ") +
        (version >= 130000 ? "coalesce(v.trusted, false)" : "false") +
        " FROM pg_available_extensions e LEFT JOIN pg_available_extension_versions v "
        "ON v.name = e.name AND v.version = e.default_version");
    for (int i = 0; i < r.rows(); ++i) {
      f.availableExtensions[r.get(i, 0)] =
          AvailableExtension{r.get(i, 1), r.getBool(i, 2), r.getBool(i, 3)};
    }
  }
  f.tablesWithoutPrimaryKey =
      column(conn.exec(std::string("SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
                                   "JOIN pg_namespace n ON n.oid = c.relnamespace "
                                   "WHERE c.relkind IN ('r', 'p') AND ") +
                       kUserSchema + " AND " + notExtensionMember("pg_class", "c.oid") +
                       " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid "
                       "AND k.contype = 'p') ORDER BY 1"));
  f.largeObjects = std::stoll(conn.value("SELECT count(*) FROM pg_largeobject_metadata"));
  f.unloggedTables = column(
      conn.exec(std::string("SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
                            "JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'u' AND ") +
                kUserSchema + " ORDER BY 1"));
  {
    // Owners of the objects pg_dump writes out, and the roles their ACLs and
    // the default privileges name (grantee 0 is PUBLIC, no role).
    const std::string ns = std::string("SELECT oid FROM pg_namespace n WHERE ") + kUserSchema;
    auto r = conn.exec(
        "WITH objs(owner, acl) AS ("
        " SELECT n.nspowner, n.nspacl FROM pg_namespace n WHERE " +
        std::string(kUserSchema) + " AND " + notExtensionMember("pg_namespace", "n.oid") +
        " UNION ALL SELECT c.relowner, c.relacl FROM pg_class c WHERE c.relnamespace IN (" + ns +
        ") AND " + notExtensionMember("pg_class", "c.oid") +
        " UNION ALL SELECT p.proowner, p.proacl FROM pg_proc p WHERE p.pronamespace IN (" + ns +
        ") AND " + notExtensionMember("pg_proc", "p.oid") +
        " UNION ALL SELECT t.typowner, t.typacl FROM pg_type t WHERE t.typnamespace IN (" + ns +
        ") AND " + notExtensionMember("pg_type", "t.oid") +
        " UNION ALL SELECT defaclrole, defaclacl FROM pg_default_acl),"
        " ids(oid) AS (SELECT owner FROM objs"
        " UNION SELECT (aclexplode(acl)).grantee FROM objs WHERE acl IS NOT NULL)"
        " SELECT r.rolname FROM ids JOIN pg_roles r ON r.oid = ids.oid ORDER BY 1");
    for (const auto& name : column(r)) f.referencedRoles.insert(name);
  }
  for (const auto& name : column(conn.exec("SELECT rolname FROM pg_roles"))) f.roles.insert(name);
  {
    // Sessions that take a max_connections slot: client backends, ours
    // excluded (it ends with the check). Without pg_read_all_stats other
    // users' rows show no backend_type; a row with a user and a database is
    // then counted as a client.
    const std::string client =
        "(backend_type = 'client backend' OR (backend_type IS NULL AND usesysid IS NOT NULL "
        "AND datid IS NOT NULL)) AND pid <> pg_backend_pid()";
    auto r = conn.exec(
        "SELECT current_setting('max_connections'), "
        "current_setting('superuser_reserved_connections'), "
        "coalesce(current_setting('reserved_connections', true), '0'), "
        "(SELECT count(*) FROM pg_stat_activity WHERE " +
        client +
        "), "
        "(SELECT count(*) FROM pg_stat_activity WHERE " +
        client +
        " AND datname = current_database()), "
        "current_setting('max_prepared_transactions')");
    f.maxConnections = toInt(r.get(0, 0));
    f.superuserReservedConnections = toInt(r.get(0, 1));
    f.reservedConnections = toInt(r.get(0, 2));
    f.clientBackends = toInt(r.get(0, 3));
    f.clientBackendsOnDatabase = toInt(r.get(0, 4));
    f.maxPreparedTransactions = toInt(r.get(0, 5));
  }
  {
    // What a restore would collide with: relations, functions, types and
    // schemas of the database's own (public itself exists everywhere), and
    // large objects. Array types and relations' row types come with their
    // owner and are not counted twice.
    auto r = conn.exec(
        "WITH objs(what) AS ("
        " SELECT 'schema ' || quote_ident(n.nspname) FROM pg_namespace n WHERE " +
        std::string(kUserSchema) + " AND n.nspname <> 'public' AND " +
        notExtensionMember("pg_namespace", "n.oid") +
        " UNION ALL SELECT CASE c.relkind WHEN 'r' THEN 'table ' WHEN 'p' THEN 'table ' "
        "WHEN 'v' THEN 'view ' WHEN 'm' THEN 'materialized view ' WHEN 'S' THEN 'sequence ' "
        "WHEN 'f' THEN 'foreign table ' ELSE 'type ' END || format('%I.%I', n.nspname, c.relname) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c') AND " +
        kUserSchema + " AND " + notExtensionMember("pg_class", "c.oid") +
        " UNION ALL SELECT 'function ' || format('%I.%I', n.nspname, p.proname) FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE " +
        kUserSchema + " AND " + notExtensionMember("pg_proc", "p.oid") +
        " UNION ALL SELECT 'type ' || format('%I.%I', n.nspname, t.typname) FROM pg_type t "
        "JOIN pg_namespace n ON n.oid = t.typnamespace WHERE " +
        kUserSchema +
        " AND t.typrelid = 0 AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid) "
        "AND " +
        notExtensionMember("pg_type", "t.oid") +
        " UNION ALL SELECT 'large objects (' || count(*) || ')' FROM pg_largeobject_metadata "
        "HAVING count(*) > 0)"
        " SELECT count(*) OVER (), what FROM objs ORDER BY what LIMIT 10");
    f.userObjectCount = r.rows() == 0 ? 0 : r.getInt(0, 0);
    f.userObjects = column(r, 1);
  }
  f.usesPublicSchema = conn.value(
                           "SELECT EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = "
                           "(SELECT oid FROM pg_namespace WHERE nspname = 'public') AND " +
                           notExtensionMember("pg_class", "c.oid") +
                           ") OR EXISTS (SELECT 1 FROM pg_proc p WHERE p.pronamespace = "
                           "(SELECT oid FROM pg_namespace WHERE nspname = 'public') AND " +
                           notExtensionMember("pg_proc", "p.oid") + ")") == "t";
  {
    // What pg_dump reads: each table's rows and each sequence's state, which
    // needs USAGE on the schema and SELECT; with row-level security on a
    // table it does not own, pg_dump stops unless the user bypasses RLS.
    auto r =
        conn.exec(std::string("SELECT count(*) OVER (), format('%I.%I', n.nspname, c.relname) "
                              "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                              "CROSS JOIN (SELECT rolsuper OR rolbypassrls AS bypass FROM pg_roles "
                              "WHERE rolname = current_user) me "
                              "WHERE c.relkind IN ('r', 'S') AND ") +
                  kUserSchema + " AND " + notExtensionMember("pg_class", "c.oid") +
                  " AND (NOT has_schema_privilege(n.oid, 'USAGE') "
                  "OR NOT has_table_privilege(c.oid, 'SELECT') "
                  "OR (c.relrowsecurity AND NOT me.bypass "
                  "AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE')))) "
                  "ORDER BY 2 LIMIT 10");
    f.unreadableCount = r.rows() == 0 ? 0 : r.getInt(0, 0);
    f.unreadable = column(r, 1);
  }
  return f;
}

namespace {

// `path --version`, stdout only; "" when it cannot run.
std::string toolVersionOutput(const std::string& path) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return {};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  std::string arg0 = path;
  std::string arg1 = "--version";
  char* argv[] = {arg0.data(), arg1.data(), nullptr};
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, path.c_str(), &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  std::string out;
  if (rc == 0) {
    char buf[512];
    ssize_t n = 0;
    // --version prints one line; cap what we keep in case it is something else.
    while ((n = read(fds[0], buf, sizeof buf)) > 0 && out.size() < 4096) {
      out.append(buf, static_cast<std::size_t>(n));
    }
  }
  close(fds[0]);
  if (rc != 0) return {};
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return {};
  return out;
}

bool executable(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(path.c_str(), X_OK) == 0;
}

}  // namespace

Tool findTool(const std::string& name) {
  Tool t;
  t.name = name;
  std::vector<std::string> dirs;
  if (const char* path = std::getenv("PATH"); path != nullptr) {
    std::string p = path;
    std::size_t start = 0;
    while (start <= p.size()) {
      const std::size_t end = std::min(p.find(':', start), p.size());
      // An empty PATH entry means the current directory; we do not run
      // programs from there.
      if (end > start) dirs.push_back(p.substr(start, end - start));
      start = end + 1;
    }
  }
  dirs.emplace_back("/usr/lib/postgresql/15/bin");
  for (const auto& dir : dirs) {
    std::string candidate = dir;
    candidate += '/';
    candidate += name;
    if (!executable(candidate)) continue;
    t.path = candidate;
    if (auto v = versionFromToolOutput(toolVersionOutput(candidate))) {
      t.version = *v;
      t.versionNum = parseVersionNumber(*v).value_or(0);
    }
    break;
  }
  return t;
}

}  // namespace check

namespace {

// "host:port/dbname" for messages; never the password.
std::string serverName(const std::string& url) {
  auto parsed = config::parseConnInfo(url);
  if (!parsed.info) return "<unparseable connection string>";
  const auto& i = *parsed.info;
  const std::string host = i.host.find(':') != std::string::npos ? "[" + i.host + "]" : i.host;
  return host + ":" + std::to_string(i.port) + "/" + (i.dbname.empty() ? i.user : i.dbname);
}

}  // namespace

int runCheck(const Args& args) {
  const bool json = hasFlag(args, "--json");
  check::Options options;
  if (const std::string jobs = optionValue(args, "--jobs"); !jobs.empty()) {
    char* end = nullptr;
    const long n = std::strtol(jobs.c_str(), &end, 10);
    if (end == jobs.c_str() || *end != '\0' || n < 1 || n > 1000) {
      std::fprintf(stderr, "pghandoff check: --jobs must be a number from 1 to 1000\n");
      return 2;
    }
    options.jobs = static_cast<int>(n);
  }
  auto cfg = loadConfigFor(args, "check");
  if (!cfg) return 2;
  options.twoPhaseCommit = cfg->mirror.twoPhaseCommit;
  if (cfg->targetUrl.empty()) {
    std::fprintf(stderr,
                 "pghandoff check: the config has no target.url: check compares the source "
                 "with the target server\n");
    return 2;
  }
  // libpq waits forever for an unanswered connect unless told otherwise; a
  // preflight should say "unreachable" instead. The URL's connect_timeout or
  // the user's own PGCONNECT_TIMEOUT still win.
  setenv("PGCONNECT_TIMEOUT", "10", 0);

  struct Side {
    const char* name;
    const std::string& url;
    PgConn conn;
    check::Facts facts;
  };
  Side sides[] = {{"source", cfg->sourceUrl, {}, {}}, {"target", cfg->targetUrl, {}, {}}};
  bool failed = false;
  for (auto& s : sides) {
    try {
      s.conn = PgConn::open(s.url, s.name, "pghandoff check");
    } catch (const std::exception& e) {
      // PgError never holds the connection string; serverName drops the password.
      std::fprintf(stderr, "pghandoff check: %s (%s): %s\n", s.name, serverName(s.url).c_str(),
                   e.what());
      failed = true;
    }
  }
  if (failed) return 2;
  for (auto& s : sides) {
    try {
      s.facts = check::gatherFacts(s.conn, s.name, serverName(s.url));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "pghandoff check: reading the %s server (%s): %s\n", s.name,
                   serverName(s.url).c_str(), e.what());
      return 2;
    }
  }
  options.pgDump = check::findTool("pg_dump");
  options.pgRestore = check::findTool("pg_restore");

  const auto report = check::evaluate(sides[0].facts, sides[1].facts, options);
  const std::string out = json ? check::renderJson(report) : check::renderText(report);
  std::fputs(out.c_str(), stdout);
  std::fflush(stdout);
  return report.go() ? 0 : 1;
}

}  // namespace pghandoff::migrate
