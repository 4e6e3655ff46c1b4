#!/usr/bin/env bash
# Builds the GPU pack: what tests/gpu's checks need on a GPU machine that has
# CUDA (driver, toolkit libraries, nvcc) but none of this project's libraries,
# in one folder that travels there alone (see tests/gpu/README.md):
#
#   tests/gpu/pack.sh DIR
#
# DIR/bin      gpu_parity, test_search_cuda, bench_gpu, gemm_peak, franca-embed,
#              franca-checkpoint: release, -Dcuda=enabled, no -march=native (the
#              GPU machine's CPU is not this one), sm_80 + sm_90 + compute_90 PTX;
#              stripped.
# DIR/lib      every shared library they need (from ldd) except the C library and
#              CUDA's (pack-libs.sh decides); DIR/lib/compat the GCC runtime.
# DIR/run.sh   the checks (pack-run.sh), with compare_st.py, torch_baseline.py,
#              pack-libs.sh beside it; DIR/MANIFEST what was built and from what.
# The models the checks use are random or made at run time by franca-checkpoint
# (a ViT-S is 88 MB, more than the pack may hold).
#
# The build lives in PACK_BUILD_DIR (default build-gpupack in the source root),
# whichever build (release, ASan) runs the pack's CI test, so that it is built
# once; a lock serialises concurrent packers. JOBS: parallel compile jobs (nproc).
# DIR is replaced if it holds an earlier pack; any other non-empty DIR is refused.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: tests/gpu/pack.sh DIR" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SRC=$ROOT/tests/gpu
BUILD=${PACK_BUILD_DIR:-$ROOT/build-gpupack}
JOBS=${JOBS:-$(nproc)}
MARK=.franca-gpu-pack
T0=$(date +%s)
die() { echo "pack.sh: $*" >&2; exit 1; }
# shellcheck source=tests/gpu/pack-libs.sh
. "$SRC/pack-libs.sh"

mkdir -p "$1"
DIR=$(cd "$1" && pwd)
if [ -n "$(ls -A "$DIR")" ]; then
  [ -e "$DIR/$MARK" ] || die "$DIR is not empty and holds no earlier pack; refusing to replace it"
  find "$DIR" -mindepth 1 -delete
fi

# A test runner's environment (sanitizer options, a clang CC, malloc
# perturbation) must not leak into this build.
unset MALLOC_PERTURB_ ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS CFLAGS LDFLAGS CPPFLAGS
export CC=gcc PATH=$PATH:/usr/local/cuda/bin
opts=(-Dbuildtype=release -Dcuda=enabled -Dnative=false -Dfuzz=false -Db_sanitize=none
  -Db_lundef=true)
targets=(engine/franca-embed engine/franca-checkpoint tests/gpu/gpu_parity tests/gpu/bench_gpu
  tests/gpu/gemm_peak tests/gpu/test_search_cuda)
mkdir -p "$BUILD"
exec 9>"$BUILD/.pack.lock"
flock 9
if [ -f "$BUILD/meson-private/coredata.dat" ]; then
  meson configure "$BUILD" "${opts[@]}" >/dev/null
else
  meson setup "$BUILD" "$ROOT" "${opts[@]}" >"$BUILD/.pack-setup.log" 2>&1 ||
    { cat "$BUILD/.pack-setup.log" >&2; die "meson setup failed"; }
fi
meson compile -C "$BUILD" -j "$JOBS" "${targets[@]}" >"$BUILD/.pack-build.log" 2>&1 ||
  { tail -40 "$BUILD/.pack-build.log" >&2; die "build failed (log: $BUILD/.pack-build.log)"; }
T_BUILD=$(($(date +%s) - T0))

touch "$DIR/$MARK"
mkdir -p "$DIR/bin" "$DIR/lib/compat"
for t in "${targets[@]}"; do
  strip --strip-unneeded -o "$DIR/bin/$(basename "$t")" "$BUILD/$t"
done
for f in pack-run.sh pack-libs.sh compare_st.py torch_baseline.py; do
  cp "$SRC/$f" "$DIR/"
done
mv "$DIR/pack-run.sh" "$DIR/run.sh"
chmod +x "$DIR/run.sh"

# Libraries: the closure ldd resolves here, minus the C library and CUDA.
missing=()
for b in "$DIR"/bin/*; do
  while read -r so path; do
    kind=$(pack_lib_kind "$so")
    case $kind in system | cuda) continue ;; esac
    [ "$path" != "not found" ] || { missing+=("$(basename "$b"): $so"); continue; }
    dest=$DIR/lib
    [ "$kind" = compat ] && dest=$DIR/lib/compat
    [ -e "$dest/$so" ] || cp -L "$path" "$dest/$so"
  done < <(pack_ldd "$b")
done
((${#missing[@]} == 0)) || die "unresolved here: ${missing[*]}"

# What the binaries and libraries ask of the machine's C library.
glibc=$(objdump -T "$DIR"/bin/* "$DIR"/lib/*.so* "$DIR"/lib/compat/*.so* 2>/dev/null |
  grep -o 'GLIBC_[0-9][0-9.]*' | sort -uV | tail -1)
{
  echo "franca GPU pack"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(
    git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%MZ) on $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "nvcc: $(nvcc --version | tail -1)"
  echo "cuda: sm_80 sm_90 compute_90 (PTX)"
  echo "glibc needed: ${glibc#GLIBC_}"
  echo "cuda libraries needed (from the machine): $(for b in "$DIR"/bin/*; do pack_ldd "$b"; done |
    while read -r so _; do [ "$(pack_lib_kind "$so")" = cuda ] && echo "$so"; done |
    sort -u | paste -sd' ')"
} >"$DIR/MANIFEST"
size=$(du -sb "$DIR" | cut -f1)
echo "pack.sh: $DIR: $((size / 1024 / 1024)) MiB ($size bytes)," \
  "$(find "$DIR/bin" -type f | wc -l) binaries, $(find "$DIR/lib" -name '*.so*' | wc -l) libraries;" \
  "build ${T_BUILD}s, total $(($(date +%s) - T0))s"
