// Startup-phase packets: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest.
// https://www.postgresql.org/docs/15/protocol-message-formats.html (StartupMessage,
// SSLRequest, GSSENCRequest, CancelRequest) and protocol-flow.html#id-1.10.6.7.3
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "protocol/buffer.h"

namespace pghandoff::protocol {

inline constexpr std::int32_t kProtocol30 = 196608;  // 3 << 16
inline constexpr std::int32_t kSslRequestCode = 80877103;
inline constexpr std::int32_t kGssEncRequestCode = 80877104;
inline constexpr std::int32_t kCancelRequestCode = 80877102;

struct StartupMessage {
  std::int32_t protocol = kProtocol30;
  // In wire order; keys are unique (a duplicate is a layout error).
  std::vector<std::pair<std::string, std::string>> parameters;

  [[nodiscard]] const std::string* find(std::string_view key) const;
};

enum class StartupError : std::uint8_t {
  kNone,
  kBadLayout,  // missing terminator, odd strings, trailing bytes (B9, B10)
  kDuplicateKey,
};

// Decodes the whole packet (length included). Only the layout is checked here;
// the protocol version and the required keys are the session's business.
[[nodiscard]] std::optional<StartupMessage> decodeStartup(Bytes packet, StartupError* err);
void encodeStartup(const StartupMessage& m, std::vector<std::uint8_t>& out);

struct CancelRequest {
  std::int32_t pid = 0;
  std::int32_t key = 0;
};
// The whole packet must be exactly 16 bytes (B21).
[[nodiscard]] std::optional<CancelRequest> decodeCancel(Bytes packet);
void encodeCancel(const CancelRequest& c, std::vector<std::uint8_t>& out);

void encodeSslRequest(std::vector<std::uint8_t>& out);

}  // namespace pghandoff::protocol
