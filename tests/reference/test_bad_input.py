"""End-to-end hostile-input test of franca-embed.

Writes hostile safetensors checkpoints and corrupt images to a temporary directory
and runs franca-embed on each. Every case must exit with status 1 (never a signal,
never 0), print exactly one non-empty line on stderr that mentions the problem,
and leave no output file behind. A valid model + valid image run (exit 0) guards
against the failures being for an unrelated reason.

Contract: franca-embed --model CKPT [--resolution R] [--width W]... [--rasa]
          (--input-npy X.npy | IMAGE...) --out OUT.safetensors
          exit 0 success, 2 usage, 1 any other error (one line on stderr).

Environment: FRANCA_EMBED (the binary; franca-checkpoint is taken from the same
directory unless FRANCA_CHECKPOINT is set). Needs Python 3 stdlib + numpy; PIL
(python3-pil) for the JPEG/PNG cases.

Run: FRANCA_EMBED=build/engine/franca-embed /usr/bin/python3 tests/reference/test_bad_input.py
"""

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np

try:
    from PIL import Image
except ImportError:  # pragma: no cover
    Image = None

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("FRANCA_SOURCE_ROOT") or os.path.dirname(os.path.dirname(HERE))
EMBED = os.environ.get("FRANCA_EMBED") or os.path.join(ROOT, "build", "engine", "franca-embed")
CKPT_TOOL = os.environ.get("FRANCA_CHECKPOINT") or os.path.join(os.path.dirname(EMBED), "franca-checkpoint")
TIMEOUT = 300

n_pass = 0
n_fail = 0


def check(cond, what, detail=""):
    global n_pass, n_fail
    if cond:
        n_pass += 1
        print("ok   %s" % what)
    else:
        n_fail += 1
        print("FAIL %s%s" % (what, (": " + detail) if detail else ""))


# ----------------------------------------------------------------------------- safetensors

def st_bytes(header, data=b"", pad=True):
    """A safetensors file from a header (dict or raw str/bytes) and a data section."""
    if isinstance(header, dict):
        hj = json.dumps(header, separators=(",", ":")).encode()
    elif isinstance(header, str):
        hj = header.encode()
    else:
        hj = header
    if pad:
        hj += b" " * ((-len(hj)) % 8)
    return struct.pack("<Q", len(hj)) + hj + data


def read_st(path):
    """(ordered list of (name, dtype, shape, bytes), metadata dict) of a safetensors file."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    tensors = []
    for name, e in header.items():
        b, en = e["data_offsets"]
        tensors.append((name, e["dtype"], list(e["shape"]), data[b:en]))
    return tensors, meta


def write_st(tensors, meta):
    header = {}
    if meta is not None:
        header["__metadata__"] = meta
    off = 0
    data = []
    for name, dt, shape, b in tensors:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(b)]}
        off += len(b)
        data.append(b)
    return st_bytes(header, b"".join(data))


# ----------------------------------------------------------------------------- images

def png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xffffffff)


def huge_png(w, h):
    """A PNG whose IHDR declares w x h RGB (a decompression bomb header)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def pil_image_bytes(fmt, size=(96, 80)):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format=fmt)
    return buf.getvalue()


# ----------------------------------------------------------------------------- runner

def run(args):
    try:
        return subprocess.run([EMBED] + args, capture_output=True, text=True, errors="replace",
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return None


def expect_error(what, args, out, needles):
    """Runs franca-embed; expects exit 1, one stderr line containing every needle
    (case-insensitive), and no output file."""
    if os.path.exists(out):
        os.unlink(out)
    r = run(args)
    if r is None:
        check(False, what, "timed out after %d s" % TIMEOUT)
        return
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    msg = lines[0] if lines else ""
    ok = True
    detail = []
    if r.returncode < 0:
        ok = False
        detail.append("killed by signal %d" % -r.returncode)
    elif r.returncode != 1:
        ok = False
        detail.append("exit status %d, expected 1" % r.returncode)
    if len(lines) != 1:
        ok = False
        detail.append("%d stderr lines, expected 1: %r" % (len(lines), r.stderr[-400:]))
    for nd in needles:
        if nd.lower() not in msg.lower():
            ok = False
            detail.append("message %r lacks %r" % (msg, nd))
    if os.path.exists(out):
        ok = False
        detail.append("output file was written")
    check(ok, what, "; ".join(detail))


def main():
    if not (os.path.isfile(EMBED) and os.access(EMBED, os.X_OK)):
        print("FAIL franca-embed not found at %s (set FRANCA_EMBED)" % EMBED)
        return 1
    if not (os.path.isfile(CKPT_TOOL) and os.access(CKPT_TOOL, os.X_OK)):
        print("FAIL franca-checkpoint not found at %s (set FRANCA_CHECKPOINT)" % CKPT_TOOL)
        return 1
    tmp = tempfile.mkdtemp(prefix="franca-bad-input-")
    try:
        return body(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def body(tmp):
    def p(name):
        return os.path.join(tmp, name)

    out = p("out.safetensors")
    model = p("tiny.safetensors")
    r = subprocess.run([CKPT_TOOL, "init", "--arch", "vit_tiny_test", "--seed", "1", "--out", model],
                       capture_output=True, text=True)
    check(r.returncode == 0 and os.path.isfile(model), "franca-checkpoint init vit_tiny_test", r.stderr.strip())
    if r.returncode != 0:
        return 1

    # a valid input image (PNG written with PIL, or by hand without PIL)
    good_png = p("good.png")
    with open(good_png, "wb") as f:
        if Image is not None:
            f.write(pil_image_bytes("PNG"))
        else:
            rows = b"".join(b"\x00" + bytes([(x * 7 + y) & 255 for x in range(96 * 3)]) for y in range(80))
            ihdr = struct.pack(">IIBBBBB", 96, 80, 8, 2, 0, 0, 0)
            f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows))
                    + png_chunk(b"IEND", b""))

    # ---- control: the valid model on the valid image works
    if os.path.exists(out):
        os.unlink(out)
    r = run(["--model", model, good_png, "--out", out])
    check(r is not None and r.returncode == 0 and os.path.isfile(out),
          "control: valid model + valid PNG succeeds",
          "" if r is None else "exit %d: %s" % (r.returncode, r.stderr.strip()[-300:]))
    if os.path.exists(out):
        os.unlink(out)

    # ---- usage errors exit 2
    r = run([])
    check(r is not None and r.returncode == 2 and r.stderr.strip() != "", "usage: no arguments exits 2",
          "" if r is None else "exit %d" % r.returncode)
    r = run(["--model", model, good_png])
    check(r is not None and r.returncode == 2, "usage: missing --out exits 2",
          "" if r is None else "exit %d" % r.returncode)

    # ---- hostile safetensors files as --model
    def T(name, dtype="F32", shape=(1,), offsets=(0, 4)):
        return {name: {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}}

    zeros = b"\x00" * 64
    cases = [
        ("empty file", b"", ["empty"]),
        ("7-byte file", b"\x01\x02\x03\x04\x05\x06\x07", ["too short"]),
        ("header length > file", struct.pack("<Q", 1000) + b"{}" + zeros, ["header length"]),
        ("header length 2^63", struct.pack("<Q", 1 << 63) + b"{}" + zeros, ["header length"]),
        ("header length 2^64-1", b"\xff" * 8 + b"{}" + zeros, ["header length"]),
        ("truncated file", None, ["past the end"]),
        ("non-JSON header", st_bytes("this is not JSON at all", zeros), ["JSON"]),
        ("non-object header", st_bytes("[1,2,3]", zeros), ["object"]),
        ("tensor entry not an object", st_bytes({"a": 5}, zeros), ["object"]),
        ("missing dtype", st_bytes({"a": {"shape": [1], "data_offsets": [0, 4]}}, zeros), ["dtype"]),
        ("missing shape", st_bytes({"a": {"dtype": "F32", "data_offsets": [0, 4]}}, zeros), ["shape"]),
        ("missing data_offsets", st_bytes({"a": {"dtype": "F32", "shape": [1]}}, zeros), ["data_offsets"]),
        ("unknown dtype F64", st_bytes(T("a", "F64", (1,), (0, 8)), zeros), ["F64"]),
        ("unknown dtype I8", st_bytes(T("a", "I8", (4,), (0, 4)), zeros), ["I8"]),
        ("negative shape", st_bytes(T("a", "F32", (-1,), (0, 4)), zeros), ["shape"]),
        ("non-integer shape", st_bytes(T("a", "F32", (1.5,), (0, 4)), zeros), ["shape"]),
        ("shape product overflow", st_bytes(T("a", "F32", (1 << 32, 1 << 32, 16), (0, 0)), zeros), ["overflow"]),
        ("offsets out of range", st_bytes(T("a", "F32", (4,), (48, 64)), zeros[:16]), ["past the end"]),
        ("begin > end", st_bytes(T("a", "F32", (1,), (8, 4)), zeros), ["begin"]),
        ("overlapping ranges",
         st_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, zeros), ["overlap"]),
        ("size mismatch", st_bytes(T("a", "F32", (3,), (0, 8)), zeros), ["needs 12"]),
        ("duplicate names",
         st_bytes('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                  '"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', zeros), ["duplicate"]),
        ("metadata with non-string value", st_bytes({"__metadata__": {"franca": {"embed_dim": 64}}}, zeros),
         ["not a string"]),
        ("text file", b"hello, this is plainly not a checkpoint\n", ["header length"]),
    ]

    # checkpoint-level cases derived from the valid tiny model
    tensors, meta = read_st(model)
    cfg = json.loads(meta["franca"])
    valid_bytes = open(model, "rb").read()

    def with_cfg(**changes):
        c = dict(cfg)
        for k, v in changes.items():
            if v is None:
                c.pop(k, None)
            else:
                c[k] = v
        m = dict(meta)
        m["franca"] = json.dumps(c)
        return write_st(tensors, m)

    def without(name):
        return write_st([t for t in tensors if t[0] != name], meta)

    def reshaped(name):
        out_t = []
        for n, dt, shape, b in tensors:
            if n == name:
                shape = list(reversed(shape))
            out_t.append((n, dt, shape, b))
        return write_st(out_t, meta)

    def with_nan(name):
        out_t = []
        for n, dt, shape, b in tensors:
            if n == name and dt == "F32":
                arr = np.frombuffer(b, dtype="<f4").copy()
                arr[len(arr) // 2] = np.nan
                b = arr.tobytes()
            out_t.append((n, dt, shape, b))
        return write_st(out_t, meta)

    extra = tensors + [("blocks.2.norm1.weight", "F32", [64], b"\x00" * 256)]
    cases += [
        ("missing tensor", without("blocks.1.attn.proj.weight"), ["missing tensor", "blocks.1.attn.proj.weight"]),
        ("extra tensor", write_st(extra, meta), ["unexpected tensor", "blocks.2.norm1.weight"]),
        ("wrong shape", reshaped("blocks.0.attn.qkv.weight"), ["blocks.0.attn.qkv.weight", "shape"]),
        ("NaN weight", with_nan("blocks.0.mlp.w3.weight"), ["non-finite"]),
        ("no franca metadata", write_st(tensors, {"format": "pt"}), ["franca"]),
        ("no metadata at all", write_st(tensors, None), ["franca"]),
        ("franca metadata not JSON", write_st(tensors, dict(meta, franca="{\"embed_dim\": 64,")), ["JSON"]),
        ("franca metadata not an object", write_st(tensors, dict(meta, franca="[64]")), ["object"]),
        ("metadata lies: embed_dim", with_cfg(embed_dim=128, matryoshka_widths=[8, 16, 32, 64, 128]),
         ["shape"]),
        ("metadata lies: depth (more)", with_cfg(depth=3), ["missing tensor"]),
        ("metadata lies: depth (fewer)", with_cfg(depth=1), ["unexpected tensor"]),
        ("metadata lies: ffn_hidden", with_cfg(ffn_hidden=cfg["ffn_hidden"] + 8), ["shape"]),
        ("metadata lies: pos_grid", with_cfg(pos_grid=cfg["pos_grid"] + 1), ["pos_embed"]),
        ("metadata lies: rasa_layers", with_cfg(rasa_layers=cfg.get("rasa_layers", 0) + 1), ["rasa"]),
        ("metadata lies: no layerscale", with_cfg(layerscale=False), ["ls1"]),
        ("metadata: heads do not divide", with_cfg(num_heads=3), ["num_heads"]),
        ("metadata: missing required key", with_cfg(patch_size=None), ["patch_size"]),
        ("metadata: unsupported format_version", with_cfg(format_version=99), ["format_version"]),
    ]

    for i, (what, data, needles) in enumerate(cases):
        path = p("model_%02d.safetensors" % i)
        with open(path, "wb") as f:
            f.write(valid_bytes[:len(valid_bytes) // 2] if data is None else data)
        expect_error("model: " + what, ["--model", path, good_png, "--out", out], out,
                     [os.path.basename(path)] + needles)
    expect_error("model: missing file", ["--model", p("does_not_exist.safetensors"), good_png, "--out", out], out,
                 ["does_not_exist.safetensors"])
    expect_error("model: a directory", ["--model", tmp, good_png, "--out", out], out, [os.path.basename(tmp)])

    # ---- corrupt images with the valid model
    images = [
        ("empty .png", "empty.png", b"", []),
        ("empty .jpg", "empty.jpg", b"", []),
        ("text file named .png", "text.png", b"this is a text file, not an image\n" * 4, []),
        ("PNG declaring 100000x100000", "huge.png", huge_png(100000, 100000), ["100000"]),
        ("garbage after JPEG SOI", "garbage.jpg",
         b"\xff\xd8" + bytes(np.random.default_rng(3).integers(0, 256, 3000, dtype=np.uint8)), []),
        ("JPEG SOI only", "soi.jpg", b"\xff\xd8", []),
        ("PNG signature only", "sig.png", b"\x89PNG\r\n\x1a\n", []),
    ]
    if Image is not None:
        jpg = pil_image_bytes("JPEG", (160, 120))
        png = pil_image_bytes("PNG", (160, 120))
        images += [
            ("truncated JPEG", "trunc.jpg", jpg[:len(jpg) // 2], []),
            ("truncated PNG", "trunc.png", png[:len(png) // 2], []),
            ("JPEG cut after the header", "trunc_hdr.jpg", jpg[:200], []),
            ("PNG with corrupted IDAT", "bad_idat.png", png[:60] + b"\x00" * 40 + png[100:], []),
        ]
    else:
        print("note: PIL not available, truncated JPEG/PNG cases skipped")
    for what, name, data, needles in images:
        path = p(name)
        with open(path, "wb") as f:
            f.write(data)
        expect_error("image: " + what, ["--model", model, path, "--out", out], out, [name] + needles)
        # the bad image among good ones still fails the whole request
    expect_error("image: bad image after a good one", ["--model", model, good_png, p("text.png"), "--out", out], out,
                 ["text.png"])
    expect_error("image: missing file", ["--model", model, p("nope.png"), "--out", out], out, ["nope.png"])

    print("test_bad_input: %d passed, %d failed" % (n_pass, n_fail))
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
