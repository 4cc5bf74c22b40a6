// ErrorResponse and NoticeResponse.
// https://www.postgresql.org/docs/15/protocol-error-fields.html
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "protocol/buffer.h"

namespace pghandoff::protocol {

struct ErrorFields {
  std::string severity = "ERROR";  // 'S' and 'V'
  std::string code;                // 'C' SQLSTATE
  std::string message;             // 'M'
  std::string detail;              // 'D'
  std::string hint;                // 'H'
};

// SQLSTATEs the proxy itself raises.
namespace sqlstate {
inline constexpr const char* kProtocolViolation = "08P01";
inline constexpr const char* kConnectionFailure = "08006";
inline constexpr const char* kUnableToConnect = "08001";
inline constexpr const char* kAdminShutdown = "57P01";
inline constexpr const char* kTooManyConnections = "53300";
inline constexpr const char* kInvalidPassword = "28P01";
inline constexpr const char* kInvalidAuthSpec = "28000";
inline constexpr const char* kFeatureNotSupported = "0A000";
inline constexpr const char* kInvalidCatalogName = "3D000";
inline constexpr const char* kProgramLimitExceeded = "54000";
inline constexpr const char* kInternalError = "XX000";
inline constexpr const char* kCannotConnectNow = "57P03";
// The mirror (non-authoritative server) failed and mirror.on_target_error is
// fail-client: nothing was committed on either side.
inline constexpr const char* kSystemError = "58000";
inline constexpr const char* kInFailedTransaction = "25P02";
}  // namespace sqlstate

// type is 'E' (ErrorResponse) or 'N' (NoticeResponse).
void encodeError(const ErrorFields& e, std::vector<std::uint8_t>& out, char type = 'E');

// Decodes the body (after the 5-byte header). A response without SQLSTATE or
// message decodes with code XX000 / an empty message instead of failing (B48).
[[nodiscard]] std::optional<ErrorFields> decodeErrorBody(Bytes body);

}  // namespace pghandoff::protocol
