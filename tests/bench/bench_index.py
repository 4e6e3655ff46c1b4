#!/usr/bin/env python3
"""Benchmark of franca-server's vector index against FAISS and sqlite-vec.

For each size (--sizes, default 100000) and each kind of data (--kinds: random,
clustered), 768-dimensional float32 vectors go into a cosine collection through
the server's HTTP API (bulk insert rate measured), then k = 10 queries are timed:

  * franca-server exact and funnel search (default funnel: prefix D/16, 10*k
    candidates) over HTTP on one keep-alive connection: single queries (median
    and p99 latency) and batches of --batch queries per call (queries/s);
  * FAISS IndexFlatIP (Debian's python3-faiss) on the L2-normalised vectors, in
    process: single queries and batches of --batch. FAISS runs OpenMP loops over
    OpenBLAS calls and the two thread pools can oversubscribe the cores, so both
    settings (OpenMP T threads over a 1-thread BLAS, and 1 OpenMP thread over a
    T-thread BLAS) are tried on a batch first and the faster one is used;
  * sqlite-vec (PyPI sqlite-vec, in a venv under the build directory): a vec0
    table with distance_metric=cosine in an in-memory database, its brute-force
    KNN query, one query at a time (it has no batch form).

Server and FAISS measurements alternate over --rounds rounds and the medians are
reported (p99: the median of the rounds' p99s); sqlite-vec runs once, after the
server is stopped. Recall@10 is against the server's exact answer; the exact
answers of the server and FAISS are compared too (they agree, ties aside).
'clustered' data mimics Matryoshka-trained embeddings: Gaussian clusters whose
per-dimension standard deviation decays as exp(-j / (D/8)), so a short prefix
carries most of the signal (the first D/16 dimensions hold 63 % of the variance).
The bulk insert rate is measured with request bodies encoded beforehand (spooled
to a file), so it is the server's rate; the client's JSON encoding rate is shown
beside it. Values have 4 significant digits so that the JSON stays short; every
engine gets the same float32 values.

    /usr/bin/python3 tests/bench/bench_index.py                       # 100k: ~12 min on 2 cores
    /usr/bin/python3 tests/bench/bench_index.py --sizes 100000,1000000   # 1M: ~35 min more

Data are generated block by block from (seed, block) and never held whole by
the script, so the memory is that of the engines: at 1M x 768 the server holds
3.6 GB and FAISS 3 GB at the same time (sqlite-vec 3 GB later, alone); the
spooled insert bodies (7.5 GB) and the server's SQLite file (3.5 GB) go to the
temporary directory and are removed at the end.
"""
import argparse
import ctypes
import glob
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
BLOCK = 65536


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --- data ------------------------------------------------------------------------

def short_decimals(x):
    """Rounds to 4 significant digits: the nearest float64 of a short decimal,
    whose JSON text (repr) is that decimal. Every engine gets float32 of it."""
    x = np.asarray(x, np.float64)
    mag = np.maximum(np.abs(x), 1e-15)
    dec = np.clip(3 - np.floor(np.log10(mag)), 0, 22)
    p = 10.0 ** dec  # exact for 0..22
    return np.rint(x * p) / p


class Data:
    """n base vectors and nq held-out queries of dimension d; blocks of rows
    are generated on demand from (seed, block index), identically each time."""

    def __init__(self, kind, n, d, nq, seed):
        self.kind, self.n, self.d, self.seed = kind, n, d, seed
        if kind == "random":
            self.describe = "random: i.i.d. N(0, 1) components"
        elif kind == "clustered":
            self.n_clusters = max(16, n // 100)
            tau = d / 8.0
            self.scale = np.exp(-np.arange(d) / tau).astype(np.float32)
            self.centers = np.random.default_rng([seed, 1 << 30]).standard_normal((self.n_clusters, d),
                                                                                   dtype=np.float32)
            self.describe = (f"clustered (Matryoshka-like): {self.n_clusters} Gaussian clusters at n = {n}, unit "
                             f"noise, per-dimension std decaying as exp(-j/{tau:g}): the first {d // 16} dims hold "
                             f"{100 * (1 - np.exp(-2 * (d // 16) / tau)):.0f} % of the variance")
        else:
            raise ValueError(f"unknown kind {kind!r}")
        self.queries = self._gen(np.random.default_rng([seed, 1 << 31]), nq)

    def _gen(self, rng, m):
        if self.kind == "random":
            x = rng.standard_normal((m, self.d), dtype=np.float32)
        else:
            lab = rng.integers(0, self.n_clusters, m)
            x = (self.centers[lab] + rng.standard_normal((m, self.d), dtype=np.float32)) * self.scale
        return short_decimals(x).astype(np.float32)

    def blocks(self):
        """(first row, float32 [rows, d]) over the whole collection."""
        for b, lo in enumerate(range(0, self.n, BLOCK)):
            yield lo, self._gen(np.random.default_rng([self.seed, b]), min(BLOCK, self.n - lo))

    def queries_normalised(self):
        return self.queries / np.maximum(np.linalg.norm(self.queries, axis=1, keepdims=True), 1e-30)


# --- the server ------------------------------------------------------------------

class Server:
    def __init__(self, build, tmp, threads, http_threads):
        self.ckpt = os.path.join(tmp, "base.safetensors")
        if not os.path.exists(self.ckpt):
            subprocess.run([os.path.join(build, "engine", "franca-checkpoint"), "init", "--arch", "vit_base",
                            "--dtype", "bf16", "--seed", "1", "--out", self.ckpt], check=True, capture_output=True)
        self.data = os.path.join(tmp, "server-data")
        shutil.rmtree(self.data, ignore_errors=True)
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen(
            [os.path.join(build, "server", "franca-server"), "--model", "base=" + self.ckpt, "--port", "0",
             "--data", self.data, "--threads", str(threads), "--http-threads", str(http_threads),
             "--max-body-mb", "512"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on http://"):
            self.proc.kill()
            raise RuntimeError(f"franca-server did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        self.conn = None

    def call(self, method, path, body=None, expect=200):
        """One request on the keep-alive connection; when the server has closed
        it (its idle timeout is 30 s), once more on a new one."""
        data = body.encode() if isinstance(body, str) else body
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
                if fresh or attempt or self.proc.poll() is not None:
                    raise
        if r.status != expect:
            raise RuntimeError(f"{method} {path}: {r.status} {payload[:300]!r}")
        return json.loads(payload)

    def rss_mib(self):
        try:
            for line in open(f"/proc/{self.proc.pid}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def stop(self):
        if self.conn:
            self.conn.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.data, ignore_errors=True)


def encode_inserts(data, chunk, path):
    """Writes the insert request bodies (chunk items each) to path; returns
    (byte offsets, encoding seconds)."""
    offsets = [0]
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for lo, blk in data.blocks():
            rows = short_decimals(blk).tolist()  # the short decimals again (float32 holds 7 digits)
            for c in range(0, len(rows), chunk):
                body = ('{"items":[' + ",".join('{"id":"%d","vector":%s}' % (lo + c + i, json.dumps(r))
                                                for i, r in enumerate(rows[c:c + chunk])) + "]}").encode()
                f.write(body)
                offsets.append(offsets[-1] + len(body))
    return offsets, time.perf_counter() - t0


def bulk_insert(srv, name, spool, offsets):
    """Sends the spooled bodies one after the other; returns the seconds taken."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=3600)
    t0 = time.perf_counter()
    with open(spool, "rb") as f:
        for a, b in zip(offsets, offsets[1:]):
            body = f.read(b - a)
            conn.request("POST", f"/v1/collections/{name}/items", body=body,
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            payload = r.read()
            if r.status != 200:
                raise RuntimeError(f"insert: {r.status} {payload[:300]!r}")
    took = time.perf_counter() - t0
    conn.close()
    return took


# --- timing ----------------------------------------------------------------------

def time_single(fn, nq, max_seconds):
    """fn(i) for queries 0.. until all are done or max_seconds passed (at least
    10), after one warm-up call; returns (latencies in s, answers)."""
    fn(0)
    lat, answers = [], []
    start = time.perf_counter()
    for i in range(nq):
        t = time.perf_counter()
        answers.append(fn(i))
        lat.append(time.perf_counter() - t)
        if time.perf_counter() - start > max_seconds and len(lat) >= 10:
            break
    return lat, answers


def time_batched(fn, nq, batch, min_seconds):
    """fn(lo, hi) over batches of the queries, cycling, for at least min_seconds
    and one pass over all of them, after one warm-up call; returns (queries/s,
    answers of the first pass)."""
    fn(0, min(batch, nq))
    answers = [None] * nq
    done, lo, t0 = 0, 0, time.perf_counter()
    while True:
        hi = min(nq, lo + batch)
        res = fn(lo, hi)
        if answers[lo] is None:
            answers[lo:hi] = res
        done += hi - lo
        lo = 0 if hi >= nq else hi
        if time.perf_counter() - t0 >= min_seconds and answers[-1] is not None:
            break
    return done / (time.perf_counter() - t0), answers


def pcts(lat):
    a = np.asarray(lat) * 1000.0
    return float(np.median(a)), float(np.percentile(a, 99))


def recall(got, truth, k):
    r = [len(set(g[:k]) & set(t[:k])) / max(1, min(k, len(t))) for g, t in zip(got, truth) if g is not None]
    return float(np.mean(r)) if r else float("nan")


# --- engines ---------------------------------------------------------------------

class ServerEngine:
    def __init__(self, args, data, tmp):
        self.args, self.data, self.name = args, data, "bench"
        self.srv = Server(args.build, tmp, args.threads, args.http_threads)
        c = self.srv.call("POST", "/v1/collections", json.dumps({"name": self.name, "metric": "cosine",
                                                                  "width": data.d, "model": "base"}), expect=201)
        self.prefix_width = c["prefix_width"]
        spool = os.path.join(tmp, "inserts.jsonl")
        log(f"  encoding the insert bodies ({args.insert_chunk} vectors per request)")
        offsets, enc = encode_inserts(data, args.insert_chunk, spool)
        log(f"  inserting {data.n} vectors ({offsets[-1] / 1e6:.0f} MB of JSON)")
        took = bulk_insert(self.srv, self.name, spool, offsets)
        os.remove(spool)
        c = self.srv.call("GET", f"/v1/collections/{self.name}")
        if c["count"] != data.n or c["indexed"] != data.n:
            raise RuntimeError(f"after the insert: count {c['count']}, indexed {c['indexed']}, want {data.n}")
        self.insert_rate, self.encode_rate, self.mb = data.n / took, data.n / enc, offsets[-1] / 1e6
        self.rss = self.srv.rss_mib()
        log(f"  server: {self.insert_rate:.0f} vectors/s inserted ({self.mb / took:.1f} MB/s of JSON; the client "
            f"encoded {self.encode_rate:.0f}/s); RSS {self.rss:.0f} MiB")
        self.qbodies = [json.dumps(short_decimals(q).tolist()) for q in data.queries]

    @staticmethod
    def _funnel(mode):
        """"exact" -> no funnel; "funnel" -> the server's defaults; "funnel:N" -> N candidates."""
        if mode == "exact":
            return ""
        if ":" in mode:
            return ',"funnel":{"candidates":%d}' % int(mode.split(":")[1])
        return ',"funnel":{}'

    def single(self, mode, max_seconds):
        extra = self._funnel(mode)
        path = f"/v1/collections/{self.name}/search"

        def one(i):
            r = self.srv.call("POST", path, '{"k":%d%s,"vector":%s}' % (self.args.k, extra, self.qbodies[i]))
            return [int(x["id"]) for x in r["results"]]

        return time_single(one, len(self.qbodies), max_seconds)

    def batched(self, mode, min_seconds):
        extra = self._funnel(mode)
        path = f"/v1/collections/{self.name}/search"

        def many(lo, hi):
            body = '{"k":%d%s,"queries":[%s]}' % (self.args.k, extra, ",".join('{"vector":%s}' % self.qbodies[i]
                                                                              for i in range(lo, hi)))
            return [[int(x["id"]) for x in b["results"]] for b in self.srv.call("POST", path, body)["batch"]]

        return time_batched(many, len(self.qbodies), self.args.batch, min_seconds)

    def close(self):
        self.srv.stop()


def openblas_threads(n):
    """Sets the OpenBLAS thread count of this process (FAISS's BLAS); False if
    it cannot be set."""
    for lib in ("libopenblas.so.0", "libblas.so.3"):
        try:
            ctypes.CDLL(lib).openblas_set_num_threads(int(n))
            return True
        except (OSError, AttributeError):
            continue
    return False


class FaissEngine:
    def __init__(self, args, data):
        import faiss
        self.faiss, self.args, self.version = faiss, args, faiss.__version__
        self.index = faiss.IndexFlatIP(data.d)
        for _, blk in data.blocks():
            blk /= np.maximum(np.linalg.norm(blk, axis=1, keepdims=True), 1e-30)
            self.index.add(blk)
        self.q = data.queries_normalised().astype(np.float32)
        # The faster thread setting, on the first batch (best of 2 tries each).
        T = args.threads
        settings = [(T, 1), (1, T)] if T > 1 else [(1, 1)]
        best = None
        for omp, blas in settings:
            faiss.omp_set_num_threads(omp)
            if not openblas_threads(blas) and blas != T:
                continue
            took = []
            for _ in range(2):
                t = time.perf_counter()
                self.index.search(self.q[:args.batch], args.k)
                took.append(time.perf_counter() - t)
            log(f"  FAISS with {omp} OpenMP thread(s) over a {blas}-thread OpenBLAS: {args.batch / min(took):.0f} q/s")
            if best is None or min(took) < best[0]:
                best = (min(took), omp, blas)
        _, self.omp, self.blas = best
        faiss.omp_set_num_threads(self.omp)
        openblas_threads(self.blas)
        self.setting = f"OpenMP {self.omp}, OpenBLAS {self.blas}"

    def single(self, mode, max_seconds):
        return time_single(lambda i: self.index.search(self.q[i:i + 1], self.args.k)[1][0].tolist(),
                           len(self.q), max_seconds)

    def batched(self, mode, min_seconds):
        return time_batched(lambda lo, hi: self.index.search(self.q[lo:hi], self.args.k)[1].tolist(),
                            len(self.q), self.args.batch, min_seconds)

    def close(self):
        self.index.reset()
        openblas_threads(self.args.threads)


def sqlite_vec_module(build):
    """sqlite_vec from a venv under the build directory (created on first use)."""
    venv = os.path.join(build, "venv-bench")
    if not glob.glob(os.path.join(venv, "lib", "python3*", "site-packages", "sqlite_vec")):
        log(f"  creating {venv} and installing sqlite-vec from PyPI")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True)
        subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--disable-pip-version-check",
                        "-q", "sqlite-vec"], check=True, capture_output=True)
    site = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages"))[0]
    if site not in sys.path:
        sys.path.append(site)
    import sqlite_vec
    return sqlite_vec


def bench_sqlite_vec(args, data):
    import sqlite3
    sqlite_vec = sqlite_vec_module(args.build)
    db = sqlite3.connect(":memory:")
    db.enable_load_extension(True)
    sqlite_vec.load(db)
    db.enable_load_extension(False)
    version = db.execute("SELECT vec_version()").fetchone()[0]
    db.execute(f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{data.d}] distance_metric=cosine)")
    t0 = time.perf_counter()
    for lo, blk in data.blocks():
        db.executemany("INSERT INTO v(rowid, embedding) VALUES (?, ?)",
                       ((lo + i, blk[i].tobytes()) for i in range(len(blk))))
    db.commit()
    load = time.perf_counter() - t0
    qs = data.queries

    def one(i):
        return [r[0] for r in db.execute("SELECT rowid FROM v WHERE embedding MATCH ? AND k = ? ORDER BY distance",
                                         (qs[i].tobytes(), args.k))]

    lat, ids = time_single(one, len(qs), args.sqlite_seconds)
    db.close()
    p50, p99 = pcts(lat)
    log(f"  sqlite-vec {version}: loaded at {data.n / load:.0f}/s; single p50 {p50:.2f} ms, p99 {p99:.2f} ms "
        f"({len(lat)} queries)")
    return {"engine": f"sqlite-vec {version} vec0 brute force (in process, one query at a time)", "p50": p50,
            "p99": p99, "qps": len(lat) / sum(lat), "ids": ids}


def run_one(args, data, tmp):
    srv = ServerEngine(args, data, tmp)
    engines = [("server exact", srv, "exact"), ("server funnel", srv, "funnel")]
    default_candidates = max(10 * args.k, data.n // 2000)  # the server's default shortlist
    extra_candidates = [int(c) for c in args.funnel_candidates.split(",") if c and int(c) != default_candidates]
    engines += [(f"server funnel {c}", srv, f"funnel:{c}") for c in extra_candidates]
    fa = None
    try:
        if not args.no_faiss:
            try:
                fa = FaissEngine(args, data)
                engines.append(("faiss", fa, "exact"))
            except ImportError as e:
                log(f"  FAISS unavailable ({e}): apt-get install python3-faiss")
        res = {key: {"p50": [], "p99": [], "qps": [], "ids": None, "bids": None} for key, _, _ in engines}
        for rnd in range(args.warmup_rounds + args.rounds):
            for key, eng, mode in engines:
                lat, ids = eng.single(mode, args.single_seconds)
                p50, p99 = pcts(lat)
                qps, bids = eng.batched(mode, args.batch_seconds)
                if rnd < args.warmup_rounds:
                    log(f"  warm-up {key:14s} single p50 {p50:8.2f} ms   batched {qps:8.0f} q/s (not counted)")
                    continue
                r = res[key]
                r["p50"].append(p50)
                r["p99"].append(p99)
                r["qps"].append(qps)
                if r["ids"] is None:
                    r["ids"], r["bids"] = ids, bids
                log(f"  round {rnd + 1 - args.warmup_rounds} {key:14s} single p50 {p50:8.2f} ms  p99 {p99:8.2f} ms ({len(lat)} queries)"
                    f"   batched {qps:8.0f} q/s")
    finally:
        srv.close()
        if fa:
            fa.close()
    exact = res["server exact"]["bids"]
    out = {"kind": data.kind, "n": data.n, "describe": data.describe, "prefix_width": srv.prefix_width,
           "insert_rate": srv.insert_rate, "encode_rate": srv.encode_rate, "rss_mib": srv.rss, "engines": []}
    names = {"server exact": "franca-server exact (HTTP)",
             "server funnel": f"franca-server funnel (HTTP; prefix {srv.prefix_width}, "
                              f"{max(10 * args.k, data.n // 2000)} candidates, the default)",
             "faiss": f"FAISS {fa.version} IndexFlatIP (in process; {fa.setting})" if fa else ""}
    for c in extra_candidates:
        names[f"server funnel {c}"] = f"franca-server funnel (HTTP; prefix {srv.prefix_width}, {c} candidates)"
    for key, r in res.items():
        out["engines"].append({"engine": names[key], "p50": statistics.median(r["p50"]),
                               "p99": statistics.median(r["p99"]), "qps": statistics.median(r["qps"]),
                               "recall": recall(r["bids"], exact, args.k)})
    if fa:
        out["exact_vs_faiss"] = recall(exact, res["faiss"]["bids"], args.k)
    if not args.no_sqlite_vec:
        try:
            v = bench_sqlite_vec(args, data)
            v["recall"] = recall(v.pop("ids"), exact, args.k)
            out["engines"].append(v)
        except (ImportError, subprocess.CalledProcessError, OSError) as e:
            log(f"  sqlite-vec unavailable: {e}")
    return out


def print_table(allres, args):
    print(f"\nVector search, d = {args.dim}, k = {args.k}, cosine, {args.threads} threads per engine; single = one "
          f"query per call (p50 / p99 ms), batched = {args.batch} queries per call; medians of {args.rounds} "
          f"alternating rounds after {args.warmup_rounds} uncounted (sqlite-vec: one run). Recall@{args.k} is "
          "against franca-server's exact answer.\n")
    seen = set()
    for r in allres:
        if r["describe"] not in seen:
            seen.add(r["describe"])
            print(f"- {r['describe']}")
    print()
    print(f"| data | n | engine | single p50 ms | single p99 ms | batched q/s | recall@{args.k} | p50 vs FAISS | "
          "q/s vs FAISS |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in allres:
        fa = next((e for e in r["engines"] if e["engine"].startswith("FAISS")), None)
        for e in r["engines"]:
            lat_ratio = f"{e['p50'] / fa['p50']:.2f}x" if fa else "-"
            qps_ratio = f"{e['qps'] / fa['qps']:.2f}x" if fa else "-"
            print(f"| {r['kind']} | {r['n']} | {e['engine']} | {e['p50']:.2f} | {e['p99']:.2f} | {e['qps']:.0f} | "
                  f"{e['recall']:.3f} | {lat_ratio} | {qps_ratio} |")
    print()
    for r in allres:
        ex, fu = r["engines"][0], r["engines"][1]
        line = (f"- {r['kind']}, n = {r['n']}: funnel {ex['p50'] / fu['p50']:.1f}x faster than exact for single "
                f"queries, {fu['qps'] / ex['qps']:.1f}x in batches, recall@{args.k} {fu['recall']:.3f}")
        if "exact_vs_faiss" in r:
            line += f"; exact top-{args.k} agreement with FAISS {r['exact_vs_faiss']:.4f}"
        line += (f"; bulk insert through the API {r['insert_rate']:.0f} vectors/s ({args.insert_chunk} per request, "
                 f"bodies encoded beforehand; this Python client encodes {r['encode_rate']:.0f}/s); "
                 f"server RSS {r['rss_mib']:.0f} MiB")
        print(line)


def main():
    ap = argparse.ArgumentParser(description="franca-server vector index against FAISS and sqlite-vec")
    ap.add_argument("--sizes", default="100000", help="comma-separated collection sizes (default 100000)")
    ap.add_argument("--kinds", default="random,clustered")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=512, help="held-out queries (default 512)")
    ap.add_argument("--batch", type=int, default=256, help="queries per batched call (default 256, at most 1024)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of server and FAISS (default 3)")
    ap.add_argument("--warmup-rounds", type=int, default=1,
                    help="rounds run first and not counted (default 1: right after a bulk load the first "
                         "round ran up to 2x slower for every engine at 1M)")
    ap.add_argument("--funnel-candidates", default="100,400",
                    help="funnel shortlist sizes to time besides the server's default, max(10*k, n/2000) (default 100,400)")
    ap.add_argument("--single-seconds", type=float, default=8.0, help="time budget of one single-query run")
    ap.add_argument("--batch-seconds", type=float, default=4.0, help="least time of one batched run")
    ap.add_argument("--sqlite-seconds", type=float, default=15.0)
    ap.add_argument("--insert-chunk", type=int, default=2000, help="vectors per insert request (default 2000)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--http-threads", type=int, default=2)
    ap.add_argument("--build", default=os.environ.get("FRANCA_BUILD_ROOT") or os.path.join(ROOT, "build"))
    ap.add_argument("--no-faiss", action="store_true")
    ap.add_argument("--no-sqlite-vec", action="store_true")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_index_")
    allres = []
    try:
        for n in (int(s) for s in args.sizes.split(",") if s):
            for kind in (k for k in args.kinds.split(",") if k):
                log(f"{kind}, n = {n}, d = {args.dim}")
                allres.append(run_one(args, Data(kind, n, args.dim, args.queries, seed=n + len(kind)), tmp))
                if args.json:
                    json.dump(allres, open(args.json, "w"), indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(allres, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
