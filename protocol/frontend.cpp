#include "protocol/frontend.h"

namespace pghandoff::protocol {

std::optional<std::string_view> decodePasswordBody(Bytes body) {
  Reader r(body);
  std::string_view s = r.cstring();
  if (!r.atEnd()) return std::nullopt;
  return s;
}
void encodePassword(std::string_view password, std::vector<std::uint8_t>& out) {
  Writer w(out);
  w.begin('p').cstring(password);
  w.end();
}

std::optional<SaslInitialResponse> decodeSaslInitialBody(Bytes body) {
  Reader r(body);
  SaslInitialResponse s;
  s.mechanism = r.cstring();
  std::int32_t len = r.int32();
  if (!r.ok()) return std::nullopt;
  if (len == -1) {
    if (!r.atEnd()) return std::nullopt;
    return s;
  }
  if (len < 0 || static_cast<std::size_t>(len) != r.remaining()) return std::nullopt;
  s.data = r.bytes(static_cast<std::size_t>(len));
  return s;
}
void encodeSaslInitial(std::string_view mechanism, std::string_view data,
                       std::vector<std::uint8_t>& out) {
  Writer w(out);
  w.begin('p').cstring(mechanism).int32(static_cast<std::int32_t>(data.size())).raw(data);
  w.end();
}
void encodeSaslResponse(std::string_view data, std::vector<std::uint8_t>& out) {
  Writer w(out);
  w.begin('p').raw(data);
  w.end();
}

std::optional<std::string_view> decodeQueryBody(Bytes body) {
  Reader r(body);
  std::string_view sql = r.cstring();
  if (!r.atEnd()) return std::nullopt;
  return sql;
}
void encodeQuery(std::string_view sql, std::vector<std::uint8_t>& out) {
  Writer w(out);
  w.begin('Q').cstring(sql);
  w.end();
}

void encodeTerminate(std::vector<std::uint8_t>& out) {
  Writer w(out);
  w.begin('X');
  w.end();
}

}  // namespace pghandoff::protocol
