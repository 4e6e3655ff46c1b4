"""Serving benchmark: franca-server (with dynamic batching and with --max-batch 1)
against the Python baseline server (tests/bench/baseline_server.py) around PyTorch
and around OpenVINO, on the same machine, with the same ViT-S/14 weights, at 224 px
on CPU.

The weights are refmodel.make_state_dict(cfg, seed) converted with refmodel.save_pth +
refmodel.convert for franca-server, built by the torch baseline itself and exported
to ONNX (bench_cpu.export_onnx: batch 1, 224 px) for the OpenVINO one, so all
servers run identical weights; before any timing every server must answer two
images with the same embeddings as the first server (cosine distance < 1e-3).
franca-server runs --precision (auto: bf16 on CPUs with AMX or AVX512-BF16); the
OpenVINO baseline asks INFERENCE_PRECISION_HINT --ov-precision (bf16; OpenVINO runs
f32 where the CPU lacks bf16). The labels show the precision each server reports
(GET /v1/models/default: franca-server's precision, OpenVINO's
INFERENCE_PRECISION_HINT after compilation).

Load: small JPEGs (skimage photos resized to 320x240, PIL quality 85), one image per
`POST /v1/embeddings` request; a closed loop of N workers (threads, one keep-alive
http.client connection each) per concurrency point, request bodies encoded once.
Each point warms up (at least --warmup seconds, and until every worker has had an
answer; discarded) and then measures --seconds; throughput counts each request by
the share of its time inside the measured window (completions per second in a
steady state, without the quantisation of counting answers that arrive in waves),
p50/p99 are the latencies of the requests in flight during the window. Servers
run one at a time; the others are stopped. Every server gets --threads inference
threads (OPENBLAS_NUM_THREADS and OMP_NUM_THREADS too). Two baselines: "baseline"
is the one a user would write (torch.set_num_threads(--threads), forwards run
concurrently in http.server's threads); "baseline-tuned" does
torch.set_num_threads(1) (Debian's torch still runs its GEMMs on OpenBLAS's
--threads pool) and one forward at a time. The target is reported against both.
"openvino" is the one a user who wants speed on CPU would write: the same server
running OpenVINO (PERFORMANCE_HINT LATENCY, INFERENCE_NUM_THREADS --threads, one
infer request, one image per forward under a lock, PIL + numpy preprocessing),
under the python of the venv bench_cpu.py uses (--venv, default
BUILD/venv-bench: numpy, onnxruntime, openvino, pillow from PyPI, installed on
first use by bench_cpu.ensure_venv).

usage: /usr/bin/python3 tests/bench/bench_server.py [--threads T] [--seconds 20]
       [--warmup 3] [--concurrency 1,8,32] [--build build/] [--max-batch 16]
       [--max-delay-ms 5] [--dimensions 192] [--rounds 1] [--precision auto|fp32|bf16]
       [--ov-precision bf16|f32] [--venv DIR]
       [--servers batch,single,baseline,baseline-tuned,openvino]
Exit status: 0 when every server started, agreed and answered every request with
200; 1 otherwise.
"""
import argparse
import base64
import http.client
import io
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
sys.path.insert(0, os.path.join(ROOT, "tests", "bench"))
BASELINE = os.path.join(ROOT, "tests", "bench", "baseline_server.py")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
PHOTOS = "/usr/lib/python3/dist-packages/skimage/data"
PHOTO_NAMES = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg",
               "motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg", "coins.png")
ARCH = ("vit_small", 384, 12, 6)  # name, embed_dim, depth, heads
SEED = 0
LS_INIT = 0.1  # large enough that every block moves the CLS (a meaningful agreement check)
GRID = 16      # position grid of franca-checkpoint's vit_small: 224 px needs no interpolation
MAX_COS_DIST = 1e-3
START_TIMEOUT = 300.0
READY = re.compile(r"listening on http://([^:\s]+):(\d+)")
KINDS = ("batch", "single", "baseline", "baseline-tuned", "openvino")
FRANCA_KINDS = ("batch", "single")
MODEL_NAME = "default"


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------- inputs

def make_bodies(dimensions, size=(320, 240), quality=85):
    """JSON request bodies (bytes), one image each, encoded once."""
    from PIL import Image
    bodies = []
    for name in PHOTO_NAMES:
        path = os.path.join(PHOTOS, name)
        if not os.path.exists(path):
            continue
        im = Image.open(path).convert("RGB").resize(size, Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        bodies.append(json.dumps({"input": [uri], "dimensions": dimensions}).encode())
    if len(bodies) < 2:
        raise BenchError("too few photos under %s" % PHOTOS)
    return bodies


def make_weights(tmp, onnx=False):
    """(franca-server checkpoint, ONNX export or None) of the weights the torch
    baseline builds (make_state_dict(SEED, LS_INIT) at GRID)."""
    import refmodel
    _, D, depth, heads = ARCH
    cfg = refmodel.make_config(D, depth, heads, grid=GRID)
    sd = refmodel.make_state_dict(cfg, seed=SEED, ls_init=LS_INIT)
    pth = os.path.join(tmp, "vits14.pth")
    ckpt = os.path.join(tmp, "vits14.safetensors")
    refmodel.save_pth(pth, sd)
    refmodel.convert(pth, ckpt)
    os.remove(pth)
    onnx_path = None
    if onnx:
        import torch
        import bench_cpu
        onnx_path = os.path.join(tmp, "vits14_b1_r224.onnx")
        bench_cpu.export_onnx(refmodel.RefViT(cfg, sd, dtype=torch.float32), 1, 224, onnx_path)
    return ckpt, onnx_path


# --------------------------------------------------------------------------- servers

class Server:
    """A server process on port 0: started, waited for, stopped; its output in a log."""

    def __init__(self, label, cmd, env, log_path):
        self.label, self.cmd, self.env, self.log_path = label, cmd, env, log_path
        self.proc = None
        self.port = None

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self.log,
                                     env=self.env, start_new_session=True)
        found = threading.Event()

        def pump():  # copies stdout to the log, noting the ready line
            for line in self.proc.stdout:
                self.log.write(line)
                self.log.flush()
                m = READY.search(line.decode("utf-8", "replace"))
                if m and not found.is_set():
                    self.port = int(m.group(2))
                    found.set()

        self.pump = threading.Thread(target=pump, daemon=True)
        self.pump.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not found.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                rc = self.stop()
                raise BenchError("%s did not start (exit %s): %s\n%s" % (
                    self.label, rc, " ".join(self.cmd), self.log_tail()))
        return self

    def log_tail(self, n=20):
        try:
            with open(self.log_path, "rb") as f:
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
        except OSError:
            return ""

    def cpu_seconds(self):
        """utime + stime of the server process, from /proc."""
        try:
            with open("/proc/%d/stat" % self.proc.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def stop(self):
        """SIGTERM, then SIGKILL after 30 s; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.pump.join(5)
        self.log.close()
        rc, self.proc = self.proc.returncode, None
        return rc


def server_specs(args, ckpt, onnx, venv_python, tmp):
    """kind -> (label, command, environment); a label's {precision} is filled in with
    what the server reports (model_precision) once it runs."""
    threads = str(args.threads)
    env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
    baseline = [PYTHON, BASELINE, "--port", "0", "--seed", str(SEED), "--ls-init", str(LS_INIT),
                "--grid", str(GRID), "--arch", ARCH[0]]
    franca = [os.path.join(args.build, "server", "franca-server"), "--model", MODEL_NAME + "=" + ckpt,
              "--port", "0", "--data", os.path.join(tmp, "data"), "--threads", threads,
              "--precision", args.precision]
    specs = {
        "batch": ("franca-server (max-batch %d, delay %d ms, {precision})" % (args.max_batch, args.max_delay_ms),
                  franca + ["--max-batch", str(args.max_batch), "--max-delay-ms", str(args.max_delay_ms)]),
        "single": ("franca-server (max-batch 1, {precision})", franca + ["--max-batch", "1"]),
        "baseline": ("Python baseline (torch %s threads)" % threads, baseline + ["--threads", threads]),
        "baseline-tuned": ("Python baseline (torch 1 thread, lock)", baseline + ["--threads", "1", "--lock"]),
    }
    if onnx:
        specs["openvino"] = ("Python + OpenVINO ({precision})",
                             [venv_python, BASELINE, "--backend", "openvino", "--onnx", onnx, "--port", "0",
                              "--ov-precision", args.ov_precision, "--threads", threads])
    return {k: (label, cmd, env) for k, (label, cmd) in specs.items()}


def model_precision(port):
    """GET /v1/models/default: (its precision, the whole answer)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", "/v1/models/" + MODEL_NAME)
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            raise BenchError("GET /v1/models/%s: HTTP %d: %s" % (MODEL_NAME, r.status, data[:300]))
        j = json.loads(data)
        return j.get("precision", "?"), j
    finally:
        c.close()


def post(port, body, timeout=120):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            raise BenchError("HTTP %d: %s" % (r.status, data[:300]))
        return json.loads(data)
    finally:
        c.close()


def cosine_distance(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return 1.0 - dot / (na * nb)


# --------------------------------------------------------------------------- load

def run_point(port, bodies, concurrency, warmup, seconds, server_cpu):
    """Closed loop: each worker sends a request, waits for the answer, repeats.
    The measured window opens once --warmup seconds have passed and every worker
    has had an answer (at high concurrency a slow server's first wave takes longer
    than the warm-up), and closes --seconds later."""
    stop_at = [math.inf]                          # workers send nothing new from here on
    first = [None] * concurrency                  # time of each worker's first answer
    samples = [[] for _ in range(concurrency)]    # (start, end) of each success
    errors = [[] for _ in range(concurrency)]     # (time, message)
    barrier = threading.Barrier(concurrency + 1)

    def worker(i):
        out, errs = samples[i], errors[i]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        hdrs = {"Content-Type": "application/json"}
        clock = time.monotonic
        k = i
        barrier.wait()
        while True:
            t0 = clock()
            if t0 >= stop_at[0]:
                break
            try:
                conn.request("POST", "/v1/embeddings", bodies[k % len(bodies)], hdrs)
                r = conn.getresponse()
                data = r.read()
                t1 = clock()
                if r.status == 200 and data.startswith(b"{"):
                    out.append((t0, t1))
                else:
                    errs.append((t1, "HTTP %d: %s" % (r.status, data[:200])))
            except (OSError, http.client.HTTPException) as e:
                t1 = clock()
                errs.append((t1, "%s: %s" % (type(e).__name__, e)))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            if first[i] is None:
                first[i] = t1
            k += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.monotonic()
    time.sleep(warmup)
    give_up = start + START_TIMEOUT
    while any(f is None for f in first) and time.monotonic() < give_up:
        time.sleep(0.02)
    window = (time.monotonic(), time.monotonic() + seconds)
    cpu0, srv0 = time.process_time(), server_cpu()
    stop_at[0] = window[1]
    for t in threads:
        t.join()
    cpu, srv = time.process_time() - cpu0, server_cpu() - srv0
    # Throughput: each request counts for the share of its time spent inside the
    # window. Equal to completions per second in a steady state, and free of the
    # quantisation that counting completions suffers when answers come in waves
    # (a batch, or a baseline whose concurrent forwards share the cores and end
    # together). Latency: every request that was in flight during the window.
    w0, w1 = window
    done, lat = 0.0, []
    for s in samples:
        for t0, t1 in s:
            if t1 > w0 and t0 < w1:
                done += (min(t1, w1) - max(t0, w0)) / max(t1 - t0, 1e-9)
                lat.append(t1 - t0)
    lat.sort()
    errs = [e for es in errors for e in es]
    return {"rate": done / seconds, "lat": lat, "errors": errs, "loadgen_cpu": cpu, "server_cpu": srv,
            "wall": time.monotonic() - window[0], "window_start": window[0] - start}


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


# --------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="inference threads of every server")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each point")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--build", default=os.environ.get("FRANCA_BUILD_ROOT", os.path.join(ROOT, "build")))
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-delay-ms", type=int, default=5)
    ap.add_argument("--dimensions", type=int, default=192, help="Matryoshka width requested")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the whole cycle of servers (medians of throughput, pooled latencies)")
    ap.add_argument("--servers", default=",".join(KINDS),
                    help="which servers, in order (%s)" % ", ".join(KINDS))
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                    help="franca-server --precision")
    ap.add_argument("--ov-precision", default="bf16", choices=("bf16", "f32"),
                    help="the OpenVINO baseline's INFERENCE_PRECISION_HINT (f32 where the CPU lacks bf16)")
    ap.add_argument("--venv", default=None,
                    help="venv with openvino and pillow for the OpenVINO baseline (default BUILD/venv-bench, "
                         "made by bench_cpu.ensure_venv on first use)")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    order = args.servers.split(",")
    unknown = [k for k in order if k not in KINDS]
    if unknown:
        ap.error("unknown server %s (choose from %s)" % (unknown, ",".join(KINDS)))
    binary = os.path.join(args.build, "server", "franca-server")
    if any(k in FRANCA_KINDS for k in order) and not os.access(binary, os.X_OK):
        print("bench_server: %s not found (build first: meson compile -C %s)" % (binary, args.build),
              file=sys.stderr)
        return 1

    tmp = tempfile.mkdtemp(prefix="bench_server_")
    servers = []
    try:
        bodies = make_bodies(args.dimensions)
        venv_python = None
        if "openvino" in order:
            import bench_cpu
            venv_python = bench_cpu.ensure_venv(args.venv or os.path.join(args.build, "venv-bench"))
        ckpt, onnx = make_weights(tmp, onnx="openvino" in order)
        specs = server_specs(args, ckpt, onnx, venv_python, tmp)
        print("machine: %d cores; %s; threads per server %d; %d JPEGs 320x240 q85 (%d-%d bytes of JSON "
              "each), width %d; %g s warm-up + %g s per point" % (
                  os.cpu_count(), "ViT-S/14 at 224 px, CPU, precision per server in its label",
                  args.threads, len(bodies), min(map(len, bodies)), max(map(len, bodies)),
                  args.dimensions, args.warmup, args.seconds),
              flush=True)

        # Agreement before timing: all servers up, two images, compared with the first server.
        # Labels get the precision each server reports.
        labels = {}
        ref = {}  # body -> (label, embedding) of the first server
        worst = {}  # label -> largest cosine distance to the first server
        for key in order:
            label, cmd, env = specs[key]
            s = Server(label.format(precision="?"), cmd, env, os.path.join(tmp, key + ".log")).start()
            servers.append(s)
            precision, info = model_precision(s.port)
            s.label = labels[key] = label.format(precision=precision)
            notes = ["precision %s" % precision]
            if info.get("compute_precision") not in (None, precision):
                notes.append("its matrix products run %s" % info["compute_precision"])
            if "threads" in info:
                notes.append("%d inference threads" % info["threads"])
            print("  %s: %s" % (s.label, ", ".join(notes)), flush=True)
        for s in servers:
            for b in bodies[:2]:
                emb = post(s.port, b)["data"][0]["embedding"]
                if len(emb) != args.dimensions:
                    raise BenchError("%s answered width %d, asked %d" % (s.label, len(emb), args.dimensions))
                if b not in ref:
                    ref[b] = (s.label, emb)
                    continue
                d = cosine_distance(ref[b][1], emb)
                worst[s.label] = max(worst.get(s.label, 0.0), d)
                if d > MAX_COS_DIST:
                    raise BenchError("%s and %s disagree: cosine distance %.3g > %g" % (
                        s.label, ref[b][0], d, MAX_COS_DIST))
        print("agreement: all %d servers return the same embeddings (cosine distance < %g; to %s: %s)" % (
            len(servers), MAX_COS_DIST, servers[0].label,
            ", ".join("%s %.2g" % (k, v) for k, v in worst.items()) or "-"), flush=True)
        for s in servers:
            s.stop()
        servers = []

        results = {}  # (key, concurrency) -> list of per-round results
        failed = False
        for rnd in range(args.rounds):
            for key in order:
                _, cmd, env = specs[key]
                label = labels[key]
                s = Server(label, cmd, env, os.path.join(tmp, key + ".log")).start()
                servers.append(s)
                for c in levels:
                    r = run_point(s.port, bodies, c, args.warmup, args.seconds, s.cpu_seconds)
                    results.setdefault((key, c), []).append(r)
                    if r["errors"]:
                        failed = True
                        print("  %s c=%d: %d errors, first: %s" % (label, c, len(r["errors"]),
                                                                  r["errors"][0][1]), flush=True)
                    print("  round %d  %-40s c=%-3d %7.2f img/s  p50 %7.1f ms  p99 %7.1f ms  "
                          "(window opened after %.1f s)" % (
                              rnd + 1, label, c, r["rate"], 1000 * percentile(r["lat"], 50),
                              1000 * percentile(r["lat"], 99), r["window_start"]), flush=True)
                rc = s.stop()
                servers.remove(s)
                if rc != 0:
                    print("  %s exited with status %s on SIGTERM" % (label, rc), flush=True)
                    failed = True

        # Report.
        print()
        print("| server | concurrency | images/s | p50 ms | p99 ms | errors | server CPU % | load-gen CPU % |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        tput = {}
        for key in order:
            for c in levels:
                rs = results[(key, c)]
                tput[(key, c)] = statistics.median(r["rate"] for r in rs)
                lat = sorted(l for r in rs for l in r["lat"])
                wall = sum(r["wall"] for r in rs)
                print("| %s | %d | %.2f | %.1f | %.1f | %d | %.0f | %.1f |" % (
                    labels[key], c, tput[(key, c)], 1000 * percentile(lat, 50), 1000 * percentile(lat, 99),
                    sum(len(r["errors"]) for r in rs), 100 * sum(r["server_cpu"] for r in rs) / wall,
                    100 * sum(r["loadgen_cpu"] for r in rs) / wall))
        print()
        bases = [k for k in ("baseline", "baseline-tuned", "openvino") if k in order]
        ours = [k for k in FRANCA_KINDS if k in order]
        for key in ours:
            for base in bases:
                ratios = ["c=%d: %s" % (c, "%.2fx" % (tput[(key, c)] / tput[(base, c)])
                                        if tput[(base, c)] > 0 else "n/a") for c in levels]
                print("%s / %s: %s" % (labels[key], labels[base], ", ".join(ratios)))
        if "batch" in ours and 8 in levels:
            for base in bases:
                if base != "openvino" and tput[(base, 8)] > 0:  # the target is against the torch baselines
                    ratio = tput[("batch", 8)] / tput[(base, 8)]
                    print("target (issue 3, >= 1.5x the baseline at concurrency 8) against %s: %.2fx, %s" % (
                        labels[base], ratio, "met" if ratio >= 1.5 else "NOT met"))
        print("caveat: the load generator (this process, Python threads) runs on the same %d cores as the "
              "server; its CPU share is in the last column (%% of one core), server CPU %% can exceed 100 "
              "with several threads. Bodies are pre-encoded and responses are not parsed during the "
              "load." % os.cpu_count())
        return 1 if failed else 0
    except (BenchError, OSError, RuntimeError, subprocess.SubprocessError) as e:
        print("bench_server: %s" % e, file=sys.stderr)
        return 1
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
