"""Training throughput of the C trainer's step (objective_step + clipping +
AdamW + EMA, via the bench_train driver) against the PyTorch reference
(tests/train/reftrain.py, float32, same config, torch threads = 2), on this
machine. Prints images/s (samples per second) for both and the ratio.

Env: FRANCA_BUILD_ROOT (default ./build). Options: --steps N, --config default|fmnist|small
(fmnist: the model and heads of tests/bench/train_fashion_mnist.py), --precision
fp32|bf16|both (the C trainer's training precision; both: fp32 and bf16 rounds
alternate, --rounds of each, and the median of each is reported with their
ratio), --no-torch (skip the PyTorch reference).
Run: /usr/bin/python3 tests/bench/bench_train.py
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "train"))

import torch  # noqa: E402

import reftrain as rt  # noqa: E402

CONFIGS = {
    # D depth heads ffn_hidden patch pos_grid global local n_local B hidden bottleneck prototypes
    "default": dict(D=192, depth=6, heads=3, ffn_hidden=512, patch=4, pos_grid=7, glob=28, loc=16,
                    n_local=4, B=32, hidden=512, bottleneck=128, prototypes=2048),
    "fmnist": dict(D=256, depth=4, heads=4, ffn_hidden=688, patch=7, pos_grid=4, glob=28, loc=14,
                   n_local=4, B=32, hidden=512, bottleneck=128, prototypes=1024),
    "small": dict(D=64, depth=2, heads=2, ffn_hidden=176, patch=4, pos_grid=7, glob=28, loc=16,
                  n_local=2, B=16, hidden=128, bottleneck=64, prototypes=256),
}


def c_bench(build, c, steps, precision="fp32"):
    exe = os.path.join(build, "tests", "train", "bench_train")
    args = [exe] + [str(c[k]) for k in ("D", "depth", "heads", "ffn_hidden", "patch", "pos_grid",
                                         "glob", "loc", "n_local", "B", "hidden", "bottleneck",
                                         "prototypes")] + [str(steps), precision]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=env).stdout
    return float(out.split("images/s")[1].split()[0])


def torch_bench(c, steps):
    torch.set_num_threads(2)
    D = c["D"]
    cfg = dict(D=D, depth=c["depth"], heads=c["heads"], ffn="swiglu", ffn_hidden=c["ffn_hidden"],
               patch=c["patch"], pos_grid=c["pos_grid"], layerscale=True, nested=True,
               widths=[D // 16, D // 8, D // 4, D // 2, D], prototypes=c["prototypes"],
               hidden=c["hidden"], bottleneck=c["bottleneck"], student_temp=0.1, koleo_weight=0.1)
    gen = torch.Generator().manual_seed(0)
    sp = {n: t.float().requires_grad_(True)
          for n, t in rt.random_params(cfg, gen, dtype=torch.float32).items()}
    tp = {n: t.detach().clone() for n, t in sp.items()}
    B, G, L, nl, P = c["B"], c["glob"], c["loc"], c["n_local"], c["patch"]
    glob = torch.randn(2 * B, 3, G, G, generator=gen)
    loc = torch.randn(nl * B, 3, L, L, generator=gen)
    N = (G // P) ** 2
    masks = torch.zeros(2 * B, N, dtype=torch.bool)
    masks[::2] = torch.rand(B, N, generator=gen) < 0.3
    opt = rt.make_optimizer(sp, 1e-4, 0.04)
    t0 = None
    for s in range(steps + 1):
        if s == 1:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = rt.franca_loss(cfg, sp, tp, glob, loc, masks, 0.04)
        loss["total"].backward()
        for mod in ("backbone", "dino_head", "ibot_head"):
            torch.nn.utils.clip_grad_norm_([t for n, t in sp.items() if rt.module_of(n) == mod], 3.0)
        opt.step()
        with torch.no_grad():
            for n in sp:
                tp[n].mul_(0.994).add_(sp[n].detach(), alpha=0.006)
    return steps * B / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="default")
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="fp32")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each precision (--precision both)")
    ap.add_argument("--no-torch", action="store_true")
    a = ap.parse_args()
    build = os.environ.get("FRANCA_BUILD_ROOT", os.path.join(HERE, "..", "..", "build"))
    c = CONFIGS[a.config]
    print("config:", c)
    if a.precision == "both":
        runs = {"fp32": [], "bf16": []}
        for r in range(a.rounds):
            for prec in runs:
                runs[prec].append(c_bench(build, c, a.steps, prec))
                print(f"round {r + 1} {prec} images/s {runs[prec][-1]:.2f}", flush=True)
        med = {prec: statistics.median(v) for prec, v in runs.items()}
        for prec, v in med.items():
            print(f"C (franca objective_step) {prec} median images/s {v:.2f}")
        print(f"ratio bf16 / fp32: {med['bf16'] / med['fp32']:.2f}x")
        ci, a.precision = med["fp32"], "fp32"
    else:
        ci = c_bench(build, c, a.steps, a.precision)
        print(f"C (franca objective_step) {a.precision} images/s {ci:.2f}")
    if a.no_torch:
        return
    ti = torch_bench(c, a.steps)
    print(f"PyTorch {torch.__version__} float32 images/s {ti:.2f}")
    print(f"ratio C {a.precision} / PyTorch: {ci / ti:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
