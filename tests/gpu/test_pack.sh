#!/usr/bin/env bash
# The GPU pack (tests/gpu/pack.sh), on a machine without a GPU (CI):
#   - it builds into a temporary folder, under 60 MiB, with every file run.sh needs;
#   - its build has no -march=native (the GPU machine's CPU is another);
#   - with LD_LIBRARY_PATH=DIR/lib:DIR/lib/compat, every library of every binary
#     resolves, and each one that is not the C library's or CUDA's resolves
#     inside the pack;
#   - DIR/run.sh prints its preflight, then "SKIP: no GPU", and exits 0, with
#     its log in $OUT (or DIR/results); REQUIRE_GPU=1 makes that exit 1;
#   - where nvidia-smi is missing: a fake one listing a GPU, with no usable CUDA
#     device behind it, still gives a SKIP naming CUDA's reason;
#   - a pack missing one of its libraries fails the preflight (exit 1).
# Exit 77 (skip) where nvcc is missing. PACK_BUILD_DIR as for pack.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || { echo "SKIP: no nvcc"; exit 77; }
# shellcheck source=tests/gpu/pack-libs.sh
. "$ROOT/tests/gpu/pack-libs.sh"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
DIR=$TMP/pack
fails=0
check() { # description, then a command: PASS/FAIL line
  local what=$1
  shift
  if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; fails=$((fails + 1)); fi
}

T0=$(date +%s)
tests_pack_log=$TMP/pack.log
if ! "$ROOT/tests/gpu/pack.sh" "$DIR" >"$tests_pack_log" 2>&1; then
  cat "$tests_pack_log"
  echo "FAIL: pack.sh"
  exit 1
fi
cat "$tests_pack_log"
echo "pack.sh took $(($(date +%s) - T0))s"

size=$(du -sb "$DIR" | cut -f1)
check "size $size bytes < 60 MiB" test "$size" -lt $((60 * 1024 * 1024))
for f in run.sh pack-libs.sh compare_st.py torch_baseline.py MANIFEST bin/gpu_parity \
  bin/test_search_cuda bin/bench_gpu bin/gemm_peak bin/franca-embed bin/franca-checkpoint; do
  check "$f in the pack" test -s "$DIR/$f"
done
check "run.sh executable" test -x "$DIR/run.sh"
BUILD=${PACK_BUILD_DIR:-$ROOT/build-gpupack}
check "pack build without -march=native" \
  bash -c "! grep -q 'march=native' '$BUILD/compile_commands.json'"

# Library closure, as the GPU machine's loader will see it (CUDA aside).
bad=0
for b in "$DIR"/bin/*; do
  while read -r so path; do
    kind=$(pack_lib_kind "$so")
    if [ "$path" = "not found" ]; then
      echo "  $(basename "$b"): $so not found"
      bad=1
    elif [ "$kind" != system ] && [ "$kind" != cuda ]; then
      case $(readlink -f "$path") in
        "$DIR"/lib/*) ;;
        *) echo "  $(basename "$b"): $so ($kind) resolves outside the pack: $path"; bad=1 ;;
      esac
    fi
  done < <(LD_LIBRARY_PATH=$DIR/lib:$DIR/lib/compat pack_ldd "$b")
done
check "every binary's non-CUDA, non-libc libraries resolve inside the pack" test $bad = 0
check "the pack carries no CUDA or C library" \
  bash -c "! ls '$DIR'/lib '$DIR'/lib/compat |
    grep -E '^(libcud|libcublas|libnvrtc|libc\\.so|libm\\.so)'"

# run.sh without a GPU: preflight, then SKIP, exit 0; log in $OUT.
nogpu_path=$PATH
if command -v nvidia-smi >/dev/null; then # a GPU machine: hide it
  smi_dir=$(dirname "$(command -v nvidia-smi)")
  nogpu_path=$(printf '%s' "$PATH" | tr ':' '\n' | grep -vx "$smi_dir" | paste -sd:)
fi
rc=0
env PATH="$nogpu_path" OUT="$TMP/out" bash "$DIR/run.sh" >"$TMP/run.txt" 2>&1 || rc=$?
cat "$TMP/run.txt"
check "run.sh exits 0 without a GPU (got $rc)" test $rc = 0
check "preflight, then a SKIP: no GPU line, last" awk '/^== \[[0-9]+s\] preflight: done$/ { p = NR }
  /^SKIP: no GPU/ { s = NR } END { exit !(p && s == p + 1 && s == NR) }' "$TMP/run.txt"
check "libraries resolved in the preflight" \
  grep -q "libraries: every binary's resolve" "$TMP/run.txt"
check "log written to \$OUT" grep -q '^SKIP: no GPU' "$TMP/out/gpu-run.log"
rc=0
env PATH="$nogpu_path" REQUIRE_GPU=1 bash "$DIR/run.sh" >/dev/null 2>&1 || rc=$?
check "REQUIRE_GPU=1 without a GPU exits 1 (got $rc)" test $rc = 1
check "default results folder DIR/results" test -s "$DIR/results/gpu-run.log"

if ! command -v nvidia-smi >/dev/null; then
  mkdir "$TMP/fake"
  printf '#!/bin/sh\necho "Fake GPU, 580.00, 81559 MiB"\n' >"$TMP/fake/nvidia-smi"
  chmod +x "$TMP/fake/nvidia-smi"
  rc=0
  env PATH="$TMP/fake:$PATH" bash "$DIR/run.sh" >"$TMP/fake.txt" 2>&1 || rc=$?
  cat "$TMP/fake.txt"
  check "nvidia-smi lists a GPU, CUDA has none: SKIP naming CUDA's reason, exit 0 (got $rc)" \
    bash -c "test $rc = 0 && grep -q '^SKIP: no GPU: nvidia-smi lists .*CUDA has no usable device' \
      '$TMP/fake.txt'"
fi

mv "$DIR/lib/libjansson.so.4" "$TMP/"
rc=0
env PATH="$nogpu_path" bash "$DIR/run.sh" >"$TMP/broken.txt" 2>&1 || rc=$?
mv "$TMP/libjansson.so.4" "$DIR/lib/"
check "a pack missing libjansson fails its preflight (exit $rc)" \
  bash -c "test $rc = 1 && grep -q 'libjansson.so.4 (pack)' '$TMP/broken.txt' &&
    grep -q 'preflight: FAIL' '$TMP/broken.txt'"

echo "test_pack: $fails failed"
exit $((fails > 0))
