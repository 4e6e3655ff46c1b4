"""Checkpoint-bound collections: a collection that keeps its source images is
filled with images under checkpoint A; after a hot swap of its model to
checkpoint B, image search and image insert answer 409 naming both
fingerprints while vector search and vector insert still work; reembed runs as
a job (progress at /v1/jobs/{id}; writes and a second reembed answer 409 while
it runs; the old vectors serve meanwhile); once it succeeds the collection
carries B's fingerprint, its vectors are B's embeddings, and image search and
insert work again (each image finds itself first)."""
import io
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402
import test_index as ti  # noqa: E402
from franca_client import FrancaClient, FrancaError, _image_data_uri  # noqa: E402
from harness import Checks, stop_server  # noqa: E402

TOKEN = "index-swap-token-0123"
COLL = "photos"
N_EXTRA = 240   # small generated images that make the reembed job last a moment

check = Checks()


def generated_pngs(n, seed=5):
    """n distinct small PNGs (random blocks), made with PIL when present."""
    try:
        from PIL import Image
    except ImportError:
        return []
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((48, 48), Image.NEAREST)
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def names_both(msg, fa, fb):
    return isinstance(msg, str) and fa[:12] in msg and fb[:12] in msg


def main():
    tmp = tempfile.mkdtemp(prefix="index_swap_")
    models = os.path.join(tmp, "models")
    os.makedirs(models)
    ti.make_checkpoint(os.path.join(models, "a.safetensors"), 1)
    ti.make_checkpoint(os.path.join(models, "b.safetensors"), 2)
    token_file = os.path.join(tmp, "token")
    open(token_file, "w").write(TOKEN + "\n")
    args = ["--model", "tiny=" + os.path.join(models, "a.safetensors"), "--models-dir", models,
            "--admin-token-file", token_file, "--data", os.path.join(tmp, "data"), "--max-body-mb", "16"]
    server, port = ts.start(args)
    try:
        ti.guarded(check, "swap and reembed", run, port, FrancaClient(f"http://127.0.0.1:{port}"))
    finally:
        rc = stop_server(server)
    check(rc == 0, f"SIGTERM exit 0 (rc {rc})")
    # The new fingerprint and vectors survive a restart.
    server, port = ts.start(args[:1] + ["tiny=" + os.path.join(models, "b.safetensors")] + args[2:])
    try:
        ti.guarded(check, "restart with B", after_restart, port)
    finally:
        stop_server(server)
    if not check.failed:  # kept for a look when something failed
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


def after_restart(port):
    c = FrancaClient(f"http://127.0.0.1:{port}")
    coll = c.collection(COLL)
    # img0 and "again" hold the same image: either may come first (equal scores up to rounding).
    res = c.search(COLL, image=IMAGES[0], k=1)
    check(coll["fingerprint"] == FP["b"] and coll["count"] == coll["indexed"]
          and res[0]["id"] in ("img0", "again") and abs(res[0]["score"] - 1) < 1e-4,
          f"restart with B: fingerprint, counts and image search kept ({ti.short(coll, 200)})")


IMAGES = [os.path.join(ti.PHOTOS, n) for n in ("chelsea.png", "coffee.png", "camera.png", "hubble_deep_field.jpg",
                                                 "astronaut.png", "rocket.jpg")]
FP = {}


def run(port, client):
    fa = FP["a"] = client.model("tiny")["fingerprint"]
    coll = client.create_collection(COLL, store_images=True)
    check(coll["fingerprint"] == fa and coll["store_images"] is True, "collection bound to checkpoint A")
    client.create_collection("vecs")
    ids = client.insert(COLL, images=IMAGES, ids=[f"img{i}" for i in range(len(IMAGES))],
                        metadata=[{"i": i} for i in range(len(IMAGES))])
    extra = generated_pngs(N_EXTRA)
    for lo in range(0, len(extra), 60):
        client.insert(COLL, images=extra[lo:lo + 60], ids=[f"gen{i}" for i in range(lo, min(len(extra), lo + 60))])
    n_items = len(IMAGES) + len(extra)
    item = client.item(COLL, "img0")
    check(len(ids) == len(IMAGES) and item["has_image"] is True and client.collection(COLL)["count"] == n_items,
          f"{n_items} images inserted, source images kept (has_image {item['has_image']})")
    old = {f"img{i}": np.asarray(client.item(COLL, f"img{i}")["vector"], np.float32) for i in range(len(IMAGES))}
    res = client.search(COLL, image=IMAGES[1], k=3)
    check(res[0]["id"] == "img1" and abs(res[0]["score"] - 1) < 1e-4, "before the swap: an image finds itself")
    client.insert("vecs", vectors=np.stack(list(old.values())), ids=list(old))

    swapped = client.swap("tiny", "b.safetensors", token=TOKEN)
    fb = FP["b"] = swapped["fingerprint"]
    check(fb != fa and client.model("tiny")["fingerprint"] == fb, f"hot swap to B: {fa[:12]} -> {fb[:12]}")
    check(client.collection(COLL)["fingerprint"] == fa, "the collection keeps A's fingerprint after the swap")

    png = _image_data_uri(IMAGES[2])
    for what, path, body in (
            ("image search", f"/v1/collections/{COLL}/search", {"image": png, "k": 3}),
            ("batch image search", f"/v1/collections/{COLL}/search", {"queries": [{"vector": old["img0"].tolist()},
                                                                                  {"image": png}], "k": 3}),
            ("image insert", f"/v1/collections/{COLL}/items", {"items": [{"id": "new", "image": png}]}),
            ("image insert into a collection without images", "/v1/collections/vecs/items",
             {"items": [{"id": "new", "image": png}]}),
            ("image search on a collection without images", "/v1/collections/vecs/search", {"image": png})):
        st, resp = ti.api(port, "POST", path, body)
        msg = ti.error_message(resp)
        check(st == 409 and names_both(msg, fa, fb), f"after the swap, {what}: {st} naming both fingerprints ({msg})")
    st, _ = ti.api(port, "GET", f"/v1/collections/{COLL}/items/new")
    check(st == 404, "the refused image insert stored nothing")
    # Vector calls keep working, on the old vectors.
    res = client.search(COLL, vector=old["img3"], k=3)
    check(res[0]["id"] == "img3" and abs(res[0]["score"] - 1) < 1e-5, "after the swap: vector search 200")
    res = client.search(COLL, id="img4", k=3)
    check(res[0]["id"] == "img4", "after the swap: search by id 200")
    got = client.insert("vecs", vectors=[np.ones(64, np.float32)], ids=["v-after"])
    check(got == ["v-after"], "after the swap: vector insert 200")
    st, resp = ti.api(port, "POST", "/v1/collections/vecs/reembed", b"")
    check(st == 400 and ti.error_message(resp), f"reembed of a collection without images: {st}")

    # Reembed.
    st, resp = ti.api(port, "POST", f"/v1/collections/{COLL}/reembed", b"")
    job = resp.get("job", {}) if isinstance(resp, dict) else {}
    check(st == 202 and job.get("id") and job.get("type") == "reembed" and job.get("collection") == COLL
          and job.get("from_fingerprint") == fa and job.get("to_fingerprint") == fb and job.get("total") == n_items
          and job.get("status") in ("running", "succeeded"), f"reembed: 202 with the job {ti.short(resp, 400)}")
    check(ti.documented("/v1/collections/{name}/reembed", "POST", 202, resp), "reembed: answer documented")
    jid = job.get("id")
    # While it runs: a second reembed and any write answer 409; old vectors serve.
    during = {
        "second reembed": ti.api(port, "POST", f"/v1/collections/{COLL}/reembed", b""),
        "vector insert": ti.api(port, "POST", f"/v1/collections/{COLL}/items",
                                {"items": [{"id": "during", "vector": old["img0"].tolist()}]}),
        "delete item": ti.api(port, "DELETE", f"/v1/collections/{COLL}/items/gen0"),
    }
    serving = ti.api(port, "POST", f"/v1/collections/{COLL}/search", {"vector": old["img5"].tolist(), "k": 1})
    coll_during = client.collection(COLL)
    state = client.job(jid) if jid else {}
    if state.get("status") == "running":
        for what, (st, resp) in during.items():
            check(st == 409 and ti.error_message(resp), f"while the job runs, {what}: {st} ({ti.error_message(resp)})")
        check(serving[0] == 200 and serving[1]["results"][0]["id"] == "img5"
              and abs(serving[1]["results"][0]["score"] - 1) < 1e-5, "while the job runs, the old vectors serve")
        check(coll_during.get("job") == jid, f"while the job runs, the collection names it (job {coll_during.get('job')})")
    else:
        print(f"     the job finished before the checks while running could be made ({state.get('status')})")
    n_items += (during["vector insert"][0] == 200) - (during["delete item"][0] == 200)
    # Poll the job to its end: progress only grows.
    seen, t0 = [], time.monotonic()
    while jid and time.monotonic() - t0 < 150:
        j = client.job(jid)
        seen.append(j.get("done"))
        if j.get("status") != "running":
            break
        time.sleep(0.1)  # polling interval
    check(j.get("status") == "succeeded" and j.get("done") == j.get("total") == job.get("total") and not j.get("error")
          and j.get("finished_at") and seen == sorted(seen) and j.get("to_fingerprint") == fb,
          f"job succeeded in {time.monotonic() - t0:.1f} s: {ti.short(j, 400)} (progress seen {seen[:3]}..{seen[-3:]})")
    check(ti.documented("/v1/jobs/{id}", "GET", 200, j), "job: answer documented")
    jobs = client.jobs()
    check([x.get("id") for x in jobs] == [jid], f"GET /v1/jobs lists it, and only it (the refused second reembed "
          f"made no job): {ti.short(jobs, 600)}")

    coll = client.collection(COLL)
    check(coll["fingerprint"] == fb and coll["count"] == coll["indexed"] == n_items and "job" not in coll,
          f"after the job: fingerprint B, count {coll['count']}, indexed {coll['indexed']}, no job")
    # The vectors are B's embeddings of the kept images.
    ref = client.embed(IMAGES, width=64)
    new = np.array([client.item(COLL, f"img{i}")["vector"] for i in range(len(IMAGES))], np.float32)
    dev = float(np.abs(new / np.linalg.norm(new, axis=1, keepdims=True) - ref).max())
    moved = float(np.abs(new - np.stack([old[f"img{i}"] for i in range(len(IMAGES))])).max())
    check(dev < 1e-4 and moved > 1e-3, f"the vectors are B's embeddings (max diff {dev:.1e}; moved by {moved:.2f})")
    probs = []
    for i, p in enumerate(IMAGES):
        res = client.search(COLL, image=p, k=3, include=["metadata"])
        if res[0]["id"] != f"img{i}" or abs(res[0]["score"] - 1) > 1e-4 or res[0].get("metadata") != {"i": i}:
            probs.append(f"img{i}: {res[0]}")
    check(not probs, "image search works again: each image finds itself first, metadata kept"
          + "".join("\n     " + p for p in probs))
    got = client.insert(COLL, images=[IMAGES[0]], ids=["again"])
    res = client.search(COLL, id="again", k=2)
    check(got == ["again"] and {r["id"] for r in res} == {"again", "img0"},
          "image insert works again (the same image next to its reembedded twin)")
    try:
        again = client.wait_job(client.reembed(COLL)["id"], timeout=150)
        check(again["status"] == "succeeded" and client.collection(COLL)["fingerprint"] == fb,
              "a reembed without a swap succeeds and keeps the fingerprint")
    except FrancaError as e:
        check(False, f"a reembed without a swap: {e}")
    check(ti.healthy(port), "healthy at the end")


if __name__ == "__main__":
    sys.exit(main())
