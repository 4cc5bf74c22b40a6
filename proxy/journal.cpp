#include "proxy/journal.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>
#include <stdexcept>

namespace pghandoff::proxy {

namespace {

constexpr std::string_view kHeader = "PGHJOURNAL2\n";
constexpr std::uint32_t kMaxRecord = 1u << 30;

void put64(std::vector<std::uint8_t>& out, std::uint64_t v) {
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<std::uint8_t>(v >> (i * 8)));
}
void put32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<std::uint8_t>(v >> (i * 8)));
}
void putBytes(std::vector<std::uint8_t>& out, protocol::Bytes b) {
  put32(out, static_cast<std::uint32_t>(b.size()));
  out.insert(out.end(), b.begin(), b.end());
}
void putString(std::vector<std::uint8_t>& out, std::string_view s) {
  putBytes(out, protocol::Bytes(reinterpret_cast<const std::uint8_t*>(s.data()), s.size()));
}

// [u32 length of type+payload][type][payload][u32 crc]
void finishRecord(std::vector<std::uint8_t>& out, std::size_t start) {
  const auto len = static_cast<std::uint32_t>(out.size() - start - 4);
  for (int i = 0; i < 4; ++i) {
    out[start + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(len >> ((3 - i) * 8));
  }
  put32(out, crc32(protocol::Bytes(out.data() + start + 4, len)));
}

std::size_t beginRecord(std::vector<std::uint8_t>& out, char type) {
  const std::size_t start = out.size();
  put32(out, 0);
  out.push_back(static_cast<std::uint8_t>(type));
  return start;
}

struct Cursor {
  protocol::Bytes in;
  std::size_t pos = 0;
  bool ok = true;
  bool need(std::size_t n) {
    if (!ok || in.size() - pos < n) ok = false;
    return ok;
  }
  std::uint64_t u64() {
    if (!need(8)) return 0;
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | in[pos++];
    return v;
  }
  std::uint32_t u32() {
    if (!need(4)) return 0;
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = (v << 8) | in[pos++];
    return v;
  }
  std::uint8_t u8() {
    if (!need(1)) return 0;
    return in[pos++];
  }
  protocol::Bytes bytes() {
    const std::uint32_t n = u32();
    if (!need(n)) return {};
    auto b = in.subspan(pos, n);
    pos += n;
    return b;
  }
  std::string str() {
    auto b = bytes();
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
  }
};

[[noreturn]] void fail(const std::string& what, const std::filesystem::path& file) {
  throw std::runtime_error(what + " " + file.string() + ": " + std::strerror(errno));
}

void syncDir(const std::filesystem::path& file) {
  const int dfd = ::open(file.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

bool writeAll(int fd, const std::uint8_t* p, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

}  // namespace

std::uint32_t crc32(protocol::Bytes data, std::uint32_t crc) {
  static const auto kTable = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (std::uint8_t b : data) crc = kTable[(crc ^ b) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

void encodeJournalHeader(std::vector<std::uint8_t>& out) {
  out.insert(out.end(), kHeader.begin(), kHeader.end());
}

void encodeSessionRecord(std::uint64_t session, const StartupParams& params,
                         std::vector<std::uint8_t>& out) {
  const std::size_t start = beginRecord(out, 'S');
  put64(out, session);
  put32(out, static_cast<std::uint32_t>(params.size()));
  for (const auto& [k, v] : params) {
    putString(out, k);
    putString(out, v);
  }
  finishRecord(out, start);
}

void encodeTxRecord(const JournalTx& tx, std::vector<std::uint8_t>& out) {
  const std::size_t start = beginRecord(out, 'T');
  put64(out, tx.seq);
  put64(out, tx.session);
  put64(out, tx.xid);
  put32(out, tx.readies);
  put32(out, tx.commitReadies);
  put64(out, tx.at);
  out.push_back(tx.implicit ? 1 : 0);
  putBytes(out, tx.bytes);
  putBytes(out, tx.commit);
  finishRecord(out, start);
}

void encodeJournalIdRecord(std::uint64_t id, std::vector<std::uint8_t>& out) {
  const std::size_t start = beginRecord(out, 'I');
  put64(out, id);
  finishRecord(out, start);
}

void encodeOutcomeRecord(std::uint64_t seq, bool committed, std::vector<std::uint8_t>& out) {
  const std::size_t start = beginRecord(out, 'O');
  put64(out, seq);
  out.push_back(committed ? 1 : 0);
  finishRecord(out, start);
}

std::size_t parseJournalRecords(protocol::Bytes data, JournalContents& out) {
  std::size_t pos = 0;
  while (pos < data.size()) {
    if (data.size() - pos < 9) break;  // incomplete
    std::uint32_t len = 0;
    for (int i = 0; i < 4; ++i) len = (len << 8) | data[pos + static_cast<std::size_t>(i)];
    if (len == 0 || len > kMaxRecord) {
      out.torn = true;
      break;
    }
    if (data.size() - pos - 4 < std::size_t{len} + 4) break;  // incomplete
    const protocol::Bytes body = data.subspan(pos + 4, len);
    std::uint32_t crc = 0;
    for (int i = 0; i < 4; ++i)
      crc = (crc << 8) | data[pos + 4 + len + static_cast<std::size_t>(i)];
    if (crc32(body) != crc) {
      out.torn = true;
      break;
    }
    Cursor c{body.subspan(1)};
    switch (static_cast<char>(body[0])) {
      case 'S': {
        const std::uint64_t session = c.u64();
        const std::uint32_t n = c.u32();
        StartupParams params;
        for (std::uint32_t i = 0; i < n && c.ok; ++i) {
          std::string k = c.str();
          std::string v = c.str();
          params.emplace_back(std::move(k), std::move(v));
        }
        if (c.ok) out.sessions[session] = std::move(params);
        break;
      }
      case 'T': {
        JournalTx tx;
        tx.seq = c.u64();
        tx.session = c.u64();
        tx.xid = c.u64();
        tx.readies = c.u32();
        tx.commitReadies = c.u32();
        tx.at = c.u64();
        tx.implicit = c.u8() != 0;
        auto b = c.bytes();
        tx.bytes.assign(b.begin(), b.end());
        auto m = c.bytes();
        tx.commit.assign(m.begin(), m.end());
        if (c.ok) out.txs.push_back(std::move(tx));
        break;
      }
      case 'I': {
        const std::uint64_t id = c.u64();
        if (c.ok) out.id = id;
        break;
      }
      case 'O': {
        const std::uint64_t seq = c.u64();
        const bool committed = c.u8() != 0;
        if (c.ok) out.outcomes[seq] = committed;
        break;
      }
      default:
        c.ok = false;
        break;
    }
    if (!c.ok) {
      out.torn = true;
      break;
    }
    pos += 4 + len + 4;
  }
  return pos;
}

std::optional<JournalContents> parseJournal(protocol::Bytes data) {
  if (data.size() < kHeader.size() ||
      std::memcmp(data.data(), kHeader.data(), kHeader.size()) != 0) {
    return std::nullopt;
  }
  JournalContents out;
  const std::size_t used = parseJournalRecords(data.subspan(kHeader.size()), out);
  out.validBytes = kHeader.size() + used;
  if (out.validBytes < data.size()) out.torn = true;
  return out;
}

std::size_t journalHeaderSize() {
  return kHeader.size();
}

// ---------------------------------------------------------------------------

std::shared_ptr<Journal> Journal::create(const std::filesystem::path& file) {
  std::error_code ec;
  std::filesystem::create_directories(file.parent_path(), ec);
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) fail("cannot create the journal", file);
  std::vector<std::uint8_t> header;
  encodeJournalHeader(header);
  std::random_device rd;
  const std::uint64_t id =
      (std::uint64_t{rd()} << 32 | rd()) ^
      static_cast<std::uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
  encodeJournalIdRecord(id, header);
  if (!writeAll(fd, header.data(), header.size()) || ::fdatasync(fd) != 0) {
    ::close(fd);
    fail("cannot write the journal", file);
  }
  syncDir(file);
  return std::shared_ptr<Journal>(new Journal(file, fd, header.size(), 1, 1, id));
}

std::shared_ptr<Journal> Journal::reopen(const std::filesystem::path& file) {
  const int fd = ::open(file.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) fail("cannot open the journal", file);
  std::vector<std::uint8_t> data;
  std::array<std::uint8_t, 1 << 16> buf{};
  while (true) {
    const ssize_t r = ::read(fd, buf.data(), buf.size());
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      ::close(fd);
      fail("cannot read the journal", file);
    }
    if (r == 0) break;
    data.insert(data.end(), buf.begin(), buf.begin() + r);
  }
  auto contents = parseJournal(data);
  if (!contents) {
    ::close(fd);
    throw std::runtime_error(file.string() + " is not a pghandoff journal");
  }
  if (contents->torn) {
    spdlog::warn("journal {}: {} bytes after the last whole record cut off (a crash mid-write)",
                 file.string(), data.size() - contents->validBytes);
    if (::ftruncate(fd, static_cast<off_t>(contents->validBytes)) != 0) {
      ::close(fd);
      fail("cannot truncate the journal", file);
    }
  }
  if (::lseek(fd, static_cast<off_t>(contents->validBytes), SEEK_SET) < 0) {
    ::close(fd);
    fail("cannot seek in the journal", file);
  }
  std::uint64_t seq = 0, session = 0;
  for (const auto& tx : contents->txs) seq = std::max(seq, tx.seq);
  for (const auto& s : contents->sessions) session = std::max(session, s.first);
  auto j = std::shared_ptr<Journal>(
      new Journal(file, fd, contents->validBytes, seq + 1, session + 1, contents->id));
  j->txCount_ = contents->txs.size();
  return j;
}

Journal::Journal(std::filesystem::path file, int fd, std::uint64_t size, std::uint64_t nextSeq,
                 std::uint64_t nextSession, std::uint64_t id)
    : file_(std::move(file)), id_(id), fd_(fd), nextSeq_(nextSeq), nextSession_(nextSession) {
  durable_ = size;
  writer_ = std::thread([this] { writerLoop(); });
}

Journal::~Journal() {
  close();
  if (fd_ >= 0) ::close(fd_);
}

void Journal::close() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
}

std::uint64_t Journal::openSession(const StartupParams& params) {
  std::lock_guard lock(mu_);
  const std::uint64_t id = nextSession_++;
  encodeSessionRecord(id, params, pending_);
  return id;
}

void Journal::outcome(std::uint64_t seq, bool committed) {
  {
    std::lock_guard lock(mu_);
    encodeOutcomeRecord(seq, committed, pending_);
  }
  cv_.notify_one();
}

awaitable<std::uint64_t> Journal::commit(JournalTx tx) {
  auto ex = co_await asio::this_coro::executor;
  auto waiter = std::make_shared<Waiter>();
  waiter->timer = std::make_shared<asio::steady_timer>(ex);
  waiter->timer->expires_at(asio::steady_timer::time_point::max());
  {
    std::lock_guard lock(mu_);
    if (stopping_ || failed_) co_return 0;
    tx.seq = nextSeq_++;
    encodeTxRecord(tx, pending_);
    waiters_.push_back(waiter);
  }
  cv_.notify_one();
  // The writer wakes the timer through this executor's queue, which runs
  // only once this coroutine waits: no wake-up is missed.
  if (!waiter->done.load()) {
    error_code ec;
    co_await waiter->timer->async_wait(asio::redirect_error(kUseAwaitable, ec));
  }
  co_return waiter->ok ? tx.seq : 0;
}

void Journal::writerLoop() {
  std::vector<std::uint8_t> batch;
  std::vector<std::shared_ptr<Waiter>> waiters;
  while (true) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !pending_.empty(); });
      if (pending_.empty() && stopping_) return;
      batch.swap(pending_);
      waiters.swap(waiters_);
    }
    bool ok = !failed_;
    if (ok) {
      ok = writeAll(fd_, batch.data(), batch.size()) && ::fdatasync(fd_) == 0;
      if (!ok) {
        spdlog::error("journal {}: write failed: {}; the seed must be run again", file_.string(),
                      std::strerror(errno));
        failed_ = true;
      }
    }
    if (ok) {
      durable_ += batch.size();
      txCount_ += waiters.size();
    }
    for (auto& w : waiters) {
      w->ok = ok;
      w->done = true;
      asio::post(w->timer->get_executor(), [t = w->timer] { t->cancel(); });
    }
    batch.clear();
    waiters.clear();
  }
}

}  // namespace pghandoff::proxy
