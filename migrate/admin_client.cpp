#include "migrate/admin_client.h"

#include <cstdlib>
#include <stdexcept>

#include "proxy/admin.h"
#include "proxy/asio.h"

namespace pghandoff::migrate {

std::optional<AdminEndpoint> adminFromConfig(const config::Config& cfg) {
  if (!cfg.admin.listen) return std::nullopt;
  AdminEndpoint ep;
  ep.host = cfg.admin.listen->host;
  if (ep.host == "0.0.0.0" || ep.host.empty()) ep.host = "127.0.0.1";
  if (ep.host == "::") ep.host = "::1";
  ep.port = cfg.admin.listen->port;
  ep.token = cfg.admin.token;
  return ep;
}

std::optional<AdminEndpoint> adminFromUrl(const std::string& url) {
  if (url.rfind("http://", 0) != 0) return std::nullopt;
  std::string hostport = url.substr(7);
  if (auto slash = hostport.find('/'); slash != std::string::npos) hostport.resize(slash);
  AdminEndpoint ep;
  auto colon = hostport.rfind(':');
  ep.host = colon == std::string::npos ? hostport : hostport.substr(0, colon);
  if (ep.host.size() > 2 && ep.host.front() == '[') ep.host = ep.host.substr(1, ep.host.size() - 2);
  ep.port = colon == std::string::npos
                ? 80
                : static_cast<std::uint16_t>(std::atoi(hostport.c_str() + colon + 1));
  if (const char* t = std::getenv("PGHANDOFF_ADMIN_TOKEN")) ep.token = t;
  return ep;
}

AdminReply adminCall(const AdminEndpoint& ep, const std::string& method, const std::string& path,
                     const std::string& body, std::chrono::milliseconds timeout) {
  namespace asio = proxy::asio;
  using proxy::tcp;
  asio::io_context io;
  tcp::resolver resolver(io);
  tcp::socket sock(io);
  std::string request = method + " " + path + " HTTP/1.1\r\nHost: " + ep.host + ":" +
                        std::to_string(ep.port) + "\r\nConnection: close\r\n";
  if (!ep.token.empty()) request += "Authorization: Bearer " + ep.token + "\r\n";
  if (!body.empty() || method == "POST") {
    request +=
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  request += "\r\n" + body;
  std::string response;
  proxy::error_code failure;
  std::array<char, 4096> buf{};
  std::function<void(proxy::error_code, std::size_t)> onRead;
  onRead = [&](proxy::error_code ec, std::size_t n) {
    response.append(buf.data(), n);
    if (ec) {
      if (ec != asio::error::eof) failure = ec;
      return;
    }
    sock.async_read_some(asio::buffer(buf), onRead);
  };
  asio::async_connect(sock, resolver.resolve(ep.host, std::to_string(ep.port)),
                      [&](proxy::error_code ec, const tcp::endpoint&) {
                        if (ec) {
                          failure = ec;
                          return;
                        }
                        asio::async_write(sock, asio::buffer(request),
                                          [&](proxy::error_code wec, std::size_t) {
                                            if (wec) {
                                              failure = wec;
                                              return;
                                            }
                                            sock.async_read_some(asio::buffer(buf), onRead);
                                          });
                      });
  io.run_for(timeout);
  if (!io.stopped()) {
    throw std::runtime_error("the admin API at " + ep.host + ":" + std::to_string(ep.port) +
                             " did not answer " + method + " " + path + " in time");
  }
  if (failure) {
    throw std::runtime_error("cannot reach the admin API at " + ep.host + ":" +
                             std::to_string(ep.port) + ": " + failure.message());
  }
  AdminReply reply;
  auto sp = response.find(' ');
  reply.status = sp == std::string::npos ? 0 : std::atoi(response.c_str() + sp + 1);
  auto at = response.find("\r\n\r\n");
  reply.body = at == std::string::npos ? "" : response.substr(at + 4);
  if (reply.status == 0) {
    throw std::runtime_error("the admin API at " + ep.host + ":" + std::to_string(ep.port) +
                             " sent no HTTP answer");
  }
  return reply;
}

std::string jsonMember(const std::string& json, const std::string& key) {
  auto members = proxy::parseFlatJsonObject(json);
  if (!members) return {};
  for (const auto& [k, v] : *members) {
    if (k == key) return v;
  }
  return {};
}

}  // namespace pghandoff::migrate
