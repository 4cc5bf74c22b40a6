// Bounded, allocation-free reading and length-back-patching writing of
// PostgreSQL protocol 3.0 wire data.
// https://www.postgresql.org/docs/15/protocol-message-types.html
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pghandoff::protocol {

using Bytes = std::span<const std::uint8_t>;

// A cursor over a byte span with a sticky failure bit: once a read runs past
// the end or finds no terminator, every later read fails too and returns a
// neutral value, so a decoder checks ok() once at the end.
class Reader {
 public:
  explicit Reader(Bytes in) : in_(in) {}

  [[nodiscard]] bool ok() const { return ok_; }
  [[nodiscard]] std::size_t remaining() const { return ok_ ? in_.size() - pos_ : 0; }
  [[nodiscard]] bool atEnd() const { return ok_ && pos_ == in_.size(); }
  [[nodiscard]] std::size_t position() const { return pos_; }

  std::uint8_t byte() {
    if (!need(1)) return 0;
    return in_[pos_++];
  }
  std::int16_t int16() {
    if (!need(2)) return 0;
    auto v = static_cast<std::uint16_t>((in_[pos_] << 8) | in_[pos_ + 1]);
    pos_ += 2;
    return static_cast<std::int16_t>(v);
  }
  std::int32_t int32() {
    if (!need(4)) return 0;
    std::uint32_t v = (std::uint32_t{in_[pos_]} << 24) | (std::uint32_t{in_[pos_ + 1]} << 16) |
                      (std::uint32_t{in_[pos_ + 2]} << 8) | std::uint32_t{in_[pos_ + 3]};
    pos_ += 4;
    return static_cast<std::int32_t>(v);
  }
  // A NUL-terminated string; the view excludes the terminator.
  std::string_view cstring() {
    // An empty span may have a null data(): memchr on it is undefined even
    // with length 0 (found by fuzz_frontend_decoders).
    if (!ok_ || pos_ == in_.size()) {
      ok_ = false;
      return {};
    }
    const void* nul = std::memchr(in_.data() + pos_, 0, in_.size() - pos_);
    if (nul == nullptr) {
      ok_ = false;
      return {};
    }
    auto len =
        static_cast<std::size_t>(static_cast<const std::uint8_t*>(nul) - (in_.data() + pos_));
    std::string_view s(reinterpret_cast<const char*>(in_.data() + pos_), len);
    pos_ += len + 1;
    return s;
  }
  Bytes bytes(std::size_t n) {
    if (!need(n)) return {};
    Bytes b = in_.subspan(pos_, n);
    pos_ += n;
    return b;
  }
  Bytes rest() {
    if (!ok_) return {};
    Bytes b = in_.subspan(pos_);
    pos_ = in_.size();
    return b;
  }
  void fail() { ok_ = false; }

 private:
  bool need(std::size_t n) {
    if (!ok_ || in_.size() - pos_ < n) {
      ok_ = false;
      return false;
    }
    return true;
  }

  Bytes in_;
  std::size_t pos_ = 0;
  bool ok_ = true;
};

// Appends protocol messages to a byte vector. begin() writes the type byte and
// a placeholder length; end() back-patches the length from what was actually
// written, so size and content cannot drift apart.
class Writer {
 public:
  explicit Writer(std::vector<std::uint8_t>& out) : out_(out) {}

  // Typed message ('Q', 'R', ...).
  Writer& begin(char type) {
    out_.push_back(static_cast<std::uint8_t>(type));
    start_ = out_.size();
    int32(0);
    return *this;
  }
  // Untyped message (startup packet, SSLRequest, CancelRequest).
  Writer& beginUntyped() {
    start_ = out_.size();
    int32(0);
    return *this;
  }
  void end() {
    auto len = static_cast<std::uint32_t>(out_.size() - start_);
    out_[start_] = static_cast<std::uint8_t>(len >> 24);
    out_[start_ + 1] = static_cast<std::uint8_t>(len >> 16);
    out_[start_ + 2] = static_cast<std::uint8_t>(len >> 8);
    out_[start_ + 3] = static_cast<std::uint8_t>(len);
  }
  Writer& byte(std::uint8_t v) {
    out_.push_back(v);
    return *this;
  }
  Writer& int16(std::int16_t v) {
    auto u = static_cast<std::uint16_t>(v);
    out_.push_back(static_cast<std::uint8_t>(u >> 8));
    out_.push_back(static_cast<std::uint8_t>(u));
    return *this;
  }
  Writer& int32(std::int32_t v) {
    auto u = static_cast<std::uint32_t>(v);
    out_.push_back(static_cast<std::uint8_t>(u >> 24));
    out_.push_back(static_cast<std::uint8_t>(u >> 16));
    out_.push_back(static_cast<std::uint8_t>(u >> 8));
    out_.push_back(static_cast<std::uint8_t>(u));
    return *this;
  }
  Writer& cstring(std::string_view s) {
    out_.insert(out_.end(), s.begin(), s.end());
    out_.push_back(0);
    return *this;
  }
  Writer& raw(Bytes b) {
    out_.insert(out_.end(), b.begin(), b.end());
    return *this;
  }
  Writer& raw(std::string_view s) {
    out_.insert(out_.end(), s.begin(), s.end());
    return *this;
  }

 private:
  std::vector<std::uint8_t>& out_;
  std::size_t start_ = 0;
};

inline Bytes asBytes(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}
inline std::string_view asString(Bytes b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

}  // namespace pghandoff::protocol
