// Logging setup (spdlog, text or JSON lines) and the helpers that keep peer
// input and secrets out of log lines.
#pragma once

#include <string>
#include <string_view>

#include "config/config.h"

namespace pghandoff::proxy {

// Installs the process logger on stderr. Throws on an unknown level.
void setupLogging(const std::string& level, config::LogFormat format);
void setLogLevel(const std::string& level);

// Peer-supplied text made safe for one log line: control characters and
// non-ASCII bytes escaped as \xNN, cut at maxLen bytes with "..." (B12).
[[nodiscard]] std::string sanitizeForLog(std::string_view s, std::size_t maxLen);

}  // namespace pghandoff::proxy
