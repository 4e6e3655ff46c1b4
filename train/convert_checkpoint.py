#!/usr/bin/python3
"""Convert an official Franca / DINOv2 PyTorch checkpoint (.pth) into the
safetensors checkpoint format read by the C engine.

Usage:
    python3 train/convert_checkpoint.py IN.pth [--rasa RASA.pth] [--dtype f32|bf16|f16]
        [--name NAME] [--version VERSION] [--family franca|dinov2]
        [--num-heads H] [--rasa-from-teacher] [--trust-pickle] -o OUT.safetensors

Input (docs/model.md §8.2, §8.3): a torch.save'd dict holding the state dict under "teacher"
(official Franca releases) or "model", or a plain state dict. Every occurrence of
"module." and "backbone." is removed from key names, chunked block keys
"blocks.{c}.{i}.X" become "blocks.{i}.X" (i is the global block index), and
"dino_head.*", "ibot_head.*", "rasa_head.*" keys are dropped.

RASA (docs/model.md §7.1): --rasa takes a plain state dict with pre_pos_layers.{t}.weight
[2,D] (t = 0..T-1) and pos_pred.weight [2,D], keys optionally prefixed "rasa_head."
or "module."; written as rasa.pre_pos_layers.{t}.weight and rasa.pos_pred.weight.
A "rasa_head.*" module found inside the backbone checkpoint itself is ignored by
default: the training code builds that head with a fresh initialisation and
RASA is only trained post-hoc, so those weights cannot be assumed meaningful. Pass
--rasa-from-teacher to use them anyway (only when no --rasa file is given).

The model configuration is inferred from the tensor shapes; every expected tensor
must be present with the expected shape and no other key may remain, so a layout
the converter does not recognise fails with the first unexpected key named.

Output: safetensors (8-byte little-endian header length, JSON header padded with
spaces to a multiple of 8, then the tensor data, contiguous, in a fixed order),
written atomically (temporary file, fsync, rename). __metadata__ holds
{"franca": "<config JSON>", "format": "pt"}.

Exit status: 0 success, 2 usage error, 1 any other error (one-line message).
"""

import argparse
import hashlib
import json
import math
import os
import re
import sys
import tempfile

import numpy as np

PROG = "convert_checkpoint"
FORMAT_VERSION = 1
HEAD_PREFIXES = ("dino_head.", "ibot_head.", "rasa_head.")
WRAPPER_KEYS = ("teacher", "model", "state_dict")
MAX_NAME = 127      # struct model_config: char name[128]
MAX_VERSION = 63    # char version[64]
MAX_RASA_LAYERS = 64  # schema/checkpoint-format.md limits
MAX_REGISTERS = 16
# Franca released layouts: key count 7 + 14*L (mask_token included).
FRANCA_KEY_COUNTS = {(768, 12): 175, (1024, 24): 343, (1536, 40): 567}

BLOCK_PARAMS_COMMON = (
    "norm1.weight", "norm1.bias",
    "attn.qkv.weight", "attn.qkv.bias",
    "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias",
)


class ConvertError(Exception):
    pass


# --------------------------------------------------------------------------- loading

def _torch_load(path, trust_pickle):
    import torch
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ConvertError("cannot open %s: %s" % (path, e.strerror or e))
    # torch.save writes a zip archive ("PK\x03\x04"); the legacy format starts with a pickle.
    if magic != b"PK\x03\x04" and not magic.startswith(b"\x80"):
        raise ConvertError("%s is not a PyTorch checkpoint (neither a zip archive nor a pickle)" % path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except TypeError:  # very old torch without weights_only
        if not trust_pickle:
            raise ConvertError("this torch has no safe loader (weights_only); rerun with "
                               "--trust-pickle if you trust %s" % path)
        return torch.load(path, map_location="cpu")
    except FileNotFoundError:
        raise ConvertError("cannot open %s: no such file" % path)
    except IsADirectoryError:
        raise ConvertError("cannot open %s: is a directory" % path)
    except Exception as e:  # unpickling errors, corrupt zip, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = "" if trust_pickle else " (if the file holds non-tensor objects and you trust it, use --trust-pickle)"
        raise ConvertError("cannot load %s: %s%s" % (path, msg, hint))


def _is_tensor(v):
    import torch
    return isinstance(v, torch.Tensor)


def _unwrap(obj, what):
    """Returns the state dict inside a loaded checkpoint object."""
    if not isinstance(obj, dict):
        raise ConvertError("%s: expected a dict, found %s" % (what, type(obj).__name__))
    for k in WRAPPER_KEYS:
        if k in obj and isinstance(obj[k], dict):
            obj = obj[k]
            break
    if not obj:
        raise ConvertError("%s: empty state dict" % what)
    for k, v in obj.items():
        if not isinstance(k, str):
            raise ConvertError("%s: non-string key %r" % (what, k))
        if not _is_tensor(v):
            raise ConvertError("%s: value of key '%s' is a %s, not a tensor "
                               "(unrecognised checkpoint layout)" % (what, k, type(v).__name__))
    return obj


def _to_f32(name, t):
    import torch
    if not t.is_floating_point():
        raise ConvertError("tensor '%s' has non-floating dtype %s" % (name, t.dtype))
    a = t.detach().to(torch.float32).contiguous().numpy()
    if not np.isfinite(a).all():
        raise ConvertError("tensor '%s' contains non-finite values" % name)
    return a


_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_FLAT = re.compile(r"^blocks\.(\d+)\.(.+)$")


def normalise_backbone(sd, take_rasa_head):
    """Strips prefixes, drops heads, flattens chunked blocks.
    Returns (backbone dict name->tensor in input order, rasa_head dict or None)."""
    out = {}
    rasa_head = {}
    chunk_of = {}   # global block index -> chunk index (chunked layout)
    layout = None   # "chunked" / "flat"
    for key, t in sd.items():
        k = key.replace("module.", "").replace("backbone.", "")
        if k.startswith(HEAD_PREFIXES):
            if k.startswith("rasa_head.") and take_rasa_head:
                rasa_head[k[len("rasa_head."):]] = t
            continue
        m = _CHUNKED.match(k)
        if m:
            c, i, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            if layout == "flat":
                raise ConvertError("key '%s' is chunked but earlier block keys were flat" % key)
            layout = "chunked"
            if chunk_of.setdefault(i, c) != c:
                raise ConvertError("block %d appears in chunks %d and %d (key '%s')"
                                   % (i, chunk_of[i], c, key))
            k = "blocks.%d.%s" % (i, rest)
        elif _FLAT.match(k):
            if layout == "chunked":
                raise ConvertError("key '%s' is flat but earlier block keys were chunked" % key)
            layout = "flat"
        if k in out:
            raise ConvertError("key '%s' maps to '%s', which is already present" % (key, k))
        out[k] = t
    if layout == "chunked":
        # Chunks hold consecutive global indices: chunk index never decreases.
        order = sorted(chunk_of)
        for a, b in zip(order, order[1:]):
            if chunk_of[b] < chunk_of[a]:
                raise ConvertError("chunked blocks out of order: block %d in chunk %d, block %d in chunk %d"
                                   % (a, chunk_of[a], b, chunk_of[b]))
    return out, (rasa_head if take_rasa_head else None)


def _shape(t):
    return tuple(int(s) for s in t.shape)


_KNOWN_TOP = re.compile(r"^(cls_token|pos_embed|mask_token|register_tokens|patch_embed\.proj\.(weight|bias)|"
                        r"norm\.(weight|bias)|blocks\.\d+\..+)$")


def _need(sd, key):
    if key not in sd:
        odd = [k for k in sd if not _KNOWN_TOP.match(k)]
        if odd:  # a layout we do not know: name its first foreign key
            raise ConvertError("unexpected key '%s' (unrecognised checkpoint layout; missing '%s')"
                               % (odd[0], key))
        raise ConvertError("missing key '%s'" % key)
    return sd[key]


def infer_config(sd, num_heads=None, family=None):
    cls = _need(sd, "cls_token")
    s = _shape(cls)
    if len(s) != 3 or s[0] != 1 or s[1] != 1 or s[2] < 1:
        raise ConvertError("cls_token has shape %s, expected [1, 1, D]" % list(s))
    D = s[2]

    block_ids = set()
    for k in sd:
        m = _FLAT.match(k)
        if m:
            block_ids.add(int(m.group(1)))
    if not block_ids:
        raise ConvertError("no transformer block keys (blocks.*) found")
    depth = max(block_ids) + 1
    for i in range(depth):
        if i not in block_ids:
            raise ConvertError("missing key 'blocks.%d.norm1.weight' (block %d absent, depth %d)"
                               % (i, i, depth))

    if num_heads is None:
        if D % 64:
            raise ConvertError("embed dim %d is not a multiple of 64; pass --num-heads" % D)
        num_heads = D // 64
    if num_heads < 1 or D % num_heads:
        raise ConvertError("--num-heads %d does not divide embed dim %d" % (num_heads, D))

    if "blocks.0.mlp.w12.weight" in sd:
        ffn = "swiglu"
        rows = _shape(sd["blocks.0.mlp.w12.weight"])[0]
        if rows % 2:
            raise ConvertError("blocks.0.mlp.w12.weight has an odd number of rows (%d)" % rows)
        hidden = rows // 2
    elif "blocks.0.mlp.fc1.weight" in sd:
        ffn = "mlp"
        hidden = _shape(sd["blocks.0.mlp.fc1.weight"])[0]
    else:
        known = ("w12.weight", "w12.bias", "w3.weight", "w3.bias",
                 "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
        mlp = [k for k in sd if k.startswith("blocks.0.mlp.")]
        odd = [k for k in mlp if k[len("blocks.0.mlp."):] not in known] or mlp
        if odd:
            raise ConvertError("unexpected key '%s' (unrecognised FFN layout: expected mlp.w12/mlp.w3 "
                               "or mlp.fc1/mlp.fc2)" % odd[0])
        raise ConvertError("missing key 'blocks.0.mlp.w12.weight' (no SwiGLU w12 or MLP fc1 found)")
    if hidden < 1:
        raise ConvertError("FFN hidden width is 0")

    pw = _shape(_need(sd, "patch_embed.proj.weight"))
    if len(pw) != 4 or pw[0] != D or pw[1] != 3 or pw[2] != pw[3] or pw[2] < 1:
        raise ConvertError("patch_embed.proj.weight has shape %s, expected [%d, 3, P, P]" % (list(pw), D))
    patch = pw[2]

    pe = _shape(_need(sd, "pos_embed"))
    if len(pe) != 3 or pe[0] != 1 or pe[2] != D or pe[1] < 2:
        raise ConvertError("pos_embed has shape %s, expected [1, 1+M*M, %d]" % (list(pe), D))
    M = int(math.isqrt(pe[1] - 1))
    if M * M != pe[1] - 1:
        raise ConvertError("pos_embed has %d rows; %d grid rows is not a square" % (pe[1], pe[1] - 1))

    layerscale = "blocks.0.ls1.gamma" in sd

    R = 0
    if "register_tokens" in sd:
        rs = _shape(sd["register_tokens"])
        if len(rs) != 3 or rs[0] != 1 or rs[2] != D:
            raise ConvertError("register_tokens has shape %s, expected [1, R, %d]" % (list(rs), D))
        R = rs[1]
        if R > MAX_REGISTERS:
            raise ConvertError("%d register tokens; at most %d supported" % (R, MAX_REGISTERS))

    if family is None:
        family = "franca" if ffn == "swiglu" else "dinov2"

    widths = [D // d for d in (16, 8, 4, 2, 1) if D % d == 0 and D // d >= 1]
    # Released models: Resize(256) + CenterCrop(224). The engine requires the crop
    # to be a multiple of the patch size; only odd test models need the fallback.
    crop = 224 - 224 % patch if patch <= 224 else patch
    resize = max(256, crop)
    return {
        "format_version": FORMAT_VERSION,
        "family": family,
        "embed_dim": D,
        "depth": depth,
        "num_heads": num_heads,
        "ffn": ffn,
        "ffn_hidden": hidden,
        "patch_size": patch,
        "pos_grid": M,
        "layerscale": layerscale,
        "norm_eps": 1e-6,
        "register_tokens": R,
        "matryoshka_widths": widths,
        "rasa_layers": 0,
        "preprocess": {"resize_size": resize, "crop_size": crop,
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    }


def expected_shapes(cfg, has_mask_token):
    """Ordered list of (name, shape) the backbone must have, in output order."""
    D, L, P, M = cfg["embed_dim"], cfg["depth"], cfg["patch_size"], cfg["pos_grid"]
    Hs, R = cfg["ffn_hidden"], cfg["register_tokens"]
    out = [("cls_token", (1, 1, D)), ("pos_embed", (1, 1 + M * M, D))]
    if has_mask_token:
        out.append(("mask_token", (1, D)))
    if R:
        out.append(("register_tokens", (1, R, D)))
    out += [("patch_embed.proj.weight", (D, 3, P, P)), ("patch_embed.proj.bias", (D,))]
    for i in range(L):
        b = "blocks.%d." % i
        out += [(b + "norm1.weight", (D,)), (b + "norm1.bias", (D,)),
                (b + "attn.qkv.weight", (3 * D, D)), (b + "attn.qkv.bias", (3 * D,)),
                (b + "attn.proj.weight", (D, D)), (b + "attn.proj.bias", (D,))]
        if cfg["layerscale"]:
            out.append((b + "ls1.gamma", (D,)))
        out += [(b + "norm2.weight", (D,)), (b + "norm2.bias", (D,))]
        if cfg["ffn"] == "swiglu":
            out += [(b + "mlp.w12.weight", (2 * Hs, D)), (b + "mlp.w12.bias", (2 * Hs,)),
                    (b + "mlp.w3.weight", (D, Hs)), (b + "mlp.w3.bias", (D,))]
        else:
            out += [(b + "mlp.fc1.weight", (Hs, D)), (b + "mlp.fc1.bias", (Hs,)),
                    (b + "mlp.fc2.weight", (D, Hs)), (b + "mlp.fc2.bias", (D,))]
        if cfg["layerscale"]:
            out.append((b + "ls2.gamma", (D,)))
    out += [("norm.weight", (D,)), ("norm.bias", (D,))]
    return out


def check_backbone(sd, cfg):
    """Checks the key set and every shape. Returns the ordered (name, shape) list."""
    exp = expected_shapes(cfg, "mask_token" in sd)
    names = set(n for n, _ in exp)
    for k in sd:  # input order: the first unexpected key is named
        if k not in names:
            raise ConvertError("unexpected key '%s' (unrecognised checkpoint layout: %s, D=%d, depth=%d, "
                               "ffn=%s, layerscale=%s)" % (k, cfg["family"], cfg["embed_dim"], cfg["depth"],
                                                           cfg["ffn"], str(cfg["layerscale"]).lower()))
    for n, shape in exp:
        if n not in sd:
            raise ConvertError("missing key '%s'" % n)
        got = _shape(sd[n])
        if got != shape:
            raise ConvertError("tensor '%s' has shape %s, expected %s" % (n, list(got), list(shape)))
    if cfg["ffn"] == "swiglu" and cfg["layerscale"] and cfg["register_tokens"] == 0 \
            and "mask_token" in sd:
        # Franca layout: 7 + 14 L keys (175 / 343 / 567 for B / L / g).
        assert len(exp) == 7 + 14 * cfg["depth"]
        want = FRANCA_KEY_COUNTS.get((cfg["embed_dim"], cfg["depth"]))
        if want is not None and len(sd) != want:
            raise ConvertError("Franca layout with D=%d, depth %d must have %d keys, found %d"
                               % (cfg["embed_dim"], cfg["depth"], want, len(sd)))
    return exp


_RASA_PRE = re.compile(r"^pre_pos_layers\.(\d+)\.weight$")


def normalise_rasa(sd, D, what):
    """Returns the list of T+1 [2,D] float32 arrays: pre_pos_layers 0..T-1, pos_pred."""
    clean = {}
    for key, t in sd.items():
        k = key.replace("module.", "")
        if k.startswith("rasa_head."):
            k = k[len("rasa_head."):]
        if k in clean:
            raise ConvertError("%s: key '%s' maps to '%s', which is already present" % (what, key, k))
        clean[k] = t
    pre = {}
    for k in clean:
        m = _RASA_PRE.match(k)
        if m:
            pre[int(m.group(1))] = k
        elif k != "pos_pred.weight":
            raise ConvertError("%s: unexpected key '%s' (RASA heads hold only pre_pos_layers.{t}.weight "
                               "and pos_pred.weight)" % (what, k))
    if "pos_pred.weight" not in clean:
        raise ConvertError("%s: missing key 'pos_pred.weight'" % what)
    T = len(pre)
    for t in range(T):
        if t not in pre:
            raise ConvertError("%s: missing key 'pre_pos_layers.%d.weight' (found %d pre-layers, "
                               "highest index %d)" % (what, t, T, max(pre)))
    if T > MAX_RASA_LAYERS:
        raise ConvertError("%s: %d pre-layers; at most %d supported" % (what, T, MAX_RASA_LAYERS))
    names = [pre[t] for t in range(T)] + ["pos_pred.weight"]
    mats = []
    for n in names:
        s = _shape(clean[n])
        if s != (2, D):
            raise ConvertError("%s: tensor '%s' has shape %s, expected [2, %d]" % (what, n, list(s), D))
        a = _to_f32(n, clean[n])
        # The operator orthonormalises the two rows: they must be non-zero and independent.
        a64 = a.astype(np.float64)
        nr, nc = np.linalg.norm(a64[0]), np.linalg.norm(a64[1])
        if nr == 0 or nc == 0:
            raise ConvertError("%s: tensor '%s' has an all-zero row" % (what, n))
        ur, v = a64[0] / nr, a64[1] / nc
        if np.linalg.norm(v - np.dot(v, ur) * ur) < 1e-6:
            raise ConvertError("%s: tensor '%s' has parallel rows" % (what, n))
        mats.append(a)
    return mats


# --------------------------------------------------------------------------- writing

def bf16_bits(a):
    """float32 array -> uint16 bfloat16 bits, round to nearest, ties to even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    bits = r.astype(np.uint16)
    if ((bits & 0x7F80) == 0x7F80).any():
        raise ConvertError("value too large for bf16")
    return bits


def encode(a, dtype, name):
    if dtype == "F32":
        return np.ascontiguousarray(a, dtype="<f4").tobytes()
    if dtype == "BF16":
        try:
            return bf16_bits(a).astype("<u2").tobytes()
        except ConvertError:
            raise ConvertError("tensor '%s' overflows bf16" % name)
    if dtype == "F16":
        if np.abs(a).max(initial=0.0) >= 65520.0:  # would round to inf
            raise ConvertError("tensor '%s' overflows f16" % name)
        return a.astype("<f2").tobytes()
    raise AssertionError(dtype)


def write_safetensors(path, tensors, dtype, metadata):
    """tensors: ordered list of (name, float32 ndarray). Writes atomically."""
    elem = {"F32": 4, "BF16": 2, "F16": 2}[dtype]
    header = {"__metadata__": metadata}
    off = 0
    for name, a in tensors:
        n = int(a.size) * elem
        header[name] = {"dtype": dtype, "shape": [int(s) for s in a.shape], "data_offsets": [off, off + n]}
        off += n
    hj = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    hj += b" " * ((-len(hj)) % 8)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(hj).to_bytes(8, "little"))
            f.write(hj)
            for name, a in tensors:
                f.write(encode(a, dtype, name))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return 8 + len(hj) + off


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 22)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


# --------------------------------------------------------------------------- main

def convert(args):
    if not os.path.isfile(args.input):
        raise ConvertError("cannot open %s: no such file" % args.input)
    if args.rasa and not os.path.isfile(args.rasa):
        raise ConvertError("cannot open %s: no such file" % args.rasa)
    if args.rasa and args.rasa_from_teacher:
        raise ConvertError("--rasa and --rasa-from-teacher are exclusive")
    raw = _unwrap(_torch_load(args.input, args.trust_pickle), args.input)
    sd, rasa_head = normalise_backbone(raw, args.rasa_from_teacher)
    n_in = len(raw)
    del raw
    cfg = infer_config(sd, args.num_heads, args.family)
    order = check_backbone(sd, cfg)
    D = cfg["embed_dim"]

    rasa = None
    rasa_src = None
    if args.rasa:
        rasa = normalise_rasa(_unwrap(_torch_load(args.rasa, args.trust_pickle), args.rasa), D, args.rasa)
        rasa_src = {"file": os.path.basename(args.rasa).encode("utf-8", "replace").decode("utf-8"),
                    "sha256": sha256_file(args.rasa)}
    elif args.rasa_from_teacher:
        if not rasa_head:
            raise ConvertError("--rasa-from-teacher: no rasa_head.* keys in %s" % args.input)
        rasa = normalise_rasa(rasa_head, D, args.input + " rasa_head")
    cfg["rasa_layers"] = len(rasa) - 1 if rasa else 0

    in_sha = sha256_file(args.input)
    name = args.name if args.name is not None else os.path.splitext(os.path.basename(args.input))[0]
    version = args.version if args.version is not None else in_sha[:12]
    def nbytes(text):
        try:
            return len(text.encode("utf-8"))
        except UnicodeEncodeError:
            return 1 << 30
    ctrl = re.compile("[\x00-\x1f\x7f]")
    if not name or nbytes(name) > MAX_NAME or ctrl.search(name):
        raise ConvertError("name must be 1..%d bytes of UTF-8 without control characters (use --name)"
                           % MAX_NAME)
    if nbytes(version) > MAX_VERSION or ctrl.search(version):
        raise ConvertError("version must be 0..%d bytes of UTF-8 without control characters" % MAX_VERSION)
    cfg["name"] = name
    cfg["version"] = version
    cfg["trained"] = True
    safe = lambda text: text.encode("utf-8", "replace").decode("utf-8")  # noqa: E731
    source = {"file": safe(os.path.basename(args.input)), "sha256": in_sha, "input_keys": n_in,
              "backbone_keys": len(order)}
    if rasa_src:
        source["rasa"] = rasa_src
    elif args.rasa_from_teacher:
        source["rasa"] = {"from": "rasa_head in input"}
    cfg["source"] = source

    tensors = [(n, _to_f32(n, sd[n])) for n, _ in order]
    if rasa:
        T = len(rasa) - 1
        tensors += [("rasa.pre_pos_layers.%d.weight" % t, rasa[t]) for t in range(T)]
        tensors.append(("rasa.pos_pred.weight", rasa[T]))
    dtype = {"f32": "F32", "bf16": "BF16", "f16": "F16"}[args.dtype]
    meta = {"franca": json.dumps(cfg, separators=(",", ":")), "format": "pt"}
    size = write_safetensors(args.output, tensors, dtype, meta)
    print("%s: wrote %s (%s D=%d depth=%d heads=%d %s hidden=%d patch=%d grid=%d registers=%d "
          "layerscale=%s rasa_layers=%d, %d backbone keys, %s, %d bytes)"
          % (PROG, args.output, cfg["family"], D, cfg["depth"], cfg["num_heads"], cfg["ffn"],
             cfg["ffn_hidden"], cfg["patch_size"], cfg["pos_grid"], cfg["register_tokens"],
             str(cfg["layerscale"]).lower(), cfg["rasa_layers"], len(order), args.dtype, size))


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description="Convert a Franca/DINOv2 .pth to safetensors.")
    p.add_argument("input", help="official .pth checkpoint")
    p.add_argument("-o", "--output", required=True, help="output .safetensors path")
    p.add_argument("--rasa", help="RASA head .pth (plain state dict)")
    p.add_argument("--dtype", choices=("f32", "bf16", "f16"), default="f32")
    p.add_argument("--f16", dest="dtype", action="store_const", const="f16", help="same as --dtype f16")
    p.add_argument("--name")
    p.add_argument("--version")
    p.add_argument("--family", choices=("franca", "dinov2"))
    p.add_argument("--num-heads", type=int, help="attention heads (default D/64)")
    p.add_argument("--rasa-from-teacher", action="store_true",
                   help="use rasa_head.* keys of the input checkpoint as the RASA head")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow arbitrary pickled objects in the input (unsafe for untrusted files)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        convert(args)
    except ConvertError as e:
        print("%s: error: %s" % (PROG, e), file=sys.stderr)
        return 1
    except MemoryError:
        print("%s: error: out of memory" % PROG, file=sys.stderr)
        return 1
    except OSError as e:
        print("%s: error: %s" % (PROG, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
