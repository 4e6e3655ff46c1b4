"""franca-embed's command-line contract: exit codes, messages, outputs, batching,
resolution modes and the benchmark line."""
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refmodel import read_safetensors  # noqa: E402

EMBED = os.environ.get("FRANCA_EMBED", "build/engine/franca-embed")
CKPT_TOOL = os.path.join(os.path.dirname(EMBED), "franca-checkpoint")
PHOTOS = "/usr/lib/python3/dist-packages/skimage/data"

passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {what}")
    else:
        failed += 1
        print(f"FAIL {what}")


def run(*args):
    return subprocess.run([EMBED, *map(str, args)], capture_output=True, text=True, timeout=600)


def one_line_error(p, code, needle):
    lines = p.stderr.strip().splitlines()
    return p.returncode == code and len(lines) == 1 and needle in lines[0]


def main():
    tmp = tempfile.mkdtemp(prefix="embed_cli_")
    ckpt = os.path.join(tmp, "tiny.safetensors")
    subprocess.run([CKPT_TOOL, "init", "--arch", "vit_tiny_test", "--rasa-layers", "0", "--seed", "3", "--out", ckpt],
                   check=True, capture_output=True)
    out = os.path.join(tmp, "out.safetensors")
    img = [os.path.join(PHOTOS, n) for n in ("astronaut.png", "chelsea.png", "coffee.png")]

    # Usage errors: exit 2 with one line on stderr.
    check(one_line_error(run(), 2, "--model"), "no arguments: exit 2 naming --model")
    check(one_line_error(run("--model", ckpt, "--bogus"), 2, "option"), "unknown option: exit 2")
    check(one_line_error(run("--model", ckpt, img[0]), 2, "--out"), "missing --out: exit 2")
    check(one_line_error(run("--model", ckpt, "--out", out), 2, "either"), "no input: exit 2")
    npy = os.path.join(tmp, "x.npy")
    np.save(npy, np.zeros((1, 3, 28, 28), np.float32))
    check(one_line_error(run("--model", ckpt, "--input-npy", npy, img[0], "--out", out), 2, "either"),
          "npy and images together: exit 2")
    check(one_line_error(run("--model", ckpt, "--width", "abc", img[0], "--out", out), 2, "--width"),
          "non-numeric width: exit 2")
    check(one_line_error(run("--model", ckpt, "--device", "tpu", img[0], "--out", out), 2, "--device"),
          "unknown device: exit 2")
    check(run("--help").returncode == 0 and "--input-npy" in run("--help").stdout, "--help: exit 0")
    check("--layer I" in run("--help").stdout and "--no-layer-norm" in run("--help").stdout,
          "--help documents --layer and --no-layer-norm")
    check(one_line_error(run("--model", ckpt, "--layer", "last", img[0], "--out", out), 2, "--layer"),
          "non-numeric --layer: exit 2")

    # Other errors: exit 1 with one line.
    check(one_line_error(run("--model", os.path.join(tmp, "none.safetensors"), img[0], "--out", out), 1,
                         "none.safetensors"), "missing checkpoint: exit 1 naming it")
    check(one_line_error(run("--model", ckpt, "--width", "65", img[0], "--out", out), 1, "embed_dim"),
          "width above D: exit 1")
    check(one_line_error(run("--model", ckpt, "--rasa", img[0], "--out", out), 1, "RASA"),
          "--rasa without RASA tensors: exit 1")
    check(one_line_error(run("--model", ckpt, "--resolution", "30", img[0], "--out", out), 1, "multiple"),
          "resolution not a multiple of the patch: exit 1")
    np.save(npy, np.zeros((1, 3, 28, 30), np.float32))
    check(one_line_error(run("--model", ckpt, "--input-npy", npy, "--out", out), 1, "multiple"),
          "npy side not a multiple of the patch: exit 1")
    np.save(npy, np.zeros((2, 28, 28), np.float32))
    check(one_line_error(run("--model", ckpt, "--input-npy", npy, "--out", out), 1, "[B,3,H,W]"),
          "npy of the wrong rank: exit 1")
    np.save(npy, np.zeros((1, 3, 28, 28), np.float64))
    check(one_line_error(run("--model", ckpt, "--input-npy", npy, "--out", out), 1, "float32"),
          "float64 npy: exit 1 naming float32")
    check(one_line_error(run("--model", ckpt, "--device", "cuda", img[0], "--out", out), 1, "cuda"),
          "--device cuda without a CUDA engine: exit 1")
    check(one_line_error(run("--model", ckpt, img[0], "--out", os.path.join(tmp, "no/such/dir/o.st")), 1,
                         "o.st"), "unwritable output: exit 1")
    check(one_line_error(run("--model", ckpt, "--layer", "2", img[0], "--out", out), 1, "2 blocks"),
          "--layer past the depth: exit 1 naming the depth")
    check(one_line_error(run("--model", ckpt, "--layer", "-3", img[0], "--out", out), 1, "-2 to -1"),
          "--layer -3 of 2 blocks: exit 1")
    check(not os.path.exists(out), "no output written by failed runs")

    # Images with the checkpoint's eval preprocessing (224 crop -> 16x16 patches).
    p = run("--model", ckpt, "--width", "8", "--width", "32", "--width", "8", *img, "--out", out)
    check(p.returncode == 0 and p.stderr == "", f"embed 3 images: exit 0 ({p.stderr.strip()})")
    t, meta = read_safetensors(out)
    check(sorted(t) == ["cls", "cls_w32", "cls_w8", "patch"], f"tensors written once each: {sorted(t)}")
    check(t["cls"].shape == (3, 64) and t["patch"].shape == (3, 256, 64), "cls [B,D] and patch [B,N,D]")
    check(meta.get("grid_height") == "16" and meta.get("patch_size") == "14", f"metadata {meta}")
    w8 = t["cls"][:, :8] / np.linalg.norm(t["cls"][:, :8], axis=1, keepdims=True)
    check(np.abs(t["cls_w8"] - w8).max() < 1e-6, "cls_w8 = prefix of cls, L2-normalised")
    check(np.abs(np.linalg.norm(t["cls_w32"], axis=1) - 1).max() < 1e-5, "cls_w32 rows are unit length")
    # Untrained LayerScale (1e-5) barely lets the image reach CLS; patch tokens show it.
    check(np.abs(t["patch"][0] - t["patch"][1]).max() > 1e-2, "different images give different patches")

    # Batching must not change results: one image per forward pass vs three.
    out1 = os.path.join(tmp, "b1.safetensors")
    check(run("--model", ckpt, "--batch", "1", *img, "--out", out1).returncode == 0, "--batch 1 runs")
    t1, _ = read_safetensors(out1)
    check(np.abs(t1["cls"] - t["cls"]).max() < 1e-5 and np.abs(t1["patch"] - t["patch"]).max() < 1e-5,
          "--batch 1 equals batch 3")

    # Intermediate layers: -1 and 1 are one block (written once), named by its index.
    p = run("--model", ckpt, "--batch", "2", "--layer", "0", "--layer", "-1", "--layer", "1", *img,
            "--out", out1)
    tl, _ = read_safetensors(out1)
    check(p.returncode == 0 and sorted(tl) == ["cls", "layer0_cls", "layer0_patch", "layer1_cls", "layer1_patch",
                                               "patch"], f"--layer 0 -1 1: tensors {sorted(tl)}")
    check(tl.get("layer0_cls", np.zeros(0)).shape == (3, 64) and tl.get("layer0_patch", np.zeros(0)).shape
          == (3, 256, 64), "layer{i}_cls [B,D] and layer{i}_patch [B,N,D]")
    check(np.abs(tl.get("layer1_patch", 0) - t["patch"]).max() < 1e-5,
          "the last block through the norm is the final patch output, across chunks of 2")

    # Dense mode: R x R resize.
    p = run("--model", ckpt, "--resolution", "112", img[0], "--out", out)
    t, meta = read_safetensors(out)
    check(p.returncode == 0 and t["patch"].shape == (1, 64, 64) and meta.get("grid_width") == "8",
          "--resolution 112 gives an 8x8 grid")

    # Benchmark: last stdout line is images/s.
    p = run("--model", ckpt, "--bench", "--batch", "2", "--iters", "2", "--threads", "1")
    last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    check(p.returncode == 0 and last.startswith("images/s: ") and float(last.split()[1]) > 0,
          f"--bench last line: {last!r}")
    check(one_line_error(run("--model", ckpt, "--bench", img[0]), 2, "--bench"), "--bench with inputs: exit 2")

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
