"""Tests of train/convert_checkpoint.py: layouts, inferred config, prefixes, chunking,
heads, RASA, dtypes, errors, and the safetensors container itself.

Run: /usr/bin/python3 tests/reference/test_convert_checkpoint.py
"""

import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import refmodel as rm  # noqa: E402

torch.set_num_threads(2)
C = rm.Checks()
TMP = tempfile.mkdtemp(prefix="franca-convert-test-")


def p(name):
    return os.path.join(TMP, name)


def run_conv(args):
    import subprocess
    return subprocess.run([rm.PYTHON, str(rm.CONVERTER)] + [str(a) for a in args],
                          capture_output=True, text=True)


def one_line_error(r):
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    return len(lines) == 1 and "error" in lines[0]


def container_ok(path):
    """Validates the safetensors container; returns (ok, detail)."""
    h = rm.read_safetensors_header(path)
    with open(path, "rb") as f:
        raw = f.read()
    if h["header_len"] % 8 or h["data_start"] % 8:
        return False, "header length %d not a multiple of 8" % h["header_len"]
    text = h["header_text"]
    stripped = text.rstrip(b" ")
    if len(text) - len(stripped) >= 8 or not stripped.endswith(b"}"):
        return False, "header padding is not 0..7 trailing spaces"
    hdr = h["header"]
    meta = hdr.get("__metadata__")
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        return False, "__metadata__ must map strings to strings"
    off = 0
    sizes = {"F32": 4, "BF16": 2, "F16": 2}
    for name, info in hdr.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        n = int(np.prod(info["shape"])) * sizes[info["dtype"]]
        if a != off or b - a != n:
            return False, "tensor %s offsets %s not contiguous / wrong size %d" % (name, [a, b], n)
        off = b
    if h["data_start"] + off != len(raw):
        return False, "data ends at %d, file is %d bytes" % (h["data_start"] + off, len(raw))
    return True, "header %d bytes, %d tensors, %d data bytes" % (h["header_len"], len(hdr) - 1, off)


def canonical_names(cfg, mask_token=True, T=0):
    names = ["cls_token", "pos_embed"]
    if mask_token:
        names.append("mask_token")
    if cfg["register_tokens"]:
        names.append("register_tokens")
    names += ["patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(cfg["depth"]):
        names += ["blocks.%d.%s" % (i, n) for n, _ in rm._block_shapes(cfg)]
    names += ["norm.weight", "norm.bias"]
    names += ["rasa.pre_pos_layers.%d.weight" % t for t in range(T)]
    if T:
        names.append("rasa.pos_pred.weight")
    return names


SMALL = rm.make_config(128, 3, 2, grid=4)
SMALL_SD = rm.make_state_dict(SMALL, seed=1, ls_init=0.5, chunks=0)


def test_vitb_layout():
    cfg = rm.make_config(768, 12, 12, grid=37)
    sd = rm.make_state_dict(cfg, seed=0, chunks=4, fill="zeros")
    pth, out = p("vitb.pth"), p("vitb.safetensors")
    rm.save_pth(pth, sd, wrap="teacher", prefix="backbone.", junk_heads=True)
    del sd
    r = run_conv([pth, "-o", out])
    C.check("vitb: 175-key chunked teacher with backbone. prefix and heads converts",
            r.returncode == 0, r.stderr.strip() or r.stdout.strip())
    if r.returncode != 0:
        return
    h = rm.read_safetensors_header(out)
    names = [k for k in h["header"] if k != "__metadata__"]
    C.check("vitb: 175 tensors written", len(names) == 175, "%d tensors" % len(names))
    C.check("vitb: tensors in canonical order", names == canonical_names(cfg))
    C.check("vitb: container valid", *container_ok(out))
    meta = h["header"]["__metadata__"]
    fc = json.loads(meta["franca"])
    want = {"format_version": 1, "family": "franca", "embed_dim": 768, "depth": 12, "num_heads": 12,
            "ffn": "swiglu", "ffn_hidden": 2048, "patch_size": 14, "pos_grid": 37, "layerscale": True,
            "norm_eps": 1e-6, "register_tokens": 0, "matryoshka_widths": [48, 96, 192, 384, 768],
            "rasa_layers": 0, "trained": True, "name": "vitb",
            "preprocess": {"resize_size": 256, "crop_size": 224, "mean": [0.485, 0.456, 0.406],
                           "std": [0.229, 0.224, 0.225]}}
    bad = {k: (fc.get(k), v) for k, v in want.items() if fc.get(k) != v}
    C.check("vitb: inferred metadata", not bad, json.dumps(bad) if bad else
            "D=768 L=12 H=12 swiglu 2048 P=14 M=37")
    src = fc.get("source", {})
    C.check("vitb: source sha256 and key count recorded",
            src.get("file") == "vitb.pth" and len(src.get("sha256", "")) == 64
            and src.get("backbone_keys") == 175 and fc.get("version") == src.get("sha256", "")[:12],
            json.dumps(src))
    pw = h["header"]["blocks.11.mlp.w12.weight"]
    C.check("vitb: w12 / w3 / pos_embed shapes",
            pw["shape"] == [4096, 768] and h["header"]["blocks.11.mlp.w3.weight"]["shape"] == [768, 2048]
            and h["header"]["pos_embed"]["shape"] == [1, 1370, 768]
            and h["header"]["mask_token"]["shape"] == [1, 768])
    os.unlink(pth)
    os.unlink(out)


def test_key_counts():
    for depth, want in ((24, 343), (40, 567)):
        cfg = rm.make_config(64, depth, 1, grid=2, patch=2)
        sd = rm.make_state_dict(cfg, seed=0, chunks=4, fill="zeros")
        pth, out = p("kc%d.pth" % depth), p("kc%d.safetensors" % depth)
        rm.save_pth(pth, sd)
        r = run_conv([pth, "-o", out])
        n = -1
        if r.returncode == 0:
            n = len(rm.read_safetensors_header(out)["header"]) - 1
        C.check("key count: depth %d Franca layout has %d keys (7 + 14 L)" % (depth, want),
                r.returncode == 0 and n == want and len(sd) == want, "%d written, rc %d %s"
                % (n, r.returncode, r.stderr.strip()))


def tensors_equal(a, b):
    if set(a) != set(b):
        return False, "names differ: %s" % sorted(set(a) ^ set(b))[:5]
    for k in a:
        if a[k].shape != b[k].shape or not np.array_equal(a[k], b[k]):
            return False, "tensor %s differs" % k
    return True, "%d tensors identical" % len(a)


def test_layout_variants():
    ref_out = p("flat_plain.safetensors")
    rm.save_pth(p("flat_plain.pth"), SMALL_SD, wrap=None)
    r = run_conv([p("flat_plain.pth"), "-o", ref_out, "--name", "x", "--version", "1"])
    C.check("small: plain flat state dict converts", r.returncode == 0, r.stderr.strip())
    ref, meta = rm.read_safetensors(ref_out)
    ok = all(np.array_equal(ref[k], SMALL_SD[k].numpy()) for k in SMALL_SD)
    C.check("small: f32 tensors equal the input exactly", ok and len(ref) == len(SMALL_SD))
    fc = json.loads(meta["franca"])
    C.check("small: widths D/16..D and hidden", fc["matryoshka_widths"] == [8, 16, 32, 64, 128]
            and fc["ffn_hidden"] == rm.swiglu_hidden(128) and fc["num_heads"] == 2 and fc["depth"] == 3
            and fc["pos_grid"] == 4, json.dumps(fc))

    variants = [
        ("teacher chunked=2 prefix backbone. + heads", dict(wrap="teacher", prefix="backbone.", junk_heads=True), 2),
        ("teacher chunked=4 prefix module.backbone.", dict(wrap="teacher", prefix="module.backbone."), 4),
        ("model flat prefix module.", dict(wrap="model", prefix="module."), 0),
        ("teacher flat + heads", dict(wrap="teacher", junk_heads=True), 0),
    ]
    for label, kw, chunks in variants:
        sd = rm.make_state_dict(SMALL, seed=1, ls_init=0.5, chunks=chunks)
        pth, out = p("var.pth"), p("var.safetensors")
        rm.save_pth(pth, sd, **kw)
        r = run_conv([pth, "-o", out, "--name", "x", "--version", "1"])
        if r.returncode != 0:
            C.check("layout %s" % label, False, r.stderr.strip())
            continue
        got, _ = rm.read_safetensors(out)
        C.check("layout %s: same tensors as flat plain" % label, *tensors_equal(got, ref))

    # Determinism: the same input and options give the same bytes.
    r = run_conv([p("flat_plain.pth"), "-o", p("again.safetensors"), "--name", "x", "--version", "1"])
    same = r.returncode == 0 and open(ref_out, "rb").read() == open(p("again.safetensors"), "rb").read()
    C.check("small: conversion is byte-for-byte deterministic", same)
    C.check("small: container valid", *container_ok(ref_out))


def test_rasa():
    for T, prefix in ((8, "rasa_head."), (9, "module.")):
        rs = rm.make_rasa(128, T, seed=T, prefix=prefix)
        rp, out = p("rasa%d.pth" % T), p("rasa%d.safetensors" % T)
        torch.save(rs, rp)
        r = run_conv([p("flat_plain.pth"), "--rasa", rp, "-o", out])
        if r.returncode != 0:
            C.check("rasa T=%d" % T, False, r.stderr.strip())
            continue
        got, meta = rm.read_safetensors(out)
        fc = json.loads(meta["franca"])
        names = [k for k in rm.read_safetensors_header(out)["header"] if k != "__metadata__"]
        ok = fc["rasa_layers"] == T and names == canonical_names(SMALL, T=T)
        ok = ok and all(np.array_equal(got["rasa.pre_pos_layers.%d.weight" % t],
                                       rs["%spre_pos_layers.%d.weight" % (prefix, t)].numpy()) for t in range(T))
        ok = ok and np.array_equal(got["rasa.pos_pred.weight"], rs[prefix + "pos_pred.weight"].numpy())
        C.check("rasa T=%d (keys prefixed %s): rasa_layers, names, values" % (T, prefix), ok,
                "rasa_layers=%s" % fc["rasa_layers"])

    # A rasa_head inside the teacher is ignored unless --rasa-from-teacher.
    sd = dict(SMALL_SD)
    sd.update(rm.make_rasa(128, 8, seed=3, prefix="rasa_head."))
    rm.save_pth(p("withrasa.pth"), sd)
    r1 = run_conv([p("withrasa.pth"), "-o", p("wr1.safetensors")])
    r2 = run_conv([p("withrasa.pth"), "--rasa-from-teacher", "-o", p("wr2.safetensors")])
    ok = r1.returncode == 0 and r2.returncode == 0
    if ok:
        ok = (rm.franca_config(str(p("wr1.safetensors")))["rasa_layers"] == 0
              and rm.franca_config(str(p("wr2.safetensors")))["rasa_layers"] == 8)
    C.check("rasa_head in teacher: dropped by default, used with --rasa-from-teacher", ok,
            (r1.stderr + r2.stderr).strip())

    bad = [
        ("rasa wrong shape [3,D]", lambda d: d.__setitem__("pos_pred.weight", torch.randn(3, 128)),
         "pos_pred.weight"),
        ("rasa wrong width [2,D+1]", lambda d: d.__setitem__("pre_pos_layers.4.weight", torch.randn(2, 129)),
         "pre_pos_layers.4.weight"),
        ("rasa missing pos_pred", lambda d: d.pop("pos_pred.weight"), "pos_pred.weight"),
        ("rasa gap in layers", lambda d: d.pop("pre_pos_layers.3.weight"), "pre_pos_layers.3.weight"),
        ("rasa extra bias key", lambda d: d.__setitem__("pos_pred.bias", torch.randn(2)), "pos_pred.bias"),
    ]
    for label, mutate, key in bad:
        rs = rm.make_rasa(128, 8, seed=5)
        mutate(rs)
        torch.save(rs, p("badrasa.pth"))
        r = run_conv([p("flat_plain.pth"), "--rasa", p("badrasa.pth"), "-o", p("badrasa.safetensors")])
        C.check("%s fails with exit 1 naming %s" % (label, key),
                r.returncode == 1 and key in r.stderr and one_line_error(r)
                and not os.path.exists(p("badrasa.safetensors")), r.stderr.strip())


def test_dtypes():
    sd = {k: v.clone() for k, v in SMALL_SD.items()}
    # Rounding edge cases in pos_embed: exact ties (to even, both directions), just above
    # a tie, negatives, subnormals, and values that round up across an exponent.
    special = torch.tensor([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -8 + 2 ** -20,
                            -(1.0 + 2 ** -8), -(1.0 + 3 * 2 ** -8), 1.0 - 2 ** -25,
                            1e-40, -3e-39, 2.0 - 2 ** -9, 0.0, -0.0, 3.14159265,
                            65504.0, 1e-3, 12345.678, -7.77e-5], dtype=torch.float32)
    flat = sd["pos_embed"].view(-1)
    flat[:special.numel()] = special
    rm.save_pth(p("dt.pth"), sd)
    r = run_conv([p("dt.pth"), "--dtype", "bf16", "-o", p("dt_bf16.safetensors")])
    C.check("bf16: converts", r.returncode == 0, r.stderr.strip())
    if r.returncode == 0:
        h = rm.read_safetensors_header(p("dt_bf16.safetensors"))
        dts = set(v["dtype"] for k, v in h["header"].items() if k != "__metadata__")
        C.check("bf16: every tensor stored as BF16", dts == {"BF16"}, str(dts))
        C.check("bf16: container valid", *container_ok(p("dt_bf16.safetensors")))
        # Compare raw bits with torch's float32 -> bfloat16 conversion (round to nearest even).
        with open(p("dt_bf16.safetensors"), "rb") as f:
            raw = f.read()
        worst = 0
        allok = True
        for k, v in sd.items():
            info = h["header"][k]
            a, b = info["data_offsets"]
            bits = np.frombuffer(raw[h["data_start"] + a:h["data_start"] + b], dtype="<u2")
            want = v.contiguous().to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).reshape(-1)
            if not np.array_equal(bits, want):
                allok = False
                worst = int((bits != want).sum())
                break
        C.check("bf16: bits equal torch round-to-nearest-even for every tensor", allok,
                "%d mismatches" % worst if not allok else "")
        # Hand-computed expectations for the ties.
        bits = np.frombuffer(raw[h["data_start"] + h["header"]["pos_embed"]["data_offsets"][0]:], dtype="<u2")
        exp = [0x3F80, 0x3F82, 0x3F81, 0xBF80, 0xBF82, 0x3F80]
        C.check("bf16: ties to even by hand (1+2^-8 -> 1, 1+3*2^-8 -> 1+2^-6, above tie -> up)",
                [int(x) for x in bits[:6]] == exp, " ".join("%04x" % int(x) for x in bits[:6]))
    r = run_conv([p("dt.pth"), "--dtype", "f16", "-o", p("dt_f16.safetensors")])
    ok = r.returncode == 0
    if ok:
        got, _ = rm.read_safetensors(p("dt_f16.safetensors"))
        ok = all(np.array_equal(got[k], v.numpy().astype(np.float16).astype(np.float32)) for k, v in sd.items())
    C.check("f16: converts and equals numpy float16 rounding", ok, r.stderr.strip())
    sd["norm.bias"][0] = 1e6
    rm.save_pth(p("dt_big.pth"), sd)
    r = run_conv([p("dt_big.pth"), "--dtype", "f16", "-o", p("dt_big.safetensors")])
    C.check("f16: overflow fails naming the tensor", r.returncode == 1 and "norm.bias" in r.stderr,
            r.stderr.strip())
    sd["norm.bias"][0] = float("nan")
    rm.save_pth(p("dt_nan.pth"), sd)
    r = run_conv([p("dt_nan.pth"), "-o", p("dt_nan.safetensors")])
    C.check("non-finite weight fails naming the tensor", r.returncode == 1 and "norm.bias" in r.stderr,
            r.stderr.strip())


def test_inference_variants():
    cases = [
        ("dinov2 mlp + 4 registers", rm.make_config(128, 2, 2, ffn="mlp", grid=4, registers=4), [],
         {"family": "dinov2", "ffn": "mlp", "ffn_hidden": 512, "register_tokens": 4, "layerscale": True}),
        ("no layerscale", rm.make_config(128, 2, 2, grid=5, layerscale=False), [],
         {"family": "franca", "layerscale": False, "pos_grid": 5}),
        ("--num-heads 4 --family dinov2 --name/--version", rm.make_config(128, 2, 4, grid=4),
         ["--num-heads", "4", "--family", "dinov2", "--name", "tiny-test", "--version", "0.3"],
         {"num_heads": 4, "family": "dinov2", "name": "tiny-test", "version": "0.3"}),
        ("D=100 heads 4 widths", rm.make_config(100, 1, 4, grid=3, patch=7, hidden=40), ["--num-heads", "4"],
         {"embed_dim": 100, "matryoshka_widths": [25, 50, 100], "patch_size": 7, "ffn_hidden": 40}),
    ]
    for label, cfg, extra, want in cases:
        sd = rm.make_state_dict(cfg, seed=2, chunks=2)
        rm.save_pth(p("inf.pth"), sd)
        r = run_conv([p("inf.pth"), "-o", p("inf.safetensors")] + extra)
        if r.returncode != 0:
            C.check("infer %s" % label, False, r.stderr.strip())
            continue
        fc = rm.franca_config(p("inf.safetensors"))
        bad = {k: (fc.get(k), v) for k, v in want.items() if fc.get(k) != v}
        names = [k for k in rm.read_safetensors_header(p("inf.safetensors"))["header"] if k != "__metadata__"]
        C.check("infer %s" % label, not bad and names == canonical_names(cfg), json.dumps(bad))


def test_errors():
    def mutated(label, mutate, key, extra=(), wrap="teacher"):
        sd = rm.make_state_dict(SMALL, seed=1, chunks=2)
        mutate(sd)
        rm.save_pth(p("bad.pth"), sd, wrap=wrap)
        with open(p("bad.safetensors"), "wb") as f:
            f.write(b"previous")
        r = run_conv([p("bad.pth"), "-o", p("bad.safetensors")] + list(extra))
        untouched = open(p("bad.safetensors"), "rb").read() == b"previous"
        leftovers = [f for f in os.listdir(TMP) if f.endswith(".tmp")]
        C.check("error: %s -> exit 1 naming %s" % (label, key),
                r.returncode == 1 and key in r.stderr and one_line_error(r) and untouched and not leftovers,
                r.stderr.strip())

    mutated("extra key foo.weight", lambda d: d.__setitem__("foo.weight", torch.zeros(3)), "foo.weight")
    mutated("missing norm.bias", lambda d: d.pop("norm.bias"), "norm.bias")
    mutated("missing block param", lambda d: d.pop("blocks.1.1.ls2.gamma"), "blocks.1.ls2.gamma")
    mutated("wrong shape", lambda d: d.__setitem__("blocks.1.1.attn.proj.weight", torch.zeros(128, 64)),
            "blocks.1.attn.proj.weight")
    mutated("extra block param", lambda d: d.__setitem__("blocks.0.0.attn.q_norm.weight", torch.zeros(128)),
            "blocks.0.attn.q_norm.weight")
    mutated("unknown FFN layout", lambda d: [d.__setitem__(k.replace("w12", "w1"), d.pop(k))
                                             for k in list(d) if "w12" in k], "mlp.w1.")
    mutated("non-square pos_embed", lambda d: d.__setitem__("pos_embed", torch.zeros(1, 18, 128)), "pos_embed")
    mutated("--num-heads not dividing D", lambda d: None, "--num-heads", extra=["--num-heads", "3"])
    mutated("non-tensor value", lambda d: d.__setitem__("norm.bias", 3), "norm.bias")

    cfg100 = rm.make_config(96, 1, 3, grid=2, patch=7, hidden=32)
    rm.save_pth(p("d96.pth"), rm.make_state_dict(cfg100, seed=0))
    r = run_conv([p("d96.pth"), "-o", p("d96.safetensors")])
    C.check("error: D=96 without --num-heads -> exit 1", r.returncode == 1 and "--num-heads" in r.stderr
            and one_line_error(r), r.stderr.strip())
    r = run_conv([p("nonexistent.pth"), "-o", p("x.safetensors")])
    C.check("error: missing input -> exit 1", r.returncode == 1 and one_line_error(r), r.stderr.strip())
    with open(p("garbage.pth"), "wb") as f:
        f.write(b"this is not a checkpoint")
    r = run_conv([p("garbage.pth"), "-o", p("x.safetensors")])
    C.check("error: garbage input -> exit 1 one line", r.returncode == 1 and one_line_error(r), r.stderr.strip())
    r = run_conv([p("flat_plain.pth")])
    C.check("usage: missing -o -> exit 2", r.returncode == 2, (r.stderr.strip().splitlines() or [""])[-1])
    r = run_conv([p("flat_plain.pth"), "--dtype", "f8", "-o", p("x.safetensors")])
    C.check("usage: bad --dtype -> exit 2", r.returncode == 2)
    r = run_conv([])
    C.check("usage: no arguments -> exit 2", r.returncode == 2)


def main():
    try:
        for fn in (test_vitb_layout, test_key_counts, test_layout_variants, test_rasa, test_dtypes,
                   test_inference_variants, test_errors):
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                C.check(fn.__name__, False, "%s: %s" % (type(e).__name__, e))
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    return C.finish()


if __name__ == "__main__":
    sys.exit(main())
