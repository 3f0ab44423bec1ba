"""GPU: launch shapes of the shipped GEMV at more shapes: int8 gated w13 (by K), bf16 wo and w2 (70B ranks)."""
import json, math, os, sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent.parent)); sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import kernels as K, quantize as Q
from gpu_check_quant import time_graph

dev, bf16 = "cuda", torch.bfloat16
gen = torch.Generator(device=dev).manual_seed(0)
rows = []
def run(tag, n, k, kind, gated, res, cfgs):
    rn = 2 * n if gated else n
    eb = 1 if kind == "int8" else 2
    copies = max(2, math.ceil(256e6 / (rn * k * eb)))
    ws = [torch.randn(rn, k, device=dev, dtype=bf16, generator=gen) * 0.02 for _ in range(copies)]
    q8 = [(q, s.to(bf16)) for q, s in map(Q.quantize_int8, ws)] if kind == "int8" else [(w, None) for w in ws]
    del ws
    x = torch.randn(k, device=dev, dtype=bf16, generator=gen)
    r = torch.randn(n, device=dev, dtype=bf16, generator=gen) if res else None
    nb = rn * k * eb
    for bn, bk, nw in cfgs:
        sec = time_graph(lambda: [K.gemv_launch(x, q, s, bn, bk, nw, gated=gated, residual=r) for q, s in q8]) / copies
        rows.append(dict(tag=tag, cfg=(bn, bk, nw), us=sec * 1e6, gb_s=nb / sec / 1e9))
        print(f"{tag:22s} {bn},{bk},{nw} {sec*1e6:8.2f} us {nb/sec/1e9:6.0f} GB/s", flush=True)
GC = [(2, 512, 2), (2, 1024, 2), (4, 1024, 4), (2, 2048, 2), (4, 512, 2)]
run("int8 w13 7B K4096", 11008, 4096, "int8", True, False, GC)
run("int8 w13 L3-8B K4096", 14336, 4096, "int8", True, False, GC)
run("int8 w13 70B/4 K8192", 7168, 8192, "int8", True, False, GC)
run("int8 w13 70B/2 K8192", 14336, 8192, "int8", True, False, GC)
run("int8 w13 70B/1 K8192", 28672, 8192, "int8", True, False, GC)
run("int8 w13 7B/2 K4096", 5504, 4096, "int8", True, False, GC)
BC = [(8, 512, 2), (8, 1024, 2), (4, 1024, 2), (8, 1024, 4), (4, 2048, 2)]
run("bf16 wo 70B/2 K4096", 8192, 4096, "bf16", False, True, BC)
run("bf16 w2 70B/2 K14336", 8192, 14336, "bf16", False, True, BC)
run("bf16 wo 70B/4 K2048", 8192, 2048, "bf16", False, True, BC)
run("bf16 w2 70B/4 K7168", 8192, 7168, "bf16", False, True, BC)
run("bf16 w2 7B/1 K11008", 4096, 11008, "bf16", False, True, BC)
run("bf16 wo 7B/1 K4096", 4096, 4096, "bf16", False, True, BC)
json.dump(rows, open(os.path.join(os.environ.get("OUT", "/tmp"), "cfg.json"), "w"), indent=1)
