"""GPU: how fast can an int8 GEMV-shaped kernel read, with (almost) no arithmetic? Same loop as the shipped GEMV."""
import math, sys, json, os
from pathlib import Path
import torch, triton, triton.language as tl
sys.path.insert(0, str(Path(__file__).resolve().parent.parent)); sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import kernels as K, quantize as Q
from gpu_check_quant import time_graph


@triton.jit
def roof(x_ptr, w_ptr, y_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MODE: tl.constexpr, PDL: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    cols = tl.arange(0, BLOCK_K)
    w_at = w_ptr + rows[:, None] * K + cols[None, :]
    w = tl.load(w_at, mask=row_ok[:, None] & (cols[None, :] < K), other=0)
    if PDL:
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=w.dtype)
    for k0 in range(0, K, BLOCK_K):
        next_ok = row_ok[:, None] & (k0 + BLOCK_K + cols[None, :] < K)
        w_next = tl.load(w_at + k0 + BLOCK_K, mask=next_ok, other=0)
        acc ^= w
        w = w_next
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    y = tl.xor_sum(acc, axis=1)
    tl.store(y_ptr + rows, y.to(tl.float32).to(y_ptr.dtype.element_ty), mask=row_ok)


dev, bf16 = "cuda", torch.bfloat16
pdl = K._pdl(torch.zeros(1, device=dev))
SH = {"wqkv": (12288, 4096), "wo": (4096, 4096), "w13": (22016, 4096), "w2": (4096, 11008)}
if len(sys.argv) > 1 and sys.argv[1] == "tp2":
    SH = {"wqkv": (5120, 8192), "wo": (8192, 4096), "w13": (28672, 8192), "w2": (8192, 14336)}
res = {}
for name, (n, k) in SH.items():
    copies = max(2, math.ceil(256e6 / (n * k)))
    ws = [torch.randint(-127, 127, (n, k), device=dev, dtype=torch.int8) for _ in range(copies)]
    x = torch.randn(k, device=dev, dtype=bf16)
    s = torch.rand(n, device=dev, dtype=bf16)
    y = torch.empty(n, device=dev, dtype=bf16)
    t = time_graph(lambda: [K.gemv_launch(x, w, s, **K.CONFIGS["int8"]) for w in ws]) / copies
    print(f"{name} shipped {t*1e6:.2f} us {n*k/t/1e9:.0f} GB/s", flush=True)
    res[(name, "shipped")] = t
    for dt in (torch.int8, torch.int32):
        for bn, bk, nw in [(4, 1024, 2), (8, 1024, 2), (8, 512, 2), (4, 2048, 2), (16, 1024, 4), (2, 1024, 2), (8, 2048, 4)]:
            kk = k if dt == torch.int8 else k // 4
            bkk = bk if dt == torch.int8 else bk // 4
            wv = [w.view(dt) for w in ws]
            f = lambda: [roof[(triton.cdiv(n, bn),)](x, w, y, n, kk, BLOCK_N=bn, BLOCK_K=bkk, MODE=0, num_warps=nw, **pdl) for w in wv]
            t = time_graph(f) / copies
            res[(name, f"xor {str(dt)[6:]} {bn},{bk},{nw}")] = t
            print(f"{name} xor {dt} {bn},{bk},{nw} {t*1e6:.2f} us {n*k/t/1e9:.0f} GB/s", flush=True)
    del ws
print("\nblock totals:")
vs = sorted({v for _, v in res})
tot = sorted(((sum(res[(nm, v)] for nm in SH) * 1e6, v) for v in vs))
for t, v in tot[:10]:
    print(f"{v}: {t:.2f} us/block")
from bench import copy_bandwidth
print("copy GB/s", copy_bandwidth("cuda"))
print("shipped:", sum(res[(nm, "shipped")] for nm in SH) * 1e6)
