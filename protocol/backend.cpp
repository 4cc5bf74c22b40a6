#include "protocol/backend.h"

namespace pghandoff::protocol {

std::optional<AuthRequest> decodeAuthBody(Bytes body) {
  Reader r(body);
  AuthRequest a;
  a.code = r.int32();
  if (!r.ok()) return std::nullopt;
  switch (static_cast<AuthCode>(a.code)) {
    case AuthCode::kOk:
    case AuthCode::kCleartextPassword:
      break;
    case AuthCode::kMd5Password: {
      Bytes s = r.bytes(4);
      a.md5Salt.assign(s.begin(), s.end());
      break;
    }
    case AuthCode::kSasl:
      while (true) {
        std::string_view m = r.cstring();
        if (!r.ok() || m.empty()) break;
        a.mechanisms.emplace_back(m);
      }
      break;
    case AuthCode::kSaslContinue:
    case AuthCode::kSaslFinal: {
      Bytes d = r.rest();
      a.data.assign(d.begin(), d.end());
      break;
    }
    default:
      // GSS, SSPI, ... are recognised by code only; the caller refuses them.
      r.rest();
      break;
  }
  if (!r.ok() || !r.atEnd()) return std::nullopt;
  return a;
}

namespace {
void authHeader(Writer& w, AuthCode c) {
  w.begin('R').int32(static_cast<std::int32_t>(c));
}
}  // namespace

void encodeAuthOk(std::vector<std::uint8_t>& out) {
  Writer w(out);
  authHeader(w, AuthCode::kOk);
  w.end();
}
void encodeAuthCleartext(std::vector<std::uint8_t>& out) {
  Writer w(out);
  authHeader(w, AuthCode::kCleartextPassword);
  w.end();
}
void encodeAuthMd5(const std::uint8_t salt[4], std::vector<std::uint8_t>& out) {
  Writer w(out);
  authHeader(w, AuthCode::kMd5Password);
  w.raw(Bytes(salt, 4));
  w.end();
}
void encodeAuthSasl(const std::vector<std::string>& mechanisms, std::vector<std::uint8_t>& out) {
  Writer w(out);
  authHeader(w, AuthCode::kSasl);
  for (const auto& m : mechanisms) w.cstring(m);
  w.byte(0);
  w.end();
}
void encodeAuthSaslContinue(std::string_view data, std::vector<std::uint8_t>& out) {
  Writer w(out);
  authHeader(w, AuthCode::kSaslContinue);
  w.raw(data);
  w.end();
}
void encodeAuthSaslFinal(std::string_view data, std::vector<std::uint8_t>& out) {
  Writer w(out);
  authHeader(w, AuthCode::kSaslFinal);
  w.raw(data);
  w.end();
}

std::optional<BackendKeyData> decodeBackendKeyBody(Bytes body) {
  Reader r(body);
  BackendKeyData k;
  k.pid = r.int32();
  k.key = r.int32();
  if (!r.atEnd()) return std::nullopt;
  return k;
}
void encodeBackendKey(const BackendKeyData& k, std::vector<std::uint8_t>& out) {
  Writer w(out);
  w.begin('K').int32(k.pid).int32(k.key);
  w.end();
}

std::optional<ParameterStatus> decodeParameterStatusBody(Bytes body) {
  Reader r(body);
  ParameterStatus p;
  p.name = r.cstring();
  p.value = r.cstring();
  if (!r.atEnd()) return std::nullopt;
  return p;
}
void encodeParameterStatus(std::string_view name, std::string_view value,
                           std::vector<std::uint8_t>& out) {
  Writer w(out);
  w.begin('S').cstring(name).cstring(value);
  w.end();
}

std::optional<char> decodeReadyForQueryBody(Bytes body) {
  if (body.size() != 1) return std::nullopt;
  char s = static_cast<char>(body[0]);
  if (s != 'I' && s != 'T' && s != 'E') return std::nullopt;
  return s;
}
void encodeReadyForQuery(char status, std::vector<std::uint8_t>& out) {
  Writer w(out);
  w.begin('Z').byte(static_cast<std::uint8_t>(status));
  w.end();
}

void encodeNegotiateProtocolVersion(std::int32_t newestMinor,
                                    const std::vector<std::string>& unrecognised,
                                    std::vector<std::uint8_t>& out) {
  Writer w(out);
  w.begin('v').int32(newestMinor).int32(static_cast<std::int32_t>(unrecognised.size()));
  for (const auto& o : unrecognised) w.cstring(o);
  w.end();
}

std::optional<std::string_view> decodeCommandCompleteBody(Bytes body) {
  Reader r(body);
  std::string_view tag = r.cstring();
  if (!r.atEnd()) return std::nullopt;
  return tag;
}

void encodeCommandComplete(std::string_view tag, std::vector<std::uint8_t>& out) {
  Writer w(out);
  w.begin('C').cstring(tag);
  w.end();
}

std::optional<std::vector<std::optional<std::string_view>>> decodeDataRowBody(Bytes body) {
  Reader r(body);
  const std::int16_t n = r.int16();
  if (!r.ok() || n < 0) return std::nullopt;
  std::vector<std::optional<std::string_view>> cols;
  cols.reserve(static_cast<std::size_t>(n));
  for (std::int16_t i = 0; i < n; ++i) {
    const std::int32_t len = r.int32();
    if (!r.ok() || len < -1) return std::nullopt;
    if (len == -1) {
      cols.emplace_back(std::nullopt);
      continue;
    }
    Bytes b = r.bytes(static_cast<std::size_t>(len));
    if (!r.ok()) return std::nullopt;
    cols.emplace_back(std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
  }
  if (!r.atEnd()) return std::nullopt;
  return cols;
}

std::optional<std::vector<std::uint32_t>> decodeRowDescriptionTypes(Bytes body) {
  Reader r(body);
  const std::int16_t n = r.int16();
  if (!r.ok() || n < 0) return std::nullopt;
  std::vector<std::uint32_t> types;
  types.reserve(static_cast<std::size_t>(n));
  for (std::int16_t i = 0; i < n; ++i) {
    (void)r.cstring();  // name
    (void)r.int32();    // table OID
    (void)r.int16();    // column number
    types.push_back(static_cast<std::uint32_t>(r.int32()));
    (void)r.int16();  // size
    (void)r.int32();  // modifier
    (void)r.int16();  // format
    if (!r.ok()) return std::nullopt;
  }
  if (!r.atEnd()) return std::nullopt;
  return types;
}

}  // namespace pghandoff::protocol
