#!/usr/bin/env python3
"""Client for franca-server (standard library only; numpy is used when present).

    from franca_client import FrancaClient
    c = FrancaClient("http://127.0.0.1:8080")              # api_key="..." for --api-key-file
    vecs = c.embed(["cat.jpg", "dog.png"], width=192)     # list of lists (or numpy array)
    f = c.features(["cat.jpg"], widths=[96, 384], patch=True, pooled=True)
    f["patch.w384"].shape, f.metadata["grid_height"]      # (1, 256, 384), 16
    png = c.pca(["cat.jpg", "dog.png"], threshold=0.3)      # PCA picture (bytes)
    c.swap("default", "franca_vitb14.safetensors", token="...")

    # the vector index
    c.create_collection("photos", width=192, metric="cosine", store_images=True)
    c.insert("photos", images=["cat.jpg", "dog.png"], ids=["cat", "dog"],
             metadata=[{"kind": "cat"}, {"kind": "dog"}])
    c.insert("vecs", vectors=np.random.rand(100, 192))             # -> list of ids
    c.search("photos", image="cat.jpg", k=5, filter={"kind": {"$ne": "dog"}},
             include=["metadata"])                                 # -> list of results
    c.search_batch("photos", [{"id": "cat"}, {"image": "dog.png"}], k=5)
    job = c.reembed("photos"); c.wait_job(job["id"])                # after a model swap

Command line (the API key, for a server started with --api-key-file, comes from
--api-key-file F, whose first key line is used, or else the FRANCA_API_KEY
environment variable):
    python3 clients/python/franca_client.py [--url URL] [--api-key-file F] embed IMAGE... [--width W] [--model M]
    python3 clients/python/franca_client.py [--url URL] features IMAGE... [--width W]... [--patch]
        [--pooled] [--rasa] [--no-cls] [--no-normalize] [--resolution R] [--crop center|square]
        [--model M] [--f16] [--out FILE.npz]
    python3 clients/python/franca_client.py [--url URL] pca IMAGE... [--width W]... [--threshold T]
        [--refit] [--rasa] [--bilinear] [--model M] --out FILE.png
    python3 clients/python/franca_client.py [--url URL] models
    python3 clients/python/franca_client.py [--url URL] swap NAME CHECKPOINT --token-file F
    python3 clients/python/franca_client.py [--url URL] collections [list | show NAME | delete NAME |
        create NAME [--model M] [--width W] [--metric cosine|l2|dot] [--store-images]]
    python3 clients/python/franca_client.py [--url URL] insert COLLECTION [IMAGE...] [--vectors FILE.npy|FILE.json]
        [--ids ID,...] [--metadata JSON] [--batch N]
    python3 clients/python/franca_client.py [--url URL] search COLLECTION (--image F | --vector JSON | --id ID)
        [--k K] [--width W] [--funnel] [--funnel-width W] [--candidates N] [--filter JSON]
        [--include metadata,vector]
"""
import argparse
import base64
import json
import os
import struct
import sys
import time
import uuid
import urllib.error
import urllib.parse
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


def _image_bytes(image):
    return bytes(image) if isinstance(image, (bytes, bytearray)) else open(image, "rb").read()


def _image_fields(images):
    """Multipart fields of images (paths or bytes), each named "images"."""
    fields = []
    for i, img in enumerate(images):
        data = _image_bytes(img)
        ctype = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
        fname = os.path.basename(img) if isinstance(img, str) else f"image{i}"
        fields.append(("images", fname, ctype, data))
    return fields


def _multipart(fields):
    """[(name, filename or None, content type, bytes)] -> (body, Content-Type)."""
    boundary = "franca-" + uuid.uuid4().hex
    out = []
    for name, filename, ctype, data in fields:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.append(f"--{boundary}\r\nContent-Disposition: {disp}\r\nContent-Type: {ctype}\r\n\r\n".encode())
        out.append(data)
        out.append(b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


_ST_DTYPES = {"F32": ("f", 4, "<f4"), "F16": ("e", 2, "<f2")}


class Features(dict):
    """Tensor name ("cls.w192", "patch.w768", "pooled.w384") -> numpy array (nested
    lists without numpy); .metadata holds model, fingerprint, grid_height,
    grid_width and patch_size."""

    def __init__(self, tensors, metadata):
        super().__init__(tensors)
        self.metadata = metadata


def _nest(flat, shape):
    if len(shape) <= 1:
        return list(flat)
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def parse_safetensors(buf):
    """A safetensors body (8-byte little-endian header length, JSON header, raw
    little-endian tensors) -> (dict name -> numpy array or nested lists, metadata dict).
    F32 and F16 tensors are supported; F16 stays float16 under numpy."""
    if len(buf) < 8:
        raise ValueError("safetensors: shorter than 8 bytes")
    n = struct.unpack("<Q", buf[:8])[0]
    if n > len(buf) - 8:
        raise ValueError("safetensors: header length exceeds the body")
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None) or {}
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        code, size, npdt = _ST_DTYPES.get(info["dtype"], (None, 0, None))
        if code is None:
            raise ValueError(f"safetensors: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        shape = list(info["shape"])
        count = 1
        for d in shape:
            count *= d
        if begin < 0 or end != begin + count * size or base + end > len(buf):
            raise ValueError(f"safetensors: tensor {name} has inconsistent offsets")
        if np is not None:
            tensors[name] = np.frombuffer(buf, dtype=npdt, count=count, offset=base + begin).reshape(shape).copy()
        else:
            tensors[name] = _nest(struct.unpack_from(f"<{count}{code}", buf, base + begin), shape)
    return tensors, meta


def _feature_metadata(meta):
    out = dict(meta)
    for k in ("grid_height", "grid_width", "patch_size"):
        if k in out:
            out[k] = int(out[k])
    return out


def _features_from_json(resp):
    """The JSON answer of /v1/features -> the tensors the binary answer holds."""
    data = resp["data"]
    tensors = {}
    # The final outputs first, then each layer's, in the answer's order.
    kinds = [k for k in ("cls", "patch", "pooled") if data and k in data[0]]
    kinds += [k for k in (data[0] if data else ()) if k.startswith("layer")]
    for kind in kinds:
        for w in data[0][kind]:
            rows = [item[kind][w] for item in data]
            tensors[f"{kind}.w{w}"] = np.asarray(rows, dtype=np.float32) if np is not None else rows
    meta = {"model": resp["model"], "fingerprint": resp["fingerprint"],
            "grid_height": resp["grid"]["height"], "grid_width": resp["grid"]["width"],
            "patch_size": resp["patch_size"]}
    return tensors, meta


def read_api_key(path):
    """The first key of an API key file (the server's --api-key-file format:
    blank lines and '#' comments skipped)."""
    for line in open(path):
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise ValueError(f"{path}: no API key in the file")


class FrancaClient:
    """api_key: sent as 'Authorization: Bearer KEY' to every route but /admin
    (needed when the server runs with --api-key-file); token: the admin token,
    sent to the /admin routes only."""

    def __init__(self, url="http://127.0.0.1:8080", token=None, timeout=120, api_key=None):
        self.url, self.token, self.timeout, self.api_key = url.rstrip("/"), token, timeout, api_key
        self.last_headers = {}

    def request(self, method, path, body=None, headers=None, token=None):
        """Sends one request; returns (status, headers, body bytes); raises FrancaError on 4xx/5xx.
        token: the bearer credential for this request (default: the admin token
        for /admin paths, else the API key)."""
        hdrs = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        cred = token or (self.token if path.startswith("/admin/") else self.api_key)
        if cred:
            hdrs.setdefault("Authorization", f"Bearer {cred}")
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

    def json(self, method, path, body=None, token=None):
        return json.loads(self.request(method, path, body, token=token)[2])

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

    def features(self, images, widths=None, cls=True, patch=False, pooled=False, rasa=False,
                 normalize=True, resolution=None, crop=None, model=None, binary=True, dtype="f32",
                 raw=False, layers=None, norm=None):
        """Native features of images (paths or bytes), sent as multipart/form-data.
        widths: an int or a list (default: the model's full width). Returns a
        Features dict: "cls.w{W}" [n, W], "patch.w{W}" [n, N, W], "pooled.w{W}"
        [n, W] for the requested outputs, and .metadata (model, fingerprint,
        grid_height, grid_width, patch_size). binary=True asks for the safetensors
        answer (dtype "f32" or "f16"); binary=False for JSON. raw=True returns the
        response body (bytes for binary, else the parsed JSON). layers: an int n
        (the last n blocks) or a list of block indices (negative from the last)
        adds "layer{i}_cls.w{W}" and "layer{i}_patch.w{W}" (as cls and patch ask);
        norm=False leaves out the final LayerNorm on them."""
        opts = {"cls": cls, "patch": patch, "pooled": pooled, "rasa": rasa, "normalize": normalize}
        if widths is not None:
            opts["widths"] = [int(widths)] if isinstance(widths, int) else [int(w) for w in widths]
        if resolution is not None:
            opts["resolution"] = int(resolution)
        if crop is not None:
            opts["crop"] = crop
        if model is not None:
            opts["model"] = model
        if layers is not None:
            opts["layers"] = int(layers) if isinstance(layers, int) else [int(i) for i in layers]
        if norm is not None:
            opts["norm"] = bool(norm)
        if binary:
            opts["dtype"] = dtype
        fields = _image_fields(images)
        fields.append(("options", None, "application/json", json.dumps(opts).encode()))
        body, ctype = _multipart(fields)
        headers = {"Content-Type": ctype}
        if binary:
            headers["Accept"] = "application/vnd.safetensors"
        _, _, payload = self.request("POST", "/v1/features", body, headers)
        if binary:
            if raw:
                return payload
            tensors, meta = parse_safetensors(payload)
        else:
            resp = json.loads(payload)
            if raw:
                return resp
            tensors, meta = _features_from_json(resp)
        return Features(tensors, _feature_metadata(meta))

    def pca(self, images, widths=None, threshold=None, refit=False, rasa=False, upsample=None,
            resolution=None, crop=None, model=None, format="png"):
        """PCA pictures of images (paths or bytes), sent as multipart/form-data:
        the first three principal components of the patch tokens (one basis for
        all images) at each width (default: every trained width). format "png"
        returns the PNG bytes (a column per width, a row per image); "json"
        the parsed answer (per width: components, explained_variance, mean,
        projections). threshold in [0, 1] blacks out the background; refit
        refits on the foreground."""
        opts = {"format": format}
        if widths is not None:
            opts["widths"] = [int(widths)] if isinstance(widths, int) else [int(w) for w in widths]
        for key, val in (("threshold", threshold), ("upsample", upsample),
                         ("resolution", resolution), ("crop", crop), ("model", model)):
            if val is not None:
                opts[key] = val
        if refit:
            opts["refit"] = True
        if rasa:
            opts["rasa"] = True
        fields = _image_fields(images)
        fields.append(("options", None, "application/json", json.dumps(opts).encode()))
        body, ctype = _multipart(fields)
        _, _, payload = self.request("POST", "/v1/pca", body, {"Content-Type": ctype})
        return json.loads(payload) if format == "json" else payload

    def swap(self, name, checkpoint, token=None):
        """Loads checkpoint (relative to the server's --models-dir) as model name."""
        return self.json("POST", f"/admin/models/{name}", {"checkpoint": checkpoint}, token=token)

    def unload(self, name, token=None):
        return self.json("DELETE", f"/admin/models/{name}", token=token)

    # --- the vector index -------------------------------------------------------

    @staticmethod
    def _q(segment):
        """A path segment (collection name, item id, job id), percent-encoded."""
        return urllib.parse.quote(str(segment), safe="")

    def create_collection(self, name, model=None, width=None, metric=None, store_images=None,
                          level=None, storage=None, mirror=None, ann=None):
        """Creates a collection; returns its description (name, model, fingerprint,
        width, metric, store_images, created_at, count, indexed, prefix_width, level,
        mirror, vector_bytes, mirror_bytes, ann). level "patch" keeps every patch token
        (storage "f16" or "int8"). mirror "f16" or "int8" keeps the in-memory search
        matrix compressed (2x or 4x smaller; SQLite keeps float32 for the re-rank).
        ann: an HNSW graph over the prefix, e.g. {"kind": "hnsw", "width": 64, "m": 16,
        "ef_construction": 200} (CLS-level collections only)."""
        body = {"name": name}
        for key, val in (("model", model), ("width", width), ("metric", metric),
                         ("store_images", store_images), ("level", level), ("storage", storage),
                         ("mirror", mirror), ("ann", ann)):
            if val is not None:
                body[key] = val
        return self.json("POST", "/v1/collections", body)

    def collections(self):
        return self.json("GET", "/v1/collections")["collections"]

    def collection(self, name):
        return self.json("GET", f"/v1/collections/{self._q(name)}")

    def delete_collection(self, name):
        return self.json("DELETE", f"/v1/collections/{self._q(name)}")

    @staticmethod
    def _vector(v):
        """A vector (numpy array, list, tuple) -> a JSON list of floats."""
        if np is not None and isinstance(v, np.ndarray):
            return [float(x) for x in v.astype(np.float64).ravel()]
        return [float(x) for x in v]

    def insert_items(self, collection, items):
        """Sends items as they are ({"id"?, "image" | "vector", "metadata"?} dicts)
        in one request (one transaction); returns the ids in input order."""
        return self.json("POST", f"/v1/collections/{self._q(collection)}/items", {"items": items})["ids"]

    def insert(self, collection, vectors=None, images=None, ids=None, metadata=None, batch=None,
               patches=None, labels=None):
        """Inserts vectors (a 2-D numpy array or a list of lists), images (paths
        or bytes) or, into a patch collection, patch grids (each [rows, cols,
        width]), with optional ids and metadata dicts (lists of the same length).
        labels: with images into a patch collection, label masks (PNG paths or
        bytes, 8-bit grey or palette, the images' sizes; None for an unlabelled
        item) for segment().
        batch=N splits the items into requests of at most N items (each request is
        all or nothing); by default they go in one request. Returns the ids."""
        if sum(x is not None for x in (vectors, images, patches)) != 1:
            raise ValueError("insert: give exactly one of vectors, images and patches")
        n = len(next(x for x in (vectors, images, patches) if x is not None))
        if labels is not None and images is None:
            raise ValueError("insert: labels go with images")
        for what, lst in (("ids", ids), ("metadata", metadata), ("labels", labels)):
            if lst is not None and len(lst) != n:
                raise ValueError(f"insert: {what} has {len(lst)} entries for {n} items")
        step = batch or max(n, 1)
        out = []
        for lo in range(0, n, step):
            items = []
            for i in range(lo, min(n, lo + step)):
                if patches is not None:
                    g = patches[i]
                    rows, cols = len(g), len(g[0])
                    item = {"patches": [self._vector(v) for row in g for v in row],
                            "grid": [rows, cols]}
                elif vectors is not None:
                    item = {"vector": self._vector(vectors[i])}
                else:
                    item = {"image": _image_data_uri(images[i])}
                    if labels is not None and labels[i] is not None:
                        item["labels"] = _image_data_uri(labels[i])
                if ids is not None and ids[i] is not None:
                    item["id"] = str(ids[i])
                if metadata is not None and metadata[i] is not None:
                    item["metadata"] = metadata[i]
                items.append(item)
            out.extend(self.insert_items(collection, items))
        return out

    def item(self, collection, item_id):
        """{"id", "metadata", "vector", "has_image"} of a stored item."""
        return self.json("GET", f"/v1/collections/{self._q(collection)}/items/{self._q(item_id)}")

    def delete_item(self, collection, item_id):
        return self.json("DELETE", f"/v1/collections/{self._q(collection)}/items/{self._q(item_id)}")

    @staticmethod
    def _query(vector=None, image=None, id=None):
        given = [x for x in (vector, image, id) if x is not None]
        if len(given) != 1:
            raise ValueError("a query needs exactly one of vector, image and id")
        if vector is not None:
            return {"vector": FrancaClient._vector(vector)}
        if image is not None:
            return {"image": _image_data_uri(image)}
        return {"id": str(id)}

    @staticmethod
    def _search_options(k, width, funnel, candidates, filter, include, rerank=None, exact=None,
                        ef=None, shortlist=None):
        body = {"k": int(k)}
        if rerank is not None:
            body["rerank"] = bool(rerank)
        if exact is not None:
            body["exact"] = bool(exact)
        if ef is not None:
            body["ef"] = int(ef)
        if shortlist is not None:
            body["shortlist"] = int(shortlist)
        if width is not None:
            body["width"] = int(width)
        if (funnel is not None and funnel is not False) or candidates is not None:
            f = {}
            if isinstance(funnel, dict):
                f.update(funnel)
            elif funnel is not None and funnel is not True:
                f["width"] = int(funnel)
            if candidates is not None:
                f["candidates"] = int(candidates)
            body["funnel"] = f
        if filter is not None:
            body["filter"] = filter
        if include:
            body["include"] = [include] if isinstance(include, str) else list(include)
        return body

    def search(self, collection, vector=None, image=None, id=None, k=10, width=None, funnel=None,
               candidates=None, filter=None, include=None, raw=False, patch=None, box=None,
               rerank=None, exact=None, ef=None, shortlist=None):
        """k nearest neighbours of one query: a vector, an image (path or bytes) or
        a stored item's id. width: prefix width (default the collection's).
        funnel: True (the server's defaults), an int (the shortlist prefix width) or
        a dict {"width", "candidates"}; candidates: shortlist size. filter: a
        metadata filter ({"key": value} or {"key": {"$gt": ...}}); include: a list
        of "metadata", "vector". Returns the results [{"id", "score", ...}] best
        first (raw=True: the whole answer). Patch collections: image or id with
        patch=(row, col) or box=(r0, c0, r1, c1) for the best patches, or alone for
        late-interaction ranking; each hit has "patch": [row, col]. rerank=False:
        on an f16 or int8 mirror, the compressed scores without the exact re-rank.
        Collections with an ANN graph: exact=True skips it; ef and shortlist tune it
        (raw=True shows which path ran in "search": "hnsw", "exact" or "funnel")."""
        body = self._query(vector, image, id)
        if patch is not None:
            body["patch"] = [int(x) for x in patch]
        if box is not None:
            body["box"] = [int(x) for x in box]
        body.update(self._search_options(k, width, funnel, candidates, filter, include, rerank,
                                         exact, ef, shortlist))
        resp = self.json("POST", f"/v1/collections/{self._q(collection)}/search", body)
        return resp if raw else resp["results"]

    def search_batch(self, collection, queries, k=10, width=None, funnel=None, candidates=None,
                     filter=None, include=None, raw=False, rerank=None, exact=None, ef=None,
                     shortlist=None):
        """Several queries in one call. queries: a list of dicts with one of
        "vector", "image" (path, bytes or data URI) or "id", or a 2-D array of
        vectors. Returns one result list per query."""
        qs = []
        if np is not None and isinstance(queries, np.ndarray):
            queries = list(queries)
        for q in queries:
            if isinstance(q, dict):
                if "image" in q and not str(q["image"]).startswith("data:"):
                    qs.append({"image": _image_data_uri(q["image"])})
                elif "vector" in q:
                    qs.append({"vector": self._vector(q["vector"])})
                else:
                    qs.append(dict(q))
            else:
                qs.append({"vector": self._vector(q)})
        body = {"queries": qs}
        body.update(self._search_options(k, width, funnel, candidates, filter, include, rerank,
                                         exact, ef, shortlist))
        resp = self.json("POST", f"/v1/collections/{self._q(collection)}/search", body)
        return resp if raw else [b["results"] for b in resp["batch"]]

    def heatmap(self, collection, item, image=None, id=None, patch=None, box=None):
        """PNG bytes: the query patch's (or box's) cosine over item's patch grid."""
        body = self._query(None, image, id)
        body["item"] = str(item)
        if patch is not None:
            body["patch"] = [int(x) for x in patch]
        if box is not None:
            body["box"] = [int(x) for x in box]
        return self.request("POST", f"/v1/collections/{self._q(collection)}/heatmap", body)[2]

    def segment(self, collection, image, k=10, temperature=0.1, format="png"):
        """In-context segmentation of image (a path or bytes) by the labelled
        patches of a patch collection: PNG bytes (8-bit grey, one label per
        pixel of the image) for format "png", or {"width", "height", "grid",
        "labels" [rows][cols], "scores"} for "json"."""
        body = {"image": _image_data_uri(image), "k": int(k), "temperature": float(temperature),
                "format": format}
        path = f"/v1/collections/{self._q(collection)}/segment"
        if format == "json":
            return self.json("POST", path, body)
        return self.request("POST", path, body)[2]

    def reembed(self, collection):
        """Starts re-embedding a collection (that keeps its source images) with its
        model's current checkpoint; returns the job."""
        return self.json("POST", f"/v1/collections/{self._q(collection)}/reembed", {})["job"]

    def add_ann(self, collection, width=64, m=16, ef_construction=200, ef=None):
        """Builds an HNSW graph over the prefix of an existing collection in the
        background; returns the job (wait_job(job["id"]) for its end)."""
        body = {"kind": "hnsw", "width": int(width), "m": int(m),
                "ef_construction": int(ef_construction)}
        if ef is not None:
            body["ef"] = int(ef)
        return self.json("POST", f"/v1/collections/{self._q(collection)}/ann", body)["job"]

    def remove_ann(self, collection):
        """Removes a collection's ANN graph (searches run exact again)."""
        return self.json("DELETE", f"/v1/collections/{self._q(collection)}/ann")

    def job(self, job_id):
        return self.json("GET", f"/v1/jobs/{self._q(job_id)}")

    def jobs(self):
        return self.json("GET", "/v1/jobs")["jobs"]

    def wait_job(self, job_id, timeout=600.0, poll=0.2):
        """Polls a job until it is no longer running; returns it (raises
        TimeoutError when it still runs after timeout seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            j = self.job(job_id)
            if j["status"] != "running":
                return j
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still running after {timeout} s ({j.get('done')}/{j.get('total')})")
            time.sleep(poll)


def main(argv=None):
    ap = argparse.ArgumentParser(description="franca-server client")
    ap.add_argument("--url", default=os.environ.get("FRANCA_URL", "http://127.0.0.1:8080"))
    ap.add_argument("--api-key-file", help="the API key (first key line of F; default: $FRANCA_API_KEY)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("embed", help="print CLS embeddings of images as JSON lines")
    e.add_argument("images", nargs="+")
    e.add_argument("--width", type=int)
    e.add_argument("--model")
    f = sub.add_parser("features", help="CLS, patch and pooled features of images (saved as .npz)")
    f.add_argument("images", nargs="+")
    f.add_argument("--width", type=int, action="append", help="Matryoshka width (repeatable)")
    f.add_argument("--patch", action="store_true", help="patch tokens")
    f.add_argument("--pooled", action="store_true", help="mean of the patch tokens")
    f.add_argument("--rasa", action="store_true", help="patch/pooled from RASA-cleaned tokens")
    f.add_argument("--no-cls", action="store_true", help="leave out the CLS features")
    f.add_argument("--no-normalize", action="store_true", help="do not L2-normalise")
    f.add_argument("--resolution", type=int)
    f.add_argument("--crop", choices=("center", "square"))
    f.add_argument("--model")
    f.add_argument("--f16", action="store_true", help="transfer float16")
    f.add_argument("--out", help="write the tensors to FILE.npz (needs numpy); else print shapes")
    pc = sub.add_parser("pca", help="PCA picture of images' patch tokens (saved as PNG)")
    pc.add_argument("images", nargs="+")
    pc.add_argument("--width", type=int, action="append", help="trained width (repeatable; default all)")
    pc.add_argument("--threshold", type=float, help="background below this (0..1, first component)")
    pc.add_argument("--refit", action="store_true", help="refit on the foreground")
    pc.add_argument("--rasa", action="store_true", help="RASA-cleaned tokens")
    pc.add_argument("--bilinear", action="store_true", help="bilinear upsampling")
    pc.add_argument("--model")
    pc.add_argument("--out", required=True, help="the PNG file")
    sub.add_parser("models", help="list the loaded models")
    s = sub.add_parser("swap", help="hot-swap a model from the server's --models-dir")
    s.add_argument("name")
    s.add_argument("checkpoint")
    s.add_argument("--token-file", required=True)
    co = sub.add_parser("collections", help="list, show, create or delete vector collections")
    co.add_argument("action", nargs="?", default="list", choices=("list", "show", "create", "delete"))
    co.add_argument("name", nargs="?")
    co.add_argument("--model")
    co.add_argument("--width", type=int)
    co.add_argument("--metric", choices=("cosine", "l2", "dot"))
    co.add_argument("--store-images", action="store_true", help="keep source images (for reembed)")
    ins = sub.add_parser("insert", help="insert images or vectors into a collection; prints the ids")
    ins.add_argument("collection")
    ins.add_argument("images", nargs="*")
    ins.add_argument("--vectors", help="FILE.npy (2-D, needs numpy) or FILE.json (a list of lists)")
    ins.add_argument("--ids", help="comma-separated ids, one per item (default: generated)")
    ins.add_argument("--metadata", help="a JSON object given to every item, or a JSON list with one per item")
    ins.add_argument("--batch", type=int, default=256, help="items per request (default 256)")
    se = sub.add_parser("search", help="k nearest neighbours in a collection")
    se.add_argument("collection")
    q = se.add_mutually_exclusive_group(required=True)
    q.add_argument("--image")
    q.add_argument("--vector", help="a JSON list of numbers")
    q.add_argument("--id", help="a stored item's id")
    se.add_argument("--k", type=int, default=10)
    se.add_argument("--width", type=int)
    se.add_argument("--funnel", action="store_true", help="Matryoshka funnel search (server defaults)")
    se.add_argument("--funnel-width", type=int, help="funnel shortlist prefix width (implies --funnel)")
    se.add_argument("--candidates", type=int, help="funnel shortlist size (implies --funnel)")
    se.add_argument("--filter", help="a JSON metadata filter")
    se.add_argument("--include", help="comma-separated: metadata,vector")
    args = ap.parse_args(argv)
    try:
        api_key = read_api_key(args.api_key_file) if args.api_key_file else os.environ.get("FRANCA_API_KEY")
    except (OSError, ValueError) as err:
        print(f"franca_client: {err}", file=sys.stderr)
        return 2
    c = FrancaClient(args.url, api_key=api_key or None)
    try:
        if args.cmd == "embed":
            for path, vec in zip(args.images, c.embed(args.images, args.width, args.model)):
                print(json.dumps({"image": path, "embedding": [float(x) for x in vec]}))
        elif args.cmd == "features":
            if args.out and np is None:
                print("franca_client: --out needs numpy", file=sys.stderr)
                return 2
            res = c.features(args.images, widths=args.width, cls=not args.no_cls, patch=args.patch,
                             pooled=args.pooled, rasa=args.rasa, normalize=not args.no_normalize,
                             resolution=args.resolution, crop=args.crop, model=args.model,
                             dtype="f16" if args.f16 else "f32")
            if args.out:
                np.savez(args.out, **res)
            shapes = {k: (list(v.shape) if np is not None else len(v)) for k, v in res.items()}
            print(json.dumps({"metadata": res.metadata, "tensors": shapes, "out": args.out}))
        elif args.cmd == "pca":
            png = c.pca(args.images, widths=args.width, threshold=args.threshold, refit=args.refit,
                        rasa=args.rasa, upsample="bilinear" if args.bilinear else None, model=args.model)
            with open(args.out, "wb") as out:
                out.write(png)
            print(json.dumps({"out": args.out, "bytes": len(png)}))
        elif args.cmd == "models":
            print(json.dumps(c.models(), indent=1))
        elif args.cmd == "collections":
            if args.action != "list" and not args.name:
                print(f"franca_client: collections {args.action} needs a NAME", file=sys.stderr)
                return 2
            if args.action == "list":
                out = c.collections()
            elif args.action == "show":
                out = c.collection(args.name)
            elif args.action == "delete":
                out = c.delete_collection(args.name)
            else:
                out = c.create_collection(args.name, model=args.model, width=args.width, metric=args.metric,
                                          store_images=True if args.store_images else None)
            print(json.dumps(out, indent=1))
        elif args.cmd == "insert":
            return _cli_insert(c, args)
        elif args.cmd == "search":
            funnel = None
            if args.funnel or args.funnel_width is not None or args.candidates is not None:
                funnel = {} if args.funnel_width is None else {"width": args.funnel_width}
            include = [x for x in args.include.split(",") if x] if args.include else None
            res = c.search(args.collection, vector=json.loads(args.vector) if args.vector else None,
                           image=args.image, id=args.id, k=args.k, width=args.width, funnel=funnel,
                           candidates=args.candidates, filter=json.loads(args.filter) if args.filter else None,
                           include=include)
            for r in res:
                print(json.dumps(r))
        else:
            token = open(args.token_file).readline().strip()
            print(json.dumps(c.swap(args.name, args.checkpoint, token)))
    except FrancaError as err:
        print(f"franca_client: {err}", file=sys.stderr)
        return 1
    except (OSError, urllib.error.URLError, ValueError) as err:
        print(f"franca_client: {err}", file=sys.stderr)
        return 1
    return 0


def _cli_insert(c, args):
    if bool(args.images) == bool(args.vectors):
        print("franca_client: insert needs IMAGE... or --vectors FILE (not both)", file=sys.stderr)
        return 2
    if args.vectors:
        if args.vectors.endswith(".npy"):
            if np is None:
                print("franca_client: --vectors FILE.npy needs numpy", file=sys.stderr)
                return 2
            vectors = np.load(args.vectors)
            if vectors.ndim != 2:
                print(f"franca_client: {args.vectors} is not 2-D", file=sys.stderr)
                return 2
        else:
            vectors = json.load(open(args.vectors))
        n = len(vectors)
    else:
        vectors, n = None, len(args.images)
    ids = args.ids.split(",") if args.ids else None
    if ids is not None and len(ids) != n:
        print(f"franca_client: --ids has {len(ids)} ids for {n} items", file=sys.stderr)
        return 2
    metadata = None
    if args.metadata:
        m = json.loads(args.metadata)
        metadata = m if isinstance(m, list) else [m] * n
    ids = c.insert(args.collection, vectors=vectors, images=args.images or None, ids=ids,
                   metadata=metadata, batch=max(1, args.batch))
    for i in ids:
        print(i)
    return 0


if __name__ == "__main__":
    sys.exit(main())
