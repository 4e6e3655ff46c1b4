"""In-context segmentation end to end (POST /v1/collections/{name}/segment):
a real server on port 0 with the tiny generated checkpoint of test_index.py.
Synthetic scenes made here (textured backgrounds with a red disc, a striped
green square and a blue triangle pasted at random places, known masks with a
VOC-style 255 "ignore" rim) are inserted with their label masks into an f16
patch collection; the label transfer of 4 test scenes is compared with numpy
computed from the patch tokens of /v1/features (same width, normalised, the
stored side rounded to f16), on patches whose vote is well separated; the PNG
answer equals the JSON grid upsampled by the documented pixel mapping; the
mIoU on the test scenes is printed and must beat a constant prediction. Then
the bad input statuses."""
import base64
import io
import os
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402
from harness import Checks, stop_server  # noqa: E402
from test_index import api, error_message, healthy, make_checkpoint  # noqa: E402
sys.path.insert(0, os.path.join(ts.ROOT, "clients", "python"))
from franca_client import FrancaClient  # noqa: E402

check = Checks()
W = 32
K, T = 10, 0.1
CLASSES = 4          # 0 background, 1 disc, 2 square, 3 triangle
SIZE = (300, 240)    # not square: the resize and centre crop matter


def png_uri(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def scene(rng):
    """An RGB image and its label mask (uint8, 255 on object rims)."""
    w, h = SIZE
    base = rng.integers(0, 256, 3)
    noise = rng.normal(0, 25, (h, w, 3))
    img = Image.fromarray(np.clip(base * 0.5 + 60 + noise, 0, 255).astype(np.uint8))
    mask = Image.new("L", SIZE, 0)
    d, m = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    for cls in rng.permutation([1, 2, 3])[:rng.integers(2, 4)]:
        s = int(rng.integers(50, 90))
        x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
        box = [x, y, x + s, y + s]
        if cls == 1:
            d.ellipse(box, fill=(220, 30, 30))
            m.ellipse(box, fill=255)
            m.ellipse([x + 2, y + 2, x + s - 2, y + s - 2], fill=1)
        elif cls == 2:
            d.rectangle(box, fill=(30, 200, 40))
            for k in range(x, x + s, 8):
                d.line([k, y, k, y + s], fill=(10, 90, 10), width=3)
            m.rectangle(box, fill=255)
            m.rectangle([x + 2, y + 2, x + s - 2, y + s - 2], fill=2)
        else:
            tri = [(x + s // 2, y), (x, y + s), (x + s, y + s)]
            d.polygon(tri, fill=(40, 60, 230))
            m.polygon(tri, fill=255, outline=255)
            m.polygon([(x + s // 2, y + 4), (x + 3, y + s - 2), (x + s - 3, y + s - 2)], fill=3)
    return img, np.array(mask)


def axis(n, resized, crop, patch):
    """seg_map.h: the patch index of each of n pixels along one axis."""
    off = -((crop - resized) // 2) if crop > resized else int(round((resized - crop) / 2.0))
    return np.floor(((np.arange(n) + 0.5) * resized / n - off) / patch).astype(int)


def mapping(w, h, pre, patch):
    short, long_ = (w, h) if w <= h else (h, w)
    rl = int(pre["resize_size"] * long_ / short)
    rw, rh = (pre["resize_size"], rl) if w <= h else (rl, pre["resize_size"])
    return axis(h, rh, pre["crop_size"], patch), axis(w, rw, pre["crop_size"], patch)


def down(mask, rows, cols, g):
    """Majority label per patch (ties: smaller label), 255 where no pixel maps."""
    out = np.full((g, g), 255, np.uint8)
    for r in range(g):
        for c in range(g):
            cell = mask[np.ix_(rows == r, cols == c)]
            if cell.size:
                cnt = np.bincount(cell.ravel(), minlength=256)
                out[r, c] = int(np.argmax(cnt))
    return out


def up(grid, rows, cols):
    g = grid.shape[0]
    return grid[np.clip(rows, 0, g - 1)][:, np.clip(cols, 0, g - 1)]


def features(port, img, rasa):
    st, body = api(port, "POST", "/v1/features", {"image": png_uri(img), "cls": False,
                                                  "patch": True, "widths": [W], "rasa": rasa})
    assert st == 200, (st, body)
    return np.array(body["data"][0]["patch"][str(W)], np.float32)


def reference(q, keys, labels):
    """Per query patch: (label, separated) of the softmax-weighted k-NN vote."""
    s = q @ keys.T
    out = []
    for row in s:
        order = np.argsort(-row, kind="stable")
        top = order[:K]
        wts = np.exp((row[top] - row[top[0]]) / T)
        votes = np.bincount(labels[top], weights=wts, minlength=CLASSES)
        srt = np.sort(votes)[::-1] / votes.sum()
        gap = row[order[K - 1]] - row[order[K]] if len(order) > K else 1.0
        out.append((int(np.argmax(votes)), srt[0] - srt[1] > 0.01 and gap > 1e-4))
    return out


def miou(preds, masks):
    inter, union = np.zeros(CLASSES), np.zeros(CLASSES)
    for p, m in zip(preds, masks):
        valid = m != 255
        for c in range(CLASSES):
            inter[c] += np.sum((p == c) & (m == c) & valid)
            union[c] += np.sum(((p == c) | (m == c)) & valid)
    return float(np.mean(inter[union > 0] / union[union > 0]))


def bad_input(port, train_img, train_mask):
    def bad(path, body, status, what):
        st, ans = api(port, "POST", path, body)
        check(st == status and error_message(ans) and
              ts.conforms(path.replace(path.split("/")[3], "{name}", 1), "POST", st, ans),
              f"{what}: {status} (got {st} {ans})")

    seg = "/v1/collections/seg/segment"
    img = png_uri(train_img)
    bad("/v1/collections/plain/segment", {"image": img}, 400, "a CLS-level collection")
    bad("/v1/collections/nolabels/segment", {"image": img}, 409, "no labelled items")
    bad("/v1/collections/nope/segment", {"image": img}, 404, "an unknown collection")
    bad(seg, {}, 400, "no image")
    bad(seg, {"image": img, "k": 0}, 400, "k 0")
    bad(seg, {"image": img, "k": 10001}, 400, "k too large")
    bad(seg, {"image": img, "k": 2.5}, 400, "k not an integer")
    bad(seg, {"image": img, "temperature": 0}, 400, "temperature 0")
    bad(seg, {"image": img, "temperature": "hot"}, 400, "temperature a string")
    bad(seg, {"image": img, "format": "gif"}, 400, "format gif")
    items = "/v1/collections/seg/items"
    small = png_uri(Image.fromarray(train_mask[:100, :100]))
    bad(items, {"items": [{"image": img, "labels": small}]}, 400, "a mask of the wrong size")
    rgb = png_uri(Image.fromarray(np.stack([train_mask] * 3, -1)))
    bad(items, {"items": [{"image": img, "labels": rgb}]}, 400, "an RGB mask")
    bad(items, {"items": [{"image": img, "labels": "not base64!"}]}, 400, "a mask not base64")
    bad(items, {"items": [{"image": img, "labels": 7}]}, 400, "a mask not a string")
    good = png_uri(Image.fromarray(train_mask))
    bad(items, {"items": [{"patches": [[1.0] * W], "grid": [1, 1], "labels": good}]}, 400,
        "labels without an image")
    bad("/v1/collections/plain/items", {"items": [{"image": img, "labels": good}]}, 400,
        "labels on a CLS-level collection")
    bad("/v1/collections/plain/items", {"items": [{"vector": [1.0] * W, "labels": good}]}, 400,
        "labels with a vector on a CLS-level collection")


def main():
    tmp = tempfile.mkdtemp(prefix="segment_it_")
    ck = make_checkpoint(os.path.join(tmp, "a.safetensors"), 1)
    args = ["--model", "tiny=" + ck, "--data", os.path.join(tmp, "data"), "--max-body-mb", "16"]
    server, port = ts.start(args)
    try:
        st, models = api(port, "GET", "/v1/models")
        m = models["data"][0]
        pre, patch = m["preprocess"], m["patch_size"]
        g = pre["crop_size"] // patch
        rasa = m["rasa"]
        rng = np.random.default_rng(5)
        train = [scene(rng) for _ in range(8)]
        test = [scene(rng) for _ in range(4)]
        for name, level in (("seg", "patch"), ("nolabels", "patch"), ("plain", "cls")):
            body = {"name": name, "width": W}
            if level == "patch":
                body.update(level="patch", storage="f16")
            st, c = api(port, "POST", "/v1/collections", body)
            check(st == 201, f"create {name}: {st} {c}")
        items = []
        for i, (img, mask) in enumerate(train):
            lab = Image.fromarray(mask)
            if i % 2:  # palette masks as VOC ships them
                lab = lab.convert("P")
                lab.putpalette([v for c in range(256) for v in (c, 255 - c, c // 2)])
            items.append({"id": f"train{i}", "image": png_uri(img), "labels": png_uri(lab)})
        st, ans = api(port, "POST", "/v1/collections/seg/items", {"items": items})
        check(st == 200, f"insert labelled scenes: {st} {ans}")
        st, ans = api(port, "POST", "/v1/collections/seg/items",
                      {"items": [{"id": "nolabel", "image": png_uri(test[0][0])}]})
        check(st == 200, f"an unlabelled item beside them: {st} {ans}")
        st, ans = api(port, "POST", "/v1/collections/nolabels/items",
                      {"items": [{"image": png_uri(train[0][0])}]})
        check(st == 200, f"insert without labels: {st} {ans}")

        rows, cols = mapping(SIZE[0], SIZE[1], pre, patch)
        keys, labels = [], []
        for img, mask in train:
            pl = down(mask, rows, cols, g).ravel()
            f = features(port, img, rasa).astype(np.float16).astype(np.float32)
            keys.append(f[pl != 255])
            labels.append(pl[pl != 255])
        keys, labels = np.concatenate(keys), np.concatenate(labels).astype(int)

        preds, compared, agree = [], 0, 0
        for img, mask in test:
            st, js = api(port, "POST", "/v1/collections/seg/segment",
                         {"image": png_uri(img), "k": K, "temperature": T, "format": "json"})
            check(st == 200 and js.get("grid") == [g, g] and js.get("width") == SIZE[0] and
                  js.get("height") == SIZE[1] and
                  ts.conforms("/v1/collections/{name}/segment", "POST", 200, js),
                  f"segment json: {st} {str(js)[:200]}")
            if st != 200:
                continue
            got = np.array(js["labels"], np.uint8)
            sc = np.array(js["scores"])
            check(np.all((sc > 0) & (sc <= 1 + 1e-6)), "scores are vote shares")
            ref = reference(features(port, img, rasa), keys, labels)
            for (want, sep), have in zip(ref, got.ravel()):
                if sep:
                    compared += 1
                    agree += int(want == have)
            st, png = api(port, "POST", "/v1/collections/seg/segment",
                          {"image": png_uri(img), "k": K, "temperature": T})
            pic = np.array(Image.open(io.BytesIO(png))) if st == 200 else None
            check(pic is not None and pic.shape == (SIZE[1], SIZE[0]) and
                  np.array_equal(pic, up(got, rows, cols)),
                  "the PNG is the JSON grid upsampled by the pixel mapping")
            preds.append(pic if pic is not None else up(got, rows, cols))
        n = g * g * len(test)
        client = FrancaClient(f"http://127.0.0.1:{port}")
        buf = io.BytesIO()
        test[0][0].save(buf, "PNG")
        check(np.array_equal(np.array(Image.open(io.BytesIO(client.segment("seg", buf.getvalue())))),
                             preds[0]), "franca_client segment(): the same picture")
        print(f"label transfer: {agree}/{compared} separated patches equal numpy ({n} patches)")
        check(compared >= n // 2 and agree == compared, "label transfer equals numpy")
        score = miou(preds, [m for _, m in test])
        bg = sum(np.sum(m == 0) for _, m in test) / sum(np.sum(m != 255) for _, m in test)
        chance = bg / CLASSES  # always "background": IoU bg on class 0, 0 elsewhere
        print(f"mIoU on {len(test)} test scenes: {score:.3f} (constant prediction {chance:.3f})")
        check(score > chance, "mIoU above a constant prediction")
        bad_input(port, *train[0])
        check(healthy(port), "healthy after the bad input")
    finally:
        rc = stop_server(server)
        check(rc == 0, f"SIGTERM: exited 0 (rc {rc})")
    if not check.failed:
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
