"""Data-parallel throughput of franca-train over MPI on this machine: images/s
(global batch samples per second, steps after the first) for 1 rank and for R
ranks (default 2) on the same global batch, the scaling efficiency
ips(R) / (R ips(1)), and the bytes each rank all-reduces per step (gradients,
Sinkhorn-Knopp sums, loss terms), as franca-train reports them. Every rank runs
OMP_NUM_THREADS=--threads (default 1), so R ranks use R x that many cores.
Data: generated 28x28 IDX images (tests/train/test_train_cli.py).

Env: FRANCA_BUILD_ROOT (default ./build). Options: --steps N, --ranks R, --batch B,
--threads T, --config small|tiny|fmnist, --rounds N, --overlap-ab (R ranks also with the
all-reduce after the backward pass, and overlapped without MPI_Test progress calls).
Run: /usr/bin/python3 tests/bench/bench_train_mpi.py
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "train"))

from test_train_cli import make_data  # noqa: E402

CONFIGS = {
    "tiny": dict(embed_dim=32, depth=2, num_heads=2, head_hidden=32, head_bottleneck=16,
                 head_prototypes=64, n_levels=3),
    "small": dict(embed_dim=64, depth=2, num_heads=2, head_hidden=128, head_bottleneck=64,
                  head_prototypes=256, n_levels=3),
    # the model and heads of tests/bench/train_fashion_mnist.py
    "fmnist": dict(embed_dim=256, depth=4, num_heads=4, head_hidden=512, head_bottleneck=128,
                   head_prototypes=1024, n_levels=5),
}


def run(train, cfg_path, out, ranks, threads, steps, extra_env=None):
    # yield_when_idle: a rank waiting in a collective gives its core back
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_btl_vader_single_copy_mechanism="none",
               OMPI_MCA_mpi_yield_when_idle="1", **(extra_env or {}))
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-n", str(ranks),
           train, "--config", cfg_path, "--out", out, "--steps", str(steps)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        sys.exit(f"{' '.join(cmd)} failed: {p.stderr[-600:]}")
    with open(os.path.join(out, "log.jsonl")) as f:
        log = [json.loads(l) for l in f if '"loss"' in l]
    first, last = log[0], log[-1]
    B = json.load(open(cfg_path))["batch_size"]
    # images_per_s is cumulative from the loop start: drop the first (warm-up) step
    t1 = first["step"] * B / first["images_per_s"]
    tn = last["step"] * B / last["images_per_s"]
    ips = (last["step"] - first["step"]) * B / (tn - t1)
    m = re.search(r"(\d+) bytes all-reduced per step", p.stdout)
    # the least-waiting rank's wait: the reduction left after the backward pass,
    # without the time the ranks spent waiting for each other
    w = re.search(r"ranks ([0-9.]+) to ([0-9.]+)\)", p.stdout)
    return ips, int(m.group(1)) if m else 0, float(w.group(1)) if w else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="small")
    ap.add_argument("--rounds", type=int, default=1, help="rounds, 1 and R ranks alternating; medians")
    ap.add_argument("--overlap-ab", action="store_true",
                    help="each round also runs R ranks with the all-reduce after the backward pass "
                         "(FRANCA_TRAIN_OVERLAP=0) and overlapped without MPI_Test at the hooks "
                         "(FRANCA_TRAIN_MPI_TEST=0)")
    a = ap.parse_args()
    build = os.environ.get("FRANCA_BUILD_ROOT", os.path.join(HERE, "..", "..", "build"))
    train = os.path.join(build, "train", "franca-train")
    tmp = tempfile.mkdtemp(prefix="bench_train_mpi_")
    d = make_data(tmp)
    cfg = dict(CONFIGS[a.config], patch_size=7, global_size=28, local_size=14, n_local=2,
               batch_size=a.batch, steps=a.steps, warmup_steps=2, train_idx=d["train-images.gz"],
               knn_train_images="", knn_train_labels="", knn_test_images="", knn_test_labels="",
               checkpoint_every=0, log_every=1, threads=1, seed=1)
    cfg_path = os.path.join(tmp, "cfg.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    print(f"config {a.config}, global batch {a.batch}, {a.steps} steps, {a.threads} thread(s) per rank")
    variants = [("", {})]
    if a.overlap_ab:
        variants += [(" (all-reduce after backward)", {"FRANCA_TRAIN_OVERLAP": "0"}),
                     (" (overlapped, no MPI_Test)", {"FRANCA_TRAIN_MPI_TEST": "0"})]
    one, many, waits = [], [[] for _ in variants], [[] for _ in variants]
    for r in range(a.rounds):
        one.append(run(train, cfg_path, os.path.join(tmp, f"r1-{r}"), 1, a.threads, a.steps)[0])
        line = f"round {r + 1}: 1 rank {one[-1]:.1f}"
        for v, (name, env) in enumerate(variants):
            ipsr, nbytes, wait = run(train, cfg_path, os.path.join(tmp, f"rR-{r}-{v}"), a.ranks,
                                     a.threads, a.steps, env)
            many[v].append(ipsr)
            waits[v].append(wait)
            line += f", {a.ranks} ranks{name} {ipsr:.1f}"
        print(line + " images/s", flush=True)
    ips1 = statistics.median(one)
    print(f"1 rank: {ips1:.1f} images/s")
    for v, (name, _) in enumerate(variants):
        ipsr = statistics.median(many[v])
        print(f"{a.ranks} ranks{name}: {ipsr:.1f} images/s, scaling efficiency {ipsr / (a.ranks * ips1):.2f}, "
              f"{nbytes} bytes ({nbytes / 2**20:.2f} MiB) all-reduced per step and rank, "
              f"{statistics.median(waits[v]):.1f} ms per step waited for it after the backward pass "
              f"(the rank that waited least)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
