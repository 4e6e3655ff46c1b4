"""POST /v1/features end to end: a real server on port 0 with a tiny checkpoint
that has RASA layers (and a second model without). Multipart, raw and JSON
inputs give the same features; the binary (safetensors) and JSON answers agree;
cls, patch and pooled outputs equal what franca-embed computes for the same
images; every JSON answer, errors included, validates against
schema/openapi.json; bad requests get their documented status."""
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402  (helpers: start, conforms, raw; paths)
from franca_client import FrancaClient, parse_safetensors  # noqa: E402
from refmodel import read_safetensors  # noqa: E402
from harness import Checks, stop_server  # noqa: E402

ROUTE = "/v1/features"
ST = "application/vnd.safetensors"
IMAGES = ts.IMAGES
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

check = Checks()


def image_bytes(path):
    return open(path, "rb").read()


def mime(data):
    return "image/png" if data[:8] == PNG_MAGIC else "image/jpeg"


def multipart(fields, boundary=None, close=True):
    """fields: [(name, bytes, content type)] -> (body, Content-Type)."""
    boundary = boundary or "b-" + uuid.uuid4().hex
    out = []
    for name, data, ctype in fields:
        fname = f'; filename="{name}.bin"' if ctype != "application/json" else ""
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{fname}\r\n'
                   f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    if close:
        out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def image_fields(paths, name="images"):
    return [(name, image_bytes(p), mime(image_bytes(p))) for p in paths]


def post(port, body, ctype, query="", accept=None):
    headers = {"Content-Type": ctype} if ctype is not None else {}
    if accept:
        headers["Accept"] = accept
    return ts.raw(port, "POST", ROUTE + query, body, headers)


def post_multipart(port, paths, options=None, accept=None, query=""):
    fields = image_fields(paths)
    if options is not None:
        fields.append(("options", json.dumps(options).encode(), "application/json"))
    body, ctype = multipart(fields)
    return post(port, body, ctype, query, accept)


def post_json(port, body, accept=None, query=""):
    return post(port, json.dumps(body).encode(), "application/json", query, accept)


def data_uri(path):
    data = image_bytes(path)
    return f"data:{mime(data)};base64," + base64.b64encode(data).decode()


def tensors_of(resp):
    """A JSON answer -> dict name -> float32 array, as the binary answer names them."""
    out = {}
    data = resp["data"]
    kinds = ["cls", "patch", "pooled"] + [k for k in data[0] if k.startswith("layer")]
    for kind in kinds:
        if kind in data[0]:
            for w in data[0][kind]:
                out[f"{kind}.w{w}"] = np.array([d[kind][w] for d in data], dtype=np.float32)
    return out


def l2n(x):
    n = np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)
    return (x / np.where(n > 0, n, 1)).astype(np.float32)


def maxdiff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        print(f"     shapes differ: {a.shape} vs {b.shape}")
        return float("inf")
    return float(np.abs(a - b).max()) if a.size else 0.0


def same(a, b):
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def ok_json(what, st, hdrs, body):
    good = st == 200 and isinstance(body, dict) and ts.conforms(ROUTE, "POST", st, body)
    check(good, f"{what}: 200 and schema" + ("" if good else f" (got {st}: {str(body)[:200]})"))
    if good:
        check(hdrs.get("X-Model-Fingerprint") == body["fingerprint"], f"{what}: X-Model-Fingerprint")
    return good


def embed_reference(ckpt, tmp, name, extra):
    out = os.path.join(tmp, name + ".safetensors")
    subprocess.run([ts.EMBED, "--model", ckpt, "--width", "16", "--width", "64", *extra, *IMAGES,
                    "--out", out], check=True, capture_output=True)
    return read_safetensors(out)[0]


TMP = [None]
LAYERS = {}  # franca-embed's layer outputs: "norm" and "raw" (--no-layer-norm)


def main():
    tmp = TMP[0] = tempfile.mkdtemp(prefix="features_it_")
    ck = os.path.join(tmp, "rasa.safetensors")
    ck_plain = os.path.join(tmp, "plain.safetensors")
    subprocess.run([ts.CKPT_TOOL, "init", "--arch", "vit_tiny_test", "--seed", "1", "--out", ck],
                   check=True, capture_output=True)
    subprocess.run([ts.CKPT_TOOL, "init", "--arch", "vit_tiny_test", "--seed", "2", "--rasa-layers", "0",
                    "--out", ck_plain], check=True, capture_output=True)
    ref = embed_reference(ck, tmp, "ref", ["--rasa"])
    ref112 = embed_reference(ck, tmp, "ref112", ["--resolution", "112"])
    # Both blocks of the tiny model, with and without the final norm.
    LAYERS["norm"] = embed_reference(ck, tmp, "refl", ["--layer", "0", "--layer", "-1"])
    LAYERS["raw"] = embed_reference(ck, tmp, "reflraw", ["--layer", "1", "--layer", "0", "--no-layer-norm"])

    # A batch's composition changes the last bits of a forward (GEMM blocking), so
    # the server that compares the request forms exactly runs every image alone
    # (--max-batch 1); a second server batches, and its answers, from concurrent
    # requests asking for different outputs, are checked against franca-embed.
    servers = []
    try:
        servers.append(ts.start(["--model", "tiny=" + ck, "--model", "plain=" + ck_plain,
                                 "--data", os.path.join(tmp, "data"), "--max-body-mb", "8",
                                 "--max-images", "8", "--max-batch", "1"]))
        run_checks(servers[0][1], ref, ref112)
        layer_checks(servers[0][1])
        servers.append(ts.start(["--model", "tiny=" + ck, "--data", os.path.join(tmp, "data2"),
                                 "--max-batch", "16", "--max-delay-ms", "50"]))
        batched(servers[1][1], ref)
    finally:
        for name, (server, _) in zip(("one image per batch", "batching"), servers):
            rc = stop_server(server, timeout=60)
            check(rc == 0, f"{name} server: SIGTERM drained and exited 0 (rc {rc})")
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


def run_checks(port, ref, ref112):
    opts = {"widths": [16, 64], "patch": True, "pooled": True}

    # Multipart, the reference form: 4 images, every output at two widths.
    st, hdrs, body = post_multipart(port, IMAGES, opts)
    if not ok_json("multipart, 4 images", st, hdrs, body):
        return
    mp = tensors_of(body)
    check(body["grid"] == {"height": 16, "width": 16} and body["patch_size"] == 14 and body["model"] == "tiny"
          and [d["index"] for d in body["data"]] == [0, 1, 2, 3], "grid, patch size, model and indices")
    check(sorted(mp) == ["cls.w16", "cls.w64", "patch.w16", "patch.w64", "pooled.w16", "pooled.w64"]
          and mp["patch.w16"].shape == (4, 256, 16) and mp["pooled.w64"].shape == (4, 64),
          "outputs and shapes")

    # Against franca-embed.
    for w in (16, 64):
        d = maxdiff(mp[f"cls.w{w}"], ref[f"cls_w{w}"])
        check(d < 1e-5, f"cls.w{w} equals franca-embed's cls_w{w} (max diff {d:.2e})")
        d = maxdiff(mp[f"patch.w{w}"], l2n(ref["patch"][..., :w]))
        check(d < 1e-5, f"patch.w{w} equals franca-embed's patch, cut and normalised (max diff {d:.2e})")
        d = maxdiff(mp[f"pooled.w{w}"], l2n(ref["patch"][..., :w].astype(np.float64).mean(axis=1)))
        check(d < 1e-5, f"pooled.w{w} equals the normalised mean of franca-embed's patch tokens (max diff {d:.2e})")
    st, hdrs, body = post_multipart(port, IMAGES, {"cls": False, "patch": True, "pooled": True,
                                                   "normalize": False})
    if ok_json("normalize false", st, hdrs, body):
        t = tensors_of(body)
        check(sorted(t) == ["patch.w64", "pooled.w64"], "default width is D; cls false leaves cls out")
        d = maxdiff(t["patch.w64"], ref["patch"])
        check(d < 1e-5, f"patch.w64 unnormalised equals franca-embed's patch (max diff {d:.2e})")
        d = maxdiff(t["pooled.w64"], ref["patch"].astype(np.float64).mean(axis=1))
        check(d < 1e-5, f"pooled.w64 unnormalised equals the mean of franca-embed's patch (max diff {d:.2e})")
    st, hdrs, body = post_multipart(port, IMAGES, {"cls": False, "patch": True, "pooled": True,
                                                   "rasa": True, "normalize": False})
    if ok_json("rasa", st, hdrs, body):
        t = tensors_of(body)
        d = maxdiff(t["patch.w64"], ref["patch_rasa"])
        check(d < 1e-5, f"rasa patch.w64 equals franca-embed's patch_rasa (max diff {d:.2e})")
        d = maxdiff(t["pooled.w64"], ref["patch_rasa"].astype(np.float64).mean(axis=1))
        check(d < 1e-5, f"rasa pooled.w64 equals the mean of patch_rasa (max diff {d:.2e})")
        check(maxdiff(t["patch.w64"], ref["patch"]) > 1e-4, "rasa changes the patch tokens")
    st, hdrs, body = post_multipart(port, IMAGES, {"widths": 64, "patch": True, "crop": "square",
                                                   "resolution": 112})
    if ok_json("crop square 112", st, hdrs, body):
        t = tensors_of(body)
        check(body["grid"] == {"height": 8, "width": 8}, "crop square 112: 8 x 8 grid")
        d = max(maxdiff(t["cls.w64"], ref112["cls_w64"]), maxdiff(t["patch.w64"], l2n(ref112["patch"])))
        check(d < 1e-5, f"crop square 112 equals franca-embed --resolution 112 (max diff {d:.2e})")
    st, hdrs, body = post_multipart(port, IMAGES, {"widths": 64, "crop": "square"})
    if ok_json("crop square, default resolution", st, hdrs, body):
        check(body["grid"] == {"height": 16, "width": 16}, "crop square without resolution: the crop size")

    # The same request in the three forms.
    st, hdrs, body = post_json(port, dict(opts, images=[data_uri(p) for p in IMAGES]))
    if ok_json("JSON, data URIs", st, hdrs, body):
        check(same(tensors_of(body), mp), "JSON (data URIs) and multipart inputs give identical features")
    bare = [base64.b64encode(image_bytes(p)).decode() for p in IMAGES]
    st, hdrs, body = post_json(port, {"images": bare}, query="?widths=16,64&patch=true&pooled=1")
    if ok_json("JSON, bare base64, options in the query", st, hdrs, body):
        check(same(tensors_of(body), mp), "JSON (bare base64, query options) and multipart agree")
    for i, path in enumerate(IMAGES):
        data = image_bytes(path)
        st, hdrs, body = post(port, data, mime(data), "?widths=16&widths=64&patch=true&pooled=true")
        if not ok_json(f"raw {mime(data)} body {i}", st, hdrs, body):
            continue
        raw_t = tensors_of(body)
        st, _, one = post_multipart(port, [path], opts)
        st2, _, js = post_json(port, dict(opts, image=data_uri(path)))
        one_t, js_t = tensors_of(one), tensors_of(js)
        rows = {k: v[i:i + 1] for k, v in mp.items()}
        check(same(raw_t, one_t) and same(raw_t, js_t) and same(raw_t, rows),
              f"image {i}: raw, multipart and JSON 'image' identical, and equal to row {i} of the 4-image answer")
    st, hdrs, body = post(port, image_bytes(IMAGES[0]), "image/png; charset=binary", "?cls=false&pooled=true")
    check(st == 200 and list(tensors_of(body)) == ["pooled.w64"], "raw body: Content-Type parameters tolerated")

    # Binary answers.
    st, hdrs, blob = post_multipart(port, IMAGES, opts, accept=ST)
    check(st == 200 and hdrs.get("Content-Type") == ST and isinstance(blob, bytes), f"binary: 200 {ST}")
    if st == 200 and isinstance(blob, bytes):
        bt, meta = parse_safetensors(blob)
        check(same({k: v.astype(np.float32) for k, v in bt.items()}, mp)
              and all(v.dtype == np.float32 for v in bt.values()), "binary f32 and JSON agree exactly")
        header = json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])
        check(all(header[k]["dtype"] == "F32" for k in mp), "binary f32: F32 tensors")
        check(meta.get("model") == "tiny" and meta.get("fingerprint") == hdrs.get("X-Model-Fingerprint")
              and meta.get("grid_height") == "16" and meta.get("grid_width") == "16"
              and meta.get("patch_size") == "14", f"binary metadata {meta}")
        _, ref_meta = read_safetensors_bytes(blob)
        check(ref_meta == meta, "binary answer reads with the reference safetensors reader")
    st, hdrs, blob = post_multipart(port, IMAGES, dict(opts, dtype="f16"), accept=f"application/json;q=0.5, {ST}")
    if st == 200 and isinstance(blob, bytes):
        bt, _ = parse_safetensors(blob)
        worst = 0.0
        for k, v in mp.items():
            bound = np.maximum(np.abs(v) * 2.0 ** -11, 2.0 ** -25)
            worst = max(worst, float((np.abs(bt[k].astype(np.float64) - v) / bound).max()))
        check(sorted(bt) == sorted(mp) and all(h.dtype == np.float16 for h in bt.values()), "f16: float16 tensors")
        check(worst <= 1.0, f"f16 binary within f16 rounding of the f32 values ({worst:.2f} of half an ulp)")
    else:
        check(False, f"f16 binary: {st}")
    st, hdrs, blob = post(port, image_bytes(IMAGES[1]), "image/png", "?patch=true&cls=false&crop=square&resolution=448",
                          accept=ST)
    if st == 200 and isinstance(blob, bytes):
        bt, meta = parse_safetensors(blob)
        check(bt["patch.w64"].shape == (1, 1024, 64) and meta["grid_height"] == "32", "binary at 448: 32 x 32 grid")
    else:
        check(False, f"binary at 448: {st}")
    st, _, body = post_multipart(port, IMAGES[:1], {"widths": 16}, accept=f"{ST};q=0")
    check(st == 200 and isinstance(body, dict), "Accept with q=0 for safetensors: JSON")
    client = FrancaClient(f"http://127.0.0.1:{port}")
    f = client.features(IMAGES, widths=[16, 64], patch=True, pooled=True)
    check(same(dict(f), mp) and f.metadata["grid_height"] == 16, "Python client (binary) equals the JSON answer")
    f = client.features(IMAGES, widths=[16, 64], patch=True, pooled=True, binary=False)
    check(same(dict(f), mp), "Python client (JSON) equals the JSON answer")

    errors(port)
    check(client.health()["status"] == "ok", "server healthy after bad input")


def layer_checks(port):
    """layers and norm: names, shapes and values against franca-embed --layer, in
    JSON, safetensors and the query form."""
    refl, raw = LAYERS["norm"], LAYERS["raw"]
    opts = {"widths": [16, 64], "patch": True, "layers": [0, -1]}
    st, hdrs, body = post_multipart(port, IMAGES, opts)
    if not ok_json("layers [0, -1]", st, hdrs, body):
        return
    t = tensors_of(body)
    names = sorted(f"{k}.w{w}" for k in ("cls", "patch", "layer0_cls", "layer0_patch", "layer1_cls",
                                         "layer1_patch") for w in (16, 64))
    check(sorted(t) == names and t["layer0_cls.w16"].shape == (4, 16)
          and t["layer1_patch.w64"].shape == (4, 256, 64), f"layers [0, -1]: outputs and shapes {sorted(t)}")
    if sorted(t) != names:
        return
    check(list(body["data"][0])[-4:] == ["layer0_cls", "layer0_patch", "layer1_cls", "layer1_patch"],
          "JSON: each block's cls and patch after the final outputs, in the order given")
    for i in (0, 1):
        for w in (16, 64):
            d = max(maxdiff(t[f"layer{i}_cls.w{w}"], l2n(refl[f"layer{i}_cls"][..., :w])),
                    maxdiff(t[f"layer{i}_patch.w{w}"], l2n(refl[f"layer{i}_patch"][..., :w])))
            check(d < 1e-5, f"layer{i} at width {w} equals franca-embed --layer, cut and normalised (max diff {d:.2e})")
    check(same({k: t[k] for k in ("layer1_cls.w64", "layer1_patch.w64")},
               {"layer1_cls.w64": t["cls.w64"], "layer1_patch.w64": t["patch.w64"]}),
          "the last block through the norm is the final output")
    st, hdrs, blob = post_multipart(port, IMAGES, opts, accept=ST)
    check(st == 200 and isinstance(blob, bytes) and same(parse_safetensors(blob)[0], t),
          "layers: the safetensors answer holds the same tensors as the JSON one")
    client = FrancaClient(f"http://127.0.0.1:{port}")
    for binary in (True, False):
        f = client.features(IMAGES, widths=[16, 64], patch=True, layers=[0, -1], binary=binary)
        check(same(dict(f), t), f"Python client layers (binary={binary}) equals the JSON answer")
    st, hdrs, body = post_multipart(port, IMAGES, {"layers": 2, "norm": False, "normalize": False, "patch": True})
    if ok_json("layers 2, norm false", st, hdrs, body):
        t = tensors_of(body)
        d = max(maxdiff(t[f"layer{i}_{k}.w64"], raw[f"layer{i}_{k}"]) for i in (0, 1) for k in ("cls", "patch"))
        check(d < 1e-5, f"layers 2 (the last two), norm false: franca-embed --no-layer-norm (max diff {d:.2e})")
        check(maxdiff(t["layer1_cls.w64"], t["cls.w64"]) > 1e-3, "norm false differs from the final output")
    data = image_bytes(IMAGES[0])
    st, hdrs, body = post(port, data, mime(data), "?layers=-1,-2&cls=false&patch=true&norm=false&normalize=false")
    if ok_json("query layers=-1,-2", st, hdrs, body):
        t = tensors_of(body)
        check(list(body["data"][0])[1:] == ["patch", "layer1_patch", "layer0_patch"]
              and maxdiff(t["layer0_patch.w64"], raw["layer0_patch"][:1]) < 1e-5,
              f"query form: cls false leaves the layers' cls out, blocks in the order given {list(body['data'][0])}")
    st, hdrs, body = post(port, data, mime(data), "?layers=%5B0%5D")
    if ok_json("query layers=[0]", st, hdrs, body):
        check(sorted(tensors_of(body)) == ["cls.w64", "layer0_cls.w64"], "query [0]: one block by index")


def batched(port, ref):
    """Concurrent requests with different outputs share batches; each answer
    still equals franca-embed's."""
    p64 = l2n(ref["patch"])
    want = {
        "cls": ({"widths": [16, 64]}, {"cls.w16": ref["cls_w16"], "cls.w64": ref["cls_w64"]}),
        "patch": ({"widths": 16, "cls": False, "patch": True},
                  {"patch.w16": l2n(ref["patch"][..., :16])}),
        "pooled": ({"pooled": True, "normalize": False},
                   {"cls.w64": ref["cls"], "pooled.w64": ref["patch"].astype(np.float64).mean(axis=1)}),
        "rasa": ({"cls": False, "patch": True, "rasa": True, "normalize": False},
                 {"patch.w64": ref["patch_rasa"]}),
        "all": ({"patch": True, "pooled": True}, {"cls.w64": ref["cls_w64"], "patch.w64": p64,
                                                 "pooled.w64": l2n(ref["patch"].astype(np.float64).mean(axis=1))}),
        "layers": ({"widths": 16, "patch": True, "layers": [0]},
                   {"cls.w16": ref["cls_w16"], "patch.w16": l2n(ref["patch"][..., :16]),
                    "layer0_cls.w16": l2n(LAYERS["norm"]["layer0_cls"][..., :16]),
                    "layer0_patch.w16": l2n(LAYERS["norm"]["layer0_patch"][..., :16])}),
        "layers-raw": ({"layers": [0], "norm": False, "normalize": False},
                       {"cls.w64": ref["cls"], "layer0_cls.w64": LAYERS["raw"]["layer0_cls"]}),
        "layers-2": ({"layers": 2, "normalize": False},
                     {"cls.w64": ref["cls"], "layer0_cls.w64": LAYERS["norm"]["layer0_cls"],
                      "layer1_cls.w64": LAYERS["norm"]["layer1_cls"]}),
    }
    results = {}

    def one(key, opts, k):
        try:
            results[(key, k)] = post_multipart(port, IMAGES, opts, accept=ST if k % 2 else None)
        except Exception as e:  # reported below as a missing answer
            results[(key, k)] = (0, {}, str(e))

    threads = [threading.Thread(target=one, args=(key, opts, k)) for k in range(2)
               for key, (opts, _) in want.items()]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for (key, k), (st, hdrs, body) in sorted(results.items()):
        form = "binary" if k % 2 else "JSON"
        if st != 200:
            check(False, f"batched {key} ({form}): {st} {str(body)[:200]}")
            continue
        got = parse_safetensors(body)[0] if k % 2 else tensors_of(body)
        exp = want[key][1]
        d = max(maxdiff(got[n], exp[n]) for n in exp) if set(got) == set(exp) else float("inf")
        check(d < 1e-5, f"batched {key} ({form}): outputs {sorted(got)} equal franca-embed's (max diff {d:.2e})")
    st, _, text = ts.raw(port, "GET", "/metrics")
    text = text.decode() if isinstance(text, bytes) else str(text)
    check(st == 200 and 'franca_requests_total{route="/v1/features",method="POST",status="200"}' in text,
          "metrics count /v1/features requests")


def read_safetensors_bytes(blob):
    path = os.path.join(TMP[0], "answer.safetensors")
    open(path, "wb").write(blob)
    return read_safetensors(path)


def errors(port):
    png = image_bytes(IMAGES[0])
    b64 = base64.b64encode(png).decode()
    corrupt = PNG_MAGIC + b"broken"
    body, mct = multipart(image_fields(IMAGES[:2]))
    cases = [
        # (what, body, content type, query, status, text the message must hold)
        ("no images (JSON)", b'{"widths": 16}', "application/json", "", 400, "images"),
        ("empty images array", b'{"images": []}', "application/json", "", 400, None),
        ("no images (multipart)", *multipart([("options", b'{"patch": true}', "application/json")]), "", 400, None),
        ("empty raw body", b"", "image/png", "", 400, None),
        ("malformed JSON", b'{"images": ', "application/json", "", 400, None),
        ("images of the wrong type", b'{"images": [5]}', "application/json", "", 400, None),
        ("both image and images", json.dumps({"images": [b64], "image": b64}).encode(), "application/json", "", 400, None),
        ("unknown option (JSON)", json.dumps({"images": [b64], "bogus": 1}).encode(), "application/json", "", 400, "bogus"),
        ("unknown option (query)", png, "image/png", "?bogus=1", 400, "bogus"),
        ("unknown option (options part)", *multipart(image_fields(IMAGES[:1]) + [("options", b'{"bogus": true}', "application/json")]), "", 400, "bogus"),
        ("options part not JSON", *multipart(image_fields(IMAGES[:1]) + [("options", b"{patch", "application/json")]), "", 400, None),
        ("option of the wrong type", json.dumps({"images": [b64], "patch": "yes"}).encode(), "application/json", "", 400, "patch"),
        ("options in the query and the body", json.dumps({"images": [b64], "patch": True}).encode(), "application/json", "?pooled=true", 400, None),
        ("invalid width", png, "image/png", "?widths=16,65", 422, "4, 8, 16, 32, 64"),
        ("width 0", json.dumps({"images": [b64], "widths": [0]}).encode(), "application/json", "", 422, "4, 8, 16, 32, 64"),
        ("no output requested", png, "image/png", "?cls=false", 422, None),
        ("rasa without patch or pooled", png, "image/png", "?rasa=true", 422, None),
        ("layer out of range", json.dumps({"images": [b64], "layers": [2]}).encode(), "application/json", "", 422,
         "depth 2"),
        ("negative layer out of range", png, "image/png", "?layers=-3,0", 422, "depth 2"),
        ("last n blocks past the depth", png, "image/png", "?layers=3", 422, "depth 2"),
        ("the same block twice", json.dumps({"images": [b64], "layers": [1, -1]}).encode(), "application/json", "", 422,
         "same block"),
        ("non-integer layer", json.dumps({"images": [b64], "layers": [0.5]}).encode(), "application/json", "", 400,
         "layers"),
        ("layer as a string", json.dumps({"images": [b64], "layers": "1"}).encode(), "application/json", "", 400,
         "layers"),
        ("non-integer layer (query)", png, "image/png", "?layers=one", 400, "layers"),
        ("norm not a boolean", json.dumps({"images": [b64], "norm": "yes"}).encode(), "application/json", "", 400,
         "norm"),
        ("layers without cls or patch", png, "image/png", "?layers=1&cls=false&pooled=true", 422, "layers"),
        ("layers count against the JSON size", json.dumps({"images": [b64], "patch": True, "layers": 2, "crop": "square",
                                                          "widths": [16, 32, 64], "resolution": 1792}).encode(),
         "application/json", "", 413, "would hold %d numbers" % (3 * 112 * (1 + 128 * 128))),
        ("rasa on a model without RASA", json.dumps({"images": [b64], "model": "plain", "rasa": True, "patch": True}).encode(), "application/json", "", 422, "RASA"),
        ("resolution not a multiple of the patch size", png, "image/png", "?crop=square&resolution=100", 422, "98"),
        ("crop center at another resolution", png, "image/png", "?resolution=112", 422, "square"),
        ("unknown model", png, "image/png", "?model=nope", 404, None),
        ("wrong content type", png, "text/plain", "", 415, None),
        ("no content type", png, None, "", 415, None),
        ("form-urlencoded", b"images=x", "application/x-www-form-urlencoded", "", 415, None),
        ("unsupported data URI type", b'{"images": ["data:text/plain;base64,aGVsbG8="]}', "application/json", "", 415, None),
        ("truncated multipart", body[:len(body) // 2], mct, "", 400, None),
        ("multipart without boundary", body, "multipart/form-data", "", 400, None),
        ("corrupt image (raw)", corrupt, "image/png", "", 422, None),
        ("corrupt image (multipart)", *multipart([("image", corrupt, "image/png")]), "", 422, None),
        ("corrupt image (JSON)", json.dumps({"images": [base64.b64encode(corrupt).decode()]}).encode(), "application/json", "", 422, "images[0]"),
        ("not base64", b'{"images": ["@@@@"]}', "application/json", "", 400, None),
        ("URL input", b'{"images": ["https://example.com/cat.png"]}', "application/json", "", 422, None),
        ("too many images (JSON)", json.dumps({"images": [b64] * 9}).encode(), "application/json", "", 413, None),
        ("too many images (multipart)", *multipart(image_fields(IMAGES[:1] * 9)), "", 413, None),
        ("too many images (multipart, with options)",
         *multipart(image_fields(IMAGES[:1] * 9) + [("options", b"{}", "application/json")]), "", 413, None),
        ("large patch output as JSON", json.dumps({"images": [b64] * 4, "patch": True, "widths": [32, 64], "crop": "square",
                                                   "resolution": 1792}).encode(), "application/json", "", 413, ST),
        ("too many patch tokens (binary too)", json.dumps({"images": [b64] * 2, "cls": True, "crop": "square",
                                                           "resolution": 1792}).encode(), "application/json", "", 413, "patch tokens"),
    ]
    for what, body_, ct, query, want, text in cases:
        st, _, resp = post(port, body_, ct, query)
        good = st == want and isinstance(resp, dict) and ts.conforms(ROUTE, "POST", st, resp)
        msg = resp.get("error", {}).get("message", "") if isinstance(resp, dict) else ""
        if good and text:
            good = text in msg
        check(good, f"{what}: {st} (want {want})" + ("" if good else f": {str(resp)[:300]}"))
    st, hdrs, _ = ts.raw(port, "GET", ROUTE)
    check(st == 405 and "POST" in hdrs.get("Allow", ""), "GET: 405 with Allow")


if __name__ == "__main__":
    sys.exit(main())
