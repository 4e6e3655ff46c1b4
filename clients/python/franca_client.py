#!/usr/bin/env python3
"""Client for franca-server (standard library only; numpy is used when present).

    from franca_client import FrancaClient
    c = FrancaClient("http://127.0.0.1:8080")
    vecs = c.embed(["cat.jpg", "dog.png"], width=192)     # list of lists (or numpy array)
    c.swap("default", "franca_vitb14.safetensors", token="...")

Command line:
    python3 clients/python/franca_client.py [--url URL] embed IMAGE... [--width W] [--model M]
    python3 clients/python/franca_client.py [--url URL] models
    python3 clients/python/franca_client.py [--url URL] swap NAME CHECKPOINT --token-file F
"""
import argparse
import base64
import json
import os
import struct
import sys
import urllib.error
import urllib.request

try:
    import numpy as np
except ImportError:  # numpy is optional
    np = None


class FrancaError(Exception):
    """An error answer of the server: status, error type and message."""

    def __init__(self, status, type_, message, headers=None):
        super().__init__(f"{status} {type_}: {message}")
        self.status, self.type, self.message, self.headers = status, type_, message, headers or {}


def _image_data_uri(image):
    """bytes or a path -> data URI (the type is sniffed from the magic bytes)."""
    data = image if isinstance(image, (bytes, bytearray)) else open(image, "rb").read()
    mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


class FrancaClient:
    def __init__(self, url="http://127.0.0.1:8080", token=None, timeout=120):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
        self.last_headers = {}

    def request(self, method, path, body=None, headers=None):
        """Sends one request; returns (status, headers, body bytes); raises FrancaError on 4xx/5xx."""
        hdrs = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if self.token:
            hdrs.setdefault("Authorization", f"Bearer {self.token}")
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                self.last_headers = dict(r.headers)
                return r.status, self.last_headers, r.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                err = json.loads(raw)["error"]
                raise FrancaError(e.code, err.get("type"), err.get("message"), dict(e.headers)) from None
            except (ValueError, KeyError, TypeError):
                raise FrancaError(e.code, "http_error", raw.decode(errors="replace"), dict(e.headers)) from None

    def json(self, method, path, body=None):
        return json.loads(self.request(method, path, body)[2])

    def health(self):
        return self.json("GET", "/healthz")

    def ready(self):
        return self.json("GET", "/readyz")

    def models(self):
        return self.json("GET", "/v1/models")["data"]

    def model(self, name):
        return self.json("GET", f"/v1/models/{name}")

    def embed(self, images, width=None, model=None, encoding="float", raw=False):
        """CLS embeddings (prefix of `width` features, L2-normalised) of images
        (paths or bytes). Returns a numpy array [n, width] when numpy is present,
        else a list of lists; raw=True returns the whole response dict."""
        body = {"input": [_image_data_uri(i) for i in images], "encoding_format": encoding}
        if width is not None:
            body["dimensions"] = width
        if model is not None:
            body["model"] = model
        resp = self.json("POST", "/v1/embeddings", body)
        if raw:
            return resp
        rows = []
        for item in resp["data"]:
            e = item["embedding"]
            if isinstance(e, str):
                b = base64.b64decode(e)
                e = list(struct.unpack(f"<{len(b) // 4}f", b))
            rows.append(e)
        return np.asarray(rows, dtype=np.float32) if np is not None else rows

    def swap(self, name, checkpoint, token=None):
        """Loads checkpoint (relative to the server's --models-dir) as model name."""
        saved, self.token = self.token, token or self.token
        try:
            return self.json("POST", f"/admin/models/{name}", {"checkpoint": checkpoint})
        finally:
            self.token = saved

    def unload(self, name, token=None):
        saved, self.token = self.token, token or self.token
        try:
            return self.json("DELETE", f"/admin/models/{name}")
        finally:
            self.token = saved


def main(argv=None):
    ap = argparse.ArgumentParser(description="franca-server client")
    ap.add_argument("--url", default=os.environ.get("FRANCA_URL", "http://127.0.0.1:8080"))
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("embed", help="print CLS embeddings of images as JSON lines")
    e.add_argument("images", nargs="+")
    e.add_argument("--width", type=int)
    e.add_argument("--model")
    sub.add_parser("models", help="list the loaded models")
    s = sub.add_parser("swap", help="hot-swap a model from the server's --models-dir")
    s.add_argument("name")
    s.add_argument("checkpoint")
    s.add_argument("--token-file", required=True)
    args = ap.parse_args(argv)
    c = FrancaClient(args.url)
    try:
        if args.cmd == "embed":
            for path, vec in zip(args.images, c.embed(args.images, args.width, args.model)):
                print(json.dumps({"image": path, "embedding": [float(x) for x in vec]}))
        elif args.cmd == "models":
            print(json.dumps(c.models(), indent=1))
        else:
            token = open(args.token_file).readline().strip()
            print(json.dumps(c.swap(args.name, args.checkpoint, token)))
    except FrancaError as err:
        print(f"franca_client: {err}", file=sys.stderr)
        return 1
    except (OSError, urllib.error.URLError) as err:
        print(f"franca_client: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
