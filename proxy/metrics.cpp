#include "proxy/metrics.h"

#include <charconv>
#include <cmath>
#include <limits>
#include <type_traits>

namespace pghandoff::proxy {

namespace detail {
constinit Metrics gMetrics;
}  // namespace detail

std::string_view phaseName(labels::Phase p) noexcept {
  const auto& names = labels::PhaseDim::kValues;
  auto i = static_cast<std::size_t>(p);
  return i < names.size() ? names[i] : std::string_view{};
}

std::optional<labels::Phase> phaseFromName(std::string_view name) noexcept {
  const auto& names = labels::PhaseDim::kValues;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (names[i] == name) return static_cast<labels::Phase>(i);
  }
  return std::nullopt;
}

labels::SqlState sqlStateLabel(std::string_view code) noexcept {
  const auto& names = labels::SqlStateDim::kValues;
  // The last entry is "other", which is not a code.
  for (std::size_t i = 0; i + 1 < names.size(); ++i) {
    if (names[i] == code) return static_cast<labels::SqlState>(i);
  }
  return labels::SqlState::kOther;
}

void Histogram::observeSeconds(double seconds) noexcept {
  // 9.2e9 s keeps the nanosecond count inside int64.
  constexpr double kMaxSeconds = 9.2e9;
  if (!(seconds > 0)) seconds = 0;  // also catches NaN
  if (seconds > kMaxSeconds) seconds = kMaxSeconds;
  observe(std::chrono::nanoseconds(static_cast<std::int64_t>(std::llround(seconds * 1e9))));
}

void Metrics::setCurrentPhase(labels::Phase p) noexcept {
  for (std::size_t i = 0; i < labels::PhaseDim::kValues.size(); ++i) {
    auto each = static_cast<labels::Phase>(i);
    phase_.at(each).set(each == p ? 1 : 0);
  }
}

std::string escapeLabelValue(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string formatSampleValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  // Shortest round-trip digits; plain notation for the magnitudes seconds and bytes have
  // ("0.0005", not "5e-04"), scientific outside it so the text stays short.
  const double mag = std::fabs(v);
  const auto fmt = (mag == 0 || (mag >= 1e-6 && mag < 1e15)) ? std::chars_format::fixed
                                                             : std::chars_format::scientific;
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v, fmt);
  if (ec != std::errc{}) return "NaN";  // cannot happen: at most 15+1+22 characters
  return std::string(buf, end);
}

namespace {

// HELP text escaping: backslash and line feed only (quotes stay as they are).
void appendHelp(std::string& out, std::string_view help) {
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

template <typename Int>
void appendInt(std::string& out, Int v) {
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  (void)ec;  // 32 bytes hold any 64-bit integer
  out.append(buf, end);
}

// Appends `{a="x",b="y"}` for cell index i of a family (row-major, first dimension slowest),
// with an optional extra label (le for histogram buckets). Nothing when there are no labels.
template <typename Fam>
void appendLabels(std::string& out, std::size_t i, std::string_view extraLabel = {},
                  std::string_view extraValue = {}) {
  std::array<std::size_t, Fam::kDims + 1> idx{};
  for (std::size_t d = Fam::kDims; d-- > 0;) {
    idx[d] = i % Fam::kDimInfo[d].count;
    i /= Fam::kDimInfo[d].count;
  }
  if (Fam::kDims == 0 && extraLabel.empty()) return;
  out += '{';
  bool first = true;
  for (std::size_t d = 0; d < Fam::kDims; ++d) {
    if (!first) out += ',';
    first = false;
    out += Fam::kDimInfo[d].label;
    out += "=\"";
    out += escapeLabelValue(Fam::kDimInfo[d].values[idx[d]]);
    out += '"';
  }
  if (!extraLabel.empty()) {
    if (!first) out += ',';
    out += extraLabel;
    out += "=\"";
    out += escapeLabelValue(extraValue);
    out += '"';
  }
  out += '}';
}

template <typename Fam>
void appendFamily(std::string& out, std::string_view name, std::string_view help, const Fam& fam) {
  using Cell = typename Fam::CellType;
  out += "# HELP ";
  out += name;
  out += ' ';
  appendHelp(out, help);
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += Cell::kType;
  out += '\n';
  for (std::size_t i = 0; i < Fam::kSize; ++i) {
    const Cell& cell = fam.cell(i);
    if constexpr (std::is_same_v<Cell, Histogram>) {
      // Read each bucket once; the cumulative counts and _count come from the same reads, so
      // they are consistent with each other within a scrape.
      std::uint64_t cumulative = 0;
      for (std::size_t b = 0; b <= Histogram::kBounds; ++b) {
        cumulative += cell.bucket(b);
        out += name;
        out += "_bucket";
        appendLabels<Fam>(out, i, "le",
                          b < Histogram::kBounds ? Histogram::kBoundLabels[b] : "+Inf");
        out += ' ';
        appendInt(out, cumulative);
        out += '\n';
      }
      out += name;
      out += "_sum";
      appendLabels<Fam>(out, i);
      out += ' ';
      out += formatSampleValue(static_cast<double>(cell.sumNanos()) / 1e9);
      out += '\n';
      out += name;
      out += "_count";
      appendLabels<Fam>(out, i);
      out += ' ';
      appendInt(out, cumulative);
      out += '\n';
    } else {
      out += name;
      appendLabels<Fam>(out, i);
      out += ' ';
      if constexpr (std::is_same_v<Cell, FloatGauge>) {
        out += formatSampleValue(cell.value());
      } else {
        appendInt(out, cell.value());
      }
      out += '\n';
    }
  }
}

}  // namespace

std::string Metrics::render() const {
  std::string out;
  out.reserve(32 * 1024);
#define PGHANDOFF_METRIC_RENDER(accessor, name, Cell, help, ...) \
  appendFamily(out, "pghandoff_" name, help, accessor##_);
  PGHANDOFF_METRICS(PGHANDOFF_METRIC_RENDER)
#undef PGHANDOFF_METRIC_RENDER
  return out;
}

void Metrics::reset() noexcept {
#define PGHANDOFF_METRIC_RESET(accessor, name, Cell, help, ...) accessor##_.reset();
  PGHANDOFF_METRICS(PGHANDOFF_METRIC_RESET)
#undef PGHANDOFF_METRIC_RESET
}

std::string renderMetrics() {
  return metrics().render();
}

void resetMetricsForTest() noexcept {
  metrics().reset();
}

}  // namespace pghandoff::proxy
