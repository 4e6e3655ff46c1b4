"""CPU benchmark: franca-embed against PyTorch, ONNX Runtime and OpenVINO on the
same machine, the same thread count and the same (random) weights.

Engines (names for --skip; "franca" or "ov" leave out both of a pair):
  franca-fp32   franca-embed --bench --precision fp32
  franca-bf16   franca-embed --bench --precision bf16 (only where mm_bench --peak
                reports a bf16 rate, i.e. on AVX-512)
  torch         Debian's PyTorch 1.13 running tests/reference/refmodel.py, fp32;
                its GEMMs run on OpenBLAS's own pool beside its OpenMP pool, so
                torch.set_num_threads(1) and (T) are both tried (with
                OPENBLAS_NUM_THREADS=T) and the faster is used
  ort           ONNX Runtime, fp32 (intra-op T threads, inter-op 1, sequential,
                all graph optimisations)
  ov-fp32       OpenVINO CPU, INFERENCE_PRECISION_HINT f32, LATENCY, T threads
  ov-bf16       OpenVINO CPU, INFERENCE_PRECISION_HINT bf16; OpenVINO falls back
                to f32 where the CPU lacks native bf16: the precision its compute
                layers run in is printed and labels the column

ONNX Runtime and OpenVINO come from PyPI into a venv of their own (--venv,
default BUILD/venv-bench; with pillow, for bench_server.py's OpenVINO baseline),
made with /usr/bin/python3 -m venv and filled by pip on first use (or when one of
them is missing), reused afterwards; they run there as subprocesses
(tests/bench/bench_cpu_runtimes.py). The weights (refmodel.make_state_dict) are
converted for franca-embed and exported with torch.onnx.export (opset 17, one
file per model and batch) for ORT and OpenVINO.

Before timing, on one batch of random input per (model, batch): ORT's outputs
must equal the fp32 RefViT's within 1e-4 relative (max abs error / max abs
value) and franca-embed's fp32 CLS must equal ORT's within 1e-4; OpenVINO fp32
is reported against the same bound; for franca-embed bf16 and OpenVINO bf16 the
smallest row cosine of CLS and patch tokens to the float64 RefViT is printed.

Each measurement runs about 3 s (iterations from a short trial, or --iters);
the engines alternate for --rounds rounds and medians are reported, as images/s,
the ratios franca / OpenVINO and GFLOP/s (the engine's vit_flops_per_image) as a
percentage of the machine's matmul limit measured in the same run by
build/tests/mm_bench --peak T (fp32 and bf16). The table is printed again as
markdown for docs/benchmarks.md. With --native-blas-kernel, OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE are unset for every engine alike.

usage: /usr/bin/python3 tests/bench/bench_cpu.py [--threads T] [--iters N]
       [--rounds 3] [--models vit_small,vit_base] [--batches 1,8]
       [--resolution 224] [--build DIR] [--venv DIR] [--skip ENGINE,...]
       [--native-blas-kernel] [--quick]
  --quick: vit_small, batch 1, 1 round, 2 iterations (checks that it all runs)
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REF_DIR = os.path.join(ROOT, "tests", "reference")
RUNTIMES = os.path.join(ROOT, "tests", "bench", "bench_cpu_runtimes.py")
sys.path.insert(0, REF_DIR)
import refmodel  # noqa: E402

ARCHS = {  # name: (D, depth, heads) of the ViT-*/14 family
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}
ENGINES = ("franca-fp32", "franca-bf16", "torch", "ort", "ov-fp32", "ov-bf16")
VENV_ENGINES = ("ort", "ov-fp32", "ov-bf16")
VENV_PACKAGES = ("numpy", "onnxruntime", "openvino", "pillow")  # pillow: baseline_server.py
VENV_IMPORTS = "import numpy, onnxruntime, openvino, PIL"
SEED = 0
TARGET_S = 3.0  # seconds per measurement
FP32_TOL = 1e-4
OPSET = 17

# Runs in a fresh interpreter so that thread settings take effect from the start.
TORCH_TIMER = r"""
import sys, time, json, torch
sys.path.insert(0, sys.argv[1])
import refmodel
cfg = json.loads(sys.argv[3]); batch, res, iters, threads = map(int, sys.argv[4:8])
torch.set_num_threads(threads)
# The same weights as the engine's checkpoint (deterministic for the seed); built
# here rather than read with torch.load, which leaves this torch measurably slower.
sd = refmodel.make_state_dict(cfg, seed=int(sys.argv[2]), ls_init=0.1)
model = refmodel.RefViT(cfg, sd, dtype=torch.float32)
x = torch.randn(batch, 3, res, res)
with torch.inference_mode():
    for _ in range(2):
        model.forward_features(x)
    t0 = time.perf_counter()
    for _ in range(iters):
        model.forward_features(x)
    print(batch * iters / (time.perf_counter() - t0))
"""


# --------------------------------------------------------------------------- arguments, helpers

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--iters", type=int, default=0, help="iterations per measurement (default: ~3 s)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="vit_small,vit_base")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--build", default=os.environ.get("FRANCA_BUILD_ROOT", os.path.join(ROOT, "build")))
    ap.add_argument("--venv", default=None, help="venv for onnxruntime/openvino (default BUILD/venv-bench)")
    ap.add_argument("--skip", default="", help="engines to leave out: " + ",".join(ENGINES))
    ap.add_argument("--native-blas-kernel", action="store_true")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.models, args.batches, args.rounds, args.iters = args.models.split(",")[0], "1", 1, 2
    args.venv = args.venv or os.path.join(args.build, "venv-bench")
    args.models = args.models.split(",")
    args.batches = [int(b) for b in args.batches.split(",")]
    unknown = [m for m in args.models if m not in ARCHS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {', '.join(ARCHS)}")
    skip = [s for s in args.skip.split(",") if s]
    args.engines = [e for e in ENGINES if not any(e == s or e.startswith(s + "-") for s in skip)]
    return args


def last_value(text, key):
    for line in reversed(text.splitlines()):
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    raise RuntimeError(f"no '{key}' line in:\n{text}")


def run(cmd, env, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, **kw)
    if p.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p.stdout


def flops_per_image(cfg, res):
    """engine/vit.c's vit_flops_per_image for an res x res input."""
    P, D, Hs = cfg["patch_size"], cfg["embed_dim"], cfg["ffn_hidden"]
    N = (res // P) ** 2
    T = 1 + cfg["register_tokens"] + N
    ffn = (3 if cfg["ffn"] == "swiglu" else 2) * D * Hs
    per_block = 2 * T * (4 * D * D + ffn) + 4 * T * T * D
    return 2 * N * 3 * P * P * D + cfg["depth"] * per_block


def rel_err(a, ref):
    return refmodel.rel_err(a, ref)


def min_cosine(a, ref):
    """Smallest cosine between corresponding rows (last axis) of a and ref."""
    a = np.asarray(a, np.float64).reshape(-1, np.shape(a)[-1])
    r = np.asarray(ref, np.float64).reshape(-1, np.shape(ref)[-1])
    cos = (a * r).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(r, axis=1))
    return float(cos.min())


# --------------------------------------------------------------------------- machine, venv

def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def machine_limits(build, threads, env):
    """mm_bench --peak: (its NxNxN line, fp32 GFLOP/s, bf16 GFLOP/s)."""
    out = run([os.path.join(build, "tests", "mm_bench"), "--peak", threads], env)
    line = next((l for l in out.splitlines() if "x" in l.split(":")[0] and "GFLOP/s" in l), "")
    return line, float(last_value(out, "fp32 GFLOP/s")), float(last_value(out, "bf16 GFLOP/s"))


def ensure_venv(path):
    """The venv's python, with VENV_PACKAGES (installed when an import is missing)."""
    py = os.path.join(path, "bin", "python")
    if not os.path.exists(py):
        print(f"creating venv {path}", flush=True)
        subprocess.run(["/usr/bin/python3", "-m", "venv", path], check=True)
    if subprocess.run([py, "-c", VENV_IMPORTS], capture_output=True).returncode:
        print(f"installing {' '.join(VENV_PACKAGES)} into {path}", flush=True)
        subprocess.run([py, "-m", "pip", "install", "--quiet", *VENV_PACKAGES], check=True)
    return py


def venv_call(py, env, *args):
    """Runs bench_cpu_runtimes.py in the venv; its JSON result."""
    return json.loads(run([py, RUNTIMES, *args], env).strip().splitlines()[-1])


# --------------------------------------------------------------------------- models

class Row:
    """One (model, batch) of the benchmark: paths, settings and results."""

    def __init__(self, args, env, py, name, cfg, ckpt, onnx, batch):
        self.args, self.env, self.py = args, env, py
        self.name, self.cfg, self.ckpt, self.onnx, self.batch = name, cfg, ckpt, onnx, batch
        self.res, self.threads = args.resolution, args.threads
        self.flops = flops_per_image(cfg, args.resolution)
        self.ips, self.gflops, self.notes = {}, {}, []
        self.ov_bf16_precision = None


def prepare_weights(name, tmp):
    """(cfg, state dict, franca-embed checkpoint) of model name."""
    D, depth, heads = ARCHS[name]
    cfg = refmodel.make_config(D, depth, heads, grid=16)
    sd = refmodel.make_state_dict(cfg, seed=SEED, ls_init=0.1)
    pth, ckpt = os.path.join(tmp, name + ".pth"), os.path.join(tmp, name + ".safetensors")
    refmodel.save_pth(pth, sd)
    refmodel.convert(pth, ckpt)
    os.remove(pth)
    return cfg, sd, ckpt


class Features(torch.nn.Module):
    """RefViT.forward_features as (cls, patch), for torch.onnx.export."""

    def __init__(self, ref):
        super().__init__()
        self.ref = ref

    def forward(self, x):
        out = self.ref.forward_features(x)
        return out["cls"], out["patch"]


def export_onnx(model32, batch, res, path):
    x = torch.randn(batch, 3, res, res)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Features(model32), x, path, opset_version=OPSET, input_names=["x"],
                          output_names=["cls", "patch"], do_constant_folding=True)


def engine_isa(args, env, ckpt):
    """The "cpu isa" line of franca-embed --bench."""
    out = run([os.path.join(args.build, "engine", "franca-embed"), "--model", ckpt, "--bench",
               "--batch", 1, "--resolution", args.resolution, "--iters", 1, "--threads", args.threads],
              env)
    return last_value(out, "cpu isa")


# --------------------------------------------------------------------------- parity

def check(name, ok, detail, required=True):
    print(f"  {'PASS' if ok else ('FAIL' if required else 'WARN')} {name}: {detail}", flush=True)
    if required and not ok:
        raise SystemExit(f"parity check failed: {name}")


def runtime_outputs(row, engine, x_path, tmp):
    out_path = os.path.join(tmp, f"{engine}.npz")
    info = venv_call(row.py, row.env, "run", engine, row.onnx, row.threads, x_path, out_path)
    with np.load(out_path) as z:
        return z["cls"], z["patch"], info


def franca_outputs(row, x, precision):
    out = refmodel.embed(row.ckpt, x, extra=("--threads", str(row.threads)), precision=precision)
    return out["cls"], out["patch"]


def report_bf16(name, cls, patch, ref64):
    print(f"  {name} vs float64 RefViT: min row cosine CLS {min_cosine(cls, ref64['cls']):.6f}, "
          f"patch {min_cosine(patch, ref64['patch']):.6f}", flush=True)


def parity(row, model32, model64):
    """The parity checks on one batch; sets row.ov_bf16_precision."""
    print(f"{row.name} batch {row.batch}: parity on one batch", flush=True)
    x = torch.randn(row.batch, 3, row.res, row.res, generator=torch.Generator().manual_seed(SEED + 1))
    ref32 = {k: v.numpy() for k, v in model32.forward_features(x).items()}
    ref64 = {k: v.numpy() for k, v in model64.forward_features(x).items()}
    with tempfile.TemporaryDirectory() as tmp:
        x_path = os.path.join(tmp, "x.npy")
        refmodel.write_npy(x_path, x.numpy())
        fp32_ref, ref_name = ref32["cls"], "fp32 RefViT"
        if "ort" in row.args.engines:
            cls, patch, _ = runtime_outputs(row, "ort", x_path, tmp)
            e = max(rel_err(cls, ref32["cls"]), rel_err(patch, ref32["patch"]))
            check("ORT fp32 = fp32 RefViT (CLS, patch)", e <= FP32_TOL, f"rel err {e:.2e}")
            fp32_ref, ref_name = cls, "ORT"
        if "franca-fp32" in row.args.engines:
            cls, _ = franca_outputs(row, x.numpy(), "fp32")
            e = rel_err(cls, fp32_ref)
            check(f"franca-embed fp32 CLS = {ref_name}", e <= FP32_TOL, f"rel err {e:.2e}")
        if "ov-fp32" in row.args.engines:
            cls, patch, _ = runtime_outputs(row, "ov-fp32", x_path, tmp)
            e = max(rel_err(cls, ref32["cls"]), rel_err(patch, ref32["patch"]))
            check("OpenVINO fp32 = fp32 RefViT (CLS, patch)", e <= FP32_TOL, f"rel err {e:.2e}", False)
        if "ov-bf16" in row.args.engines:
            cls, patch, info = runtime_outputs(row, "ov-bf16", x_path, tmp)
            row.ov_bf16_precision = info["compute_precision"]
            print(f"  OpenVINO bf16: INFERENCE_PRECISION_HINT after compile {info['hint']}; "
                  f"compute layers {info['layers']}", flush=True)
            report_bf16(f"OpenVINO bf16 (runs {row.ov_bf16_precision})", cls, patch, ref64)
        if "franca-bf16" in row.args.engines:
            cls, patch = franca_outputs(row, x.numpy(), "bf16")
            report_bf16("franca-embed bf16", cls, patch, ref64)


# --------------------------------------------------------------------------- timers

def time_franca(row, precision, iters):
    out = run([os.path.join(row.args.build, "engine", "franca-embed"), "--model", row.ckpt, "--bench",
               "--batch", row.batch, "--resolution", row.res, "--iters", iters,
               "--threads", row.threads, "--precision", precision], row.env)
    return float(last_value(out, "images/s")), float(last_value(out, "GFLOP/s"))


def time_torch(row, iters, torch_threads):
    out = run([sys.executable, "-c", TORCH_TIMER, REF_DIR, SEED, json.dumps(row.cfg), row.batch,
               row.res, iters, torch_threads], dict(row.env, OPENBLAS_NUM_THREADS=str(row.threads)))
    ips = float(out.strip().splitlines()[-1])
    return ips, ips * row.flops / 1e9


def time_runtime(row, engine, iters):
    ips = venv_call(row.py, row.env, "time", engine, row.onnx, row.threads, iters)["images_per_s"]
    return ips, ips * row.flops / 1e9


def timers(row):
    """engine -> function(iters) -> (images/s, GFLOP/s), for the engines of this run."""
    fns = {
        "franca-fp32": lambda n: time_franca(row, "fp32", n),
        "franca-bf16": lambda n: time_franca(row, "bf16", n),
        "ort": lambda n: time_runtime(row, "ort", n),
        "ov-fp32": lambda n: time_runtime(row, "ov-fp32", n),
        "ov-bf16": lambda n: time_runtime(row, "ov-bf16", n),
    }
    if "torch" in row.args.engines:
        # PyTorch's better thread setting, from a short trial of each.
        trial = {t: time_torch(row, 2, t)[0] for t in sorted({1, row.threads})}
        tt = max(trial, key=trial.get)
        row.notes.append(f"torch threads {tt}")
        fns["torch"] = lambda n: time_torch(row, n, tt)
    return {e: fns[e] for e in row.args.engines if e in fns}


def iterations(row, fn):
    """--iters, or enough for about TARGET_S seconds from a 2-iteration trial."""
    if row.args.iters:
        return row.args.iters
    ips = fn(2)[0]
    return max(2, min(10000, math.ceil(TARGET_S * ips / row.batch)))


def measure(row):
    """Alternating rounds of every engine; medians into row.ips and row.gflops."""
    fns = timers(row)
    iters = {e: iterations(row, fn) for e, fn in fns.items()}
    samples = {e: [] for e in fns}
    for _ in range(row.args.rounds):
        for e, fn in fns.items():
            samples[e].append(fn(iters[e]))
    for e, s in samples.items():
        row.ips[e] = statistics.median(v[0] for v in s)
        row.gflops[e] = statistics.median(v[1] for v in s)
    row.notes.append("iters " + " ".join(f"{e} {n}" for e, n in iters.items()))
    print("  images/s: " + ", ".join(f"{e} {v:.2f}" for e, v in row.ips.items())
          + f"  ({'; '.join(row.notes)})", flush=True)


# --------------------------------------------------------------------------- tables

def engine_title(row_list, engine):
    titles = {"franca-fp32": "franca fp32", "franca-bf16": "franca bf16", "torch": "torch fp32",
              "ort": "ORT fp32", "ov-fp32": "OV fp32", "ov-bf16": "OV bf16"}
    title = titles[engine]
    if engine == "ov-bf16":
        runs = sorted({r.ov_bf16_precision for r in row_list if r.ov_bf16_precision})
        if runs and runs != ["bf16"]:
            title += " (runs " + "/".join(runs) + ")"
    return title


def ratio(row, a, b):
    return f"{row.ips[a] / row.ips[b]:.2f}" if a in row.ips and b in row.ips else "-"


def percent(row, engine, limit):
    return f"{100 * row.gflops[engine] / limit:.1f}%" if engine in row.gflops and limit > 0 else "-"


def limit_for(row, engine, limits):
    bf16 = engine == "franca-bf16" or (engine == "ov-bf16" and row.ov_bf16_precision == "bf16")
    return limits[1] if bf16 else limits[0]


def speed_table(rows, engines, limits):
    head = ["model", "res", "batch"] + [engine_title(rows, e) + " img/s" for e in engines]
    head += ["bf16 franca/OV", "fp32 franca/OV", "franca bf16 % bf16 limit", "franca fp32 % fp32 limit"]
    body = []
    for r in rows:
        cells = [r.name, str(r.res), str(r.batch)]
        cells += [f"{r.ips[e]:.2f}" if e in r.ips else "-" for e in engines]
        cells += [ratio(r, "franca-bf16", "ov-bf16"), ratio(r, "franca-fp32", "ov-fp32"),
                  percent(r, "franca-bf16", limits[1]), percent(r, "franca-fp32", limits[0])]
        body.append(cells)
    return head, body


def gflops_table(rows, engines, limits):
    head = ["model", "res", "batch"] + [engine_title(rows, e) + " GFLOP/s (% limit)" for e in engines]
    body = []
    for r in rows:
        cells = [r.name, str(r.res), str(r.batch)]
        cells += [f"{r.gflops[e]:.1f} ({percent(r, e, limit_for(r, e, limits))})" if e in r.gflops
                  else "-" for e in engines]
        body.append(cells)
    return head, body


def print_plain(head, body):
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    for cells in [head] + body:
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths)))


def print_markdown(head, body):
    print("| " + " | ".join(head) + " |")
    print("|---" + "|---:" * (len(head) - 1) + "|")
    for cells in body:
        print("| " + " | ".join(cells) + " |")


# --------------------------------------------------------------------------- main

def header(args, env, py, isa, limits):
    versions = venv_call(py, env, "versions") if py else {}
    parts = [f"cpu: {cpu_model()} ({os.cpu_count()} cores, {args.threads} threads)"]
    if env.get("OPENBLAS_CORETYPE"):
        parts.append(f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}")
    parts.append(f"cpu isa: {isa}")
    parts += [f"{k} {v}" for k, v in versions.items()]
    parts.append(f"torch {torch.__version__}")
    parts.append(f"limit (mm_bench --peak {args.threads}): {limits[2]}; "
                 f"fp32 {limits[0]:.1f} GFLOP/s, bf16 {limits[1]:.1f} GFLOP/s")
    return " | ".join(parts)


def run_model(args, env, py, name, cfg, sd, ckpt, tmp):
    """Parity and timing of every batch of one model; its Rows."""
    model32 = refmodel.RefViT(cfg, sd, dtype=torch.float32)
    model64 = refmodel.RefViT(cfg, sd, dtype=torch.float64)
    rows = []
    for batch in args.batches:
        onnx = os.path.join(tmp, f"{name}_b{batch}_r{args.resolution}.onnx")
        if any(e in VENV_ENGINES for e in args.engines):
            export_onnx(model32, batch, args.resolution, onnx)
        row = Row(args, env, py, name, cfg, ckpt, onnx, batch)
        parity(row, model32, model64)
        measure(row)
        rows.append(row)
        if os.path.exists(onnx):
            os.remove(onnx)
    return rows


def main():
    args = parse_args()
    env = dict(os.environ)
    if args.native_blas_kernel:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    os.environ["FRANCA_EMBED"] = os.path.join(args.build, "engine", "franca-embed")
    torch.set_num_threads(args.threads)
    line, fp32_limit, bf16_limit = machine_limits(args.build, args.threads, env)
    limits = (fp32_limit, bf16_limit, line)
    if bf16_limit <= 0 and "franca-bf16" in args.engines:
        args.engines.remove("franca-bf16")
        print("franca-embed bf16 left out: mm_bench --peak reports no bf16 rate (no AVX-512)")
    py = ensure_venv(args.venv) if any(e in VENV_ENGINES for e in args.engines) else None
    rows, isa = [], None
    with tempfile.TemporaryDirectory(prefix="bench_cpu_") as tmp:
        for name in args.models:
            cfg, sd, ckpt = prepare_weights(name, tmp)
            if isa is None:
                isa = engine_isa(args, env, ckpt)
                print(header(args, env, py, isa, limits), flush=True)
            rows += run_model(args, env, py, name, cfg, sd, ckpt, tmp)
    # The limit is what the machine can do: measured again at the end, the
    # better of the two counts (a busy moment lowers one of them).
    line2, fp32_end, bf16_end = machine_limits(args.build, args.threads, env)
    if fp32_end + bf16_end > fp32_limit + bf16_limit:
        line = line2
    limits = (max(fp32_limit, fp32_end), max(bf16_limit, bf16_end), line)
    print(f"limits at the start: fp32 {fp32_limit:.1f}, bf16 {bf16_limit:.1f}; at the end: fp32 "
          f"{fp32_end:.1f}, bf16 {bf16_end:.1f} GFLOP/s; the larger are used")
    head_line = header(args, env, py, isa, limits)
    engines = [e for e in args.engines if any(e in r.ips for r in rows)]
    print(f"\nimages/s, medians of {args.rounds} alternating rounds\n{head_line}")
    print_plain(*speed_table(rows, engines, limits))
    print()
    print_plain(*gflops_table(rows, engines, limits))
    print(f"\nmarkdown:\n\n{head_line}\n")
    print_markdown(*speed_table(rows, engines, limits))
    print()
    print_markdown(*gflops_table(rows, engines, limits))


if __name__ == "__main__":
    main()
