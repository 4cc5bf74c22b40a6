// `pghandoff check` (SPEC §3): can this migration work? The command gathers
// facts from both servers with plain libpq queries (gatherFacts), then a PURE
// evaluation turns them into a report (evaluate), rendered as text or JSON.
// Keeping the decisions pure lets the unit tests drive them with hand-built
// facts, e.g. an extension the target cannot install, which two clusters of
// one installation can never show.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace pghandoff::migrate {

class PgConn;

namespace check {

enum class Status { kOk, kWarn, kBlocker };
[[nodiscard]] const char* toString(Status s);  // "ok", "warn", "blocker"

struct Setting {
  std::string value;    // pg_settings.setting (base units, what is compared)
  std::string display;  // current_setting(): with its unit, for people
  std::string source;   // pg_settings.source: "default", "configuration file", "database", ...
  std::string context;  // pg_settings.context: "internal", "postmaster", "user", ...
};

struct AvailableExtension {
  std::string defaultVersion;
  bool superuser = true;  // the default version needs a superuser to create ...
  bool trusted = false;   // ... unless it is trusted (PostgreSQL 13+)
};

// What one server tells us about itself and the configured database.
struct Facts {
  std::string side;    // "source" or "target"
  std::string server;  // "host:port/dbname", never the password
  std::string user;    // current_user
  bool superuser = false;

  std::string serverVersion;  // server_version, e.g. "15.4 (Debian 15.4-1.pgdg120+1)"
  int serverVersionNum = 0;   // server_version_num, e.g. 150004

  std::string database;        // current_database()
  std::string encoding;        // pg_encoding_to_char(pg_database.encoding)
  std::string collate;         // datcollate
  std::string ctype;           // datctype
  std::string localeProvider;  // datlocprovider ("c", "i"; "" before 15)
  std::string iculocale;       // daticulocale / datlocale ("" when none)
  std::string sizePretty;      // pg_size_pretty(pg_database_size()), as \l+ shows
  long long sizeBytes = 0;

  std::map<std::string, std::string> extensions;                  // pg_extension: name -> version
  std::map<std::string, AvailableExtension> availableExtensions;  // pg_available_extensions
  std::map<std::string, Setting> settings;                        // pg_settings by name

  std::vector<std::string> tablesWithoutPrimaryKey;  // "schema"."table", user schemas
  long long largeObjects = 0;                        // pg_largeobject_metadata rows
  std::vector<std::string> unloggedTables;
  std::set<std::string> referencedRoles;  // owners and grantees of user objects
  std::set<std::string> roles;            // every role of the server

  int maxConnections = 0;
  int superuserReservedConnections = 0;
  int reservedConnections = 0;       // reserved_connections (PostgreSQL 16+), else 0
  int clientBackends = 0;            // client backends on the whole server, ours excluded
  int clientBackendsOnDatabase = 0;  // the same on the configured database
  int maxPreparedTransactions = 0;

  long long userObjectCount = 0;         // relations, functions, types, schemas, large objects
  std::vector<std::string> userObjects;  // the first few of them, for the message
  bool usesPublicSchema = false;         // user objects live in schema public

  std::vector<std::string> unreadable;  // tables/sequences the user cannot read (first few)
  long long unreadableCount = 0;
  bool canCreateInDatabase = false;  // has_database_privilege(CREATE)
  bool canCreateInPublic = false;    // has_schema_privilege('public', CREATE); false if none
};

// A local client program (pg_dump, pg_restore) as found on this machine.
struct Tool {
  std::string name;
  std::string path;     // "" when not found
  std::string version;  // "15.4" as --version prints it
  int versionNum = 0;   // 150004; 0 when not found or unparseable
};

struct Options {
  int jobs = 4;                 // seed --jobs: one target session each
  bool twoPhaseCommit = false;  // mirror.two_phase_commit
  Tool pgDump{"pg_dump", "", "", 0};
  Tool pgRestore{"pg_restore", "", "", 0};
};

struct Item {
  std::string section;  // "versions", "extensions", ...: groups lines in the text report
  std::string name;     // "server versions", "extension pg_trgm", "setting DateStyle", ...
  Status status = Status::kOk;
  std::string detail;
};

struct SideSummary {
  std::string server;
  std::string version;
  std::string database;
  std::string size;
};

struct Report {
  std::vector<Item> items;
  SideSummary source;
  SideSummary target;

  [[nodiscard]] bool go() const;
  [[nodiscard]] std::size_t count(Status s) const;
  // "name: detail" of each item with that status, in order.
  [[nodiscard]] std::vector<std::string> lines(Status s) const;
  // The first item with that name, nullptr when none.
  [[nodiscard]] const Item* find(const std::string& name) const;
};

// The seed's own sessions on the target besides its --jobs: the proxy's
// server connections for the mirror, the sequence sync, the journal replay.
inline constexpr int kProxySessions = 4;

[[nodiscard]] Report evaluate(const Facts& source, const Facts& target, const Options& options);

// The text report: one section per topic, one line per item, a final
// "go" / "N blockers" line.
[[nodiscard]] std::string renderText(const Report& report);
// One JSON object: go, blockers, warnings, checks, source, target.
[[nodiscard]] std::string renderJson(const Report& report);

// "15.4", "9.6.24", "16beta1" -> 150004, 90624, 160000; nullopt when not a version.
[[nodiscard]] std::optional<int> parseVersionNumber(const std::string& text);
// The major version of a server_version_num: 150004 -> 15, 90624 -> 906.
[[nodiscard]] int majorOf(int versionNum);
// For people: 150004 -> "15", 90624 -> "9.6".
[[nodiscard]] std::string majorName(int versionNum);
// The version out of "pg_dump (PostgreSQL) 15.4 (Debian 15.4-1.pgdg120+1)".
[[nodiscard]] std::optional<std::string> versionFromToolOutput(const std::string& output);

// Whether a differing setting is worth a warning: not a per-server one (paths,
// ports, logging, memory/WAL sizing...), see the list in check.cpp.
[[nodiscard]] bool settingIsCompared(const std::string& name, const Setting* source,
                                     const Setting* target);

// Runs the queries (throws PgError).
[[nodiscard]] Facts gatherFacts(PgConn& conn, const std::string& side, const std::string& server);
// Looks for `name` in PATH, then /usr/lib/postgresql/15/bin, and runs `name --version`.
[[nodiscard]] Tool findTool(const std::string& name);

}  // namespace check
}  // namespace pghandoff::migrate
