#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite: unit and
# reference tests, the same suite again under AddressSanitizer +
# UndefinedBehaviorSanitizer, and short libFuzzer runs of every parser.
set -euo pipefail
cd "$(dirname "$0")"
./deps.sh

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
jobs=$(nproc)
suites=(--suite unit --suite reference --suite integration)

setup() { # dir, options... (every option is given, so a reused folder cannot keep stale ones)
  local dir=$1; shift
  if [ -d "$dir" ]; then meson setup --reconfigure "$dir" "$@" >/dev/null; else meson setup "$dir" "$@" >/dev/null; fi
  meson compile -C "$dir" -j "$jobs"
}

stage_release() {
  setup build -Dbuildtype=release -Db_sanitize=none -Dfuzz=false
  meson test -C build --print-errorlogs --num-processes 1 "${suites[@]}"
}

stage_sanitizers() {
  setup build-asan -Dbuildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false \
    -Dfuzz=false
  meson test -C build-asan --print-errorlogs --num-processes 1 "${suites[@]}" --timeout-multiplier 3
}

stage_fuzz() {
  CC=clang setup build-fuzz -Dbuildtype=debugoptimized -Dfuzz=true -Db_sanitize=address,undefined \
    -Db_lundef=false -Dfuzz_seconds="${FUZZ_SECONDS:-30}"
  meson test -C build-fuzz --print-errorlogs --num-processes 1 --suite fuzz
}

stages=(release sanitizers fuzz)
titles=("release build: unit, reference and integration tests"
        "AddressSanitizer + UndefinedBehaviorSanitizer" "libFuzzer (short runs)")
current=-1
report() { # on any failure (set -e), name the stage that failed and those not run
  local rc=$?
  ((rc == 0 || current < 0)) && return
  local rest="${stages[*]:$((current + 1))}"
  echo "== stage '${stages[$current]}' FAILED (exit $rc); not run: ${rest:-none}"
}
trap report EXIT
for current in "${!stages[@]}"; do
  echo "== ${titles[$current]}"
  "stage_${stages[$current]}"
done
echo "== all tests passed"
