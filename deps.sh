#!/usr/bin/env bash
# Installs what building and testing need on Debian 12 (run as root); installs
# nothing when everything is present.
set -euo pipefail

packages=(
  build-essential pkg-config meson ninja-build
  clang libclang-rt-14-dev libomp-14-dev
  libjansson-dev libopenblas-openmp-dev libpng-dev libjpeg62-turbo-dev
  libsqlite3-dev libmicrohttpd-dev zlib1g-dev libdnnl-dev
  python3 python3-numpy python3-torch python3-torchvision python3-pil python3-skimage
  python3-jsonschema python3-venv python3-faiss curl
  chromium chromium-driver python3-selenium
  libopenmpi-dev openmpi-bin
  dataset-fashion-mnist
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps.sh: installing ${missing[*]}"
  # Wait for another apt or dpkg process (an unattended upgrade, a second
  # script) to let go of its locks instead of failing at once.
  apt_wait=(-o DPkg::Lock::Timeout=300)
  apt-get "${apt_wait[@]}" update
  DEBIAN_FRONTEND=noninteractive apt-get "${apt_wait[@]}" install -y --no-install-recommends \
    "${missing[@]}"
fi
