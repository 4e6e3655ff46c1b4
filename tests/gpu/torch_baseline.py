#!/usr/bin/env python3
"""PyTorch bf16 baseline for tests/gpu/run.sh: the same Franca/DINOv2 ViT
(SwiGLU FFN, LayerScale, pre-norm blocks, final LayerNorm, CLS output) with
random weights, timed like bench_gpu: float32 images uploaded from the host,
CLS downloaded, median of repeated forwards after a warm-up.

Modes: eager (attention written out: softmax(QK^T/sqrt(hd))V), sdpa
(F.scaled_dot_product_attention), compile (torch.compile of the sdpa model).
Prints markdown rows in bench_gpu's format. With --budget S, no new model
starts after S seconds (its rows say "skipped: time budget"), so that a caller's
time limit keeps the rows already measured. A baseline only: not used by the
engine.
"""
import argparse
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCH = {"s": ("ViT-S/14", 384, 12, 6), "b": ("ViT-B/14", 768, 12, 12), "l": ("ViT-L/14", 1024, 24, 16)}


def swiglu_hidden(d):
    return (int(4 * d * 2 / 3) + 7) // 8 * 8


class Block(nn.Module):
    def __init__(self, d, heads, sdpa):
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        hs = swiglu_hidden(d)
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.w12, self.w3 = nn.Linear(d, 2 * hs), nn.Linear(hs, d)
        self.ls1 = nn.Parameter(torch.full((d,), 1e-5))
        self.ls2 = nn.Parameter(torch.full((d,), 1e-5))

    def attn(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            a = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)
            o = a.softmax(dim=-1) @ v
        return self.proj(o.transpose(1, 2).reshape(B, T, D))

    def forward(self, x):
        x = x + self.ls1 * self.attn(self.norm1(x))
        h1, h2 = self.w12(self.norm2(x)).chunk(2, dim=-1)
        return x + self.ls2 * self.w3(F.silu(h1) * h2)


class ViT(nn.Module):
    def __init__(self, d, depth, heads, grid, sdpa):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 14, 14)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 1 + grid * grid, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads, sdpa) for _ in range(depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for b in self.blocks:
            x = b(x)
        return self.norm(x)[:, 0]


def flops(d, depth, res):
    n = (res // 14) ** 2
    t = n + 1
    hs = swiglu_hidden(d)
    return 2 * n * 3 * 14 * 14 * d + depth * (2 * t * (4 * d * d + 3 * d * hs) + 4 * t * t * d)


def bench(model, res, batch, seconds):
    x = torch.randn(batch, 3, res, res).pin_memory()

    def step():
        with torch.no_grad():
            xb = x.to("cuda", non_blocking=True).to(torch.bfloat16)
            return model(xb).float().cpu()

    step()
    torch.cuda.synchronize()
    times, end = [], time.time() + seconds
    while len(times) < 3 or time.time() < end:
        t0 = time.time()
        step()
        times.append(time.time() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peak", type=float, default=0.0)
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--budget", type=float, default=0.0, help="seconds; 0: no limit")
    args = ap.parse_args()
    t0 = time.monotonic()
    torch.backends.cuda.matmul.allow_tf32 = True
    print("PyTorch %s, %s" % (torch.__version__, torch.cuda.get_device_name()))
    print("| model | res | batch | attention | ms/batch | images/s | TFLOP/s | % of bf16 GEMM |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    plan = [("b", 224, [1, 64, 256], ["eager", "sdpa", "compile"]),
            ("l", 518, [1, 8, 32], ["eager", "sdpa", "compile"]),
            ("s", 224, [256], ["eager", "sdpa"]),
            ("l", 224, [256], ["eager", "sdpa"])]
    for arch, res, batches, modes in plan:
        name, d, depth, heads = ARCH[arch]
        for mode in modes:
            if args.budget > 0 and time.monotonic() - t0 > args.budget:
                print("| %s (PyTorch %s) | %d | - | %s | skipped: time budget | | | |" % (name, mode, res, mode), flush=True)
                continue
            try:
                torch.manual_seed(0)
                m = ViT(d, depth, heads, res // 14, sdpa=mode != "eager").cuda().to(torch.bfloat16).eval()
                if mode == "compile":
                    m = torch.compile(m)
                for b in batches:
                    t = bench(m, res, b, args.seconds)
                    ips = b / t
                    tf = flops(d, depth, res) * ips / 1e12
                    pct = "%.0f %%" % (100 * tf / args.peak) if args.peak > 0 else "-"
                    print("| %s (PyTorch %s) | %d | %d | %s | %.2f | %.1f | %.1f | %s |"
                          % (name, mode, res, b, mode, t * 1e3, ips, tf, pct), flush=True)
                del m
                torch.cuda.empty_cache()
            except Exception as e:  # noqa: BLE001 - a baseline row failing must not hide the others
                print("| %s (PyTorch %s) | %d | - | %s | failed: %s | | | |" % (name, mode, res, mode, type(e).__name__), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
