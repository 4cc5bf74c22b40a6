// Fuzz target: determinism analysis (protocol/sql_determinism.h) on arbitrary
// text. Input: the statement text. Invariants: no crash or leak; reported calls
// are in text order, non-empty, inside the text and never overlap; statementEnd
// is inside the text; nothing is set when the text does not parse; pinning
// every call with a literal of its type gives text that parses again with no
// calls left; substitute() with the calls' own text is the identity.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/sql_determinism.h"
#include "tests/fuzz/fuzz_common.h"

namespace {

std::string pinnedLiteral(const pghandoff::protocol::VolatileCall& c) {
  // A 'now'-style literal keeps its cast (and may be a typed literal, date
  // 'today', which takes a bare string): replace the string only.
  if (!c.function.empty() && c.function.front() == '\'') return "'2026-01-01'";
  return "(NULL::" + c.type + ")";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pghandoff::protocol;
  if (size > 4096) return -1;  // long inputs only slow the parser down
  const std::string_view sql(reinterpret_cast<const char*>(data), size);
  const DeterminismAnalysis a = analyzeDeterminism(sql);
  (void)fingerprint(sql);
  if (!a.parsed) {
    FUZZ_REQUIRE(a.calls.empty() && a.writes.empty() && a.unsupported.empty());
    return 0;
  }
  std::vector<Replacement> identity;
  std::vector<Replacement> pinned;
  for (std::size_t i = 0; i < a.calls.size(); ++i) {
    const VolatileCall& c = a.calls[i];
    FUZZ_REQUIRE(c.begin < c.end && c.end <= sql.size());
    FUZZ_REQUIRE(i == 0 || a.calls[i - 1].end <= c.begin);
    FUZZ_REQUIRE(!c.function.empty() && !c.type.empty());
    identity.push_back({c.begin, c.end, std::string(sql.substr(c.begin, c.end - c.begin))});
    pinned.push_back({c.begin, c.end, pinnedLiteral(c)});
  }
  for (const WriteTarget& w : a.writes) FUZZ_REQUIRE(w.statementEnd <= sql.size());
  const auto same = substitute(sql, identity);
  FUZZ_REQUIRE(same.has_value() && *same == sql);
  const auto text = substitute(sql, pinned);
  FUZZ_REQUIRE(text.has_value());
  if (!a.calls.empty()) {
    const DeterminismAnalysis again = analyzeDeterminism(*text);
    FUZZ_REQUIRE(again.parsed);
    FUZZ_REQUIRE(again.calls.empty());
  }
  return 0;
}
