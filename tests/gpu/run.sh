#!/usr/bin/env bash
# The CUDA engine's checks on a GPU machine that has this project's libraries
# (a Debian machine set up with ./deps.sh), in one call: builds the GPU pack
# (tests/gpu/pack.sh, into BUILD_DIR/pack) and runs its run.sh, which does the
# preflight, parity, benchmark and PyTorch baseline steps (see pack-run.sh).
# Where only a pack can travel, see tests/gpu/README.md.
# Unlike the pack's run.sh alone, a machine without a usable GPU is a failure.
# Environment: BUILD_DIR (build-gpu), JOBS (nproc), and pack-run.sh's
# BENCH_SECONDS, RUN_BUDGET, HARD_LIMIT, SKIP_TORCH; results in
# ${OUT:-BUILD_DIR/pack/results}.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD_DIR:-build-gpu}
case $BUILD in /*) ;; *) BUILD=$(pwd)/$BUILD ;; esac
PACK_BUILD_DIR=$BUILD tests/gpu/pack.sh "$BUILD/pack"
REQUIRE_GPU=1 exec bash "$BUILD/pack/run.sh"
