"""Prints what franca-embed wrote: tensor shapes, metadata, and the cosine
similarity between images at each Matryoshka width (used by run.sh)."""
import sys

import numpy as np

from refmodel import read_safetensors


def main(path):
    tensors, meta = read_safetensors(path)
    print(f"{path}: model {meta.get('model')} fingerprint {meta.get('fingerprint', '')[:16]}")
    for name in sorted(tensors):
        print(f"  {name:12s} {list(tensors[name].shape)}")
    for name in sorted(k for k in tensors if k.startswith("cls_w")):
        v = tensors[name]
        sim = v @ v.T
        print(f"cosine similarity at width {name[5:]}:")
        for row in sim:
            print("  " + " ".join(f"{x:6.3f}" for x in row))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: show_features.py FEATURES.safetensors")
    main(sys.argv[1])
