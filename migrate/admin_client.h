// The migration commands talk to a running proxy through its admin API
// (SPEC §5): verify pauses writes for its consistent cut, seed moves the
// proxy through `seeding`. Plain HTTP/1.1 on loopback, bearer token.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "config/config.h"

namespace pghandoff::migrate {

struct AdminEndpoint {
  std::string host = "127.0.0.1";
  std::uint16_t port = 9187;
  std::string token;
};

// From the config's admin section (a 0.0.0.0/:: listener is reached on
// loopback); nullopt when the admin API is disabled.
std::optional<AdminEndpoint> adminFromConfig(const config::Config& cfg);
// From a URL "http://host:port"; the token from PGHANDOFF_ADMIN_TOKEN.
std::optional<AdminEndpoint> adminFromUrl(const std::string& url);

struct AdminReply {
  int status = 0;
  std::string body;
};

// One request (Connection: close). Throws std::runtime_error when the API
// cannot be reached or does not answer within `timeout`.
AdminReply adminCall(const AdminEndpoint& ep, const std::string& method, const std::string& path,
                     const std::string& body = {},
                     std::chrono::milliseconds timeout = std::chrono::seconds(60));

// The string value of a member of a flat JSON object ("" when absent).
std::string jsonMember(const std::string& json, const std::string& key);

}  // namespace pghandoff::migrate
