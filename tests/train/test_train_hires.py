"""High-resolution fine-tuning (issue 19): a tiny run at 28 px is fine-tuned at
56 px with --init-from. The fine-tuned pos_embed starts as the reference's
offline conversion of the old one (torch F.interpolate, bicubic, antialiased,
by size), the export records the new size and franca-embed serves an image at
it (8x8 patch grid, finite tokens), from a run directory and from an exported
model; k-NN before and after is printed (asserted computed and finite)."""
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import time
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reftrain import read_safetensors  # noqa: E402
from test_train_cli import EMBED, check, make_data, run, safetensors_header  # noqa: E402
import test_train_cli as cli  # noqa: E402


def write_png(path, rgb):
    """8-bit RGB PNG, no filter (enough for franca-embed's reader)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(np.uint8).tobytes() for y in range(h))
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


FMNIST = "/usr/share/datasets/fashion-mnist"


def data(tmp):
    """Fashion-MNIST (Debian's dataset-fashion-mnist) when installed, for k-NN
    figures that mean something; else test_train_cli's generated patterns."""
    f = {k: f"{FMNIST}/{k}-idx{3 if 'images' in k else 1}-ubyte.gz" for k in
         ("train-images", "train-labels", "t10k-images", "t10k-labels")}
    if all(os.path.exists(v) for v in f.values()):
        return {"train-images.gz": f["train-images"], "train-labels.gz": f["train-labels"],
                "test-images": f["t10k-images"], "test-labels": f["t10k-labels"]}
    return make_data(tmp)


def knn(model, d):
    p = run("knn", "--model", model, "--train-idx", d["train-images.gz"], d["train-labels.gz"],
            "--test-idx", d["test-images"], d["test-labels"], "--max-train", "2000", "--max-test", "500")
    acc = {int(m.group(1)): float(m.group(2))
           for m in re.finditer(r"knn width=(\d+) top1=([0-9.]+)", p.stdout)}
    return p.returncode, acc


def torch_resize(pos, M):
    import torch
    D = pos.shape[-1]
    M0 = int(round((pos.shape[1] - 1) ** 0.5))
    g = torch.from_numpy(pos[:, 1:].reshape(1, M0, M0, D).copy()).permute(0, 3, 1, 2)
    g = torch.nn.functional.interpolate(g, size=(M, M), mode="bicubic", antialias=True,
                                        align_corners=False)
    g = g.permute(0, 2, 3, 1).reshape(1, M * M, D).numpy()
    return np.concatenate([pos[:, :1], g], axis=1)


def main():
    t_start = time.time()
    tmp = tempfile.mkdtemp(prefix="train_hires_")
    d = data(tmp)
    print(f"data: {d['train-images.gz']}")
    cfg = {
        "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 7, "global_size": 28,
        "local_size": 14, "n_local": 2, "head_hidden": 32, "head_bottleneck": 16,
        "head_prototypes": 64, "n_levels": 3, "batch_size": 8, "steps": 30, "warmup_steps": 5,
        "freeze_last_layer_steps": 2, "teacher_temp_warmup_steps": 4,
        "train_idx": d["train-images.gz"], "log_every": 10, "threads": 2, "seed": 11,
        "crop_size": 28, "resize_size": 28, "knn_train_images": "", "knn_train_labels": "",
        "knn_test_images": "", "knn_test_labels": "",
    }
    cfg_path = os.path.join(tmp, "tiny.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    src = os.path.join(tmp, "src")
    p = run("--config", cfg_path, "--out", src)
    check(p.returncode == 0, f"28 px run trains (rc {p.returncode}: {p.stderr.strip()[-300:]})")
    before = os.path.join(tmp, "before.safetensors")
    check(run("export", src, "--out", before).returncode == 0, "export of the 28 px run")

    hires = ["--global-size", "56", "--local-size", "28", "--steps", "8", "--warmup-steps", "2",
             "--lr", "2e-4", "--freeze-last-layer-steps", "0", "--teacher-temp-warmup-steps", "0"]
    # Step 0 of the fine-tune: lr 0 and momentum 1 leave student and teacher as loaded.
    z = os.path.join(tmp, "zero")
    p = run("--init-from", src, "--out", z, *hires[:4], "--steps", "1", "--lr", "0", "--min-lr", "0",
            "--momentum-start", "1", "--momentum-end", "1")
    check(p.returncode == 0 and "fine-tuning from" in p.stdout,
          f"--init-from RUN without --config (rc {p.returncode}: {p.stderr.strip()[-300:]})")
    s0 = read_safetensors(os.path.join(src, "state.safetensors"))
    s1 = read_safetensors(os.path.join(z, "state.safetensors")) if p.returncode == 0 else {}
    for who in ("student", "teacher"):
        old = s0[f"{who}/backbone.pos_embed"].reshape(1, 17, 32)
        new = s1.get(f"{who}/backbone.pos_embed", np.zeros(0)).reshape(1, -1, 32)
        ref = torch_resize(old, 8)
        err = np.abs(new - ref).max() / np.abs(ref).max() if new.shape == ref.shape else np.inf
        check(new.shape == (1, 65, 32) and err < 1e-6,
              f"{who} pos_embed 4x4 -> 8x8 equals torch's antialiased bicubic resize (rel err {err:.2e})")
    check(all(np.array_equal(s0[k], s1[k]) for k in s0 if not k.endswith("pos_embed")
              and k.startswith(("student/", "teacher/"))), "every other student/teacher tensor (heads too) continues unchanged")
    m1 = json.loads(safetensors_header(os.path.join(z, "state.safetensors"))["__metadata__"]["franca_train_state"])
    check(m1["step"] == 1 and m1["optimizer_step"] == 1, f"schedule and AdamW start afresh ({m1['step']}, {m1['optimizer_step']})")

    ft = os.path.join(tmp, "ft")
    p = run("--init-from", src, "--out", ft, *hires)
    check(p.returncode == 0, f"56 px fine-tune (rc {p.returncode}: {p.stderr.strip()[-300:]})")
    losses = [float(m.group(1)) for m in re.finditer(r"^step \d+/8 loss ([-0-9.e+naif]+)", p.stdout, re.M)]
    check(len(losses) >= 2 and all(np.isfinite(losses)), f"fine-tune losses finite {losses}")
    with open(os.path.join(ft, "config.json")) as f:
        fc = json.load(f)
    check(fc["global_size"] == 56 and fc["init_from"] == src and fc["steps"] == 8 and fc["crop_size"] == 0,
          "the fine-tune's config: 56 px, its own schedule, init_from recorded, preprocessing follows")
    p = run("--resume", ft, "--steps", "9")
    check(p.returncode == 0 and "resuming" in p.stdout, "a fine-tune resumes like any run")
    after = os.path.join(tmp, "after.safetensors")
    check(run("export", ft, "--out", after).returncode == 0, "export of the fine-tune")

    # From an exported model (the reference's way: backbone only, heads fresh).
    fm = os.path.join(tmp, "fm")
    with open(cfg_path, "w") as f:
        json.dump({**cfg, "crop_size": 0, "resize_size": 0}, f)
    p = run("--config", cfg_path, "--init-from", before, "--out", fm, *hires[:4], "--steps", "2")
    check(p.returncode == 0, f"--init-from MODEL --config (rc {p.returncode}: {p.stderr.strip()[-300:]})")
    p = run("--init-from", before, "--out", os.path.join(tmp, "bad"))
    check(p.returncode == 2 and "--config" in p.stderr, "--init-from MODEL without --config: exit 2")
    p = run("--init-from", src, "--out", os.path.join(tmp, "bad"), "--embed-dim", "64")
    check(p.returncode == 1 and "values" in p.stderr,
          "--init-from with another architecture: exit 1 naming the tensor")

    hdr = safetensors_header(after)
    meta = json.loads(hdr["__metadata__"]["franca"])
    check(hdr["pos_embed"]["shape"] == [1, 65, 32], f"exported pos_embed on the 8x8 grid {hdr['pos_embed']['shape']}")
    check(json.dumps(meta).count("56") > 0 and meta["recipe"]["config"]["global_size"] == 56,
          "export metadata records the 56 px training")
    img = os.path.join(tmp, "img.png")
    write_png(img, np.random.default_rng(2).integers(0, 255, (70, 90, 3)))
    for name, model, grid in (("28 px model", before, 4), ("56 px fine-tune", after, 8)):
        emb = os.path.join(tmp, "emb.safetensors")
        p = run("--model", model, "--out", emb, img, exe=EMBED)
        t = read_safetensors(emb) if p.returncode == 0 else {}
        patch = t.get("patch", np.zeros(0))
        check(p.returncode == 0 and patch.shape == (1, grid * grid, 32) and np.isfinite(patch).all()
              and np.isfinite(t["cls"]).all(),
              f"franca-embed serves the {name} at its size: {grid}x{grid} finite patch tokens "
              f"{patch.shape} ({p.stderr.strip()[-200:]})")

    rb, kb = knn(before, d)
    ra, ka = knn(after, d)
    zero = os.path.join(tmp, "zero.safetensors")
    rz, kz = knn(zero, d) if run("export", z, "--out", zero).returncode == 0 else (1, {})
    print(f"k-NN top-1 before (28 px, step 30): {kb}")
    print(f"k-NN top-1 at 56 px, pos_embed resized, not trained: {kz}")
    print(f"k-NN top-1 after (56 px fine-tune, 9 steps): {ka}")
    check(rb == 0 and ra == 0 and rz == 0 and len(kb) == len(ka) == len(kz) == 3 and
          all(np.isfinite(v) and 0 <= v <= 1 for v in [*kb.values(), *ka.values(), *kz.values()]),
          "k-NN computed and finite before and after")
    print(f"{cli.passed} passed, {cli.failed} failed ({time.time() - t_start:.1f} s)")
    if not cli.failed:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if cli.failed else 0


if __name__ == "__main__":
    sys.exit(main())
