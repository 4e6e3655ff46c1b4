#!/usr/bin/env python3
"""Benchmark of patch-level collections (not run in CI).

--items synthetic images of --grid x --grid patches (default 10000 x 16 x 16 =
2.56M patches) at --width (default 64, the width of the vit_tiny_test checkpoint
the server loads; pass --arch vit_small for widths up to 384) go into a patch
collection of each --storage (f16, int8) through the HTTP API as
{"patches": [[W numbers] x N], "grid": [g, g]} items, --batch per request.
Patches are random Gaussian vectors around a per-image mean (so that images
differ as wholes and late interaction has something to rank), generated block
by block from (seed, item) and never held whole by the script.

Printed per storage: the insert rate (items/s and patches/s, server time: the
request bodies are encoded before the clock starts), the server's RSS before
and after (and the collection's patch_bytes: W x 2 or W + 4 bytes per patch),
the median and p90 latency of single queries over HTTP on one keep-alive
connection: patch search (one query patch against every patch) and late
interaction (all the query image's patches against every item), and the exact
answers compared with numpy on --check queries (recomputed from the seed with
the server's f16/int8 rounding; ranks compared where scores differ by more than
the rounding, scores within it).

    /usr/bin/python3 tests/bench/bench_patch_index.py                 # 10k images: minutes
    /usr/bin/python3 tests/bench/bench_patch_index.py --items 500     # a quick look
"""
import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def log(msg):
    print(msg, flush=True)


class Server:
    def __init__(self, build, tmp, arch):
        ck = os.path.join(tmp, "model.safetensors")
        subprocess.run([os.path.join(build, "engine", "franca-checkpoint"), "init", "--arch", arch,
                        "--seed", "1", "--out", ck], check=True, capture_output=True)
        self.proc = subprocess.Popen(
            [os.path.join(build, "server", "franca-server"), "--model", "m=" + ck, "--port", "0",
             "--data", os.path.join(tmp, "data"), "--max-body-mb", "512"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on http://"):
            self.proc.kill()
            raise RuntimeError(f"franca-server did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        self.conn = None

    def call(self, method, path, body=None, expect=200):
        """One request on the keep-alive connection; once more on a new one when
        the server has closed it (its idle timeout is 30 s; numpy takes longer)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode() if body else None
        for attempt in (0, 1):
            fresh = self.conn is None
            if fresh:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3600)
            try:
                self.conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
                r = self.conn.getresponse()
                payload = r.read()
                break
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if fresh or attempt:
                    raise
        if r.status != expect:
            raise RuntimeError(f"{method} {path}: {r.status} {payload[:300]!r}")
        return json.loads(payload)

    def rss_mib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        if self.conn:
            self.conn.close()
        self.proc.terminate()
        self.proc.wait(timeout=120)


def item_patches(seed, i, n, w):
    """Item i's normalised patches [n, w]: a per-image mean plus noise."""
    rng = np.random.default_rng((seed, i))
    x = rng.standard_normal((n, w)).astype(np.float32) + 1.5 * rng.standard_normal(w).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def quantise(x, storage):
    if storage == "f16":
        return x.astype(np.float16).astype(np.float32)
    scale = np.abs(x).max(axis=1, keepdims=True) / 127.0
    return (np.clip(np.rint(x / scale), -127, 127) * scale).astype(np.float32)


def timed(fn, reps):
    lat = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
    lat.sort()
    return statistics.median(lat) * 1e3, lat[min(len(lat) - 1, int(0.9 * len(lat)))] * 1e3


def reference(args, storage, query, late):
    """numpy over every item: [(score, item, patch)] best first (the top 100)."""
    n = args.grid * args.grid
    out = []
    for i in range(args.items):
        m = quantise(item_patches(args.seed, i, n, args.width), storage)
        s = query @ m.T
        if late:
            out.append((float(s.max(axis=1).sum()), i, int(np.argmax(s.max(axis=0)))))
        else:
            top = np.argsort(-s[0])[:100]
            out += [(float(s[0, p]), i, int(p)) for p in top]
        if len(out) > 20000:
            out = sorted(out, key=lambda r: -r[0])[:100]
    return sorted(out, key=lambda r: -r[0])[:100]


def compare(what, hits, ref, g, tol=2e-3):
    bad = 0
    for j, h in enumerate(hits):
        s, i, p = ref[j]
        sep = min(ref[j - 1][0] - s if j else 1, s - ref[j + 1][0] if j + 1 < len(ref) else 1)
        if abs(h["score"] - s) > tol * (g * g if what == "late" else 1):
            bad += 1
        elif sep > 2 * tol * (g * g if what == "late" else 1) and \
                (h["id"] != f"i{i}" or h["patch"] != [p // g, p % g]):
            bad += 1
    return bad


def run(args, srv, storage):
    name = f"bench_{storage}"
    n = args.grid * args.grid
    srv.call("POST", "/v1/collections", {"name": name, "level": "patch", "width": args.width,
                                         "storage": storage}, expect=201)
    rss0 = srv.rss_mib()
    insert_s = encode_s = 0.0
    for lo in range(0, args.items, args.batch):
        t = time.perf_counter()
        items = [{"id": f"i{i}", "grid": [args.grid, args.grid],
                  "patches": np.round(item_patches(args.seed, i, n, args.width), 5).tolist()}
                 for i in range(lo, min(args.items, lo + args.batch))]
        body = json.dumps({"items": items}).encode()
        encode_s += time.perf_counter() - t
        t = time.perf_counter()
        srv.call("POST", f"/v1/collections/{name}/items", body)
        insert_s += time.perf_counter() - t
    info = srv.call("GET", f"/v1/collections/{name}")
    rss1 = srv.rss_mib()
    log(f"[{storage}] inserted {args.items} images ({info['patches']} patches) in {insert_s:.1f} s: "
        f"{args.items / insert_s:.0f} images/s, {info['patches'] / insert_s:.0f} patches/s "
        f"(client JSON encoding {encode_s:.1f} s more)")
    log(f"[{storage}] server RSS {rss0:.0f} -> {rss1:.0f} MiB (+{rss1 - rss0:.0f}); patch_bytes "
        f"{info['patch_bytes'] / 2**20:.1f} MiB = {info['patch_bytes'] // info['patches']} B/patch, "
        f"{info['patch_bytes'] / args.items / 1024:.1f} KiB/image")
    path = f"/v1/collections/{name}/search"
    rng = np.random.default_rng(args.seed + 1)
    qs = [(int(rng.integers(args.items)), int(rng.integers(args.grid)), int(rng.integers(args.grid)))
          for _ in range(args.reps)]
    it = iter(qs * 2)

    def one_patch():
        i, r, c = next(it)
        srv.call("POST", path, {"id": f"i{i}", "patch": [r, c], "k": 10})
    med, p90 = timed(one_patch, args.reps)
    log(f"[{storage}] patch search (1 x {info['patches']} patches, k 10): median {med:.1f} ms, p90 {p90:.1f} ms")
    it = iter(qs * 2)

    def one_late():
        srv.call("POST", path, {"id": f"i{next(it)[0]}", "k": 10})
    med, p90 = timed(one_late, max(3, args.reps // 3))
    log(f"[{storage}] late interaction ({n} x {info['patches']} patches, k 10): median {med:.1f} ms, "
        f"p90 {p90:.1f} ms")
    bad = total = 0
    for i, r, c in qs[:args.check]:
        mine = quantise(item_patches(args.seed, i, n, args.width), storage)
        hits = srv.call("POST", path, {"id": f"i{i}", "patch": [r, c], "k": 10})["results"]
        bad += compare("patch", hits, reference(args, storage, mine[r * args.grid + c][None], False),
                       args.grid)
        hits_l = srv.call("POST", path, {"id": f"i{i}", "k": 10})["results"]
        bad += compare("late", hits_l, reference(args, storage, mine, True), args.grid)
        total += len(hits) + len(hits_l)
    log(f"[{storage}] exact answers vs numpy on {args.check} queries of each kind: "
        f"{total - bad}/{total} hits agree")
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--arch", default="vit_tiny_test")
    ap.add_argument("--storage", default="f16,int8")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--check", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--build", default=os.environ.get("FRANCA_BUILD_ROOT", os.path.join(ROOT, "build")))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_patch_")
    srv = Server(args.build, tmp, args.arch)
    bad = 0
    try:
        for storage in args.storage.split(","):
            bad += run(args, srv, storage)
            srv.call("DELETE", f"/v1/collections/bench_{storage}")
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
