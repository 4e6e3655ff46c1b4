"""ONNX Runtime and OpenVINO side of bench_cpu.py; runs in the benchmark's venv
(numpy, onnxruntime, openvino), never under /usr/bin/python3. baseline_server.py's
OpenVINO backend imports ov_layer_precisions from here.

    python bench_cpu_runtimes.py versions
    python bench_cpu_runtimes.py time ENGINE MODEL.onnx THREADS ITERS
    python bench_cpu_runtimes.py run ENGINE MODEL.onnx THREADS X.npy OUT.npz

ENGINE is ort (fp32), ov-fp32 or ov-bf16. The ONNX model has one input [B,3,R,R]
(float32) and the outputs cls [B,D] and patch [B,N,D]. "time" runs 2 warm-up
passes and ITERS timed ones on random input; "run" writes the outputs for X.npy.
Each prints one JSON line: images/s or the outputs' file, and for OpenVINO the
execution precision it reports (the compiled model's INFERENCE_PRECISION_HINT and
the runtime precisions of its compute layers).
"""
import collections
import json
import sys
import time

import numpy as np

OV_COMPUTE_LAYERS = ("FullyConnected", "MatMul", "Convolution", "Subgraph")


def versions():
    import onnxruntime
    import openvino
    return {"onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__.split("-")[0]}


def ort_session(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    shape = sess.get_inputs()[0].shape
    return (lambda x: sess.run(["cls", "patch"], {name: x})), shape, {}


def ov_layer_precisions(compiled):
    """Runtime precisions of the compute layers of the compiled model: (the most
    common one among its matrix products, a summary 'FullyConnected bf16 x48, ...')."""
    count = collections.Counter()
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        kind = rt["layerType"].astype(str)
        if kind in OV_COMPUTE_LAYERS:
            count[(kind, rt["runtimePrecision"].astype(str))] += 1
    products = collections.Counter()
    for (kind, prec), n in count.items():
        if kind in ("FullyConnected", "MatMul"):
            products[prec] += n
    main = products.most_common(1)[0][0] if products else "unknown"
    return main, ", ".join(f"{k} {p} x{n}" for (k, p), n in sorted(count.items()))


def ov_session(path, threads, precision):
    import openvino as ov
    core = ov.Core()
    model = core.read_model(path)
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
    })
    request = compiled.create_infer_request()
    outs = [compiled.output("cls"), compiled.output("patch")]

    def infer(x):
        r = request.infer({0: x})
        return [r[o] for o in outs]

    main, layers = ov_layer_precisions(compiled)
    info = {"hint": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
            "compute_precision": main, "layers": layers}
    return infer, list(model.inputs[0].shape), info


def session(engine, path, threads):
    if engine == "ort":
        return ort_session(path, threads)
    if engine in ("ov-fp32", "ov-bf16"):
        return ov_session(path, threads, "f32" if engine == "ov-fp32" else "bf16")
    raise SystemExit(f"unknown engine {engine}")


def time_engine(engine, path, threads, iters):
    infer, shape, info = session(engine, path, threads)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    for _ in range(2):
        infer(x)
    t0 = time.perf_counter()
    for _ in range(iters):
        infer(x)
    info["images_per_s"] = shape[0] * iters / (time.perf_counter() - t0)
    return info


def run_engine(engine, path, threads, x_path, out_path):
    infer, _, info = session(engine, path, threads)
    cls, patch = infer(np.load(x_path).astype(np.float32))
    np.savez(out_path, cls=np.asarray(cls), patch=np.asarray(patch))
    info["out"] = out_path
    return info


def main(argv):
    cmd = argv[0] if argv else ""
    if cmd == "versions":
        result = versions()
    elif cmd == "time" and len(argv) == 5:
        result = time_engine(argv[1], argv[2], int(argv[3]), int(argv[4]))
    elif cmd == "run" and len(argv) == 6:
        result = run_engine(argv[1], argv[2], int(argv[3]), argv[4], argv[5])
    else:
        raise SystemExit(__doc__)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
