"""The vector index end to end: a real server on port 0 with a tiny generated
checkpoint. Exact search equals a numpy brute force (ties aside) for cosine, l2
and dot on random vectors (several widths, filters, the batch form, include)
and on real embeddings of the photographs of skimage.data, embedded by the
server through image inserts and queried by image and by id; funnel recall@10
is measured and printed, and a funnel whose shortlist is the whole collection
equals exact search; every bad input of the contract gets its 4xx with a
message and the server stays healthy; the collection lifecycle; a restart on
the same --data serves the same answers.

The helpers at the top (api, ref_scores, compare_results, ...) are shared by
test_index_durability.py, test_index_concurrency.py and test_index_swap.py."""
import base64
import glob
import http.client
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402  (start, raw, conforms; paths)
from franca_client import FrancaClient, _image_data_uri  # noqa: E402
from harness import Checks, oversize_status, stop_server  # noqa: E402

PHOTOS = ts.PHOTOS
JSON = {"Content-Type": "application/json"}

check = Checks()


# --- helpers shared by the index tests ------------------------------------------

def make_checkpoint(path, seed, arch="vit_tiny_test", layerscale=1.0):
    """An untrained checkpoint from franca-checkpoint init. Its LayerScale
    gammas start at 1e-5, so every image gets nearly the same CLS embedding
    (they differ by ~1e-5); with layerscale set they are rewritten to that
    value, and the blocks' random features make the embeddings of different
    images differ (cosines from -0.2 to 1 on the skimage photographs)."""
    subprocess.run([ts.CKPT_TOOL, "init", "--arch", arch, "--seed", str(seed), "--out", path],
                   check=True, capture_output=True)
    if layerscale is not None:
        buf = bytearray(open(path, "rb").read())
        n = struct.unpack("<Q", buf[:8])[0]
        for name, info in json.loads(buf[8:8 + n]).items():
            if name.endswith((".ls1.gamma", ".ls2.gamma")):
                assert info["dtype"] == "F32", info
                b, e = info["data_offsets"]
                buf[8 + n + b:8 + n + e] = np.full((e - b) // 4, layerscale, "<f4").tobytes()
        open(path, "wb").write(bytes(buf))
    return path


def api(port, method, path, body=None, headers=None, timeout=120):
    """One request; body: a dict/list (sent as JSON), bytes (sent as is) or None.
    Returns (status, parsed JSON or raw bytes)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body if body is not None else b"", headers={**JSON, **(headers or {})})
        r = c.getresponse()
        data = r.read()
    finally:
        c.close()
    try:
        return r.status, json.loads(data)
    except ValueError:
        return r.status, data


def error_message(body):
    """The message of an error answer {"error": {"message": ...}}, or None."""
    try:
        msg = body["error"]["message"]
        return msg if isinstance(msg, str) and msg else None
    except (TypeError, KeyError):
        return None


def not_found_first(port, coll, ids):
    """Problems where searching by each id (batch form, 1024 a call) does not give that id
    first with score ~1 (cosine); empty when every id finds itself."""
    bad = []
    for lo in range(0, len(ids), 1024):
        part = ids[lo:lo + 1024]
        code, resp = api(port, "POST", f"/v1/collections/{coll}/search",
                         {"queries": [{"id": i} for i in part], "k": 1})
        if code != 200:
            bad.append(f"{code} {short(resp)}")
            continue
        for i, b in zip(part, resp["batch"]):
            top = b["results"][0] if b["results"] else {}
            if top.get("id") != i or abs(top.get("score", 0) - 1) > 1e-5:
                bad.append(f"{i}: top {short(top, 100)}")
    return bad


def short(body, n=300):
    return (json.dumps(body) if isinstance(body, (dict, list)) else repr(body))[:n]


def healthy(port):
    try:
        return api(port, "GET", "/healthz", timeout=10)[0] == 200
    except OSError:
        return False


def ref_scores(X, q, metric, w):
    """Scores of every row of X against query q at prefix width w, in float64,
    as the contract defines them (cosine: cut then renormalise)."""
    Xw = np.asarray(X, np.float64)[:, :w]
    qw = np.asarray(q, np.float64)[:w]
    if metric == "cosine":
        nx = np.linalg.norm(Xw, axis=1)
        nq = np.linalg.norm(qw)
        s = (Xw @ qw) / np.where(nx > 0, nx, 1.0) / (nq if nq > 0 else 1.0)
        s[nx == 0] = 0.0
        return s
    if metric == "dot":
        return Xw @ qw
    return np.sqrt(((Xw - qw) ** 2).sum(axis=1))


def ranked(scores, metric, eligible):
    """Eligible row indices, best first."""
    key = scores[eligible] if metric == "l2" else -scores[eligible]
    return eligible[np.argsort(key, kind="stable")]


def compare_results(results, X, ids, q, metric, w, k, mask=None, tol=1e-5, margin=1e-4):
    """Checks one answer's results against the brute force: the right number of
    results, no duplicates, only eligible ids, each score equal to that id's true
    score, best first, the score list equal to the brute-force top-k scores, and
    every row that beats the k-th score by more than `margin` present. Returns a
    list of problems (empty when all is well)."""
    scores = ref_scores(X, q, metric, w)
    eligible = np.arange(len(X)) if mask is None else np.nonzero(mask)[0]
    order = ranked(scores, metric, eligible)
    want_n = min(k, len(eligible))
    problems = []
    if len(results) != want_n:
        problems.append(f"{len(results)} results, want {want_n}")
    row_of = {i: r for r, i in enumerate(ids)}
    got_ids = [r.get("id") for r in results]
    if len(set(got_ids)) != len(got_ids):
        problems.append("duplicate ids in the results")
    got = np.array([r.get("score", np.nan) for r in results], np.float64)
    # l2 distances are compared squared, in units of |x|^2 + |q|^2: a float32
    # |x|^2 - 2 x.q + |q|^2 is exact to that scale, so a distance near 0 is
    # only known to ~sqrt(eps) (the distance of an item to itself is ~1e-3).
    if metric == "l2":
        scale = 1.0 + (np.asarray(X, np.float64)[:, :w] ** 2).sum(1) + (np.asarray(q, np.float64)[:w] ** 2).sum()

    def close(g, row):
        if metric == "l2":
            return abs(g * g - scores[row] ** 2) <= tol * scale[row]
        return abs(g - scores[row]) <= tol * max(1.0, abs(scores[row]))

    for r in results:
        row = row_of.get(r.get("id"))
        if row is None or (mask is not None and not mask[row]):
            problems.append(f"result {r.get('id')!r} is not an eligible item")
        elif not close(r["score"], row):
            problems.append(f"{r['id']}: score {r['score']:.7g}, true {scores[row]:.7g}")
    n = min(len(got), want_n)
    bad_rank = [i for i in range(n) if not close(got[i], order[i])]
    if bad_rank:
        i = bad_rank[0]
        problems.append(f"score list differs from the brute force at rank {i}: {got[i]:.7g} vs {scores[order[i]]:.7g}")
    sign = 1.0 if metric == "l2" else -1.0
    if len(got) > 1 and np.any(np.diff(sign * got) < -tol * np.maximum(1.0, np.abs(got[1:]))):
        problems.append("results are not best first")
    if want_n:
        kth = scores[order[want_n - 1]]
        sure = order[sign * scores[order] < sign * kth - margin * max(1.0, abs(kth))]
        missing = [ids[r] for r in sure if ids[r] not in set(got_ids)]
        if missing:
            problems.append(f"{len(missing)} sure neighbours missing, e.g. {missing[:3]}")
    return problems


def recall_at_k(results, X, q, metric, w, k, mask=None):
    scores = ref_scores(X, q, metric, w)
    eligible = np.arange(len(X)) if mask is None else np.nonzero(mask)[0]
    truth = set(ranked(scores, metric, eligible)[:k].tolist())
    return len(truth & set(results)) / max(1, len(truth))




def photos():
    """The photographs and drawings shipped with Debian's python3-skimage."""
    return sorted(p for ext in ("png", "jpg", "jpeg") for p in glob.glob(os.path.join(PHOTOS, "*." + ext)))


def documented(template, method, status, body):
    """True when the route is in schema/openapi.json and (status, body) conforms."""
    if template not in ts.SPEC["paths"] or method.lower() not in ts.SPEC["paths"][template]:
        print(f"     {method} {template} is not in schema/openapi.json")
        return False
    return ts.conforms(template, method, status, body)


# --- the test ------------------------------------------------------------------

D = 64          # vit_tiny_test's embed dim
N = 2000


def metadata_of(i, rng):
    m = {"group": i % 5, "score": round(float(rng.uniform()), 4), "flag": i % 2 == 0, "nested": {"i": i}}
    if i % 7:
        m["tag"] = f"t{i % 3}"
    return m


FILTERS = [
    ({"group": 2}, lambda m: m.get("group") == 2),
    ({"group": {"$eq": 3}}, lambda m: m.get("group") == 3),
    ({"group": {"$in": [1, 3]}}, lambda m: m.get("group") in (1, 3)),
    ({"score": {"$gte": 0.2, "$lt": 0.7}}, lambda m: 0.2 <= m["score"] < 0.7),
    ({"tag": {"$ne": "t0"}}, lambda m: "tag" in m and m["tag"] != "t0"),
    ({"group": {"$nin": [0, 4]}, "tag": "t1"}, lambda m: m["group"] not in (0, 4) and m.get("tag") == "t1"),
    ({"tag": {"$gt": "t0"}}, lambda m: "tag" in m and m["tag"] > "t0"),
    ({"tag": {"$in": ["t0", "t2"]}}, lambda m: m.get("tag") in ("t0", "t2")),
    ({"flag": True}, lambda m: m["flag"] is True),
    ({"group": {"$lte": 1}, "score": {"$gt": 0.5}}, lambda m: m["group"] <= 1 and m["score"] > 0.5),
    ({"group": 2, "score": {"$lt": 0.02}}, lambda m: m["group"] == 2 and m["score"] < 0.02),
    ({"group": 99}, lambda m: False),
    ({"missing": 1}, lambda m: False),
    ({"tag": {"$ne": "zzz"}}, lambda m: "tag" in m),
]


def main():
    tmp = tempfile.mkdtemp(prefix="index_it_")
    ck = make_checkpoint(os.path.join(tmp, "a.safetensors"), 1)
    data = os.path.join(tmp, "data")
    args = ["--model", "tiny=" + ck, "--data", data, "--max-body-mb", "16", "--max-images", "16"]
    server, port = ts.start(args)
    answers = {}
    try:
        client = FrancaClient(f"http://127.0.0.1:{port}")
        section("lifecycle", lifecycle, port, client)
        answers = section("random vectors", random_vectors, port, client) or {}
        section("image embeddings", image_embeddings, port, client)
        section("bad input", bad_input, port, client)
        check(healthy(port), "GET /healthz 200 after all the bad input")
    finally:
        rc = stop_server(server)
        check(rc == 0, f"SIGTERM: drained and exited 0 (rc {rc})")
    # A restart on the same --data serves the same collections and answers.
    server, port = ts.start(args)
    try:
        section("restart", restart_same, port, answers)
    finally:
        stop_server(server)
    section("larger than the queue", queue_full, tmp, ck)
    if not check.failed:  # kept for a look when something failed
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


def guarded(checks, name, fn, *args):
    """Runs one part of a test; an exception (a crashed server, an answer of the
    wrong shape) is one failed check, and the next part still runs."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001  (reported as a failed check)
        traceback.print_exc()
        checks(False, f"{name}: stopped by {type(e).__name__}: {e}")
        return None


def section(name, fn, *args):
    return guarded(check, name, fn, *args)


def lifecycle(port, client):
    model = client.model("tiny")
    st, body = api(port, "POST", "/v1/collections", {"name": "life"})
    good = st == 201 and isinstance(body, dict)
    check(good, f"create with defaults: 201 ({st} {short(body)})")
    if good:
        want = {"name": "life", "model": "tiny", "fingerprint": model["fingerprint"], "width": D,
                "metric": "cosine", "store_images": False, "count": 0, "indexed": 0, "prefix_width": D // 16}
        diff = {k: (body.get(k), v) for k, v in want.items() if body.get(k) != v}
        check(not diff, f"collection defaults (model, fingerprint, width {D}, cosine, no images, "
              f"prefix width {D // 16}){'' if not diff else ': ' + str(diff)}")
        check(isinstance(body.get("created_at"), str) and len(body["created_at"]) >= 19 and "job" not in body,
              f"created_at {body.get('created_at')!r}, no job")
        check(documented("/v1/collections", "POST", 201, body), "create: answer documented in openapi.json")
    st, body = api(port, "POST", "/v1/collections", {"name": "life"})
    check(st == 409 and error_message(body), f"duplicate name: 409 with a message ({st} {short(body)})")
    st, body = api(port, "POST", "/v1/collections", {"name": "life-l2", "width": 16, "metric": "l2",
                                                     "store_images": True, "model": "tiny"})
    check(st == 201 and body.get("width") == 16 and body.get("metric") == "l2" and body.get("store_images") is True
          and body.get("prefix_width") == 1, f"create l2 width 16 with images: {st} {short(body)}")
    st, body = api(port, "POST", "/v1/collections", {"name": "life-w", "width": 16})
    check(st == 201 and body.get("model") == "tiny" and body.get("fingerprint") == model["fingerprint"]
          and body.get("width") == 16, f"create with a width and no model: bound to the default model ({st} {short(body)})")
    api(port, "DELETE", "/v1/collections/life-w")
    st, body = api(port, "GET", "/v1/collections")
    names = [c.get("name") for c in body.get("collections", [])] if isinstance(body, dict) else []
    check(st == 200 and "life" in names and "life-l2" in names, f"list: {names}")
    check(documented("/v1/collections", "GET", 200, body), "list: answer documented")
    st, body = api(port, "GET", "/v1/collections/life")
    check(st == 200 and body.get("name") == "life" and body.get("count") == 0, f"get: {st}")
    check(documented("/v1/collections/{name}", "GET", 200, body), "get: answer documented")
    st, body = api(port, "GET", "/v1/collections/nope")
    check(st == 404 and error_message(body), f"get unknown: 404 ({st} {short(body)})")
    check(documented("/v1/collections/{name}", "GET", 404, body), "404: error documented")
    st, body = api(port, "POST", "/v1/collections/life/search", {"vector": [1.0] * D, "k": 5})
    check(st == 200 and body.get("results") == [], f"search of an empty collection: 200, no results ({st} {short(body)})")
    ids = client.insert("life", vectors=np.eye(D, dtype=np.float32)[:3], ids=["a", "b", "c"])
    c = client.collection("life")
    check(ids == ["a", "b", "c"] and c["count"] == 3 and c["indexed"] == 3,
          f"3 items in: count {c['count']}, indexed {c['indexed']}")
    st, body = api(port, "DELETE", "/v1/collections/life")
    check(st == 200 and body == {"deleted": "life"}, f"delete: {st} {short(body)}")
    st, body = api(port, "GET", "/v1/collections/life")
    check(st == 404, f"get after delete: {st}")
    st, body = api(port, "DELETE", "/v1/collections/life")
    check(st == 404 and error_message(body), f"delete again: {st}")
    names = [c["name"] for c in client.collections()]
    check("life" not in names and "life-l2" in names, f"list after delete: {names}")
    st, body = api(port, "POST", "/v1/collections", {"name": "life"})
    check(st == 201 and body.get("count") == 0 and body.get("indexed") == 0,
          "re-create after delete: empty (the items went with the collection)")
    st, body = api(port, "GET", "/v1/collections/life/items/a")
    check(st == 404, f"an item of the deleted collection is gone: {st}")
    # The client's create/list/get/delete.
    made = client.create_collection("life-client", width=8, metric="dot")
    check(made["width"] == 8 and made["metric"] == "dot" and "life-client" in [c["name"] for c in client.collections()]
          and client.delete_collection("life-client") == {"deleted": "life-client"}, "client: create, list, delete")
    for name in ("life", "life-l2"):
        client.delete_collection(name)


def random_vectors(port, client):
    """Exact search against the brute force on 2000 random vectors, per metric."""
    rng = np.random.default_rng(1234)
    X = (rng.standard_normal((N, D)) * 0.3).astype(np.float32)
    ids = [f"r{i}" for i in range(N)]
    meta = [metadata_of(i, rng) for i in range(N)]
    masks = [np.array([f(m) for m in meta]) for _, f in FILTERS]
    Q = (rng.standard_normal((24, D)) * 0.3).astype(np.float32)
    answers = {}
    for metric in ("cosine", "l2", "dot"):
        name = f"rand-{metric}"
        client.create_collection(name, width=D, metric=metric)
        t0 = time.monotonic()
        got_ids = []
        for lo in range(0, N, 500):
            got_ids += client.insert(name, vectors=X[lo:lo + 500], ids=ids[lo:lo + 500], metadata=meta[lo:lo + 500])
        c = client.collection(name)
        check(got_ids == ids and c["count"] == N and c["indexed"] == N,
              f"{metric}: {N} vectors in 4 batches ({time.monotonic() - t0:.2f} s), count {c['count']}, "
              f"indexed {c['indexed']}")
        item = client.item(name, "r17")
        v = np.asarray(item["vector"], np.float32)
        check(item["id"] == "r17" and item["metadata"] == meta[17] and item["has_image"] is False
              and v.shape == (D,) and np.array_equal(v, X[17]),
              f"{metric}: GET item gives the vector as stored (max diff {np.abs(v - X[17]).max():.1e}) and metadata")
        # Single queries at several widths.
        for w in (D, 32, 8, 4):
            probs = []
            for qi in range(6):
                body = {"vector": Q[qi].tolist(), "k": 10}
                if w != D:
                    body["width"] = w
                st, resp = api(port, "POST", f"/v1/collections/{name}/search", body)
                if st != 200:
                    probs.append(f"query {qi}: {st} {short(resp)}")
                    continue
                probs += [f"query {qi}: {p}" for p in compare_results(resp["results"], X, ids, Q[qi], metric, w, 10)]
                if w == D and qi == 0:
                    answers[name] = (Q[qi], resp["results"])
            check(not probs, f"{metric} width {w}: 6 queries equal the brute force" + "".join("\n     " + p for p in probs[:5]))
        # Larger k, and a query longer than the width is cut to it.
        res = client.search(name, vector=Q[6], k=1000)
        check(not compare_results(res, X, ids, Q[6], metric, D, 1000), f"{metric}: k=1000 equals the brute force")
        long_q = np.concatenate([Q[7], np.full(16, 5.0, np.float32)])
        res = client.search(name, vector=long_q, k=10)
        check(not compare_results(res, X, ids, Q[7], metric, D, 10), f"{metric}: a longer query is cut to the width")
        # Filters.
        probs = []
        for (flt, _), mask in zip(FILTERS, masks):
            for qi in (8, 9):
                st, resp = api(port, "POST", f"/v1/collections/{name}/search",
                               {"vector": Q[qi].tolist(), "k": 10, "filter": flt})
                if st != 200:
                    probs.append(f"{json.dumps(flt)}: {st} {short(resp)}")
                    continue
                probs += [f"{json.dumps(flt)}: {p}" for p in
                          compare_results(resp["results"], X, ids, Q[qi], metric, D, 10, mask)]
        counts = [int(m.sum()) for m in masks]
        check(not probs, f"{metric}: {len(FILTERS)} filters (matching {counts} items) equal the filtered brute force"
              + "".join("\n     " + p for p in probs[:6]))
        # Filter at a smaller width.
        res = client.search(name, vector=Q[10], k=7, width=16, filter=FILTERS[4][0])
        check(not compare_results(res, X, ids, Q[10], metric, 16, 7, masks[4]), f"{metric}: filter at width 16, k 7")
        # Batch form: vectors and ids, with width, filter and include.
        queries = [{"vector": Q[i].tolist()} for i in range(12, 22)] + [{"id": "r5"}, {"id": "r1997"}]
        qvecs = [Q[i] for i in range(12, 22)] + [X[5], X[1997]]
        st, resp = api(port, "POST", f"/v1/collections/{name}/search",
                       {"queries": queries, "k": 5, "width": 32, "filter": {"group": {"$in": [0, 1, 2]}},
                        "include": ["metadata"]})
        probs = []
        if st != 200 or len(resp.get("batch", [])) != len(queries):
            probs.append(f"{st} {short(resp)}")
        else:
            bmask = np.array([m["group"] in (0, 1, 2) for m in meta])
            for i, (b, q) in enumerate(zip(resp["batch"], qvecs)):
                probs += [f"query {i}: {p}" for p in compare_results(b["results"], X, ids, q, metric, 32, 5, bmask)]
                probs += [f"query {i}: metadata of {r['id']}" for r in b["results"]
                          if r.get("metadata") != meta[int(r["id"][1:])]]
            for qi, want in ((10, "r5"), (11, "r1997")):
                top = resp["batch"][qi]["results"][0] if resp["batch"][qi]["results"] else {}
                if metric != "dot" and top.get("id") != want:
                    probs.append(f"query by id {want}: the item itself is not first ({top.get('id')})")
        check(not probs, f"{metric}: batch of {len(queries)} (vectors and ids; width 32, filter, include metadata)"
              + "".join("\n     " + p for p in probs[:5]))
        if st == 200:
            check(documented("/v1/collections/{name}/search", "POST", 200, resp), f"{metric}: batch answer documented")
        # Search by id: the item itself is included (first for cosine and l2).
        res = client.search(name, id="r42", k=10)
        probs = compare_results(res, X, ids, X[42], metric, D, 10)
        if metric == "cosine":
            ok_first = res and res[0]["id"] == "r42" and abs(res[0]["score"] - 1) < 1e-5
        elif metric == "l2":
            ok_first = res and res[0]["id"] == "r42" and abs(res[0]["score"]) < 5e-3
        else:
            ok_first = True
        check(not probs and ok_first, f"{metric}: search by id equals the brute force, the item first "
              f"(top {res[0] if res else None})" + "".join("\n     " + p for p in probs[:3]))
        # include: metadata and vector as stored; without include neither.
        res = client.search(name, vector=Q[23], k=5, include=["metadata", "vector"])
        bad = []
        for r in res:
            row = int(r["id"][1:])
            vec = np.asarray(r.get("vector", []), np.float64)
            if r.get("metadata") != meta[row] or vec.shape != (D,) or np.abs(vec - X[row]).max() > 1e-6:
                normed = vec.shape == (D,) and np.abs(vec - X[row] / np.linalg.norm(X[row])).max() < 1e-5
                bad.append(f"{r['id']} (metadata {'ok' if r.get('metadata') == meta[row] else 'differs'}, vector "
                           f"{'normalised, not as stored' if normed else 'differs'})")
        check(len(res) == 5 and not bad, f"{metric}: include metadata and vector (the stored ones)"
              + (f": {bad[:2]}" if bad else ""))
        res = client.search(name, vector=Q[23], k=5)
        check(all(set(r) == {"id", "score"} for r in res), f"{metric}: no include: only id and score ({sorted(res[0]) if res else None})")
        # Delete an item: gone from GET and from search; count follows.
        st, body = api(port, "DELETE", f"/v1/collections/{name}/items/r42")
        st2, _ = api(port, "GET", f"/v1/collections/{name}/items/r42")
        res = client.search(name, vector=X[42], k=3)
        c = client.collection(name)
        check(st == 200 and body == {"deleted": "r42"} and st2 == 404 and "r42" not in [r["id"] for r in res]
              and c["count"] == c["indexed"] == N - 1, f"{metric}: delete item: {st} {short(body)}, then GET {st2}, "
              f"count {c['count']}, indexed {c['indexed']}")
        client.insert(name, vectors=X[42:43], ids=["r42"], metadata=[meta[42]])
    funnel(port, client, X, ids, Q, rng)
    return answers


def funnel(port, client, X, ids, Q, rng):
    """Funnel recall against exact (printed), and a funnel whose shortlist is the
    whole collection equals exact search."""
    name = "rand-cosine"
    recalls = {}
    for label, f in (("default (prefix 4, 100 candidates)", {}), ("prefix 8, 100 candidates", {"width": 8}),
                     ("prefix 16, 100 candidates", {"width": 16}), ("prefix 4, 400 candidates", {"candidates": 400})):
        rs = []
        for qi in range(20):
            res = client.search(name, vector=Q[qi], k=10, funnel=f)
            rs.append(recall_at_k([ids.index(r["id"]) for r in res], X, Q[qi], "cosine", D, 10))
        recalls[label] = float(np.mean(rs))
        print(f"     funnel recall@10 on random vectors, {label}: {recalls[label]:.3f}")
    check(all(0 <= r <= 1 for r in recalls.values()), f"funnel recall@10 measured on random vectors: {recalls}")
    probs = []
    for metric in ("cosine", "l2", "dot"):
        for qi in range(5):
            st, resp = api(port, "POST", f"/v1/collections/rand-{metric}/search",
                           {"vector": Q[qi].tolist(), "k": 10, "funnel": {"candidates": N}})
            if st != 200:
                probs.append(f"{metric} {st} {short(resp)}")
                continue
            probs += [f"{metric} q{qi}: {p}" for p in compare_results(resp["results"], X, ids, Q[qi], metric, D, 10)]
        st, resp = api(port, "POST", f"/v1/collections/rand-{metric}/search",
                       {"vector": Q[5].tolist(), "k": 10, "funnel": {"width": 8, "candidates": N},
                        "filter": {"group": 1}})
        mask = np.array([i % 5 == 1 for i in range(N)])
        probs += [f"{metric} filtered: {p}" for p in (compare_results(resp["results"], X, ids, Q[5], metric, D, 10, mask)
                                                      if st == 200 else [f"{st} {short(resp)}"])]
        st, resp = api(port, "POST", f"/v1/collections/rand-{metric}/search",
                       {"queries": [{"vector": Q[i].tolist()} for i in range(6, 10)], "k": 10, "width": 32,
                        "funnel": {"width": 4, "candidates": N}})
        if st != 200:
            probs.append(f"{metric} batch {st} {short(resp)}")
        else:
            for i, b in enumerate(resp["batch"]):
                probs += [f"{metric} batch q{i}: {p}" for p in compare_results(b["results"], X, ids, Q[6 + i], metric, 32, 10)]
    check(not probs, "funnel with candidates = collection size equals exact search (cosine, l2, dot; filter; batch "
          "at width 32)" + "".join("\n     " + p for p in probs[:5]))
    # Matryoshka-like data: variance decays along the dimensions, so a prefix
    # carries most of the signal; recall is printed, not asserted.
    scale = np.exp(-np.arange(D) / 12.0).astype(np.float32)
    centers = rng.standard_normal((40, D)).astype(np.float32)
    M = ((centers[rng.integers(0, 40, N)] + 0.35 * rng.standard_normal((N, D))) * scale).astype(np.float32)
    client.create_collection("mat", width=D, metric="cosine")
    mids = [f"m{i}" for i in range(N)]
    client.insert("mat", vectors=M, ids=mids, batch=1000)
    MQ = ((centers[rng.integers(0, 40, 20)] + 0.35 * rng.standard_normal((20, D))) * scale).astype(np.float32)
    rec = {}
    for label, f in (("default prefix 4", {}), ("prefix 8", {"width": 8}), ("prefix 16", {"width": 16})):
        res = client.search_batch("mat", [{"vector": q} for q in MQ], k=10, funnel=f)
        rec[label] = round(float(np.mean([recall_at_k([int(r["id"][1:]) for r in rr], M, q, "cosine", D, 10)
                                    for rr, q in zip(res, MQ)])), 3)
    print(f"     funnel recall@10 on Matryoshka-like clustered vectors (std decaying as exp(-j/12)): {rec}")
    check(all(0 <= r <= 1 for r in rec.values()), "funnel recall@10 measured on Matryoshka-like vectors")


def image_embeddings(port, client):
    """Real embeddings: the skimage photographs inserted as images; queries by
    image and by id equal the brute force over the stored vectors, which equal
    what /v1/embeddings computes."""
    c = client.create_collection("photos")
    check(c["width"] == D and c["store_images"] is False, "photos collection: model width by default")
    files = photos()
    inserted, undecodable, other = [], [], []
    for i, p in enumerate(files):
        name = os.path.basename(p)
        st, body = api(port, "POST", "/v1/collections/photos/items",
                       {"items": [{"id": name, "image": _image_data_uri(p), "metadata": {"n": i, "ext": name.rsplit(".", 1)[1]}}]})
        if st == 200 and body.get("ids") == [name]:
            inserted.append(p)
        elif st == 422 and error_message(body):
            undecodable.append(name)
        else:
            other.append(f"{name}: {st} {short(body)}")
    check(len(inserted) >= 20 and not other,
          f"{len(inserted)} of {len(files)} skimage images inserted one by one; 422 for {undecodable}"
          + "".join("\n     " + o for o in other[:5]))
    names = [os.path.basename(p) for p in inserted]
    c = client.collection("photos")
    check(c["count"] == c["indexed"] == len(inserted), f"photos: count {c['count']}, indexed {c['indexed']}")
    X = np.array([client.item("photos", n)["vector"] for n in names], np.float32)
    # The stored vectors are the model's embeddings at the collection width.
    ref = np.concatenate([client.embed(inserted[i:i + 8], width=D) for i in range(0, len(inserted), 8)])
    dev = float(np.abs(X / np.linalg.norm(X, axis=1, keepdims=True) - ref).max())
    check(dev < 1e-4, f"stored vectors equal /v1/embeddings of the same images (max diff {dev:.1e})")
    # A batch insert of several images gives the same vectors (all or nothing, input order).
    c2 = client.create_collection("photos-batch")
    got = client.insert("photos-batch", images=inserted[:6], ids=[f"b{i}" for i in range(6)])
    Xb = np.array([client.item("photos-batch", f"b{i}")["vector"] for i in range(6)], np.float32)
    check(got == [f"b{i}" for i in range(6)] and np.abs(Xb - X[:6]).max() < 1e-4 and c2["width"] == D,
          f"a batch of 6 images: ids in order, same vectors (max diff {np.abs(Xb - X[:6]).max():.1e})")
    # Generated ids: distinct, and GET finds them.
    gen = client.insert("photos-batch", vectors=X[:2])
    check(len(gen) == 2 and len(set(gen)) == 2 and all(client.item("photos-batch", g)["id"] == g for g in gen),
          f"generated ids {gen}")
    client.delete_collection("photos-batch")
    # Queries by image: brute force over the stored vectors; the image itself first.
    probs = []
    for j in range(0, len(inserted), max(1, len(inserted) // 8)):
        st, resp = api(port, "POST", "/v1/collections/photos/search",
                       {"image": _image_data_uri(inserted[j]), "k": 5, "include": ["metadata"]})
        if st != 200:
            probs.append(f"{names[j]}: {st} {short(resp)}")
            continue
        res = resp["results"]
        probs += [f"{names[j]}: {p}" for p in compare_results(res, X, names, ref[j], "cosine", D, 5, tol=1e-4)]
        top = [r["id"] for r in res if abs(r["score"] - res[0]["score"]) < 1e-5]
        if names[j] not in top or abs(res[0]["score"] - 1) > 1e-4:
            probs.append(f"{names[j]}: not first (top {res[0]})")
        if res[0].get("metadata", {}).get("n") is None:
            probs.append(f"{names[j]}: no metadata")
    check(not probs, "search by image equals the brute force; each image finds itself first"
          + "".join("\n     " + p for p in probs[:5]))
    # Queries by id, in batches, at the full width and a prefix.
    probs = []
    for w in (D, 16):
        st, resp = api(port, "POST", "/v1/collections/photos/search",
                       {"queries": [{"id": n} for n in names], "k": 8, "width": w})
        if st != 200:
            probs.append(f"w{w}: {st} {short(resp)}")
            continue
        for j, b in enumerate(resp["batch"]):
            probs += [f"w{w} {names[j]}: {p}" for p in compare_results(b["results"], X, names, X[j], "cosine", w, 8)]
    check(not probs, f"search by id ({len(names)} queries, batch form, widths {D} and 16) equals the brute force"
          + "".join("\n     " + p for p in probs[:5]))
    # Filters on real embeddings.
    res = client.search("photos", id=names[0], k=50, filter={"ext": "jpg"})
    mask = np.array([n.endswith(".jpg") for n in names])
    check(not compare_results(res, X, names, X[0], "cosine", D, 50, mask) and all(r["id"].endswith(".jpg") for r in res),
          f"filter on real embeddings: {len(res)} jpg results")
    # Width 16 collection of images: vectors are the 16-wide embeddings.
    client.create_collection("photos16", width=16, model="tiny")
    client.insert("photos16", images=inserted[:4], ids=names[:4])
    X16 = np.array([client.item("photos16", n)["vector"] for n in names[:4]], np.float32)
    ref16 = client.embed(inserted[:4], width=16)
    dev = float(np.abs(X16 / np.linalg.norm(X16, axis=1, keepdims=True) - ref16).max())
    check(dev < 1e-4, f"a width-16 collection stores the 16-wide embeddings (max diff {dev:.1e})")
    client.delete_collection("photos16")


def bad_input(port, client):
    """Every bad input of the contract: its 4xx with a message; nothing stored."""
    client.create_collection("bad", width=8, metric="cosine", model="tiny")
    client.create_collection("bad-img", store_images=True)
    client.insert("bad", vectors=np.eye(8, dtype=np.float32), ids=[f"e{i}" for i in range(8)])
    v8 = [0.5] * 8
    png = _image_data_uri(os.path.join(PHOTOS, "chelsea.png"))
    corrupt = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nbroken").decode()
    coll = "/v1/collections"
    items, search = "/v1/collections/bad/items", "/v1/collections/bad/search"
    huge = ["x" * 1000]
    cases = [
        # collections
        ("create: malformed JSON", "POST", coll, b'{"name": ', 400),
        ("create: empty body", "POST", coll, b"", 400),
        ("create: not an object", "POST", coll, [1, 2], 400),
        ("create: no name", "POST", coll, {"metric": "l2"}, 400),
        ("create: empty name", "POST", coll, {"name": ""}, 400),
        ("create: name not a string", "POST", coll, {"name": 5}, 400),
        ("create: over-long name", "POST", coll, {"name": "n" * 1000}, 400),
        ("create: unknown metric", "POST", coll, {"name": "x1", "metric": "hamming"}, 400),
        ("create: width 0", "POST", coll, {"name": "x2", "width": 0}, 400),
        ("create: width over the model's", "POST", coll, {"name": "x3", "width": D + 1}, 422),
        ("create: width not a number", "POST", coll, {"name": "x4", "width": "64"}, 400),
        ("create: store_images not a bool", "POST", coll, {"name": "x5", "store_images": "yes"}, 400),
        ("create: unknown model", "POST", coll, {"name": "x6", "model": "nope"}, 404),
        ("create: name taken", "POST", coll, {"name": "bad"}, 409),
        ("get: unknown collection", "GET", coll + "/nope", None, 404),
        ("delete: unknown collection", "DELETE", coll + "/nope", None, 404),
        # items
        ("insert: malformed JSON", "POST", items, b'{"items": [', 400),
        ("insert: items missing", "POST", items, {"vectors": [v8]}, 400),
        ("insert: items not a list", "POST", items, {"items": {"vector": v8}}, 400),
        ("insert: item not an object", "POST", items, {"items": [v8]}, 400),
        ("insert: wrong dimension", "POST", items, {"items": [{"vector": [0.5] * 7}]}, 400),
        ("insert: wrong dimension (longer)", "POST", items, {"items": [{"vector": [0.5] * 9}]}, 400),
        ("insert: Inf (1e999)", "POST", items, b'{"items": [{"vector": [1e999, 0, 0, 0, 0, 0, 0, 0]}]}', 400),
        ("insert: -Inf (-1e999)", "POST", items, b'{"items": [{"vector": [0, 0, 0, 0, 0, 0, 0, -1e999]}]}', 400),
        ("insert: NaN literal", "POST", items, b'{"items": [{"vector": [NaN, 0, 0, 0, 0, 0, 0, 0]}]}', 400),
        ("insert: Infinity literal", "POST", items, b'{"items": [{"vector": [Infinity, 0, 0, 0, 0, 0, 0, 0]}]}', 400),
        ("insert: float overflowing float32 (1e39)", "POST", items, {"items": [{"vector": [1e39] + v8[1:]}]}, 400),
        ("insert: string in vector", "POST", items, {"items": [{"vector": ["0.5"] + v8[1:]}]}, 400),
        ("insert: vector not a list", "POST", items, {"items": [{"vector": "0.5"}]}, 400),
        ("insert: both image and vector", "POST", items, {"items": [{"vector": v8, "image": png}]}, 400),
        ("insert: neither image nor vector", "POST", items, {"items": [{"id": "z", "metadata": {}}]}, 400),
        ("insert: metadata a list", "POST", items, {"items": [{"vector": v8, "metadata": [1]}]}, 400),
        ("insert: metadata a string", "POST", items, {"items": [{"vector": v8, "metadata": "x"}]}, 400),
        ("insert: empty id", "POST", items, {"items": [{"id": "", "vector": v8}]}, 400),
        ("insert: over-long id", "POST", items, {"items": [{"id": huge[0], "vector": v8}]}, 400),
        ("insert: id not a string", "POST", items, {"items": [{"id": 7, "vector": v8}]}, 400),
        ("insert: image not base64", "POST", items, {"items": [{"image": "@@@@"}]}, 400),
        ("insert: undecodable image", "POST", items, {"items": [{"image": corrupt}]}, 422),
        ("insert: unknown collection", "POST", "/v1/collections/nope/items", {"items": [{"vector": v8}]}, 404),
        ("insert: duplicate id within the batch", "POST", items,
         {"items": [{"id": "d1", "vector": v8}, {"id": "d2", "vector": v8}, {"id": "d1", "vector": v8}]}, 409),
        ("insert: id already stored", "POST", items, {"items": [{"id": "d3", "vector": v8}, {"id": "e0", "vector": v8}]}, 409),
        ("insert: one bad vector fails the batch", "POST", items,
         {"items": [{"id": "d4", "vector": v8}, {"id": "d5", "vector": [1] * 7}]}, 400),
        ("insert: 4097 items (over --max-insert-items)", "POST", items,
         {"items": [{"id": f"big{i}", "vector": v8} for i in range(4097)]}, 413),
        ("get item: unknown item", "GET", items + "/nope", None, 404),
        ("get item: unknown collection", "GET", "/v1/collections/nope/items/e0", None, 404),
        ("delete item: unknown item", "DELETE", items + "/nope", None, 404),
        ("delete item: unknown collection", "DELETE", "/v1/collections/nope/items/e0", None, 404),
        # search
        ("search: malformed JSON", "POST", search, b'{"vector": [1', 400),
        ("search: no query", "POST", search, {"k": 3}, 400),
        ("search: vector and id", "POST", search, {"vector": v8, "id": "e0"}, 400),
        ("search: vector and image", "POST", search, {"vector": v8, "image": png}, 400),
        ("search: vector shorter than the width", "POST", search, {"vector": [0.5] * 7}, 400),
        ("search: Inf in the query", "POST", search, b'{"vector": [1e999, 0, 0, 0, 0, 0, 0, 0]}', 400),
        ("search: NaN literal in the query", "POST", search, b'{"vector": [NaN, 0, 0, 0, 0, 0, 0, 0]}', 400),
        ("search: vector not numbers", "POST", search, {"vector": ["a"] * 8}, 400),
        ("search: k 0", "POST", search, {"vector": v8, "k": 0}, 400),
        ("search: k 10001", "POST", search, {"vector": v8, "k": 10001}, 400),
        ("search: 11 queries x k 10000", "POST", search,
         {"queries": [{"vector": v8}] * 11, "k": 10000}, 413),
        ("search: k -1", "POST", search, {"vector": v8, "k": -1}, 400),
        ("search: k not a number", "POST", search, {"vector": v8, "k": "3"}, 400),
        ("search: width 0", "POST", search, {"vector": v8, "width": 0}, 400),
        ("search: width over the collection's", "POST", search, {"vector": [0.5] * 9, "width": 9}, 400),
        ("search: id not a string", "POST", search, {"id": 3}, 400),
        ("search: funnel not an object", "POST", search, {"vector": v8, "funnel": 4}, 400),
        ("search: funnel width 0", "POST", search, {"vector": v8, "funnel": {"width": 0}}, 400),
        ("search: funnel width over the collection's", "POST", search, {"vector": v8, "funnel": {"width": 9}}, 400),
        ("search: funnel candidates 0", "POST", search, {"vector": v8, "funnel": {"candidates": 0}}, 400),
        ("search: include not a list", "POST", search, {"vector": v8, "include": "metadata"}, 400),
        ("search: include unknown field", "POST", search, {"vector": v8, "include": ["bogus"]}, 400),
        ("filter: not an object", "POST", search, {"vector": v8, "filter": [1]}, 400),
        ("filter: a string", "POST", search, {"vector": v8, "filter": "group = 1"}, 400),
        ("filter: unknown operator", "POST", search, {"vector": v8, "filter": {"g": {"$regex": "x"}}}, 400),
        ("filter: operator without $", "POST", search, {"vector": v8, "filter": {"g": {"gt": 1}}}, 400),
        ("filter: $in not a list", "POST", search, {"vector": v8, "filter": {"g": {"$in": 1}}}, 400),
        ("filter: $in of objects", "POST", search, {"vector": v8, "filter": {"g": {"$in": [{"a": 1}]}}}, 400),
        ("filter: $nin not a list", "POST", search, {"vector": v8, "filter": {"g": {"$nin": "a"}}}, 400),
        ("filter: $gt with a bool", "POST", search, {"vector": v8, "filter": {"g": {"$gt": True}}}, 400),
        ("filter: $lt with a list", "POST", search, {"vector": v8, "filter": {"g": {"$lt": [1]}}}, 400),
        ("filter: $gte with null", "POST", search, {"vector": v8, "filter": {"g": {"$gte": None}}}, 400),
        ("filter: $eq with an object", "POST", search, {"vector": v8, "filter": {"g": {"$eq": {"a": 1}}}}, 400),
        ("filter: equality with a list", "POST", search, {"vector": v8, "filter": {"g": [1, 2]}}, 400),
        ("batch: empty queries", "POST", search, {"queries": []}, 400),
        ("batch: queries not a list", "POST", search, {"queries": {"vector": v8}}, 400),
        ("batch: a query with two inputs", "POST", search, {"queries": [{"vector": v8, "id": "e0"}]}, 400),
        ("batch: a bad vector among good ones", "POST", search, {"queries": [{"vector": v8}, {"vector": [1] * 3}]}, 400),
        ("batch: queries and vector", "POST", search, {"queries": [{"vector": v8}], "vector": v8}, 400),
        ("search: unknown collection", "POST", "/v1/collections/nope/search", {"vector": v8}, 404),
        ("search: undecodable image", "POST", search, {"image": corrupt}, 422),
        # reembed and jobs
        ("reembed: collection without images", "POST", "/v1/collections/bad/reembed", b"", 400),
        ("reembed: unknown collection", "POST", "/v1/collections/nope/reembed", b"", 404),
        ("job: unknown", "GET", "/v1/jobs/nope", None, 404),
    ]
    for what, method, path, body, want in cases:
        st, resp = api(port, method, path, body)
        check(st == want and error_message(resp), f"{what}: {st} (want {want})"
              + ("" if st == want and error_message(resp) else f" {short(resp, 200)}"))
    # Outcomes whose status the contract leaves open between two 4xx.
    for what, body, allowed in (("search: unknown id", {"id": "nope"}, (400, 404)),
                                ("batch: 1025 queries", {"queries": [{"vector": v8}] * 1025}, (400, 413))):
        st, resp = api(port, "POST", search, body)
        check(st in allowed and error_message(resp), f"{what}: {st} (want one of {allowed})")
    st = oversize_status(port, items, 17 << 20)
    check(st == 413, f"insert: Content-Length over --max-body-mb: {st}")
    # Nothing of a refused batch is stored.
    c = client.collection("bad")
    left = [i for i in ("d1", "d2", "d3", "d4", "big0", "big4096", "z")
            if api(port, "GET", f"{items}/{i}")[0] != 404]
    check(c["count"] == c["indexed"] == 8 and not left,
          f"nothing of the refused batches stored: count {c['count']}, indexed {c['indexed']}, present {left}")
    # Exactly 4096 items are accepted (the default limit) and 255-byte ids too.
    st, resp = api(port, "POST", items, {"items": [{"id": f"ok{i}", "vector": v8} for i in range(4096)]})
    check(st == 200 and len(resp.get("ids", [])) == 4096, f"4096 items accepted: {st}")
    long_id = "L" * 255
    st, resp = api(port, "POST", items, {"items": [{"id": long_id, "vector": v8, "metadata": {"k": [1, {"a": None}]}}]})
    st2, item = api(port, "GET", f"{items}/{long_id}")
    check(st == 200 and st2 == 200 and item.get("metadata") == {"k": [1, {"a": None}]},
          f"a 255-byte id and nested metadata round-trip: {st} {st2}")
    st, resp = api(port, "POST", search, {"vector": v8, "k": 1000, "filter": {"nope": 1}})
    check(st == 200 and resp.get("results") == [], f"a filter matching nothing: 200 and no results ({st})")
    st, resp = api(port, "POST", "/v1/collections/bad/items",
                   {"items": [{"id": "unicodé-ид-🙂", "vector": v8, "metadata": {"s": "é"}}]})
    st2, item = api(port, "GET", "/v1/collections/bad/items/" + urllib.parse.quote("unicodé-ид-🙂"))
    check(st == 200 and st2 == 200 and item.get("id") == "unicodé-ид-🙂", f"a UTF-8 id round-trips (GET with "
          f"a percent-encoded path): {st} {st2}")
    st, resp = api(port, "GET", "/v1/collections/bad/items/e3")
    check(st == 200 and resp.get("metadata") is None and resp.get("has_image") is False,
          f"an item without metadata: metadata null ({short(resp, 120)})")
    # Wrong methods.
    st, resp = api(port, "PUT", "/v1/collections/bad", b"{}")
    check(st == 405 and error_message(resp), f"PUT on a collection: {st}")
    for c in ("bad", "bad-img"):
        client.delete_collection(c)


def restart_same(port, answers):
    client = FrancaClient(f"http://127.0.0.1:{port}")
    cs = {c["name"]: c for c in client.collections()}
    check(all(cs.get(f"rand-{m}", {}).get("count") == N and cs[f"rand-{m}"].get("indexed") == N
              for m in ("cosine", "l2", "dot")), "restart: collections and counts kept; the mirror rebuilt")
    probs = []
    for m in ("cosine", "l2", "dot"):
        q, before = answers.get(f"rand-{m}", (None, None))
        if before is None:
            probs.append(f"{m}: no answer from before")
            continue
        after = client.search(f"rand-{m}", vector=q, k=10)
        if [r["id"] for r in after] != [r["id"] for r in before] or \
                max(abs(a["score"] - b["score"]) for a, b in zip(after, before)) > 1e-6:
            probs.append(f"{m}: {short(after, 150)} vs {short(before, 150)}")
    check(not probs, "restart: the same query gives the same answer as before" + "".join("\n     " + p for p in probs))


def queue_full(tmp, ck):
    """413 when an image insert or search has more images than the whole inference
    queue holds (it could never fit; a full queue is 429, see test_admission)."""
    server, port = ts.start(["--model", "tiny=" + ck, "--data", os.path.join(tmp, "data-q"), "--max-queue", "1",
                             "--max-delay-ms", "300"])
    try:
        FrancaClient(f"http://127.0.0.1:{port}").create_collection("q")
        png = _image_data_uri(os.path.join(PHOTOS, "chelsea.png"))
        st, resp = api(port, "POST", "/v1/collections/q/items", {"items": [{"image": png}, {"image": png}]})
        st2, c = api(port, "GET", "/v1/collections/q")
        check(st == 413 and error_message(resp) and c.get("count") == 0, f"insert larger than the queue: {st}, "
              f"nothing stored ({c.get('count')})")
        st, resp = api(port, "POST", "/v1/collections/q/search", {"queries": [{"image": png}, {"image": png}]})
        check(st == 413 and error_message(resp), f"batch image search larger than the queue: {st}")
        check(healthy(port), "healthy after 413s")
    finally:
        stop_server(server)


if __name__ == "__main__":
    sys.exit(main())
