#include "proxy/session_machine.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace pghandoff::proxy {
namespace {

// One step of a table: a frame from the client ('>' prefix) or the server
// ('<' prefix), and the state expected after it.
struct Step {
  std::string frame;  // ">Q", "<ZT", "<G", ...
  SessionState state;
  char tx;
  std::uint32_t pending;
};

void runTable(const std::vector<Step>& steps) {
  SessionMachine m;
  m.startAuthentication();
  m.startConnecting();
  m.ready('I');
  int i = 0;
  for (const auto& s : steps) {
    char type = s.frame[1];
    if (s.frame[0] == '>') {
      (void)m.onClientFrame(type);
    } else {
      std::vector<std::uint8_t> body(s.frame.begin() + 2, s.frame.end());
      EXPECT_EQ(m.onServerFrame(type, body), ServerVerdict::kForward) << "step " << i;
    }
    EXPECT_EQ(m.state(), s.state) << "step " << i << " " << s.frame << " got "
                                  << toString(m.state());
    EXPECT_EQ(m.transactionStatus(), s.tx) << "step " << i;
    EXPECT_EQ(m.pendingReady(), s.pending) << "step " << i;
    ++i;
  }
}

using S = SessionState;

TEST(SessionMachine, SimpleQueryTransaction) {
  runTable({
      {">Q", S::kBusy, 'I', 1},
      {"<C", S::kBusy, 'I', 1},
      {"<ZT", S::kIdle, 'T', 0},
      {">Q", S::kBusy, 'T', 1},
      {"<E", S::kBusy, 'T', 1},
      {"<ZE", S::kIdle, 'E', 0},
      {">Q", S::kBusy, 'E', 1},
      {"<ZI", S::kIdle, 'I', 0},
  });
}

TEST(SessionMachine, ExtendedPipeline) {
  // Parse/Bind/Execute/Sync twice before reading anything.
  runTable({
      {">P", S::kIdle, 'I', 0},
      {">B", S::kIdle, 'I', 0},
      {">E", S::kIdle, 'I', 0},
      {">S", S::kBusy, 'I', 1},
      {">B", S::kBusy, 'I', 1},
      {">E", S::kBusy, 'I', 1},
      {">S", S::kBusy, 'I', 2},
      {"<1", S::kBusy, 'I', 2},
      {"<2", S::kBusy, 'I', 2},
      {"<C", S::kBusy, 'I', 2},
      {"<ZI", S::kBusy, 'I', 1},
      {"<2", S::kBusy, 'I', 1},
      {"<C", S::kBusy, 'I', 1},
      {"<ZI", S::kIdle, 'I', 0},
  });
}

TEST(SessionMachine, CopyInCompletesAndFails) {
  runTable({
      {">Q", S::kBusy, 'I', 1},
      {"<G", S::kCopyIn, 'I', 1},
      {">d", S::kCopyIn, 'I', 1},
      {">c", S::kBusy, 'I', 1},
      {"<C", S::kBusy, 'I', 1},
      {"<ZI", S::kIdle, 'I', 0},
      {">Q", S::kBusy, 'I', 1},
      {"<G", S::kCopyIn, 'I', 1},
      {">f", S::kBusy, 'I', 1},
      {"<E", S::kBusy, 'I', 1},
      {"<ZI", S::kIdle, 'I', 0},
  });
}

TEST(SessionMachine, CopyInRejectedByServerMidStream) {
  runTable({
      {">Q", S::kBusy, 'I', 1},
      {"<G", S::kCopyIn, 'I', 1},
      {">d", S::kCopyIn, 'I', 1},
      {"<E", S::kBusy, 'I', 1},
      {">d", S::kBusy, 'I', 1},  // late CopyData is ignored by the server
      {"<ZI", S::kIdle, 'I', 0},
  });
}

TEST(SessionMachine, CopyOut) {
  runTable({
      {">Q", S::kBusy, 'I', 1},
      {"<H", S::kCopyOut, 'I', 1},
      {"<d", S::kCopyOut, 'I', 1},
      {"<c", S::kBusy, 'I', 1},
      {"<C", S::kBusy, 'I', 1},
      {"<ZI", S::kIdle, 'I', 0},
  });
}

TEST(SessionMachine, MultiStatementQueryHasOneReady) {
  runTable({
      {">Q", S::kBusy, 'I', 1},
      {"<T", S::kBusy, 'I', 1},
      {"<D", S::kBusy, 'I', 1},
      {"<C", S::kBusy, 'I', 1},
      {"<C", S::kBusy, 'I', 1},
      {"<ZI", S::kIdle, 'I', 0},
  });
}

TEST(SessionMachine, UnexpectedReadyIsOutOfSync) {
  SessionMachine m;
  m.ready('I');
  std::vector<std::uint8_t> body{'I'};
  EXPECT_EQ(m.onServerFrame('Z', body), ServerVerdict::kOutOfSync);
  (void)m.onClientFrame('Q');
  std::vector<std::uint8_t> bad{'Q'};
  EXPECT_EQ(m.onServerFrame('Z', bad), ServerVerdict::kOutOfSync);
}

TEST(SessionMachine, TerminateCloses) {
  SessionMachine m;
  m.ready('I');
  EXPECT_EQ(m.onClientFrame('X'), ClientVerdict::kForwardThenClose);
  EXPECT_EQ(m.state(), S::kClosing);
}

TEST(SessionMachine, BusyAndBoundary) {
  SessionMachine m;
  m.ready('I');
  EXPECT_TRUE(m.atTransactionBoundary());
  EXPECT_FALSE(m.serverBusy());
  (void)m.onClientFrame('Q');
  EXPECT_TRUE(m.serverBusy());
  EXPECT_FALSE(m.atTransactionBoundary());
  std::vector<std::uint8_t> t{'T'};
  (void)m.onServerFrame('Z', t);
  EXPECT_FALSE(m.serverBusy());
  EXPECT_FALSE(m.atTransactionBoundary());  // open transaction
}

}  // namespace
}  // namespace pghandoff::proxy
