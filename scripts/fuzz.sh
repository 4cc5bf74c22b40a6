#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/fuzz_*.cpp) with the `fuzz` preset
# (clang-14, libFuzzer + ASan + UBSan) and runs each for a fixed time on its
# committed seed corpus. Fails if any target crashes, leaks, times out or runs
# out of memory (RELIABILITY G5).
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#   SECONDS  per target, default 60
#   TARGET   e.g. startup or fuzz_startup; default: every target
#
# New interesting inputs go to a scratch corpus (FUZZ_WORK_DIR, default
# build/fuzz/work/<target>/corpus), never into tests/fuzz/corpus; crash
# reproducers go to build/fuzz/work/<target>/artifacts/. To keep a finding as a
# regression input, copy it into tests/fuzz/corpus/<target>/ by hand (a crash
# once fixed) or minimise the scratch corpus with -merge=1 first.
# Environment: FUZZ_JOBS (build parallelism, default 2), FUZZ_WORK_DIR,
# FUZZ_EXTRA_ARGS (more libFuzzer flags).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
case "$seconds" in
  ''|*[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

if ! command -v clang++-14 >/dev/null; then
  echo "clang++-14 not found (apt-get install clang-14 libclang-rt-14-dev)" >&2
  exit 2
fi

echo "== configure and build (preset fuzz)"
cmake --preset fuzz >/dev/null
# Only the fuzz targets: the rest of the tree is not needed to fuzz.
cmake --build --preset fuzz --target fuzz_targets -j "${FUZZ_JOBS:-2}"

bin_dir=build/fuzz/tests/fuzz
work_dir="${FUZZ_WORK_DIR:-build/fuzz/work}"

if [ $# -gt 0 ]; then
  targets=()
  for t in "$@"; do targets+=("fuzz_${t#fuzz_}"); done
else
  targets=()
  for src in tests/fuzz/fuzz_*.cpp; do targets+=("$(basename "$src" .cpp)"); done
fi

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

failed=()
for target in "${targets[@]}"; do
  name="${target#fuzz_}"
  seeds="tests/fuzz/corpus/$name"
  if [ ! -x "$bin_dir/$target" ] || [ ! -d "$seeds" ]; then
    echo "unknown target $target (no $bin_dir/$target or $seeds)" >&2
    failed+=("$target")
    continue
  fi
  scratch="$work_dir/$name/corpus"
  artifacts="$work_dir/$name/artifacts"
  mkdir -p "$scratch" "$artifacts"
  echo "== $target: ${seconds}s"
  # The first corpus directory receives new inputs: the scratch one; the
  # committed seeds are only read.
  # shellcheck disable=SC2086
  if "$bin_dir/$target" "$scratch" "$seeds" \
      -max_total_time="$seconds" -timeout=2 -rss_limit_mb=2048 -max_len=4096 \
      -artifact_prefix="$artifacts/" -print_final_stats=1 ${FUZZ_EXTRA_ARGS:-} \
      >"$work_dir/$name/log.txt" 2>&1; then
    grep -E '^Done|^stat::(average_exec_per_sec|new_units_added|peak_rss_mb)' "$work_dir/$name/log.txt" || true
  else
    echo "!! $target FAILED; log: $work_dir/$name/log.txt, reproducer(s):" >&2
    ls "$artifacts" >&2 || true
    tail -n 40 "$work_dir/$name/log.txt" >&2
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzzing passed: ${targets[*]}"
