// Shared by the fuzz targets: the invariant check and exact-size input copies.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>

#include "protocol/buffer.h"

// Fails the same way under libFuzzer and in the g++ corpus replay.
#define FUZZ_REQUIRE(cond) \
  do {                     \
    if (!(cond)) {         \
      __builtin_trap();    \
    }                      \
  } while (false)

namespace pghandoff::test {

// An exact-size heap copy, so ASan reports any read past its end. An empty
// copy is handed out as a span with a null data(), the hardest case for a
// decoder (memchr/memcpy on null are undefined even for length 0; that bug in
// Reader::cstring() was found this way — see corpus regression_* files).
class ExactCopy {
 public:
  explicit ExactCopy(protocol::Bytes b) : data_(new std::uint8_t[b.size()]), size_(b.size()) {
    std::copy(b.begin(), b.end(), data_.get());
  }
  [[nodiscard]] protocol::Bytes bytes() const {
    if (size_ == 0) return {};
    return {data_.get(), size_};
  }

 private:
  std::unique_ptr<std::uint8_t[]> data_;
  std::size_t size_;
};

inline std::uint32_t bigEndian32(protocol::Bytes b) {
  return (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) | (std::uint32_t{b[2]} << 8) |
         std::uint32_t{b[3]};
}

}  // namespace pghandoff::test
