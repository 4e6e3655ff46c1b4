"""POST /v1/pca end to end on tiny test checkpoints: the components, variances,
mean and projections equal numpy's PCA (SVD) of the patch tokens that
/v1/features gives for the same images (up to sign; then the documented sign
convention), two images share one basis, the PNG's pixels are the documented
colours of those projections, threshold and refit behave as documented, RASA
tokens are used when asked, and bad requests get their documented status.
JSON answers validate against schema/openapi.json."""
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402
from test_features import multipart, image_fields, image_bytes, data_uri  # noqa: E402
from franca_client import FrancaClient, FrancaError  # noqa: E402
from harness import Checks, stop_server  # noqa: E402

ROUTE = "/v1/pca"
IMAGES = ts.IMAGES[:2]
check = Checks()


def post(port, route, body, ctype, query="", accept=None):
    headers = {"Content-Type": ctype}
    if accept:
        headers["Accept"] = accept
    return ts.raw(port, "POST", route + query, body, headers)


def post_json(port, body, route=ROUTE, query="", accept=None):
    return post(port, route, json.dumps(body).encode(), "application/json", query, accept)


def features_tokens(port, widths, rasa=False, model="tiny"):
    """{W: tokens [n, N, W]} from /v1/features (not normalised)."""
    st, _, body = post_json(port, {"images": [data_uri(p) for p in IMAGES], "model": model,
                                   "widths": widths, "cls": False, "patch": True,
                                   "normalize": False, "rasa": rasa}, route="/v1/features")
    assert st == 200, body
    return {w: np.array([d["patch"][str(w)] for d in body["data"]], np.float64) for w in widths}


def numpy_pca(X):
    mean = X.mean(0)
    _, s, vt = np.linalg.svd(X - mean, full_matrices=False)
    return mean, vt[:3], s[:3] ** 2 / (len(X) - 1), (s ** 2).sum() / (len(X) - 1)


def colours(proj, fg=None):
    """The documented colours: per component min-max over the (foreground) patches."""
    sel = proj if fg is None else proj[fg]
    lo, hi = sel.min(0), sel.max(0)
    t = np.clip((proj - lo) / np.where(hi > lo, hi - lo, 1), 0, 1)
    rgb = np.rint(255 * t).astype(int)
    if fg is not None:
        rgb[~fg] = 0
    return rgb


def ok_json(what, st, hdrs, body):
    good = st == 200 and isinstance(body, dict) and ts.conforms(ROUTE, "POST", st, body)
    check(good, f"{what}: 200 and schema" + ("" if good else f" (got {st}: {str(body)[:300]})"))
    return good


def compare_fit(what, width_ans, X):
    """width_ans (one entry of 'widths') against numpy on tokens X [M, W]."""
    mean, comps, var, total = numpy_pca(X)
    C = np.array(width_ans["components"], np.float64)
    cos = np.abs((C * comps).sum(1))
    check(cos.min() >= 0.999, f"{what}: components |cos| with numpy's SVD >= 0.999 ({cos.round(6)})")
    big = np.abs(C).argmax(1)
    check(all(C[i, big[i]] > 0 for i in range(3)), f"{what}: largest loading of each component positive")
    ev = np.array(width_ans["explained_variance"])
    check(np.allclose(ev, var, rtol=1e-3, atol=1e-9), f"{what}: explained variances {ev} vs numpy {var}")
    check(np.allclose(width_ans["explained_variance_ratio"], var / total, rtol=1e-3, atol=1e-9),
          f"{what}: explained variance ratios")
    check(np.abs(np.array(width_ans["mean"]) - mean).max() < 1e-5, f"{what}: mean")
    P = np.array(width_ans["projections"], np.float64).reshape(len(X), 3)
    want = (X - np.array(width_ans["mean"])) @ C.T
    d = np.abs(P - want).max()
    check(d < 1e-3 * max(1.0, np.abs(want).max()), f"{what}: projections = (X - mean) . components^T (max diff {d:.2e})")
    return P


def main():
    tmp = tempfile.mkdtemp(prefix="pca_it_")
    ck, ck_plain = os.path.join(tmp, "tiny.safetensors"), os.path.join(tmp, "plain.safetensors")
    # LayerScale 1: an untrained model whose tokens depend on the image.
    subprocess.run([ts.CKPT_TOOL, "init", "--arch", "vit_tiny_test", "--seed", "1", "--layerscale", "1",
                    "--out", ck], check=True, capture_output=True)
    subprocess.run([ts.CKPT_TOOL, "init", "--arch", "vit_tiny_test", "--seed", "2", "--rasa-layers", "0",
                    "--out", ck_plain], check=True, capture_output=True)
    server = None
    try:
        server, port = ts.start(["--model", "tiny=" + ck, "--model", "plain=" + ck_plain,
                                 "--data", os.path.join(tmp, "data"), "--max-images", "8",
                                 "--max-batch", "1"])
        run_checks(port)
    finally:
        if server:
            rc = stop_server(server, timeout=60)
            check(rc == 0, f"server: SIGTERM drained and exited 0 (rc {rc})")
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


def run_checks(port):
    st, _, info = ts.raw(port, "GET", "/v1/models/tiny")
    trained = info["matryoshka_widths"]
    toks = features_tokens(port, trained)
    n, N = toks[trained[0]].shape[:2]
    G = int(round(N ** 0.5))

    # JSON, default widths: every trained width, one basis for both images.
    st, hdrs, body = post_json(port, {"images": [data_uri(p) for p in IMAGES], "format": "json"})
    if ok_json("json", st, hdrs, body):
        check([w["width"] for w in body["widths"]] == trained, f"default widths are the trained ones {trained}")
        check(body["grid"] == {"height": G, "width": G} and body["images"] == 2, "grid and image count")
        proj = {}
        for w in body["widths"]:
            W = w["width"]
            check(np.array(w["projections"]).shape == (2, G, G, 3), f"d={W}: projections [2, {G}, {G}, 3]")
            proj[W] = compare_fit(f"d={W}", w, toks[W].reshape(-1, W))
        check(hdrs.get("X-Model-Fingerprint") == body["fingerprint"], "X-Model-Fingerprint")

        # PNG (the default): same basis, the documented colours, captions above.
        fields = image_fields(IMAGES)
        mp, ctype = multipart(fields)
        st, hdrs, png = post(port, ROUTE, mp, ctype)
        check(st == 200 and hdrs.get("Content-Type") == "image/png", f"png by default ({st})")
        img = np.array(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        S = 224 // 14 * 14
        cap = img.shape[0] - 2 * S
        check(img.shape[1] == len(trained) * S and 0 < cap < 40,
              f"png: {len(trained)} tiles of {S} side by side, 2 rows, a caption row ({img.shape})")
        check(img[:cap].max() == 255 and img[:cap].min() == 0, "png: white caption text on black")
        P = 14
        worst = 0
        for k, W in enumerate(trained):
            want = colours(proj[W]).reshape(2, G, G, 3)
            got = img[cap + P // 2::P, k * S + P // 2:(k + 1) * S:P][:2 * G].reshape(2, G, G, 3)
            worst = max(worst, np.abs(got - want).max())
        check(worst <= 1, f"png: every patch block has its documented colour (max diff {worst})")

        st, _, png2 = post(port, ROUTE, mp, ctype, query="?upsample=bilinear")
        img2 = np.array(Image.open(io.BytesIO(png2)).convert("RGB")).astype(int)
        check(st == 200 and img2.shape == img.shape and (img2 != img).any(),
              "bilinear: same size, smoother picture")
        st, hdrs, _ = post_json(port, {"images": [data_uri(IMAGES[0])]}, accept="application/json")
        check(st == 200 and hdrs.get("Content-Type", "").startswith("application/json"),
              "Accept: application/json without format gives JSON")

    # Raw body, options in the query string, threshold: background is black.
    W = trained[-1]
    raw = image_bytes(IMAGES[0])
    st, hdrs, body = post(port, ROUTE, raw, "image/png", query=f"?widths={W}&format=json&threshold=0.5")
    if ok_json("threshold json", st, hdrs, body):
        w = body["widths"][0]
        X = features_tokens(port, [W])[W][0]
        Pj = compare_fit("raw body, one image", w, X)
        t = (Pj[:, 0] - Pj[:, 0].min()) / (Pj[:, 0].max() - Pj[:, 0].min())
        fg = np.array(w["foreground"]).reshape(-1)
        check(np.array_equal(fg, t >= 0.5) and 0 < fg.sum() < len(fg),
              f"threshold: foreground = scaled first component >= 0.5 ({fg.sum()} of {len(fg)})")
        st, _, png = post(port, ROUTE, raw, "image/png", query=f"?widths={W}&threshold=0.5")
        img = np.array(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        cap = img.shape[0] - img.shape[1]
        got = img[cap + 7::14, 7::14].reshape(-1, 3)
        check(np.array_equal(got, colours(Pj, fg)), "threshold png: foreground colours, background black")

        st, hdrs, body = post_json(port, {"image": data_uri(IMAGES[0]), "widths": W, "format": "json",
                                          "threshold": 0.5, "refit": True})
        if ok_json("refit", st, hdrs, body):
            wr = body["widths"][0]
            check(np.array_equal(np.array(wr["foreground"]).reshape(-1), fg), "refit: same foreground")
            mean, comps, var, _ = numpy_pca(X[fg])
            C = np.array(wr["components"])
            cos = np.abs((C * comps).sum(1))
            check(cos.min() >= 0.999, f"refit: components = numpy PCA of the foreground tokens ({cos.round(6)})")
            check(np.allclose(wr["explained_variance"], var, rtol=1e-3), "refit: variances of the foreground")

    # RASA-cleaned tokens.
    st, hdrs, body = post_json(port, {"images": [data_uri(p) for p in IMAGES], "widths": [W],
                                      "format": "json", "rasa": True})
    if ok_json("rasa", st, hdrs, body):
        compare_fit("rasa", body["widths"][0], features_tokens(port, [W], rasa=True)[W].reshape(-1, W))

    client(port, trained)
    errors(port, trained)


def client(port, trained):
    """The Python client's pca method: the route's answers, errors raised."""
    c = FrancaClient(f"http://127.0.0.1:{port}")
    ans = c.pca(IMAGES, widths=trained[-1], threshold=0.4, refit=True, format="json")
    st, _, want = post_json(port, {"images": [data_uri(p) for p in IMAGES], "widths": [trained[-1]],
                                   "threshold": 0.4, "refit": True, "format": "json"})
    check(st == 200 and ans["widths"] == want["widths"], "client pca(format='json') = the route's JSON")
    png = c.pca(IMAGES, upsample="bilinear")
    img = Image.open(io.BytesIO(png))
    check(img.size == (224 * len(trained), img.size[1]) and img.size[1] > 2 * 224,
          f"client pca(): a PNG of every trained width ({img.size})")
    out = os.path.join(os.path.dirname(ts.SERVER), "..", "pca_cli.png")
    r = subprocess.run([sys.executable, os.path.join(ts.ROOT, "clients", "python", "franca_client.py"),
                        "--url", f"http://127.0.0.1:{port}", "pca", *IMAGES, "--threshold", "0.3",
                        "--out", out], capture_output=True, text=True)
    check(r.returncode == 0 and open(out, "rb").read()[:8] == b"\x89PNG\r\n\x1a\n",
          f"client CLI: pca --out writes a PNG ({r.returncode} {r.stderr[-200:]})")
    if os.path.exists(out):
        os.remove(out)
    try:
        c.pca(IMAGES, widths=[trained[0] + 1])
        check(False, "client pca: an untrained width raises")
    except FrancaError as e:
        check(e.status == 422, f"client pca: an untrained width raises FrancaError 422 ({e.status})")


def errors(port, trained):
    b64 = base64.b64encode(image_bytes(IMAGES[0])).decode()
    odd = next(w for w in range(3, trained[-1]) if w not in trained)
    cases = [
        ("width not trained", {"images": [b64], "widths": [odd]}, 422, "trained"),
        ("unknown key", {"images": [b64], "colour": 1}, 400, "colour"),
        ("a /v1/features key", {"images": [b64], "patch": True}, 400, "does not apply"),
        ("no images", {"images": []}, 400, None),
        ("no image key", {"format": "json"}, 400, "no images"),
        ("rasa on a model without RASA", {"images": [b64], "model": "plain", "rasa": True}, 422, "RASA"),
        ("refit without threshold", {"images": [b64], "refit": True}, 422, "threshold"),
        ("threshold out of range", {"images": [b64], "threshold": 1.5}, 422, "threshold"),
        ("threshold not a number", {"images": [b64], "threshold": "high"}, 400, "threshold"),
        ("format unknown", {"images": [b64], "format": "gif"}, 400, "format"),
        ("upsample unknown", {"images": [b64], "upsample": "cubic"}, 400, "upsample"),
        ("unknown model", {"images": [b64], "model": "nope"}, 404, None),
    ]
    for what, body, want, word in cases:
        st, _, ans = post_json(port, body)
        good = st == want and ts.conforms(ROUTE, "POST", st, ans)
        if word:
            good = good and word in ans["error"]["message"]
        check(good, f"{what}: {want} ({st}: {str(ans)[:160]})")
    raw = image_bytes(IMAGES[0])
    for what, query, want in [("query threshold not a number", "?threshold=x", 400),
                              ("query threshold twice", "?threshold=0.1&threshold=0.2", 400),
                              ("query unknown key", "?bogus=1", 400),
                              ("query refit not a boolean", "?threshold=0.2&refit=maybe", 400)]:
        st, _, ans = post(port, ROUTE, raw, "image/png", query=query)
        check(st == want and ts.conforms(ROUTE, "POST", st, ans), f"{what}: {want} ({st})")
    st, _, ans = post(port, ROUTE, b"", "text/plain")
    check(st == 415, f"other Content-Type: 415 ({st})")
    # /v1/features still refuses this route's keys.
    st, _, ans = post(port, "/v1/features", raw, "image/png", query="?threshold=0.5")
    check(st == 400 and "threshold" in ans["error"]["message"], f"/v1/features: 'threshold' unknown there ({st})")


if __name__ == "__main__":
    sys.exit(main())
