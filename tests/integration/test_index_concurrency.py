"""Concurrent use of the vector index: for 12 s, three threads insert batches,
one deletes acknowledged items, two search (single and batch, with filters,
by vector and by id) and one reads items, all at once, without an error (and
no search sent after a delete was acknowledged finds the deleted item). The
final state equals the acknowledged operations: the ids present are exactly
the inserted minus the deleted (count == indexed == that number, each expected
id found first by search-by-id, each deleted id 404), and a restart on the
same --data gives the same state."""
import http.client
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402
import test_index as ti  # noqa: E402
from harness import Checks, stop_server  # noqa: E402

W = 48
SECONDS = 12.0
COLL = "conc"

check = Checks()


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.inserted = {}    # id -> vector (acknowledged)
        self.deleted = set()  # acknowledged deletes
        self.deleted_at = {}  # id -> when its delete was acknowledged (monotonic)
        self.keep = []        # ids never deleted (thread 0's), for search by id
        self.errors = []
        self.ops = {"insert": 0, "delete": 0, "search": 0, "batch_search": 0, "get": 0}

    def error(self, what):
        with self.lock:
            self.errors.append(what)


def call(st, method, path, body, port):
    try:
        return ti.api(port, method, path, body, timeout=60)
    except (OSError, http.client.HTTPException) as e:
        st.error(f"{method} {path}: {e!r}")
        return None, None


def inserter(port, st, t, stop):
    rng = np.random.default_rng(100 + t)
    n_batch = 0
    while not stop.is_set():
        n = int(rng.integers(1, 40))
        ids = [f"t{t}-{n_batch}-{j}" for j in range(n)]
        vecs = rng.standard_normal((n, W)).astype(np.float32)
        body = {"items": [{"id": i, "vector": v.tolist(), "metadata": {"t": t, "b": n_batch}}
                          for i, v in zip(ids, vecs)]}
        code, resp = call(st, "POST", f"/v1/collections/{COLL}/items", body, port)
        n_batch += 1
        if code is None:
            continue
        if code != 200 or resp.get("ids") != ids:
            st.error(f"insert: {code} {ti.short(resp)}")
            continue
        with st.lock:
            st.inserted.update(zip(ids, vecs))
            if t == 0:
                st.keep.extend(ids)
            st.ops["insert"] += 1


def deleter(port, st, stop):
    rng = np.random.default_rng(7)
    while not stop.is_set():
        with st.lock:
            cands = [i for i in st.inserted if not i.startswith("t0-") and i not in st.deleted]
        if not cands:
            time.sleep(0.01)  # nothing to delete yet
            continue
        victim = cands[int(rng.integers(0, len(cands)))]
        code, resp = call(st, "DELETE", f"/v1/collections/{COLL}/items/{victim}", None, port)
        if code is None:
            continue
        if code != 200 or resp != {"deleted": victim}:
            st.error(f"delete {victim}: {code} {ti.short(resp)}")
            continue
        with st.lock:
            st.deleted.add(victim)
            st.deleted_at[victim] = time.monotonic()
            st.ops["delete"] += 1
        # Deleting it again: 404.
        code, resp = call(st, "DELETE", f"/v1/collections/{COLL}/items/{victim}", None, port)
        if code != 404:
            st.error(f"second delete of {victim}: {code} {ti.short(resp)}")


def searcher(port, st, s, stop):
    rng = np.random.default_rng(500 + s)
    while not stop.is_set():
        q = rng.standard_normal(W).astype(np.float32)
        kind = int(rng.integers(0, 4))
        if kind == 0:
            body = {"vector": q.tolist(), "k": int(rng.integers(1, 50))}
        elif kind == 1:
            body = {"vector": q.tolist(), "k": 10, "filter": {"t": {"$in": [1, 2]}}, "funnel": {}}
        elif kind == 2:
            body = {"queries": [{"vector": (q + i).tolist()} for i in range(8)], "k": 5, "width": 16,
                    "include": ["metadata"]}
        else:
            with st.lock:
                keep = st.keep[int(rng.integers(0, len(st.keep)))] if st.keep else None
            if keep is None:
                continue
            body = {"id": keep, "k": 3}
        sent = time.monotonic()
        code, resp = call(st, "POST", f"/v1/collections/{COLL}/search", body, port)
        if code is None:
            continue
        if code != 200:
            st.error(f"search {ti.short(body, 80)}: {code} {ti.short(resp)}")
            continue
        # No answer may hold an item whose delete was acknowledged before it was sent.
        with st.lock:
            stale = [r["id"] for b in resp.get("batch", [resp]) for r in b.get("results", [])
                     if st.deleted_at.get(r["id"], sent) < sent]
        if stale:
            st.error(f"search sent after the delete of {stale[:3]} was acknowledged still finds them")
        if kind == 2:
            ok = len(resp.get("batch", [])) == 8 and all(
                all("metadata" in r for r in b["results"]) for b in resp["batch"])
        elif kind == 3:
            res = resp.get("results", [])
            ok = bool(res) and res[0]["id"] == body["id"] and abs(res[0]["score"] - 1) < 1e-5
        elif kind == 1:
            ok = all(not r["id"].startswith("t0-") for r in resp.get("results", []))
        else:
            res = resp.get("results", [])
            ok = all(res[i]["score"] >= res[i + 1]["score"] - 1e-6 for i in range(len(res) - 1))
        if not ok:
            st.error(f"search {ti.short(body, 80)}: wrong answer {ti.short(resp)}")
        with st.lock:
            st.ops["batch_search" if kind == 2 else "search"] += 1


def reader(port, st, stop):
    rng = np.random.default_rng(9)
    while not stop.is_set():
        with st.lock:
            keep = st.keep[int(rng.integers(0, len(st.keep)))] if st.keep else None
        if keep is None:
            time.sleep(0.01)  # nothing acknowledged yet
            continue
        code, item = call(st, "GET", f"/v1/collections/{COLL}/items/{keep}", None, port)
        if code is None:
            continue
        with st.lock:
            want = st.inserted[keep]
            st.ops["get"] += 1
        if code != 200 or not np.array_equal(np.asarray(item["vector"], np.float32), want):
            st.error(f"GET {keep}: {code} {ti.short(item)}")
        code, c = call(st, "GET", f"/v1/collections/{COLL}", None, port)
        if code != 200:
            st.error(f"GET collection: {code} {ti.short(c)}")


def verify(port, st, label):
    expected = {i: v for i, v in st.inserted.items() if i not in st.deleted}
    code, c = ti.api(port, "GET", f"/v1/collections/{COLL}")
    check(code == 200 and c["count"] == c["indexed"] == len(expected),
          f"{label}: count {c.get('count')}, indexed {c.get('indexed')}, expected {len(expected)} "
          f"({len(st.inserted)} inserted - {len(st.deleted)} deleted)")
    ids = sorted(expected)
    bad = ti.not_found_first(port, COLL, ids)
    check(not bad, f"{label}: each of the {len(ids)} expected ids is found first by search-by-id"
          + "".join("\n     " + b for b in bad[:5]))
    gone = [i for i in sorted(st.deleted)[:300]
            if ti.api(port, "GET", f"/v1/collections/{COLL}/items/{i}")[0] != 404]
    check(not gone, f"{label}: deleted ids answer 404 ({min(300, len(st.deleted))} checked)"
          + (f": {gone[:5]}" if gone else ""))


def main():
    tmp = tempfile.mkdtemp(prefix="index_conc_")
    ck = ti.make_checkpoint(os.path.join(tmp, "a.safetensors"), 1)
    args = ["--model", "tiny=" + ck, "--data", os.path.join(tmp, "data"), "--http-threads", "8"]
    server, port = ts.start(args)
    st = State()
    try:
        code, body = ti.api(port, "POST", "/v1/collections", {"name": COLL, "width": W, "metric": "cosine"})
        check(code == 201, f"collection created: {code}")
        stop = threading.Event()
        threads = [threading.Thread(target=inserter, args=(port, st, t, stop)) for t in range(3)]
        threads.append(threading.Thread(target=deleter, args=(port, st, stop)))
        threads += [threading.Thread(target=searcher, args=(port, st, s, stop)) for s in range(2)]
        threads.append(threading.Thread(target=reader, args=(port, st, stop)))
        t0 = time.monotonic()
        for t in threads:
            t.start()
        stop.wait(SECONDS)  # the length of the run, not a synchronisation
        stop.set()
        for t in threads:
            t.join()
        took = time.monotonic() - t0
        check(took >= 10 and not st.errors and min(st.ops.values()) > 0,
              f"{took:.1f} s of concurrent operations {st.ops} without an error"
              + "".join("\n     " + e for e in st.errors[:8]))
        check(ti.healthy(port), "healthy afterwards")
        ti.guarded(check, "final state", verify, port, st, "final state")
    finally:
        rc = stop_server(server)
    check(rc == 0, f"SIGTERM exit 0 (rc {rc})")
    server, port = ts.start(args)
    try:
        ti.guarded(check, "after a restart", verify, port, st, "after a restart")
    finally:
        stop_server(server)
    if not check.failed:  # kept for a look when something failed
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
