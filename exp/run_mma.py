"""GPU: shipped int8 GEMV vs the tensor-core GEMV (exp/mma.py) on 7B shapes."""
import json, math, os, sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent.parent)); sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels as K, quantize as Q
from gpu_check_quant import time_graph
import mma

dev, bf16 = "cuda", torch.bfloat16
gen = torch.Generator(device=dev).manual_seed(0)
pdl = K._pdl(torch.zeros(1, device=dev))
SH = {"wqkv": (12288, 4096), "wo": (4096, 4096), "w13": (22016, 4096), "w2": (4096, 11008)}
CF = [(64, 256, 4), (64, 128, 4), (64, 512, 4), (32, 256, 2), (32, 512, 2), (16, 256, 1), (128, 256, 8), (128, 128, 8), (64, 256, 8)]
rows = []
for name, (n, k) in SH.items():
    copies = max(2, math.ceil(256e6 / (n * k)))
    qs = [(q, s.to(bf16)) for q, s in (Q.quantize_int8(torch.randn(n, k, device=dev, dtype=bf16, generator=gen) * 0.02) for _ in range(copies))]
    x = torch.randn(k, device=dev, dtype=bf16, generator=gen)
    y = (qs[0][0].float() @ x.float()) * qs[0][1].float()
    nb = n * k + n * 2
    def add(variant, f):
        try:
            out = f(0).float()
            err = ((out - y).abs().max() / y.abs().max()).item()
            sec = time_graph(lambda: [f(i) for i in range(copies)]) / copies
        except Exception as e:
            print(f"{name} {variant}: {type(e).__name__} {str(e)[:300]}", flush=True)
            return
        rows.append(dict(shape=name, variant=variant, us=sec * 1e6, gb_s=nb / sec / 1e9, rel_err=err))
        print(f"{name:5s} {variant:24s} {sec*1e6:8.2f} us {nb/sec/1e9:7.0f} GB/s err {err:.2e}", flush=True)
    cfg = K.CONFIGS["int8"]
    add("shipped", lambda i: K.gemv_launch(x, qs[i][0], qs[i][1], **cfg))
    for bn, bk, nw in CF:
        add(f"mma {bn},{bk},{nw}", lambda i: mma.launchw(x, qs[i][0], qs[i][1], bn, bk, nw, pdl=pdl))
    for bn, bk, nw in CF[:2]:
        add(f"mma-nopdl {bn},{bk},{nw}", lambda i: mma.launchw(x, qs[i][0], qs[i][1], bn, bk, nw))
    del qs
print("\nsummary:")
for name in SH:
    rs = sorted([r for r in rows if r["shape"] == name], key=lambda r: r["us"])
    sh = [r for r in rs if r["variant"] == "shipped"][0]
    print(f"  {name}: shipped {sh['us']:.2f}; best", [(r["variant"], round(r["us"], 2), round(r["gb_s"])) for r in rs[:4]])
json.dump(rows, open(os.path.join(os.environ.get("OUT", "/tmp"), "mma.json"), "w"), indent=1)
