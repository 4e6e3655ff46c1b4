#!/usr/bin/env python3
"""Approximate (ANN) search benchmark: Franca's HNSW driver beside FAISS HNSW and IVF,
hnswlib and usearch, on the same clustered Matryoshka-like data, in one run.

Data (cached under --work, so that reruns skip generating it and its ground truth):
  base.f32     n x d float32, raw (not normalised), row-major
  queries.f32  nq x d float32, drawn like the data (same clusters), not from it
  gt.i32       nq x k int32: exact top-k by cosine at full width (numpy, in blocks), all rows
  gt_n<N>.i32  the same over the first N base rows (a smaller --n, the full-width configuration)
  meta.json    the generator's parameters; a cache made with other ones is regenerated

The generator ("clustered, Matryoshka-like"): --clusters Gaussian clusters (default 4096)
with centres c ~ N(0, I) and sizes drawn with weights ~ lognormal(0, 0.5) (mildly uneven);
a vector is x = (c_label + noise * e) * s with e ~ N(0, I) and s_j = exp(-j / tau),
tau = d / 8 (--tau): the per-dimension variance decays along the dimensions as in
Matryoshka-trained features, so a 64-d prefix carries most of the neighbourhood structure
(the first 64 of 768 dims hold 1 - exp(-2*64/96) = 74 % of the variance). Rows are made
block by block from (seed, block), so the first N rows of the 1M set are the N-row set.

Two configurations, every engine on the same vectors with the same --threads:
  full    each peer indexes the L2-normalised full-width vectors (what a user would do)
          with inner product; answers are its own top-k. At 1M x 768 a full-width HNSW build
          takes far too long on 2 cores, so this configuration runs on the first --full-n
          rows (printed in every table and in the headline) with its own ground truth.
  prefix  Franca's design: each peer indexes the L2-normalised 64-d prefix (--width), is
          asked for a shortlist of --shortlist candidates (so the graph search runs with
          ef_eff = max(ef, shortlist)), and the shortlist is re-ranked exactly at full width
          (cosine, numpy; batched re-rank on --threads threads). This separates the
          algorithm from the design. The "design ceiling" line gives the limit of the design:
          exact top-S on the prefix, then the same re-rank.

Per engine: build time, memory (RSS delta of this process over the build, after
malloc_trim, divided by n: bytes/vector including the stored vectors), and per ef or
nprobe: recall@k (against the cached exact answer), single-query latency p50/p99 (one query
per call, as a Python user calls it: the call overhead, a few microseconds, is included;
prefix: ANN + re-rank), and batched q/s (all nq queries in one call on --threads threads).
The searches alternate over --rounds rounds (engine by engine, every ef) and the medians
are reported. Ours: the C driver (--franca-bin, built by meson as tests/bench/bench_hnsw),
run once per configuration and M between the first and the second round; it builds its own
graph from base.f32 and prints JSON lines (see parse_franca).

Peers: FAISS from Debian's python3-faiss (apt-get install python3-faiss; 1.7.3 on Debian
12, a generic build without AVX2/AVX-512 kernels: its HNSW builds 768-d vectors about 8x
slower than hnswlib), FAISS from PyPI (faiss-cpu, AVX-512; it needs numpy 2, so the script
runs itself again under the venv's python for those rows: --no-faiss-pypi skips them),
hnswlib and usearch from PyPI; all PyPI packages go into a venv the script makes under
--venv (never in CI), whose site-packages are appended to sys.path so that this process
keeps the system numpy and Debian's FAISS. --engines / --engines-prefix pick the peers
(faiss-hnsw,faiss-ivf,hnswlib,usearch).

Measured times on the project's 2-core machine (docs/benchmarks.md, "Approximate search"):
--quick with every peer at M = 16 took 34 min while other builds loaded the machine (Debian
FAISS's HNSW builds were 15 of them); the prefix configuration at 300k with hnswlib, usearch,
IVF and PyPI FAISS took 9 min on a quiet machine.

    /usr/bin/python3 tests/bench/bench_ann.py --quick --m 16           # n = 100k, full width on 20k
    /usr/bin/python3 tests/bench/bench_ann.py --n 300000 --configs prefix --m 16 \
        --engines-prefix hnswlib,usearch,faiss-ivf                        # run 2 of docs/benchmarks.md
    /usr/bin/python3 tests/bench/bench_ann.py                           # n = 1M (full width on 50k): long
"""
import argparse
import concurrent.futures
import ctypes
import gc
import glob
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_index import log, openblas_threads, pcts  # noqa: E402  (the exact-index benchmark's helpers)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCK = 65536
GEN_VERSION = 1


# --- data ------------------------------------------------------------------------

class Generator:
    def __init__(self, d, clusters, tau, noise, seed):
        self.d, self.clusters, self.tau, self.noise, self.seed = d, clusters, tau, noise, seed
        self.scale = np.exp(-np.arange(d) / tau).astype(np.float32)
        self.centers = np.random.default_rng([seed, 1]).standard_normal((clusters, d), dtype=np.float32)
        w = np.random.default_rng([seed, 2]).lognormal(0.0, 0.5, clusters)
        self.weights = w / w.sum()

    def meta(self):
        return {"version": GEN_VERSION, "d": self.d, "clusters": self.clusters, "tau": self.tau,
                "noise": self.noise, "seed": self.seed}

    def describe(self, prefix):
        return (f"clustered, Matryoshka-like: {self.clusters} Gaussian clusters (centres N(0, I), lognormal(0, 0.5) "
                f"size weights), noise {self.noise:g}, per-dimension std exp(-j/{self.tau:g}): the first {prefix} "
                f"dims hold {100 * (1 - np.exp(-2 * prefix / self.tau)):.0f} % of the variance")

    def _gen(self, rng, m):
        lab = rng.choice(self.clusters, m, p=self.weights)
        x = self.centers[lab] + self.noise * rng.standard_normal((m, self.d), dtype=np.float32)
        x *= self.scale
        return x

    def block(self, b, m):
        return self._gen(np.random.default_rng([self.seed, 100, b]), m)

    def queries(self, nq):
        return self._gen(np.random.default_rng([self.seed, 200]), nq)


def exact_topk(base, q_norm, n, k, threads):
    """Exact top-k by cosine over the first n rows of base (memmap), in blocks."""
    openblas_threads(threads)
    best_s = np.full((len(q_norm), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q_norm), 0), np.int64)
    for lo in range(0, n, BLOCK):
        blk = np.asarray(base[lo:min(n, lo + BLOCK)], np.float32)
        blk = blk / np.maximum(np.linalg.norm(blk, axis=1, keepdims=True), 1e-30)
        s = q_norm @ blk.T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
        best_i = np.concatenate([best_i, part + lo], 1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i.astype(np.int32)


class Dataset:
    def __init__(self, args):
        self.args = args
        gen = Generator(args.dim, args.clusters, args.tau, args.noise, args.seed)
        self.gen = gen
        w = args.work
        os.makedirs(w, exist_ok=True)
        self.base_path, self.q_path = os.path.join(w, "base.f32"), os.path.join(w, "queries.f32")
        meta_path = os.path.join(w, "meta.json")
        meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
        want = gen.meta()
        rows = meta.get("rows", 0) if all(meta.get(key) == v for key, v in want.items()) else -1
        if rows < 0:
            for f in glob.glob(os.path.join(w, "*.f32")) + glob.glob(os.path.join(w, "*.i32")):
                os.remove(f)
            rows = 0
        target = max(rows, args.n)
        if rows < args.n or meta.get("nq") != args.nq or not os.path.exists(self.q_path):
            t0 = time.perf_counter()
            log(f"generating rows {rows}..{target} of {args.dim}-d base vectors and {args.nq} queries into {w}")
            first = rows // BLOCK
            with open(self.base_path, "r+b" if rows else "wb") as f:
                f.seek(first * BLOCK * args.dim * 4)
                f.truncate(first * BLOCK * args.dim * 4)
                for b in range(first, (target + BLOCK - 1) // BLOCK):
                    # whole blocks always, so that row i is the same whatever n
                    f.write(gen.block(b, BLOCK)[:min(BLOCK, target - b * BLOCK)].tobytes())
            gen.queries(args.nq).tofile(self.q_path)
            for f in glob.glob(os.path.join(w, "gt*.i32")) + glob.glob(os.path.join(w, "norms.f32")):
                os.remove(f)
            json.dump(dict(want, rows=target, nq=args.nq), open(meta_path, "w"))
            log(f"  {time.perf_counter() - t0:.1f} s")
        self.rows = target
        self.base = np.memmap(self.base_path, np.float32, "r", shape=(self.rows, args.dim))
        self.queries = np.fromfile(self.q_path, np.float32).reshape(args.nq, args.dim)
        self.q_norm = self.queries / np.linalg.norm(self.queries, axis=1, keepdims=True)
        norms_path = os.path.join(w, "norms.f32")
        if not os.path.exists(norms_path) or os.path.getsize(norms_path) != 4 * self.rows:
            np.concatenate([np.linalg.norm(self.base[lo:lo + BLOCK], axis=1)
                            for lo in range(0, self.rows, BLOCK)]).astype(np.float32).tofile(norms_path)
        self.norms = np.fromfile(norms_path, np.float32)

    def gt_path(self, n):
        return os.path.join(self.args.work, "gt.i32" if n == self.rows else f"gt_n{n}.i32")

    def gt(self, n):
        """Exact top-k (k = --k) by cosine over the first n rows, cached."""
        p, k = self.gt_path(n), self.args.k
        if os.path.exists(p) and os.path.getsize(p) == 4 * self.args.nq * k:
            return np.fromfile(p, np.int32).reshape(self.args.nq, k)
        t0 = time.perf_counter()
        log(f"exact ground truth over {n} rows (top-{k} by cosine, numpy)")
        g = exact_topk(self.base, self.q_norm, n, k, self.args.threads)
        g.tofile(p)
        log(f"  {time.perf_counter() - t0:.1f} s")
        return g

    def normalised(self, n, width):
        """float32 [n, width]: the L2-normalised prefix of width `width` of the first n rows."""
        out = np.empty((n, width), np.float32)
        for lo in range(0, n, BLOCK):
            blk = np.array(self.base[lo:min(n, lo + BLOCK), :width], np.float32)
            blk /= np.maximum(np.linalg.norm(blk, axis=1, keepdims=True), 1e-30)
            out[lo:lo + len(blk)] = blk
        return out

    def rerank(self, q_norm, cand, k):
        """Exact cosine re-rank at full width of candidate ids [m, S] (-1 = none)."""
        c = np.where(cand < 0, 0, cand).astype(np.int64)
        rows = self.base[c.ravel()].reshape(c.shape[0], c.shape[1], -1)
        s = np.matmul(rows, q_norm[:, :, None])[..., 0] / self.norms[c]
        s[cand < 0] = -np.inf
        kk = min(k, s.shape[1])
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        order = np.argsort(-np.take_along_axis(s, top, 1), axis=1)
        return np.take_along_axis(c, np.take_along_axis(top, order, 1), 1)


def recall_at(got, gt, k):
    got = np.asarray(got)[:, :k]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(got, gt[:, :k])]))


# --- process memory --------------------------------------------------------------

_libc = ctypes.CDLL("libc.so.6")


def rss_bytes():
    gc.collect()
    _libc.malloc_trim(0)
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# --- peers -----------------------------------------------------------------------

def peer_modules(venv):
    """hnswlib and usearch from PyPI in a venv made here on first use (not in CI)."""
    site = os.path.join(venv, "lib", "python3*", "site-packages")
    if not all(glob.glob(os.path.join(site, m)) for m in ("usearch", "hnswlib*", "faiss")):
        log(f"creating {venv} and installing hnswlib, usearch and faiss-cpu from PyPI")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True)
        subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--disable-pip-version-check",
                        "-q", "hnswlib", "usearch", "faiss-cpu"], check=True, capture_output=True)
    site = glob.glob(site)[0]
    if site not in sys.path:
        sys.path.append(site)  # after the system's: Debian's numpy and faiss stay the ones imported


def run_faiss_pypi(args, prefix):
    """FAISS from PyPI (faiss-cpu, built with AVX2/AVX-512, against numpy 2) cannot share this
    process with Debian's numpy: this script runs again under the venv's python for the FAISS
    engines of one configuration, on the same cached data; returns its engine results."""
    py = os.path.join(args.venv, "bin", "python")
    out = os.path.join(args.work, f"faiss-pypi-{'prefix' if prefix else 'full'}.json")
    cmd = [py, os.path.abspath(__file__), "--worker", "--no-pypi", "--no-franca", "--configs",
           "prefix" if prefix else "full", "--engines", "faiss-hnsw,faiss-ivf", "--engines-prefix",
           "faiss-hnsw,faiss-ivf", "--json", out, "--venv", args.venv]
    for key in ("n", "dim", "nq", "k", "clusters", "tau", "noise", "seed", "work", "threads", "full_n", "width",
                "shortlist", "m", "m_full", "faiss_m", "efc", "ef", "prefix_ef", "nlist", "nprobe", "rounds",
                "single_seconds", "min_single", "batch_seconds", "build_budget"):
        v = getattr(args, key)
        if v is not None:
            cmd += ["--" + key.replace("_", "-"), str(v)]
    log("  FAISS from PyPI, in the venv: " + " ".join(cmd[:2]) + " ...")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS=str(args.threads))
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=None, env=env)
    if p.returncode != 0:
        return [{"name": "FAISS (PyPI faiss-cpu)", "family": "FAISS PyPI", "error": f"worker exit {p.returncode}"}]
    res = json.load(open(out))["results"][0]["engines"]
    for e in res:
        e["family"] = "FAISS PyPI"
    return res


def pkg_version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return "?"


class BudgetExceeded(Exception):
    pass


def add_in_chunks(add, x, budget_s, label):
    """add(lo, hi) over chunks of x, stopping when the build passes budget_s."""
    n = len(x)
    step = max(10000, n // 20)
    t0 = time.perf_counter()
    for lo in range(0, n, step):
        add(lo, min(n, lo + step))
        el = time.perf_counter() - t0
        if el > budget_s and lo + step < n:
            raise BudgetExceeded(f"{label}: build stopped at the time budget ({budget_s:.0f} s): "
                                 f"{min(n, lo + step)} of {n} vectors in {el:.0f} s")


def faiss_label(faiss):
    """'FAISS 1.7.3 (Debian, generic build)' or 'FAISS 1.15.1 (PyPI faiss-cpu, AVX512)'."""
    opts = faiss.get_compile_options() if hasattr(faiss, "get_compile_options") else ""
    simd = next((f for f in ("AVX512", "AVX2") if f in opts.split()), "generic build")
    src = "Debian" if faiss.__file__.startswith("/usr/lib/python3/") else "PyPI faiss-cpu"
    return f"FAISS {faiss.__version__} ({src}, {simd})"


class FaissHNSW:
    family = "FAISS HNSW"

    def __init__(self, m, efc, threads):
        import faiss
        self.faiss, self.m, self.efc, self.T = faiss, m, efc, threads
        self.name = f"{faiss_label(faiss)} IndexHNSWFlat M={m} efC={efc}"
        self.knob = "ef"

    def build(self, x, budget):
        self.faiss.omp_set_num_threads(self.T)
        self.index = self.faiss.IndexHNSWFlat(x.shape[1], self.m, self.faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = self.efc
        add_in_chunks(lambda lo, hi: self.index.add(x[lo:hi]), x, budget, self.name)

    def set(self, ef, k):
        self.index.hnsw.efSearch = max(ef, k)
        return max(ef, k)

    def search(self, q, k, threads):
        self.faiss.omp_set_num_threads(threads)
        return self.index.search(q, k)[1]

    def free(self):
        del self.index


class FaissIVF:
    family = "FAISS IVF"

    def __init__(self, nlist, threads):
        import faiss
        self.faiss, self.nlist, self.T = faiss, nlist, threads
        self.name = f"{faiss_label(faiss)} IndexIVFFlat nlist={nlist}"
        self.knob = "nprobe"

    def build(self, x, budget):
        f = self.faiss
        f.omp_set_num_threads(self.T)
        self.quantizer = f.IndexFlatIP(x.shape[1])
        self.index = f.IndexIVFFlat(self.quantizer, x.shape[1], self.nlist, f.METRIC_INNER_PRODUCT)
        self.index.cp.niter = 10
        sample = np.random.default_rng(7).choice(len(x), min(len(x), 32 * self.nlist), replace=False)
        self.index.train(x[np.sort(sample)])
        add_in_chunks(lambda lo, hi: self.index.add(x[lo:hi]), x, budget, self.name)

    def set(self, nprobe, k):
        self.index.nprobe = nprobe
        return nprobe

    def search(self, q, k, threads):
        self.faiss.omp_set_num_threads(threads)
        return self.index.search(q, k)[1]

    def free(self):
        del self.index, self.quantizer


class Hnswlib:
    family = "hnswlib"

    def __init__(self, m, efc, threads):
        import hnswlib
        self.lib, self.m, self.efc, self.T = hnswlib, m, efc, threads
        self.name = f"hnswlib {pkg_version('hnswlib')} M={m} efC={efc}"
        self.knob = "ef"

    def build(self, x, budget):
        self.index = self.lib.Index(space="ip", dim=x.shape[1])
        self.index.init_index(max_elements=len(x), M=self.m, ef_construction=self.efc, random_seed=1)
        add_in_chunks(lambda lo, hi: self.index.add_items(x[lo:hi], np.arange(lo, hi), num_threads=self.T),
                      x, budget, self.name)

    def set(self, ef, k):
        self.index.set_ef(max(ef, k))
        return max(ef, k)

    def search(self, q, k, threads):
        return self.index.knn_query(q, k=k, num_threads=threads)[0].astype(np.int64)

    def free(self):
        del self.index


class USearch:
    family = "usearch"

    def __init__(self, m, efc, threads):
        from usearch.index import Index
        self.Index, self.m, self.efc, self.T = Index, m, efc, threads
        self.name = f"usearch {pkg_version('usearch')} f32 M={m} efC={efc}"
        self.knob = "ef"

    def build(self, x, budget):
        self.index = self.Index(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=self.m,
                                expansion_add=self.efc, expansion_search=64)
        add_in_chunks(lambda lo, hi: self.index.add(np.arange(lo, hi), x[lo:hi], threads=self.T),
                      x, budget, self.name)

    def set(self, ef, k):
        self.index.expansion_search = max(ef, k)
        return max(ef, k)

    def search(self, q, k, threads):
        r = self.index.search(q, k, threads=threads)
        keys = np.asarray(r.keys, np.int64)
        return keys.reshape(1, -1) if keys.ndim == 1 else keys

    def free(self):
        del self.index


def prefix_ceiling(ds, x, q, gt, k, sizes):
    """The design's ceiling: recall@k of exact top-S on the normalised prefix, re-ranked
    exactly at full width, for each S in sizes (numpy, in chunks of queries)."""
    smax = max(sizes)
    got = {S: [] for S in sizes}
    for lo in range(0, len(q), 50):
        s = q[lo:lo + 50] @ x.T
        top = np.argpartition(-s, smax - 1, axis=1)[:, :smax]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), axis=1), 1)
        for S in sizes:
            got[S].append(ds.rerank(ds.q_norm[lo:lo + 50], top[:, :S], k))
    return {S: recall_at(np.concatenate(got[S]), gt, k) for S in sizes}


# --- timing ----------------------------------------------------------------------

def measure(eng, cfg, ds, knob, args):
    """One point: recall, single-query p50/p99 (ms) and batched q/s."""
    k = args.k
    T = args.threads
    ksearch = cfg["shortlist"] if cfg["prefix"] else k
    eff = eng.set(knob, ksearch)
    q = cfg["q"]
    qn = ds.q_norm
    nq = len(q)
    pool = cfg["pool"]

    def answer_batch():
        ids = eng.search(q, ksearch, T)
        if not cfg["prefix"]:
            return ids
        chunks = [(lo, min(nq, lo + 64)) for lo in range(0, nq, 64)]
        parts = pool.map(lambda c: ds.rerank(qn[c[0]:c[1]], ids[c[0]:c[1]], k), chunks)
        return np.concatenate(list(parts))

    def answer_one(i):
        ids = eng.search(q[i:i + 1], ksearch, 1)
        t1 = time.perf_counter()
        if cfg["prefix"]:
            ds.rerank(qn[i:i + 1], ids, k)
        return t1

    answer_one(0)
    lat, lat_ann = [], []
    t_start = time.perf_counter()
    for i in range(nq):
        t = time.perf_counter()
        t1 = answer_one(i)
        t2 = time.perf_counter()
        lat.append(t2 - t)
        lat_ann.append(t1 - t)
        if len(lat) >= args.min_single and t2 - t_start > args.single_seconds:
            break
    p50, p99 = pcts(lat)
    ids = answer_batch()
    t0 = time.perf_counter()
    done = 0
    while True:
        answer_batch()
        done += nq
        if time.perf_counter() - t0 >= args.batch_seconds:
            break
    qps = done / (time.perf_counter() - t0)
    return {"knob": knob, "ef_eff": eff, "recall": recall_at(ids, cfg["gt"], k), "p50_ms": p50, "p99_ms": p99,
            "p50_ann_ms": pcts(lat_ann)[0],
            "qps_single": 1000.0 / float(np.mean(np.asarray(lat) * 1000)), "qps_batch": qps, "n_single": len(lat)}


# --- ours ------------------------------------------------------------------------

def parse_franca(text):
    """The driver's stdout: a first JSON line {"build_s", "rss_mib", "bytes_per_vector"}, then one
    JSON line per ef {"ef", "recall", "p50_ms", "p99_ms", "qps_single", "qps_batch"}; other lines
    are ignored. Returns (build, [points]) or raises ValueError."""
    build, points = None, []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            o = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "build_s" in o:
            build = o
        elif "ef" in o and "recall" in o:
            for key in ("p50_ms", "p99_ms", "qps_single", "qps_batch"):
                o.setdefault(key, float("nan"))
            points.append(o)
    if build is None:
        raise ValueError("no build line (a JSON object with build_s)")
    if not points:
        raise ValueError("no ef lines")
    return build, points


def run_franca(args, ds, cfg, m):
    n = cfg["n"]
    width = args.width if cfg["prefix"] else args.dim
    efs = cfg["knobs"]
    cmd = [args.franca_bin, "--base", ds.base_path, "--queries", ds.q_path, "--gt", ds.gt_path(n), "--n", str(n),
           "--dim", str(args.dim), "--nq", str(args.nq), "--k", str(args.k), "--width", str(width), "--m", str(m),
           "--efc", str(args.efc), "--ef", ",".join(map(str, efs)), "--threads", str(args.threads),
           "--shortlist", str(cfg["shortlist"] if cfg["prefix"] else args.k)]
    log("  ours: " + " ".join(cmd))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.franca_timeout)
    except subprocess.TimeoutExpired:
        return {"name": f"Franca bench_hnsw M={m}", "error": f"timed out after {args.franca_timeout} s", "cmd": cmd}
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"name": f"Franca bench_hnsw M={m}", "error": f"exit {p.returncode}: {p.stderr.strip()[-300:]}",
                "cmd": cmd}
    try:
        build, points = parse_franca(p.stdout)
    except ValueError as e:
        return {"name": f"Franca bench_hnsw M={m}", "error": f"unparsable output ({e}): {p.stdout[:300]!r}",
                "cmd": cmd}
    pts = [{"knob": o["ef"], "ef_eff": o["ef"], "recall": o["recall"], "p50_ms": o["p50_ms"], "p99_ms": o["p99_ms"],
            "qps_single": o["qps_single"], "qps_batch": o["qps_batch"]} for o in points]
    bpv = build.get("bytes_per_vector")
    if bpv is None and build.get("rss_mib") is not None:
        bpv = build["rss_mib"] * 2 ** 20 / n
    log(f"  ours: build {build['build_s']:.1f} s, {bpv} bytes/vector, {len(pts)} points, {wall:.0f} s wall")
    kernel = f", {build['kernel']} kernel" if build.get("kernel") else ""
    return {"name": f"Franca bench_hnsw M={m} efC={args.efc}{kernel}" + (f" (width {width}, shortlist {cfg['shortlist']})"
                                                                  if cfg["prefix"] else ""),
            "family": "Franca", "ours": True, "knob": "ef", "build_s": build["build_s"], "bytes_per_vector": bpv,
            "rss_mib": build.get("rss_mib"), "points": pts, "cmd": cmd}


# --- one configuration -----------------------------------------------------------

def run_config(args, ds, prefix):
    n = args.n if prefix else min(args.n, args.full_n)
    width = args.width if prefix else args.dim
    gt = ds.gt(n)
    log(f"\n== configuration {'prefix' if prefix else 'full'}: n = {n}, index width {width}"
        + (f", shortlist {args.shortlist}, exact re-rank at {args.dim}" if prefix else ""))
    x = ds.normalised(n, width)
    q = ds.q_norm[:, :width] / np.linalg.norm(ds.q_norm[:, :width], axis=1, keepdims=True)
    q = np.ascontiguousarray(q, np.float32)
    knobs = [int(v) for v in (args.prefix_ef if prefix else args.ef).split(",")]
    nlist = args.nlist or int(round(4 * np.sqrt(n)))
    cfg = {"prefix": prefix, "n": n, "width": width, "q": q, "gt": gt, "shortlist": args.shortlist,
           "knobs": knobs, "pool": concurrent.futures.ThreadPoolExecutor(args.threads)}
    ms = [int(v) for v in (args.m if prefix else (args.m_full or args.m)).split(",")]
    fams = set((args.engines_prefix if prefix else args.engines).split(","))
    faiss_ms = [int(v) for v in (args.faiss_m or ",".join(map(str, ms))).split(",")]
    engines = []
    if not args.no_faiss and "faiss-hnsw" in fams:
        engines += [FaissHNSW(m, args.efc, args.threads) for m in faiss_ms]
    if not args.no_pypi and "hnswlib" in fams:
        engines += [Hnswlib(m, args.efc, args.threads) for m in ms]
    if not args.no_pypi and "usearch" in fams:
        engines += [USearch(m, args.efc, args.threads) for m in ms]
    if not args.no_faiss and "faiss-ivf" in fams:
        engines.append(FaissIVF(nlist, args.threads))
    openblas_threads(1)  # FAISS runs its OpenMP threads over a 1-thread BLAS; the re-rank has its own pool
    results, live = [], []
    for eng in engines:
        r0, t0 = rss_bytes(), time.perf_counter()
        log(f"  building {eng.name} on {n} x {width}")
        try:
            eng.build(x, args.build_budget)
        except BudgetExceeded as e:
            log(f"  {e}")
            results.append({"name": eng.name, "family": eng.family, "error": str(e)})
            try:
                eng.free()
            except AttributeError:
                pass
            continue
        took = time.perf_counter() - t0
        mem = rss_bytes() - r0
        log(f"    {took:.1f} s, {mem / n:.0f} bytes/vector (RSS delta)")
        res = {"name": eng.name, "family": eng.family, "knob": eng.knob, "build_s": took,
               "bytes_per_vector": mem / n, "rounds": []}
        results.append(res)
        live.append((eng, res))
    ceiling = None
    if prefix and not args.worker:
        sizes = sorted({args.k, 2 * args.k, 50, 100, 200, 400, args.shortlist})
        t0 = time.perf_counter()
        ceiling = prefix_ceiling(ds, x, q, gt, args.k, [S for S in sizes if S <= n])
        log(f"  exact prefix top-S re-ranked (the design's ceiling, {time.perf_counter() - t0:.0f} s): "
            + ", ".join(f"S={S}: {r:.3f}" for S, r in ceiling.items()))
    franca, pypi = [], []
    for rnd in range(args.rounds):
        for eng, res in live:
            pts = []
            for kn in knobs if not isinstance(eng, FaissIVF) else [int(v) for v in args.nprobe.split(",")]:
                p = measure(eng, cfg, ds, kn, args)
                pts.append(p)
                log(f"  round {rnd + 1} {eng.name:44s} {eng.knob}={str(kn):>4s} recall {p['recall']:.3f} "
                    f"p50 {p['p50_ms']:7.3f} ms p99 {p['p99_ms']:7.3f} ms  batch {p['qps_batch']:8.0f} q/s")
            res["rounds"].append(pts)
        if rnd == 0 and os.path.exists(args.franca_bin) and not args.no_franca:
            for m in ms:
                franca.append(run_franca(args, ds, cfg, m))
        if rnd == 0 and args.faiss_pypi and not args.worker:
            pypi = run_faiss_pypi(args, prefix)
    if not os.path.exists(args.franca_bin) and not args.no_franca:
        log(f"  ours: {args.franca_bin} not found: not measured in this run")
    for eng, res in live:
        eng.free()
        rounds = res.pop("rounds")
        res["points"] = [{key: (statistics.median([r[i][key] for r in rounds]) if key in
                                ("p50_ms", "p99_ms", "p50_ann_ms", "qps_single", "qps_batch") else rounds[0][i][key])
                          for key in rounds[0][i]} for i in range(len(rounds[0]))]
    del x
    gc.collect()
    cfg["pool"].shutdown()
    return {"config": "prefix" if prefix else "full", "n": n, "width": width, "nlist": nlist,
            "shortlist": args.shortlist if prefix else None, "ceiling": ceiling, "engines": franca + results + pypi}


# --- report ----------------------------------------------------------------------

def fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and v != v) else format(v, spec)


def best_at(e, target):
    """The point of lowest p50 among those with recall >= target (None if none)."""
    ok = [p for p in e.get("points", []) if p["recall"] >= target]
    return min(ok, key=lambda p: p["p50_ms"]) if ok else None


def report(allres, args, ds, machine):
    out = []
    w = out.append
    w(f"Machine: {machine['cpu']} ({machine['flags']}), {args.threads} threads per engine; load at start: "
      f"{machine['load_start']}; at end: {machine['load_end']}.")
    w(f"Data: {ds.gen.describe(args.width)}; d = {args.dim}, nq = {args.nq}, k = {args.k}, cosine; recall@{args.k} "
      f"against exact full-width search. Medians of {args.rounds} alternating rounds (ours: one run, between "
      "rounds 1 and 2). Single = one query per call (p50 / p99 ms; Python call overhead included for peers); "
      f"batched = all {args.nq} queries in one call on {args.threads} threads.")
    w("")
    for r in allres:
        if r["config"] == "full":
            w(f"### Full width: each engine indexes the normalised {args.dim}-d vectors, n = {r['n']}"
              + (f" (scaled down from {args.n}: full-width HNSW builds at {args.n} take too long on this machine)"
                 if r["n"] < args.n else ""))
        else:
            w(f"### Prefix + re-rank (Franca's design): index on the normalised {r['width']}-d prefix, n = {r['n']}, "
              f"shortlist {r['shortlist']} (ef_eff = max(ef, shortlist)), exact cosine re-rank at {args.dim} "
              f"(numpy for the peers)")
        w("")
        w(f"| engine | build s | bytes/vector | ef / nprobe | ef_eff | recall@{args.k} | p50 ms | p99 ms | "
          "single q/s | batched q/s |" + (" ANN stage p50 ms |" if r["config"] == "prefix" else ""))
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if r["config"] == "prefix" else ""))
        for e in r["engines"]:
            if "error" in e:
                w(f"| {e['name']} | {e['error']} | | | | | | | | |")
                continue
            for i, p in enumerate(e["points"]):
                head = (f"| {e['name']} | {fmt(e['build_s'], '.1f')} | {fmt(e['bytes_per_vector'], '.0f')} "
                        if i == 0 else "| | | ")
                w(head + f"| {p['knob']} | {p['ef_eff']} | {p['recall']:.3f} | {fmt(p['p50_ms'], '.3f')} | "
                  f"{fmt(p['p99_ms'], '.3f')} | {fmt(p['qps_single'], '.0f')} | {fmt(p['qps_batch'], '.0f')} |"
                  + (f" {fmt(p.get('p50_ann_ms'), '.3f')} |" if r["config"] == "prefix" else ""))
        if not any(e.get("ours") for e in r["engines"]):
            w("| Franca bench_hnsw | not measured in this run | | | | | | | | |")
        w("")
        if r.get("ceiling"):
            w(f"Design ceiling (exact top-S on the {r['width']}-d prefix, re-ranked at {args.dim}): "
              + ", ".join(f"S = {S}: recall@{args.k} {v:.3f}" for S, v in r["ceiling"].items()) + ".")
            w("")
    w(f"### Headline: at recall@{args.k} >= {args.target}, the fastest setting of each engine")
    w("")
    w("| configuration | engine | setting | recall | p50 ms | p99 ms | batched q/s | build s | bytes/vector |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    summary = []
    for r in allres:
        label = f"{r['config']} (n = {r['n']})"
        peers, ours = [], []
        for e in r["engines"]:
            if "error" in e:
                continue
            p = best_at(e, args.target)
            if p is None:
                w(f"| {label} | {e['name']} | no setting reached {args.target} (best recall "
                  f"{max(q['recall'] for q in e['points']):.3f}) | | | | | {fmt(e['build_s'], '.1f')} | "
                  f"{fmt(e['bytes_per_vector'], '.0f')} |")
                continue
            (ours if e.get("ours") else peers).append((e, p))
            w(f"| {label} | {e['name']} | {e['knob']}={p['knob']} | {p['recall']:.3f} | {p['p50_ms']:.3f} | "
              f"{p['p99_ms']:.3f} | {p['qps_batch']:.0f} | {fmt(e['build_s'], '.1f')} | "
              f"{fmt(e['bytes_per_vector'], '.0f')} |")
        if peers:
            fl = min(peers, key=lambda t: t[1]["p50_ms"])
            fq = max(peers, key=lambda t: t[1]["qps_batch"])
            s = (f"- {label}: fastest peer single query {fl[0]['name']} ({fl[1]['p50_ms']:.3f} ms"
                 + (f", of which its ANN stage {fl[1]['p50_ann_ms']:.3f} ms and the numpy re-rank the rest"
                    if r["config"] == "prefix" and fl[1].get("p50_ann_ms") else "")
                 + f"), batched {fq[0]['name']} ({fq[1]['qps_batch']:.0f} q/s)")
            if ours:
                ol = min(ours, key=lambda t: t[1]["p50_ms"])
                oq = max(ours, key=lambda t: t[1]["qps_batch"])
                s += (f"; ours {ol[1]['p50_ms']:.3f} ms, {oq[1]['qps_batch']:.0f} q/s: latency ours/fastest peer "
                      f"{ol[1]['p50_ms'] / fl[1]['p50_ms']:.2f}x (below 1 = ours faster), q/s ours/fastest peer "
                      f"{oq[1]['qps_batch'] / fq[1]['qps_batch']:.2f}x")
            elif any(e.get("ours") for e in r["engines"]):
                s += "; ours: no setting reached the target or the run failed (see the table)"
            else:
                s += "; ours: not measured in this run"
            summary.append(s)
    w("")
    out += summary
    return "\n".join(out)


def machine_info():
    cpu = "?"
    flags = set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name") and cpu == "?":
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    have = [f for f in ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    return {"cpu": cpu, "flags": ", ".join(have) if have else "no AVX-512", "cores": os.cpu_count(),
            "load_start": uptime()}


def uptime():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1] \
            .strip()
    except OSError:
        return "?"


def main():
    ap = argparse.ArgumentParser(description="ANN benchmark: Franca's bench_hnsw beside FAISS, hnswlib, usearch")
    ap.add_argument("--quick", action="store_true", help="n = 100k (development)")
    ap.add_argument("--n", type=int, default=None, help="base vectors (default 1000000; --quick: 100000)")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--clusters", type=int, default=4096)
    ap.add_argument("--tau", type=float, default=None, help="variance decay length (default dim/8)")
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", default=None, help="cache directory (default /tmp/franca-annbench/<n>x<dim>)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default="full,prefix")
    ap.add_argument("--full-n", type=int, default=None,
                    help="rows for the full-width configuration (default 50000; --quick: 20000; said in the output)")
    ap.add_argument("--width", type=int, default=64, help="prefix width of the prefix configuration")
    ap.add_argument("--shortlist", type=int, default=100, help="prefix candidates re-ranked at full width")
    ap.add_argument("--m", default="16,32", help="HNSW M values (hnswlib, usearch, ours)")
    ap.add_argument("--m-full", default=None, help="HNSW M values at full width (default: --m)")
    ap.add_argument("--faiss-m", default=None, help="HNSW M values for FAISS (default: those of the others)")
    ap.add_argument("--engines", default="faiss-hnsw,faiss-ivf,hnswlib,usearch", help="peers, full width")
    ap.add_argument("--engines-prefix", default="faiss-hnsw,faiss-ivf,hnswlib,usearch", help="peers, prefix")
    ap.add_argument("--efc", type=int, default=200, help="efConstruction (every HNSW engine)")
    ap.add_argument("--ef", default="16,32,64,128,256", help="ef sweep, full width")
    ap.add_argument("--prefix-ef", default="100,150,200,300,400", help="ef sweep, prefix (ef_eff >= shortlist)")
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists (default 4 sqrt(n))")
    ap.add_argument("--nprobe", default="8,16,32,64,128,256")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--single-seconds", type=float, default=1.5, help="time budget of one single-query run")
    ap.add_argument("--min-single", type=int, default=200, help="least single queries per point")
    ap.add_argument("--batch-seconds", type=float, default=1.0, help="least time of one batched run")
    ap.add_argument("--build-budget", type=float, default=900.0, help="seconds a peer's build may take")
    ap.add_argument("--target", type=float, default=0.95, help="recall@k of the headline")
    ap.add_argument("--build", default=os.environ.get("FRANCA_BUILD_ROOT") or os.path.join(ROOT, "build"))
    ap.add_argument("--franca-bin", default=None,
                    help="our driver (default <build>/tests/bench/bench_hnsw or <build>/tests/bench_hnsw)")
    ap.add_argument("--franca-timeout", type=float, default=1800.0)
    ap.add_argument("--venv", default=None, help="venv for hnswlib and usearch (default <build>/venv-annbench)")
    ap.add_argument("--no-faiss", action="store_true")
    ap.add_argument("--no-pypi", action="store_true", help="skip hnswlib and usearch")
    ap.add_argument("--no-franca", action="store_true")
    ap.add_argument("--no-faiss-pypi", dest="faiss_pypi", action="store_false",
                    help="skip FAISS from PyPI (faiss-cpu, run under the venv's python)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prepare-only", action="store_true", help="make the cached data and ground truths, then stop")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--md", help="also write the markdown report to this file")
    args = ap.parse_args()
    if args.n is None:
        args.n = 100000 if args.quick else 1000000
    if args.full_n is None:
        args.full_n = 20000 if args.quick else 50000
    if args.tau is None:
        args.tau = args.dim / 8.0
    args.work = args.work or f"/tmp/franca-annbench/{args.n}x{args.dim}"
    if not args.franca_bin:  # meson puts tests/meson.build's executables in <build>/tests
        cands = [os.path.join(args.build, "tests", "bench", "bench_hnsw"), os.path.join(args.build, "tests", "bench_hnsw")]
        args.franca_bin = next((c for c in cands if os.path.exists(c)), cands[0])
    args.venv = args.venv or os.path.join(args.build, "venv-annbench")
    machine = machine_info()
    if not args.no_pypi or (args.faiss_pypi and not args.worker):
        peer_modules(args.venv)
    if not args.no_faiss:
        try:
            import faiss  # noqa: F401
        except ImportError as e:
            log(f"FAISS unavailable ({e}): apt-get install python3-faiss; FAISS rows left out")
            args.no_faiss = True
    ds = Dataset(args)
    if args.prepare_only:
        for c in (c for c in args.configs.split(",") if c):
            ds.gt(args.n if c == "prefix" else min(args.n, args.full_n))
        return 0
    allres = []
    t0 = time.perf_counter()
    for c in (c for c in args.configs.split(",") if c):
        allres.append(run_config(args, ds, c == "prefix"))
        if args.json:
            json.dump({"args": vars(args), "machine": machine, "results": allres}, open(args.json, "w"), indent=1,
                      default=str)
    machine["load_end"] = uptime()
    text = report(allres, args, ds, machine)
    text += f"\n\n(whole run {time.perf_counter() - t0:.0f} s after the data were ready)"
    print(text)
    if args.md:
        open(args.md, "w").write(text + "\n")
    if args.json:
        json.dump({"args": vars(args), "machine": machine, "results": allres}, open(args.json, "w"), indent=1,
                  default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
