// pghandoff command line (SPEC §3). main() stays thin: parse, dispatch.
#include <malloc.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "config/config.h"
#include "migrate/cli_support.h"
#include "migrate/commands.h"
#include "proxy/admin.h"
#include "proxy/asio.h"
#include "proxy/logging.h"
#include "proxy/server.h"

namespace {

using pghandoff::migrate::optionValue;

constexpr const char* kUsage = R"(usage:
  pghandoff proxy  --config pghandoff.yaml     run the proxy
  pghandoff check  --config pghandoff.yaml     preflight: can this migration work?
  pghandoff seed   --config pghandoff.yaml [--jobs N] [--dry-run]
  pghandoff verify --config pghandoff.yaml [--tables REGEX] [--json]
  pghandoff phase  get|set PHASE [--admin URL]
  pghandoff status [--admin URL]
  pghandoff demo                               the whole migration on two local throwaway servers
  pghandoff --version

The admin token is read from PGHANDOFF_ADMIN_TOKEN; --admin defaults to
http://127.0.0.1:9187.
)";

int usage(int code) {
  std::fputs(kUsage, code == 0 ? stdout : stderr);
  return code;
}

int runProxy(const std::vector<std::string>& args) {
  std::string path = optionValue(args, "--config");
  if (path.empty()) {
    std::fprintf(stderr, "pghandoff proxy: --config FILE is required\n");
    return 2;
  }
  auto loaded = pghandoff::config::loadConfigFile(path, pghandoff::config::processEnv());
  if (!loaded.config) {
    std::fputs(pghandoff::config::formatErrors(loaded, path).c_str(), stderr);
    return 2;
  }
  // Relay buffers grow for a large message whose body is needed (a 20 MB
  // Query is collected whole to classify it) and shrink after it. A fixed
  // mmap threshold keeps such buffers in their own mappings, so the memory
  // goes back to the system after the spike; glibc's default threshold
  // rises after the first free and would keep it resident for good.
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  try {
    pghandoff::proxy::setupLogging(loaded.config->log.level, loaded.config->log.format);
    pghandoff::proxy::ProxyServer server(std::move(*loaded.config), path);
    return server.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pghandoff proxy: %s\n", e.what());
    return 2;
  }
}

// A minimal HTTP/1.1 client for the admin API (loopback, plain HTTP).
int adminRequest(const std::string& adminUrl, const std::string& method, const std::string& path,
                 const std::string& body) {
  namespace asio = pghandoff::proxy::asio;
  using pghandoff::proxy::tcp;
  std::string url = adminUrl.empty() ? "http://127.0.0.1:9187" : adminUrl;
  if (url.rfind("http://", 0) != 0) {
    std::fprintf(stderr, "--admin must be an http:// URL\n");
    return 2;
  }
  std::string hostport = url.substr(7);
  if (auto slash = hostport.find('/'); slash != std::string::npos) hostport.resize(slash);
  auto colon = hostport.rfind(':');
  std::string host = colon == std::string::npos ? hostport : hostport.substr(0, colon);
  std::string port = colon == std::string::npos ? "80" : hostport.substr(colon + 1);
  const char* token = std::getenv("PGHANDOFF_ADMIN_TOKEN");
  try {
    asio::io_context io;
    tcp::resolver resolver(io);
    tcp::socket sock(io);
    asio::connect(sock, resolver.resolve(host, port));
    std::string req =
        method + " " + path + " HTTP/1.1\r\nHost: " + hostport + "\r\nConnection: close\r\n";
    if (token != nullptr) req += std::string("Authorization: Bearer ") + token + "\r\n";
    if (!body.empty()) {
      req += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
             "\r\n";
    }
    req += "\r\n" + body;
    asio::write(sock, asio::buffer(req));
    std::string resp;
    pghandoff::proxy::error_code ec;
    char buf[4096];
    while (true) {
      std::size_t n = sock.read_some(asio::buffer(buf), ec);
      resp.append(buf, n);
      if (ec) break;
    }
    auto sp = resp.find(' ');
    int status = sp == std::string::npos ? 0 : std::atoi(resp.c_str() + sp + 1);
    auto bodyAt = resp.find("\r\n\r\n");
    std::string out = bodyAt == std::string::npos ? "" : resp.substr(bodyAt + 4);
    std::printf("%s\n", out.c_str());
    if (status >= 200 && status < 300) return 0;
    std::fprintf(stderr, "admin API answered HTTP %d\n", status);
    return status == 409 ? 1 : 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cannot reach the admin API at %s: %s\n", url.c_str(), e.what());
    return 2;
  }
}

// The demo is a script (two throwaway servers, a workload, the whole
// migration): it lives with the sources this binary was built from.
int runDemo() {
  const std::string script = std::string(PGHANDOFF_SOURCE_DIR) + "/scripts/demo.sh";
  if (::access(script.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "pghandoff demo: %s is not there (the demo runs from a source tree)\n",
                 script.c_str());
    return 2;
  }
  ::setenv("DEMO_NO_BUILD", "1", 1);
  ::execl(script.c_str(), script.c_str(), static_cast<char*>(nullptr));
  std::fprintf(stderr, "pghandoff demo: cannot run %s: %s\n", script.c_str(), std::strerror(errno));
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) return usage(2);
  std::string cmd = args[0];
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (cmd == "--help" || cmd == "-h" || cmd == "help") return usage(0);
  if (cmd == "--version" || cmd == "version") {
    std::printf("pghandoff %s\n", PGHANDOFF_VERSION);
    return 0;
  }
  if (cmd == "proxy") return runProxy(rest);
  if (cmd == "status") return adminRequest(optionValue(rest, "--admin"), "GET", "/status", "");
  if (cmd == "phase") {
    if (rest.empty()) return usage(2);
    if (rest[0] == "get") return adminRequest(optionValue(rest, "--admin"), "GET", "/phase", "");
    if (rest[0] == "set" && rest.size() >= 2) {
      return adminRequest(optionValue(rest, "--admin"), "POST", "/phase",
                          "{\"phase\":\"" + pghandoff::proxy::jsonEscape(rest[1]) + "\"}");
    }
    return usage(2);
  }
  if (cmd == "check") return pghandoff::migrate::runCheck(rest);
  if (cmd == "seed") return pghandoff::migrate::runSeed(rest);
  if (cmd == "verify") return pghandoff::migrate::runVerify(rest);
  if (cmd == "demo") return runDemo();
  std::fprintf(stderr, "pghandoff: unknown command '%s'\n", cmd.c_str());
  return usage(2);
}
