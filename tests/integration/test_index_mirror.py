"""Compressed search mirrors through the server: f16 and int8 collections
("mirror" at creation) beside an f32 one on the same clustered
Matryoshka-like vectors; search against the numpy float64 brute force
(recall@10, exact re-ranked scores, "rerank": false), with_vector and GET
giving the stored float32 vectors, id queries, deletes, inserts beyond the
int8 range, the form and bytes per vector in GET /v1/collections/{name}
(int8 a quarter of f32), and a restart that keeps the form."""
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402
import test_index as ti  # noqa: E402
from harness import Checks, stop_server  # noqa: E402
from franca_client import FrancaClient  # noqa: E402

N, D, NQ, K = 4000, 64, 40, 10  # D: the width of the test model
FORMS = {"f32": 1.0, "f16": 0.99, "int8": 0.95}  # the least recall@10 asked of each
check = Checks()


def clustered(rng, n, centres):
    """Clusters whose spread falls along the dimensions (Matryoshka-like)."""
    decay = 1.0 / np.sqrt(1.0 + np.arange(D) / 8.0)
    c = centres[rng.integers(0, len(centres), n)]
    return (c + 0.35 * rng.standard_normal((n, D)) * decay).astype(np.float32)


def search(port, name, body):
    st, resp = ti.api(port, "POST", f"/v1/collections/{name}/search", body)
    if st != 200:
        raise AssertionError(f"search {name}: {st} {ti.short(resp)}")
    return resp["results"]


def recall_and_problems(port, name, X, ids, Q, metric, extra=None):
    hits, probs = 0.0, []
    for qi, q in enumerate(Q):
        res = search(port, name, {"vector": q.tolist(), "k": K, **(extra or {})})
        hits += ti.recall_at_k([ids.index(r["id"]) for r in res], X, q, metric, D, K)
        if not extra:  # re-ranked: every returned score is the exact one, best first
            # (a missed neighbour shifts the score list: that is recall, counted above)
            probs += [f"query {qi}: {p}" for p in ti.compare_results(res, X, ids, q, metric, D, K, margin=1e9)
                      if not p.startswith("score list differs")]
    return hits / len(Q), probs


def main():
    tmp = tempfile.mkdtemp(prefix="index_mirror_")
    data = os.path.join(tmp, "data")
    ck = ti.make_checkpoint(os.path.join(tmp, "a.safetensors"), 1)
    args = ["--model", "tiny=" + ck, "--data", data]
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((32, D)) / np.sqrt(1.0 + np.arange(D) / 8.0)
    X = clustered(rng, N, centres)
    X[:, 3] += 0.5  # an off-centre dimension
    ids = [f"v{i}" for i in range(N)]
    Q = X[rng.integers(0, N, NQ)] + 0.2 * rng.standard_normal((NQ, D)).astype(np.float32) / np.sqrt(
        1.0 + np.arange(D) / 8.0).astype(np.float32)
    server, port = ts.start(args)
    try:
        bytes_per = {}
        for form in FORMS:
            for metric in ("cosine", "l2"):
                name = f"{form}-{metric}"
                st, c = ti.api(port, "POST", "/v1/collections",
                               {"name": name, "width": D, "metric": metric, "mirror": form})
                check(st == 201 and c.get("mirror") == form, f"{name}: created with mirror {form}: {st}")
                for lo in range(0, N, 1000):
                    st, r = ti.api(port, "POST", f"/v1/collections/{name}/items",
                                   {"items": [{"id": ids[i], "vector": X[i].tolist()} for i in range(lo, lo + 1000)]})
                    if st != 200:
                        check(False, f"{name}: insert {st} {ti.short(r)}")
                st, c = ti.api(port, "GET", f"/v1/collections/{name}")
                check(st == 200 and c["count"] == N and c["indexed"] == N and c["mirror"] == form,
                      f"{name}: {c.get('count')} items, mirror {c.get('mirror')}, "
                      f"{c.get('vector_bytes')} B/vector in the matrix, {c.get('mirror_bytes')} B in all")
                bytes_per[form] = (c["vector_bytes"], c["mirror_bytes"])
                rec, probs = recall_and_problems(port, name, X, ids, Q, metric)
                raw, _ = recall_and_problems(port, name, X, ids, Q, metric, {"rerank": False})
                check(rec >= FORMS[form] and not probs,
                      f"{name}: recall@10 {rec:.3f} re-ranked (compressed scores: {raw:.3f}), scores exact"
                      + "".join("\n     " + p for p in probs[:4]))
                res = search(port, name, {"vector": Q[0].tolist(), "k": 5, "include": ["vector"]})
                same = all(np.array_equal(np.asarray(r["vector"], np.float32), X[ids.index(r["id"])]) for r in res)
                check(same, f"{name}: with_vector gives the stored float32 vectors")
                res = search(port, name, {"id": "v42", "k": 3})
                self_score = 1.0 if metric == "cosine" else 0.0
                check(res[0]["id"] == "v42" and abs(res[0]["score"] - self_score) <= 1e-5,
                      f"{name}: an id query finds its item first, score {res[0]['score']:.7f}")
        check(bytes_per["int8"][0] * 4 == bytes_per["f32"][0] and bytes_per["f16"][0] * 2 == bytes_per["f32"][0],
              f"bytes per vector in the matrix: f32 {bytes_per['f32'][0]}, f16 {bytes_per['f16'][0]}, "
              f"int8 {bytes_per['int8'][0]}")
        # In all, ids, norms and the prefix (f16) come on top: int8 saves 3 bytes a component.
        check(bytes_per["f32"][1] - bytes_per["int8"][1] >= 3 * D * N,
              f"mirror in all: int8 {bytes_per['int8'][1]} B, f32 {bytes_per['f32'][1]} B")

        # Deletes and inserts far outside the int8 ranges, then a restart.
        name = "int8-l2"
        for i in range(0, N, 10):
            st, _ = ti.api(port, "DELETE", f"/v1/collections/{name}/items/{ids[i]}")
            if st != 200:
                check(False, f"delete {ids[i]}: {st}")
        keep = np.ones(N, bool)
        keep[::10] = False
        big = (X[:20] * 30.0).astype(np.float32)
        st, _ = ti.api(port, "POST", f"/v1/collections/{name}/items",
                       {"items": [{"id": f"big{i}", "vector": big[i].tolist()} for i in range(20)]})
        check(st == 200, f"{name}: 20 items 30x outside the ranges inserted: {st}")
        X2 = np.concatenate([X[keep], big])
        ids2 = [ids[i] for i in range(N) if keep[i]] + [f"big{i}" for i in range(20)]
        rec, probs = recall_and_problems(port, name, X2, ids2, Q, "l2")
        check(rec >= FORMS["int8"] and not probs, f"{name} after deletes and big inserts: recall@10 {rec:.3f}")
        res = search(port, name, {"vector": big[3].tolist(), "k": 1})
        check(res[0]["id"] == "big3", f"{name}: a big item finds itself: {res[0]['id']}")
        rc = stop_server(server)
        check(rc == 0, f"SIGTERM: exit {rc}")
        server, port = ts.start(args)
        for form in FORMS:
            st, c = ti.api(port, "GET", f"/v1/collections/{form}-cosine")
            check(st == 200 and c.get("mirror") == form and c["indexed"] == N,
                  f"after a restart {form}-cosine keeps mirror {c.get('mirror')}, {c.get('indexed')} indexed")
        rec, probs = recall_and_problems(port, name, X2, ids2, Q, "l2")
        check(rec >= FORMS["int8"] and not probs, f"{name} after the restart: recall@10 {rec:.3f}")
        client = FrancaClient(f"http://127.0.0.1:{port}")
        c = client.create_collection("client-int8", width=D, metric="dot", mirror="int8")
        client.insert("client-int8", vectors=X[:500], ids=ids[:500])
        exact = client.search("client-int8", vector=Q[1], k=5)
        approx = client.search("client-int8", vector=Q[1], k=5, rerank=False)
        truth = ti.ref_scores(X[:500], Q[1], "dot", D)
        check(c["mirror"] == "int8" and abs(exact[0]["score"] - truth.max()) <= 1e-5 * max(1, abs(truth.max()))
              and len(approx) == 5,
              f"client: mirror int8, rerank default exact ({exact[0]['score']:.6f} vs {truth.max():.6f}), "
              f"rerank=False {approx[0]['score']:.6f}")
        st, resp = ti.api(port, "POST", "/v1/collections", {"name": "bad", "width": D, "mirror": "int4"})
        check(st == 400 and "mirror" in ti.error_message(resp), f"mirror int4 refused: {st}")
        st, resp = ti.api(port, "POST", "/v1/collections/int8-l2/search", {"vector": Q[0].tolist(), "rerank": 1})
        check(st == 400, f"rerank must be a boolean: {st}")
    finally:
        stop_server(server)
    if not check.failed:
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
