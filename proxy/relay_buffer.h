// The receive buffer of one relay direction. Frames are scanned in place and
// forwarded as one contiguous run per read (one write per read, never one
// per message). A message whose body the proxy does not need is streamed:
// its bytes are forwarded as they arrive, so a 1 GiB DataRow never needs
// 1 GiB of memory. A message whose body is needed (ReadyForQuery, ...) is
// collected whole; its length was checked against the limit before the
// buffer grows, and the buffer grows only as bytes arrive.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "protocol/frame.h"
#include "proxy/asio.h"

namespace pghandoff::proxy {

class RelayBuffer {
 public:
  static constexpr std::size_t kInitial = 16 * 1024;

  RelayBuffer() : data_(kInitial) {}

  // Room to read into; compacts or grows as needed.
  asio::mutable_buffer freeSpace() {
    if (end_ == data_.size()) {
      if (start_ > 0) {
        std::memmove(data_.data(), data_.data() + start_, end_ - start_);
        pos_ -= start_;
        end_ -= start_;
        start_ = 0;
      }
      if (end_ == data_.size()) {
        // A needed body larger than the buffer (its size was validated
        // against the limit before anything grew) or a large startup-phase
        // message: double, but never beyond the message being collected.
        std::size_t next = data_.size() * 2;
        if (want_ > data_.size()) next = std::min(next, want_);
        data_.resize(next);
      }
    }
    return asio::buffer(data_.data() + end_, data_.size() - end_);
  }
  void commit(std::size_t n) { end_ += n; }

  // Bytes not yet scanned.
  [[nodiscard]] protocol::Bytes unscanned() const { return {data_.data() + pos_, end_ - pos_}; }
  // Everything received and not yet consumed (startup phase helpers).
  [[nodiscard]] protocol::Bytes pending() const { return {data_.data() + start_, end_ - start_}; }
  [[nodiscard]] std::size_t pendingSize() const { return end_ - start_; }

  // Scanned bytes ready to forward: [start_, pos_).
  [[nodiscard]] asio::const_buffer ready() const {
    return asio::buffer(data_.data() + start_, pos_ - start_);
  }
  [[nodiscard]] bool hasReady() const { return pos_ > start_; }
  void consumeReady() {
    start_ = pos_;
    if (start_ == end_) {
      start_ = pos_ = end_ = 0;
      if (data_.size() > 4 * kInitial) {
        data_.resize(kInitial);
        data_.shrink_to_fit();
      }
    }
  }
  // Drops n bytes from the front (startup packets the proxy consumes).
  void consume(std::size_t n) {
    start_ += n;
    if (pos_ < start_) pos_ = start_;
    consumeReady();
  }

  // Is a streamed message only partly forwarded?
  [[nodiscard]] bool midMessage() const { return streamRemaining_ > 0; }

  enum class ScanStatus : std::uint8_t { kNeedMore, kStop, kError };
  struct ScanResult {
    ScanStatus status;
    protocol::FrameHeader header;  // the offending header on kError
  };

  // Scans frames. parse(Bytes) -> FrameHeader; needsBody(char) -> bool;
  // onFrame(const FrameHeader&, Bytes body, bool whole) -> bool (false stops
  // the scan after this frame, e.g. Terminate). Streamed frames are reported
  // once, when their header arrives, with whole == false and `body` holding
  // only the part of the body received so far.
  template <typename Parse, typename NeedsBody, typename OnFrame>
  ScanResult scan(Parse&& parse, NeedsBody&& needsBody, OnFrame&& onFrame) {
    while (pos_ < end_) {
      if (streamRemaining_ > 0) {
        std::size_t n = std::min(streamRemaining_, end_ - pos_);
        pos_ += n;
        streamRemaining_ -= n;
        continue;
      }
      protocol::FrameHeader h = parse(unscanned());
      if (h.status == protocol::FrameStatus::kNeedMore) break;
      if (h.status != protocol::FrameStatus::kOk) return {ScanStatus::kError, h};
      std::size_t avail = end_ - pos_;
      if (avail >= h.total()) {
        protocol::Bytes body(data_.data() + pos_ + 5, h.bodySize());
        pos_ += h.total();
        if (!onFrame(h, body, true)) return {ScanStatus::kStop, h};
        continue;
      }
      if (needsBody(h.type)) {
        want_ = h.total();
        break;
      }
      // Streamed: the callback sees the part of the body that has arrived
      // (enough for the names at the start of a Bind, say).
      protocol::Bytes prefix(data_.data() + pos_ + 5, avail - 5);
      pos_ = end_;
      streamRemaining_ = h.total() - avail;
      if (!onFrame(h, prefix, false)) return {ScanStatus::kStop, h};
    }
    return {ScanStatus::kNeedMore, {}};
  }

 private:
  std::vector<std::uint8_t> data_;
  std::size_t start_ = 0;  // first byte not yet forwarded
  std::size_t pos_ = 0;    // first byte not yet scanned
  std::size_t end_ = 0;    // end of received bytes
  std::size_t want_ = 0;
  std::size_t streamRemaining_ = 0;
};

}  // namespace pghandoff::proxy
