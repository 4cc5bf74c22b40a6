#include "protocol/startup.h"

namespace pghandoff::protocol {

const std::string* StartupMessage::find(std::string_view key) const {
  for (const auto& [k, v] : parameters) {
    if (k == key) return &v;
  }
  return nullptr;
}

std::optional<StartupMessage> decodeStartup(Bytes packet, StartupError* err) {
  Reader r(packet);
  auto len = static_cast<std::uint32_t>(r.int32());
  StartupMessage m;
  m.protocol = r.int32();
  if (!r.ok() || len != packet.size()) {
    if (err) *err = StartupError::kBadLayout;
    return std::nullopt;
  }
  // Pairs of C strings, ended by one empty string that is the last byte.
  while (true) {
    std::string_view key = r.cstring();
    if (!r.ok()) {
      if (err) *err = StartupError::kBadLayout;
      return std::nullopt;
    }
    if (key.empty()) break;
    std::string_view value = r.cstring();
    if (!r.ok()) {
      if (err) *err = StartupError::kBadLayout;
      return std::nullopt;
    }
    if (m.find(key) != nullptr) {
      if (err) *err = StartupError::kDuplicateKey;
      return std::nullopt;
    }
    m.parameters.emplace_back(std::string(key), std::string(value));
  }
  if (!r.atEnd()) {
    if (err) *err = StartupError::kBadLayout;
    return std::nullopt;
  }
  if (err) *err = StartupError::kNone;
  return m;
}

void encodeStartup(const StartupMessage& m, std::vector<std::uint8_t>& out) {
  Writer w(out);
  w.beginUntyped().int32(m.protocol);
  for (const auto& [k, v] : m.parameters) w.cstring(k).cstring(v);
  w.byte(0);
  w.end();
}

std::optional<CancelRequest> decodeCancel(Bytes packet) {
  if (packet.size() != 16) return std::nullopt;
  Reader r(packet);
  if (r.int32() != 16 || r.int32() != kCancelRequestCode) return std::nullopt;
  CancelRequest c;
  c.pid = r.int32();
  c.key = r.int32();
  return c;
}

void encodeCancel(const CancelRequest& c, std::vector<std::uint8_t>& out) {
  Writer w(out);
  w.beginUntyped().int32(kCancelRequestCode).int32(c.pid).int32(c.key);
  w.end();
}

void encodeSslRequest(std::vector<std::uint8_t>& out) {
  Writer w(out);
  w.beginUntyped().int32(kSslRequestCode);
  w.end();
}

}  // namespace pghandoff::protocol
