#include "protocol/error.h"

namespace pghandoff::protocol {

void encodeError(const ErrorFields& e, std::vector<std::uint8_t>& out, char type) {
  Writer w(out);
  w.begin(type);
  w.byte('S').cstring(e.severity);
  w.byte('V').cstring(e.severity);
  w.byte('C').cstring(e.code.empty() ? sqlstate::kInternalError : e.code);
  w.byte('M').cstring(e.message);
  if (!e.detail.empty()) w.byte('D').cstring(e.detail);
  if (!e.hint.empty()) w.byte('H').cstring(e.hint);
  w.byte(0);
  w.end();
}

std::optional<ErrorFields> decodeErrorBody(Bytes body) {
  Reader r(body);
  ErrorFields e;
  e.severity.clear();
  while (true) {
    std::uint8_t field = r.byte();
    if (!r.ok()) return std::nullopt;
    if (field == 0) break;
    std::string_view v = r.cstring();
    if (!r.ok()) return std::nullopt;
    switch (field) {
      case 'V':
        e.severity = v;
        break;
      case 'S':
        if (e.severity.empty()) e.severity = v;
        break;
      case 'C':
        e.code = v;
        break;
      case 'M':
        e.message = v;
        break;
      case 'D':
        e.detail = v;
        break;
      case 'H':
        e.hint = v;
        break;
      default:
        break;
    }
  }
  if (e.code.size() != 5) e.code = sqlstate::kInternalError;
  if (e.severity.empty()) e.severity = "ERROR";
  return e;
}

}  // namespace pghandoff::protocol
