"""CPU benchmark: franca-embed --bench against the PyTorch reference model
(Debian's python3-torch, fp32) on the same machine, cores and weights.

Prints images/s of both and the ratio, and the engine's achieved GFLOP/s against
the GEMM rate of this machine measured in the same run (tests/bench/sgemm_peak):
OpenBLAS's sgemm (what PyTorch runs) and the engine's packed-weight kernel.

PyTorch is given its best configuration for T cores: Debian's torch runs its
GEMMs on OpenBLAS's own thread pool beside its OpenMP pool, so both
torch.set_num_threads(1) and (T) are tried with OPENBLAS_NUM_THREADS=T and the
faster is used. The machine's speed drifts, so the two engines alternate for
--rounds rounds and medians are reported. With --native-blas-kernel, OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE (which this workplace sets to force an older kernel) are
unset for both engines alike; the kernel in use is printed.

usage: /usr/bin/python3 tests/bench/bench_cpu.py [--threads T] [--iters N]
       [--models vit_small,vit_base] [--batches 1,8] [--resolution 224] [--native-blas-kernel]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REF_DIR = os.path.join(ROOT, "tests", "reference")
sys.path.insert(0, REF_DIR)
import refmodel  # noqa: E402

ARCHS = {  # name: (D, depth, heads) of the ViT-*/14 family
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}

SEED = 0

# Runs in a fresh interpreter so that thread settings take effect from the start.
TORCH_TIMER = r"""
import sys, time, json, torch
sys.path.insert(0, sys.argv[1])
import refmodel
cfg = json.loads(sys.argv[3]); batch, res, iters, threads = map(int, sys.argv[4:8])
torch.set_num_threads(threads)
# The same weights as the engine's checkpoint (deterministic for the seed); built
# here rather than read with torch.load, which leaves this torch measurably slower.
sd = refmodel.make_state_dict(cfg, seed=int(sys.argv[2]), ls_init=0.1)
model = refmodel.RefViT(cfg, sd, dtype=torch.float32)
x = torch.randn(batch, 3, res, res)
with torch.inference_mode():
    for _ in range(2):
        model.forward_features(x)
    t0 = time.perf_counter()
    for _ in range(iters):
        model.forward_features(x)
    print(batch * iters / (time.perf_counter() - t0))
"""


def last_value(text, key):
    for line in reversed(text.splitlines()):
        if line.startswith(key):
            return float(line.split(":", 1)[1])
    raise RuntimeError(f"no '{key}' line in:\n{text}")


def bench_ours(env, build, ckpt, batch, res, iters, threads):
    p = subprocess.run([os.path.join(build, "engine", "franca-embed"), "--model", ckpt, "--bench",
                        "--batch", str(batch), "--resolution", str(res), "--iters", str(iters),
                        "--threads", str(threads)], capture_output=True, text=True, check=True, env=env)
    return last_value(p.stdout, "images/s"), last_value(p.stdout, "GFLOP/s")


def bench_torch(env, seed, cfg, batch, res, iters, threads, torch_threads):
    p = subprocess.run([sys.executable, "-c", TORCH_TIMER, REF_DIR, str(seed), json.dumps(cfg),
                        str(batch), str(res), str(iters), str(torch_threads)],
                       capture_output=True, text=True, check=True,
                       env=dict(env, OPENBLAS_NUM_THREADS=str(threads)))
    return float(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="vit_small,vit_base")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--native-blas-kernel", action="store_true")
    ap.add_argument("--build", default=os.environ.get("FRANCA_BUILD_ROOT", os.path.join(ROOT, "build")))
    args = ap.parse_args()
    env = dict(os.environ)
    if args.native_blas_kernel:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)

    peak = subprocess.run([os.path.join(args.build, "tests", "sgemm_peak"), "2048", str(args.threads)],
                          capture_output=True, text=True, check=True, env=env)
    sgemm = last_value(peak.stdout, "sgemm GFLOP/s")
    packed = last_value(peak.stdout, "packed GFLOP/s")
    kernel = [l for l in peak.stdout.splitlines() if l.startswith("packed kernel")]
    print(f"machine: {os.cpu_count()} cores; {[l for l in peak.stdout.splitlines() if l.startswith('sgemm ')][0]}; "
          f"peak {sgemm:.1f} GFLOP/s; engine's {kernel[0] if kernel else 'packed kernel'}: {packed:.1f} GFLOP/s")
    print(f"{'model':10s} {'res':>4s} {'batch':>5s} {'engine img/s':>13s} {'torch img/s':>12s} "
          f"{'ratio':>6s} {'GFLOP/s':>8s} {'% sgemm':>8s} {'% packed':>9s}")
    tmp = tempfile.mkdtemp(prefix="bench_cpu_")
    for name in args.models.split(","):
        D, depth, heads = ARCHS[name]
        cfg = refmodel.make_config(D, depth, heads, grid=16)
        sd = refmodel.make_state_dict(cfg, seed=SEED, ls_init=0.1)
        pth = os.path.join(tmp, name + ".pth")
        ckpt = os.path.join(tmp, name + ".safetensors")
        refmodel.save_pth(pth, sd)
        refmodel.convert(pth, ckpt)
        for batch in map(int, args.batches.split(",")):
            # PyTorch's better thread setting, from a short trial of each.
            tt = max(sorted({1, args.threads}),
                     key=lambda t: bench_torch(env, SEED, cfg, batch, args.resolution, 2, args.threads, t))
            # This machine's speed drifts: alternate the two, report medians.
            ours, ref, gf = [], [], []
            for _ in range(args.rounds):
                o, g = bench_ours(env, args.build, ckpt, batch, args.resolution, args.iters, args.threads)
                ours.append(o)
                gf.append(g)
                ref.append(bench_torch(env, SEED, cfg, batch, args.resolution, args.iters, args.threads, tt))
            o, r, g = statistics.median(ours), statistics.median(ref), statistics.median(gf)
            print(f"{name:10s} {args.resolution:4d} {batch:5d} {o:13.2f} {r:12.2f} "
                  f"{o / r:6.2f} {g:8.1f} {100 * g / sgemm:7.1f}% {100 * g / packed:8.1f}%  (torch threads {tt})",
                  flush=True)

if __name__ == "__main__":
    main()
