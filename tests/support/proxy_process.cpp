#include "tests/support/proxy_process.h"

#include <iostream>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <stdexcept>

#include "tests/support/pg_cluster.h"

namespace pghandoff::test {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string trimWs(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) {
    return {};
  }
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

std::string decodeChunked(const std::string& raw) {
  std::string out;
  std::size_t pos = 0;
  while (pos < raw.size()) {
    const auto eol = raw.find("\r\n", pos);
    if (eol == std::string::npos) {
      break;
    }
    const std::size_t size = std::strtoul(raw.substr(pos, eol - pos).c_str(), nullptr, 16);
    pos = eol + 2;
    if (size == 0 || pos + size > raw.size()) {
      break;
    }
    out.append(raw, pos, size);
    pos += size + 2;  // chunk data, CRLF
  }
  return out;
}

std::string percentDecode(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() &&
        std::isxdigit(static_cast<unsigned char>(s[i + 1])) != 0 &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2])) != 0) {
      out.push_back(static_cast<char>(std::strtoul(s.substr(i + 1, 2).c_str(), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

struct Sample {
  std::string name;
  std::vector<std::pair<std::string, std::string>> labels;  // sorted
  std::string rest;                                         // after the labels
};

// `name{a="x",b="y"} rest`; nullopt if malformed.
std::optional<Sample> parseSample(const std::string& line) {
  Sample s;
  std::size_t i = 0;
  while (i < line.size() && line[i] != '{' && line[i] != ' ' && line[i] != '\t') {
    s.name.push_back(line[i++]);
  }
  if (s.name.empty()) {
    return std::nullopt;
  }
  if (i < line.size() && line[i] == '{') {
    ++i;
    for (;;) {
      while (i < line.size() && (line[i] == ',' || line[i] == ' ')) {
        ++i;
      }
      if (i >= line.size()) {
        return std::nullopt;
      }
      if (line[i] == '}') {
        ++i;
        break;
      }
      std::string key;
      while (i < line.size() && line[i] != '=') {
        key.push_back(line[i++]);
      }
      if (i + 1 >= line.size() || line[i + 1] != '"') {
        return std::nullopt;
      }
      i += 2;
      std::string value;
      while (i < line.size() && line[i] != '"') {
        if (line[i] == '\\' && i + 1 < line.size()) {
          ++i;
          value.push_back(line[i] == 'n' ? '\n' : line[i]);
        } else {
          value.push_back(line[i]);
        }
        ++i;
      }
      if (i >= line.size()) {
        return std::nullopt;
      }
      ++i;  // closing quote
      s.labels.emplace_back(trimWs(key), value);
    }
  }
  std::sort(s.labels.begin(), s.labels.end());
  s.rest = trimWs(line.substr(std::min(i, line.size())));
  return s;
}

}  // namespace

// YAML double-quoted scalar; '$' doubled because the config expands
// ${VAR} and reads $$ as a literal $ (SCRAM verifiers are full of them).
std::string yamlQuote(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '$':
        out += "$$";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out.push_back(c);
    }
  }
  out.push_back('"');
  return out;
}

HttpResponse httpRequest(uint16_t port, const std::string& method, const std::string& path,
                         const std::string& body, const std::map<std::string, std::string>& headers,
                         std::chrono::milliseconds timeout, const std::string& host) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    throw std::runtime_error("httpRequest: bad IPv4 address " + host);
  }
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    throw std::runtime_error("httpRequest: connect " + host + ":" + std::to_string(port) + ": " +
                             std::strerror(errno));
  }
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: " + host + ":" +
                    std::to_string(port) + "\r\nConnection: close\r\n";
  bool hasType = false;
  for (const auto& [k, v] : headers) {
    req += k + ": " + v + "\r\n";
    hasType = hasType || lower(k) == "content-type";
  }
  if (!body.empty() && !hasType) {
    req += "Content-Type: application/json\r\n";
  }
  if (!body.empty() || method == "POST" || method == "PUT") {
    req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  }
  req += "\r\n" + body;
  std::size_t sent = 0;
  while (sent < req.size()) {
    const ssize_t n = ::send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      throw std::runtime_error(std::string("httpRequest: send: ") + std::strerror(errno));
    }
    sent += static_cast<std::size_t>(n);
  }
  std::string raw;
  std::array<char, 16384> buf{};
  for (;;) {
    const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
    if (n > 0) {
      raw.append(buf.data(), static_cast<std::size_t>(n));
      continue;
    }
    if (n == 0) {
      break;
    }
    if (errno == EINTR) {
      continue;
    }
    if (errno == ECONNRESET && !raw.empty()) {
      break;
    }
    throw std::runtime_error(
        std::string("httpRequest: recv: ") +
        (errno == EAGAIN || errno == EWOULDBLOCK ? "timed out" : std::strerror(errno)));
  }
  const auto headEnd = raw.find("\r\n\r\n");
  if (headEnd == std::string::npos) {
    throw std::runtime_error("httpRequest: incomplete response (" + std::to_string(raw.size()) +
                             " bytes)");
  }
  HttpResponse resp;
  std::istringstream head(raw.substr(0, headEnd));
  std::string line;
  std::getline(head, line);
  {
    std::istringstream status(line);
    std::string version;
    status >> version >> resp.status;
    if (version.rfind("HTTP/", 0) != 0 || resp.status == 0) {
      throw std::runtime_error("httpRequest: bad status line");
    }
  }
  while (std::getline(head, line)) {
    const auto colon = line.find(':');
    if (colon != std::string::npos) {
      resp.headers[lower(trimWs(line.substr(0, colon)))] = trimWs(line.substr(colon + 1));
    }
  }
  resp.body = raw.substr(headEnd + 4);
  if (lower(resp.headers["transfer-encoding"]).find("chunked") != std::string::npos) {
    resp.body = decodeChunked(resp.body);
  } else if (resp.headers.count("content-length") != 0U) {
    const std::size_t len = std::strtoul(resp.headers["content-length"].c_str(), nullptr, 10);
    if (resp.body.size() > len) {
      resp.body.resize(len);
    }
  }
  // operator[] above may have inserted empty entries.
  std::erase_if(resp.headers, [](const auto& kv) { return kv.second.empty(); });
  return resp;
}

double findMetric(const std::string& exposition, const std::string& nameWithLabels) {
  const auto want = parseSample(nameWithLabels);
  if (!want) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  std::istringstream in(exposition);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') {
      continue;
    }
    const auto got = parseSample(line);
    if (!got || got->name != want->name || got->labels != want->labels) {
      continue;
    }
    const std::string value = got->rest.substr(0, got->rest.find_first_of(" \t"));
    char* end = nullptr;
    const double v = std::strtod(value.c_str(), &end);
    if (end == value.c_str()) {
      return std::numeric_limits<double>::quiet_NaN();
    }
    return v;
  }
  return std::numeric_limits<double>::quiet_NaN();
}

std::string databaseOf(const std::string& u) {
  if (u.rfind("postgresql://", 0) == 0 || u.rfind("postgres://", 0) == 0) {
    std::string rest = u.substr(u.find("://") + 3);
    rest = rest.substr(0, rest.find('?'));
    const auto at = rest.rfind('@');
    if (at != std::string::npos) {
      rest = rest.substr(at + 1);
    }
    const auto slash = rest.find('/');
    if (slash == std::string::npos || slash + 1 == rest.size()) {
      return "postgres";
    }
    return percentDecode(rest.substr(slash + 1));
  }
  std::istringstream in(u);
  std::string kv;
  while (in >> kv) {
    if (kv.rfind("dbname=", 0) == 0) {
      std::string v = kv.substr(7);
      v.erase(std::remove(v.begin(), v.end(), '\''), v.end());
      return v;
    }
  }
  return "postgres";
}

ProxyProcess::ProxyProcess(ProxyOptions options)
    : options_(std::move(options)), dir_("pghandoff-proxy") {
  markOwned(dir_.path());
  ::mkdir(stateDir().c_str(), 0700);
  std::string failure;
  for (int attempt = 0;; ++attempt) {
    port_ = freePort();
    do {
      adminPort_ = freePort();
    } while (adminPort_ == port_);
    writeConfig();
    if (startOnce(failure)) {
      return;
    }
    if (attempt >= 3) {
      throw std::runtime_error("ProxyProcess: " + failure);
    }
  }
}

ProxyProcess::~ProxyProcess() {
  process_.terminate();
}

std::string ProxyProcess::configYaml() const {
  std::ostringstream y;
  y << "listen: " << yamlQuote("127.0.0.1:" + std::to_string(port_)) << "\n"
    << "source:\n  url: " << yamlQuote(options_.sourceUrl) << "\n";
  if (!options_.targetUrl.empty()) {
    y << "target:\n  url: " << yamlQuote(options_.targetUrl) << "\n";
  }
  y << "client_tls:\n  mode: " << yamlQuote(options_.tlsMode) << "\n";
  if (!options_.certFile.empty()) {
    y << "  cert: " << yamlQuote(options_.certFile) << "\n";
  }
  if (!options_.keyFile.empty()) {
    y << "  key: " << yamlQuote(options_.keyFile) << "\n";
  }
  y << "auth:\n  method: " << yamlQuote(options_.authMethod) << "\n";
  if (options_.users.empty()) {
    y << "  users: []\n";
  } else {
    y << "  users:\n";
    for (const auto& [name, password] : options_.users) {
      y << "    - name: " << yamlQuote(name) << "\n      password: " << yamlQuote(password) << "\n";
    }
  }
  y << "admin:\n  listen: " << yamlQuote("127.0.0.1:" + std::to_string(adminPort_))
    << "\n  token: " << yamlQuote(options_.adminToken) << "\n"
    << "state:\n  dir: " << yamlQuote(stateDir()) << "\n";
  if (!options_.journalSegment.empty()) {
    y << "  journal_segment: " << yamlQuote(options_.journalSegment) << "\n";
  }
  y << "log:\n  level: " << yamlQuote(options_.logLevel)
    << "\n  format: " << yamlQuote(options_.logFormat) << "\n";
  if (!options_.extraYaml.empty()) {
    y << options_.extraYaml << "\n";
  }
  return y.str();
}

void ProxyProcess::writeConfig() const {
  writeFile(configFile(), configYaml(), 0600);
}

bool ProxyProcess::startOnce(std::string& failure) {
  const std::size_t logBefore = log().size();
  process_.start({PGHANDOFF_BINARY, "proxy", "--config", configFile()}, options_.env, logFile());
  bool healthy = false;
  waitFor(
      [&] {
        if (!process_.running()) {
          return true;
        }
        try {
          healthy = httpRequest(adminPort_, "GET", "/healthz", {}, {}, 2s).status == 200;
        } catch (const std::exception&) {
          healthy = false;  // not listening yet
        }
        return healthy;
      },
      options_.startDeadline, 20ms);
  if (healthy) {
    return true;
  }
  std::string newLog = log();
  newLog.erase(0, std::min(logBefore, newLog.size()));
  const bool exited = !process_.running();
  if (newLog.size() > 4000) {
    newLog.erase(0, newLog.size() - 4000);
  }
  if (exited) {
    failure = "proxy exited with code " + std::to_string(process_.wait(0ms)) +
              " before it was healthy; log tail:\n" + newLog;
    // A port taken between freePort() and bind(): the caller retries.
    if (newLog.find("in use") != std::string::npos) {
      return false;
    }
    throw std::runtime_error("ProxyProcess: " + failure);
  }
  process_.terminate();
  throw std::runtime_error("ProxyProcess: /healthz not 200 within " +
                           std::to_string(options_.startDeadline.count()) + " ms; log tail:\n" +
                           newLog);
}

std::string ProxyProcess::url(const std::string& user, const std::string& password,
                              const std::optional<std::string>& db,
                              const std::string& extra) const {
  std::string u = "postgresql://" + urlEncode(user);
  if (!password.empty()) {
    u += ":" + urlEncode(password);
  }
  u += "@127.0.0.1:" + std::to_string(port_) + "/" +
       urlEncode(db.value_or(databaseOf(options_.sourceUrl)));
  char sep = '?';
  std::istringstream in(extra);
  std::string kv;
  while (std::getline(in, kv, ' ')) {
    std::istringstream parts(kv);
    std::string p;
    while (std::getline(parts, p, '&')) {
      if (p.empty()) {
        continue;
      }
      const auto eq = p.find('=');
      u += sep + urlEncode(p.substr(0, eq)) +
           (eq == std::string::npos ? "" : "=" + urlEncode(p.substr(eq + 1)));
      sep = '&';
    }
  }
  return u;
}

HttpResponse ProxyProcess::http(const std::string& method, const std::string& path,
                                const std::string& body, bool withToken) {
  std::map<std::string, std::string> headers;
  if (withToken) {
    headers["Authorization"] = "Bearer " + options_.adminToken;
  }
  return httpRequest(adminPort_, method, path, body, headers);
}

std::string ProxyProcess::metrics() {
  const HttpResponse r = http("GET", "/metrics");
  if (r.status != 200) {
    throw std::runtime_error("GET /metrics: status " + std::to_string(r.status));
  }
  return r.body;
}

double ProxyProcess::metric(const std::string& nameWithLabels) {
  return findMetric(metrics(), nameWithLabels);
}

bool ProxyProcess::signal(int sig) {
  return process_.signal(sig);
}

int ProxyProcess::waitExit(std::chrono::milliseconds timeout) {
  return process_.wait(timeout);
}

bool ProxyProcess::running() {
  return process_.running();
}

int ProxyProcess::stop() {
  return process_.terminate();
}

void ProxyProcess::restart() {
  stop();
  std::string failure;
  if (!startOnce(failure)) {
    throw std::runtime_error("ProxyProcess::restart: " + failure);
  }
}

std::string ProxyProcess::log() const {
  return tailFile(logFile(), std::string::npos);
}

void ProxyProcess::printLogTail(std::size_t bytes) const {
  std::cerr << "---- proxy log (tail) ----\n" << tailFile(logFile(), bytes) << "\n";
}

}  // namespace pghandoff::test
