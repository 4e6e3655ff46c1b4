"""The baseline a user would write: a small Python HTTP server around the PyTorch
reference ViT (tests/reference/refmodel.py), serving the same
`POST /v1/embeddings` request and response shape as franca-server.

Standard library http.server (ThreadingHTTPServer, HTTP/1.1 keep-alive), PIL +
torchvision preprocessing (Resize(256, bicubic) -> CenterCrop(224) -> ToTensor ->
Normalize), one forward pass per request under torch.inference_mode(), the CLS cut
to `dimensions` and L2-normalised, OpenAI-shaped JSON. No batching across requests.

The weights are refmodel.make_state_dict(cfg, seed, ls_init): the benchmark converts
the same state dict into a franca-server checkpoint, so both serve identical weights.

usage: /usr/bin/python3 tests/bench/baseline_server.py [--arch vit_small] [--seed 0]
       [--ls-init 0.1] [--grid 16] [--threads T] [--host 127.0.0.1] [--port 8090]
       [--model-name default] [--lock]
--lock runs one forward at a time (a global lock around the model) instead of letting
http.server's threads run their forwards concurrently. Debian's torch runs its GEMMs
on OpenBLAS's own thread pool (OPENBLAS_NUM_THREADS) beside its OpenMP pool, so
--threads 1 with OPENBLAS_NUM_THREADS=T can beat --threads T.
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

ARCHS = {  # name: (embed_dim, depth, heads) of the ViT-*/14 family
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}
MAX_BODY = 64 << 20


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vit_small", choices=sorted(ARCHS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ls-init", type=float, default=0.1)
    ap.add_argument("--grid", type=int, default=16, help="position-embedding grid (16: 224 px at patch 14)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="torch.set_num_threads (default: all cores)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--model-name", default="default")
    ap.add_argument("--lock", action="store_true", help="one forward at a time (a global lock)")
    return ap.parse_args(argv)


class ClientError(Exception):
    def __init__(self, status, message, code):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def main():
    args = parse_args()
    # Heavy imports after argument parsing, so --help is quick.
    import torch
    from PIL import Image, UnidentifiedImageError
    from torchvision import transforms
    import refmodel

    torch.set_num_threads(args.threads)
    D, depth, heads = ARCHS[args.arch]
    cfg = refmodel.make_config(D, depth, heads, grid=args.grid)
    model = refmodel.RefViT(cfg, refmodel.make_state_dict(cfg, seed=args.seed, ls_init=args.ls_init),
                            dtype=torch.float32)
    preprocess = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ])
    widths = [D // 16, D // 8, D // 4, D // 2, D]  # the trained Matryoshka widths
    patches = (224 // cfg["patch_size"]) ** 2
    forward_lock = threading.Lock() if args.lock else None

    def decode(item):
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

    def embed(req):
        if not isinstance(req, dict):
            raise ClientError(400, "body must be a JSON object", "invalid_request")
        name = req.get("model")
        if name not in (None, args.model_name):
            raise ClientError(404, "no model named %r" % name, "model_not_found")
        inputs = req.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise ClientError(400, "input must be a string or a non-empty array", "invalid_request")
        width = req.get("dimensions")
        width = D if width is None else width
        if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= D:
            raise ClientError(422, "dimensions must be 1 to %d (trained: %s)" % (D, widths),
                              "invalid_width")
        fmt = req.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise ClientError(400, "encoding_format must be float or base64", "invalid_request")
        x = torch.stack([preprocess(decode(item)) for item in inputs])
        with torch.inference_mode():
            if forward_lock is not None:
                with forward_lock:
                    cls = model.forward_features(x)["cls"]
            else:
                cls = model.forward_features(x)["cls"]
            emb = torch.nn.functional.normalize(cls[:, :width], dim=-1)
        data = []
        for i, row in enumerate(emb):
            if fmt == "base64":
                value = base64.b64encode(row.numpy().astype("<f4").tobytes()).decode("ascii")
            else:
                value = row.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        n = len(inputs) * patches
        return {"object": "list", "data": data, "model": args.model_name,
                "usage": {"prompt_tokens": n, "total_tokens": n}}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive
        server_version = "baseline-torch/0.1"

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

    # Warm up (first-call allocations, thread pools) before announcing readiness.
    with torch.inference_mode():
        model.forward_features(torch.zeros(1, 3, 224, 224))

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128

    httpd = Server((args.host, args.port), Handler)

    def stop(signum, frame):
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("listening on http://%s:%d" % (args.host, httpd.server_address[1]), flush=True)
    httpd.serve_forever()
    httpd.server_close()


if __name__ == "__main__":
    main()
