#!/usr/bin/env bash
# The CUDA engine on a GPU machine, in one call (about 6 minutes on an H200):
#   1. build (its own folder build-gpu, -Dcuda=enabled, release);
#   2. parity: CUDA against the CPU engine in-process (gpu_parity --full: fp32
#      <= 1e-4, bf16 <= 2e-2 with CLS cosine >= 0.999, fused and unfused
#      attention, SwiGLU and GELU-MLP, registers, RASA, Matryoshka widths,
#      non-square inputs, batch > 1), the cuBLAS index search backend against
#      the CPU one (test_search_cuda), then through the franca-embed CLI;
#   3. benchmark: the cuBLASLt bf16 GEMM peak, then end-to-end images/s (host
#      images in, host CLS out, transfers included) and % of that peak for
#      ViT-S/B/L-14 at 224 and 518, fused against unfused attention for ViT-L
#      at 518, the pipelined (chunked, uploads overlapping compute) forward
#      against one chunk, and PyTorch bf16 (eager, SDPA, torch.compile) when
#      python3 has torch with CUDA.
# Any parity miss, missing GPU or failed step exits non-zero.
# Environment: BUILD_DIR (build-gpu), JOBS (nproc), BENCH_SECONDS (0.5 per point),
# SKIP_TORCH=1 to leave out the PyTorch baseline.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
BUILD=${BUILD_DIR:-build-gpu}
JOBS=${JOBS:-$(nproc)}
SECS=${BENCH_SECONDS:-0.5}
T0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - T0 ))s] $*"; }
die() { echo "run.sh: FAIL: $*" >&2; exit 1; }

stamp "GPU"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
export PATH=$PATH:/usr/local/cuda/bin
command -v meson >/dev/null || die "meson not found (run ./deps.sh on a machine with network access)"

stamp "build ($BUILD, -Dcuda=enabled)"
if [ -d "$BUILD" ]; then
  meson setup --reconfigure "$BUILD" -Dbuildtype=release -Dcuda=enabled -Dfuzz=false -Db_sanitize=none >/dev/null
else
  meson setup "$BUILD" -Dbuildtype=release -Dcuda=enabled -Dfuzz=false -Db_sanitize=none >/dev/null
fi
meson compile -C "$BUILD" -j "$JOBS" engine/franca-embed engine/franca-checkpoint \
  tests/gpu/gpu_parity tests/gpu/bench_gpu tests/gpu/gemm_peak tests/gpu/test_search_cuda >/dev/null
EMBED=$BUILD/engine/franca-embed
CKPT=$BUILD/engine/franca-checkpoint

stamp "parity: CUDA vs CPU engine (in-process)"
PARITY_LOG=$(mktemp)
if ! timeout 300 "$BUILD/tests/gpu/gpu_parity" --full --embed "$EMBED" --ckpt-tool "$CKPT" | tee "$PARITY_LOG"; then
  die "parity suite failed (lines with FAIL above)"
fi
grep -q '^SKIP' "$PARITY_LOG" && die "no usable CUDA device: $(grep '^SKIP' "$PARITY_LOG")"

stamp "parity: cuBLAS search backend vs CPU (metrics, widths, masks, funnel, ties, concurrency)"
SEARCH_LOG=$(mktemp)
if ! timeout 300 "$BUILD/tests/gpu/test_search_cuda" 2>&1 | tee "$SEARCH_LOG"; then
  rm -f "$SEARCH_LOG"
  die "search backend parity failed (lines with FAIL above)"
fi
grep -q '^SKIP' "$SEARCH_LOG" && { rm -f "$SEARCH_LOG"; die "search parity: no usable CUDA device"; }
rm -f "$SEARCH_LOG"

stamp "parity: franca-embed --device cuda vs cpu (CLI, widths, RASA, non-square, batch 3)"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP" "$PARITY_LOG"' EXIT
"$CKPT" init --arch vit_small --grid 37 --rasa-layers 8 --seed 5 --out "$TMP/s.safetensors" >/dev/null
python3 "$ROOT/tests/gpu/compare_st.py" write-npy "$TMP/x.npy" 3 3 224 308
"$EMBED" --model "$TMP/s.safetensors" --device cpu --input-npy "$TMP/x.npy" --rasa \
  --width 24 --width 96 --width 384 --out "$TMP/cpu.safetensors"
for prec in fp32 bf16; do
  "$EMBED" --model "$TMP/s.safetensors" --device cuda --precision $prec --input-npy "$TMP/x.npy" \
    --rasa --width 24 --width 96 --width 384 --batch 2 --out "$TMP/cuda_$prec.safetensors"
  tol=$([ $prec = fp32 ] && echo 1e-4 || echo 2e-2)
  python3 "$ROOT/tests/gpu/compare_st.py" compare "$TMP/cuda_$prec.safetensors" "$TMP/cpu.safetensors" \
    "$tol" "$prec" || die "CLI parity ($prec)"
done
"$EMBED" --model "$TMP/s.safetensors" --device auto --bench --iters 3 | grep -q "device: cuda" \
  || die "--device auto did not pick cuda on a GPU machine"

stamp "bf16 GEMM peak (cuBLASLt, 8192^3)"
PEAK=$("$BUILD/tests/gpu/gemm_peak" 8192 | awk '/TFLOP/ {print $NF}')
echo "bf16 GEMM peak: $PEAK TFLOP/s"

stamp "benchmark: franca CUDA engine (bf16)"
timeout 240 "$BUILD/tests/gpu/bench_gpu" --peak "$PEAK" --seconds "$SECS" \
  s:224:1,8,64,256:auto b:224:1,8,64,256:auto b:224:256:unfused l:224:1,8,64,256:auto \
  s:518:1,8,32:auto b:518:1,8,32:auto l:518:1,8,32:fused l:518:1,8,32:unfused \
  | tee "$TMP/bench.md" || die "benchmark failed"

stamp "benchmark: pipelined forward (uploads overlap compute) against one chunk"
timeout 120 "$BUILD/tests/gpu/bench_gpu" --peak "$PEAK" --seconds "$SECS" --compare-pipeline \
  s:224:256:auto b:224:128,256:auto l:518:32:fused \
  | tee -a "$TMP/bench.md" || die "pipeline benchmark failed"

if [ "${SKIP_TORCH:-0}" != 1 ] && python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  stamp "benchmark: PyTorch bf16 baseline (same architectures, random weights)"
  timeout 240 python3 "$ROOT/tests/gpu/torch_baseline.py" --peak "$PEAK" --seconds "$SECS" \
    || echo "run.sh: note: the PyTorch baseline failed or timed out (engine results above stand)"
else
  stamp "PyTorch with CUDA not available here: baseline skipped"
fi
stamp "all GPU checks passed"
