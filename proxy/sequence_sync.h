// Sequences at the flips that move authority (SPEC §2 "same generated ids";
// RELIABILITY F25). While both servers are written, only the authoritative
// side's sequences advance: the values an INSERT takes from them are fetched
// there and written into both sides' text (proxy/insert_pin.h), and a SELECT
// of nextval()/setval() alone runs there. When the other side becomes
// authoritative (mirror-read-target -> reverse-mirror or target-only, and the
// rollbacks back to the source), the flip — with every transaction drained —
// sets each of its sequences to the old authoritative side's position before
// the first new transaction starts; a sequence missing there abandons the flip.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "proxy/asio.h"
#include "proxy/upstream.h"

namespace pghandoff::proxy {

struct QueryRows {
  std::vector<std::vector<std::optional<std::string>>> rows;
  std::optional<std::string> error;  // the server's message (or "connection lost")
};

// Runs one simple Query on a connection that is idle, up to its ReadyForQuery.
[[nodiscard]] awaitable<QueryRows> simpleQuery(ServerConnection& conn, std::string sql);

// Copies every sequence's position from `from` to `to`; the error in words, or
// nullopt. `synced` counts the sequences set.
[[nodiscard]] awaitable<std::optional<std::string>> syncSequences(ServerConnection& from,
                                                                  ServerConnection& to,
                                                                  std::size_t& synced);

// The statement that sets `to`'s sequences from `from`'s rows (name, value,
// is_called) as read by kSequencePositions; empty when there are none.
[[nodiscard]] std::string setvalStatement(
    const std::vector<std::vector<std::optional<std::string>>>& rows);

// Every sequence this user can read, with its position.
inline constexpr const char* kSequencePositions =
    "SELECT pg_catalog.format('%I.%I', schemaname, sequencename), "
    "COALESCE(last_value, start_value), last_value IS NOT NULL "
    "FROM pg_catalog.pg_sequences WHERE schemaname NOT LIKE 'pg\\_temp\\_%' AND "
    "pg_catalog.has_sequence_privilege(pg_catalog.format('%I.%I', schemaname, sequencename), "
    "'SELECT') ORDER BY 1";

}  // namespace pghandoff::proxy
