#!/usr/bin/env bash
# The test command of the README: installs what is missing, builds with
# warnings as errors, runs every test (unit, integration against real
# PostgreSQL 15 servers and real clients, fuzz corpus replay), then builds
# again with AddressSanitizer + UndefinedBehaviorSanitizer and runs the unit
# and integration tests under them.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] && scripts/install-deps.sh

jobs="${PGHANDOFF_TEST_JOBS:-2}"
status=0

echo "== clang-format (the checked-in .clang-format)"
if ! git ls-files '*.cpp' '*.h' | xargs clang-format-14 --dry-run --Werror; then
  echo "clang-format: run  git ls-files '*.cpp' '*.h' | xargs clang-format-14 -i"
  status=1
fi

echo "== no co_await after && or || (GCC 12 resumes a destroyed coroutine frame)"
if git ls-files '*.cpp' '*.h' | xargs grep -nE '(&&|\|\|)[[:space:]]*!?[[:space:]]*co_await'; then
  echo "split the condition: bool ok = co_await f(); if (!ok) ..."
  status=1
fi

echo "== release build (-Werror)"
scripts/build.sh release
echo "== release: all tests"
ctest --preset release -j "$jobs" || status=1

if [ "${PGHANDOFF_SKIP_ASAN:-0}" != 1 ]; then
  echo "== asan+ubsan build"
  scripts/build.sh asan
  echo "== asan+ubsan: unit and integration tests"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --preset asan -j "$jobs" -L 'unit|integration' || status=1
fi
exit $status
