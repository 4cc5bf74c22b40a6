#include "tests/support/workload.h"

#include <gtest/gtest.h>

#include <regex>

namespace pghandoff::test {

namespace {
const std::regex& ackedLine() {
  static const std::regex re("ledger (\\w+): acked=(\\d+) keysum=(\\d+)");
  return re;
}
}  // namespace

std::map<std::string, std::string> proxyClientEnv(const ProxyProcess& proxy) {
  std::map<std::string, std::string> env{
      {"PGHOST", "127.0.0.1"},    {"PGPORT", std::to_string(proxy.port())},
      {"PGUSER", "app"},          {"PGPASSWORD", "app-secret"},
      {"PGDATABASE", "postgres"}, {"PGSSLMODE", "disable"}};
  env["PGHANDOFF_DSN"] = "host=127.0.0.1 port=" + env["PGPORT"] +
                         " user=app password=app-secret dbname=postgres sslmode=disable";
  return env;
}

std::string tableDigest(PgCluster& c, const std::string& table) {
  return c.psql(
      "SELECT count(*) || ' ' || coalesce(md5(string_agg(x::text, '|' ORDER BY "
      "x::text)), '-') FROM " +
      table + " x");
}

ClientWorkload::~ClientWorkload() {
  join();
}

void ClientWorkload::start(const ProxyProcess& proxy, int seconds) {
  auto env = proxyClientEnv(proxy);
  env["PGHANDOFF_LEDGER_TABLE"] = "ledger";
  env["PGHANDOFF_LEDGER_SECONDS"] = std::to_string(seconds);
  env["PGHANDOFF_LEDGER_CLIENT"] = "psycopg2";
  const auto limit = std::chrono::seconds(seconds + 80);
  pgbenchThread_ = std::thread([this, env, seconds, limit] {
    pgbench = run({pgBinDir() + "/pgbench", "-M", "prepared", "-n", "-c", "8", "-j", "2", "-T",
                   std::to_string(seconds + 2), "-R", "400"},
                  env, limit);
  });
  ledgerThread_ = std::thread([this, env, limit] {
    ledger = run({"/usr/bin/python3",
                  std::string(PGHANDOFF_SOURCE_DIR) + "/tests/clients/psycopg2_client.py",
                  "--scenario", "ledger", "--timeout", "60"},
                 env, limit);
  });
}

void ClientWorkload::join() {
  if (pgbenchThread_.joinable()) pgbenchThread_.join();
  if (ledgerThread_.joinable()) ledgerThread_.join();
}

void ClientWorkload::expectClean() const {
  EXPECT_EQ(pgbench.exitCode, 0) << pgbench.out << pgbench.err;
  EXPECT_NE(pgbench.out.find("number of failed transactions: 0"), std::string::npos) << pgbench.out;
  EXPECT_EQ(ledger.exitCode, 0) << ledger.out << ledger.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(ledger.out, m, ackedLine())) << ledger.out;
  EXPECT_GT(std::stoi(m[2].str()), 20);
}

std::string ClientWorkload::ledgerAcked() const {
  std::smatch m;
  if (!std::regex_search(ledger.out, m, ackedLine())) return {};
  return m[2].str() + " " + m[3].str();
}

std::string ClientWorkload::ledgerQuery() const {
  std::smatch m;
  if (!std::regex_search(ledger.out, m, ackedLine())) return {};
  return "SELECT count(*) || ' ' || coalesce(sum(k), 0) FROM ledger WHERE client = '" + m[1].str() +
         "'";
}

}  // namespace pghandoff::test
