// Message framing for PostgreSQL protocol 3.0.
// https://www.postgresql.org/docs/15/protocol-overview.html#PROTOCOL-MESSAGE-CONCEPTS
//
// The framer looks only at the 5-byte header (type byte + Int32 length), never
// allocates, never reads past its input, and validates the type before the
// length, and the length before anything is sized.
#pragma once

#include <cstddef>
#include <cstdint>

#include "protocol/buffer.h"

namespace pghandoff::protocol {

enum class FrameStatus : std::uint8_t {
  kNeedMore,   // header incomplete: wait for more bytes
  kOk,         // header valid; `total` bytes make the whole message
  kBadType,    // unknown message type for this direction
  kBadLength,  // length < 4, or a small message type with a long length
  kTooLarge,   // length beyond the configured maximum
};

[[nodiscard]] const char* toString(FrameStatus s);

struct FrameHeader {
  FrameStatus status = FrameStatus::kNeedMore;
  char type = 0;
  std::uint32_t length = 0;  // the wire length: body + the 4 length bytes
  // Bytes of the whole message, type byte included.
  [[nodiscard]] std::size_t total() const { return std::size_t{length} + 1; }
  [[nodiscard]] std::size_t bodySize() const { return length - 4; }
};

// PostgreSQL's own limits (src/backend/tcop/postgres.c PQ_SMALL_MESSAGE_LIMIT,
// libpq's VALID_LONG_MESSAGE_TYPE with 30000 for the rest).
inline constexpr std::uint32_t kSmallFrontendLimit = 10000;
inline constexpr std::uint32_t kSmallBackendLimit = 30000;
inline constexpr std::uint32_t kStartupLimit = 10000;
inline constexpr std::uint32_t kAuthLimit = 65535;
inline constexpr std::uint32_t kHardMessageLimit = 0x3fffffff;  // 1 GiB - 1, MaxAllocSize

// Messages a client sends after startup.
[[nodiscard]] FrameHeader parseFrontendHeader(Bytes in, std::uint32_t maxLength);
// Messages a server sends.
[[nodiscard]] FrameHeader parseBackendHeader(Bytes in, std::uint32_t maxLength);

[[nodiscard]] bool isFrontendType(char t);
[[nodiscard]] bool isBackendType(char t);

// Startup-phase packets have no type byte: Int32 length then Int32 code.
struct StartupHeader {
  FrameStatus status = FrameStatus::kNeedMore;
  std::uint32_t length = 0;
  std::int32_t code = 0;
};
[[nodiscard]] StartupHeader parseStartupHeader(Bytes in);

}  // namespace pghandoff::protocol
