// A small strict JSON reader for tests that check a report's structure
// (pghandoff check --json, verify --json). Header-only: unit tests use it too.
#pragma once

#include <cctype>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pghandoff::test {

struct Json {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  bool boolean = false;
  std::string string;
  std::vector<Json> array;
  // An object's members, in order: keys[i] names values[i]. (Not a vector of
  // pairs: the pair would need Json complete.)
  std::vector<std::string> keys;
  std::vector<Json> values;

  [[nodiscard]] const Json* get(const std::string& key) const {
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] == key) return &values[i];
    }
    return nullptr;
  }
};

class JsonReader {
 public:
  static std::optional<Json> parse(std::string_view in) {
    JsonReader r(in);
    Json v;
    if (!r.value(v, 0)) return std::nullopt;
    r.space();
    if (r.i_ != in.size()) return std::nullopt;
    return v;
  }

 private:
  explicit JsonReader(std::string_view in) : in_(in) {}
  void space() {
    while (i_ < in_.size() &&
           (in_[i_] == ' ' || in_[i_] == '\n' || in_[i_] == '\t' || in_[i_] == '\r')) {
      ++i_;
    }
  }
  bool literal(std::string_view word) {
    if (in_.substr(i_, word.size()) != word) return false;
    i_ += word.size();
    return true;
  }
  bool string(std::string& out) {
    if (i_ >= in_.size() || in_[i_] != '"') return false;
    ++i_;
    while (i_ < in_.size() && in_[i_] != '"') {
      const auto c = static_cast<unsigned char>(in_[i_++]);
      if (c < 0x20) return false;  // control characters must be escaped
      if (c != '\\') {
        out += static_cast<char>(c);
        continue;
      }
      if (i_ >= in_.size()) return false;
      const char e = in_[i_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out += e;
          break;
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'u': {
          if (i_ + 4 > in_.size()) return false;
          const unsigned cp = std::stoul(std::string(in_.substr(i_, 4)), nullptr, 16);
          i_ += 4;
          if (cp >= 0x80) return false;  // the report escapes control characters only
          out += static_cast<char>(cp);
          break;
        }
        default:
          return false;
      }
    }
    if (i_ >= in_.size()) return false;
    ++i_;
    return true;
  }
  bool value(Json& v, int depth) {
    if (depth > 32) return false;
    space();
    if (i_ >= in_.size()) return false;
    const char c = in_[i_];
    if (c == '{') {
      v.kind = Json::Kind::kObject;
      ++i_;
      space();
      if (i_ < in_.size() && in_[i_] == '}') return ++i_, true;
      while (true) {
        space();
        std::string key;
        if (!string(key)) return false;
        space();
        if (i_ >= in_.size() || in_[i_++] != ':') return false;
        Json member;
        if (!value(member, depth + 1)) return false;
        v.keys.push_back(std::move(key));
        v.values.push_back(std::move(member));
        space();
        if (i_ >= in_.size()) return false;
        if (in_[i_] == '}') return ++i_, true;
        if (in_[i_++] != ',') return false;
      }
    }
    if (c == '[') {
      v.kind = Json::Kind::kArray;
      ++i_;
      space();
      if (i_ < in_.size() && in_[i_] == ']') return ++i_, true;
      while (true) {
        Json element;
        if (!value(element, depth + 1)) return false;
        v.array.push_back(std::move(element));
        space();
        if (i_ >= in_.size()) return false;
        if (in_[i_] == ']') return ++i_, true;
        if (in_[i_++] != ',') return false;
      }
    }
    if (c == '"') {
      v.kind = Json::Kind::kString;
      return string(v.string);
    }
    if (literal("true")) {
      v.kind = Json::Kind::kBool;
      v.boolean = true;
      return true;
    }
    if (literal("false")) {
      v.kind = Json::Kind::kBool;
      return true;
    }
    if (literal("null")) return true;
    const std::size_t start = i_;
    while (i_ < in_.size() &&
           (std::isdigit(static_cast<unsigned char>(in_[i_])) != 0 || in_[i_] == '-' ||
            in_[i_] == '.' || in_[i_] == 'e' || in_[i_] == 'E' || in_[i_] == '+')) {
      ++i_;
    }
    v.kind = Json::Kind::kNumber;
    return i_ > start;
  }

  std::string_view in_;
  std::size_t i_ = 0;
};

}  // namespace pghandoff::test
