#!/usr/bin/env python3
"""Compressed search mirrors at scale: for each form (--forms, default
f32,f16,int8), one cosine collection of --n clustered Matryoshka-like vectors
of width --width (per-dimension spread exp(-j / (D/8)), as bench_index.py) in a
fresh --data, then franca-server (a vit_base bf16 checkpoint loaded, as in
bench_index.py) started on it: the time to build the mirror from SQLite, the
server's RSS, GET's vector_bytes / mirror_bytes, single-query latency over HTTP
(median and p99 of --queries held-out queries, k = 10, exact search; re-ranked
by default and with "rerank": false) and recall@10 against the numpy float64
brute force.

The items are written into SQLite directly (the collection itself is created
through the API), because a million 768-wide vectors as JSON take half an
hour to send: the server then reads them at start exactly as after a restart.

With --ann W the collection also keeps an HNSW graph on the width-W prefix
(built at the start, waited for: "start" then includes the build), and the
searches take the graph's path with the exact re-rank.

    /usr/bin/python3 tests/bench/bench_mirror.py --n 100000
    /usr/bin/python3 tests/bench/bench_mirror.py --n 1000000 --forms int8
    /usr/bin/python3 tests/bench/bench_mirror.py --n 1000000 --forms int8 --ann 64
"""
import argparse
import http.client
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCK = 50000


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def block(seed, b, m, d, centres):
    rng = np.random.default_rng([seed, b])
    decay = np.exp(-np.arange(d) / (d / 8.0))
    c = centres[rng.integers(0, len(centres), m)]
    return (c + 0.5 * rng.standard_normal((m, d)) * decay).astype(np.float32)


def blocks(args, centres):
    for b, lo in enumerate(range(0, args.n, BLOCK)):
        yield lo, block(args.seed, b, min(BLOCK, args.n - lo), args.width, centres)


def call(port, method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request(method, path, body=json.dumps(body) if body is not None else b"",
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = json.loads(r.read())
    c.close()
    if r.status >= 300:
        raise RuntimeError(f"{method} {path}: {r.status} {data}")
    return data


def start(args, ckpt, data):
    p = subprocess.Popen([os.path.join(args.build, "server", "franca-server"), "--model", "base=" + ckpt,
                          "--port", "0", "--data", data], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=dict(os.environ, MALLOC_ARENA_MAX="1"))
    line = p.stdout.readline()
    if not line.startswith("listening on http://"):
        raise RuntimeError(f"server did not start: {line!r}")
    return p, int(line.rsplit(":", 1)[1])


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--forms", default="f32,f16,int8")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ann", type=int, default=0, help="HNSW on this prefix width (0: none)")
    ap.add_argument("--build", default=os.environ.get("FRANCA_BUILD_ROOT", os.path.join(ROOT, "build")))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_mirror_")
    ckpt = os.path.join(tmp, "base.safetensors")
    subprocess.run([os.path.join(args.build, "engine", "franca-checkpoint"), "init", "--arch", "vit_base",
                    "--dtype", "bf16", "--seed", "1", "--out", ckpt], check=True, capture_output=True)
    d, k = args.width, 10
    crng = np.random.default_rng(args.seed + 1000)
    centres = crng.standard_normal((256, d)) * np.exp(-np.arange(d) / (d / 8.0))
    Q = block(args.seed + 7, 0, args.queries, d, centres)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    # The float64 truth, block by block.
    best_s = np.full((args.queries, k), -np.inf)
    best_i = np.zeros((args.queries, k), np.int64)
    for lo, X in blocks(args, centres):
        Xn = X.astype(np.float64) / np.linalg.norm(X.astype(np.float64), axis=1, keepdims=True)
        S = Qn.astype(np.float64) @ Xn.T
        s = np.concatenate([best_s, S], 1)
        i = np.concatenate([best_i, np.arange(lo, lo + len(X))[None, :].repeat(args.queries, 0)], 1)
        o = np.argsort(-s, 1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, o, 1), np.take_along_axis(i, o, 1)
    truth = [set(r.tolist()) for r in best_i]
    rows = []
    for form in args.forms.split(","):
        data = os.path.join(tmp, "data-" + form)
        srv, port = start(args, ckpt, data)
        spec = {"name": "m", "width": d, "metric": "cosine", "mirror": form}
        if args.ann:
            spec["ann"] = {"kind": "hnsw", "width": args.ann}
        call(port, "POST", "/v1/collections", spec)
        srv.terminate()
        srv.wait()
        t0 = time.monotonic()
        db = sqlite3.connect(os.path.join(data, "index.sqlite3"))
        cid = db.execute("SELECT id FROM collections WHERE name = 'm'").fetchone()[0]
        db.execute("PRAGMA synchronous=OFF")
        for lo, X in blocks(args, centres):
            db.executemany("INSERT INTO items (collection_id, external_id, vector) VALUES (?, ?, ?)",
                           ((cid, f"x{lo + i}", X[i].astype("<f4").tobytes()) for i in range(len(X))))
            db.commit()
        db.close()
        log(f"{form}: {args.n} rows written to SQLite in {time.monotonic() - t0:.0f} s")
        t0 = time.monotonic()
        srv, port = start(args, ckpt, data)
        info = call(port, "GET", "/v1/collections/m")
        while args.ann and not (info.get("ann") or {}).get("ready"):
            time.sleep(1)
            info = call(port, "GET", "/v1/collections/m")
        t_build = time.monotonic() - t0
        rss = rss_mib(srv.pid)
        res = {}
        path = call(port, "POST", "/v1/collections/m/search", {"vector": Q[0].tolist(), "k": k}).get("search")
        for rerank in (True, False):
            lat, hit = [], 0
            for qi in range(args.queries):
                body = {"vector": Q[qi].tolist(), "k": k}
                if not rerank:
                    body["rerank"] = False
                t = time.perf_counter()
                r = call(port, "POST", "/v1/collections/m/search", body)["results"]
                lat.append(time.perf_counter() - t)
                hit += len(truth[qi] & {int(h["id"][1:]) for h in r})
            res[rerank] = (hit / (k * args.queries), 1000 * np.median(lat), 1000 * np.percentile(lat, 99))
        srv.terminate()
        srv.wait()
        row = {"form": form + (f" + hnsw({args.ann})" if args.ann else ""), "search": path, "n": args.n, "width": d, "start_s": round(t_build, 1), "rss_mib": round(rss),
               "vector_bytes": info["vector_bytes"], "mirror_bytes_per_vector": round(info["mirror_bytes"] / args.n),
               "recall": res[True][0], "ms_median": round(res[True][1], 2), "ms_p99": round(res[True][2], 2),
               "recall_no_rerank": res[False][0], "ms_median_no_rerank": round(res[False][1], 2)}
        rows.append(row)
        log(json.dumps(row))
        shutil.rmtree(data, ignore_errors=True)
    print("| form | vectors | B/vector (matrix) | B/vector (mirror) | server RSS | start | recall@10 | median / p99 ms |"
          " recall@10, rerank false | median ms, rerank false |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['form']} | {r['n']:,} x {r['width']} | {r['vector_bytes']} | {r['mirror_bytes_per_vector']} | "
              f"{r['rss_mib']} MiB | {r['start_s']} s | {r['recall']:.3f} | {r['ms_median']} / {r['ms_p99']} | "
              f"{r['recall_no_rerank']:.3f} | {r['ms_median_no_rerank']} |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
