#!/usr/bin/env bash
# Installs what is missing, builds, and starts franca-server on
# http://127.0.0.1:8080 with the first checkpoint under models/ (convert the
# official weights there: see README), else the bundled small model that
# franca-train trained on Fashion-MNIST (models/franca_fmnist_small.safetensors).
# State goes under ./data; the admin token is ./data/admin.token.
set -euo pipefail
cd "$(dirname "$0")"
./deps.sh
[ -d build ] || meson setup build >/dev/null
meson compile -C build

bundled=models/franca_fmnist_small.safetensors
ckpt=$(ls models/*.safetensors 2>/dev/null | grep -vx "$bundled" | head -n 1 || true)
[ -n "$ckpt" ] || [ ! -f "$bundled" ] || ckpt=$bundled
if [ -z "$ckpt" ]; then
  mkdir -p models
  ckpt=models/franca_vits14_untrained.safetensors
  echo "no checkpoint under models/: generating an UNTRAINED one at $ckpt"
  build/engine/franca-checkpoint init --arch vit_small --seed 0 --out "$ckpt"
fi
mkdir -p -m 700 data
[ -s data/admin.token ] || (umask 077 && head -c 24 /dev/urandom | base64 > data/admin.token)
echo "admin token: data/admin.token; models for hot swap: models/"
exec build/server/franca-server --model default="$ckpt" --models-dir models --data data \
  --admin-token-file data/admin.token --host 127.0.0.1 --port 8080
