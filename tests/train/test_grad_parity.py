"""Gradient parity of the C training objective (train/objective.c) with the
PyTorch reference tests/train/reftrain.py (float64), on tiny models:

  (a) nested Matryoshka heads, SwiGLU, LayerScale, interpolated positions
  (b) the single full-width head ablation, positional grid equal to the crop grid
  (c) GELU-MLP FFN without LayerScale, three local crops
  (d) drop path 0.5 (sample-subset residual) with the kept subsets chosen here
      and fed to the C side through objective_set_drop_path_hook
  (e) 5 steps of per-module clipping + AdamW + EMA teacher on config (a)
  (f) per-level loss weights (level_weights, the reference's relative_importance)
  (g) KoLeo on every Matryoshka prefix of the CLS (koleo_levels)

The same initial weights (teacher perturbed from the student), crops and masks
(some images masked, some not) go to both sides. Acceptance: each loss term
relative error <= 1e-5; every parameter gradient max|a-b| / max|ref| <= 1e-4;
(e): every per-step loss term relative error <= 1e-4 (float32 AdamW against float64).

Env: FRANCA_BUILD_ROOT (the objective_dump driver lives in tests/train there).
Run: /usr/bin/python3 tests/train/test_grad_parity.py
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import reftrain as rt  # noqa: E402

torch.set_num_threads(2)
LOSS_TOL, GRAD_TOL, STEP_TOL = 1e-5, 1e-4, 1e-4
KEYS = ["total", "dino_local", "dino_global", "ibot", "koleo"]
BUILD = os.environ.get("FRANCA_BUILD_ROOT",
                       os.path.join(os.path.dirname(__file__), "..", "..", "build-trainb"))
DUMP = os.path.join(BUILD, "tests", "train", "objective_dump")
TMP = tempfile.mkdtemp(prefix="franca-grad-parity-")
failures = []

BASE = dict(D=32, depth=2, heads=2, ffn="swiglu", ffn_hidden=48, patch=4, pos_grid=5,
            layerscale=True, nested=True, widths=[2, 4, 8, 16, 32], prototypes=64, hidden=32,
            bottleneck=16, student_temp=0.1, koleo_weight=0.1, drop_path=0.0,
            B=2, n_local=2, teacher_temp=0.07)
BASE["global"], BASE["local"] = 16, 8


def make_case(cfg, seed):
    gen = torch.Generator().manual_seed(seed)
    sp = rt.random_params(cfg, gen)
    tp = {n: t + 0.05 * torch.randn(t.shape, generator=gen, dtype=t.dtype) * (t.std() if t.numel() > 1 else 1.0)
          for n, t in sp.items()}
    B, G, L, nl, P = cfg["B"], cfg["global"], cfg["local"], cfg["n_local"], cfg["patch"]
    glob = torch.randn(2 * B, 3, G, G, generator=gen, dtype=torch.float64)
    loc = torch.randn(nl * B, 3, L, L, generator=gen, dtype=torch.float64) if nl else None
    N = (G // P) ** 2
    masks = torch.zeros(2 * B, N, dtype=torch.bool)
    for i in range(2 * B):
        if i % 2 == 0:  # half of the images masked, with different counts
            m = 2 + (3 * i + seed) % (N - 3)
            masks[i, torch.randperm(N, generator=gen)[:m]] = True
    # float32 round trip so that both sides see exactly the same inputs
    f32 = lambda t: t.float().double()  # noqa: E731
    sp = {n: f32(t) for n, t in sp.items()}
    tp = {n: f32(t) for n, t in tp.items()}
    return sp, tp, f32(glob), (f32(loc) if loc is not None else None), masks


def subsets_for(cfg, seed):
    gen = torch.Generator().manual_seed(seed + 1000)
    out = {}
    B, nl = cfg["B"], cfg["n_local"]
    for pass_id, b in ((0, 2 * B), (1, nl * B)):
        if b == 0:
            continue
        k = max(int(b * (1 - cfg["drop_path"])), 1)
        for layer in range(cfg["depth"]):
            for branch in (0, 1):
                out[(pass_id, layer, branch)] = torch.randperm(b, generator=gen)[:k].tolist()
    return out


def run_c(name, cfg, sp, tp, glob, loc, masks, subsets=None, steps=1, extra=None):
    tensors = {}
    for n, t in sp.items():
        tensors[n] = t.numpy()
        tensors["teacher." + n] = tp[n].numpy()
    tensors["global"] = glob.numpy()
    if loc is not None:
        tensors["local"] = loc.numpy()
    tensors["masks"] = masks.float().numpy()
    for (p, l, b), idx in (subsets or {}).items():
        tensors[f"subset.{p}.{l}.{b}"] = np.asarray(idx, dtype=np.float32)
    meta = dict(cfg, steps=steps, **(extra or {}))
    inp, out = os.path.join(TMP, name + ".in.safetensors"), os.path.join(TMP, name + ".out.safetensors")
    rt.write_safetensors(inp, tensors, {"config": json.dumps(meta)})
    r = subprocess.run([DUMP, inp, out], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        print(r.stdout, r.stderr)
        raise SystemExit(f"{name}: objective_dump failed ({r.returncode})")
    return rt.read_safetensors(out)


def check(name, ok, msg):
    print(("ok   " if ok else "FAIL ") + name + ": " + msg)
    if not ok:
        failures.append(name + ": " + msg)


def grad_case(name, cfg, seed, drop=False):
    sp, tp, glob, loc, masks = make_case(cfg, seed)
    subsets = subsets_for(cfg, seed) if drop else None
    cres = run_c(name, cfg, sp, tp, glob, loc, masks, subsets)
    leaves = {n: t.clone().requires_grad_(True) for n, t in sp.items()}
    L = rt.franca_loss(cfg, leaves, tp, glob, loc, masks, cfg["teacher_temp"], subsets=subsets)
    L["total"].backward()
    worst_loss = 0.0
    for k, key in enumerate(KEYS):
        ref, got = float(L[key]), float(cres["loss"][k])
        rel = abs(got - ref) / abs(ref) if ref != 0 else abs(got)
        worst_loss = max(worst_loss, rel)
        check(f"{name} loss {key}", rel <= LOSS_TOL, f"C {got:.9g} ref {ref:.9g} rel {rel:.2e}")
    worst, worst_name = 0.0, ""
    for n, t in leaves.items():
        ref = t.grad.numpy().reshape(-1)
        got = cres["grad." + n].astype(np.float64).reshape(-1)
        scale = np.abs(ref).max()
        err = np.abs(got - ref).max() / scale if scale > 0 else np.abs(got).max()
        if not err <= GRAD_TOL:
            check(f"{name} grad {n}", False, f"max|a-b|/max|ref| {err:.2e} (max|ref| {scale:.3e})")
        if err > worst:
            worst, worst_name = err, n
    check(f"{name} gradients", worst <= GRAD_TOL,
          f"{len(leaves)} tensors, worst max|a-b|/max|ref| {worst:.2e} ({worst_name}); "
          f"worst loss rel err {worst_loss:.2e}")


def steps_case(name, cfg, seed, steps=5):
    sp, tp, glob, loc, masks = make_case(cfg, seed)
    hp = dict(lr=1e-3, wd=0.04, momentum=0.9, clip=3.0)
    cres = run_c(name, cfg, sp, tp, glob, loc, masks, steps=steps, extra=hp)
    leaves = {n: t.clone().requires_grad_(True) for n, t in sp.items()}
    tpc = {n: t.clone() for n, t in tp.items()}
    hist = rt.train_steps(cfg, leaves, tpc, glob, loc, masks, cfg["teacher_temp"], steps,
                          hp["lr"], hp["wd"], hp["momentum"], hp["clip"])
    worst = 0.0
    for s in range(steps):
        for k, key in enumerate(KEYS):
            ref, got = hist[s][k], float(cres["losses"][s][k])
            rel = abs(got - ref) / abs(ref) if ref != 0 else abs(got)
            worst = max(worst, rel)
            if not rel <= STEP_TOL:
                check(f"{name} step {s} {key}", False, f"C {got:.9g} ref {ref:.9g} rel {rel:.2e}")
    check(f"{name} losses of {steps} AdamW+EMA steps", worst <= STEP_TOL,
          f"worst rel err {worst:.2e}; totals C {[round(float(x), 6) for x in cres['losses'][:, 0]]} "
          f"ref {[round(h[0], 6) for h in hist]}")
    # weights after the steps (student and EMA teacher)
    wmax, wname = 0.0, ""
    for n in sp:
        for pre, ref_t in (("student.", leaves[n].detach()), ("teacher.", tpc[n])):
            ref = ref_t.numpy().reshape(-1)
            got = cres[pre + n].astype(np.float64).reshape(-1)
            if n.endswith("attn.qkv.bias"):
                # The key bias shifts every score of a query row by the same amount, so
                # its exact gradient is zero: Adam turns the rounding noise of either
                # side into +-lr steps. Compare the query and value parts only.
                D = cfg["D"]
                keep = np.r_[0:D, 2 * D:3 * D]
                ref, got = ref[keep], got[keep]
            e = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)
            if e > wmax:
                wmax, wname = e, pre + n
    check(f"{name} weights after {steps} steps", wmax <= 1e-4,
          f"worst max|a-b|/max|ref| {wmax:.2e} ({wname})")


def main():
    if not os.path.exists(DUMP):
        raise SystemExit(f"missing {DUMP} (build the project first)")
    grad_case("a-nested-swiglu", dict(BASE), 1)
    grad_case("b-single-head", dict(BASE, nested=False, widths=[], pos_grid=4, B=3), 2)
    grad_case("c-gelu-mlp", dict(BASE, D=48, heads=3, ffn="mlp", ffn_hidden=96, pos_grid=6,
                                 layerscale=False, widths=[3, 6, 12, 24, 48], prototypes=96,
                                 n_local=3, local=12), 3)
    grad_case("d-drop-path", dict(BASE, drop_path=0.5, B=3), 4, drop=True)
    steps_case("e-adamw-ema", dict(BASE), 5)
    grad_case("f-level-weights", dict(BASE, level_weights=[3.0, 0.5, 1.0, 0.0, 2.0]), 6)
    grad_case("g-koleo-levels", dict(BASE, koleo_levels=True, koleo_weight=0.5), 7)
    shutil.rmtree(TMP, ignore_errors=True)
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("all gradient-parity checks passed")


if __name__ == "__main__":
    main()
