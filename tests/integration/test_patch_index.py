"""Patch-level collections end to end: a real server on port 0 with the tiny
generated checkpoint of test_index.py. Photographs of skimage.data are
inserted by image into an f16 and an int8 patch collection; every search form
(patch, box, whole image by late interaction; queries by id and by image) is
compared with numpy computed from the patch tokens of /v1/features at the
same width (L2-normalised, RASA-cleaned when the checkpoint has RASA tensors),
rounded to f16 or int8 as the server stores them: rankings where the scores
are well separated, scores within the rounding. Then patches given as
vectors, the heat map PNG (size, grid, score range), the bad input statuses,
a delete, and a restart on the same --data that serves the same answers."""
import base64
import os
import shutil
import struct
import sys
import tempfile
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402
from harness import Checks, stop_server  # noqa: E402
from test_index import api, error_message, healthy, make_checkpoint  # noqa: E402

check = Checks()
W = 32
NAMES = ["chelsea.png", "coffee.png", "camera.png", "astronaut.png", "rocket.jpg",
         "horse.png", "coins.png", "moon.png", "hubble_deep_field.jpg", "motorcycle_left.png"]
PHOTOS = [os.path.join(ts.PHOTOS, n) for n in NAMES]
IDS = [n.split(".")[0] for n in NAMES]
SEP = 3e-3   # ranks are compared only where neighbouring scores differ by more
TOL = 1.5e-3  # scores: f32 inference differences plus the stored rounding


def uri(path):
    data = open(path, "rb").read()
    mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def features(port, path, rasa):
    st, body = api(port, "POST", "/v1/features", {"image": uri(path), "cls": False, "patch": True,
                                                  "widths": [W], "rasa": rasa})
    if st != 200:
        return None, None
    g = body["grid"]
    return np.array(body["data"][0]["patch"][str(W)], np.float32), (g["height"], g["width"])


def quantise(x, storage):
    """What the server stores and scores: f16, or int8 with a per-vector scale."""
    if storage == "f16":
        return x.astype(np.float16).astype(np.float32)
    scale = np.abs(x).max(axis=1, keepdims=True) / 127.0
    q = np.clip(np.rint(x / np.where(scale > 0, scale, 1)), -127, 127)
    return (q * scale).astype(np.float32)


def png_size(data):
    """(width, height) of a PNG after checking its RGB pixel data inflates."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    w, h, depth, ctype = struct.unpack(">IIBB", data[16:26])
    idat, pos = b"", 8
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    assert depth == 8 and ctype == 2 and len(zlib.decompress(idat)) == h * (1 + 3 * w)
    return w, h


def image_size(path):
    data = open(path, "rb").read()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return struct.unpack(">II", data[16:24])
    pos = 2  # JPEG: the first SOFn segment
    while pos < len(data):
        marker, n = data[pos + 1], struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[pos + 5:pos + 9])
            return w, h
        pos += 2 + n
    raise ValueError(path)


def compare(what, hits, ref):
    """hits: the server's; ref: [(score, id, (row, col))] best first, all candidates."""
    k = len(hits)
    check(k == min(len(ref), k) and k > 0, f"{what}: {k} hits")
    for j, h in enumerate(hits):
        s, rid, rp = ref[j]
        gap_prev = ref[j - 1][0] - s if j else 1
        gap_next = s - ref[j + 1][0] if j + 1 < len(ref) else 1
        check(abs(h["score"] - s) < TOL, f"{what} hit {j}: score {h['score']:.5f} vs {s:.5f}")
        if min(gap_prev, gap_next) > SEP:
            check(h["id"] == rid and tuple(h["patch"]) == rp,
                  f"{what} hit {j}: {h['id']} {h['patch']} vs {rid} {rp}")


def patch_ref(q, stored, grids):
    ref = []
    for i, m in stored.items():
        s = m @ q
        gw = grids[i][1]
        ref += [(float(v), i, (p // gw, p % gw)) for p, v in enumerate(s)]
    ref.sort(key=lambda r: -r[0])
    return ref


def late_ref(qm, stored, grids):
    ref = []
    for i, m in stored.items():
        s = qm @ m.T  # [nq, n]
        best = int(np.argmax(s.max(axis=0)))
        gw = grids[i][1]
        ref.append((float(s.max(axis=1).sum()), i, (best // gw, best % gw)))
    ref.sort(key=lambda r: -r[0])
    return ref


def search(port, coll, body):
    st, ans = api(port, "POST", f"/v1/collections/{coll}/search", body)
    check(st == 200, f"search {coll} {list(body)}: {st} {ans if st != 200 else ''}")
    return ans.get("results", []) if st == 200 else []


def run_searches(port, coll, stored, grids, f32):
    """Every search form against numpy; returns the answers (for the restart)."""
    answers = {}
    qid, (r, c) = IDS[0], (5, 7)
    gw = grids[qid][1]
    ans = search(port, coll, {"id": qid, "patch": [r, c], "k": 20})
    compare(f"{coll} patch by id", ans, patch_ref(stored[qid][r * gw + c], stored, grids))
    check(ans and ans[0]["id"] == qid and ans[0]["patch"] == [r, c], f"{coll}: a patch finds itself")
    answers["patch"] = ans
    ans = search(port, coll, {"image": uri(PHOTOS[1]), "patch": [3, 4], "k": 10})
    compare(f"{coll} patch by image", ans, patch_ref(f32[IDS[1]][3 * gw + 4], stored, grids))
    box = [2, 3, 6, 9]
    g = stored[IDS[2]].reshape(grids[IDS[2]][0], grids[IDS[2]][1], W)
    q = g[box[0]:box[2], box[1]:box[3]].reshape(-1, W).mean(axis=0)
    ans = search(port, coll, {"id": IDS[2], "box": box, "k": 10})
    compare(f"{coll} box by id", ans, patch_ref(q / np.linalg.norm(q), stored, grids))
    answers["box"] = ans
    ans = search(port, coll, {"id": IDS[3], "k": 5})
    compare(f"{coll} late interaction by id", ans, late_ref(stored[IDS[3]], stored, grids))
    check(ans and ans[0]["id"] == IDS[3], f"{coll}: an image finds itself first")
    answers["late"] = ans
    ans = search(port, coll, {"image": uri(PHOTOS[4]), "k": 100})
    compare(f"{coll} late interaction by image", ans, late_ref(f32[IDS[4]], stored, grids))
    check(len(ans) == len(stored), f"{coll}: k past the collection gives every item")
    return answers


def heatmaps(port, f32, grids):
    st, png = api(port, "POST", "/v1/collections/pf16/heatmap",
                  {"id": IDS[0], "patch": [5, 7], "item": IDS[1]})
    check(st == 200 and isinstance(png, bytes), f"heatmap: {st}")
    if st == 200:
        check(png_size(png) == tuple(image_size(PHOTOS[1])),
              f"heatmap at the kept image's size {png_size(png)} vs {image_size(PHOTOS[1])}")
    st, png = api(port, "POST", "/v1/collections/pi8/heatmap",
                  {"image": uri(PHOTOS[0]), "box": [0, 0, 2, 2], "item": IDS[2]})
    check(st == 200 and isinstance(png, bytes), f"heatmap int8 by image: {st}")
    if st == 200:
        gh, gw = grids[IDS[2]]
        check(png_size(png) == (gw * 14, gh * 14), f"heatmap grid x 14 px: {png_size(png)}")


def bad_input(port):
    def bad(method, path, body, status, what):
        st, ans = api(port, method, path, body)
        check(st == status and error_message(ans), f"{what}: {st} (want {status}) {ans}")
    s = "/v1/collections/pf16/search"
    bad("POST", s, {"id": IDS[0], "patch": [16, 0]}, 400, "patch row outside the grid")
    bad("POST", s, {"id": IDS[0], "patch": [0, -1]}, 400, "negative column")
    bad("POST", s, {"image": uri(PHOTOS[0]), "patch": [99, 0]}, 400, "image patch outside the grid")
    bad("POST", s, {"id": IDS[0], "box": [3, 3, 3, 5]}, 400, "empty box")
    bad("POST", s, {"id": IDS[0], "patch": [1]}, 400, "patch of one number")
    bad("POST", s, {"id": IDS[0], "patch": [1, 1], "box": [0, 0, 1, 1]}, 400, "patch and box")
    bad("POST", s, {"vector": [0.1] * W}, 400, "vector search on a patch collection")
    bad("POST", s, {"id": IDS[0], "filter": {"a": 1}}, 400, "filter on a patch collection")
    bad("POST", s, {"id": "nope", "patch": [0, 0]}, 404, "unknown id")
    bad("POST", s, {"id": IDS[0], "k": 0}, 400, "k 0")
    bad("POST", "/v1/collections/plain/search", {"vector": [0.1] * W, "patch": [0, 0]}, 400,
        "patch on a CLS collection")
    bad("POST", "/v1/collections/plain/search", {"vector": [0.1] * W, "box": [0, 0, 1, 1]}, 400,
        "box on a CLS collection")
    bad("POST", "/v1/collections/plain/heatmap", {"id": "x", "patch": [0, 0], "item": "x"}, 400,
        "heatmap on a CLS collection")
    bad("POST", "/v1/collections/pf16/heatmap", {"id": IDS[0], "patch": [0, 0]}, 400,
        "heatmap without item")
    bad("POST", "/v1/collections/pf16/heatmap", {"id": IDS[0], "item": IDS[1]}, 400,
        "heatmap without patch")
    bad("POST", "/v1/collections/pf16/heatmap", {"id": IDS[0], "patch": [0, 0], "item": "no"},
        404, "heatmap of an unknown item")
    bad("POST", "/v1/collections/pf16/items", {"items": [{"vector": [0.1] * W}]}, 400,
        "vector insert into a patch collection")
    bad("POST", "/v1/collections/pf16/items",
        {"items": [{"patches": [[0.1] * W] * 5, "grid": [2, 3]}]}, 400, "patches not grid-sized")
    bad("POST", "/v1/collections/pf16/items",
        {"items": [{"patches": [[0.1] * (W - 1)] * 6, "grid": [2, 3]}]}, 400, "short patch")
    bad("POST", "/v1/collections/plain/items",
        {"items": [{"patches": [[0.1] * W], "grid": [1, 1]}]}, 400, "patches into a CLS collection")
    bad("POST", "/v1/collections", {"name": "x1", "level": "pixel"}, 400, "unknown level")
    bad("POST", "/v1/collections", {"name": "x2", "storage": "int8"}, 400, "storage on cls")
    bad("POST", "/v1/collections", {"name": "x3", "level": "patch", "storage": "bf16"}, 400,
        "unknown storage")
    bad("POST", "/v1/collections", {"name": "x4", "level": "patch", "metric": "l2"}, 400,
        "patch with l2")


def vector_items(port):
    rng = np.random.default_rng(3)
    p = rng.standard_normal((6, W)).astype(np.float32)
    st, ans = api(port, "POST", "/v1/collections/pf16/items",
                  {"items": [{"id": "vec", "patches": p.tolist(), "grid": [2, 3]}]})
    check(st == 200 and ans.get("ids") == ["vec"], f"patches insert: {st} {ans}")
    ans = search(port, "pf16", {"id": "vec", "patch": [1, 2], "k": 1})
    check(ans and ans[0]["id"] == "vec" and ans[0]["patch"] == [1, 2] and
          abs(ans[0]["score"] - 1) < 2e-3, f"a given patch finds itself: {ans}")
    st, item = api(port, "GET", "/v1/collections/pf16/items/vec")
    m = (p / np.linalg.norm(p, axis=1, keepdims=True)).mean(axis=0)
    check(st == 200 and np.allclose(item["vector"], m / np.linalg.norm(m), atol=1e-5),
          "a patch item's vector is its normalised mean patch")
    st, _ = api(port, "DELETE", "/v1/collections/pf16/items/vec")
    check(st == 200, f"delete: {st}")
    ans = search(port, "pf16", {"id": IDS[0], "patch": [0, 0], "k": 1000})
    check(ans and all(h["id"] != "vec" for h in ans), "a deleted item is no longer found")


def main():
    tmp = tempfile.mkdtemp(prefix="patch_it_")
    ck = make_checkpoint(os.path.join(tmp, "a.safetensors"), 1)
    args = ["--model", "tiny=" + ck, "--data", os.path.join(tmp, "data"), "--max-body-mb", "16"]
    server, port = ts.start(args)
    answers = {}
    try:
        rasa = features(port, PHOTOS[0], True)[0] is not None
        print(f"checkpoint has RASA tensors: {rasa}")
        f32, grids = {}, {}
        for i, p in zip(IDS, PHOTOS):
            f32[i], grids[i] = features(port, p, rasa)
        check(all(v is not None for v in f32.values()), "features of every photo")
        for name, storage, keep in (("pf16", "f16", True), ("pi8", "int8", False)):
            st, c = api(port, "POST", "/v1/collections",
                        {"name": name, "level": "patch", "width": W, "storage": storage,
                         "store_images": keep})
            check(st == 201 and c.get("level") == "patch" and c.get("storage") == storage,
                  f"create {name}: {st} {c}")
            st, ans = api(port, "POST", f"/v1/collections/{name}/items",
                          {"items": [{"id": i, "image": uri(p)} for i, p in zip(IDS[:5], PHOTOS[:5])]})
            check(st == 200, f"insert {name} (1): {st} {ans}")
            st, ans = api(port, "POST", f"/v1/collections/{name}/items",
                          {"items": [{"id": i, "image": uri(p)} for i, p in zip(IDS[5:], PHOTOS[5:])]})
            check(st == 200, f"insert {name} (2): {st} {ans}")
            st, c = api(port, "GET", f"/v1/collections/{name}")
            n = sum(g[0] * g[1] for g in grids.values())
            per = 2 * W if storage == "f16" else W + 4
            check(c.get("patches") == n and c.get("patch_bytes") == n * per and c.get("count") == 10,
                  f"{name}: {n} patches, {n * per} bytes: {c}")
        st, c = api(port, "POST", "/v1/collections", {"name": "plain", "width": W})
        check(st == 201 and c.get("level") == "cls" and "storage" not in c, f"create plain: {c}")
        for name, storage in (("pf16", "f16"), ("pi8", "int8")):
            stored = {i: quantise(f32[i], storage) for i in IDS}
            answers[name] = run_searches(port, name, stored, grids, f32)
        heatmaps(port, f32, grids)
        vector_items(port)
        bad_input(port)
        check(healthy(port), "healthy after the bad input")
    finally:
        rc = stop_server(server)
        check(rc == 0, f"SIGTERM: exited 0 (rc {rc})")
    server, port = ts.start(args)
    try:
        for name in ("pf16", "pi8"):
            st, c = api(port, "GET", f"/v1/collections/{name}")
            check(st == 200 and c.get("level") == "patch" and c.get("count") == 10,
                  f"{name} after a restart: {c}")
            for form, body in (("patch", {"id": IDS[0], "patch": [5, 7], "k": 20}),
                               ("box", {"id": IDS[2], "box": [2, 3, 6, 9], "k": 10}),
                               ("late", {"id": IDS[3], "k": 5})):
                check(search(port, name, body) == answers.get(name, {}).get(form),
                      f"{name} {form}: the same answer after a restart")
    finally:
        stop_server(server)
    if not check.failed:
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
