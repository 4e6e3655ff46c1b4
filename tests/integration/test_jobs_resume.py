"""Jobs outlive restarts. A collection embedded under checkpoint A is
re-embedded under B; the server is SIGKILLed mid-job and started again: the
job runs again under the same id with attempts 2, succeeds, and the vectors
and fingerprint are those a re-embed that was never interrupted gives (B's
embeddings of the kept images). A finished job's record survives restarts. A
job cut short by SIGTERM resumes too; one whose collection was dropped while
the server was down is marked failed, naming the collection."""
import os
import shutil
import sqlite3
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402
import test_index as ti  # noqa: E402
import test_index_swap as tsw  # noqa: E402
from franca_client import FrancaClient  # noqa: E402
from harness import Checks, stop_server  # noqa: E402

COLL = "photos"
N = 600  # images
RATE = 150  # --reembed-rate: a re-embed of N images lasts 4 s on any CPU, long enough to cut short

check = Checks()


def start(models, data, ckpt):
    # One inference thread and small batches leave a core to the rest of CI.
    server, port = ts.start(["--model", "tiny=" + os.path.join(models, ckpt), "--data", data,
                             "--threads", "1", "--max-batch", "4", "--reembed-rate", str(RATE)])
    return server, port, FrancaClient(f"http://127.0.0.1:{port}")


def kill(server):
    server.kill()
    server.wait()


def wait_progress(client, jid, timeout=60):
    """Polls until the job's row holds some progress (its updated_at moves when
    the row is written, about once a second); returns that state."""
    first, t0 = client.job(jid), time.monotonic()
    while time.monotonic() - t0 < timeout:
        j = client.job(jid)
        if j.get("status") != "running" or (j.get("done", 0) > 0 and j["updated_at"] != first["updated_at"]):
            return j
        time.sleep(0.02)  # polling interval
    return j


def main():
    tmp = tempfile.mkdtemp(prefix="jobs_resume_")
    models, data = os.path.join(tmp, "models"), os.path.join(tmp, "data")
    os.makedirs(models)
    ti.make_checkpoint(os.path.join(models, "a.safetensors"), 1)
    ti.make_checkpoint(os.path.join(models, "b.safetensors"), 2)
    images = tsw.generated_pngs(N, seed=11)
    if not check(len(images) == N, f"{N} generated images (needs PIL)"):
        return check.summary()
    state = {}
    ti.guarded(check, "fill under A", fill, models, data, images, state)
    ti.guarded(check, "kill during a re-embed", killed_and_resumed, models, data, images, state)
    ti.guarded(check, "SIGTERM, then a dropped collection", dropped, models, data, state)
    if not check.failed:  # kept for a look when something failed
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


def fill(models, data, images, state):
    server, port, c = start(models, data, "a.safetensors")
    try:
        c.create_collection(COLL, store_images=True)
        for lo in range(0, N, 120):
            c.insert(COLL, images=images[lo:lo + 120], ids=[f"g{i}" for i in range(lo, min(N, lo + 120))])
        c.create_collection("small", store_images=True)
        c.insert("small", images=images[:4], ids=["s0", "s1", "s2", "s3"])
        j0 = c.wait_job(c.reembed("small")["id"], timeout=120)
        check(j0["status"] == "succeeded" and j0["attempts"] == 1 and j0["done"] == 4 and j0.get("updated_at"),
              f"a small re-embed succeeds with attempts 1: {ti.short(j0, 400)}")
        check(ti.documented("/v1/jobs/{id}", "GET", 200, j0), "job: answer documented")
        state["j0"] = j0
        state["fa"] = c.collection(COLL)["fingerprint"]
    finally:
        rc = stop_server(server)
    check(rc == 0, f"SIGTERM exit 0 (rc {rc})")


def killed_and_resumed(models, data, images, state):
    server, port, c = start(models, data, "b.safetensors")
    try:
        j0 = c.job(state["j0"]["id"])
        check(j0 == state["j0"], f"the finished job's record survived the restart: {ti.short(j0, 300)}")
        fb = c.model("tiny")["fingerprint"]
        job = c.reembed(COLL)
        jid = job["id"]
        check(job["attempts"] == 1 and job["total"] == N and job["from_fingerprint"] == state["fa"]
              and job["to_fingerprint"] == fb and job["model"] == "tiny",
              f"re-embed A -> B started: {ti.short(job, 400)}")
        before = wait_progress(c, jid)
        check(before["status"] == "running" and 0 < before["done"] < N,
              f"SIGKILL while it runs ({before['done']} of {N} done)")
    finally:
        kill(server)
    db = sqlite3.connect(os.path.join(data, "index.sqlite3"))
    row = db.execute("SELECT status, done, attempts FROM jobs WHERE id = ?", (jid,)).fetchone()
    db.close()
    check(row is not None and row[0] == "running" and 0 < row[1] <= before["done"] and row[2] == 1,
          f"its row after the kill: running, progress written ({row})")

    t0 = time.monotonic()
    server, port, c = start(models, data, "b.safetensors")
    try:
        again = c.job(jid)
        check(again["status"] == "running" and again["attempts"] == 2 and again["done"] < N
              and again["to_fingerprint"] == fb,
              f"after the restart: the same job runs again, attempts 2 ({ti.short(again, 300)})")
        st, resp = ti.api(port, "POST", f"/v1/collections/{COLL}/items",
                          {"items": [{"id": "during", "vector": [0.0] * 63 + [1.0]}]})
        check(st == 409, f"writes wait for the resumed job: {st}")
        done = c.wait_job(jid, timeout=180)
        took = time.monotonic() - t0
        check(done["status"] == "succeeded" and done["attempts"] == 2 and done["done"] == done["total"] == N
              and done.get("finished_at"),
              f"the resumed job succeeded in {took:.1f} s: {ti.short(done, 400)}")
        # The last page (64 images) may go out before the pace would allow.
        check(took >= (N - 64) / RATE, f"--reembed-rate {RATE} kept the pace: {N} images in {took:.1f} s")
        coll = c.collection(COLL)
        check(coll["fingerprint"] == fb and coll["count"] == coll["indexed"] == N and "job" not in coll,
              f"the collection: fingerprint B, {coll['count']} items, no job")
        # The vectors: B's embeddings of the kept images, as an uninterrupted re-embed gives.
        picks = sorted(set(np.linspace(0, N - 1, 24).astype(int).tolist()))
        ref = c.embed([images[i] for i in picks], width=64)
        got = np.array([c.item(COLL, f"g{i}")["vector"] for i in picks], np.float32)
        dev = float(np.abs(got / np.linalg.norm(got, axis=1, keepdims=True) - ref).max())
        check(dev < 1e-4, f"{len(picks)} items' vectors are B's embeddings (max diff {dev:.1e})")
        res = c.search(COLL, image=images[7], k=1)
        check(res[0]["id"] == "g7" and abs(res[0]["score"] - 1) < 1e-4, "image search finds the image itself")
        listed = [x["id"] for x in c.jobs()]
        check(listed == [jid, state["j0"]["id"]], f"GET /v1/jobs: both jobs, newest first ({listed})")
        state["jid"] = jid
    finally:
        rc = stop_server(server)
    check(rc == 0, f"SIGTERM exit 0 (rc {rc})")


def dropped(models, data, state):
    # A job cut short by SIGTERM stays running in its row and resumes.
    server, port, c = start(models, data, "b.safetensors")
    try:
        jid = c.reembed(COLL)["id"]
        before = wait_progress(c, jid)
        check(before["status"] == "running", f"a second re-embed runs ({before['done']} of {N})")
    finally:
        rc = stop_server(server)
    check(rc == 0, f"SIGTERM during the job: exit 0 (rc {rc})")
    server, port, c = start(models, data, "b.safetensors")
    try:
        j = c.job(jid)
        check(j["status"] == "running" and j["attempts"] == 2,
              f"after SIGTERM and a restart it runs again, attempts 2 ({ti.short(j, 300)})")
        wait_progress(c, jid)
    finally:
        kill(server)
    # While the server is down the collection goes (as a restore or another tool might).
    db = sqlite3.connect(os.path.join(data, "index.sqlite3"))
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("DELETE FROM collections WHERE name = ?", (COLL,))
    db.commit()
    db.close()
    server, port, c = start(models, data, "b.safetensors")
    try:
        j = c.job(jid)
        err = j.get("error") or ""
        check(j["status"] == "failed" and j["attempts"] == 3 and COLL in err and "no longer exists" in err
              and j.get("finished_at"), f"its collection was dropped: failed, {err!r}")
        check(ti.documented("/v1/jobs/{id}", "GET", 200, j), "failed job: answer documented")
        old = c.job(state["jid"])
        check(old["status"] == "succeeded" and old["attempts"] == 2, "the earlier jobs' records are kept")
        check(ti.healthy(port), "healthy at the end")
    finally:
        rc = stop_server(server)
    check(rc == 0, f"SIGTERM exit 0 (rc {rc})")


if __name__ == "__main__":
    sys.exit(main())
