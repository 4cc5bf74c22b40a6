// Prometheus metrics of the proxy, rendered in the text exposition format 0.0.4:
// https://prometheus.io/docs/instrumenting/exposition_formats/
//
// Every metric is declared once, in PGHANDOFF_METRICS below (accessor, name, cell type, help,
// label dimensions); members, accessors, reset and the exposition are all generated from that
// list, so a metric cannot be exported without help text or with a label set that drifts.
//
// Labels come only from small closed enums (never SQL text, user names or other peer input),
// and every label combination is rendered from the start with value 0, so dashboards and
// rate()/increase() see a series before its first increment. That includes
// client_errors_total{sqlstate}: the SQLSTATE is folded into a fixed allow-list plus "other"
// (15 series), so its cardinality is bounded and always-present series cost nothing, while a
// series that appeared only on its first error would lose that first increment in increase().
//
// Hot path: a handle is a reference into an enum-indexed array, and an increment is one relaxed
// atomic add — no lock, no allocation, no lookup by string:
//   metrics().queriesTotal(labels::Side::kSource, labels::QueryKind::kRead).inc();
// Relaxed ordering is enough: counters are independent, and a scrape only needs each value to be
// some value the counter really had.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pghandoff::proxy {

// ---------------------------------------------------------------------------------------------
// Label sets. Each is declared once as a list of (enumerator, label value); the enum and the
// rendered strings are generated from that list.

// clang-format 14 does not settle on these macro lists: keep them as written.
// clang-format off
#define PGHANDOFF_SIDE_VALUES(V) V(kSource, "source") V(kTarget, "target")
#define PGHANDOFF_QUERY_KIND_VALUES(V) V(kRead, "read") V(kWrite, "write")
// SPEC §1, in forward order.
#define PGHANDOFF_PHASE_VALUES(V)                                                      \
  V(kSourceOnly, "source-only")                                                        \
  V(kSeeding, "seeding") V(kMirror, "mirror") V(kMirrorReadTarget, "mirror-read-target") \
  V(kReverseMirror, "reverse-mirror") V(kTargetOnly, "target-only")
#define PGHANDOFF_MIRROR_ERROR_VALUES(V) \
  V(kTargetDown, "target_down") V(kTimeout, "timeout") V(kError, "error") \
  V(kCommitFailed, "commit_failed")
#define PGHANDOFF_DIVERGENCE_VALUES(V) \
  V(kCommandTag, "command_tag") V(kRowCount, "row_count") V(kError, "error") V(kCommit, "commit")
#define PGHANDOFF_FLIP_RESULT_VALUES(V) V(kOk, "ok") V(kRefused, "refused") V(kTimeout, "timeout")
// The SQLSTATEs the proxy itself sends (protocol/error.h plus 40001 and 57014); anything else
// a server sends is counted as "other" so the label set stays closed.
#define PGHANDOFF_SQLSTATE_VALUES(V)                                                           \
  V(k08P01, "08P01") V(k08006, "08006") V(k08001, "08001") V(k57P01, "57P01")                  \
  V(k53300, "53300") V(k28P01, "28P01") V(k28000, "28000") V(k0A000, "0A000")                  \
  V(k3D000, "3D000") V(k54000, "54000") V(kXX000, "XX000") V(k57P03, "57P03")                  \
  V(k40001, "40001") V(k57014, "57014") V(k58000, "58000") V(k25P02, "25P02")             \
  V(kOther, "other")
#define PGHANDOFF_REJECT_REASON_VALUES(V)                                              \
  V(kTooMany, "too_many") V(kAuthFailed, "auth_failed") V(kProtocol, "protocol") \
  V(kTls, "tls") V(kStartupTimeout, "startup_timeout")
#define PGHANDOFF_DIRECTION_VALUES(V) \
  V(kClientToServer, "client_to_server") V(kServerToClient, "server_to_client")
#define PGHANDOFF_CANCEL_RESULT_VALUES(V) V(kForwarded, "forwarded") V(kUnknown, "unknown")
#define PGHANDOFF_BUILD_VERSION_VALUES(V) V(kCurrent, PGHANDOFF_VERSION)
// clang-format on

#define PGHANDOFF_LABEL_ENUMERATOR(e, s) e,
#define PGHANDOFF_LABEL_STRING(e, s) s,

// A label dimension: the enum that indexes it, the label name and the value strings.
#define PGHANDOFF_LABEL_DIM(Dim, EnumType, labelName, VALUES)              \
  struct Dim {                                                             \
    using Type = EnumType;                                                 \
    static constexpr std::string_view kLabel = labelName;                  \
    static constexpr auto kValues =                                        \
        std::to_array<std::string_view>({VALUES(PGHANDOFF_LABEL_STRING)}); \
  };

#define PGHANDOFF_LABEL_SET(EnumType, Dim, labelName, VALUES)                \
  enum class EnumType : std::uint8_t { VALUES(PGHANDOFF_LABEL_ENUMERATOR) }; \
  PGHANDOFF_LABEL_DIM(Dim, EnumType, labelName, VALUES)

namespace labels {
PGHANDOFF_LABEL_SET(Side, SideDim, "side", PGHANDOFF_SIDE_VALUES)
PGHANDOFF_LABEL_SET(QueryKind, QueryKindDim, "kind", PGHANDOFF_QUERY_KIND_VALUES)
PGHANDOFF_LABEL_SET(Phase, PhaseDim, "phase", PGHANDOFF_PHASE_VALUES)
PGHANDOFF_LABEL_DIM(FromPhaseDim, Phase, "from", PGHANDOFF_PHASE_VALUES)
PGHANDOFF_LABEL_DIM(ToPhaseDim, Phase, "to", PGHANDOFF_PHASE_VALUES)
PGHANDOFF_LABEL_SET(MirrorErrorReason, MirrorErrorReasonDim, "reason",
                    PGHANDOFF_MIRROR_ERROR_VALUES)
PGHANDOFF_LABEL_SET(DivergenceKind, DivergenceKindDim, "kind", PGHANDOFF_DIVERGENCE_VALUES)
PGHANDOFF_LABEL_SET(FlipResult, FlipResultDim, "result", PGHANDOFF_FLIP_RESULT_VALUES)
PGHANDOFF_LABEL_SET(SqlState, SqlStateDim, "sqlstate", PGHANDOFF_SQLSTATE_VALUES)
PGHANDOFF_LABEL_SET(RejectReason, RejectReasonDim, "reason", PGHANDOFF_REJECT_REASON_VALUES)
PGHANDOFF_LABEL_SET(Direction, DirectionDim, "direction", PGHANDOFF_DIRECTION_VALUES)
PGHANDOFF_LABEL_SET(CancelResult, CancelResultDim, "result", PGHANDOFF_CANCEL_RESULT_VALUES)
PGHANDOFF_LABEL_SET(BuildVersion, BuildVersionDim, "version", PGHANDOFF_BUILD_VERSION_VALUES)
}  // namespace labels

// Phase names as SPEC §1 and the admin API spell them.
[[nodiscard]] std::string_view phaseName(labels::Phase p) noexcept;
[[nodiscard]] std::optional<labels::Phase> phaseFromName(std::string_view name) noexcept;

// Folds a 5-character SQLSTATE into the closed label set: codes of the allow-list map to
// themselves, everything else (including malformed codes) to kOther.
[[nodiscard]] labels::SqlState sqlStateLabel(std::string_view code) noexcept;

// ---------------------------------------------------------------------------------------------
// Cells. All operations are relaxed atomics; all are constant-initialisable.

class Counter {
 public:
  static constexpr std::string_view kType = "counter";
  void inc(std::uint64_t n = 1) noexcept { v_.fetch_add(n, std::memory_order_relaxed); }
  [[nodiscard]] std::uint64_t value() const noexcept { return v_.load(std::memory_order_relaxed); }
  void reset() noexcept { v_.store(0, std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> v_{0};
};

// An integer gauge (connections, queue lengths, bytes): inc/dec are one atomic add each.
class Gauge {
 public:
  static constexpr std::string_view kType = "gauge";
  void inc(std::int64_t n = 1) noexcept { v_.fetch_add(n, std::memory_order_relaxed); }
  void dec(std::int64_t n = 1) noexcept { v_.fetch_sub(n, std::memory_order_relaxed); }
  void set(std::int64_t n) noexcept { v_.store(n, std::memory_order_relaxed); }
  [[nodiscard]] std::int64_t value() const noexcept { return v_.load(std::memory_order_relaxed); }
  void reset() noexcept { set(0); }

 private:
  std::atomic<std::int64_t> v_{0};
};

// A gauge measured in fractional units (seconds); only ever set, never added to.
class FloatGauge {
 public:
  static constexpr std::string_view kType = "gauge";
  void set(double v) noexcept { v_.store(v, std::memory_order_relaxed); }
  [[nodiscard]] double value() const noexcept { return v_.load(std::memory_order_relaxed); }
  void reset() noexcept { set(0.0); }

 private:
  std::atomic<double> v_{0.0};
};

// A constant 1, for "info" metrics such as build_info whose information is in the labels.
class InfoGauge {
 public:
  static constexpr std::string_view kType = "gauge";
  [[nodiscard]] static constexpr std::int64_t value() noexcept { return 1; }
  void reset() noexcept {}
};

// A duration histogram with fixed buckets. Buckets are stored non-cumulatively (one atomic add
// per observation) and made cumulative when rendered; the sum is kept in integer nanoseconds
// so it is also a single atomic add.
class Histogram {
 public:
  static constexpr std::string_view kType = "histogram";
  static constexpr std::size_t kBounds = 14;
  static constexpr std::array<std::int64_t, kBounds> kBoundNanos{
      500'000,       1'000'000,     2'500'000,     5'000'000,     10'000'000,
      25'000'000,    50'000'000,    100'000'000,   250'000'000,   500'000'000,
      1'000'000'000, 2'500'000'000, 5'000'000'000, 10'000'000'000};
  static constexpr std::array<std::string_view, kBounds> kBoundLabels{
      "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
      "0.1",    "0.25",  "0.5",    "1",     "2.5",  "5",     "10"};

  void observe(std::chrono::nanoseconds d) noexcept {
    std::int64_t ns = d.count() < 0 ? 0 : d.count();
    std::size_t i = 0;
    while (i < kBounds && ns > kBoundNanos[i]) ++i;  // le is inclusive
    buckets_[i].fetch_add(1, std::memory_order_relaxed);
    sumNanos_.fetch_add(static_cast<std::uint64_t>(ns), std::memory_order_relaxed);
  }
  // Negative and NaN durations count as 0; huge ones are capped at ~292 years.
  void observeSeconds(double seconds) noexcept;

  // Non-cumulative count of bucket i; i == kBounds is the +Inf overflow bucket.
  [[nodiscard]] std::uint64_t bucket(std::size_t i) const noexcept {
    return buckets_[i].load(std::memory_order_relaxed);
  }
  // Observations so far (the _count sample).
  [[nodiscard]] std::uint64_t count() const noexcept {
    std::uint64_t n = 0;
    for (const auto& b : buckets_) n += b.load(std::memory_order_relaxed);
    return n;
  }
  [[nodiscard]] std::uint64_t sumNanos() const noexcept {
    return sumNanos_.load(std::memory_order_relaxed);
  }
  void reset() noexcept {
    for (auto& b : buckets_) b.store(0, std::memory_order_relaxed);
    sumNanos_.store(0, std::memory_order_relaxed);
  }

 private:
  std::array<std::atomic<std::uint64_t>, kBounds + 1> buckets_{};
  std::atomic<std::uint64_t> sumNanos_{0};
};

// One metric: a cell per label combination, indexed by the label enums (row-major, first
// dimension slowest, which is also the rendering order).
template <typename Cell, typename... Dims>
class Family {
 public:
  using CellType = Cell;
  static constexpr std::size_t kSize = (std::size_t{1} * ... * Dims::kValues.size());
  static constexpr std::size_t kDims = sizeof...(Dims);
  struct DimInfo {
    std::string_view label;
    const std::string_view* values;
    std::size_t count;
  };
  static constexpr std::array<DimInfo, kDims> kDimInfo{
      DimInfo{Dims::kLabel, Dims::kValues.data(), Dims::kValues.size()}...};

  Cell& at(typename Dims::Type... v) noexcept { return cells_[index(v...)]; }
  [[nodiscard]] const Cell& cell(std::size_t i) const noexcept { return cells_[i]; }
  void reset() noexcept {
    for (auto& c : cells_) c.reset();
  }

 private:
  static constexpr std::size_t index([[maybe_unused]] typename Dims::Type... v) noexcept {
    std::size_t i = 0;
    ((i = i * Dims::kValues.size() + static_cast<std::size_t>(v) % Dims::kValues.size()), ...);
    return i;
  }
  std::array<Cell, kSize> cells_{};
};

// ---------------------------------------------------------------------------------------------
// The metric list: X(accessor, name without the pghandoff_ prefix, cell type, help, dims...).
// Rendering follows this order.
#define PGHANDOFF_METRICS(X)                                                                   \
  X(buildInfo, "build_info", InfoGauge, "pghandoff build information; always 1.",              \
    labels::BuildVersionDim)                                                                   \
  X(phase, "phase", Gauge, "Migration phase: 1 for the current phase, 0 for the others.",      \
    labels::PhaseDim)                                                                          \
  X(clientConnections, "client_connections", Gauge, "Client connections currently open.")      \
  X(clientConnectionsTotal, "client_connections_total", Counter,                               \
    "Client connections accepted since start.")                                                \
  X(clientConnectionsRejectedTotal, "client_connections_rejected_total", Counter,              \
    "Client connections refused or closed before the session started, by reason.",             \
    labels::RejectReasonDim)                                                                   \
  X(serverConnections, "server_connections", Gauge,                                            \
    "Server connections currently open, per side.", labels::SideDim)                           \
  X(queriesTotal, "queries_total", Counter, "Statements executed, per side and kind.",         \
    labels::SideDim, labels::QueryKindDim)                                                     \
  X(queryDurationSeconds, "query_duration_seconds", Histogram,                                 \
    "Statement duration as seen by the proxy, per side.", labels::SideDim)                     \
  X(bytesTotal, "bytes_total", Counter, "Bytes relayed, per direction.", labels::DirectionDim) \
  X(cancelRequestsTotal, "cancel_requests_total", Counter,                                     \
    "CancelRequest messages received, by outcome.", labels::CancelResultDim)                   \
  X(clientErrorsTotal, "client_errors_total", Counter,                                         \
    "ErrorResponse messages sent to clients, by SQLSTATE (codes outside the proxy's own "      \
    "list count as other).",                                                                   \
    labels::SqlStateDim)                                                                       \
  X(mirrorLagSeconds, "mirror_lag_seconds", FloatGauge,                                        \
    "Age of the oldest transaction not yet applied to the mirror side.")                       \
  X(mirrorQueueTransactions, "mirror_queue_transactions", Gauge,                               \
    "Transactions waiting to be applied to the mirror side.")                                  \
  X(mirrorErrorsTotal, "mirror_errors_total", Counter, "Mirror failures, by reason.",          \
    labels::MirrorErrorReasonDim)                                                              \
  X(divergencesTotal, "divergences_total", Counter,                                            \
    "Statements whose outcome differed between source and target, by kind.",                   \
    labels::DivergenceKindDim)                                                                 \
  X(nondeterministicRejectedTotal, "nondeterministic_rejected_total", Counter,                 \
    "Statements refused because they cannot be mirrored deterministically.")                   \
  X(phaseFlipPauseSeconds, "phase_flip_pause_seconds", Histogram,                              \
    "Time new transactions were held during a phase change.")                                  \
  X(phaseFlipsTotal, "phase_flips_total", Counter, "Phase changes asked for, by outcome.",     \
    labels::FromPhaseDim, labels::ToPhaseDim, labels::FlipResultDim)                           \
  X(journalBytes, "journal_bytes", Gauge,                                                      \
    "Size on disk of the journal: the seed's catch-up journal, or the async mirror's.")        \
  X(internalBugsTotal, "internal_bugs_total", Counter,                                         \
    "Internal invariant violations caught in release builds; should stay 0.")

class Metrics {
 public:
  constexpr Metrics() = default;
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

#define PGHANDOFF_METRIC_ACCESSOR(accessor, name, Cell, help, ...) \
  Cell& accessor(auto... labelValues) noexcept {                   \
    return accessor##_.at(labelValues...);                         \
  }
  PGHANDOFF_METRICS(PGHANDOFF_METRIC_ACCESSOR)
#undef PGHANDOFF_METRIC_ACCESSOR

  // Sets phase{phase=p} to 1 and the others to 0.
  void setCurrentPhase(labels::Phase p) noexcept;

  [[nodiscard]] std::string render() const;
  void reset() noexcept;

 private:
#define PGHANDOFF_METRIC_MEMBER(accessor, name, Cell, help, ...) \
  Family<Cell __VA_OPT__(, ) __VA_ARGS__> accessor##_;
  PGHANDOFF_METRICS(PGHANDOFF_METRIC_MEMBER)
#undef PGHANDOFF_METRIC_MEMBER
};

namespace detail {
// Constant-initialised (no static-init-order issue, no guard on the hot path).
extern Metrics gMetrics;
}  // namespace detail

// The process-wide registry.
inline Metrics& metrics() noexcept {
  return detail::gMetrics;
}

// The whole exposition, text format 0.0.4.
[[nodiscard]] std::string renderMetrics();

// Zeroes every metric (tests only; not atomic with respect to concurrent updates).
void resetMetricsForTest() noexcept;

// Escapes a label value for the exposition: backslash, double quote and line feed.
[[nodiscard]] std::string escapeLabelValue(std::string_view v);

// Formats a sample value as Prometheus parses it (Go ParseFloat): shortest round-trip form,
// "+Inf", "-Inf", "NaN".
[[nodiscard]] std::string formatSampleValue(double v);

}  // namespace pghandoff::proxy
