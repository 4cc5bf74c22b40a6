// libFuzzer target: the frontend message framer (protocol/frame.h,
// parseFrontendHeader) driven the way the client -> server relay drives it,
// over the client's byte stream after the startup phase (Query, Parse, Bind,
// Sync, CopyData, Terminate, ...). The input layout and the invariants are in
// framer_check.h.
//
// Violations end in __builtin_trap(), so the same file works under libFuzzer
// and in the g++ corpus replay (tests/fuzz/replay), in every build type.
#include <cstddef>
#include <cstdint>

#include "tests/fuzz/framer_check.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pghandoff::test;
  return fuzzFramer<FrontendFraming>(data, size, [](pghandoff::protocol::Bytes) {});
}
