#include "proxy/metrics.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace pghandoff::proxy {
namespace {

using labels::Side;
using namespace std::chrono_literals;

// The lines of one metric, from its "# HELP" to the next metric's "# HELP".
std::string block(const std::string& text, const std::string& name) {
  const std::string start = "# HELP " + name + " ";
  auto b = text.find(start);
  if (b == std::string::npos) return "<missing " + name + ">";
  auto e = text.find("# HELP ", b + start.size());
  return text.substr(b, e == std::string::npos ? std::string::npos : e - b);
}

bool isNameChar(char c) {
  return (c >= 'a' && c <= 'z') || c == '_';
}

// One sample line of the text format: name{label="value",...} value
bool wellFormedSample(std::string_view line) {
  if (!line.starts_with("pghandoff_")) return false;
  std::size_t i = 0;
  while (i < line.size() && isNameChar(line[i])) ++i;
  if (i < line.size() && line[i] == '{') {
    ++i;
    for (;;) {
      std::size_t start = i;
      while (i < line.size() && isNameChar(line[i])) ++i;
      if (i == start || line.substr(i, 2) != "=\"") return false;
      i += 2;
      while (i < line.size() && line[i] != '"') {
        if (line[i] == '\\') {
          if (i + 1 >= line.size() ||
              std::string_view("\\\"n").find(line[i + 1]) == std::string_view::npos) {
            return false;
          }
          ++i;
        }
        ++i;
      }
      if (i >= line.size()) return false;
      ++i;  // closing quote
      if (i < line.size() && line[i] == ',') {
        ++i;
        continue;
      }
      if (i >= line.size() || line[i] != '}') return false;
      ++i;
      break;
    }
  }
  if (i >= line.size() || line[i] != ' ') return false;
  std::string value(line.substr(i + 1));
  if (value == "+Inf" || value == "-Inf" || value == "NaN") return true;
  char* end = nullptr;
  std::strtod(value.c_str(), &end);
  return !value.empty() && end == value.c_str() + value.size();
}

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override { resetMetricsForTest(); }
  void TearDown() override { resetMetricsForTest(); }
};

TEST_F(MetricsTest, GoldenCountersAndGauges) {
  metrics().queriesTotal(Side::kSource, labels::QueryKind::kRead).inc();
  metrics().queriesTotal(Side::kSource, labels::QueryKind::kRead).inc(2);
  metrics().queriesTotal(Side::kTarget, labels::QueryKind::kWrite).inc();
  metrics().clientConnections().inc(5);
  metrics().clientConnections().dec();
  metrics().mirrorLagSeconds().set(0.25);
  metrics().setCurrentPhase(labels::Phase::kMirror);
  const std::string text = renderMetrics();

  EXPECT_EQ(block(text, "pghandoff_queries_total"),
            "# HELP pghandoff_queries_total Statements executed, per side and kind.\n"
            "# TYPE pghandoff_queries_total counter\n"
            "pghandoff_queries_total{side=\"source\",kind=\"read\"} 3\n"
            "pghandoff_queries_total{side=\"source\",kind=\"write\"} 0\n"
            "pghandoff_queries_total{side=\"target\",kind=\"read\"} 0\n"
            "pghandoff_queries_total{side=\"target\",kind=\"write\"} 1\n");
  EXPECT_EQ(block(text, "pghandoff_client_connections"),
            "# HELP pghandoff_client_connections Client connections currently open.\n"
            "# TYPE pghandoff_client_connections gauge\n"
            "pghandoff_client_connections 4\n");
  EXPECT_EQ(block(text, "pghandoff_mirror_lag_seconds"),
            "# HELP pghandoff_mirror_lag_seconds Age of the oldest transaction not yet applied "
            "to the mirror side.\n"
            "# TYPE pghandoff_mirror_lag_seconds gauge\n"
            "pghandoff_mirror_lag_seconds 0.25\n");
  EXPECT_EQ(block(text, "pghandoff_phase"),
            "# HELP pghandoff_phase Migration phase: 1 for the current phase, 0 for the others.\n"
            "# TYPE pghandoff_phase gauge\n"
            "pghandoff_phase{phase=\"source-only\"} 0\n"
            "pghandoff_phase{phase=\"seeding\"} 0\n"
            "pghandoff_phase{phase=\"mirror\"} 1\n"
            "pghandoff_phase{phase=\"mirror-read-target\"} 0\n"
            "pghandoff_phase{phase=\"reverse-mirror\"} 0\n"
            "pghandoff_phase{phase=\"target-only\"} 0\n");
  EXPECT_EQ(block(text, "pghandoff_build_info"),
            "# HELP pghandoff_build_info pghandoff build information; always 1.\n"
            "# TYPE pghandoff_build_info gauge\n"
            "pghandoff_build_info{version=\"" PGHANDOFF_VERSION "\"} 1\n");
  // The first metric comes first, and the exposition ends with a line feed.
  EXPECT_EQ(text.rfind("# HELP pghandoff_build_info ", 0), 0u);
  EXPECT_EQ(text.back(), '\n');
}

TEST_F(MetricsTest, GoldenHistogram) {
  auto& h = metrics().queryDurationSeconds(Side::kTarget);
  h.observe(500us);   // exactly on the first bound: le is inclusive
  h.observe(3ms);     // 0.005 bucket
  h.observe(1500ms);  // 2.5 bucket
  h.observe(20s);     // +Inf only
  const std::string text = renderMetrics();
  const std::string n = "pghandoff_query_duration_seconds";
  std::string want = "# HELP " + n +
                     " Statement duration as seen by the proxy, per side.\n# TYPE " + n +
                     " histogram\n";
  const char* les[] = {"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
                       "0.25",   "0.5",   "1",      "2.5",   "5",    "10",    "+Inf"};
  for (const char* le : les) {
    want += n + "_bucket{side=\"source\",le=\"" + le + "\"} 0\n";
  }
  want += n + "_sum{side=\"source\"} 0\n" + n + "_count{side=\"source\"} 0\n";
  const int cumulative[] = {1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 4};
  for (std::size_t i = 0; i < std::size(les); ++i) {
    want += n + "_bucket{side=\"target\",le=\"" + les[i] + "\"} " + std::to_string(cumulative[i]) +
            "\n";
  }
  want += n + "_sum{side=\"target\"} 21.5035\n" + n + "_count{side=\"target\"} 4\n";
  EXPECT_EQ(block(text, n), want);
}

TEST_F(MetricsTest, HistogramBucketsAreCumulative) {
  auto& h = metrics().phaseFlipPauseSeconds();
  for (int i = 0; i < 100; ++i) h.observeSeconds(0.0001 * i * i);  // 0 .. 0.98 s
  h.observeSeconds(-1.0);                                          // counts as 0
  h.observeSeconds(std::numeric_limits<double>::quiet_NaN());      // counts as 0
  const std::string text = renderMetrics();
  const std::string prefix = "pghandoff_phase_flip_pause_seconds_bucket{le=\"";
  std::uint64_t previous = 0;
  int buckets = 0;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (!line.starts_with(prefix)) continue;
    std::uint64_t v = std::stoull(line.substr(line.rfind(' ') + 1));
    EXPECT_GE(v, previous) << line;
    previous = v;
    ++buckets;
  }
  EXPECT_EQ(buckets, 15);
  EXPECT_EQ(previous, 102u);  // +Inf holds every observation
  EXPECT_NE(text.find("pghandoff_phase_flip_pause_seconds_count 102\n"), std::string::npos);
  // 0.0001 * sum(i^2, i < 100) = 0.0001 * 328350 = 32.835 s.
  EXPECT_NE(text.find("pghandoff_phase_flip_pause_seconds_sum 32.835\n"), std::string::npos);
  EXPECT_NE(text.find("pghandoff_phase_flip_pause_seconds_bucket{le=\"0.0005\"} 5\n"),
            std::string::npos);  // 0, 0, 0.0001, 0.0004 and the two clamped ones
}

TEST(MetricsFormat, LabelEscaping) {
  EXPECT_EQ(escapeLabelValue("plain"), "plain");
  EXPECT_EQ(escapeLabelValue("a\\b"), "a\\\\b");
  EXPECT_EQ(escapeLabelValue("say \"hi\""), "say \\\"hi\\\"");
  EXPECT_EQ(escapeLabelValue("two\nlines"), "two\\nlines");
  EXPECT_EQ(escapeLabelValue("\\\"\n"), "\\\\\\\"\\n");
}

TEST(MetricsFormat, SampleLineChecker) {
  // The checker used below must itself reject broken lines.
  EXPECT_TRUE(wellFormedSample("pghandoff_x{a=\"b\\\"c\",d=\"\"} 1.5"));
  EXPECT_TRUE(wellFormedSample("pghandoff_x +Inf"));
  EXPECT_FALSE(wellFormedSample("pghandoff_x{a=\"b\"} "));
  EXPECT_FALSE(wellFormedSample("pghandoff_x{a=\"b\"c\"} 1"));
  EXPECT_FALSE(wellFormedSample("pghandoff_x{a=b} 1"));
  EXPECT_FALSE(wellFormedSample("pghandoff_x 1x"));
  EXPECT_FALSE(wellFormedSample("other_x 1"));
}

TEST(MetricsFormat, SampleValues) {
  EXPECT_EQ(formatSampleValue(0.0), "0");
  EXPECT_EQ(formatSampleValue(1.5), "1.5");
  EXPECT_EQ(formatSampleValue(0.0005), "0.0005");
  EXPECT_EQ(formatSampleValue(-2.0), "-2");
  EXPECT_EQ(formatSampleValue(1e-9), "1e-09");
  EXPECT_EQ(formatSampleValue(1e20), "1e+20");
  EXPECT_EQ(formatSampleValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(formatSampleValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(formatSampleValue(std::numeric_limits<double>::quiet_NaN()), "NaN");
}

TEST(MetricsLabels, SqlStateAllowList) {
  EXPECT_EQ(sqlStateLabel("08P01"), labels::SqlState::k08P01);
  EXPECT_EQ(sqlStateLabel("57014"), labels::SqlState::k57014);
  EXPECT_EQ(sqlStateLabel("40001"), labels::SqlState::k40001);
  EXPECT_EQ(sqlStateLabel("23505"), labels::SqlState::kOther);  // a server's, not ours
  EXPECT_EQ(sqlStateLabel(""), labels::SqlState::kOther);
  EXPECT_EQ(sqlStateLabel("08P01x"), labels::SqlState::kOther);
  EXPECT_EQ(sqlStateLabel("other"), labels::SqlState::kOther);
}

TEST(MetricsLabels, PhaseNames) {
  EXPECT_EQ(phaseName(labels::Phase::kSourceOnly), "source-only");
  EXPECT_EQ(phaseName(labels::Phase::kTargetOnly), "target-only");
  EXPECT_EQ(phaseFromName("mirror-read-target"), labels::Phase::kMirrorReadTarget);
  EXPECT_EQ(phaseFromName("Mirror"), std::nullopt);
  EXPECT_EQ(phaseFromName(""), std::nullopt);
}

TEST_F(MetricsTest, ClientErrorsListEveryAllowedCode) {
  metrics().clientErrorsTotal(sqlStateLabel("53300")).inc();
  metrics().clientErrorsTotal(sqlStateLabel("23505")).inc();
  metrics().clientErrorsTotal(sqlStateLabel("22012")).inc();
  const std::string b = block(renderMetrics(), "pghandoff_client_errors_total");
  EXPECT_NE(b.find("pghandoff_client_errors_total{sqlstate=\"53300\"} 1\n"), std::string::npos);
  EXPECT_NE(b.find("pghandoff_client_errors_total{sqlstate=\"other\"} 2\n"), std::string::npos);
  EXPECT_NE(b.find("pghandoff_client_errors_total{sqlstate=\"08P01\"} 0\n"), std::string::npos);
  EXPECT_EQ(std::count(b.begin(), b.end(), '\n'), 2 + 17);
}

TEST_F(MetricsTest, EveryCombinationIsPresentAndEveryLineIsWellFormed) {
  const std::string text = renderMetrics();
  // 6x6 phases x 3 results.
  const std::string flips = block(text, "pghandoff_phase_flips_total");
  EXPECT_EQ(std::count(flips.begin(), flips.end(), '\n'), 2 + 108);
  EXPECT_NE(flips.find("pghandoff_phase_flips_total{from=\"target-only\",to=\"mirror\",result="
                       "\"refused\"} 0\n"),
            std::string::npos);

  std::istringstream in(text);
  std::string line;
  int types = 0;
  while (std::getline(in, line)) {
    if (line.rfind("# TYPE", 0) == 0) {
      ++types;
      EXPECT_EQ(line.ends_with(" counter"), line.find("_total ") != std::string::npos)
          << "counters, and only counters, end in _total: " << line;
    }
    const bool comment =
        (line.starts_with("# HELP pghandoff_") || line.starts_with("# TYPE pghandoff_")) &&
        line.find(' ', 17) != std::string::npos;
    EXPECT_TRUE(comment || wellFormedSample(line)) << line;
  }
  EXPECT_EQ(types, 20);
}

TEST_F(MetricsTest, ConcurrentIncrementsSumExactly) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 100'000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t] {
      auto& c = metrics().queriesTotal(t % 2 == 0 ? Side::kSource : Side::kTarget,
                                       labels::QueryKind::kWrite);
      auto& all = metrics().clientConnectionsTotal();
      auto& g = metrics().serverConnections(Side::kSource);
      auto& h = metrics().queryDurationSeconds(Side::kSource);
      for (int i = 0; i < kPerThread; ++i) {
        c.inc();
        all.inc();
        g.inc();
        g.dec();
        h.observe(1ms);
      }
    });
  }
  // Scrapes running concurrently must not disturb the counts.
  for (int i = 0; i < 20; ++i) EXPECT_FALSE(renderMetrics().empty());
  for (auto& t : threads) t.join();
  EXPECT_EQ(metrics().clientConnectionsTotal().value(), std::uint64_t{kThreads * kPerThread});
  EXPECT_EQ(metrics().queriesTotal(Side::kSource, labels::QueryKind::kWrite).value(),
            std::uint64_t{2 * kPerThread});
  EXPECT_EQ(metrics().queriesTotal(Side::kTarget, labels::QueryKind::kWrite).value(),
            std::uint64_t{2 * kPerThread});
  EXPECT_EQ(metrics().serverConnections(Side::kSource).value(), 0);
  const auto& h = metrics().queryDurationSeconds(Side::kSource);
  EXPECT_EQ(h.bucket(1), std::uint64_t{kThreads * kPerThread});  // le="0.001"
  EXPECT_EQ(h.sumNanos(), std::uint64_t{kThreads * kPerThread} * 1'000'000u);
}

TEST_F(MetricsTest, ResetZeroesEverythingButBuildInfo) {
  metrics().internalBugsTotal().inc();
  metrics().journalBytes().set(4096);
  metrics()
      .phaseFlipsTotal(labels::Phase::kMirror, labels::Phase::kTargetOnly,
                       labels::FlipResult::kRefused)
      .inc();
  resetMetricsForTest();
  EXPECT_EQ(metrics().internalBugsTotal().value(), 0u);
  EXPECT_EQ(metrics().journalBytes().value(), 0);
  EXPECT_EQ(metrics().buildInfo(labels::BuildVersion::kCurrent).value(), 1);
}

}  // namespace
}  // namespace pghandoff::proxy
