#!/usr/bin/env bash
# The CUDA engine's checks on a GPU machine, from a pack that tests/gpu/pack.sh
# built (this file is its run.sh); nothing but the pack's folder is needed:
#   1. preflight: the GPU (nvidia-smi), nvcc, the C library, and that every
#      binary's libraries resolve (pack lib/, then the machine's CUDA);
#      without a GPU: a "SKIP: no GPU" line, exit 0 (REQUIRE_GPU=1: exit 1);
#   2. parity: CUDA against the CPU engine in-process (gpu_parity --full: fp32
#      <= 1e-4; bf16 <= 2e-2 with CLS cosine >= 0.999, the D/16 cut and RASA
#      tokens by cosine >= 0.99), the cuBLAS search backend against the CPU
#      one, then through the franca-embed CLI;
#   3. benchmark: the cuBLASLt bf16 GEMM peak, end-to-end images/s and % of that
#      peak for ViT-S/B/L-14 at 224 and 518, fused against unfused attention,
#      the pipelined forward against one chunk; then PyTorch bf16 (eager, SDPA,
#      torch.compile) in the time left, unless SKIP_TORCH=1.
# Each step prints "== [Ns] step: PASS" or FAIL with its whole output; a failed
# step does not stop the later ones. Exit 1 if any step failed.
# Files, in ${OUT:-PACK/results}: gpu-run.log (all output), bench.md (the GPU,
# the GEMM peak and the benchmark tables).
# Environment: BENCH_SECONDS (0.5 per point), RUN_BUDGET (300: seconds after
# which the PyTorch baseline starts no new model; it is stopped 50 s later, so
# that a whole run stays under 6 minutes on an H100), HARD_LIMIT (500: no step
# runs past this, should one hang), SKIP_TORCH=1, REQUIRE_GPU=1.
set -euo pipefail
export PYTHONUNBUFFERED=1
PACK=$(cd "$(dirname "$0")" && pwd)
BIN=$PACK/bin
RES=${OUT:-$PACK/results}
SECS=${BENCH_SECONDS:-0.5}
BUDGET=${RUN_BUDGET:-300}
HARD=${HARD_LIMIT:-500}
T0=$(date +%s)
# shellcheck source=tests/gpu/pack-libs.sh
. "$PACK/pack-libs.sh"

elapsed() { echo $(($(date +%s) - T0)); }
stamp() { echo "== [$(elapsed)s] $*"; }
left() { echo $((HARD - $(elapsed))); }
# The pack's binaries run with LIBPATH (E: as a command prefix); python3 and
# nvidia-smi keep the machine's own libraries.
run_bin() { env LD_LIBRARY_PATH="$LIBPATH" "$@"; }

FAILED=()
COUNTED=1 # 0: a failure of the next step is reported but does not fail the run
# step NAME SECONDS CMD...: runs the program CMD (output shown as it comes and
# kept in $RES/step.out), at most SECONDS and never past HARD_LIMIT; prints
# PASS or FAIL.
step() {
  local name=$1 limit=$2 rc=0 t counted=$COUNTED
  shift 2
  COUNTED=1
  t=$(left)
  ((t < limit)) && limit=$t
  if ((limit < 5)); then
    stamp "$name: FAIL (not run: HARD_LIMIT ${HARD}s reached)"
    ((counted)) && FAILED+=("$name")
    return 0
  fi
  stamp "$name (limit ${limit}s)"
  timeout "$limit" "$@" 2>&1 | tee "$RES/step.out" || rc=${PIPESTATUS[0]}
  # After the preflight found a device, a program that skips is a failure.
  if ((rc == 0)) && grep -q '^SKIP' "$RES/step.out"; then
    stamp "$name: FAIL (it skipped on a machine with a GPU)"
    ((counted)) && FAILED+=("$name")
  elif ((rc == 0)); then
    stamp "$name: PASS"
  else
    stamp "$name: FAIL (exit $rc$( ((rc == 124)) && echo ", timed out after ${limit}s"))"
    ((counted)) && FAILED+=("$name")
  fi
  return 0
}

preflight() {
  stamp "preflight"
  GPU=""
  if command -v nvidia-smi >/dev/null; then
    GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1) ||
      { echo "nvidia-smi failed: $GPU"; GPU=""; }
  else
    echo "nvidia-smi: not found"
  fi
  [ -n "$GPU" ] && echo "GPU: $GPU"
  PATH=$PATH:/usr/local/cuda/bin
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo 'not found')"
  echo "C library: $(ldd --version 2>&1 | head -1) (the pack needs" \
    "$(sed -n 's/^glibc needed: //p' "$PACK/MANIFEST") or newer)"
  sed -n 's/^\(commit\|built\|nvcc\|cuda\): /pack &/p' "$PACK/MANIFEST"

  # Library path: the pack's, its GCC runtime only where the machine has none,
  # and the CUDA folders the loader would not find by itself.
  LIBPATH=$PACK/lib
  local so need_compat=0
  for so in "$PACK"/lib/compat/*; do
    [ -e "$so" ] || continue
    { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null || true; } |
      grep -q "^[[:space:]]*$(basename "$so") " || need_compat=1
  done
  ((need_compat)) && LIBPATH=$LIBPATH:$PACK/lib/compat
  [ -n "${LD_LIBRARY_PATH:-}" ] && LIBPATH=$LIBPATH:$LD_LIBRARY_PATH
  local b kind missing_cuda=() bad=() own=0
  for b in "$BIN"/*; do
    while read -r so path; do
      [ "$path" = "not found" ] && [ "$(pack_lib_kind "$so")" = cuda ] && missing_cuda+=("$so")
    done < <(LD_LIBRARY_PATH=$LIBPATH pack_ldd "$b")
  done
  if ((${#missing_cuda[@]})); then
    local dirs sonames
    mapfile -t sonames < <(printf '%s\n' "${missing_cuda[@]}" | sort -u)
    dirs=$(pack_cuda_dirs "${sonames[@]}" | paste -sd:)
    [ -n "$dirs" ] && LIBPATH=$LIBPATH:$dirs && echo "CUDA libraries found in: $dirs"
  fi
  echo "LD_LIBRARY_PATH for the pack's binaries: $LIBPATH"
  for b in "$BIN"/*; do
    while read -r so path; do
      kind=$(pack_lib_kind "$so")
      if [ "$path" = "not found" ]; then
        bad+=("$(basename "$b"): $so ($kind)")
        [ "$kind" = cuda ] || own=1
      elif [ "$kind" = pack ] && [[ $(readlink -f "$path") != "$PACK"/lib/* ]]; then
        bad+=("$(basename "$b"): $so ($kind) resolves outside the pack: $path")
        own=1
      fi
    done < <(LD_LIBRARY_PATH=$LIBPATH pack_ldd "$b")
  done
  LIBS_OK=1
  if ((${#bad[@]})); then
    LIBS_OK=0
    printf 'library problem: %s\n' "${bad[@]}"
  else
    echo "libraries: every binary's resolve"
  fi
  E=(env LD_LIBRARY_PATH="$LIBPATH")
  # Non-CUDA libraries missing: the pack is broken on any machine.
  if ((own)); then
    stamp "preflight: FAIL (the pack's own libraries do not resolve)"
    exit 1
  fi
  if [ -z "$GPU" ]; then
    ((LIBS_OK)) || echo "(CUDA libraries missing too; expected on a machine without CUDA)"
    stamp "preflight: done"
    echo "SKIP: no GPU (nvidia-smi missing, failing or listing no GPU): GPU checks not run"
    [ "${REQUIRE_GPU:-0}" = 1 ] && exit 1
    exit 0
  fi
  if ((!LIBS_OK)); then
    stamp "preflight: FAIL (CUDA libraries not found on a GPU machine)"
    exit 1
  fi
  local why
  if ! why=$(run_bin "$BIN/gpu_parity" --probe 2>&1); then
    stamp "preflight: done"
    echo "SKIP: no GPU: nvidia-smi lists '$GPU' but CUDA has no usable device: $why"
    [ "${REQUIRE_GPU:-0}" = 1 ] && exit 1
    exit 0
  fi
  echo "$why"
  stamp "preflight: PASS"
}

# CLI parity, run as its own step: franca-embed --device cuda (fp32, bf16)
# against --device cpu on a ViT-S made here (RASA, Matryoshka widths,
# non-square images, batch 3 in chunks of 2), then --device auto.
cli_parity() {
  local tmp rc=0 prec tol
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  run_bin "$BIN/franca-checkpoint" init --arch vit_small --grid 37 --rasa-layers 8 --seed 5 \
    --out "$tmp/s.safetensors" >/dev/null
  python3 "$PACK/compare_st.py" write-npy "$tmp/x.npy" 3 3 224 308
  run_bin "$BIN/franca-embed" --model "$tmp/s.safetensors" --device cpu --input-npy "$tmp/x.npy" \
    --rasa --width 24 --width 96 --width 384 --out "$tmp/cpu.safetensors"
  for prec in fp32 bf16; do
    run_bin "$BIN/franca-embed" --model "$tmp/s.safetensors" --device cuda --precision $prec \
      --input-npy "$tmp/x.npy" --rasa --width 24 --width 96 --width 384 --batch 2 \
      --out "$tmp/cuda_$prec.safetensors"
    tol=$([ $prec = fp32 ] && echo 1e-4 || echo 2e-2)
    python3 "$PACK/compare_st.py" compare "$tmp/cuda_$prec.safetensors" "$tmp/cpu.safetensors" \
      "$tol" "$prec" || { echo "CLI parity ($prec): FAIL"; rc=1; }
  done
  run_bin "$BIN/franca-embed" --model "$tmp/s.safetensors" --device auto --bench --iters 3 |
    tee "$tmp/auto.txt"
  grep -q "device: cuda" "$tmp/auto.txt" || { echo "--device auto did not pick cuda"; rc=1; }
  return $rc
}

main() {
  preflight
  step "parity: CUDA vs CPU engine (gpu_parity --full)" 300 \
    "${E[@]}" "$BIN/gpu_parity" --full --embed "$BIN/franca-embed" \
    --ckpt-tool "$BIN/franca-checkpoint"
  step "parity: cuBLAS search backend vs CPU (test_search_cuda)" 180 \
    "${E[@]}" "$BIN/test_search_cuda"
  step "parity: franca-embed --device cuda vs cpu (CLI)" 180 \
    env PACK_LIBPATH="$LIBPATH" bash "$PACK/run.sh" --cli-parity

  local peak=""
  step "bf16 GEMM peak (cuBLASLt, 8192^3)" 60 "${E[@]}" "$BIN/gemm_peak" 8192
  peak=$(awk '/TFLOP/ {print $NF}' "$RES/step.out" | tail -1)
  printf '# franca CUDA engine: %s\n\nbf16 GEMM peak (cuBLASLt, 8192^3): %s TFLOP/s\n\n' \
    "$GPU" "${peak:-?}" >"$RES/bench.md"
  step "benchmark: franca CUDA engine (bf16)" 200 "${E[@]}" "$BIN/bench_gpu" --peak "${peak:-0}" \
    --seconds "$SECS" s:224:1,8,64,256:auto b:224:1,8,64,256:auto b:224:256:unfused \
    l:224:1,8,64,256:auto s:518:1,8,32:auto b:518:1,8,32:auto l:518:1,8,32:fused \
    l:518:1,8,32:unfused
  { cat "$RES/step.out"; echo; } >>"$RES/bench.md"
  step "benchmark: pipelined forward against one chunk" 100 "${E[@]}" "$BIN/bench_gpu" \
    --peak "${peak:-0}" --seconds "$SECS" --compare-pipeline s:224:256:auto b:224:128,256:auto \
    l:518:32:fused
  { cat "$RES/step.out"; echo; } >>"$RES/bench.md"

  local t_left=$((BUDGET - $(elapsed)))
  if [ "${SKIP_TORCH:-0}" = 1 ]; then
    stamp "PyTorch baseline: skipped (SKIP_TORCH=1)"
  elif ! python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    stamp "PyTorch baseline: skipped (python3 has no torch with CUDA)"
  elif ((t_left < 45)); then
    stamp "PyTorch baseline: skipped (${t_left}s left of RUN_BUDGET ${BUDGET}s)"
  else
    COUNTED=0
    step "benchmark: PyTorch bf16 baseline (a failure here does not fail the run)" \
      $((t_left + 50)) python3 "$PACK/torch_baseline.py" --peak "${peak:-0}" --seconds "$SECS" \
      --budget "$t_left"
    { echo "PyTorch bf16 baseline (same architectures, random weights):"; echo
      grep '^|' "$RES/step.out" || true; } >>"$RES/bench.md"
  fi
  rm -f "$RES/step.out"
  echo
  cat "$RES/bench.md"
  if ((${#FAILED[@]})); then
    stamp "FAILED: $(printf '%s; ' "${FAILED[@]}")(log: $RES/gpu-run.log)"
    return 1
  fi
  stamp "all GPU checks passed (log: $RES/gpu-run.log, table: $RES/bench.md)"
}

if [ "${1:-}" = --cli-parity ]; then
  LIBPATH=${PACK_LIBPATH:?}
  cli_parity
  exit
fi
mkdir -p "$RES"
main 2>&1 | tee "$RES/gpu-run.log"
