"""ANN (an HNSW graph over the Matryoshka prefix, re-ranked exactly) through
the server: a collection created with "ann" on clustered Matryoshka-like
vectors answers with recall@10 >= 0.95 against numpy's exact search and says
"search": "hnsw"; "exact": true runs exact; a selective filter answers exactly
what exact search answers, a broad one is applied during the walk; deleted
items never come back; POST /v1/collections/{name}/ann builds a graph for an
existing collection as a job; SIGKILL during inserts and during a build job:
the restarted server serves every acknowledged item, repairs or rebuilds the
graph (saved beside SQLite with the collection's generation) and recall is
unchanged; a clean shutdown saves the graph, which the next start loads as is;
rows another program wrote into SQLite are taken into the graph; a corrupt file
is rebuilt."""
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402
import test_index as ti  # noqa: E402
from harness import Checks, stop_server  # noqa: E402

D = 64          # the tiny model's width
AW = 16         # the graph's prefix width
N = 8000
NQ = 100
K = 10
check = Checks()
rng = np.random.default_rng(18)
SCALE = (1.0 / np.sqrt(1.0 + np.arange(D) / 8.0)).astype(np.float32)
CENTRES = rng.standard_normal((200, D)).astype(np.float32) * SCALE


def clustered(n):
    lab = rng.integers(0, len(CENTRES), n)
    return (CENTRES[lab] + 0.6 * rng.standard_normal((n, D)).astype(np.float32) * SCALE).astype(np.float32)


def insert(port, coll, X, ids, start=0, batch=2000):
    for lo in range(0, len(X), batch):
        items = [{"id": ids[i], "vector": X[i].tolist(), "metadata": {"r": (start + i) % 100}}
                 for i in range(lo, min(lo + batch, len(X)))]
        st, resp = ti.api(port, "POST", f"/v1/collections/{coll}/items", {"items": items})
        if st != 200:
            raise RuntimeError(f"insert: {st} {ti.short(resp)}")


def info(port, coll):
    st, c = ti.api(port, "GET", f"/v1/collections/{coll}")
    return c if st == 200 else {}


def wait_ready(port, coll, timeout=60):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        a = info(port, coll).get("ann") or {}
        if a.get("ready") and not a.get("building"):
            return a
        time.sleep(0.1)
    return info(port, coll).get("ann") or {}


def search(port, coll, Q, **opts):
    st, resp = ti.api(port, "POST", f"/v1/collections/{coll}/search",
                      {"queries": [{"vector": q.tolist()} for q in Q], "k": K, **opts})
    if st != 200:
        raise RuntimeError(f"search: {st} {ti.short(resp)}")
    return resp


def recall(resp, X, ids, Q, mask=None):
    index = {i: r for r, i in enumerate(ids)}
    rs = []
    for q, b in zip(Q, resp["batch"]):
        rows = [index[h["id"]] for h in b["results"] if h["id"] in index]
        rs.append(ti.recall_at_k(rows, X, q, "cosine", D, K, mask))
    return float(np.mean(rs))


def main():
    tmp = tempfile.mkdtemp(prefix="index_ann_")
    ck = ti.make_checkpoint(os.path.join(tmp, "a.safetensors"), 1)
    data = os.path.join(tmp, "data")
    args = ["--model", "tiny=" + ck, "--data", data]
    t0 = time.monotonic()
    X = clustered(N)
    ids = [f"i{i:06d}" for i in range(N)]
    Q = clustered(NQ)
    server, port = ts.start(args)

    # Refusals.
    for bad, what in [({"kind": "ivf"}, "kind"), ({"kind": "hnsw", "width": D + 1}, "width > collection"),
                      ({"kind": "hnsw", "m": 1}, "m"), ({"kind": "hnsw", "colour": 1}, "unknown member"),
                      ("hnsw", "not an object")]:
        st, resp = ti.api(port, "POST", "/v1/collections", {"name": "bad", "width": D, "ann": bad})
        check(st == 400 and ti.error_message(resp), f"ann {what}: 400 with a message ({st} {ti.short(resp, 120)})")
    st, resp = ti.api(port, "POST", "/v1/collections",
                      {"name": "bad", "level": "patch", "ann": {"kind": "hnsw"}})
    check(st == 400 and "CLS" in (ti.error_message(resp) or ""), f"ann on a patch collection: 400 ({st})")

    # int8 mirror: the graph's repair must tell its rows' decoded prefixes from other rows'.
    st, c = ti.api(port, "POST", "/v1/collections",
                   {"name": "a", "width": D, "mirror": "int8", "ann": {"kind": "hnsw", "width": AW, "m": 12}})
    a = c.get("ann") or {}
    check(st == 201 and a.get("ready") and a.get("width") == AW and a.get("m") == 12
          and a.get("ef_construction") == 200, f"created with ann: {st} {ti.short(a)}")
    insert(port, "a", X, ids)
    a = info(port, "a").get("ann") or {}
    check(a.get("nodes") == N and a.get("tombstones") == 0, f"the graph holds every insert: {ti.short(a)}")

    resp = search(port, "a", Q)
    r = recall(resp, X, ids, Q)
    check(resp.get("search") == "hnsw" and r >= 0.95, f"ANN recall@10 {r:.4f} >= 0.95 (search {resp.get('search')})")
    ex = search(port, "a", Q, exact=True)
    check(ex.get("search") == "exact" and recall(ex, X, ids, Q) == 1.0, "\"exact\": true runs exact search")
    ef8 = search(port, "a", Q, ef=10, shortlist=10)
    print(f"     recall@10: default {r:.4f}, ef 10 shortlist 10 {recall(ef8, X, ids, Q):.4f}")

    # Filters: a selective one (1%) is exact, a broad one (50%) is applied in the walk.
    r_of = np.arange(N) % 100
    sel = search(port, "a", Q[:20], filter={"r": 7})
    problems = []
    for q, b in zip(Q[:20], sel["batch"]):
        problems += ti.compare_results(b["results"], X, ids, q, "cosine", D, K, mask=r_of == 7)
    sel_ex = search(port, "a", Q[:20], filter={"r": 7}, exact=True)
    same = [[h["id"] for h in b["results"]] for b in sel["batch"]] == \
        [[h["id"] for h in b["results"]] for b in sel_ex["batch"]]
    check(sel.get("search") == "exact" and not problems and same,
          f"selective filter: exact path, results equal numpy's and the server's exact search "
          f"({problems[:2]}, same ids {same})")
    broad = search(port, "a", Q, filter={"r": {"$lt": 50}})
    ok = all(int(h["id"][1:]) % 100 < 50 for b in broad["batch"] for h in b["results"])
    rb = recall(broad, X, ids, Q, mask=r_of < 50)
    check(broad.get("search") == "hnsw" and ok and rb >= 0.95,
          f"broad filter during the walk: only accepted rows, recall {rb:.4f}")

    # Deletes: never returned.
    gone = set(ids[:N:10])
    for i in list(gone)[:300]:
        ti.api(port, "DELETE", f"/v1/collections/a/items/{i}")
    gone = set(list(gone)[:300])
    back = search(port, "a", X[[ids.index(i) for i in list(gone)[:50]]])
    check(not any(h["id"] in gone for b in back["batch"] for h in b["results"]),
          "deleted items are never returned")
    a = info(port, "a").get("ann") or {}
    check(a.get("tombstones") == 300, f"300 tombstones: {ti.short(a)}")
    keep = np.array([i not in gone for i in ids])
    Xk = X[keep]
    idk = [i for i in ids if i not in gone]

    # A build job on an existing collection.
    st, c = ti.api(port, "POST", "/v1/collections", {"name": "b", "width": D})
    insert(port, "b", X, ids)
    st, job = ti.api(port, "POST", "/v1/collections/b/ann", {"kind": "hnsw", "width": AW})
    jid = (job.get("job") or {}).get("id")
    check(st == 202 and jid, f"POST .../ann: 202 with a job ({st} {ti.short(job)})")
    status = None
    for _ in range(600):
        st, j = ti.api(port, "GET", f"/v1/jobs/{jid}")
        status = j.get("status")
        if status != "running":
            break
        time.sleep(0.1)
    check(status == "succeeded" and j.get("done") == N, f"the build job succeeded: {ti.short(j)}")
    resp = search(port, "b", Q)
    rb2 = recall(resp, X, ids, Q)
    check(resp.get("search") == "hnsw" and rb2 >= 0.95, f"built by a job: recall {rb2:.4f}")
    st, _ = ti.api(port, "DELETE", "/v1/collections/b/ann")
    c = info(port, "b")
    check(st == 200 and c.get("ann") is None and search(port, "b", Q[:2]).get("search") == "exact",
          "DELETE .../ann removes it; searches run exact")
    st, _ = ti.api(port, "DELETE", "/v1/collections/b/ann")
    check(st == 404, f"DELETE again: 404 ({st})")

    # SIGKILL during inserts: acknowledged items served, graph repaired, recall unchanged.
    more = clustered(3000)
    more_ids = [f"m{i:06d}" for i in range(len(more))]
    acked = []

    def writer():
        for lo in range(0, len(more), 200):
            try:
                insert(port, "a", more[lo:lo + 200], more_ids[lo:lo + 200], batch=200)
                acked.extend(range(lo, lo + 200))
            except Exception:
                return
    t = threading.Thread(target=writer)
    t.start()
    time.sleep(1.0)
    server.kill()
    server.wait()
    t.join()
    server, port = ts.start(args)
    a = wait_ready(port, "a")
    c = info(port, "a")
    check(a.get("ready") and a.get("nodes", 0) - a.get("tombstones", 0) == c.get("count") == c.get("indexed"),
          f"after SIGKILL during inserts ({len(acked)} of {len(more)} acknowledged): graph live nodes "
          f"== count: {ti.short(a)} count {c.get('count')}")
    bad = ti.not_found_first(port, "a", [more_ids[i] for i in acked])
    check(not bad, f"every acknowledged item is found first by its own vector {bad[:3]}")
    st, c = ti.api(port, "GET", "/v1/collections/a")
    Xall = np.concatenate([Xk, more[acked]]) if acked else Xk
    idall = idk + [more_ids[i] for i in acked]
    # Items in flight at the kill may be there too: take the server's count as truth.
    if c["count"] != len(idall):
        extra = [more_ids[i] for i in range(len(more)) if i not in set(acked)
                 and ti.api(port, "GET", f"/v1/collections/a/items/{more_ids[i]}")[0] == 200]
        Xall = np.concatenate([Xall, more[[more_ids.index(e) for e in extra]]])
        idall = idall + extra
    resp = search(port, "a", Q)
    r2 = recall(resp, Xall, idall, Q)
    check(resp.get("search") == "hnsw" and r2 >= 0.95, f"recall after SIGKILL + repair {r2:.4f}")

    # SIGKILL during a build job: the restart builds the graph again.
    st, job = ti.api(port, "POST", "/v1/collections/b/ann", {"kind": "hnsw", "width": AW})
    check(st == 202, f"second build job: {st}")
    time.sleep(0.3)
    server.kill()
    server.wait()
    server, port = ts.start(args)
    a = wait_ready(port, "b")
    resp = search(port, "b", Q)
    r3 = recall(resp, X, ids, Q)
    check(a.get("ready") and a.get("nodes") == N and resp.get("search") == "hnsw" and r3 >= 0.95,
          f"after SIGKILL during a build: rebuilt, recall {r3:.4f} ({ti.short(a)})")
    # The job is kept in SQLite: a build cut short is resumed (attempt 2) and
    # follows the rebuild to its end; one that ended before the kill stays ended.
    jid2 = (job.get("job") or {}).get("id")
    j = {}
    for _ in range(600):
        st, j = ti.api(port, "GET", f"/v1/jobs/{jid2}")
        if j.get("status") != "running":
            break
        time.sleep(0.1)
    check(st == 200 and j.get("status") == "succeeded" and j.get("attempts") in (1, 2)
          and j.get("done") == j.get("total"),
          f"the build job after the restart: {ti.short(j)}")

    # Clean shutdown saves; the next start loads the file as is.
    rc = stop_server(server)
    check(rc == 0, f"SIGTERM exit 0 ({rc})")
    files = sorted(os.listdir(os.path.join(data, "ann")))
    check(len(files) == 2 and all(f.endswith(".hnsw") for f in files), f"graph files: {files}")
    server, port = ts.start(args)
    a = wait_ready(port, "a")
    saved_tombstones = a.get("tombstones", -1)
    gen_ok = a.get("saved_generation") is not None
    resp = search(port, "a", Q)
    check(a.get("ready") and gen_ok and recall(resp, Xall, idall, Q) == r2,
          f"loaded as saved: same recall ({ti.short(a)})")
    # Writes after the save, then SIGKILL: the stale file is repaired at the next start.
    extra = clustered(500)
    extra_ids = [f"x{i:06d}" for i in range(len(extra))]
    insert(port, "a", extra, extra_ids, batch=250)
    dead = set(idall[:100])
    for i in idall[:100]:
        ti.api(port, "DELETE", f"/v1/collections/a/items/{i}")
    Xdead = Xall[:20]
    Xall = np.concatenate([Xall[100:], extra])
    idall = idall[100:] + extra_ids
    server.kill()
    server.wait()
    server, port = ts.start(args)
    a = wait_ready(port, "a")
    c = info(port, "a")
    resp = search(port, "a", Q)
    r4 = recall(resp, Xall, idall, Q)
    back = search(port, "a", Xdead)  # deleted rows' own vectors
    # Exactly the 100 deletes are new tombstones: no unchanged node was taken for stale.
    check(a.get("ready") and a.get("nodes", 0) - a.get("tombstones", 0) == c.get("count") == len(idall)
          and a.get("tombstones", 0) == saved_tombstones + 100 and r4 >= 0.95
          and not any(h["id"] in dead for b in back["batch"] for h in b["results"]),
          f"a stale file is repaired (deletes tombstoned, inserts added): recall {r4:.4f} ({ti.short(a)})")
    stop_server(server)
    # Rows another program wrote into SQLite leave the generation as it was:
    # the node count tells, and the graph takes them in.
    outside = clustered(40)
    outside_ids = [f"o{i:03d}" for i in range(len(outside))]
    db = sqlite3.connect(os.path.join(data, "index.sqlite3"))
    cid = db.execute("SELECT id FROM collections WHERE name = 'a'").fetchone()[0]
    db.executemany("INSERT INTO items (collection_id, external_id, vector) VALUES (?, ?, ?)",
                   [(cid, i, v.astype("<f4").tobytes()) for i, v in zip(outside_ids, outside)])
    db.commit()
    db.close()
    Xall = np.concatenate([Xall, outside])
    idall = idall + outside_ids
    server, port = ts.start(args)
    a = wait_ready(port, "a")
    own = search(port, "a", outside)
    found = sum(b["results"][0]["id"] == i for b, i in zip(own["batch"], outside_ids))
    check(a.get("nodes", 0) - a.get("tombstones", 0) == info(port, "a").get("count") == len(idall)
          and found == len(outside) and own.get("search") == "hnsw",
          f"rows written by another program join the graph: {found} of {len(outside)} find "
          f"themselves ({ti.short(a)})")
    stop_server(server)
    # A corrupt file is rebuilt.
    path = os.path.join(data, "ann", files[0])
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xff" * 64)
    server, port = ts.start(args)
    a, b = wait_ready(port, "a"), wait_ready(port, "b")
    ra = recall(search(port, "a", Q), Xall, idall, Q)
    rb = recall(search(port, "b", Q), X, ids, Q)
    check(a.get("ready") and b.get("ready") and ra >= 0.95 and rb >= 0.95,
          f"a corrupt file is rebuilt: recall {ra:.4f} / {rb:.4f}")
    rc = stop_server(server)
    print(f"     {time.monotonic() - t0:.1f} s")
    if not check.failed:
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
