"""Independent PyTorch reference of the Franca / DINOv2 ViT forward (docs/model.md
§2, §3, §5, §7, §8), plus the helpers the reference tests share.

Written from docs/model.md, not from the upstream code. Used by several test scripts; keep
the API stable:

    make_config(D, depth, heads, ffn="swiglu", hidden=None, patch=14, grid=16,
                layerscale=True, registers=0) -> dict
    make_state_dict(cfg, seed, ls_init=1e-5, chunks=0, mask_token=True) -> state dict
        in the official key layout ("blocks.{c}.{i}.X" when chunks > 0)
    make_rasa(D, T, seed, prefix="") -> RASA state dict (pre_pos_layers.{t}.weight, pos_pred.weight)
    save_pth(path, sd, wrap="teacher", prefix="", junk_heads=False)
    RefViT(cfg, sd, dtype=torch.float64): .forward_features(x) -> {"cls", "patch", ...},
        .rasa(patch, rasa_sd), .pos_embed_for(H, W)
    interpolate_pos_embed(pos_embed, M, h0, w0, H, W) -> the docs/model.md §3 table
    rasa_apply(patch, rasa_sd), matryoshka(cls, width)
    round_bf16(sd) -> state dict with every tensor rounded to bfloat16 (and back to f32)
    convert(pth, out, rasa=None, dtype="f32", extra=(), check=True) -> CompletedProcess
    read_safetensors(path) -> (dict name -> float32 ndarray, raw __metadata__ dict)
    read_safetensors_header(path) -> dict with header_len, header, data_start, file_size
    franca_config(meta) -> the parsed "franca" metadata JSON
    write_npy(path, array); run_embed(args, check=True) -> CompletedProcess
    embed(model, x, widths=(), rasa=False, extra=()) -> dict of outputs (runs franca-embed)
    rel_err(a, ref) -> max|a-ref| / max|ref|
    Checks: a tiny pass/fail counter printing one line per check and the final summary.

Environment: FRANCA_SOURCE_ROOT (default: two levels above this file), FRANCA_EMBED
(default: $FRANCA_SOURCE_ROOT/build/engine/franca-embed).
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SOURCE_ROOT = Path(os.environ.get("FRANCA_SOURCE_ROOT") or Path(__file__).resolve().parents[2])
CONVERTER = SOURCE_ROOT / "train" / "convert_checkpoint.py"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
NORM_EPS = 1e-6
INTERP_OFFSET = 0.1


def embed_binary():
    return os.environ.get("FRANCA_EMBED") or str(SOURCE_ROOT / "build" / "engine" / "franca-embed")


def have_embed():
    p = embed_binary()
    return os.path.isfile(p) and os.access(p, os.X_OK)


# --------------------------------------------------------------------------- configs and weights

def swiglu_hidden(D):
    """Released models' SwiGLU width (docs/model.md §2.1): ((int(4*D*2/3) + 7) // 8) * 8."""
    return ((int(4 * D * 2 / 3) + 7) // 8) * 8


def make_config(D, depth, heads, ffn="swiglu", hidden=None, patch=14, grid=16, layerscale=True,
                registers=0):
    assert D % heads == 0
    assert ffn in ("swiglu", "mlp")
    if hidden is None:
        hidden = swiglu_hidden(D) if ffn == "swiglu" else 4 * D
    return {
        "family": "franca" if ffn == "swiglu" else "dinov2",
        "embed_dim": D, "depth": depth, "num_heads": heads, "ffn": ffn, "ffn_hidden": hidden,
        "patch_size": patch, "pos_grid": grid, "layerscale": bool(layerscale),
        "register_tokens": registers, "norm_eps": NORM_EPS,
    }


def _block_shapes(cfg):
    D, Hs = cfg["embed_dim"], cfg["ffn_hidden"]
    s = [("norm1.weight", (D,)), ("norm1.bias", (D,)),
         ("attn.qkv.weight", (3 * D, D)), ("attn.qkv.bias", (3 * D,)),
         ("attn.proj.weight", (D, D)), ("attn.proj.bias", (D,))]
    if cfg["layerscale"]:
        s.append(("ls1.gamma", (D,)))
    s += [("norm2.weight", (D,)), ("norm2.bias", (D,))]
    if cfg["ffn"] == "swiglu":
        s += [("mlp.w12.weight", (2 * Hs, D)), ("mlp.w12.bias", (2 * Hs,)),
              ("mlp.w3.weight", (D, Hs)), ("mlp.w3.bias", (D,))]
    else:
        s += [("mlp.fc1.weight", (Hs, D)), ("mlp.fc1.bias", (Hs,)),
              ("mlp.fc2.weight", (D, Hs)), ("mlp.fc2.bias", (D,))]
    if cfg["layerscale"]:
        s.append(("ls2.gamma", (D,)))
    return s


def block_key(cfg, i, chunks):
    """Official name prefix of block i: "blocks.{c}.{i}." when chunked (docs/model.md §8.3)."""
    if chunks <= 0:
        return "blocks.%d." % i
    chunksize = max(1, cfg["depth"] // chunks)
    return "blocks.%d.%d." % (i // chunksize, i)


def make_state_dict(cfg, seed, ls_init=1e-5, chunks=0, mask_token=True, fill=None):
    """Random, well-scaled weights in the official layout.

    Linears ~ N(0, 1/fan_in) so that attention is far from uniform and every block
    matters; biases ~ N(0, 0.1^2); LayerNorm weights 1 + N(0, 0.1^2); LayerScale
    ls_init * (1 + N(0, 0.2^2)); cls / pos / register tokens N(0, 0.5^2).
    fill="zeros" / "empty" builds the same layout cheaply (for key-count tests)."""
    g = torch.Generator().manual_seed(int(seed))
    D, P, M, R = cfg["embed_dim"], cfg["patch_size"], cfg["pos_grid"], cfg["register_tokens"]

    def rnd(shape, std, mean=0.0):
        if fill == "zeros":
            return torch.zeros(shape)
        if fill == "empty":
            return torch.empty(shape)
        return torch.randn(shape, generator=g) * std + mean

    sd = {}
    sd["cls_token"] = rnd((1, 1, D), 0.5)
    sd["pos_embed"] = rnd((1, 1 + M * M, D), 0.5)
    if R:
        sd["register_tokens"] = rnd((1, R, D), 0.5)
    if mask_token:
        sd["mask_token"] = rnd((1, D), 0.02)
    sd["patch_embed.proj.weight"] = rnd((D, 3, P, P), (3 * P * P) ** -0.5)
    sd["patch_embed.proj.bias"] = rnd((D,), 0.1)
    for i in range(cfg["depth"]):
        pre = block_key(cfg, i, chunks)
        for name, shape in _block_shapes(cfg):
            if name.startswith(("norm1.weight", "norm2.weight")):
                t = rnd(shape, 0.1, 1.0)
            elif name.endswith(".gamma"):
                t = rnd(shape, 0.2 * ls_init, ls_init)
            elif name.endswith(".bias"):
                t = rnd(shape, 0.1)
            else:
                t = rnd(shape, shape[1] ** -0.5)
            sd[pre + name] = t
    sd["norm.weight"] = rnd((D,), 0.1, 1.0)
    sd["norm.bias"] = rnd((D,), 0.1)
    return sd


def make_rasa(D, T, seed, prefix=""):
    g = torch.Generator().manual_seed(int(seed) + 7919)
    sd = {}
    for t in range(T):
        sd["%spre_pos_layers.%d.weight" % (prefix, t)] = torch.randn((2, D), generator=g) * 0.05
    sd["%spos_pred.weight" % prefix] = torch.randn((2, D), generator=g) * 0.05
    return sd


def junk_head_keys(D, seed=0):
    g = torch.Generator().manual_seed(int(seed) + 31)
    return {
        "dino_head.mlp.0.weight": torch.randn((32, D), generator=g),
        "dino_head.mlp.0.bias": torch.randn((32,), generator=g),
        "dino_head.last_layer.weight_g": torch.randn((16, 1), generator=g),
        "ibot_head.mlp.0.weight": torch.randn((32, D), generator=g),
        "ibot_head.last_layer.weight_v": torch.randn((16, 32), generator=g),
    }


def save_pth(path, sd, wrap="teacher", prefix="", junk_heads=False):
    """torch.save sd, keys prefixed with prefix (e.g. "backbone." or "module.backbone."),
    wrapped as {wrap: sd} unless wrap is None; junk_heads adds dino_head./ibot_head. keys."""
    out = {prefix + k: v for k, v in sd.items()}
    if junk_heads:
        D = sd["cls_token"].shape[-1]
        out.update(junk_head_keys(D))
    obj = {wrap: out} if wrap else out
    torch.save(obj, str(path))


def round_bf16(sd):
    return {k: v.to(torch.bfloat16).to(torch.float32) for k, v in sd.items()}


# --------------------------------------------------------------------------- reference forward

_CHUNK = re.compile(r"^blocks\.\d+\.(\d+)\.(.+)$")


def clean_state_dict(sd):
    """Official layout -> flat names: strip module./backbone., drop heads, unchunk."""
    out = {}
    for k, v in sd.items():
        k = k.replace("module.", "").replace("backbone.", "")
        if k.startswith(("dino_head.", "ibot_head.", "rasa_head.")):
            continue
        m = _CHUNK.match(k)
        if m:
            k = "blocks.%s.%s" % (m.group(1), m.group(2))
        out[k] = v
    return out


def interpolate_pos_embed(pos_embed, M, h0, w0, H, W):
    """docs/model.md §3: pos_embed [1, 1+M*M, D] -> [1, 1+h0*w0, D] (float32 interpolation)."""
    pos_embed = torch.as_tensor(pos_embed)
    if h0 * w0 == M * M and H == W:
        return pos_embed
    D = pos_embed.shape[-1]
    cls_pos = pos_embed[:, :1]
    grid = pos_embed[:, 1:].to(torch.float32).reshape(1, M, M, D).permute(0, 3, 1, 2)
    sx = (h0 + INTERP_OFFSET) / M
    sy = (w0 + INTERP_OFFSET) / M
    out = F.interpolate(grid, mode="bicubic", antialias=False, align_corners=False, scale_factor=(sx, sy))
    assert tuple(out.shape[-2:]) == (h0, w0), (out.shape, h0, w0)
    out = out.permute(0, 2, 3, 1).reshape(1, h0 * w0, D).to(pos_embed.dtype)
    return torch.cat([cls_pos, out], dim=1)


def _rasa_mats(rasa_sd):
    clean = {}
    for k, v in rasa_sd.items():
        k = k.replace("module.", "")
        for p in ("rasa_head.", "rasa."):
            if k.startswith(p):
                k = k[len(p):]
        clean[k] = torch.as_tensor(np.asarray(v) if isinstance(v, np.ndarray) else v)
    T = 0
    while "pre_pos_layers.%d.weight" % T in clean:
        T += 1
    return [clean["pre_pos_layers.%d.weight" % t] for t in range(T)] + [clean["pos_pred.weight"]]


def rasa_apply(patch, rasa_sd):
    """docs/model.md §7.2 on patch tokens [..., D], in float64; returns float64 tensor."""
    z = torch.as_tensor(patch).to(torch.float64)
    for Wt in _rasa_mats(rasa_sd):
        Wt = Wt.to(torch.float64)
        ur = Wt[0] / Wt[0].norm()
        v = Wt[1] / Wt[1].norm()
        uc = v - (v @ ur) * ur
        uc = uc / uc.norm()
        z = z - (z @ ur)[..., None] * ur - (z @ uc)[..., None] * uc
    return z


def matryoshka(cls, width):
    c = torch.as_tensor(cls).to(torch.float64)[..., :width]
    return c / c.norm(dim=-1, keepdim=True)


class RefViT(torch.nn.Module):
    def __init__(self, cfg, sd, dtype=torch.float64):
        super().__init__()
        self.cfg = dict(cfg)
        self.dtype = dtype
        sd = clean_state_dict(sd)
        D = cfg["embed_dim"]
        self.D, self.L, self.H = D, cfg["depth"], cfg["num_heads"]
        self.hd = D // self.H
        self.P, self.M, self.R = cfg["patch_size"], cfg["pos_grid"], cfg.get("register_tokens", 0)
        self.eps = cfg.get("norm_eps", NORM_EPS)

        def get(k, shape):
            t = sd[k]
            assert tuple(t.shape) == tuple(shape), (k, tuple(t.shape), shape)
            return t.detach().to(torch.float32).clone()

        self.pos_embed32 = get("pos_embed", (1, 1 + self.M * self.M, D))
        c = lambda t: t.to(dtype)
        self.cls_token = c(get("cls_token", (1, 1, D)))
        self.reg = c(get("register_tokens", (1, self.R, D))) if self.R else None
        self.patch_w = c(get("patch_embed.proj.weight", (D, 3, self.P, self.P)))
        self.patch_b = c(get("patch_embed.proj.bias", (D,)))
        self.blocks = []
        for i in range(self.L):
            self.blocks.append({n: c(get("blocks.%d.%s" % (i, n), s)) for n, s in _block_shapes(cfg)})
        self.norm_w = c(get("norm.weight", (D,)))
        self.norm_b = c(get("norm.bias", (D,)))

    def pos_embed_for(self, H, W):
        return interpolate_pos_embed(self.pos_embed32, self.M, H // self.P, W // self.P, H, W)

    def _attn(self, b, x):
        B, N, D = x.shape
        qkv = F.linear(x, b["attn.qkv.weight"], b["attn.qkv.bias"])
        qkv = qkv.reshape(B, N, 3, self.H, self.hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (self.hd ** -0.5), qkv[1], qkv[2]
        a = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        o = (a @ v).transpose(1, 2).reshape(B, N, D)
        return F.linear(o, b["attn.proj.weight"], b["attn.proj.bias"])

    def _ffn(self, b, x):
        if self.cfg["ffn"] == "swiglu":
            x12 = F.linear(x, b["mlp.w12.weight"], b["mlp.w12.bias"])
            x1, x2 = x12.chunk(2, dim=-1)
            return F.linear(F.silu(x1) * x2, b["mlp.w3.weight"], b["mlp.w3.bias"])
        h = F.gelu(F.linear(x, b["mlp.fc1.weight"], b["mlp.fc1.bias"]))  # exact erf GELU
        return F.linear(h, b["mlp.fc2.weight"], b["mlp.fc2.bias"])

    @torch.no_grad()
    def forward_features(self, x):
        x = torch.as_tensor(x).to(self.dtype)
        B, C, H, W = x.shape
        assert C == 3 and H % self.P == 0 and W % self.P == 0, x.shape
        D = self.D
        t = F.conv2d(x, self.patch_w, self.patch_b, stride=self.P)       # [B, D, h0, w0]
        t = t.flatten(2).transpose(1, 2)                                  # [B, N, D] row-major
        t = torch.cat([self.cls_token.expand(B, -1, -1), t], dim=1)
        t = t + self.pos_embed_for(H, W).to(self.dtype)
        if self.R:
            t = torch.cat([t[:, :1], self.reg.expand(B, -1, -1), t[:, 1:]], dim=1)
        blocks = []  # the residual stream after each block, for get_intermediate_layers
        for b in self.blocks:
            y = self._attn(b, F.layer_norm(t, (D,), b["norm1.weight"], b["norm1.bias"], self.eps))
            t = t + (b["ls1.gamma"] * y if self.cfg["layerscale"] else y)
            y = self._ffn(b, F.layer_norm(t, (D,), b["norm2.weight"], b["norm2.bias"], self.eps))
            t = t + (b["ls2.gamma"] * y if self.cfg["layerscale"] else y)
            blocks.append(t)
        xn = F.layer_norm(t, (D,), self.norm_w, self.norm_b, self.eps)
        return {"cls": xn[:, 0], "reg": xn[:, 1:1 + self.R], "patch": xn[:, 1 + self.R:], "prenorm": t,
                "blocks": blocks}

    @torch.no_grad()
    def get_intermediate_layers(self, x, n=1, norm=True):
        """DINOv2's get_intermediate_layers(x, n, reshape=False, return_class_token=True, norm):
        n an int (the last n blocks) or a list of block indices; [(patch, cls)] per block in
        ascending block order, registers dropped, each through the final norm when norm."""
        blocks = self.forward_features(x)["blocks"]
        total = len(blocks)
        take = range(total - n, total) if isinstance(n, int) else n
        outs = [blocks[i] for i in range(total) if i in take]
        if norm:
            outs = [F.layer_norm(o, (self.D,), self.norm_w, self.norm_b, self.eps) for o in outs]
        return [(o[:, 1 + self.R:], o[:, 0]) for o in outs]

    def forward(self, x):
        return self.forward_features(x)["cls"]

    @staticmethod
    def rasa(patch, rasa_sd):
        return rasa_apply(patch, rasa_sd)


# --------------------------------------------------------------------------- files and tools

def convert(pth, out, rasa=None, dtype="f32", extra=(), check=True):
    cmd = [PYTHON, str(CONVERTER), str(pth), "--dtype", dtype, "-o", str(out)]
    if rasa is not None:
        cmd += ["--rasa", str(rasa)]
    cmd += [str(a) for a in extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("converter failed (%d): %s" % (r.returncode, r.stderr.strip()[-2000:]))
    return r


def read_safetensors_header(path):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("%s: shorter than 8 bytes" % path)
        n = int.from_bytes(raw, "little")
        if n > size - 8:
            raise ValueError("%s: header length %d exceeds file" % (path, n))
        text = f.read(n)
    header = json.loads(text.decode("utf-8"))
    return {"header_len": n, "header": header, "header_text": text, "data_start": 8 + n, "file_size": size}


_NP = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}


def read_safetensors(path):
    """-> (dict name -> float32 ndarray, raw __metadata__ dict ({} if none))."""
    h = read_safetensors_header(path)
    meta = h["header"].get("__metadata__", {}) or {}
    out = {}
    with open(path, "rb") as f:
        for name, info in h["header"].items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            f.seek(h["data_start"] + a)
            buf = f.read(b - a)
            if len(buf) != b - a:
                raise ValueError("%s: tensor %s runs past the end of the file" % (path, name))
            dt = info["dtype"]
            if dt == "BF16":
                arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            elif dt in _NP:
                arr = np.frombuffer(buf, dtype=_NP[dt]).astype(np.float32)
            else:
                raise ValueError("%s: tensor %s has unsupported dtype %s" % (path, name, dt))
            out[name] = arr.reshape(info["shape"]).copy()
    return out, meta


def franca_config(meta):
    if isinstance(meta, (str, Path)):
        meta = read_safetensors(meta)[1]
    return json.loads(meta["franca"])


def write_npy(path, array):
    np.save(str(path), np.ascontiguousarray(np.asarray(array, dtype=np.float32)))


def run_embed(args, check=True, timeout=900, isa=None):
    """isa: cap the CPU kernels there (oneDNN's ONEDNN_MAX_CPU_ISA, e.g. "AVX2")."""
    cmd = [embed_binary()] + [str(a) for a in args]
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa) if isa else None
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise RuntimeError("franca-embed failed (%d): %s" % (r.returncode, r.stderr.strip()[-2000:]))
    return r


def embed(model, x, widths=(), rasa=False, extra=(), tmpdir=None, precision="fp32"):
    """Runs franca-embed on the float32 array x [B,3,H,W] (products in precision);
    returns its output tensors."""
    with tempfile.TemporaryDirectory(dir=tmpdir) as d:
        xin = os.path.join(d, "x.npy")
        out = os.path.join(d, "out.safetensors")
        write_npy(xin, x)
        args = ["--model", model, "--device", "cpu", "--precision", precision, "--input-npy", xin,
                "--out", out]
        for w in widths:
            args += ["--width", w]
        if rasa:
            args.append("--rasa")
        run_embed(list(args) + list(extra))
        return read_safetensors(out)[0]


def rel_err(a, ref):
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if a.shape != ref.shape:
        return float("inf")
    m = np.abs(ref).max()
    return float(np.abs(a - ref).max() / (m if m > 0 else 1.0))


class Checks:
    """Counts checks; prints "PASS name ..." / "FAIL name ..." lines and the summary."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, detail=""):
        ok = bool(ok)
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print("%s %s%s" % ("PASS" if ok else "FAIL", name, (": " + detail) if detail else ""), flush=True)
        return ok

    def run(self, name, fn):
        """Runs fn() -> (ok, detail) or raises; an exception counts as a failure."""
        try:
            ok, detail = fn()
        except Exception as e:  # noqa: BLE001 - report any failure as one line
            ok, detail = False, "%s: %s" % (type(e).__name__, str(e).strip().replace("\n", " ")[:500])
        return self.check(name, ok, detail)

    def finish(self):
        print("%d passed, %d failed" % (self.passed, self.failed), flush=True)
        return 1 if self.failed else 0
