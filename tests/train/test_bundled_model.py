"""The bundled default model (models/franca_fmnist_small.safetensors) is a
franca-train export that was trained, not a random init: its metadata carries
the recipe (nested heads, step count, data), and its frozen CLS features
classify Fashion-MNIST by k-NN far above a random-init model, at full width and
at the D/16 Matryoshka prefix (the figures docs/training.md reports
for the full 20k -> 10k protocol; here a 10k -> 2k subset so that CI stays fast)."""
import json
import os
import re
import struct
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.environ.get("FRANCA_BUNDLED", os.path.join(ROOT, "models", "franca_fmnist_small.safetensors"))
TRAIN = os.environ.get("FRANCA_TRAIN", os.path.join(ROOT, "build", "train", "franca-train"))
FMNIST = "/usr/share/datasets/fashion-mnist"

# Floors with room below what the bundled model measures on this subset
# (d=16 0.7745, d=256 0.7995); the random init of the same shape scores
# 0.5945 and 0.6400 here.
MIN_FULL = 0.77
MAX_GAP_D16 = 0.04

passed = failed = 0


def check(cond, what):
    global passed, failed
    passed += bool(cond)
    failed += not cond
    print(("ok   " if cond else "FAIL ") + what, flush=True)


def metadata(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(json.loads(f.read(n))["__metadata__"]["franca"])


def main():
    meta = metadata(MODEL)
    recipe = meta.get("recipe", {})
    cfg = recipe.get("config", {})
    check(meta.get("trained") is True, "metadata says trained")
    check(recipe.get("trainer") == "franca-train" and recipe.get("step", 0) >= 1000,
          f"trained by franca-train for {recipe.get('step')} steps")
    check(cfg.get("head_nested") is True, "with the nested Matryoshka heads")
    check("fashion-mnist" in recipe.get("data", ""), f"on Fashion-MNIST ({recipe.get('data')})")
    widths = meta["matryoshka_widths"]
    check(widths[-1] == meta["embed_dim"] and widths[0] * 16 == meta["embed_dim"],
          f"Matryoshka widths {widths}")

    def idx(kind):
        return [f"{FMNIST}/{kind}-images-idx3-ubyte.gz", f"{FMNIST}/{kind}-labels-idx1-ubyte.gz"]

    args = [TRAIN, "knn", "--model", MODEL, "--train-idx", *idx("train"), "--test-idx", *idx("t10k"),
            "--max-train", "10000", "--max-test", "2000"]
    for w in (widths[0], widths[-1]):
        args += ["--width", str(w)]
    p = subprocess.run(args, capture_output=True, text=True, timeout=600)
    check(p.returncode == 0, f"franca-train knn exits 0 ({p.stderr.strip()[-300:]})")
    top1 = {int(w): float(t) for w, t in re.findall(r"^knn width=(\d+) top1=([0-9.]+)$", p.stdout, re.M)}
    full, small = top1.get(widths[-1], 0.0), top1.get(widths[0], 0.0)
    print(f"k-NN top-1 (10k -> 2k): d={widths[0]} {small:.4f}, d={widths[-1]} {full:.4f}")
    check(full >= MIN_FULL, f"full width {full:.4f} >= {MIN_FULL}")
    check(full - small <= MAX_GAP_D16, f"D/16 within {MAX_GAP_D16:.3f} of full width ({full - small:.4f})")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
