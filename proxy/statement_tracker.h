// Which kind of statement each extended-protocol message runs: Parse names a
// statement and its SQL, Bind ties a portal to a statement, Execute runs a
// portal. A session keeps this map so that every Execute (and every simple
// Query) is counted — and, from issue 3 on, routed — by what it does.
// https://www.postgresql.org/docs/15/protocol-flow.html#PROTOCOL-FLOW-EXT-QUERY
#pragma once

#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "protocol/buffer.h"

#include "protocol/sql_classify.h"

namespace pghandoff::proxy {

class StatementTracker {
 public:
  using Kind = protocol::StatementKind;

  // What routing needs of a statement (from its classification).
  struct Info {
    Kind kind = Kind::kUnknown;
    protocol::TxControl tx = protocol::TxControl::kNone;
    bool authoritativeOnly = false;  // cursors, LISTEN/NOTIFY, sequence-only SELECTs
    bool copyFrom = false;
    bool noTransactionBlock = false;
    bool nondeterministic = false;  // now(), random(), gen_random_uuid(), ...
    bool operator==(const Info&) const = default;
  };
  [[nodiscard]] static Info infoOf(const protocol::Classification& c) {
    return Info{c.kind,
                c.statements.size() == 1 ? c.txControl : protocol::TxControl::kNone,
                c.cursor || c.listenNotify || c.authoritativeEffectsOnly,
                c.copyFrom,
                c.noTransactionBlock,
                c.hasNondeterministic};
  }

  // Bounds the maps: a client that never closes its statements or portals
  // (portals die with their transaction on the server, which the proxy does
  // not try to mirror exactly) cannot grow them without limit. Forgotten
  // entries read as unknown, which is treated as a write: safe.
  static constexpr std::size_t kMaxEntries = 10000;

  void onParse(std::string_view statement, Kind kind) { onParse(statement, Info{kind}); }
  void onParse(std::string_view statement, const Info& info) {
    if (statement.empty()) {
      unnamedStatement_ = info;
    } else {
      if (named_.size() >= kMaxEntries) named_.clear();
      named_[std::string(statement)] = info;
    }
  }
  void onBind(std::string_view portal, std::string_view statement) {
    Info k = statementInfo(statement);
    if (portal.empty()) {
      unnamedPortal_ = k;
    } else {
      if (portals_.size() >= kMaxEntries) portals_.clear();
      portals_[std::string(portal)] = k;
    }
  }
  [[nodiscard]] Kind onExecute(std::string_view portal) const { return executeInfo(portal).kind; }
  [[nodiscard]] Info executeInfo(std::string_view portal) const {
    if (portal.empty()) return unnamedPortal_;
    auto it = portals_.find(std::string(portal));
    return it == portals_.end() ? Info{} : it->second;
  }
  // The Parse body (query and parameter types) of a statement whose text
  // computes per-server values: the mirror relay re-parses it with the
  // values pinned. Only such statements are kept (few, and bounded).
  void rememberParse(std::string_view statement, protocol::Bytes body) {
    if (parses_.size() >= kMaxEntries) parses_.clear();
    parses_[std::string(statement)].assign(body.begin(), body.end());
  }
  [[nodiscard]] const std::vector<std::uint8_t>* parseOf(std::string_view statement) const {
    auto it = parses_.find(std::string(statement));
    return it == parses_.end() ? nullptr : &it->second;
  }

  void onClose(char what, std::string_view name) {
    if (what == 'S') parses_.erase(std::string(name));
    if (what == 'S' && !name.empty()) named_.erase(std::string(name));
    if (what == 'P' && !name.empty()) portals_.erase(std::string(name));
  }
  // DISCARD ALL / DEALLOCATE ALL.
  void forgetStatements() { named_.clear(); }

  [[nodiscard]] std::size_t namedCount() const { return named_.size(); }

 private:
  [[nodiscard]] Info statementInfo(std::string_view statement) const {
    if (statement.empty()) return unnamedStatement_;
    auto it = named_.find(std::string(statement));
    // A statement prepared with SQL PREPARE is not seen here: unknown, which
    // every caller treats as a write.
    return it == named_.end() ? Info{} : it->second;
  }

  Info unnamedStatement_;
  Info unnamedPortal_;
  std::unordered_map<std::string, Info> named_;
  std::unordered_map<std::string, Info> portals_;
  std::unordered_map<std::string, std::vector<std::uint8_t>> parses_;
};

}  // namespace pghandoff::proxy
