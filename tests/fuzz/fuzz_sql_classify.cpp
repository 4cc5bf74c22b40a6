// Fuzz target: SQL classification (protocol/sql_classify.h) on arbitrary text.
// Input: the statement text. Invariants: no crash or leak; the cache answers
// exactly what classify() answers; a parse error is kUnknown; the overall
// kind is the strongest of the per-statement kinds.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "protocol/sql_classify.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pghandoff::protocol;
  if (size > 4096) return -1;  // long inputs only slow the parser down
  std::string_view sql(reinterpret_cast<const char*>(data), size);
  Classification c = classify(sql);
  if (c.parseError) FUZZ_REQUIRE(c.kind == StatementKind::kUnknown);
  if (!c.parseError && !c.statements.empty()) {
    StatementKind k = c.statements.front();
    for (StatementKind s : c.statements) k = strongest(k, s);
    FUZZ_REQUIRE(k == c.kind);
  }
  static ClassificationCache cache(64);
  FUZZ_REQUIRE(cache.get(sql) == c);
  FUZZ_REQUIRE(cache.get(sql) == c);  // second time from the cache
  return 0;
}
