#include "protocol/frame.h"

namespace pghandoff::protocol {

const char* toString(FrameStatus s) {
  switch (s) {
    case FrameStatus::kNeedMore:
      return "need more";
    case FrameStatus::kOk:
      return "ok";
    case FrameStatus::kBadType:
      return "invalid message type";
    case FrameStatus::kBadLength:
      return "invalid message length";
    case FrameStatus::kTooLarge:
      return "message too large";
  }
  return "?";
}

bool isFrontendType(char t) {
  switch (t) {
    case 'B':
    case 'C':
    case 'd':
    case 'c':
    case 'f':
    case 'D':
    case 'E':
    case 'H':
    case 'F':
    case 'P':
    case 'p':
    case 'Q':
    case 'S':
    case 'X':
      return true;
    default:
      return false;
  }
}

bool isBackendType(char t) {
  switch (t) {
    case 'R':
    case 'K':
    case '2':
    case '3':
    case 'C':
    case 'd':
    case 'c':
    case 'G':
    case 'H':
    case 'W':
    case 'D':
    case 'I':
    case 'E':
    case 'V':
    case 'n':
    case 'N':
    case 'A':
    case 't':
    case 'S':
    case '1':
    case 's':
    case 'T':
    case 'Z':
    case 'v':
      return true;
    default:
      return false;
  }
}

namespace {

std::uint32_t readLength(Bytes in) {
  return (std::uint32_t{in[1]} << 24) | (std::uint32_t{in[2]} << 16) | (std::uint32_t{in[3]} << 8) |
         std::uint32_t{in[4]};
}

// Frontend messages whose body is always short (postgres.c uses
// PQ_SMALL_MESSAGE_LIMIT for exactly these).
bool isSmallFrontend(char t) {
  switch (t) {
    case 'S':
    case 'H':
    case 'X':
    case 'E':
    case 'D':
    case 'C':
    case 'c':
    case 'f':
      return true;
    default:
      return false;
  }
}

// libpq's VALID_LONG_MESSAGE_TYPE: every other backend message is short.
bool isLongBackend(char t) {
  switch (t) {
    case 'T':
    case 'D':
    case 'd':
    case 'V':
    case 'E':
    case 'N':
    case 'A':
      return true;
    default:
      return false;
  }
}

// One header check for both directions: the type first, then the length
// against the per-type limit (`smallLimit` for types that are always short),
// then against the configured and the hard maximum.
FrameHeader parseHeader(Bytes in, std::uint32_t maxLength, bool (*validType)(char),
                        bool (*isSmall)(char), std::uint32_t smallLimit) {
  FrameHeader h;
  if (in.empty()) return h;
  h.type = static_cast<char>(in[0]);
  if (!validType(h.type)) {
    h.status = FrameStatus::kBadType;
    return h;
  }
  if (in.size() < 5) return h;
  h.length = readLength(in);
  if (h.length < 4 || (isSmall(h.type) && h.length > smallLimit)) {
    h.status = FrameStatus::kBadLength;
  } else if (h.length > maxLength || h.length > kHardMessageLimit) {
    h.status = FrameStatus::kTooLarge;
  } else {
    h.status = FrameStatus::kOk;
  }
  return h;
}

bool isShortBackend(char t) {
  return !isLongBackend(t);
}

}  // namespace

FrameHeader parseFrontendHeader(Bytes in, std::uint32_t maxLength) {
  return parseHeader(in, maxLength, isFrontendType, isSmallFrontend, kSmallFrontendLimit);
}

FrameHeader parseBackendHeader(Bytes in, std::uint32_t maxLength) {
  return parseHeader(in, maxLength, isBackendType, isShortBackend, kSmallBackendLimit);
}

StartupHeader parseStartupHeader(Bytes in) {
  StartupHeader h;
  if (in.size() < 4) return h;
  h.length = (std::uint32_t{in[0]} << 24) | (std::uint32_t{in[1]} << 16) |
             (std::uint32_t{in[2]} << 8) | std::uint32_t{in[3]};
  // Checked before the code is even read: B3/B4 must close at once.
  if (h.length < 8) {
    h.status = FrameStatus::kBadLength;
    return h;
  }
  if (h.length > kStartupLimit) {
    h.status = FrameStatus::kTooLarge;
    return h;
  }
  if (in.size() < 8) return h;
  h.code = static_cast<std::int32_t>((std::uint32_t{in[4]} << 24) | (std::uint32_t{in[5]} << 16) |
                                     (std::uint32_t{in[6]} << 8) | std::uint32_t{in[7]});
  h.status = FrameStatus::kOk;
  return h;
}

}  // namespace pghandoff::protocol
