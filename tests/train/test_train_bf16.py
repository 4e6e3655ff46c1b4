"""Training precision bf16 (config key `precision`) against fp32:

  (a) franca-train runs 5 steps from the same seed on a tiny config in fp32 and
      in bf16: both finish, the losses of every step agree within LOSS_TOL (and
      differ at all, so the bf16 products really ran), and each run's export
      loads in franca-embed;
  (b) the gradients of one objective step (tests/train/objective_dump, the
      driver of test_grad_parity) in bf16 against fp32, same weights and crops:
      cosine >= 0.99 for every tensor;
  (c) an unknown precision is refused (exit 2, naming the key and the values),
      and so is bf16 on a CPU without AVX-512 (capped here with
      ONEDNN_MAX_CPU_ISA=AVX2, which the matmul layer honours).

On a CPU without AVX-512, (a) and (b) check instead that bf16 is refused.

Tolerances: bf16 keeps 8 significant bits, a relative rounding error of at most
2^-9 (0.2 %) per operand; the products accumulate in float32, so per-element
product errors stay of that order and partly average out. The 1 % bound on
each step's loss is five times that (measured: 1e-4 on an AVX512-BF16 EPYC),
while a fault in a product (a wrong transpose, a missing scale or bias) moves
the losses by far more; subtler faults are for the per-tensor gradient check.
Gradient cosines of 0.99 allow a 14 % error vector per tensor (measured: worst
0.9999).

Env (set by meson): FRANCA_TRAIN, FRANCA_EMBED, FRANCA_BUILD_ROOT.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reftrain as rt  # noqa: E402
from test_train_cli import make_data  # noqa: E402

BUILD = os.environ.get("FRANCA_BUILD_ROOT", "build")
TRAIN = os.environ.get("FRANCA_TRAIN", os.path.join(BUILD, "train", "franca-train"))
EMBED = os.environ.get("FRANCA_EMBED", os.path.join(BUILD, "engine", "franca-embed"))
DUMP = os.path.join(BUILD, "tests", "train", "objective_dump")
LOSS_TOL, COS_MIN, STEPS = 0.01, 0.99, 5

passed = failed = 0


def check(cond, what):
    global passed, failed
    passed, failed = passed + bool(cond), failed + (not cond)
    print(("ok   " if cond else "FAIL ") + what)


def run(*args, exe=None, env=None):
    return subprocess.run([exe or TRAIN, *map(str, args)], capture_output=True, text=True,
                          timeout=900, env=env)


def cpu_has_avx512():
    """AVX-512 as the matmul layer needs it (oneDNN's avx512_core: F, BW, VL, DQ)."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
    return False


def losses(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f if '"loss"' in line]


def cli_runs(tmp, bf16_ok):
    d = make_data(tmp)
    cfg = {
        "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 7, "global_size": 28,
        "local_size": 14, "n_local": 2, "head_hidden": 32, "head_bottleneck": 16,
        "head_prototypes": 64, "n_levels": 3, "batch_size": 8, "steps": STEPS, "warmup_steps": 2,
        "freeze_last_layer_steps": 1, "teacher_temp_warmup_steps": 2, "drop_path": 0.1,
        "train_idx": d["train-images.gz"], "knn_train_images": "", "knn_train_labels": "",
        "knn_test_images": "", "knn_test_labels": "", "log_every": 1, "threads": 2, "seed": 5,
    }
    cfg_path = os.path.join(tmp, "tiny.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    dirs = {p: os.path.join(tmp, p) for p in ("fp32", "bf16")}
    p32 = run("--config", cfg_path, "--out", dirs["fp32"])
    check(p32.returncode == 0 and "precision fp32" in p32.stdout,
          f"fp32 run trains and logs its precision (rc {p32.returncode}: {p32.stderr.strip()[-300:]})")
    p16 = run("--config", cfg_path, "--out", dirs["bf16"], "--precision", "bf16")
    if not bf16_ok:
        check(p16.returncode == 2 and "AVX-512" in p16.stderr,
              f"no AVX-512: bf16 is refused at start ({p16.stderr.strip()})")
        return cfg_path
    check(p16.returncode == 0 and "precision bf16" in p16.stdout,
          f"bf16 run trains and logs its precision (rc {p16.returncode}: {p16.stderr.strip()[-300:]})")
    if p32.returncode or p16.returncode:
        return cfg_path
    l32, l16 = losses(dirs["fp32"]), losses(dirs["bf16"])
    check(len(l32) == STEPS and len(l16) == STEPS, f"{STEPS} logged steps each")
    worst = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(l32, l16))
    check(worst <= LOSS_TOL, f"bf16 losses within {LOSS_TOL:.0%} of fp32 (worst {worst:.2e}; "
          f"fp32 {[round(e['loss'], 5) for e in l32]}, bf16 {[round(e['loss'], 5) for e in l16]})")
    check(any(a["loss"] != b["loss"] for a, b in zip(l32, l16)),
          "bf16 losses are not fp32's bit for bit (the bf16 products ran)")
    with open(os.path.join(dirs["bf16"], "config.json")) as f:
        check(json.load(f)["precision"] == "bf16", "the run's config.json keeps precision bf16")
    npy = os.path.join(tmp, "x.npy")
    np.save(npy, np.random.default_rng(1).standard_normal((2, 3, 28, 28)).astype(np.float32))
    for prec, dr in dirs.items():
        check(os.path.exists(os.path.join(dr, "state.safetensors")), f"{prec} run wrote its state")
        model = os.path.join(tmp, prec + ".safetensors")
        p = run("export", dr, "--out", model)
        check(p.returncode == 0, f"{prec} run exports ({p.stderr.strip()})")
        emb = os.path.join(tmp, prec + "-emb.safetensors")
        p = run("--model", model, "--input-npy", npy, "--out", emb, exe=EMBED)
        check(p.returncode == 0 and np.isfinite(rt.read_safetensors(emb)["cls"]).all(),
              f"franca-embed loads the {prec} export ({p.stderr.strip()})")
    return cfg_path


def grad_dump(tmp, name, cfg, tensors):
    inp, out = os.path.join(tmp, name + ".in.safetensors"), os.path.join(tmp, name + ".out.safetensors")
    rt.write_safetensors(inp, tensors, {"config": json.dumps(cfg)})
    p = subprocess.run([DUMP, inp, out], capture_output=True, text=True, timeout=600)
    if p.returncode:
        print(p.stdout, p.stderr)
        return None
    return rt.read_safetensors(out)


def grad_cosines(tmp):
    cfg = dict(D=64, depth=2, heads=2, ffn="swiglu", ffn_hidden=96, patch=4, pos_grid=5,
               layerscale=True, nested=True, widths=[16, 32, 64], prototypes=128, hidden=64,
               bottleneck=32, student_temp=0.1, koleo_weight=0.1, drop_path=0.0, B=4,
               n_local=2, teacher_temp=0.07, steps=1)
    cfg["global"], cfg["local"] = 16, 8
    gen = torch.Generator().manual_seed(3)
    sp = rt.random_params(cfg, gen, dtype=torch.float32)
    tensors = {}
    for n, t in sp.items():
        noise = torch.randn(t.shape, generator=gen) * (t.std() if t.numel() > 1 else 1.0)
        tensors[n] = t.numpy()
        tensors["teacher." + n] = (t + 0.05 * noise).numpy()
    B, G, L, P = cfg["B"], cfg["global"], cfg["local"], cfg["patch"]
    N = (G // P) ** 2
    tensors["global"] = torch.randn(2 * B, 3, G, G, generator=gen).numpy()
    tensors["local"] = torch.randn(2 * B, 3, L, L, generator=gen).numpy()
    masks = np.zeros((2 * B, N), np.float32)
    masks[::2, : N // 3] = 1.0
    tensors["masks"] = masks
    g32 = grad_dump(tmp, "fp32", dict(cfg, precision="fp32"), tensors)
    g16 = grad_dump(tmp, "bf16", dict(cfg, precision="bf16"), tensors)
    check(g32 is not None and g16 is not None, "objective_dump runs in fp32 and bf16")
    if g32 is None or g16 is None:
        return
    worst, worst_name, n = 1.0, "", 0
    for name in sp:
        a, b = g32["grad." + name].ravel(), g16["grad." + name].ravel()
        if name.endswith("attn.qkv.bias"):
            # The key bias's exact gradient is 0 (it shifts a whole score row); what
            # either side computes for it is rounding noise. Compare Q and V only.
            D = cfg["D"]
            keep = np.r_[0:D, 2 * D:3 * D]
            a, b = a[keep], b[keep]
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
        n += 1
        if cos < worst:
            worst, worst_name = cos, name
        if cos < COS_MIN:
            check(False, f"gradient {name}: cosine {cos:.5f}")
    check(worst >= COS_MIN, f"bf16 gradients of {n} tensors at cosine >= {COS_MIN} against fp32 "
          f"(worst {worst:.5f}, {worst_name})")
    l32, l16 = g32["loss"][0], g16["loss"][0]
    check(abs(l16 - l32) <= LOSS_TOL * abs(l32), f"one-step loss: fp32 {l32:.6f} bf16 {l16:.6f}")


def refusals(tmp, cfg_path):
    p = run("--config", cfg_path, "--out", os.path.join(tmp, "bad"), "--precision", "fp16")
    check(p.returncode == 2 and "precision" in p.stderr and "bf16" in p.stderr and "fp16" in p.stderr,
          f"--precision fp16: exit 2 naming the key, the value and the choices ({p.stderr.strip()})")
    bad = os.path.join(tmp, "bad.json")
    with open(bad, "w") as f:
        json.dump({"precision": "half", "train_idx": os.path.join(tmp, "train-images.gz")}, f)
    p = run("--config", bad, "--out", os.path.join(tmp, "bad"))
    check(p.returncode == 2 and "precision" in p.stderr and "half" in p.stderr,
          f"config precision \"half\": exit 2 ({p.stderr.strip()})")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    p = run("--config", cfg_path, "--out", os.path.join(tmp, "bad"), "--precision", "bf16", env=env)
    check(p.returncode == 2 and "AVX-512" in p.stderr and "avx2" in p.stderr
          and not os.path.exists(os.path.join(tmp, "bad")),
          f"bf16 on an AVX2 CPU: refused at start, before the run directory ({p.stderr.strip()})")


def main():
    torch.set_num_threads(2)
    tmp = tempfile.mkdtemp(prefix="train_bf16_")
    bf16_ok = cpu_has_avx512()
    print(f"this CPU {'has' if bf16_ok else 'lacks'} AVX-512")
    cfg_path = cli_runs(tmp, bf16_ok)
    if bf16_ok:
        grad_cosines(tmp)
    refusals(tmp, cfg_path)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
