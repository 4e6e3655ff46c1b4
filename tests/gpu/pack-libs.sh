# shellcheck shell=bash
# Shared by tests/gpu/pack.sh, the pack's run.sh and tests/gpu/test_pack.sh
# (sourced, bash): which shared libraries a GPU pack carries. The C library
# and the CUDA toolkit and driver stay out (every GPU machine has its own,
# matching its driver); everything else a binary needs goes into lib/, except
# the GCC runtime, which goes into lib/compat/ and is used only where the
# machine lacks it (a newer system libstdc++ must not be shadowed by ours).

pack_lib_kind() { # soname -> system | cuda | compat | pack
  case "$1" in
    linux-vdso.so* | ld-linux* | libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | \
      libgcc_s.so* | libutil.so* | libresolv.so*) echo system ;;
    libcuda.so* | libcudart.so* | libcublas.so* | libcublasLt.so* | libnvrtc* | libnvJitLink* | \
      libcufft* | libcurand* | libcusparse* | libcusolver* | libcudnn* | libnvidia-* | \
      libnvToolsExt*) echo cuda ;;
    libstdc++.so* | libgomp.so*) echo compat ;;
    *) echo pack ;;
  esac
}

# "soname path" per library ldd lists for a binary ("not found" as the path
# when unresolved; the loader and vdso, which have no "=>", are left out).
pack_ldd() {
  ldd "$1" | awk '$2 == "=>" { if ($3 == "not") print $1, "not found"; else print $1, $3 }'
}

# Folders holding CUDA libraries, for a machine whose loader does not find
# them by itself: the toolkit's usual places, then the pip wheels of python3's
# PyTorch (nvidia/*/lib). Prints the first folder holding each soname given.
pack_cuda_dirs() {
  local cands=(/usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib
    /usr/local/cuda-*/lib64 /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu)
  local site
  if site=$(python3 -c 'import nvidia, os; print("\n".join(nvidia.__path__))' 2>/dev/null); then
    while IFS= read -r d; do cands+=("$d"/*/lib "$d"/cu*/lib); done <<<"$site"
  fi
  local so d
  for so in "$@"; do
    for d in "${cands[@]}"; do
      if [ -e "$d/$so" ]; then echo "$d"; break; fi
    done
  done | awk '!seen[$0]++'
}
