#pragma once

// Runs the real `pghandoff proxy` binary (PGHANDOFF_BINARY) against test
// clusters, with a generated YAML config (SPEC.md §4), and talks to its admin
// API over a minimal blocking HTTP/1.1 client.

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tests/support/process.h"

namespace pghandoff::test {

struct HttpResponse {
  int status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // names lower-cased
};

// One request over a fresh TCP connection (Connection: close); handles
// Content-Length and chunked bodies. Throws std::runtime_error when the
// connection fails or times out.
HttpResponse httpRequest(uint16_t port, const std::string& method, const std::string& path,
                         const std::string& body = {},
                         const std::map<std::string, std::string>& headers = {},
                         std::chrono::milliseconds timeout = 10s,
                         const std::string& host = "127.0.0.1");

// Value of one sample in a Prometheus text exposition: name with optional
// labels, e.g. `pghandoff_queries_total{side="source",kind="read"}`. Label
// order does not matter; the label set must match exactly. NaN if absent.
double findMetric(const std::string& exposition, const std::string& nameWithLabels);

struct ProxyOptions {
  std::string sourceUrl;
  std::string targetUrl;            // omitted from the config when empty
  std::string tlsMode = "disable";  // client_tls.mode: disable|prefer|require
  std::string certFile, keyFile;    // client_tls.cert / key, omitted when empty
  std::string authMethod = "scram-sha-256";
  std::vector<std::pair<std::string, std::string>> users = {{"app", "app-secret"}};
  std::string adminToken = "test-admin-token";
  std::string journalSegment;  // state.journal_segment, omitted when empty
  std::string extraYaml;       // appended verbatim (e.g. "limits: {max_client_connections: 5}")
  std::string logFormat = "text";
  std::string logLevel = "debug";
  std::map<std::string, std::string> env;  // extra environment for the proxy
  std::chrono::milliseconds startDeadline = 15s;
};

class ProxyProcess {
 public:
  // Writes the config, starts the proxy, waits until GET /healthz is 200.
  // Throws std::runtime_error with the log's tail if the proxy exits first or
  // does not become healthy in time.
  explicit ProxyProcess(ProxyOptions options);
  // SIGTERM, SIGKILL after 5 s; removes the temp dir.
  ~ProxyProcess();
  ProxyProcess(const ProxyProcess&) = delete;
  ProxyProcess& operator=(const ProxyProcess&) = delete;

  [[nodiscard]] uint16_t port() const { return port_; }
  [[nodiscard]] uint16_t adminPort() const { return adminPort_; }
  // postgresql://user:password@127.0.0.1:port/db?extra; db nullopt is the
  // source URL's database.
  [[nodiscard]] std::string url(const std::string& user = "app",
                                const std::string& password = "app-secret",
                                const std::optional<std::string>& db = std::nullopt,
                                const std::string& extra = "sslmode=disable") const;
  // Admin API; withToken adds `Authorization: Bearer <adminToken>`.
  HttpResponse http(const std::string& method, const std::string& path,
                    const std::string& body = {}, bool withToken = true);
  // GET /metrics body; throws unless 200.
  std::string metrics();
  // findMetric(metrics(), nameWithLabels).
  double metric(const std::string& nameWithLabels);

  bool signal(int sig);
  // Exit code (128+N for signal N), or Process::kStillRunning on timeout.
  int waitExit(std::chrono::milliseconds timeout);
  [[nodiscard]] bool running();
  [[nodiscard]] pid_t pid() const { return process_.pid(); }
  // Terminates (SIGTERM, then SIGKILL after 5 s); the exit code.
  int stop();
  // stop() then start again with the same config, ports and state dir.
  void restart();

  [[nodiscard]] std::string log() const;  // the whole log file
  // The last `bytes` of the log to stderr (for a failed test's TearDown).
  void printLogTail(std::size_t bytes = 6000) const;
  [[nodiscard]] std::string logFile() const { return dir_.path() + "/proxy.log"; }
  [[nodiscard]] std::string configFile() const { return dir_.path() + "/pghandoff.yaml"; }
  [[nodiscard]] std::string stateDir() const { return dir_.path() + "/state"; }
  [[nodiscard]] std::string configYaml() const;
  [[nodiscard]] const ProxyOptions& options() const { return options_; }

 private:
  void writeConfig() const;
  // Starts and waits for health; false (with the reason) if the process died
  // because a port was taken, throws for any other failure.
  bool startOnce(std::string& failure);

  ProxyOptions options_;
  TempDir dir_;
  Process process_;
  uint16_t port_ = 0;
  uint16_t adminPort_ = 0;
};

// A YAML double-quoted scalar for a config file; '$' doubled (the config
// expands ${VAR} and reads $$ as a literal $).
std::string yamlQuote(const std::string& s);

// Database name of a libpq URL or key=value conninfo ("postgres" if none).
std::string databaseOf(const std::string& urlOrConninfo);

}  // namespace pghandoff::test
