"""End-to-end forward parity: official-layout .pth -> train/convert_checkpoint.py ->
franca-embed --input-npy, compared with the PyTorch reference (refmodel.RefViT).

Also checks the reference itself against independent numpy re-derivations of
docs/model.md (§3 pos-embed interpolation, a naive per-head forward, the RASA operator).

Tolerance: max|a - ref| / max|ref| <= 1e-4 for cls, patch, patch_rasa and cls_w{W} with
--precision fp32; with bf16 products, <= 3e-2 and every row's cosine >= 0.999. The same for
franca-embed --layer (layer{i}_cls, layer{i}_patch, with and without the final norm) against
RefViT.get_intermediate_layers. Run at each
kernel level the CPU offers (ONEDNN_MAX_CPU_ISA set for franca-embed only): bf16 at AMX and
AVX512-BF16, fp32 at AVX-512 and AVX2.
Env: FRANCA_EMBED, FRANCA_SOURCE_ROOT (see refmodel), FRANCA_DEVICE (default cpu).

Run: /usr/bin/python3 tests/reference/test_forward_parity.py
"""

import math
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import refmodel as rm  # noqa: E402

torch.set_num_threads(2)
TOL = 1e-4
DEVICE = os.environ.get("FRANCA_DEVICE", "cpu")
C = rm.Checks()
TMP = tempfile.mkdtemp(prefix="franca-parity-test-")


def p(name):
    return os.path.join(TMP, name)


# ------------------------------------------------------ independent numpy version of docs/model.md

def np_cubic_weights(t, A=-0.75):
    return (((A * (t + 1) - 5 * A) * (t + 1) + 8 * A) * (t + 1) - 4 * A,
            ((A + 2) * t - (A + 3)) * t * t + 1,
            ((A + 2) * (1 - t) - (A + 3)) * (1 - t) * (1 - t) + 1,
            ((A * (2 - t) - 5 * A) * (2 - t) + 8 * A) * (2 - t) - 4 * A)


def np_axis_matrix(M, n):
    """[n, M] matrix of docs/model.md §3 for one axis (scale (n+0.1)/M)."""
    ratio = M / (n + 0.1)
    Wm = np.zeros((n, M))
    for dst in range(n):
        src = ratio * (dst + 0.5) - 0.5
        i0 = min(math.floor(src), M - 1)
        t = min(max(src - i0, 0.0), 1.0)
        for k, w in zip((-1, 0, 1, 2), np_cubic_weights(t)):
            Wm[dst, min(max(i0 + k, 0), M - 1)] += w
    return Wm


def np_interp_pos(pos, M, h0, w0, H, W):
    pos = np.asarray(pos, dtype=np.float64)
    if h0 * w0 == M * M and H == W:
        return pos
    D = pos.shape[-1]
    grid = pos[0, 1:].reshape(M, M, D)
    out = np.einsum("ha,abd,wb->hwd", np_axis_matrix(M, h0), grid, np_axis_matrix(M, w0))
    return np.concatenate([pos[:, :1], out.reshape(1, h0 * w0, D)], axis=1)


def np_layernorm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


_erf = np.vectorize(math.erf)


def np_forward(cfg, sd, x, pos=None):
    """Naive float64 forward written separately from RefViT: explicit patch loop,
    per-head attention with Q/K/V row blocks, SwiGLU halves, erf GELU. pos: the
    (already interpolated) position table [1, 1+N, D]; default: np_interp_pos."""
    sd = {k: v.detach().double().numpy() for k, v in rm.clean_state_dict(sd).items()}
    x = np.asarray(x, dtype=np.float64)
    B, _, H, W = x.shape
    D, P, M, R = cfg["embed_dim"], cfg["patch_size"], cfg["pos_grid"], cfg["register_tokens"]
    nh, hd, Hs = cfg["num_heads"], D // cfg["num_heads"], cfg["ffn_hidden"]
    h0, w0 = H // P, W // P
    Wp = sd["patch_embed.proj.weight"].reshape(D, -1)
    if pos is None:
        pos = np_interp_pos(sd["pos_embed"].astype(np.float32), M, h0, w0, H, W)
    pos = np.asarray(pos, dtype=np.float64)[0]
    cls_out, patch_out = [], []
    for b in range(B):
        toks = []
        for i in range(h0):
            for j in range(w0):
                toks.append(Wp @ x[b, :, i * P:(i + 1) * P, j * P:(j + 1) * P].reshape(-1)
                            + sd["patch_embed.proj.bias"])
        t = np.stack([sd["cls_token"][0, 0]] + toks) + pos
        if R:
            t = np.concatenate([t[:1], sd["register_tokens"][0], t[1:]])
        for L in range(cfg["depth"]):
            g = lambda n: sd["blocks.%d.%s" % (L, n)]  # noqa: E731
            y = np_layernorm(t, g("norm1.weight"), g("norm1.bias"))
            heads = []
            for h in range(nh):
                sl = slice(h * hd, (h + 1) * hd)
                q = y @ g("attn.qkv.weight")[sl].T + g("attn.qkv.bias")[sl]
                k = y @ g("attn.qkv.weight")[D:2 * D][sl].T + g("attn.qkv.bias")[D:2 * D][sl]
                v = y @ g("attn.qkv.weight")[2 * D:][sl].T + g("attn.qkv.bias")[2 * D:][sl]
                s = q @ k.T / math.sqrt(hd)
                s = np.exp(s - s.max(-1, keepdims=True))
                heads.append((s / s.sum(-1, keepdims=True)) @ v)
            a = np.concatenate(heads, -1) @ g("attn.proj.weight").T + g("attn.proj.bias")
            t = t + (g("ls1.gamma") * a if cfg["layerscale"] else a)
            y = np_layernorm(t, g("norm2.weight"), g("norm2.bias"))
            if cfg["ffn"] == "swiglu":
                u = y @ g("mlp.w12.weight")[:Hs].T + g("mlp.w12.bias")[:Hs]
                v = y @ g("mlp.w12.weight")[Hs:].T + g("mlp.w12.bias")[Hs:]
                f = (u / (1 + np.exp(-u)) * v) @ g("mlp.w3.weight").T + g("mlp.w3.bias")
            else:
                u = y @ g("mlp.fc1.weight").T + g("mlp.fc1.bias")
                f = (0.5 * u * (1 + _erf(u / math.sqrt(2)))) @ g("mlp.fc2.weight").T + g("mlp.fc2.bias")
            t = t + (g("ls2.gamma") * f if cfg["layerscale"] else f)
        t = np_layernorm(t, sd["norm.weight"], sd["norm.bias"])
        cls_out.append(t[0])
        patch_out.append(t[1 + R:])
    return np.stack(cls_out), np.stack(patch_out)


def np_rasa(patch, rasa_sd):
    z = np.asarray(patch, dtype=np.float64)
    T = sum(1 for k in rasa_sd if "pre_pos_layers" in k)
    mats = [rasa_sd["pre_pos_layers.%d.weight" % t] for t in range(T)] + [rasa_sd["pos_pred.weight"]]
    P = np.eye(z.shape[-1])
    for Wt in mats:
        Wt = Wt.double().numpy()
        u1 = Wt[0] / np.linalg.norm(Wt[0])
        v = Wt[1] / np.linalg.norm(Wt[1])
        u2 = v - v.dot(u1) * u1
        u2 /= np.linalg.norm(u2)
        U = np.stack([u1, u2], 1)
        P = (np.eye(len(u1)) - U @ U.T) @ P     # applied after the previous planes
    return z @ P.T, mats


# --------------------------------------------------------------------------- reference self-checks

def check_interpolation():
    g = torch.Generator().manual_seed(11)
    for M, (h0, w0) in ((37, (16, 16)), (16, (37, 37)), (16, (16, 24)), (4, (2, 8))):
        D = 8
        pos = torch.randn((1, 1 + M * M, D), generator=g)
        H, W = h0 * 14, w0 * 14
        ref = rm.interpolate_pos_embed(pos, M, h0, w0, H, W).double().numpy()
        mine = np_interp_pos(pos.numpy(), M, h0, w0, H, W)
        err = rm.rel_err(ref, mine)
        # The same call in float64 must match the recipe to rounding: proves the recipe
        # (ratio M/(n+0.1), A=-0.75, clamped taps), not just float32 closeness.
        g64 = pos[:, 1:].double().reshape(1, M, M, D).permute(0, 3, 1, 2)
        t64 = torch.nn.functional.interpolate(g64, mode="bicubic", antialias=False, align_corners=False,
                                              scale_factor=((h0 + 0.1) / M, (w0 + 0.1) / M))
        e64 = rm.rel_err(t64.permute(0, 2, 3, 1).reshape(1, h0 * w0, D).numpy(), mine[:, 1:])
        C.check("pos-embed interpolation %d->(%d,%d): reference = numpy docs/model.md section 3 recipe"
                % (M, h0, w0), ref.shape == mine.shape and err < 1e-5 and e64 < 1e-12,
                "rel err f32 %.2e, f64 %.2e" % (err, e64))
    pos = torch.randn((1, 17, 4), generator=g)
    same = torch.equal(rm.interpolate_pos_embed(pos, 4, 4, 4, 56, 56), pos)
    C.check("pos-embed: identity (no interpolation) exactly when N == M*M and H == W", same)


def check_reference_semantics():
    cases = [
        ("swiglu ls", rm.make_config(64, 2, 2, grid=3, hidden=96), 0.7, (3, 42, 56)),
        ("mlp ls reg2", rm.make_config(64, 2, 4, ffn="mlp", grid=3, registers=2), 0.7, (2, 56, 28)),
        ("swiglu no-ls", rm.make_config(64, 1, 2, grid=2, hidden=80, layerscale=False), 1.0, (1, 28, 28)),
    ]
    for label, cfg, ls, (B, H, W) in cases:
        sd = rm.make_state_dict(cfg, seed=21, ls_init=ls, chunks=2)
        x = np.random.default_rng(5).standard_normal((B, 3, H, W)).astype(np.float32)
        out = rm.RefViT(cfg, sd).forward_features(x)
        ncls, npatch = np_forward(cfg, sd, x, pos=rm.RefViT(cfg, sd).pos_embed_for(H, W).numpy())
        e1, e2 = rm.rel_err(out["cls"], ncls), rm.rel_err(out["patch"], npatch)
        C.check("reference vs naive numpy forward (%s, %dx%dx%d)" % (label, B, H, W),
                max(e1, e2) < 1e-10, "cls %.1e patch %.1e" % (e1, e2))
    cfg = rm.make_config(64, 1, 1, grid=2, hidden=64)
    sd = rm.make_state_dict(cfg, seed=3, chunks=0)
    rsd = rm.make_rasa(64, 9, seed=4)
    z = torch.randn((2, 6, 64), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    r1 = rm.RefViT(cfg, sd).rasa(z, rsd).numpy()
    r2, mats = np_rasa(z.numpy(), rsd)
    last = mats[-1].double().numpy()
    resid = np.abs(r1 @ (last / np.linalg.norm(last, axis=1, keepdims=True)).T).max()
    C.check("RASA reference = product of plane projections; output orthogonal to pos_pred rows",
            rm.rel_err(r1, r2) < 1e-12 and resid < 1e-10, "rel %.1e, residual %.1e" % (rm.rel_err(r1, r2), resid))
    # Order matters: successive planes are not orthogonal.
    rev = {"pos_pred.weight": rsd["pre_pos_layers.0.weight"], "pre_pos_layers.0.weight": rsd["pos_pred.weight"]}
    rev.update({k: v for k, v in rsd.items() if k not in rev and k != "pre_pos_layers.0.weight"})
    C.check("RASA reference: order of planes matters", rm.rel_err(rm.rasa_apply(z, rev), r1) > 1e-6)


# --------------------------------------------------------------------------- end-to-end parity

# Precision variants: (precision, ONEDNN_MAX_CPU_ISA cap or None for the CPU's best).
FP32 = (("fp32", None),)
BF16_TOL = 3e-2      # max|a - ref| / max|ref| for bf16 products
BF16_COSINE = 0.999  # smallest cosine of any output row to the reference's


def cpu_isas():
    """The kernel levels this CPU offers, best first, as ONEDNN_MAX_CPU_ISA names."""
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    isas = []
    for name, need in (("AVX512_CORE_AMX", "amx_bf16"), ("AVX512_CORE_BF16", "avx512_bf16"),
                       ("AVX512_CORE", "avx512f"), ("AVX2", "avx2")):
        if need in flags:
            isas.append(name)
    return isas


def isa_variants():
    """bf16 at each bf16-capable level (AMX, AVX512-BF16), fp32 at AVX-512 and AVX2."""
    v = []
    for isa in cpu_isas():
        v.append(("bf16" if isa in ("AVX512_CORE_AMX", "AVX512_CORE_BF16") else "fp32", isa))
    return tuple(v)


def min_row_cosine(a, ref):
    a = np.asarray(a, dtype=np.float64).reshape(-1, np.shape(a)[-1])
    r = np.asarray(ref, dtype=np.float64).reshape(-1, np.shape(ref)[-1])
    num = (a * r).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(r, axis=1)
    return float((num / np.maximum(den, 1e-300)).min())


def compare(name, got, val, precision, dt):
    e = rm.rel_err(got, val)
    if precision == "fp32":
        return C.check(name, e <= TOL, "rel err %.3e (%.2fs)" % (e, dt))
    cos = min_row_cosine(got, val)
    return C.check(name, e <= BF16_TOL and cos >= BF16_COSINE,
                   "rel err %.3e, min row cosine %.6f (%.2fs)" % (e, cos, dt))


def parity_case(label, cfg, sd, shapes, widths=(), rasa_sd=None, dtype="f32", conv_extra=(), chunks_note="",
                variants=FP32):
    pth, model = p(label + ".pth"), p(label + ".safetensors")
    rm.save_pth(pth, sd, wrap="teacher")
    rasa_path = None
    if rasa_sd is not None:
        rasa_path = p(label + "_rasa.pth")
        torch.save(rasa_sd, rasa_path)
    r = rm.convert(pth, model, rasa=rasa_path, dtype=dtype, extra=conv_extra, check=False)
    if not C.check("%s: convert (%s)" % (label, dtype), r.returncode == 0, r.stderr.strip()):
        return
    ref_sd = rm.round_bf16(sd) if dtype == "bf16" else sd
    ref_rasa = rm.round_bf16(rasa_sd) if (dtype == "bf16" and rasa_sd is not None) else rasa_sd
    ref = rm.RefViT(cfg, ref_sd)
    for i, (B, H, W) in enumerate(shapes):
        x = np.random.default_rng(100 + i).standard_normal((B, 3, H, W)).astype(np.float32)
        want = ref.forward_features(x)
        N = (H // cfg["patch_size"]) * (W // cfg["patch_size"])
        D = cfg["embed_dim"]
        exp = {"cls": (want["cls"], (B, D)), "patch": (want["patch"], (B, N, D))}
        if rasa_sd is not None:
            exp["patch_rasa"] = (rm.rasa_apply(want["patch"], ref_rasa), (B, N, D))
        for w in widths:
            exp["cls_w%d" % w] = (rm.matryoshka(want["cls"], w), (B, w))
        xin, out = p("x.npy"), p("out.safetensors")
        rm.write_npy(xin, x)
        for precision, isa in variants:
            name = "%s %dx3x%dx%d %s%s%s" % (label, B, H, W, precision, " " + isa if isa else "",
                                            " " + chunks_note if chunks_note else "")
            if not rm.have_embed():
                C.check(name, False, "franca-embed not found at %s" % rm.embed_binary())
                continue
            args = ["--model", model, "--device", DEVICE, "--precision", precision, "--input-npy", xin,
                    "--out", out]
            for w in widths:
                args += ["--width", w]
            if rasa_sd is not None:
                args.append("--rasa")
            t0 = time.time()
            r = rm.run_embed(args, check=False, isa=isa)
            dt = time.time() - t0
            if not C.check("%s: franca-embed exit 0" % name, r.returncode == 0, r.stderr.strip()[-500:]):
                continue
            got, _ = rm.read_safetensors(out)
            for key, (val, shape) in exp.items():
                if key not in got:
                    C.check("%s: %s" % (name, key), False, "missing from output (has %s)" % sorted(got))
                    continue
                if tuple(got[key].shape) != shape:
                    C.check("%s: %s" % (name, key), False, "shape %s, expected %s" % (got[key].shape, shape))
                    continue
                compare("%s: %s" % (name, key), got[key], val.numpy() if torch.is_tensor(val) else val,
                        precision, dt)


def layer_parity(label, cfg, sd, shape, layers, variants=FP32):
    """franca-embed --layer (negative indices too), with and without the final norm, against
    the reference's get_intermediate_layers: layer{i}_cls and layer{i}_patch per block."""
    pth, model = p(label + ".pth"), p(label + ".safetensors")
    rm.save_pth(pth, sd, wrap="teacher")
    r = rm.convert(pth, model, check=False)
    if not C.check("%s: convert" % label, r.returncode == 0, r.stderr.strip()):
        return
    B, H, W = shape
    x = np.random.default_rng(7).standard_normal((B, 3, H, W)).astype(np.float32)
    depth, D = cfg["depth"], cfg["embed_dim"]
    N = (H // cfg["patch_size"]) * (W // cfg["patch_size"])
    blocks = sorted({i % depth for i in layers})
    xin, out = p("xl.npy"), p("outl.safetensors")
    rm.write_npy(xin, x)
    ref = rm.RefViT(cfg, sd)
    for norm in (True, False):
        want = dict(zip(blocks, ref.get_intermediate_layers(x, blocks, norm=norm)))
        for precision, isa in variants:
            name = "%s layers %s norm=%s %s%s" % (label, list(layers), norm, precision,
                                                  " " + isa if isa else "")
            args = ["--model", model, "--precision", precision, "--input-npy", xin, "--out", out,
                    "--batch", "2"]
            for i in layers:
                args += ["--layer", str(i)]
            if not norm:
                args.append("--no-layer-norm")
            t0 = time.time()
            r = rm.run_embed(args, check=False, isa=isa)
            dt = time.time() - t0
            if not C.check("%s: franca-embed exit 0" % name, r.returncode == 0, r.stderr.strip()[-500:]):
                continue
            got, _ = rm.read_safetensors(out)
            extra = sorted(k for k in got if k.startswith("layer") and int(k[5:].split("_")[0]) not in blocks)
            C.check("%s: one tensor pair per distinct block" % name, not extra, "extra %s" % extra)
            for i in blocks:
                patch, cls = want[i]
                for key, val, shp in (("layer%d_cls" % i, cls, (B, D)), ("layer%d_patch" % i, patch, (B, N, D))):
                    if key not in got or tuple(got[key].shape) != shp:
                        C.check("%s: %s" % (name, key), False, "missing or misshapen (has %s)" % sorted(got))
                        continue
                    compare("%s: %s" % (name, key), got[key], val.numpy(), precision, dt)
    # The last block through the norm is the final output.
    r = rm.run_embed(["--model", model, "--precision", "fp32", "--input-npy", xin, "--out", out,
                      "--layer", "-1"], check=False)
    got = rm.read_safetensors(out)[0] if r.returncode == 0 else {}
    last = depth - 1
    C.check("%s: layer%d (norm) equals cls and patch" % (label, last),
            "cls" in got and np.array_equal(got.get("layer%d_cls" % last), got["cls"]) and
            np.array_equal(got.get("layer%d_patch" % last), got["patch"]), r.stderr.strip()[-300:])
    r = rm.run_embed(["--model", model, "--input-npy", xin, "--out", out, "--layer", str(depth)], check=False)
    C.check("%s: --layer %d (out of range) fails naming the depth" % (label, depth),
            r.returncode == 1 and ("has %d blocks" % depth) in r.stderr, r.stderr.strip()[-300:])


def check_isa_caps(model):
    """ONEDNN_MAX_CPU_ISA reaches franca-embed: its bench names the level it computes with."""
    names = {"AVX512_CORE_AMX": "amx", "AVX512_CORE_BF16": "avx512_bf16", "AVX512_CORE": "avx512",
             "AVX2": "avx2"}
    for isa in cpu_isas():
        r = rm.run_embed(["--model", model, "--bench", "--iters", "1", "--resolution", "56",
                          "--precision", "fp32"], check=False, isa=isa)
        C.check("franca-embed under ONEDNN_MAX_CPU_ISA=%s computes with %s" % (isa, names[isa]),
                r.returncode == 0 and ("cpu isa: %s\n" % names[isa]) in r.stdout,
                (r.stdout + r.stderr).strip()[-300:])
    r = rm.run_embed(["--model", model, "--bench", "--iters", "1", "--resolution", "56",
                      "--precision", "bf16"], check=False, isa="AVX2")
    C.check("bf16 below AVX-512 is refused with a reason", r.returncode != 0 and "AVX-512" in r.stderr,
            r.stderr.strip()[-300:])


def main():
    t_start = time.time()
    try:
        check_interpolation()
        check_reference_semantics()
        if not rm.have_embed():
            print("note: franca-embed not found at %s; parity checks will fail" % rm.embed_binary(), flush=True)

        # (a) small SwiGLU, head dim 64, grid 4; (e) Matryoshka widths; (d) RASA T=8 / T=9.
        small = rm.make_config(128, 3, 2, grid=4)
        small_sd = rm.make_state_dict(small, seed=1, ls_init=0.5, chunks=3)
        parity_case("small-swiglu", small, small_sd,
                    [(1, 56, 56), (3, 56, 56), (1, 84, 70), (3, 84, 70), (1, 28, 112)],
                    widths=(8, 16, 64, 128), rasa_sd=rm.make_rasa(128, 8, seed=1, prefix="rasa_head."),
                    chunks_note="")
        parity_case("small-rasa9", small, small_sd, [(3, 70, 84)], rasa_sd=rm.make_rasa(128, 9, seed=2))

        # (b) ViT-B/14-shaped Franca (depth 2), grid 37: 224 (37->16), 518 (identity), 224x336.
        vitb = rm.make_config(768, 2, 12, hidden=2048, grid=37)
        vitb_sd = rm.make_state_dict(vitb, seed=2, ls_init=0.3, chunks=2)
        parity_case("vitb-d2", vitb, vitb_sd, [(3, 224, 224), (1, 518, 518), (1, 224, 336)],
                    widths=(48, 384, 768), rasa_sd=rm.make_rasa(768, 9, seed=3))

        # (c) DINOv2-style GELU MLP, without and with 4 registers.
        mlp = rm.make_config(128, 2, 2, ffn="mlp", grid=4)
        parity_case("dinov2-mlp", mlp, rm.make_state_dict(mlp, seed=4, ls_init=0.5, chunks=2),
                    [(1, 56, 56), (3, 70, 98)], widths=(16, 128))
        mlp_r = rm.make_config(128, 2, 2, ffn="mlp", grid=4, registers=4)
        parity_case("dinov2-mlp-reg4", mlp_r, rm.make_state_dict(mlp_r, seed=5, ls_init=0.5, chunks=0),
                    [(3, 56, 56), (1, 84, 42)], rasa_sd=rm.make_rasa(128, 8, seed=5))
        # No LayerScale, head dim 32 (--num-heads 4).
        nols = rm.make_config(128, 2, 4, grid=4, layerscale=False)
        parity_case("swiglu-nols-hd32", nols, rm.make_state_dict(nols, seed=6, chunks=2),
                    [(3, 56, 56), (1, 42, 70)], conv_extra=("--num-heads", "4"))

        # (g) bf16 products at each bf16 level, fp32 at the lower ones: ViT-B-shaped SwiGLU and
        # ViT-S-shaped GELU MLP with registers, 224 and 518, RASA and widths.
        variants = isa_variants()
        parity_case("vitb-d2-isa", vitb, vitb_sd, [(2, 224, 224), (1, 518, 518)],
                    widths=(48, 384, 768), rasa_sd=rm.make_rasa(768, 9, seed=3), variants=variants)
        vits_mlp = rm.make_config(384, 2, 6, ffn="mlp", grid=37, registers=4)
        parity_case("vits-mlp-reg4-isa", vits_mlp, rm.make_state_dict(vits_mlp, seed=7, ls_init=0.3, chunks=0),
                    [(2, 224, 224), (1, 518, 518)], widths=(64, 384), rasa_sd=rm.make_rasa(384, 8, seed=8),
                    variants=variants)
        check_isa_caps(p("small-swiglu.safetensors"))

        # Intermediate layers: first, middle, last, negative; registers; bf16 where offered.
        layer_parity("layers-swiglu", small, small_sd, (3, 56, 70), (0, 1, -1, -3))
        mlp_r4 = rm.make_config(128, 4, 2, ffn="mlp", grid=4, registers=4)
        layer_parity("layers-mlp-reg4", mlp_r4, rm.make_state_dict(mlp_r4, seed=9, ls_init=0.5),
                     (2, 56, 56), (0, 2, -1, -2), variants=FP32 + tuple(v for v in variants if v[0] == "bf16"))

        # (f) bf16 checkpoint vs the reference with bf16-rounded weights.
        parity_case("small-bf16", small, small_sd, [(1, 56, 56), (3, 70, 84)], widths=(32,),
                    rasa_sd=rm.make_rasa(128, 9, seed=2), dtype="bf16")
    except Exception as e:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        C.check("unexpected exception", False, "%s: %s" % (type(e).__name__, e))
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    print("elapsed %.1fs" % (time.time() - t_start), flush=True)
    return C.finish()


if __name__ == "__main__":
    sys.exit(main())
