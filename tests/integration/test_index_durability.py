"""Durability of the vector index under kill -9: two clients insert batches in a
loop while the server is SIGKILLed at random moments and restarted on the same
--data, 6 times. Afterwards every acknowledged item is present (GET gives the
vector sent; search by id finds it first with score ~1), no batch is partly
visible (ids name their batch: a batch is all present or all absent, through
the server and in SQLite), PRAGMA integrity_check is ok, and the mirror matches
SQLite (count == indexed; the ids in SQLite are the ids the server finds)."""
import http.client
import json
import os
import shutil
import random
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402
import test_index as ti  # noqa: E402
from harness import Checks, stop_server  # noqa: E402

W = 16
KILLS = 6
COLL = "dur"

check = Checks()


def batch_ids(b, n):
    return [f"b{b:06d}-{j:03d}" for j in range(n)]


class Log:
    """What the clients know: acknowledged batches (with their vectors) and
    batches whose fate is unknown (in flight when the server died)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.next_batch = 0
        self.acked = {}     # batch -> vectors [n, W]
        self.unknown = {}   # batch -> n
        self.errors = []    # unexpected answers

    def new_batch(self):
        with self.lock:
            self.next_batch += 1
            return self.next_batch


def inserter(port, log, rng, stop):
    while not stop.is_set():
        b = log.new_batch()
        n = int(rng.integers(1, 40))
        vecs = rng.standard_normal((n, W)).astype(np.float32)
        ids = batch_ids(b, n)
        body = {"items": [{"id": i, "vector": v.tolist(), "metadata": {"batch": b, "j": j}}
                          for j, (i, v) in enumerate(zip(ids, vecs))]}
        try:
            st, resp = ti.api(port, "POST", f"/v1/collections/{COLL}/items", body, timeout=30)
        except (OSError, http.client.HTTPException):
            with log.lock:
                log.unknown[b] = n
            return  # the server is gone
        with log.lock:
            if st == 200 and resp.get("ids") == ids:
                log.acked[b] = vecs
            else:
                log.unknown[b] = n
                log.errors.append(f"batch {b}: {st} {ti.short(resp, 200)}")


def main():
    tmp = tempfile.mkdtemp(prefix="index_dur_")
    ck = ti.make_checkpoint(os.path.join(tmp, "a.safetensors"), 1)
    data = os.path.join(tmp, "data")
    args = ["--model", "tiny=" + ck, "--data", data]
    rnd = random.Random(20240601)
    log = Log()

    server, port = ts.start(args)
    st, body = ti.api(port, "POST", "/v1/collections", {"name": COLL, "width": W, "metric": "cosine"})
    check(st == 201, f"collection created: {st}")
    # A collection created just before a kill must survive it too.
    server.kill()
    server.wait()
    t_start = time.monotonic()
    round_counts = []
    for r in range(KILLS):
        server, port = ts.start(args)
        st, c = ti.api(port, "GET", f"/v1/collections/{COLL}")
        if st != 200 or c.get("count") != c.get("indexed"):
            log.errors.append(f"after restart {r}: {st} {ti.short(c)}")
        round_counts.append(c.get("count"))
        stop = threading.Event()
        threads = [threading.Thread(target=inserter, args=(port, log, np.random.default_rng(1000 * r + t), stop))
                   for t in range(2)]
        for t in threads:
            t.start()
        time.sleep(rnd.uniform(0.05, 1.0))  # the random moment of the kill (not a synchronisation)
        server.kill()
        server.wait()
        stop.set()
        for t in threads:
            t.join()
    n_acked = sum(len(v) for v in log.acked.values())
    print(f"     {KILLS} kills in {time.monotonic() - t_start:.1f} s; counts after each restart {round_counts}; "
          f"{len(log.acked)} batches ({n_acked} items) acknowledged, {len(log.unknown)} in flight at a kill")
    check(len(log.acked) >= 3 * KILLS and not log.errors,
          f"{KILLS} SIGKILLs while two clients insert; no unexpected answer"
          + "".join("\n     " + e for e in log.errors[:5]))

    server, port = ts.start(args)
    try:
        found = ti.guarded(check, "verify through the server", verify_through_server, port, log) or set()
    finally:
        rc = stop_server(server)
    check(rc == 0, f"final server: SIGTERM exit 0 (rc {rc})")
    ti.guarded(check, "verify SQLite", verify_sqlite, data, log, found)
    if not check.failed:  # kept for a look when something failed
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


def verify_through_server(port, log):
    st, c = ti.api(port, "GET", f"/v1/collections/{COLL}")
    check(st == 200 and c["count"] == c["indexed"], f"after the last restart: count {c.get('count')} == indexed "
          f"{c.get('indexed')}")
    # Every acknowledged item: GET gives the vector sent.
    acked = [(i, v) for b, vecs in sorted(log.acked.items()) for i, v in zip(batch_ids(b, len(vecs)), vecs)]

    def get(iv):
        st, item = ti.api(port, "GET", f"/v1/collections/{COLL}/items/{iv[0]}")
        if st != 200:
            return f"{iv[0]}: GET {st}"
        if not np.array_equal(np.asarray(item["vector"], np.float32), iv[1]):
            return f"{iv[0]}: vector differs"
        return None

    with ThreadPoolExecutor(4) as ex:
        bad = [p for p in ex.map(get, acked) if p]
    check(not bad, f"all {len(acked)} acknowledged items: GET 200 with the vector sent"
          + "".join("\n     " + p for p in bad[:5]))
    # ... and search by id finds each first with score ~1 (batch form, 1024 a call).
    bad = ti.not_found_first(port, COLL, [i for i, _ in acked])
    check(not bad, "search by id finds every acknowledged item first, score ~1" + "".join("\n     " + p for p in bad[:5]))
    # The batches in flight at a kill: all or nothing.
    partial = []
    for b, n in sorted(log.unknown.items()):
        present = sum(ti.api(port, "GET", f"/v1/collections/{COLL}/items/{i}")[0] == 200 for i in batch_ids(b, n))
        if present not in (0, n):
            partial.append(f"batch {b}: {present} of {n}")
    check(not partial, f"{len(log.unknown)} batches in flight at a kill: each all present or all absent"
          + "".join("\n     " + p for p in partial[:5]))
    # Every id the server's mirror holds, through filtered searches over batch
    # ranges of at most 1000 items.
    sizes = {**{b: len(v) for b, v in log.acked.items()}, **log.unknown}
    found = set()
    q = [1.0] * W
    batches = sorted(sizes)
    i = 0
    while i < len(batches):
        j, n = i, 0
        while j < len(batches) and n + sizes[batches[j]] <= 1000:
            n += sizes[batches[j]]
            j += 1
        lo, hi = batches[i], batches[j - 1]
        st, resp = ti.api(port, "POST", f"/v1/collections/{COLL}/search",
                          {"vector": q, "k": 1000, "filter": {"batch": {"$gte": lo, "$lte": hi}}})
        if st == 200:
            found |= {r["id"] for r in resp["results"]}
        else:
            print(f"     filtered search failed: {st} {ti.short(resp)}")
            found.add("<error>")
        i = j
    st, c = ti.api(port, "GET", f"/v1/collections/{COLL}")
    check(len(found) == c["count"] == c["indexed"], f"ids found through the server: {len(found)}, count "
          f"{c['count']}, indexed {c['indexed']}")
    return found


def verify_sqlite(data, log, found):
    db = sqlite3.connect(os.path.join(data, "index.sqlite3"))
    try:
        res = db.execute("PRAGMA integrity_check").fetchall()
        check(res == [("ok",)], f"PRAGMA integrity_check: {res[:3]}")
        rows = db.execute("SELECT i.external_id, i.vector FROM items i JOIN collections c ON c.id = i.collection_id "
                          "WHERE c.name = ?", (COLL,)).fetchall()
    finally:
        db.close()
    in_db = {r[0]: r[1] for r in rows}
    check(set(in_db) == found, f"the ids in SQLite ({len(in_db)}) are the ids the server finds ({len(found)})"
          + ("" if set(in_db) == found else f": {sorted(set(in_db) ^ found)[:5]}"))
    missing, wrong = [], []
    for b, vecs in log.acked.items():
        for i, v in zip(batch_ids(b, len(vecs)), vecs):
            if i not in in_db:
                missing.append(i)
            elif not np.array_equal(np.frombuffer(in_db[i], "<f4"), v):
                wrong.append(i)
    check(not missing and not wrong, f"SQLite holds every acknowledged item with its vector "
          f"(missing {missing[:3]}, wrong {wrong[:3]})")
    per_batch = {}
    for i in in_db:
        per_batch[int(i[1:7])] = per_batch.get(int(i[1:7]), 0) + 1
    sizes = {**{b: len(v) for b, v in log.acked.items()}, **log.unknown}
    partial = [f"batch {b}: {n} of {sizes.get(b)}" for b, n in per_batch.items() if n != sizes.get(b)]
    check(not partial, f"no partial batch in SQLite ({len(per_batch)} batches stored)" + "".join("\n     " + p for p in partial[:5]))
    print(json.dumps({"acknowledged_items": sum(len(v) for v in log.acked.values()), "stored_items": len(in_db)}))


if __name__ == "__main__":
    sys.exit(main())
