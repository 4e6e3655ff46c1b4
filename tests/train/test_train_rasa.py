"""`franca-train rasa` on the bundled Fashion-MNIST model (docs/training.md, "RASA
post-training"): 9 rounds learned on 800 training images, then measured on 600
held-out test images through franca-embed --rasa on the exported checkpoint.

(a) position: a least-squares probe predicting each patch's (row, col) from the
    tokens restricted to each round's plane, refit before and after RASA (below
    0.1 after); the planes orthonormal and the tokens' energy in their span gone;
    the between-position variance of the tokens (the energy of the per-position
    means) against the within-position variance; the full-token probe, which
    loses position too; the trainer's own per-round R^2, which falls round after
    round;
(b) CLS (and the plain patch tokens) bit-identical to the input model, so CLS k-NN
    accuracy is unchanged;
(c) the engine's patch_rasa equals docs/model.md §7.2 recomputed in numpy from the
    exported tensors (float64), and the rest of the checkpoint is the input's;
(d) the trainer's printed R^2 recomputed from the export on the engine's tokens, and an
    image folder of PNGs learning what the IDX file of the same images learns;
plus the metadata and the refusals (missing model, bad data, rounds out of range)."""
import os
import re
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_train_cli as cli  # noqa: E402  (check, run, write_idx and the pass counters)
from reftrain import read_safetensors  # noqa: E402
from test_bundled_model import FMNIST, MODEL, metadata  # noqa: E402

check = cli.check
ROUNDS = 9
N_TRAIN = 800
N_PROBE = 600


def idx_array(path, n):
    import gzip
    import struct
    with gzip.open(path, "rb") as f:
        d = f.read()
    nd = d[3]
    dims = struct.unpack(">" + "I" * nd, d[4:4 + 4 * nd])
    return np.frombuffer(d[4 + 4 * nd:], np.uint8).reshape(dims)[:n]


def embed(model, x_npy, out, rasa):
    args = ["--model", model, "--input-npy", x_npy, "--out", out, "--batch", "64", "--precision", "fp32"]
    p = cli.run(*args, *(["--rasa"] if rasa else []), exe=cli.EMBED)
    check(p.returncode == 0, f"franca-embed {'--rasa ' if rasa else ''}on {os.path.basename(model)} "
          f"({p.stderr.strip()[-200:]})")
    return read_safetensors(out)


def probe_r2(F, Y):
    """R^2 per coordinate of least squares (with intercept) fit on the first half of
    the images' tokens, scored on the second half."""
    F = F.reshape(len(Y), -1).astype(np.float64)
    A = np.c_[F, np.ones(len(F))]
    h = len(Y) // 2
    coef = np.linalg.lstsq(A[:h], Y[:h], rcond=None)[0]
    res = ((A[h:] @ coef - Y[h:]) ** 2).sum(0)
    return 1.0 - res / ((Y[h:] - Y[h:].mean(0)) ** 2).sum(0)


def variances(T):
    """Between-position (energy of the per-position mean tokens) and within-position
    variance, per image, of tokens [B, N, D]."""
    T = T.astype(np.float64)
    mu = T.mean(0)
    return ((mu - mu.mean(0)) ** 2).sum(), ((T - mu) ** 2).sum() / len(T)


def units(w, rounds):
    """docs/model.md §7.2: the orthonormal pair of each round, in order."""
    Ws = [w[f"rasa.pre_pos_layers.{t}.weight"] for t in range(rounds - 1)] + [w["rasa.pos_pred.weight"]]
    out = []
    for W in Ws:
        W = W.astype(np.float64)
        ur = W[0] / np.linalg.norm(W[0])
        v = W[1] / np.linalg.norm(W[1])
        uc = v - (v @ ur) * ur
        out.append((ur, uc / np.linalg.norm(uc)))
    return out


def knn_top1(ftr, ytr, fte, yte, k=20, T=0.07):
    """docs/model.md §14.1 on CLS: cosine, 20 nearest, exp(sim / 0.07) votes."""
    a = ftr / np.linalg.norm(ftr, axis=1, keepdims=True)
    b = fte / np.linalg.norm(fte, axis=1, keepdims=True)
    sim = b @ a.T
    nn = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(b), 256))
    for i in range(len(b)):
        np.add.at(votes[i], ytr[nn[i]], np.exp(sim[i, nn[i]] / T))
    return float((votes.argmax(1) == yte).mean())


def refusals(tmp, train_idx):
    out = os.path.join(tmp, "never.safetensors")
    base = ["rasa", "--model", MODEL, "--train-idx", train_idx, "--out", out]
    p = cli.run("rasa", "--help")
    check(p.returncode == 0 and all(f in p.stdout for f in ("--rounds", "--epochs", "--lr", "--train-idx",
                                                             "--train-folder", "--max-images")),
          "rasa --help exits 0 and documents the flags")
    for r in ("1", "66", "x"):
        p = cli.run(*base, "--rounds", r)
        check(p.returncode == 2 and "--rounds" in p.stderr, f"--rounds {r}: exit 2 naming --rounds")
    p = cli.run("rasa", "--model", os.path.join(tmp, "missing.safetensors"), "--train-idx", train_idx, "--out", out)
    check(p.returncode == 1 and "missing.safetensors" in p.stderr, "missing model: exit 1 naming it")
    p = cli.run("rasa", "--model", MODEL, "--train-idx", MODEL, "--out", out)
    check(p.returncode == 1 and "franca_fmnist_small" in p.stderr and "IDX" in p.stderr.upper(),
          f"a non-IDX --train-idx: exit 1 naming the file ({p.stderr.strip()[:160]})")
    p = cli.run("rasa", "--model", MODEL, "--out", out)
    check(p.returncode == 2 and "--train-idx" in p.stderr, "no data: exit 2")
    p = cli.run("rasa", "--model", MODEL, "--train-idx", train_idx, "--train-folder", tmp, "--out", out)
    check(p.returncode == 2, "both --train-idx and --train-folder: exit 2")
    p = cli.run(*base, "--bogus", "1")
    check(p.returncode == 2 and "--bogus" in p.stderr, "unknown flag: exit 2")
    p = cli.run("rasa", "--model", MODEL, "--train-folder", tmp, "--out", out)
    check(p.returncode == 1 and "no JPEG or PNG images" in p.stderr, "a folder without images: exit 1")
    check(not os.path.exists(out), "no output written by a refused run")


def main():
    if not os.path.exists(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")):
        print(f"skip: no Fashion-MNIST under {FMNIST} (Debian dataset-fashion-mnist)")
        return 77
    tmp = tempfile.mkdtemp(prefix="train_rasa_")
    train_idx = os.path.join(FMNIST, "train-images-idx3-ubyte.gz")
    refusals(tmp, train_idx)

    # Train: the paper's rate (2e-3) and 20 passes, as 1000 images give few steps per epoch.
    out = os.path.join(tmp, "rasa.safetensors")
    p = cli.run("rasa", "--model", MODEL, "--train-idx", train_idx, "--max-images", N_TRAIN,
                "--rounds", ROUNDS, "--lr", "2e-3", "--epochs", "20", "--out", out)
    print(p.stdout.strip())
    check(p.returncode == 0, f"franca-train rasa exits 0 ({p.stderr.strip()[-300:]})")
    if p.returncode != 0:
        print(f"{cli.passed} passed, {cli.failed} failed")
        return 1
    r2 = [(float(a), float(b)) for a, b in
          re.findall(r"^rasa round \d+/\d+: loss \S+, R\^2 before removal row (\S+) col (\S+)$", p.stdout, re.M)]
    check(len(r2) == ROUNDS, f"one progress line per round ({len(r2)})")
    first, last = np.mean(r2[0]), np.mean(r2[-1])
    check(first > 0.6 and last < first - 0.3,
          f"trainer R^2: the first round predicts position ({first:.3f}), the last far less ({last:.3f})")

    meta, meta_in = metadata(out), metadata(MODEL)
    check(meta["rasa_layers"] == ROUNDS - 1, f"metadata rasa_layers {meta['rasa_layers']} == rounds - 1")
    check(meta.get("recipe") == meta_in.get("recipe"), "the input's training recipe is kept")
    rm = meta.get("rasa", {})
    check(rm.get("rounds") == ROUNDS and rm.get("images") == N_TRAIN and
          np.allclose(rm.get("r2_before_removal", []), r2, atol=1e-4),
          "metadata records the run and its per-round R^2")
    w_in, w = read_safetensors(MODEL), read_safetensors(out)
    extra = sorted(set(w) - set(w_in))
    check(extra == sorted([f"rasa.pre_pos_layers.{t}.weight" for t in range(ROUNDS - 1)] + ["rasa.pos_pred.weight"]),
          f"the new tensors are the {ROUNDS} RASA weights")
    check(all(np.array_equal(w_in[k], w[k]) for k in w_in), "every backbone tensor is the input's (bf16 widened exactly to f32)")

    # Held-out probe images, normalised as the model's eval preprocessing (28 px: no resize).
    pre = metadata(MODEL)["preprocess"]
    x = idx_array(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz"), N_PROBE).astype(np.float32) / 255.0
    y = idx_array(os.path.join(FMNIST, "t10k-labels-idx1-ubyte.gz"), N_PROBE)
    mean, std = np.array(pre["mean"], np.float32), np.array(pre["std"], np.float32)
    X = (x[:, None] - mean[None, :, None, None]) / std[None, :, None, None]
    x_npy = os.path.join(tmp, "x.npy")
    np.save(x_npy, np.ascontiguousarray(X, dtype=np.float32))
    e0 = embed(MODEL, x_npy, os.path.join(tmp, "e0.safetensors"), False)
    e1 = embed(out, x_npy, os.path.join(tmp, "e1.safetensors"), True)

    # (b) CLS untouched.
    check(np.array_equal(e0["cls"], e1["cls"]) and np.array_equal(e0["patch"], e1["patch"]),
          "CLS and plain patch tokens bit-identical to the input model's")
    h = int(0.8 * N_PROBE)
    k0 = knn_top1(e0["cls"][:h], y[:h], e0["cls"][h:], y[h:])
    k1 = knn_top1(e1["cls"][:h], y[:h], e1["cls"][h:], y[h:])
    print(f"CLS k-NN top-1 ({h} -> {N_PROBE - h} test images): input {k0:.4f}, RASA checkpoint {k1:.4f}")
    check(k0 == k1 and k0 > 0.6, "CLS k-NN accuracy unchanged")

    # (c) the engine's operator against §7.2 in float64.
    P, R = e1["patch"], e1["patch_rasa"]
    B, N, D = P.shape
    U = units(w, ROUNDS)
    Z = P.reshape(-1, D).astype(np.float64)
    for ur, uc in U:
        Z = Z - np.outer(Z @ ur, ur) - np.outer(Z @ uc, uc)
    rel = np.abs(Z - R.reshape(-1, D)).max() / np.abs(Z).max()
    check(rel < 1e-5, f"engine patch_rasa == numpy §7.2 from the exported tensors (max rel {rel:.2e})")

    # (a) position before and after.
    g = int(round(N ** 0.5))
    pos = np.stack([np.arange(N) // g / (g - 1), np.arange(N) % g / (g - 1)], 1)
    Y = np.tile(pos, (B, 1))
    full0, full1 = probe_r2(P, Y).mean(), probe_r2(R, Y).mean()
    print(f"full-token probe R^2: before {full0:.4f}, after {full1:.4f}")
    plane0, plane1 = [], []
    for ur, uc in U[:-1]:   # the last plane is zero after RASA by construction
        Pl = np.stack([ur, uc], 1)
        plane0.append(probe_r2(P.reshape(-1, D) @ Pl, Y).mean())
        plane1.append(probe_r2(R.reshape(-1, D) @ Pl, Y).mean())
    print("per-plane probe R^2 before: " + " ".join(f"{v:.3f}" for v in plane0))
    print("per-plane probe R^2 after:  " + " ".join(f"{v:.3f}" for v in plane1))
    lastp = np.stack(U[-1], 1)
    check(np.abs(R.reshape(-1, D) @ lastp).max() < 1e-4 * np.abs(R).max(),
          "the cleaned tokens have no component on the last round's plane")
    # The planes are orthogonal (each round's weights leave the earlier planes,
    # which the tokens no longer span), so the tokens lose every removed direction.
    span = np.concatenate([np.stack(u, 1) for u in U], 1)
    gram = span.T @ span
    check(np.abs(gram - np.eye(len(gram))).max() < 1e-4,
          f"the removed planes are orthonormal (max off {np.abs(gram - np.eye(len(gram))).max():.1e})")
    check(np.abs(R.reshape(-1, D) @ span).max() < 1e-4 * np.abs(R).max(),
          "the cleaned tokens have no component on any removed plane")
    e0 = np.square(P.reshape(-1, D) @ span).sum()
    e1 = np.square(R.reshape(-1, D) @ span).sum()
    print(f"energy of the tokens in the removed subspace: before {e0:.3e}, after {e1:.3e}")
    check(e1 < 1e-8 * e0, f"the removed subspace keeps {e1 / e0:.1e} of its energy")
    # A probe refit on each plane: what is left there is float rounding.
    check(plane0[0] > 0.7 and max(plane1) < 0.1,
          f"position R^2 on each removed plane: first {plane0[0]:.3f} before; at most "
          f"{max(plane1):.3f} after")
    b0, w0 = variances(P)
    b1, w1 = variances(R)
    print(f"between-position variance {b0:.1f} -> {b1:.1f} ({b1 / b0:.3f}); within {w0:.1f} -> {w1:.1f} ({w1 / w0:.3f})")
    check(b1 / b0 < 0.7 and w1 / w0 > 0.9,
          "RASA removes a large share of the position signal and little of the rest")
    check(full1 < full0 - 0.05, f"the full-token probe loses position too ({full0:.3f} -> {full1:.3f})")

    # The trainer's own tokens and R^2: 2 rounds on the probe images themselves; its
    # printed R^2 recomputed from the exported raw weights on the engine's tokens.
    out2 = os.path.join(tmp, "rasa2.safetensors")
    p = cli.run("rasa", "--model", MODEL, "--train-idx", os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz"),
                "--max-images", N_PROBE, "--rounds", 2, "--epochs", 1, "--out", out2)
    got = [(float(a), float(b)) for a, b in
           re.findall(r"R\^2 before removal row (\S+) col (\S+)$", p.stdout, re.M)]
    w2 = read_safetensors(out2) if p.returncode == 0 else {}
    want = []
    Z = P.reshape(-1, D).astype(np.float64)
    for t, (ur, uc) in enumerate(units(w2, 2) if w2 else []):
        W = (w2["rasa.pre_pos_layers.0.weight"] if t == 0 else w2["rasa.pos_pred.weight"]).astype(np.float64)
        pred = 1.0 / (1.0 + np.exp(-(Z @ W.T)))
        want.append(tuple(1.0 - ((pred - Y) ** 2).sum(0) / ((Y - Y.mean(0)) ** 2).sum(0)))
        Z = Z - np.outer(Z @ ur, ur) - np.outer(Z @ uc, uc)
    check(len(got) == 2 and np.allclose(got, want, atol=2e-4),
          f"the trainer's R^2 {got} == numpy on the engine's tokens {np.round(want, 4).tolist()}")

    # An image folder holding the same images as PNG learns the same planes as the IDX file.
    from PIL import Image
    folder = os.path.join(tmp, "png")
    os.makedirs(folder)
    for i, im in enumerate(idx_array(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz"), 48)):
        Image.fromarray(im).save(os.path.join(folder, f"{i:03d}.png"))
    runs = []
    for src in (["--train-folder", folder], ["--train-idx", os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz"),
                                             "--max-images", 48]):
        o = os.path.join(tmp, f"small{len(runs)}.safetensors")
        p = cli.run("rasa", "--model", MODEL, *src, "--rounds", 2, "--epochs", 2, "--batch", 16, "--out", o)
        runs.append((p.returncode, re.findall(r"^rasa round .*$", p.stdout, re.M),
                     read_safetensors(o) if p.returncode == 0 else {}))
    (rc0, lines0, w0), (rc1, lines1, w1) = runs
    check(rc0 == 0 and rc1 == 0 and lines0 == lines1 and len(lines0) == 2 and
          all(np.array_equal(w0[k], w1[k]) for k in w1),
          "--train-folder of PNGs == --train-idx of the same images (lines and tensors)")
    print(f"{cli.passed} passed, {cli.failed} failed")
    return 1 if cli.failed else 0


if __name__ == "__main__":
    sys.exit(main())
