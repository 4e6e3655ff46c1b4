"""PyTorch reference of Franca's training objective, written from
docs/model.md (§2, §3, §10-§13), for the gradient-parity
test and the training benchmark. Runs with Debian's python3-torch (CPU).

Everything is functional: parameters live in a dict keyed by the names the C
trainer uses ("backbone.blocks.0.attn.qkv.weight", "dino_head.mlps.2.0.weight",
...). The dtype follows the tensors (float64 for parity, float32 for the bench).

    cfg: dict with D, depth, heads, ffn ("swiglu"|"mlp"), ffn_hidden, patch,
         pos_grid, layerscale, nested, widths, prototypes, hidden, bottleneck,
         student_temp, koleo_weight
    param_shapes(cfg) -> OrderedDict name -> shape
    random_params(cfg, gen, dtype) -> well-conditioned random weights (for tests)
    franca_loss(cfg, sp, tp, glob, loc, masks, teacher_temp, subsets=None)
        -> dict of loss terms (student params sp with requires_grad, teacher tp)
    write_safetensors(path, tensors, metadata) / read_safetensors(path)
"""

import collections
import json
import math
import struct

import numpy as np
import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------- safetensors (F32)

def write_safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    for name, arr in tensors.items():
        a = np.ascontiguousarray(np.asarray(arr, dtype=np.float32))
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, t = e["data_offsets"]
        raw = data[base + b:base + t]
        if e["dtype"] == "BF16":  # the upper half of a float32, exactly
            a = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif e["dtype"] == "F16":
            a = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
        else:
            assert e["dtype"] == "F32", e
            a = np.frombuffer(raw, dtype=np.float32)
        out[name] = a.reshape(e["shape"])
    return out


# --------------------------------------------------------------------------- parameters

def head_levels(cfg):
    D = cfg["D"]
    widths = cfg["widths"] if cfg["nested"] else [D]
    return [(d, int(cfg["prototypes"] * d // D)) for d in widths]


def param_shapes(cfg):
    D, P, M, Hs = cfg["D"], cfg["patch"], cfg["pos_grid"], cfg["ffn_hidden"]
    s = collections.OrderedDict()
    s["backbone.cls_token"] = (D,)
    s["backbone.pos_embed"] = (1 + M * M, D)
    s["backbone.mask_token"] = (D,)
    s["backbone.patch_embed.proj.weight"] = (D, 3, P, P)
    s["backbone.patch_embed.proj.bias"] = (D,)
    f1, f2 = ("w12", "w3") if cfg["ffn"] == "swiglu" else ("fc1", "fc2")
    F1 = 2 * Hs if cfg["ffn"] == "swiglu" else Hs
    for i in range(cfg["depth"]):
        b = f"backbone.blocks.{i}."
        s[b + "norm1.weight"] = (D,)
        s[b + "norm1.bias"] = (D,)
        s[b + "attn.qkv.weight"] = (3 * D, D)
        s[b + "attn.qkv.bias"] = (3 * D,)
        s[b + "attn.proj.weight"] = (D, D)
        s[b + "attn.proj.bias"] = (D,)
        if cfg["layerscale"]:
            s[b + "ls1.gamma"] = (D,)
        s[b + "norm2.weight"] = (D,)
        s[b + "norm2.bias"] = (D,)
        s[b + f"mlp.{f1}.weight"] = (F1, D)
        s[b + f"mlp.{f1}.bias"] = (F1,)
        s[b + f"mlp.{f2}.weight"] = (D, Hs)
        s[b + f"mlp.{f2}.bias"] = (D,)
        if cfg["layerscale"]:
            s[b + "ls2.gamma"] = (D,)
    s["backbone.norm.weight"] = (D,)
    s["backbone.norm.bias"] = (D,)
    hid, bn = cfg["hidden"], cfg["bottleneck"]
    for head in ("dino_head", "ibot_head"):
        for j, (d, K) in enumerate(head_levels(cfg)):
            s[f"{head}.matryoshka_projections.{j}.weight"] = (d, d)
            s[f"{head}.matryoshka_projections.{j}.bias"] = (d,)
            s[f"{head}.mlps.{j}.0.weight"] = (hid, d)
            s[f"{head}.mlps.{j}.0.bias"] = (hid,)
            s[f"{head}.mlps.{j}.2.weight"] = (hid, hid)
            s[f"{head}.mlps.{j}.2.bias"] = (hid,)
            s[f"{head}.mlps.{j}.4.weight"] = (bn, hid)
            s[f"{head}.mlps.{j}.4.bias"] = (bn,)
            s[f"{head}.last_layers.{j}.weight_g"] = (K, 1)
            s[f"{head}.last_layers.{j}.weight_v"] = (K, bn)
    return s


def random_params(cfg, gen, dtype=torch.float64):
    """Well-conditioned random weights (not the training init): activations of
    order one everywhere so that every gradient path is exercised."""
    out = collections.OrderedDict()
    for name, shape in param_shapes(cfg).items():
        def normal(std):
            return torch.randn(shape, generator=gen, dtype=dtype) * std
        if name.endswith("weight_g"):
            t = 0.5 + torch.rand(shape, generator=gen, dtype=dtype)
        elif name.endswith("weight_v"):
            t = (torch.rand(shape, generator=gen, dtype=dtype) * 2 - 1) / math.sqrt(shape[1])
        elif ".ls1." in name or ".ls2." in name:
            t = 0.3 + 0.5 * torch.rand(shape, generator=gen, dtype=dtype)
        elif "norm" in name and name.endswith("weight"):
            t = 1.0 + normal(0.1)
        elif name.endswith("bias"):
            t = normal(0.1)
        elif name.endswith(("cls_token", "pos_embed", "mask_token")):
            t = normal(0.5)
        else:  # linear / conv weights: fan-in scaling
            fan_in = int(np.prod(shape[1:]))
            t = normal(1.0 / math.sqrt(fan_in))
        out[name] = t
    return out


# ----------------------------------------------------------------- backbone (docs/model.md §2, §3)

def interp_pos(pos, M, gh, gw):
    """pos [1+M*M, D] -> [1+gh*gw, D]: bicubic, align_corners False, scale factor (g+0.1)/M."""
    if gh == M and gw == M:
        return pos
    D = pos.shape[-1]
    grid = pos[1:].reshape(1, M, M, D).permute(0, 3, 1, 2)
    out = F.interpolate(grid, mode="bicubic", align_corners=False,
                        scale_factor=((gh + 0.1) / M, (gw + 0.1) / M))
    assert out.shape[-2:] == (gh, gw), out.shape
    return torch.cat([pos[:1], out.permute(0, 2, 3, 1).reshape(gh * gw, D)], dim=0)


def layernorm(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps=1e-6)


def attention(cfg, p, pre, x):
    b, n, D = x.shape
    H = cfg["heads"]
    hd = D // H
    qkv = F.linear(x, p[pre + "attn.qkv.weight"], p[pre + "attn.qkv.bias"])
    qkv = qkv.reshape(b, n, 3, H, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * hd ** -0.5, qkv[1], qkv[2]
    a = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
    o = (a @ v).transpose(1, 2).reshape(b, n, D)
    return F.linear(o, p[pre + "attn.proj.weight"], p[pre + "attn.proj.bias"])


def ffn(cfg, p, pre, x):
    if cfg["ffn"] == "swiglu":
        h = F.linear(x, p[pre + "mlp.w12.weight"], p[pre + "mlp.w12.bias"])
        a, g = h.chunk(2, dim=-1)
        return F.linear(F.silu(a) * g, p[pre + "mlp.w3.weight"], p[pre + "mlp.w3.bias"])
    h = F.gelu(F.linear(x, p[pre + "mlp.fc1.weight"], p[pre + "mlp.fc1.bias"]))
    return F.linear(h, p[pre + "mlp.fc2.weight"], p[pre + "mlp.fc2.bias"])


def add_residual(x, fn, subset):
    """x + fn(x), or DINOv2's sample-subset residual when subset (kept indices) is given."""
    if subset is None:
        return x + fn(x)
    b = x.shape[0]
    idx = torch.as_tensor(subset, dtype=torch.long)
    res = fn(x[idx])
    return torch.index_add(x.flatten(1), 0, idx, res.flatten(1), alpha=b / len(subset)).view_as(x)


def backbone(cfg, p, img, masks=None, subsets=None, pass_id=0):
    """img [b,3,S,S] -> final-LayerNorm tokens [b, 1+N, D]. subsets: dict
    (pass, layer, branch) -> kept sample indices, or None (no drop path)."""
    P, M = cfg["patch"], cfg["pos_grid"]
    x = F.conv2d(img, p["backbone.patch_embed.proj.weight"], p["backbone.patch_embed.proj.bias"],
                 stride=P)
    gh, gw = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    if masks is not None:
        x = torch.where(masks.unsqueeze(-1), p["backbone.mask_token"].view(1, 1, -1), x)
    cls = p["backbone.cls_token"].view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + interp_pos(p["backbone.pos_embed"], M, gh, gw).unsqueeze(0)
    for i in range(cfg["depth"]):
        pre = f"backbone.blocks.{i}."

        def attn_res(t, pre=pre):
            y = attention(cfg, p, pre, layernorm(t, p[pre + "norm1.weight"], p[pre + "norm1.bias"]))
            return y * p[pre + "ls1.gamma"] if cfg["layerscale"] else y

        def ffn_res(t, pre=pre):
            y = ffn(cfg, p, pre, layernorm(t, p[pre + "norm2.weight"], p[pre + "norm2.bias"]))
            return y * p[pre + "ls2.gamma"] if cfg["layerscale"] else y

        s1 = subsets.get((pass_id, i, 0)) if subsets else None
        s2 = subsets.get((pass_id, i, 1)) if subsets else None
        x = add_residual(x, attn_res, s1)
        x = add_residual(x, ffn_res, s2)
    return layernorm(x, p["backbone.norm.weight"], p["backbone.norm.bias"])


# --------------------------------------------------------------------- heads (docs/model.md §11.1)

def head(cfg, p, prefix, x):
    outs = []
    for j, (d, K) in enumerate(head_levels(cfg)):
        z = F.linear(x[:, :d], p[f"{prefix}.matryoshka_projections.{j}.weight"],
                     p[f"{prefix}.matryoshka_projections.{j}.bias"])
        for layer in (0, 2, 4):
            z = F.gelu(F.linear(z, p[f"{prefix}.mlps.{j}.{layer}.weight"],
                                p[f"{prefix}.mlps.{j}.{layer}.bias"]))
        v = p[f"{prefix}.last_layers.{j}.weight_v"]
        g = p[f"{prefix}.last_layers.{j}.weight_g"]
        W = g * v / v.norm(dim=1, keepdim=True)
        outs.append(F.linear(z, W))
    return outs


# ---------------------------------------------------------------------- losses (docs/model.md §12)

@torch.no_grad()
def sinkhorn_knopp(logits, temp, iters=3):
    """logits [n, K] -> targets [n, K]; per-prototype max subtracted (exactly invariant)."""
    l = logits.double()
    Q = torch.exp((l - l.max(dim=0, keepdim=True).values) / temp).t()  # [K, n]
    K, n = Q.shape
    Q /= Q.sum()
    for _ in range(iters):
        Q /= Q.sum(dim=1, keepdim=True)
        Q /= K
        Q /= Q.sum(dim=0, keepdim=True)
        Q /= n
    Q *= n
    return Q.t().to(logits.dtype)


def koleo(x, eps=1e-8):
    x = F.normalize(x, eps=eps, p=2, dim=-1)
    with torch.no_grad():
        dots = x @ x.t()
        n = x.shape[0]
        dots.view(-1)[:: n + 1] = -1
        I = dots.max(dim=1).indices
    d = F.pairwise_distance(x, x[I], p=2, eps=eps)
    return -torch.log(d + eps).mean()


def franca_loss(cfg, sp, tp, glob, loc, masks, teacher_temp, subsets=None):
    """One batch: glob [2B,3,G,G] (crop-major), loc [nl*B,3,L,L] or None, masks
    bool [2B, N]. Returns dict total, dino_local, dino_global, ibot, koleo."""
    B = glob.shape[0] // 2
    nl = loc.shape[0] // B if loc is not None else 0
    tau = cfg["student_temp"]
    with torch.no_grad():
        t_tok = backbone(cfg, tp, glob)
        t_cls = t_tok[:, 0]
        t_cls = torch.cat([t_cls[B:], t_cls[:B]])  # student crop c <-> teacher crop 1-c
        t_dino = [sinkhorn_knopp(l, teacher_temp) for l in head(cfg, tp, "dino_head", t_cls)]
        nm = int(masks.sum())
        if nm:
            t_patch = t_tok[:, 1:][masks]
            t_ibot = [sinkhorn_knopp(l, teacher_temp) for l in head(cfg, tp, "ibot_head", t_patch)]
    s_tok = backbone(cfg, sp, glob, masks=masks if nm else None, subsets=subsets, pass_id=0)
    s_cls = s_tok[:, 0]
    if nl:
        l_tok = backbone(cfg, sp, loc, subsets=subsets, pass_id=1)
        all_cls = torch.cat([s_cls, l_tok[:, 0]])
    else:
        all_cls = s_cls
    s_dino = head(cfg, sp, "dino_head", all_cls)
    n_terms = 2 * nl + 2
    zero = glob.new_zeros(())
    dino_local, dino_global = zero, zero
    lw = cfg.get("level_weights") or [1.0] * len(s_dino)   # relative_importance
    for S, T, wj in zip(s_dino, t_dino, lw):
        lsm_g = F.log_softmax(S[:2 * B] / tau, dim=-1)
        dino_global = dino_global - wj * 2 * (T * lsm_g).sum(-1).mean() / n_terms
        if nl:
            t_chunks = T.chunk(2)
            for s in S[2 * B:].chunk(nl):
                lsm = F.log_softmax(s / tau, dim=-1)
                for t in t_chunks:
                    dino_local = dino_local - wj * (t * lsm).sum(-1).mean() / n_terms
    ibot = zero
    if nm:
        s_patch = s_tok[:, 1:][masks]
        w = (1.0 / masks.sum(-1).clamp(min=1).to(glob.dtype)).unsqueeze(-1).expand_as(masks)[masks]
        for S, T, wj in zip(head(cfg, sp, "ibot_head", s_patch), t_ibot, lw):
            ce = -(T * F.log_softmax(S / tau, dim=-1)).sum(-1)
            ibot = ibot + wj * (ce * w).sum() / (2 * B)
    kl = cfg["koleo_weight"] * (koleo(s_cls[:B]) + koleo(s_cls[B:]))
    if cfg.get("koleo_levels") and cfg["nested"]:   # every smaller prefix as well
        for d in cfg["widths"][:-1]:
            kl = kl + cfg["koleo_weight"] * (koleo(s_cls[:B, :d]) + koleo(s_cls[B:, :d]))
    total = dino_local + dino_global + ibot + kl
    return {"total": total, "dino_local": dino_local, "dino_global": dino_global, "ibot": ibot,
            "koleo": kl}


# ---------------------------------------------------------------- optimisation (docs/model.md §13)

def wd_mult(name):
    return 0.0 if (name.endswith(".bias") or "norm" in name or ".ls1." in name or ".ls2." in name) else 1.0


def lr_mult(name):
    return 0.2 if "patch_embed" in name else 1.0


def module_of(name):
    return name.split(".")[0]


def make_optimizer(sp, lr, wd):
    groups = [{"params": [t], "lr": lr * lr_mult(n), "weight_decay": wd * wd_mult(n)}
              for n, t in sp.items()]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def train_steps(cfg, sp, tp, glob, loc, masks, teacher_temp, steps, lr, wd, momentum, clip):
    """steps of loss, per-module clipping, AdamW and EMA on one batch; returns the
    per-step loss terms. sp (leaf tensors with grad) and tp are updated in place."""
    opt = make_optimizer(sp, lr, wd)
    keys = ["total", "dino_local", "dino_global", "ibot", "koleo"]
    hist = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=False)
        L = franca_loss(cfg, sp, tp, glob, loc, masks, teacher_temp)
        L["total"].backward()
        hist.append([float(L[k]) for k in keys])
        if clip > 0:
            for mod in ("backbone", "dino_head", "ibot_head"):
                torch.nn.utils.clip_grad_norm_([t for n, t in sp.items() if module_of(n) == mod], clip)
        opt.step()
        with torch.no_grad():
            for n in sp:
                tp[n].mul_(momentum).add_(sp[n].detach(), alpha=1 - momentum)
    return hist
