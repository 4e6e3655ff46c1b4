#!/usr/bin/python3
"""Clustered Matryoshka-like data for bench_hnsw: N base rows and Q queries of
width D (float32 raw files) around C centres, the spread of every component
decreasing along the dimensions (std 1/sqrt(1 + j/16)), and the exact top-k at
full width by cosine (int32 raw file).

    hnsw_data.py OUTDIR N D Q [K] [C] [NOISE]   -> OUTDIR/base.f32 queries.f32 gt.i32

NOISE (default 1.0) is the spread of a row around its centre relative to the
spread of the centres: 0.7 gives well separated clusters (easy), 1.0 and more
neighbours that the prefix alone ranks less well.
"""
import os
import sys

import numpy as np


def main():
    out, n, d, q = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    k = int(sys.argv[5]) if len(sys.argv) > 5 else 10
    c = int(sys.argv[6]) if len(sys.argv) > 6 else 1000
    noise = float(sys.argv[7]) if len(sys.argv) > 7 else 1.0
    rng = np.random.default_rng(7)
    scale = (1.0 / np.sqrt(1.0 + np.arange(d) / 16.0)).astype(np.float32)
    centres = rng.standard_normal((c, d), dtype=np.float32) * scale
    os.makedirs(out, exist_ok=True)

    def rows(count):
        lab = rng.integers(0, c, count)
        x = centres[lab] + noise * rng.standard_normal((count, d), dtype=np.float32) * scale
        return x.astype(np.float32)

    base = np.lib.format.open_memmap(os.path.join(out, "base.npy"), "w+", np.float32, (n, d))
    for s in range(0, n, 100000):
        base[s:s + 100000] = rows(min(100000, n - s))
    qs = rows(q)
    base.tofile(os.path.join(out, "base.f32"))
    qs.tofile(os.path.join(out, "queries.f32"))
    qn = qs / np.linalg.norm(qs, axis=1, keepdims=True)
    best_s = np.full((q, k), -np.inf, np.float32)
    best_i = np.zeros((q, k), np.int64)
    for s in range(0, n, 100000):
        b = np.asarray(base[s:s + 100000])
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        sc = qn @ b.T
        cs = np.concatenate([best_s, sc], axis=1)
        ci = np.concatenate([best_i, np.arange(s, s + len(b))[None, :].repeat(q, 0)], axis=1)
        top = np.argsort(-cs, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cs, top, 1)
        best_i = np.take_along_axis(ci, top, 1)
    best_i.astype(np.int32).tofile(os.path.join(out, "gt.i32"))
    os.unlink(os.path.join(out, "base.npy"))


if __name__ == "__main__":
    main()
