// Frontend messages the proxy inspects or writes itself: PasswordMessage,
// SASLInitialResponse, SASLResponse (all type 'p'), Query, Terminate.
// https://www.postgresql.org/docs/15/protocol-message-formats.html
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/buffer.h"

namespace pghandoff::protocol {

// PasswordMessage body: one C string (cleartext or "md5..." hash).
[[nodiscard]] std::optional<std::string_view> decodePasswordBody(Bytes body);
void encodePassword(std::string_view password, std::vector<std::uint8_t>& out);

struct SaslInitialResponse {
  std::string_view mechanism;
  std::optional<Bytes> data;  // absent when the length is -1
};
[[nodiscard]] std::optional<SaslInitialResponse> decodeSaslInitialBody(Bytes body);
void encodeSaslInitial(std::string_view mechanism, std::string_view data,
                       std::vector<std::uint8_t>& out);
void encodeSaslResponse(std::string_view data, std::vector<std::uint8_t>& out);

// Query body: the SQL text. An embedded NUL or a missing terminator is an
// error (B37).
[[nodiscard]] std::optional<std::string_view> decodeQueryBody(Bytes body);
void encodeQuery(std::string_view sql, std::vector<std::uint8_t>& out);

void encodeTerminate(std::vector<std::uint8_t>& out);

// Extended query protocol: only the names and the SQL text are decoded (the
// proxy tracks which statement a portal runs); parameters are not touched.
struct ParseMessage {
  std::string_view statement;  // "" is the unnamed statement
  std::string_view query;
};
[[nodiscard]] std::optional<ParseMessage> decodeParseBody(Bytes body);
void encodeParse(std::string_view statement, std::string_view query,
                 std::vector<std::uint8_t>& out);

struct BindMessage {
  std::string_view portal;
  std::string_view statement;
};
// Decodes the two names only; the rest of the body is not validated here
// (the server does that, B38).
[[nodiscard]] std::optional<BindMessage> decodeBindNames(Bytes body);
void encodeBind(std::string_view portal, std::string_view statement,
                std::vector<std::uint8_t>& out);

[[nodiscard]] std::optional<std::string_view> decodeExecutePortal(Bytes body);
void encodeExecute(std::string_view portal, std::int32_t maxRows, std::vector<std::uint8_t>& out);

struct CloseMessage {
  char kind;  // 'S' statement, 'P' portal
  std::string_view name;
};
[[nodiscard]] std::optional<CloseMessage> decodeCloseBody(Bytes body);
void encodeSync(std::vector<std::uint8_t>& out);

// `sql` run through the extended protocol under `name` (statement and
// portal), without Sync or Flush: Close of the portal and of the statement
// (no error when they do not exist), Parse (no parameters), Bind (text
// results), Execute (all rows). Answered by CloseComplete twice,
// ParseComplete, BindComplete, then the statement's rows and CommandComplete.
void encodeNamedRun(std::string_view name, std::string_view sql, std::vector<std::uint8_t>& out);

}  // namespace pghandoff::protocol
