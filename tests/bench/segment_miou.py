#!/usr/bin/env python3
"""mIoU of in-context segmentation (POST /v1/collections/{name}/segment) on a
dataset in Pascal VOC layout (not run in CI; nothing is downloaded: the data
is given on the command line):

    DATA_DIR/JPEGImages/ID.jpg
    DATA_DIR/SegmentationClass/ID.png         palette masks, 255 = ignore
    DATA_DIR/ImageSets/Segmentation/train.txt  ids, one per line: the memory
    DATA_DIR/ImageSets/Segmentation/val.txt    ids: the evaluated images

The train images go with their masks into a new patch collection (--storage,
--width) of a running server (--url, --api-key) or of one started here
(--model NAME=CHECKPOINT, from --build); each val image is segmented (--k,
--temperature) and compared with its mask pixel by pixel, ignoring 255.
Printed: per-class IoU and their mean over the classes present (--classes:
21 for VOC), the pixel accuracy, and the time taken. --train-limit and
--val-limit take the first N ids (Hummingbird's memory-size sweeps use
subsets of train).

    /usr/bin/python3 tests/bench/segment_miou.py ~/VOCdevkit/VOC2012 \\
        --model franca=~/ckpt/franca_vitb14.safetensors --width 768
    /usr/bin/python3 tests/bench/segment_miou.py DATA --url http://127.0.0.1:8080 --train-limit 500
"""
import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
from franca_client import FrancaClient, FrancaError  # noqa: E402


def ids(data, split, limit):
    with open(os.path.join(data, "ImageSets", "Segmentation", split + ".txt")) as f:
        out = [line.split()[0] for line in f if line.strip()]
    return out[:limit] if limit else out


def start_server(build, model, tmp):
    proc = subprocess.Popen([os.path.join(build, "server", "franca-server"), "--model", model,
                             "--port", "0", "--data", os.path.join(tmp, "data"),
                             "--max-body-mb", "64"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line.startswith("listening on http://"):
        proc.kill()
        raise SystemExit(f"franca-server did not start: {line!r}")
    return proc, "http://127.0.0.1:" + line.rsplit(":", 1)[1].strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--url", help="a running server (default: start one with --model)")
    ap.add_argument("--api-key", default=os.environ.get("FRANCA_API_KEY"))
    ap.add_argument("--model", help="NAME=CHECKPOINT for a server started here")
    ap.add_argument("--build", default=os.environ.get("FRANCA_BUILD_ROOT",
                                                      os.path.join(ROOT, "build")))
    ap.add_argument("--collection", default="segment_miou")
    ap.add_argument("--width", type=int, default=None, help="default: the model's embed_dim")
    ap.add_argument("--storage", default="f16", choices=["f16", "int8"])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--train-limit", type=int, default=0)
    ap.add_argument("--val-limit", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    if not a.url and not a.model:
        ap.error("give --url of a running server or --model NAME=CHECKPOINT to start one")
    tmp, proc = None, None
    if not a.url:
        tmp = tempfile.mkdtemp(prefix="segment_miou_")
        proc, a.url = start_server(a.build, os.path.expanduser(a.model), tmp)
    try:
        c = FrancaClient(a.url, api_key=a.api_key)
        model = next(m for m in c.models() if m.get("default")) if a.model is None else \
            next(m for m in c.models() if m["id"] == a.model.split("=")[0])
        width = a.width or model["embed_dim"]
        try:
            c.delete_collection(a.collection)  # a fresh memory each run
        except FrancaError:
            pass
        c.json("POST", "/v1/collections", {"name": a.collection, "level": "patch",
                                           "width": width, "storage": a.storage,
                                           "model": model["id"]})
        train, val = ids(a.data, "train", a.train_limit), ids(a.data, "val", a.val_limit)
        jpg = lambda i: os.path.join(a.data, "JPEGImages", i + ".jpg")  # noqa: E731
        png = lambda i: os.path.join(a.data, "SegmentationClass", i + ".png")  # noqa: E731
        t0 = time.monotonic()
        for lo in range(0, len(train), a.batch):
            part = train[lo:lo + a.batch]
            c.insert(a.collection, images=[jpg(i) for i in part], ids=part,
                     labels=[png(i) for i in part])
        t1 = time.monotonic()
        print(f"memory: {len(train)} images in {t1 - t0:.1f} s", flush=True)
        inter, union = np.zeros(a.classes), np.zeros(a.classes)
        right = total = 0
        for n, i in enumerate(val):
            pred = np.array(Image.open(io.BytesIO(
                c.segment(a.collection, jpg(i), k=a.k, temperature=a.temperature))))
            gt = np.array(Image.open(png(i)))
            ok = gt != 255
            right += int(np.sum((pred == gt) & ok))
            total += int(np.sum(ok))
            for cl in range(a.classes):
                p, g = (pred == cl) & ok, (gt == cl) & ok
                inter[cl] += np.sum(p & g)
                union[cl] += np.sum(p | g)
            if (n + 1) % 100 == 0:
                print(f"  {n + 1}/{len(val)} segmented", flush=True)
        t2 = time.monotonic()
        present = union > 0
        iou = np.where(present, inter / np.maximum(union, 1), np.nan)
        for cl in range(a.classes):
            if present[cl]:
                print(f"  class {cl:3d}: IoU {iou[cl]:.3f}")
        print(f"val: {len(val)} images in {t2 - t1:.1f} s; k {a.k}, temperature "
              f"{a.temperature}, width {width}, {a.storage}")
        print(f"mIoU {np.nanmean(iou):.4f} over {int(present.sum())} classes; pixel accuracy "
              f"{right / max(total, 1):.4f}")
    finally:
        if proc:
            proc.terminate()
            proc.wait()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
