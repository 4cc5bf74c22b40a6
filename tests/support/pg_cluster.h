#pragma once

// A throwaway PostgreSQL 15 cluster per object: initdb into a mkdtemp dir
// under /tmp, a free port on 127.0.0.1, its own unix socket dir, fast and
// unsafe settings (fsync=off), stopped and deleted by the destructor. As root
// the server binaries run as the `postgres` OS user (initdb refuses root).

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace pghandoff::test {

struct ClusterOptions {
  bool ssl = false;
  std::string certDir;  // with server.crt, server.key, ca.crt (see certs.h); needed when ssl
  // pg_hba method for host connections: trust|md5|scram-sha-256|password
  std::string hbaMethod = "scram-sha-256";
  bool hostsslOnly = false;            // hostssl lines only, plain TCP rejected
  std::vector<std::string> extraConf;  // lines appended to postgresql.conf
  int maxPreparedTransactions = 0;
};

class PgCluster {
 public:
  // initdb + start. Throws std::runtime_error (with the server log's tail) on failure.
  explicit PgCluster(ClusterOptions options = {});
  // pg_ctl stop -m immediate (SIGKILL of the group as a fallback), rm -rf.
  ~PgCluster();
  PgCluster(const PgCluster&) = delete;
  PgCluster& operator=(const PgCluster&) = delete;

  [[nodiscard]] uint16_t port() const { return port_; }
  [[nodiscard]] std::string host() const { return "127.0.0.1"; }
  [[nodiscard]] std::string superuser() const { return "postgres"; }
  [[nodiscard]] std::string superPassword() const { return superPassword_; }
  // postgresql://user:password@127.0.0.1:port/db?extra; password nullopt is
  // the superuser's, "" means none. extra is "k=v" pairs separated by spaces
  // or '&' (values are percent-encoded).
  [[nodiscard]] std::string url(const std::string& db = "postgres",
                                const std::string& user = "postgres",
                                const std::optional<std::string>& password = std::nullopt,
                                const std::string& extra = "sslmode=disable") const;
  // url() as the superuser, but through another local port (a fault proxy in
  // front of this server).
  [[nodiscard]] std::string urlVia(std::uint16_t port) const;
  // pgbench -i -q -s `scale` straight to this server; throws on failure.
  void pgbenchInit(int scale = 1) const;
  // The same as a key=value conninfo string.
  [[nodiscard]] std::string conninfo(const std::string& db = "postgres",
                                     const std::string& user = "postgres",
                                     const std::optional<std::string>& password = std::nullopt,
                                     const std::string& extra = "sslmode=disable") const;
  [[nodiscard]] std::string dataDir() const { return dir_ + "/data"; }
  [[nodiscard]] std::string dir() const { return dir_; }  // also the unix socket dir
  [[nodiscard]] std::string logFile() const { return dir_ + "/server.log"; }
  [[nodiscard]] std::string log() const;  // whole server log
  [[nodiscard]] bool running() const { return running_; }
  // Postmaster pid from postmaster.pid, 0 if absent.
  [[nodiscard]] int postmasterPid() const;

  // pg_ctl start -w on the same port (after stop() or kill9(): crash recovery).
  void start();
  // pg_ctl stop -m fast -w.
  void stop();
  void restart();
  // SIGKILL to the postmaster and all its children (backends, checkpointer,
  // ...) as when the host dies; returns once they are all gone. Clients see
  // their connections drop at once. start() then runs crash recovery.
  void kill9();

  // psql -X -A -t -q -v ON_ERROR_STOP=1 as the superuser over TCP; trimmed
  // stdout. Throws std::runtime_error with psql's stderr on failure.
  std::string psql(const std::string& sql, const std::string& db = "postgres");
  void createRole(const std::string& name, const std::string& password, bool login = true);
  void createDatabase(const std::string& name, const std::string& owner);

 private:
  void initdb();
  void setSuperPassword();
  void writeConfig();
  bool tryStart(std::string& failure);
  void stopImmediate() noexcept;
  std::string pgBin(const std::string& tool) const;

  ClusterOptions options_;
  std::string dir_;
  std::string superPassword_;
  uint16_t port_ = 0;
  bool running_ = false;
};

// SQL quoting for test statements.
std::string quoteIdent(const std::string& ident);
std::string quoteLiteral(const std::string& value);
// Percent-encoding for URL components.
std::string urlEncode(const std::string& s);

// Directory of the PostgreSQL server binaries (PGHANDOFF_PG_BIN or
// /usr/lib/postgresql/15/bin).
std::string pgBinDir();

}  // namespace pghandoff::test
