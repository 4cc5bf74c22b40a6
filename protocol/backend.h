// Backend messages the proxy inspects or writes itself: Authentication*,
// BackendKeyData, ParameterStatus, ReadyForQuery, NegotiateProtocolVersion,
// CommandComplete.
// https://www.postgresql.org/docs/15/protocol-message-formats.html
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/buffer.h"

namespace pghandoff::protocol {

// Authentication request codes ('R').
enum class AuthCode : std::int32_t {
  kOk = 0,
  kCleartextPassword = 3,
  kMd5Password = 5,
  kSasl = 10,
  kSaslContinue = 11,
  kSaslFinal = 12,
};

struct AuthRequest {
  std::int32_t code = 0;
  std::vector<std::uint8_t> md5Salt;    // 4 bytes, kMd5Password
  std::vector<std::string> mechanisms;  // kSasl
  std::vector<std::uint8_t> data;       // kSaslContinue / kSaslFinal
};
[[nodiscard]] std::optional<AuthRequest> decodeAuthBody(Bytes body);

void encodeAuthOk(std::vector<std::uint8_t>& out);
void encodeAuthCleartext(std::vector<std::uint8_t>& out);
void encodeAuthMd5(const std::uint8_t salt[4], std::vector<std::uint8_t>& out);
void encodeAuthSasl(const std::vector<std::string>& mechanisms, std::vector<std::uint8_t>& out);
void encodeAuthSaslContinue(std::string_view data, std::vector<std::uint8_t>& out);
void encodeAuthSaslFinal(std::string_view data, std::vector<std::uint8_t>& out);

struct BackendKeyData {
  std::int32_t pid = 0;
  std::int32_t key = 0;
};
[[nodiscard]] std::optional<BackendKeyData> decodeBackendKeyBody(Bytes body);
void encodeBackendKey(const BackendKeyData& k, std::vector<std::uint8_t>& out);

struct ParameterStatus {
  std::string name;
  std::string value;
};
[[nodiscard]] std::optional<ParameterStatus> decodeParameterStatusBody(Bytes body);
void encodeParameterStatus(std::string_view name, std::string_view value,
                           std::vector<std::uint8_t>& out);

// ReadyForQuery transaction status: 'I' idle, 'T' in a transaction block,
// 'E' in a failed transaction block.
[[nodiscard]] std::optional<char> decodeReadyForQueryBody(Bytes body);
void encodeReadyForQuery(char status, std::vector<std::uint8_t>& out);

void encodeNegotiateProtocolVersion(std::int32_t newestMinor,
                                    const std::vector<std::string>& unrecognised,
                                    std::vector<std::uint8_t>& out);

// CommandComplete's tag, e.g. "INSERT 0 1".
[[nodiscard]] std::optional<std::string_view> decodeCommandCompleteBody(Bytes body);
void encodeCommandComplete(std::string_view tag, std::vector<std::uint8_t>& out);

// DataRow's columns (text format as the proxy's own queries use it); nullopt
// for SQL NULL. The views point into `body`.
[[nodiscard]] std::optional<std::vector<std::optional<std::string_view>>> decodeDataRowBody(
    Bytes body);

// RowDescription body: each column's type OID.
[[nodiscard]] std::optional<std::vector<std::uint32_t>> decodeRowDescriptionTypes(Bytes body);

}  // namespace pghandoff::protocol
