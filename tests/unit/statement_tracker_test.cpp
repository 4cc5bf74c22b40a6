#include "proxy/statement_tracker.h"

#include <gtest/gtest.h>

namespace pghandoff::proxy {
namespace {

using K = protocol::StatementKind;

TEST(StatementTracker, UnnamedStatementAndPortal) {
  StatementTracker t;
  t.onParse("", K::kRead);
  t.onBind("", "");
  EXPECT_EQ(t.onExecute(""), K::kRead);
  t.onParse("", K::kWrite);
  EXPECT_EQ(t.onExecute(""), K::kRead);  // the portal was bound before
  t.onBind("", "");
  EXPECT_EQ(t.onExecute(""), K::kWrite);
}

TEST(StatementTracker, NamedStatementsAndPortals) {
  StatementTracker t;
  t.onParse("P0_1", K::kRead);
  t.onParse("P0_2", K::kWrite);
  t.onBind("c1", "P0_2");
  t.onBind("", "P0_1");
  EXPECT_EQ(t.onExecute("c1"), K::kWrite);
  EXPECT_EQ(t.onExecute(""), K::kRead);
  EXPECT_EQ(t.namedCount(), 2u);
  t.onClose('S', "P0_1");
  t.onBind("", "P0_1");
  EXPECT_EQ(t.onExecute(""), K::kUnknown);  // closed statement: unknown (treated as write)
  t.onClose('P', "c1");
  EXPECT_EQ(t.onExecute("c1"), K::kUnknown);
  t.forgetStatements();
  EXPECT_EQ(t.namedCount(), 0u);
}

TEST(StatementTracker, UnseenStatementIsUnknown) {
  StatementTracker t;
  t.onBind("", "from_sql_prepare");
  EXPECT_EQ(t.onExecute(""), K::kUnknown);
}

}  // namespace
}  // namespace pghandoff::proxy
