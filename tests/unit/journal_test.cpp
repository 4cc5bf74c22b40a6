// The catch-up journal's format (proxy/journal.h) and the snapshot rule the
// replay decides by (proxy/seed.h).
#include <gtest/gtest.h>

#include <filesystem>

#include "proxy/journal.h"
#include "proxy/seed.h"

namespace pghandoff::proxy {
namespace {

JournalTx sample(std::uint64_t seq, std::uint64_t xid) {
  JournalTx tx;
  tx.seq = seq;
  tx.session = 3;
  tx.xid = xid;
  tx.readies = 2;
  tx.commitReadies = 1;
  tx.at = 1700000000123456 + seq;
  tx.implicit = seq % 2 == 0;
  tx.bytes = {'Q', 0, 0, 0, 10, 'B', 'E', 'G', 'I', 'N', 0};
  tx.commit = {'Q', 0, 0, 0, 11, 'C', 'O', 'M', 'M', 'I', 'T', 0};
  return tx;
}

std::vector<std::uint8_t> sampleJournal() {
  std::vector<std::uint8_t> out;
  encodeJournalHeader(out);
  encodeSessionRecord(3, {{"application_name", "app"}, {"DateStyle", "ISO, DMY"}}, out);
  encodeTxRecord(sample(1, 750), out);
  encodeOutcomeRecord(1, true, out);
  encodeTxRecord(sample(2, 751), out);
  encodeOutcomeRecord(2, false, out);
  return out;
}

TEST(Journal, RecordsRoundTrip) {
  const auto data = sampleJournal();
  auto j = parseJournal(data);
  ASSERT_TRUE(j);
  EXPECT_FALSE(j->torn);
  EXPECT_EQ(j->validBytes, data.size());
  ASSERT_EQ(j->sessions.size(), 1u);
  EXPECT_EQ(j->sessions.at(3)[1].second, "ISO, DMY");
  ASSERT_EQ(j->txs.size(), 2u);
  EXPECT_EQ(j->txs[0].xid, 750u);
  EXPECT_EQ(j->txs[1].seq, 2u);
  EXPECT_EQ(j->txs[0].bytes, sample(1, 750).bytes);
  EXPECT_EQ(j->txs[0].commit, sample(1, 750).commit);
  EXPECT_EQ(j->txs[0].readies, 2u);
  EXPECT_EQ(j->txs[0].commitReadies, 1u);
  EXPECT_EQ(j->txs[0].at, 1700000000123457u);
  EXPECT_FALSE(j->txs[0].implicit);
  EXPECT_TRUE(j->txs[1].implicit);
  EXPECT_TRUE(j->outcomes.at(1));
  EXPECT_FALSE(j->outcomes.at(2));
}

// A crash mid-write leaves part of a record: the journal ends at the last
// whole one, at every cut.
TEST(Journal, ATornTailEndsAtTheLastWholeRecord) {
  const auto data = sampleJournal();
  std::vector<std::uint8_t> firstTwo;
  encodeJournalHeader(firstTwo);
  encodeSessionRecord(3, {{"application_name", "app"}, {"DateStyle", "ISO, DMY"}}, firstTwo);
  encodeTxRecord(sample(1, 750), firstTwo);
  for (std::size_t cut = firstTwo.size() + 1; cut < firstTwo.size() + 18;
       ++cut) {  // an outcome record is 18 bytes
    auto j = parseJournal(std::span(data).first(cut));
    ASSERT_TRUE(j);
    EXPECT_TRUE(j->torn) << cut;
    EXPECT_EQ(j->validBytes, firstTwo.size()) << cut;
    EXPECT_EQ(j->txs.size(), 1u) << cut;
  }
  // A flipped bit: the record's checksum catches it.
  auto bad = data;
  bad[firstTwo.size() + 12] ^= 0x40;
  auto j = parseJournal(bad);
  ASSERT_TRUE(j);
  EXPECT_TRUE(j->torn);
  EXPECT_EQ(j->txs.size(), 1u);
  // Not a journal at all.
  const std::vector<std::uint8_t> other = {'h', 'e', 'l', 'l', 'o'};
  EXPECT_FALSE(parseJournal(other));
}

TEST(Journal, Crc32MatchesTheStandardCheckValue) {
  const std::string s = "123456789";
  EXPECT_EQ(crc32(protocol::Bytes(reinterpret_cast<const std::uint8_t*>(s.data()), s.size())),
            0xCBF43926u);
}

// A journal reopened after a crash is appended to after its last whole
// record, with sequence numbers going on.
TEST(Journal, ReopenCutsATornTailAndGoesOn) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("pghandoff-journal-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto file = dir / "journal";
  auto data = sampleJournal();
  data.push_back(0);
  data.push_back(0);
  data.push_back(1);  // a partial record
  {
    FILE* f = std::fopen(file.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    std::fwrite(data.data(), 1, data.size(), f);
    std::fclose(f);
  }
  auto j = Journal::reopen(file);
  EXPECT_EQ(j->durableBytes(), data.size() - 3);
  EXPECT_EQ(j->transactions(), 2u);
  EXPECT_EQ(j->openSession({}), 4u);
  j->outcome(9, true);
  j->close();
  j.reset();
  std::vector<std::uint8_t> back(std::filesystem::file_size(file));
  FILE* f = std::fopen(file.c_str(), "rb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(std::fread(back.data(), 1, back.size(), f), back.size());
  std::fclose(f);
  auto parsed = parseJournal(back);
  ASSERT_TRUE(parsed);
  EXPECT_FALSE(parsed->torn);
  EXPECT_EQ(parsed->sessions.count(4), 1u);
  EXPECT_TRUE(parsed->outcomes.at(9));
  std::filesystem::remove_all(dir);
}

// Each journal has an id of its own (an async mirror's replay position names
// the journal it belongs to), written first and kept when it is reopened.
TEST(Journal, HasAnIdOfItsOwnThatSurvivesAReopen) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("pghandoff-journal-id-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto a = Journal::create(dir / "a");
  auto b = Journal::create(dir / "b");
  EXPECT_NE(a->id(), 0u);
  EXPECT_NE(a->id(), b->id());
  const auto id = a->id();
  a->close();
  a.reset();
  auto again = Journal::reopen(dir / "a");
  EXPECT_EQ(again->id(), id);
  EXPECT_EQ(again->transactions(), 0u);
  again->close();
  b->close();
  std::filesystem::remove_all(dir);
}

TEST(Snapshot, ParsesPgCurrentSnapshot) {
  auto s = parsePgSnapshot("100:105:100,102");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->xmin, 100u);
  EXPECT_EQ(s->xmax, 105u);
  EXPECT_EQ(s->xip, (std::vector<std::uint64_t>{100, 102}));
  auto empty = parsePgSnapshot("1709:1709:");
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->xip.empty());
  EXPECT_FALSE(parsePgSnapshot("1709:1700:"));
  EXPECT_FALSE(parsePgSnapshot("abc"));
  EXPECT_FALSE(parsePgSnapshot("1:2:x"));
}

// pg_visible_in_snapshot: finished before xmin, or below xmax and not
// running — the dump holds those; the journal replays the rest.
TEST(Snapshot, VisibilityFollowsPostgres) {
  auto s = parsePgSnapshot("100:105:100,102");
  ASSERT_TRUE(s);
  EXPECT_TRUE(visibleInSnapshot(*s, 99));
  EXPECT_FALSE(visibleInSnapshot(*s, 100));
  EXPECT_TRUE(visibleInSnapshot(*s, 101));
  EXPECT_FALSE(visibleInSnapshot(*s, 102));
  EXPECT_TRUE(visibleInSnapshot(*s, 104));
  EXPECT_FALSE(visibleInSnapshot(*s, 105));
  EXPECT_FALSE(visibleInSnapshot(*s, 5000));
}

}  // namespace
}  // namespace pghandoff::proxy
