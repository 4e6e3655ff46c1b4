"""The baseline a user would write: a small Python HTTP server around the model,
serving the same `POST /v1/embeddings` request and response shape as franca-server.
Two backends:

  torch     the PyTorch reference ViT (tests/reference/refmodel.py), fp32; PIL +
            torchvision preprocessing (Resize(256, bicubic) -> CenterCrop(224) ->
            ToTensor -> Normalize), one forward per request (all its images) under
            torch.inference_mode(); forwards run concurrently in http.server's
            threads unless --lock.
  openvino  OpenVINO on the CPU, running an ONNX export of the same model (--onnx:
            fixed batch 1, 224x224 input, outputs cls and patch) with
            INFERENCE_PRECISION_HINT --ov-precision (bf16, or f32; OpenVINO runs f32
            where the CPU lacks bf16), PERFORMANCE_HINT LATENCY and
            INFERENCE_NUM_THREADS --threads. The same preprocessing in PIL + numpy
            (no torch or torchvision: it runs in a venv with numpy, openvino and
            pillow); one image per forward, forwards one at a time under a lock (one
            infer request: an OpenVINO infer request is not thread-safe).

Standard library http.server (ThreadingHTTPServer, HTTP/1.1 keep-alive), the CLS cut
to `dimensions` and L2-normalised, OpenAI-shaped JSON. No batching across requests.
GET /v1/models/{name} tells the backend and the precision it runs ("fp32" for torch,
OpenVINO's INFERENCE_PRECISION_HINT after compilation, e.g. "bf16" or "f32").

The torch weights are refmodel.make_state_dict(cfg, seed, ls_init): the benchmark
converts the same state dict into a franca-server checkpoint and exports it to ONNX,
so all servers serve identical weights.

usage: /usr/bin/python3 tests/bench/baseline_server.py [--arch vit_small] [--seed 0]
       [--ls-init 0.1] [--grid 16] [--threads T] [--host 127.0.0.1] [--port 8090]
       [--model-name default] [--lock]
       VENV/bin/python tests/bench/baseline_server.py --backend openvino --onnx M.onnx
       [--ov-precision bf16|f32] [--threads T] [--host ...] [--port ...] [--model-name ...]
--lock runs one forward at a time (a global lock around the model) instead of letting
http.server's threads run their forwards concurrently (always so with openvino).
Debian's torch runs its GEMMs on OpenBLAS's own thread pool (OPENBLAS_NUM_THREADS)
beside its OpenMP pool, so --threads 1 with OPENBLAS_NUM_THREADS=T can beat --threads T.
Prints "listening on http://HOST:PORT" once the model is built and warmed up
(--port 0 picks a free port); SIGTERM or SIGINT stops it.
"""
import argparse
import base64
import binascii
import io
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
sys.path.insert(0, os.path.join(ROOT, "tests", "bench"))

ARCHS = {  # name: (embed_dim, depth, heads) of the ViT-*/14 family
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}
MAX_BODY = 64 << 20
RESIZE, CROP = 256, 224
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="torch", choices=("torch", "openvino"))
    ap.add_argument("--arch", default="vit_small", choices=sorted(ARCHS), help="torch backend")
    ap.add_argument("--seed", type=int, default=0, help="torch backend")
    ap.add_argument("--ls-init", type=float, default=0.1, help="torch backend")
    ap.add_argument("--grid", type=int, default=16,
                    help="torch backend: position-embedding grid (16: 224 px at patch 14)")
    ap.add_argument("--onnx", help="openvino backend: the model (batch 1, 224x224, outputs cls, patch)")
    ap.add_argument("--ov-precision", default="bf16", choices=("bf16", "f32"),
                    help="openvino backend: INFERENCE_PRECISION_HINT")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="torch.set_num_threads or OpenVINO's INFERENCE_NUM_THREADS (default: all cores)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--model-name", default="default")
    ap.add_argument("--lock", action="store_true", help="torch backend: one forward at a time (a global lock)")
    args = ap.parse_args(argv)
    if args.backend == "openvino" and not args.onnx:
        ap.error("--backend openvino needs --onnx")
    return args


class ClientError(Exception):
    def __init__(self, status, message, code):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


# --------------------------------------------------------------------------- request, response

def parse_request(req, model_name, dim):
    """The embeddings request: (inputs, width, encoding format); ClientError if invalid."""
    if not isinstance(req, dict):
        raise ClientError(400, "body must be a JSON object", "invalid_request")
    name = req.get("model")
    if name not in (None, model_name):
        raise ClientError(404, "no model named %r" % name, "model_not_found")
    inputs = req.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise ClientError(400, "input must be a string or a non-empty array", "invalid_request")
    width = req.get("dimensions")
    width = dim if width is None else width
    if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= dim:
        widths = [dim // 16, dim // 8, dim // 4, dim // 2, dim]  # the trained Matryoshka widths
        raise ClientError(422, "dimensions must be 1 to %d (trained: %s)" % (dim, widths), "invalid_width")
    fmt = req.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise ClientError(400, "encoding_format must be float or base64", "invalid_request")
    return inputs, width, fmt


def decode_image(item):
    """One input (base64 or a data URI) as an RGB PIL image; ClientError if invalid."""
    from PIL import Image, UnidentifiedImageError
    if not isinstance(item, str):
        raise ClientError(400, "each input must be a string", "invalid_request")
    if item.startswith(("http://", "https://")):
        raise ClientError(422, "URL inputs are not fetched", "url_input")
    if item.startswith("data:"):
        head, sep, payload = item.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ClientError(422, "expected a data:image/...;base64, URI", "bad_data_uri")
        item = payload
    try:
        raw = base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(422, "invalid base64", "bad_base64")
    try:
        return Image.open(io.BytesIO(raw)).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ClientError(422, "cannot decode image: %s" % e, "bad_image")


def embeddings_response(cls, width, fmt, model_name, tokens):
    """OpenAI-shaped response for the CLS rows cls ([n, D] float32 ndarray), cut to
    width and L2-normalised (as torch.nn.functional.normalize: eps 1e-12)."""
    import numpy as np
    emb = cls[:, :width]
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    data = []
    for i, row in enumerate(emb):
        if fmt == "base64":
            value = base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
        else:
            value = row.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# --------------------------------------------------------------------------- backends
#
# A backend is (forward, info): forward(list of RGB PIL images) -> [n, D] float32
# ndarray of CLS rows; info: dim (D), patches (tokens per image), backend, precision.

def torch_backend(args):
    import torch
    from torchvision import transforms
    import refmodel

    torch.set_num_threads(args.threads)
    D, depth, heads = ARCHS[args.arch]
    cfg = refmodel.make_config(D, depth, heads, grid=args.grid)
    model = refmodel.RefViT(cfg, refmodel.make_state_dict(cfg, seed=args.seed, ls_init=args.ls_init),
                            dtype=torch.float32)
    preprocess = transforms.Compose([
        transforms.Resize(RESIZE, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(CROP),
        transforms.ToTensor(),
        transforms.Normalize(mean=MEAN, std=STD),
    ])
    forward_lock = threading.Lock() if args.lock else None

    def forward(images):
        x = torch.stack([preprocess(im) for im in images])
        with torch.inference_mode():
            if forward_lock is not None:
                with forward_lock:
                    cls = model.forward_features(x)["cls"]
            else:
                cls = model.forward_features(x)["cls"]
        return cls.numpy()

    # Warm up (first-call allocations, thread pools) before announcing readiness.
    with torch.inference_mode():
        model.forward_features(torch.zeros(1, 3, CROP, CROP))
    info = {"dim": D, "patches": (CROP // cfg["patch_size"]) ** 2, "backend": "torch %s" % torch.__version__,
            "precision": "fp32"}
    return forward, info


def preprocess_numpy(im):
    """torchvision's Resize(256, BICUBIC) -> CenterCrop(224) -> ToTensor -> Normalize on
    an RGB PIL image, in PIL + numpy: a [3, 224, 224] float32 array."""
    import numpy as np
    from PIL import Image
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = RESIZE, int(RESIZE * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - CROP) / 2.0))
    left = int(round((new_w - CROP) / 2.0))
    im = im.crop((left, top, left + CROP, top + CROP))
    x = np.asarray(im, dtype=np.float32) / np.float32(255)
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def openvino_backend(args):
    import numpy as np
    import openvino as ov
    from bench_cpu_runtimes import ov_layer_precisions

    core = ov.Core()
    model = core.read_model(args.onnx)
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_NUM_THREADS": args.threads,
        "INFERENCE_PRECISION_HINT": args.ov_precision,
        "PERFORMANCE_HINT": "LATENCY",
    })
    shape = [int(d) for d in model.inputs[0].shape]
    if shape != [1, 3, CROP, CROP]:
        raise SystemExit("%s: input shape %s, expected [1, 3, %d, %d]" % (args.onnx, shape, CROP, CROP))
    cls_port, patch_port = compiled.output("cls"), compiled.output("patch")
    request = compiled.create_infer_request()  # not thread-safe: used under the lock
    lock = threading.Lock()

    def forward(images):
        rows = []
        for im in images:
            x = preprocess_numpy(im)[None]
            with lock:
                out = request.infer({0: x}, share_inputs=True, share_outputs=True)
                rows.append(np.array(out[cls_port], dtype=np.float32))  # a copy, inside the lock
        return np.concatenate(rows)

    warm = request.infer({0: np.zeros(shape, np.float32)})  # warm-up, and the output shapes
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    hint = hint.to_string() if hasattr(hint, "to_string") else str(hint)
    threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))
    main, layers = ov_layer_precisions(compiled)
    print("openvino %s: INFERENCE_PRECISION_HINT %s after compile (asked %s), INFERENCE_NUM_THREADS %d; "
          "compute layers %s" % (ov.__version__.split("-")[0], hint, args.ov_precision, threads, layers),
          file=sys.stderr, flush=True)
    info = {"dim": int(warm[cls_port].shape[-1]), "patches": int(warm[patch_port].shape[1]),
            "backend": "openvino %s" % ov.__version__.split("-")[0], "precision": hint,
            "compute_precision": main, "threads": threads}
    return forward, info


# --------------------------------------------------------------------------- server

def make_handler(args, forward, info):
    dim, patches = info["dim"], info["patches"]
    model_info = dict(info, id=args.model_name, object="model")

    def embed(req):
        inputs, width, fmt = parse_request(req, args.model_name, dim)
        images = [decode_image(item) for item in inputs]
        return embeddings_response(forward(images), width, fmt, args.model_name, len(inputs) * patches)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive
        server_version = "baseline-%s/0.1" % args.backend

        def log_message(self, fmt, *a):  # quiet: logging costs CPU under load
            pass

        def reply(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def error(self, status, message, code):
            self.reply(status, {"error": {"message": message, "type": "invalid_request_error"
                                          if status < 500 else "server_error", "code": code}})

        def do_GET(self):
            if self.path == "/healthz":
                self.reply(200, {"status": "ok"})
            elif self.path == "/readyz":
                self.reply(200, {"status": "ready"})
            elif self.path == "/v1/models":
                self.reply(200, {"object": "list", "data": [model_info]})
            elif self.path == "/v1/models/" + args.model_name:
                self.reply(200, model_info)
            else:
                self.error(404, "not found", "not_found")

        def do_POST(self):
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                return self.error(411, "Content-Length required", "length_required")
            length = int(length)
            if length > MAX_BODY:
                self.close_connection = True
                return self.error(413, "body too large", "too_large")
            body = self.rfile.read(length)
            if self.path != "/v1/embeddings":
                return self.error(404, "not found", "not_found")
            try:
                req = json.loads(body)
            except ValueError:
                return self.error(400, "malformed JSON", "invalid_json")
            try:
                self.reply(200, embed(req))
            except ClientError as e:
                self.error(e.status, e.message, e.code)
            except Exception as e:  # noqa: BLE001: a server error, reported as JSON
                self.error(500, "%s: %s" % (type(e).__name__, e), "internal")

    return Handler


def serve(args, handler):
    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128

    httpd = Server((args.host, args.port), handler)

    def stop(signum, frame):
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("listening on http://%s:%d" % (args.host, httpd.server_address[1]), flush=True)
    httpd.serve_forever()
    httpd.server_close()


def main():
    args = parse_args()
    # Heavy imports in the backends, after argument parsing, so --help is quick.
    backend = openvino_backend if args.backend == "openvino" else torch_backend
    forward, info = backend(args)
    serve(args, make_handler(args, forward, info))


if __name__ == "__main__":
    main()
