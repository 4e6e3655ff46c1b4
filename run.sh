#!/usr/bin/env bash
# Installs what is missing, builds, and runs franca-embed on sample photographs
# with the first checkpoint under models/, or, when there is none, with an
# untrained ViT-S/14 checkpoint generated once and labelled "trained": false.
# Features are written to ./data/sample_features.safetensors.
set -euo pipefail
cd "$(dirname "$0")"
./deps.sh
[ -d build ] || meson setup build >/dev/null
meson compile -C build

ckpt=$(ls models/*.safetensors 2>/dev/null | head -n 1 || true)
if [ -z "$ckpt" ]; then
  mkdir -p models
  ckpt=models/franca_vits14_untrained.safetensors
  echo "no checkpoint under models/: generating an UNTRAINED one at $ckpt"
  build/engine/franca-checkpoint init --arch vit_small --seed 0 --out "$ckpt"
fi
build/engine/franca-checkpoint info "$ckpt" | head -n 3

photos=/usr/lib/python3/dist-packages/skimage/data
mkdir -p data
build/engine/franca-embed --model "$ckpt" --width 24 --width 96 --width 384 \
  "$photos/astronaut.png" "$photos/chelsea.png" "$photos/coffee.png" "$photos/camera.png" \
  --out data/sample_features.safetensors
/usr/bin/python3 tests/reference/show_features.py data/sample_features.safetensors
