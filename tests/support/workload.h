// Real clients writing through the proxy while a test changes things under
// them: pgbench (-M prepared, 8 clients, 400 transactions/s) and the
// psycopg2 ledger client (tests/clients/psycopg2_client.py), which counts
// every write acknowledged to it. Used by the whole-migration tests.
#pragma once

#include <map>
#include <string>
#include <thread>

#include "tests/support/pg_cluster.h"
#include "tests/support/process.h"
#include "tests/support/proxy_process.h"

namespace pghandoff::test {

// The libpq environment (PGHOST, PGPORT, ...) and PGHANDOFF_DSN of a client
// of the proxy, as user app.
std::map<std::string, std::string> proxyClientEnv(const ProxyProcess& proxy);

// count and md5 of every row of `table` as text, in order: equal on two
// servers when the table's contents are.
std::string tableDigest(PgCluster& c, const std::string& table);

class ClientWorkload {
 public:
  ClientWorkload() = default;
  ~ClientWorkload();
  ClientWorkload(const ClientWorkload&) = delete;
  ClientWorkload& operator=(const ClientWorkload&) = delete;

  // pgbench for `seconds` + 2, the ledger (table `ledger`, made by the test)
  // for `seconds`. The database needs pgbench's tables.
  void start(const ProxyProcess& proxy, int seconds);
  void join();
  // After join(), gtest expectations: both clients exited 0, pgbench had no
  // failed transaction, the ledger acknowledged more than 20 writes.
  void expectClean() const;
  // After join(): "count sum" of the ledger client's acknowledged rows, and
  // the query that reads them (empty when the client's summary is missing).
  [[nodiscard]] std::string ledgerAcked() const;
  [[nodiscard]] std::string ledgerQuery() const;

  ProcessResult pgbench;
  ProcessResult ledger;

 private:
  std::thread pgbenchThread_, ledgerThread_;
};

}  // namespace pghandoff::test
