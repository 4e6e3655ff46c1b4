#!/usr/bin/python3
"""Where does a Matryoshka prefix lose k-NN accuracy? (issue 6, the D/16 point)

For an exported franca-train checkpoint, embeds Fashion-MNIST with franca-embed
and prints, per prefix width d (D/16 and D/8 by default), the frozen-CLS k-NN
top-1 (cosine, k = 20, T = 0.07, docs/model.md §14.1) of
  prefix   the first d features (what the server serves at width d),
  pca      the top-d principal components of the full D features (the best
           linear d-dim code by variance),
  lda      the prefix reduced to 9 Fisher directions with the labels (how much
           class information the prefix holds linearly),
the full width, LDA of the full features, and the prefix's share of the CLS
variance (d / D if spread evenly). With --state (the run's state.safetensors)
it also runs each level's teacher DINO head and prints the class purity of its
prototype assignments: how class-aligned each level's clustering is.

  /usr/bin/python3 tests/bench/prefix_probe.py --model M.safetensors
      [--state RUN/state.safetensors] [--width 16]... [--knn-train 20000] [--build build]
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_fashion_mnist import find_fmnist, knn_top1, read_idx  # noqa: E402


def st_tensors(path, names=None):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        out = {}
        for k, t in hdr.items():
            if k == "__metadata__" or (names is not None and not any(k.startswith(p) for p in names)):
                continue
            if t["dtype"] != "F32":
                sys.exit(f"{path}: {k} is {t['dtype']}, expected F32")
            f.seek(8 + n + t["data_offsets"][0])
            out[k] = np.frombuffer(f.read(t["data_offsets"][1] - t["data_offsets"][0]),
                                   np.float32).reshape(t["shape"])
        return hdr.get("__metadata__", {}), out


def embed(build, model, pre, x, tmp, tag):
    """CLS tokens of 28x28 gray images, normalised with the checkpoint's mean/std as franca-train knn does."""
    mean = np.array(pre["mean"], np.float32)[:, None, None]
    std = np.array(pre["std"], np.float32)[:, None, None]
    a = ((x.astype(np.float32) / 255.0)[:, None] - mean) / std
    npy, out = os.path.join(tmp, tag + ".npy"), os.path.join(tmp, tag + ".safetensors")
    np.save(npy, a.astype(np.float32))
    subprocess.run([os.path.join(build, "engine", "franca-embed"), "--model", model,
                    "--input-npy", npy, "--out", out], check=True)
    return st_tensors(out, ["cls"])[1]["cls"]


def knn(tr, ytr, te, yte):
    return 100.0 * knn_top1(tr, ytr, te, yte)


def pca(tr, te, d):
    m = tr.mean(0)
    vt = np.linalg.svd(tr - m, full_matrices=False)[2][:d]
    return (tr - m) @ vt.T, (te - m) @ vt.T


def lda(tr, ytr, te, d=9):
    m, D = tr.mean(0), tr.shape[1]
    sw, sb = np.zeros((D, D)), np.zeros((D, D))
    for c in range(10):
        x = tr[ytr == c]
        mc = x.mean(0)
        sw += (x - mc).T @ (x - mc)
        sb += len(x) * np.outer(mc - m, mc - m)
    ev, V = np.linalg.eig(np.linalg.solve(sw + 1e-3 * np.eye(D), sb))
    V = V[:, np.argsort(-ev.real)[:min(d, D)]].real
    return (tr - m) @ V, (te - m) @ V


def head_purity(state, D, n_levels, tr, ytr):
    """Class purity of each level's teacher DINO-head prototype assignment (argmax) on tr."""
    import torch  # exact-erf GELU as the head uses; Debian's python3-torch
    _, w = st_tensors(state, ["teacher/dino_head."])
    p = "teacher/dino_head."
    out = []
    for j in range(n_levels):
        d = D >> (n_levels - 1 - j)
        y = tr[:, :d] @ w[f"{p}matryoshka_projections.{j}.weight"].reshape(d, d).T \
            + w[f"{p}matryoshka_projections.{j}.bias"]
        for layer in (0, 2, 4):
            b = w[f"{p}mlps.{j}.{layer}.bias"]
            y = torch.nn.functional.gelu(torch.from_numpy(
                (y @ w[f"{p}mlps.{j}.{layer}.weight"].reshape(len(b), -1).T + b).astype(np.float32))).numpy()
        g = w[f"{p}last_layers.{j}.weight_g"].reshape(-1)
        v = w[f"{p}last_layers.{j}.weight_v"].reshape(len(g), -1)
        a = (y @ (v / np.linalg.norm(v, axis=1, keepdims=True) * g[:, None]).T).argmax(1)
        hits = sum(np.bincount(ytr[a == c], minlength=10).max() for c in np.unique(a))
        out.append((d, len(np.unique(a)), len(g), hits / len(a)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--state", default=None)
    ap.add_argument("--width", type=int, action="append", default=[])
    ap.add_argument("--knn-train", type=int, default=20000)
    ap.add_argument("--build", default="build")
    a = ap.parse_args()
    meta, _ = st_tensors(a.model, [])
    franca = json.loads(meta["franca"])
    cfg, pre = franca["recipe"]["config"], franca["preprocess"]
    if pre["crop_size"] != 28:
        sys.exit(f"{a.model}: expects 28 px input (Fashion-MNIST), the checkpoint crops to {pre['crop_size']}")
    D = cfg["embed_dim"]
    widths = a.width or [D // 16, D // 8]
    files = find_fmnist()
    (ntr, h, w), xtr = read_idx(files["train-images"])
    (nte, _, _), xte = read_idx(files["t10k-images"])
    n = min(a.knn_train, ntr)
    xtr = np.frombuffer(xtr, np.uint8).reshape(ntr, h, w)[:n]
    xte = np.frombuffer(xte, np.uint8).reshape(nte, h, w)
    ytr = np.frombuffer(read_idx(files["train-labels"])[1], np.uint8)[:n].astype(np.int64)
    yte = np.frombuffer(read_idx(files["t10k-labels"])[1], np.uint8).astype(np.int64)
    with tempfile.TemporaryDirectory(prefix="prefix_probe_") as tmp:
        tr = embed(a.build, a.model, pre, xtr, tmp, "tr")
        te = embed(a.build, a.model, pre, xte, tmp, "te")
    var = tr.var(0)
    print(f"{a.model}: D={D}, k-NN {n} train -> {nte} test (cosine, k=20, T=0.07)")
    ltr, lte = lda(tr, ytr, te)
    print(f"full width d={D}: {knn(tr, ytr, te, yte):.2f}; LDA of the full features to 9 dims: "
          f"{knn(ltr, ytr, lte, yte):.2f}")
    print("| d | prefix | pca of full | lda of prefix | prefix variance share (even: d/D) |")
    print("|---:|---:|---:|---:|---:|")
    for d in widths:
        ptr, pte = pca(tr, te, d)
        ltr, lte = lda(tr[:, :d], ytr, te[:, :d])
        print(f"| {d} | {knn(tr[:, :d], ytr, te[:, :d], yte):.2f} | {knn(ptr, ytr, pte, yte):.2f} | "
              f"{knn(ltr, ytr, lte, yte):.2f} | {var[:d].sum() / var.sum():.3f} ({d / D:.3f}) |")
    if a.state and not cfg.get("head_nested", True):
        print("--state: a single-head run has no per-level heads; purity skipped")
    elif a.state:
        print("teacher DINO head, per level: prototypes used / total, class purity of the argmax prototype")
        for d, used, total, pur in head_purity(a.state, D, cfg["n_levels"], tr, ytr):
            print(f"  level d={d}: {used}/{total} prototypes, purity {pur:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
