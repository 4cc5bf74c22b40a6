// Internal to protocol/: the flat JSON reader for libpg_query's parse tree and
// the helpers the SQL analyses share (sql_classify.cpp, sql_determinism.cpp).
// Not a public API.
//
// libpg_query offers the tree as JSON (pg_query_parse) or protobuf
// (pg_query_parse_protobuf). We read the JSON with a small flat parser: nodes are
// kept in pre-order in one vector, so "every node under X" is a contiguous index
// range and a tree walk is a loop, whatever the nesting depth (libpg_query emits
// 40,000 levels for a long `1+1+...`).
#pragma once

#include <pg_query.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace pghandoff::protocol::sqljson {

// ---------------------------------------------------------------------------
// A flat JSON document. libpg_query's output is trusted to be JSON, but the
// parser still checks every byte and fails cleanly on anything else.

enum class JsonType : std::uint8_t { kNull, kBool, kNumber, kString, kArray, kObject };
constexpr std::uint32_t kNone = UINT32_MAX;

struct JsonNode {
  JsonType type = JsonType::kNull;
  bool boolean = false;
  std::string_view key;   // member name when the parent is an object
  std::string_view text;  // string (unescaped) or number text
  std::uint32_t firstChild = kNone;
  std::uint32_t next = kNone;  // next sibling
  std::uint32_t end = 0;       // one past this subtree's last node (pre-order)
};

class JsonDoc {
 public:
  // Parses `s` in place: escaped strings are rewritten shorter inside `s`.
  [[nodiscard]] bool parse(char* s, std::size_t n);

  [[nodiscard]] std::size_t size() const { return nodes_.size(); }
  [[nodiscard]] const JsonNode& at(std::uint32_t i) const { return nodes_[i]; }
  [[nodiscard]] std::uint32_t member(std::uint32_t obj, std::string_view key) const {
    if (obj == kNone || nodes_[obj].type != JsonType::kObject) return kNone;
    for (std::uint32_t c = nodes_[obj].firstChild; c != kNone; c = nodes_[c].next) {
      if (nodes_[c].key == key) return c;
    }
    return kNone;
  }
  [[nodiscard]] std::string_view stringMember(std::uint32_t obj, std::string_view key) const {
    const std::uint32_t m = member(obj, key);
    return m != kNone && nodes_[m].type == JsonType::kString ? nodes_[m].text : std::string_view{};
  }
  [[nodiscard]] bool boolMember(std::uint32_t obj, std::string_view key) const {
    const std::uint32_t m = member(obj, key);
    return m != kNone && nodes_[m].type == JsonType::kBool && nodes_[m].boolean;
  }
  // A non-negative integer member (libpg_query's `location`, `stmt_len`, ...);
  // nullopt when absent (libpg_query omits zero values) or not such a number.
  [[nodiscard]] std::optional<std::size_t> sizeMember(std::uint32_t obj,
                                                      std::string_view key) const;
  [[nodiscard]] std::size_t childCount(std::uint32_t i) const {
    std::size_t count = 0;
    if (i == kNone) return 0;
    for (std::uint32_t c = nodes_[i].firstChild; c != kNone; c = nodes_[c].next) ++count;
    return count;
  }
  // {"String":{"sval":"x"}} -> x (libpg_query's String node, used in names).
  [[nodiscard]] std::string_view stringNode(std::uint32_t i) const {
    return stringMember(member(i, "String"), "sval");
  }

 private:
  static bool parseString(char* s, std::size_t n, std::size_t& p, std::string_view& out);
  std::vector<JsonNode> nodes_;
};

// ---------------------------------------------------------------------------
// Small helpers shared by the analyses.

[[nodiscard]] bool equalsIgnoreCase(std::string_view a, std::string_view b);
[[nodiscard]] std::string_view trim(std::string_view s);

// EXPLAIN's options say ANALYZE (the statement runs). `body` is the ExplainStmt.
[[nodiscard]] bool explainAnalyze(const JsonDoc& doc, std::uint32_t body);

// Owns a pg_query_parse() result.
struct ParseResultGuard {
  explicit ParseResultGuard(PgQueryParseResult r) : result(r) {}
  PgQueryParseResult result;
  ~ParseResultGuard() { pg_query_free_parse_result(result); }
  ParseResultGuard(const ParseResultGuard&) = delete;
  ParseResultGuard& operator=(const ParseResultGuard&) = delete;
};

}  // namespace pghandoff::protocol::sqljson
