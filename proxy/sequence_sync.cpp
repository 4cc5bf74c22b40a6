// Sequences at the flips that move authority: see sequence_sync.h.
#include "proxy/sequence_sync.h"

#include "protocol/backend.h"
#include "protocol/error.h"
#include "protocol/frame.h"
#include "protocol/frontend.h"
#include "proxy/insert_pin.h"

namespace pghandoff::proxy {

awaitable<QueryRows> simpleQuery(ServerConnection& conn, std::string sql) {
  QueryRows out;
  std::vector<std::uint8_t> msg;
  protocol::encodeQuery(sql, msg);
  auto [wec, wn] = co_await conn.stream().writeAll(asio::buffer(msg));
  if (wec) {
    out.error = "connection lost";
    co_return out;
  }
  std::vector<std::uint8_t> buf;
  std::size_t at = 0;
  std::vector<std::uint8_t> chunk(16384);
  while (true) {
    // Whole messages in the buffer first.
    while (true) {
      const protocol::Bytes rest(buf.data() + at, buf.size() - at);
      const protocol::FrameHeader h = protocol::parseBackendHeader(rest, 1u << 30);
      if (h.status == protocol::FrameStatus::kNeedMore) break;
      if (h.status != protocol::FrameStatus::kOk) {
        out.error = "invalid message from the server";
        co_return out;
      }
      const protocol::Bytes body = rest.subspan(5, h.bodySize());
      if (h.type == 'D') {
        if (auto row = protocol::decodeDataRowBody(body)) {
          std::vector<std::optional<std::string>> r;
          for (const auto& c : *row)
            r.emplace_back(c ? std::optional<std::string>(*c) : std::nullopt);
          out.rows.push_back(std::move(r));
        }
      } else if (h.type == 'E' && !out.error) {
        auto e = protocol::decodeErrorBody(body);
        out.error = e ? e->message + " (SQLSTATE " + e->code + ")" : std::string("error");
      } else if (h.type == 'Z') {
        co_return out;
      }
      at += h.total();
    }
    buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(at));
    at = 0;
    auto [ec, n] = co_await conn.stream().readSome(asio::buffer(chunk));
    if (ec) {
      out.error = "connection lost";
      co_return out;
    }
    buf.insert(buf.end(), chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(n));
  }
}

std::string setvalStatement(const std::vector<std::vector<std::optional<std::string>>>& rows) {
  std::string values;
  for (const auto& r : rows) {
    if (r.size() != 3 || !r[0] || !r[1] || !r[2]) continue;
    if (!values.empty()) values += ", ";
    values += "(" + sqlLiteral(r[0]) + ", " + sqlLiteral(r[1]) + "::pg_catalog.int8, " +
              (*r[2] == "t" ? "true" : "false") + ")";
  }
  if (values.empty()) return {};
  return "SELECT pg_catalog.setval(v.s::pg_catalog.regclass, v.n, v.c) FROM (VALUES " + values +
         ") AS v(s, n, c)";
}

awaitable<std::optional<std::string>> syncSequences(ServerConnection& from, ServerConnection& to,
                                                    std::size_t& synced) {
  synced = 0;
  QueryRows positions = co_await simpleQuery(from, kSequencePositions);
  if (positions.error) co_return "reading the sequences failed: " + *positions.error;
  const std::string set = setvalStatement(positions.rows);
  if (set.empty()) co_return std::nullopt;
  QueryRows done = co_await simpleQuery(to, set);
  if (done.error) co_return "setting the sequences failed: " + *done.error;
  synced = done.rows.size();
  co_return std::nullopt;
}

}  // namespace pghandoff::proxy
