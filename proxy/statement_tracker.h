// Which kind of statement each extended-protocol message runs: Parse names a
// statement and its SQL, Bind ties a portal to a statement, Execute runs a
// portal. A session keeps this map so that every Execute (and every simple
// Query) is counted — and, from issue 3 on, routed — by what it does.
// https://www.postgresql.org/docs/15/protocol-flow.html#PROTOCOL-FLOW-EXT-QUERY
#pragma once

#include <string>
#include <string_view>
#include <unordered_map>

#include "protocol/sql_classify.h"

namespace pghandoff::proxy {

class StatementTracker {
 public:
  using Kind = protocol::StatementKind;

  // Bounds the maps: a client that never closes its statements or portals
  // (portals die with their transaction on the server, which the proxy does
  // not try to mirror exactly) cannot grow them without limit. Forgotten
  // entries read as unknown, which is treated as a write: safe.
  static constexpr std::size_t kMaxEntries = 10000;

  void onParse(std::string_view statement, Kind kind) {
    if (statement.empty()) {
      unnamedStatement_ = kind;
    } else {
      if (named_.size() >= kMaxEntries) named_.clear();
      named_[std::string(statement)] = kind;
    }
  }
  void onBind(std::string_view portal, std::string_view statement) {
    Kind k = statementKind(statement);
    if (portal.empty()) {
      unnamedPortal_ = k;
    } else {
      if (portals_.size() >= kMaxEntries) portals_.clear();
      portals_[std::string(portal)] = k;
    }
  }
  [[nodiscard]] Kind onExecute(std::string_view portal) const {
    if (portal.empty()) return unnamedPortal_;
    auto it = portals_.find(std::string(portal));
    return it == portals_.end() ? Kind::kUnknown : it->second;
  }
  void onClose(char what, std::string_view name) {
    if (what == 'S' && !name.empty()) named_.erase(std::string(name));
    if (what == 'P' && !name.empty()) portals_.erase(std::string(name));
  }
  // DISCARD ALL / DEALLOCATE ALL.
  void forgetStatements() { named_.clear(); }

  [[nodiscard]] std::size_t namedCount() const { return named_.size(); }

 private:
  [[nodiscard]] Kind statementKind(std::string_view statement) const {
    if (statement.empty()) return unnamedStatement_;
    auto it = named_.find(std::string(statement));
    // A statement prepared with SQL PREPARE is not seen here: unknown, which
    // every caller treats as a write.
    return it == named_.end() ? Kind::kUnknown : it->second;
  }

  Kind unnamedStatement_ = Kind::kUnknown;
  Kind unnamedPortal_ = Kind::kUnknown;
  std::unordered_map<std::string, Kind> named_;
  std::unordered_map<std::string, Kind> portals_;
};

}  // namespace pghandoff::proxy
