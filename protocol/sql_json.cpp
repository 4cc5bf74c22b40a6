// The flat JSON reader and shared helpers (see sql_json.h).
#include "protocol/sql_json.h"

#include <algorithm>
#include <charconv>

namespace pghandoff::protocol::sqljson {

namespace {

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool readHex4(const char* s, std::size_t n, std::size_t p, std::uint32_t& out) {
  if (p + 4 > n) return false;
  out = 0;
  for (std::size_t i = 0; i < 4; ++i) {
    const int v = hexValue(s[p + i]);
    if (v < 0) return false;
    out = out * 16 + static_cast<std::uint32_t>(v);
  }
  return true;
}

}  // namespace

// `p` is just past the opening quote; on success just past the closing one.
// Output is never longer than input (an escape of 6 or 12 bytes yields at most
// 3 or 4 bytes of UTF-8), so it is written over the input.
bool JsonDoc::parseString(char* s, std::size_t n, std::size_t& p, std::string_view& out) {
  const std::size_t start = p;
  std::size_t w = p;
  while (p < n) {
    const char c = s[p++];
    if (c == '"') {
      out = std::string_view(s + start, w - start);
      return true;
    }
    if (c != '\\') {
      s[w++] = c;
      continue;
    }
    if (p >= n) return false;
    const char e = s[p++];
    switch (e) {
      case '"':
      case '\\':
      case '/':
        s[w++] = e;
        break;
      case 'b':
        s[w++] = '\b';
        break;
      case 'f':
        s[w++] = '\f';
        break;
      case 'n':
        s[w++] = '\n';
        break;
      case 'r':
        s[w++] = '\r';
        break;
      case 't':
        s[w++] = '\t';
        break;
      case 'u': {
        std::uint32_t cp = 0;
        if (!readHex4(s, n, p, cp)) return false;
        p += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          std::uint32_t low = 0;
          if (p + 1 < n && s[p] == '\\' && s[p + 1] == 'u' && readHex4(s, n, p + 2, low) &&
              low >= 0xDC00 && low <= 0xDFFF) {
            p += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          } else {
            cp = 0xFFFD;  // lone surrogate: keep going, names are compared only
          }
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          cp = 0xFFFD;
        }
        if (cp < 0x80) {
          s[w++] = static_cast<char>(cp);
        } else if (cp < 0x800) {
          s[w++] = static_cast<char>(0xC0 | (cp >> 6));
          s[w++] = static_cast<char>(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
          s[w++] = static_cast<char>(0xE0 | (cp >> 12));
          s[w++] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
          s[w++] = static_cast<char>(0x80 | (cp & 0x3F));
        } else {
          s[w++] = static_cast<char>(0xF0 | (cp >> 18));
          s[w++] = static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
          s[w++] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
          s[w++] = static_cast<char>(0x80 | (cp & 0x3F));
        }
        break;
      }
      default:
        return false;
    }
  }
  return false;
}

bool JsonDoc::parse(char* s, std::size_t n) {
  struct Frame {
    std::uint32_t node;
    std::uint32_t last;  // last child so far
  };
  std::vector<Frame> stack;
  nodes_.clear();
  nodes_.reserve(n / 16 + 1);
  std::size_t p = 0;
  auto skipSpace = [&] {
    while (p < n && (s[p] == ' ' || s[p] == '\n' || s[p] == '\r' || s[p] == '\t')) ++p;
  };
  auto literal = [&](std::string_view word) {
    if (n - p < word.size() || std::string_view(s + p, word.size()) != word) return false;
    p += word.size();
    return true;
  };

  while (true) {
    // One value, preceded by its key inside an object.
    skipSpace();
    std::string_view key;
    if (!stack.empty() && nodes_[stack.back().node].type == JsonType::kObject) {
      if (p >= n || s[p] != '"') return false;
      ++p;
      if (!parseString(s, n, p, key)) return false;
      skipSpace();
      if (p >= n || s[p] != ':') return false;
      ++p;
      skipSpace();
    }
    if (p >= n) return false;
    if (nodes_.size() >= kNone - 1) return false;
    const auto idx = static_cast<std::uint32_t>(nodes_.size());
    nodes_.emplace_back();
    nodes_[idx].key = key;
    if (!stack.empty()) {
      Frame& parent = stack.back();
      if (parent.last == kNone) {
        nodes_[parent.node].firstChild = idx;
      } else {
        nodes_[parent.last].next = idx;
      }
      parent.last = idx;
    }
    const char c = s[p];
    bool opened = false;
    if (c == '{' || c == '[') {
      nodes_[idx].type = c == '{' ? JsonType::kObject : JsonType::kArray;
      ++p;
      skipSpace();
      if (p < n && s[p] == (c == '{' ? '}' : ']')) {
        ++p;  // empty container
      } else {
        stack.push_back({idx, kNone});
        opened = true;
      }
    } else if (c == '"') {
      ++p;
      nodes_[idx].type = JsonType::kString;
      if (!parseString(s, n, p, nodes_[idx].text)) return false;
    } else if (c == 't' || c == 'f') {
      nodes_[idx].type = JsonType::kBool;
      nodes_[idx].boolean = c == 't';
      if (!literal(c == 't' ? "true" : "false")) return false;
    } else if (c == 'n') {
      if (!literal("null")) return false;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      const std::size_t start = p;
      while (p < n && (s[p] == '-' || s[p] == '+' || s[p] == '.' || s[p] == 'e' || s[p] == 'E' ||
                       (s[p] >= '0' && s[p] <= '9'))) {
        ++p;
      }
      nodes_[idx].type = JsonType::kNumber;
      nodes_[idx].text = std::string_view(s + start, p - start);
    } else {
      return false;
    }
    if (opened) continue;
    nodes_[idx].end = idx + 1;

    // After a value: a comma (another value follows) or closing brackets.
    while (true) {
      skipSpace();
      if (stack.empty()) return p == n;
      if (p >= n) return false;
      const bool inObject = nodes_[stack.back().node].type == JsonType::kObject;
      if (s[p] == ',') {
        ++p;
        break;
      }
      if (s[p] != (inObject ? '}' : ']')) return false;
      ++p;
      nodes_[stack.back().node].end = static_cast<std::uint32_t>(nodes_.size());
      stack.pop_back();
    }
  }
}

std::optional<std::size_t> JsonDoc::sizeMember(std::uint32_t obj, std::string_view key) const {
  const std::uint32_t m = member(obj, key);
  if (m == kNone || nodes_[m].type != JsonType::kNumber) return std::nullopt;
  const std::string_view t = nodes_[m].text;
  std::size_t value = 0;
  const auto [ptr, ec] = std::from_chars(t.data(), t.data() + t.size(), value);
  if (ec != std::errc{} || ptr != t.data() + t.size()) return std::nullopt;
  return value;
}

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           auto lower = [](char ch) { return ch >= 'A' && ch <= 'Z' ? char(ch - 'A' + 'a') : ch; };
           return lower(x) == lower(y);
         });
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\n')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\n')) {
    s.remove_suffix(1);
  }
  return s;
}

bool explainAnalyze(const JsonDoc& doc, std::uint32_t body) {
  const std::uint32_t options = doc.member(body, "options");
  if (options == kNone) return false;
  for (std::uint32_t o = doc.at(options).firstChild; o != kNone; o = doc.at(o).next) {
    const std::uint32_t def = doc.member(o, "DefElem");
    if (doc.stringMember(def, "defname") != "analyze") continue;
    const std::uint32_t arg = doc.member(def, "arg");
    if (arg == kNone) return true;  // EXPLAIN ANALYZE, EXPLAIN (ANALYZE)
    // defGetBoolean(): true/false/on/off in any case, or 0/1.
    const std::string_view text = doc.stringMember(doc.member(arg, "String"), "sval");
    if (equalsIgnoreCase(text, "false") || equalsIgnoreCase(text, "off")) return false;
    const std::uint32_t integer = doc.member(arg, "Integer");
    if (integer != kNone && doc.member(integer, "ival") == kNone) return false;  // 0
    const std::uint32_t boolean = doc.member(arg, "Boolean");
    if (boolean != kNone && !doc.boolMember(boolean, "boolval")) return false;
    return true;  // anything else: assume it runs
  }
  return false;
}

}  // namespace pghandoff::protocol::sqljson
