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

std::optional<ParseMessage> decodeParseBody(Bytes body) {
  Reader r(body);
  ParseMessage m;
  m.statement = r.cstring();
  m.query = r.cstring();
  std::int16_t n = r.int16();
  if (!r.ok() || n < 0 || r.remaining() != static_cast<std::size_t>(n) * 4) return std::nullopt;
  return m;
}
void encodeParse(std::string_view statement, std::string_view query,
                 std::vector<std::uint8_t>& out) {
  Writer w(out);
  w.begin('P').cstring(statement).cstring(query).int16(0);
  w.end();
}

std::optional<BindMessage> decodeBindNames(Bytes body) {
  Reader r(body);
  BindMessage m;
  m.portal = r.cstring();
  m.statement = r.cstring();
  if (!r.ok()) return std::nullopt;
  return m;
}
void encodeBind(std::string_view portal, std::string_view statement,
                std::vector<std::uint8_t>& out) {
  Writer w(out);
  w.begin('B').cstring(portal).cstring(statement).int16(0).int16(0).int16(0);
  w.end();
}

std::optional<std::string_view> decodeExecutePortal(Bytes body) {
  Reader r(body);
  std::string_view portal = r.cstring();
  (void)r.int32();
  if (!r.atEnd()) return std::nullopt;
  return portal;
}
void encodeExecute(std::string_view portal, std::int32_t maxRows, std::vector<std::uint8_t>& out) {
  Writer w(out);
  w.begin('E').cstring(portal).int32(maxRows);
  w.end();
}

std::optional<CloseMessage> decodeCloseBody(Bytes body) {
  Reader r(body);
  CloseMessage m;
  m.kind = static_cast<char>(r.byte());
  m.name = r.cstring();
  if (!r.atEnd() || (m.kind != 'S' && m.kind != 'P')) return std::nullopt;
  return m;
}

void encodeSync(std::vector<std::uint8_t>& out) {
  Writer w(out);
  w.begin('S');
  w.end();
}

void encodeNamedRun(std::string_view name, std::string_view sql, std::vector<std::uint8_t>& out) {
  for (char kind : {'P', 'S'}) {
    Writer c(out);
    c.begin('C').byte(static_cast<std::uint8_t>(kind)).cstring(name);
    c.end();
  }
  encodeParse(name, sql, out);
  encodeBind(name, name, out);
  encodeExecute(name, 0, out);
}

}  // namespace pghandoff::protocol
