"""CPU benchmark: franca-embed --bench against the PyTorch reference model
(Debian's python3-torch, fp32) on the same machine, thread count and weights.

Prints images/s of both and the ratio, and the engine's achieved GFLOP/s against
the sgemm rate of this machine measured in the same run (tests/bench/sgemm_peak).

usage: /usr/bin/python3 tests/bench/bench_cpu.py [--threads T] [--iters N]
       [--models vit_small,vit_base] [--batches 1,8] [--resolution 224]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import refmodel  # noqa: E402

ARCHS = {  # name: (D, depth, heads) of the ViT-*/14 family
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}


def last_value(text, key):
    for line in reversed(text.splitlines()):
        if line.startswith(key):
            return float(line.split(":", 1)[1])
    raise RuntimeError(f"no '{key}' line in:\n{text}")


def bench_ours(build, ckpt, batch, res, iters, threads):
    p = subprocess.run([os.path.join(build, "engine", "franca-embed"), "--model", ckpt, "--bench",
                        "--batch", str(batch), "--resolution", str(res), "--iters", str(iters),
                        "--threads", str(threads)], capture_output=True, text=True, check=True)
    return last_value(p.stdout, "images/s"), last_value(p.stdout, "GFLOP/s")


def bench_torch(model, batch, res, iters):
    x = torch.randn(batch, 3, res, res)
    with torch.inference_mode():
        for _ in range(2):
            model.forward_features(x)
        t0 = time.perf_counter()
        for _ in range(iters):
            model.forward_features(x)
        return batch * iters / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--models", default="vit_small,vit_base")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--build", default=os.environ.get("FRANCA_BUILD_ROOT", os.path.join(ROOT, "build")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    peak = subprocess.run([os.path.join(args.build, "tests", "sgemm_peak"), "2048", str(args.threads)],
                          capture_output=True, text=True, check=True)
    sgemm = last_value(peak.stdout, "sgemm GFLOP/s")
    print(f"machine: {os.cpu_count()} cores, {args.threads} threads; sgemm peak {sgemm:.1f} GFLOP/s "
          f"(OpenBLAS, 2048^3)")
    print(f"{'model':10s} {'res':>4s} {'batch':>5s} {'engine img/s':>13s} {'torch img/s':>12s} "
          f"{'ratio':>6s} {'GFLOP/s':>8s} {'% sgemm':>8s}")
    tmp = tempfile.mkdtemp(prefix="bench_cpu_")
    for name in args.models.split(","):
        D, depth, heads = ARCHS[name]
        cfg = refmodel.make_config(D, depth, heads, grid=16)
        sd = refmodel.make_state_dict(cfg, seed=0, ls_init=0.1)
        pth = os.path.join(tmp, name + ".pth")
        ckpt = os.path.join(tmp, name + ".safetensors")
        refmodel.save_pth(pth, sd)
        refmodel.convert(pth, ckpt)
        model = refmodel.RefViT(cfg, sd, dtype=torch.float32)
        for batch in map(int, args.batches.split(",")):
            ours, gflops = bench_ours(args.build, ckpt, batch, args.resolution, args.iters, args.threads)
            ref = bench_torch(model, batch, args.resolution, args.iters)
            print(f"{name:10s} {args.resolution:4d} {batch:5d} {ours:13.2f} {ref:12.2f} "
                  f"{ours / ref:6.2f} {gflops:8.1f} {100 * gflops / sgemm:7.1f}%", flush=True)


if __name__ == "__main__":
    main()
