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

setup() { # dir, options... (every option is given, so a reused folder cannot keep stale ones)
  local dir=$1; shift
  if [ -d "$dir" ]; then meson setup --reconfigure "$dir" "$@" >/dev/null; else meson setup "$dir" "$@" >/dev/null; fi
  meson compile -C "$dir" -j "$jobs"
}

echo "== release build: unit, reference and integration tests"
setup build -Dbuildtype=release -Db_sanitize=none -Dfuzz=false
meson test -C build --print-errorlogs --num-processes 1 --suite unit --suite reference \
  --suite integration

echo "== AddressSanitizer + UndefinedBehaviorSanitizer"
setup build-asan -Dbuildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false \
  -Dfuzz=false
meson test -C build-asan --print-errorlogs --num-processes 1 --suite unit --suite reference \
  --suite integration --timeout-multiplier 3

echo "== libFuzzer (short runs)"
CC=clang setup build-fuzz -Dbuildtype=debugoptimized -Dfuzz=true -Db_sanitize=address,undefined \
  -Db_lundef=false -Dfuzz_seconds="${FUZZ_SECONDS:-30}"
meson test -C build-fuzz --print-errorlogs --num-processes 1 --suite fuzz
echo "== all tests passed"
