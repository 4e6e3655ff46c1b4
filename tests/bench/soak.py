"""Soak: franca-server under steady load for a long time, with a hot swap every
minute and index writes alongside; counts every answer that is not the expected
one and follows the server's resident memory.

Load (a closed loop of --concurrency workers, one keep-alive connection each):
  - embeddings: POST /v1/embeddings, one photo, `dimensions` = the smallest trained width;
  - features:   POST /v1/features, multipart, two widths and patch tokens;
  - index:      a writer inserts a batch of vectors and an image into collection
                "soak", deletes what it inserted --keep batches ago (so the
                collection stays the same size), and searches it (exact and funnel).
Workers take the three kinds in turn (worker i starts at kind i mod 3).
Swaps: every --swap-every seconds, POST /admin/models/default alternately to a.safetensors
and b.safetensors in the models folder, two copies of one checkpoint: each swap is a
full load + warm-up + publish, and the fingerprint stays the same, so image inserts
stay valid (a different checkpoint would make them answer 409 until a reembed).
Memory: VmRSS of the server every 5 s; "after warm-up" is the first sample past
--warmup seconds (5 min: the first swaps free a model in one malloc arena while
the next one is loaded in another, and the heap settles over those cycles), "end"
the last one; the report gives both, their ratio, and RSS at each minute.

usage: /usr/bin/python3 tests/bench/soak.py [--minutes 30] [--concurrency 32]
       [--swap-every 60] [--warmup 300] [--build build] [--model CKPT] [--threads 2]
Exit status 0 when no request failed, every swap succeeded and end RSS is within
10 % of RSS after warm-up; 1 otherwise."""
import argparse
import base64
import http.client
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PHOTOS = "/usr/lib/python3/dist-packages/skimage/data"
PHOTO_NAMES = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")
READY = re.compile(r"listening on http://([^:\s]+):(\d+)")
TOKEN = "soak-admin-token-0123456789"


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok, self.bad, self.lat, self.errors = {}, {}, {}, []

    def record(self, kind, good, seconds, what=""):
        with self.lock:
            (self.ok if good else self.bad)[kind] = (self.ok if good else self.bad).get(kind, 0) + 1
            self.lat.setdefault(kind, []).append(seconds)
            if not good and len(self.errors) < 20:
                self.errors.append(f"{kind}: {what}")


class Conn:
    """One keep-alive connection; reconnects after a failure."""

    def __init__(self, port):
        self.port, self.c = port, None

    def call(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            try:
                if self.c is None:
                    self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                self.c.request(method, path, body=body, headers=headers or {})
                r = self.c.getresponse()
                return r.status, r.read()
            except (ConnectionError, http.client.HTTPException) as e:
                self.c = None  # the server may close an idle keep-alive connection: retry once
                if attempt:
                    return None, repr(e).encode()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def multipart(fields):
    boundary = uuid.uuid4().hex
    parts = []
    for name, (filename, ctype, data) in fields.items():
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disp}\r\nContent-Type: {ctype}\r\n\r\n".encode()
                     + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def worker(idx, port, stop, stats, photos, widths, dim, keep):
    conn, rng, n = Conn(port), random.Random(idx), 0
    small, mid = widths[0], widths[min(2, len(widths) - 1)]
    json_h = {"Content-Type": "application/json"}
    while not stop.is_set():
        kind = ("embeddings", "features", "index")[(idx + n) % 3]
        photo = photos[rng.randrange(len(photos))]
        t0 = time.monotonic()
        if kind == "embeddings":
            body = json.dumps({"input": photo["uri"], "dimensions": small}).encode()
            st, data = conn.call("POST", "/v1/embeddings", body, json_h)
            good = st == 200 and len(json.loads(data)["data"][0]["embedding"]) == small
        elif kind == "features":
            opts = json.dumps({"widths": [small, mid], "patch": True}).encode()
            body, ctype = multipart({"image": (photo["name"], photo["type"], photo["bytes"]),
                                     "options": (None, "application/json", opts)})
            st, data = conn.call("POST", "/v1/features", body, {"Content-Type": ctype})
            good = st == 200 and "data" in json.loads(data)
        else:
            ids = [f"w{idx}-{n}-{j}" for j in range(8)]
            items = [{"id": i, "vector": [rng.gauss(0, 1) for _ in range(dim)]} for i in ids]
            items.append({"id": f"w{idx}-{n}-img", "image": photo["b64"]})
            st, data = conn.call("POST", "/v1/collections/soak/items", json.dumps({"items": items}).encode(), json_h)
            good = st in (200, 201)
            if good and n >= 3 * keep:  # delete the batch written `keep` index rounds ago
                old = n - 3 * keep
                for i in [f"w{idx}-{old}-{j}" for j in range(8)] + [f"w{idx}-{old}-img"]:
                    st, data = conn.call("DELETE", f"/v1/collections/soak/items/{i}")
                    good = good and st in (200, 204)
            q = {"vector": items[0]["vector"][:mid], "k": 10, "width": mid}
            if n % 2:
                q["funnel"] = {"candidates": 100}
            st2, data2 = conn.call("POST", "/v1/collections/soak/search", json.dumps(q).encode(), json_h)
            good = good and st2 == 200 and len(json.loads(data2)["results"]) > 0
            st, data = (st2, data2) if st2 != 200 else (st, data)
        stats.record(kind, good, time.monotonic() - t0, f"status {st}: {data[:200]!r}")
        n += 1


def swapper(port, stop, every, results):
    conn, names, i = Conn(port), ("b.safetensors", "a.safetensors"), 0
    while not stop.wait(every):
        t0 = time.monotonic()
        st, data = conn.call("POST", "/admin/models/default", json.dumps({"checkpoint": names[i % 2]}).encode(),
                             {"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"})
        results.append((st, time.monotonic() - t0, data[:200]))
        i += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--swap-every", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=300)
    ap.add_argument("--keep", type=int, default=20, help="index batches each writer keeps")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "franca_fmnist_small.safetensors"))
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="soak_")
    models = os.path.join(tmp, "models")
    os.makedirs(models)
    for name in ("a.safetensors", "b.safetensors"):
        shutil.copy(a.model, os.path.join(models, name))
    with open(os.path.join(tmp, "token"), "w") as f:
        f.write(TOKEN + "\n")
    log = open(os.path.join(tmp, "server.log"), "w")
    server = subprocess.Popen([os.path.join(a.build, "server", "franca-server"), "--model",
                               "default=" + os.path.join(models, "a.safetensors"), "--models-dir", models,
                               "--data", os.path.join(tmp, "data"), "--admin-token-file", os.path.join(tmp, "token"),
                               "--port", "0", "--threads", str(a.threads)],
                              stdout=subprocess.PIPE, stderr=log, text=True)
    m = READY.search(server.stdout.readline())
    if not m:
        print("server did not start; log:", open(os.path.join(tmp, "server.log")).read()[-2000:])
        return 1
    port = int(m.group(2))
    conn = Conn(port)
    info = json.loads(conn.call("GET", "/v1/models/default")[1])
    widths, dim = info["matryoshka_widths"], info["embed_dim"]
    st, data = conn.call("POST", "/v1/collections", json.dumps({"name": "soak", "width": dim}).encode(),
                         {"Content-Type": "application/json"})
    if st not in (200, 201):
        print("collection:", st, data)
        return 1
    photos = []
    for name in PHOTO_NAMES:
        raw = open(os.path.join(PHOTOS, name), "rb").read()
        ctype = "image/png" if name.endswith(".png") else "image/jpeg"
        b64 = base64.b64encode(raw).decode()
        photos.append({"name": name, "type": ctype, "bytes": raw, "b64": b64, "uri": f"data:{ctype};base64,{b64}"})

    stats, swaps, rss, stop = Stats(), [], [], threading.Event()
    threads = [threading.Thread(target=worker, args=(i, port, stop, stats, photos, widths, dim, a.keep))
               for i in range(a.concurrency)]
    threads.append(threading.Thread(target=swapper, args=(port, stop, a.swap_every, swaps)))
    t_start = time.monotonic()
    for t in threads:
        t.start()
    print(f"soak: {a.minutes:g} min, concurrency {a.concurrency}, swap every {a.swap_every:g} s, "
          f"model {os.path.basename(a.model)} (D {dim}), --threads {a.threads}", flush=True)
    try:
        while time.monotonic() - t_start < a.minutes * 60 and server.poll() is None:
            time.sleep(5)
            t = time.monotonic() - t_start
            rss.append((t, rss_kib(server.pid)))
            if len(rss) % 24 == 0:
                with stats.lock:
                    done, bad = sum(stats.ok.values()), sum(stats.bad.values())
                print(f"  {t / 60:5.1f} min: {done} ok, {bad} failed, {len(swaps)} swaps, "
                      f"RSS {rss[-1][1] / 1024:.0f} MiB", flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=180)
    alive = server.poll() is None
    server.send_signal(signal.SIGTERM)
    try:
        rc = server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        rc = None

    elapsed = time.monotonic() - t_start
    print(f"\nresults over {elapsed / 60:.1f} min:")
    for kind in sorted(stats.lat):
        lat = sorted(stats.lat[kind])
        print(f"  {kind:10s} {stats.ok.get(kind, 0):8d} ok {stats.bad.get(kind, 0):5d} failed  "
              f"{len(lat) / elapsed:7.1f}/s  p50 {statistics.median(lat) * 1e3:7.1f} ms  "
              f"p99 {lat[int(0.99 * (len(lat) - 1))] * 1e3:7.1f} ms")
    swap_bad = [s for s in swaps if s[0] != 200]
    swap_t = [s[1] for s in swaps]
    print(f"  swaps      {len(swaps) - len(swap_bad):8d} ok {len(swap_bad):5d} failed  "
          f"max {max(swap_t, default=0):.2f} s")
    for e in stats.errors[:10] + [f"swap: {s}" for s in swap_bad[:5]]:
        print("  error:", e)
    warm = next((r for t, r in rss if t >= a.warmup), rss[-1][1] if rss else 0)
    end = rss[-1][1] if rss else 0
    peak = max((r for _, r in rss), default=0)
    ratio = end / warm if warm else float("inf")
    print(f"  RSS: after warm-up ({a.warmup:g} s) {warm / 1024:.1f} MiB, end {end / 1024:.1f} MiB "
          f"(x{ratio:.3f}), peak {peak / 1024:.1f} MiB")
    marks = [next((r for t, r in rss if t >= m * 60), None) for m in range(1, int(a.minutes) + 1)]
    print("  RSS by minute (MiB): " + " ".join(f"{r / 1024:.0f}" for r in marks if r is not None))
    print(f"  server alive to the end: {alive}; SIGTERM exit {rc}")
    failed = sum(stats.bad.values()) + len(swap_bad)
    good = failed == 0 and alive and rc == 0 and ratio <= 1.10 and len(swaps) > 0
    print(f"soak {'PASSED' if good else 'FAILED'}: {failed} failed requests, RSS end/warm-up {ratio:.3f}")
    if not good:
        print(open(os.path.join(tmp, "server.log")).read()[-3000:])
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
