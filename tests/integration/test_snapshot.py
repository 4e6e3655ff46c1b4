"""Index snapshots and restore: POST /admin/snapshot while a client keeps
inserting, then franca-server --restore FILE. The snapshot holds exactly a
prefix of the acknowledged inserts (every insert answered before the snapshot
was asked for, no part of any insert: each is one transaction), it is a
complete SQLite database under --data/snapshots/, and a server restored from
it answers searches as numpy does on that prefix; the database it replaced is
kept beside it. Bad snapshot files are refused at startup with a message and
leave the data directory as it was; the route needs the admin token."""
import glob
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402
from harness import Checks, stop_server  # noqa: E402
from test_index import api, make_checkpoint  # noqa: E402

check = Checks()
TOKEN = "snapshot-admin-token-42"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
W = 16
BATCH = 20


def vectors(first, n):
    rng = np.random.default_rng(first)
    return rng.standard_normal((n, W)).astype(np.float32)


def insert(port, first, n):
    v = vectors(first, n)
    items = [{"id": f"i{first + j:06d}", "vector": v[j].tolist()} for j in range(n)]
    st, body = api(port, "POST", "/v1/collections/v/items", {"items": items})
    return st


def stored_ids(db_path):
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return sorted(r[0] for r in con.execute("SELECT external_id FROM items"))
    finally:
        con.close()


def search_matches_numpy(port, n_items, what):
    data = np.concatenate([vectors(b, BATCH) for b in range(0, n_items, BATCH)])
    norm = data / np.linalg.norm(data, axis=1, keepdims=True)
    q = vectors(999_999, 1)[0]
    st, body = api(port, "POST", "/v1/collections/v/search", {"vector": q.tolist(), "k": 5})
    want = [f"i{j:06d}" for j in np.argsort(-(norm @ (q / np.linalg.norm(q))))[:5]]
    got = [h["id"] for h in body.get("results", [])] if st == 200 else None
    check(got == want, f"{what}: search equals numpy ({got} vs {want})")


def start(ckpt, data, token_file, *extra):
    return ts.start(["--model", f"m={ckpt}", "--data", data, "--admin-token-file", token_file,
                     *extra])


def main():
    tmp = tempfile.mkdtemp(prefix="franca-snapshot-")
    data = os.path.join(tmp, "data")
    token_file = os.path.join(tmp, "token")
    open(token_file, "w").write(TOKEN + "\n")
    proc = None
    try:
        ckpt = make_checkpoint(os.path.join(tmp, "m.safetensors"), seed=3)
        proc, port = start(ckpt, data, token_file)
        st, _ = api(port, "POST", "/v1/collections", {"name": "v", "width": W})
        check(st == 201, f"collection created ({st})")
        for b in range(0, 10 * BATCH, BATCH):
            insert(port, b, BATCH)

        # A writer keeps inserting batches while the snapshot is taken.
        acked, stop = [], threading.Event()

        def writer():
            b = 10 * BATCH
            while not stop.is_set():
                if insert(port, b, BATCH) == 200:
                    acked.append((b, time.time()))
                b += BATCH
        t = threading.Thread(target=writer)
        t.start()
        time.sleep(0.5)
        asked = time.time()
        st, snap = api(port, "POST", "/admin/snapshot", {}, headers=ADMIN)
        time.sleep(0.3)
        stop.set()
        t.join()
        check(st == 201 and snap.get("bytes", 0) > 0 and snap.get("path", "").startswith(
            os.path.join(data, "snapshots") + "/"), f"snapshot taken while inserting: {st} {snap}")
        path = snap.get("path", "")
        check(os.path.isfile(path) and not glob.glob(path + ".partial"), "the file is complete, "
              "no partial file left")
        ids = stored_ids(path)
        before = {b for b, when in acked if when < asked}
        n = len(ids)
        check(n % BATCH == 0 and ids == [f"i{j:06d}" for j in range(n)],
              f"the snapshot holds whole inserts, a prefix in commit order ({n} items)")
        check(n >= 10 * BATCH + BATCH * len(before),
              f"every insert acknowledged before the snapshot is in it ({len(before)} during)")
        check(len(acked) > 0 and n < 10 * BATCH + BATCH * (len(acked) + 1),
              f"inserts after it are not ({len(acked)} acknowledged in all)")
        st, body = api(port, "GET", "/v1/collections/v")
        live = body.get("count")
        check(st == 200 and live > n, f"the server kept serving and inserting ({live} > {n})")

        st, _ = api(port, "POST", "/admin/snapshot", {})
        check(st == 401, f"no token: 401 ({st})")
        st, _ = api(port, "POST", "/admin/snapshot", {}, headers={"Authorization": "Bearer wrong-token-0"})
        check(st == 403, f"wrong token: 403 ({st})")
        check(stop_server(proc) == 0, "the server stops cleanly")
        proc = None

        # Bad snapshot files: refused with a message, the data directory unchanged.
        junk = os.path.join(tmp, "junk.sqlite3")
        open(junk, "wb").write(b"not a database at all" * 100)
        empty = os.path.join(tmp, "empty.sqlite3")
        sqlite3.connect(empty).execute("CREATE TABLE t (x)").connection.commit()
        for bad, why in ((junk, "not an SQLite database"), (empty, "not a franca index"),
                         (os.path.join(tmp, "missing.sqlite3"), "cannot open")):
            p = ts.subprocess.run([ts.SERVER, "--port", "0", "--model", f"m={ckpt}", "--data", data,
                                   "--restore", bad], capture_output=True, text=True, timeout=120)
            check(p.returncode != 0 and why in p.stderr and bad in p.stderr,
                  f"--restore {os.path.basename(bad)} refused: {p.stderr.strip()[-160:]!r}")
        check(not glob.glob(os.path.join(data, "index.sqlite3.before-restore-*")),
              "a refused restore moved nothing")
        proc, port = start(ckpt, data, token_file)
        st, body = api(port, "GET", "/v1/collections/v")
        check(body.get("count") == live, f"the data directory is as it was ({body.get('count')})")
        stop_server(proc)
        proc = None

        # Restore: the snapshot's items exactly; the replaced database kept aside.
        proc, port = start(ckpt, data, token_file, "--restore", path)
        st, body = api(port, "GET", "/v1/collections/v")
        check(st == 200 and body.get("count") == n and body.get("indexed") == n,
              f"restored: {body.get('count')} items, as in the snapshot")
        search_matches_numpy(port, n, "restored")
        kept = glob.glob(os.path.join(data, "index.sqlite3.before-restore-*"))
        kept_db = [k for k in kept if not k.endswith("-wal")]
        check(len(kept_db) == 1 and len(stored_ids(kept_db[0])) == live,
              f"the replaced database is kept beside it with its {live} items")
        check(insert(port, 10**5, BATCH) == 200, "the restored index takes inserts")
        check(proc.poll() is None, "the server is still running")
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        check(False, "the test ran to the end")
    finally:
        if proc:
            stop_server(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
