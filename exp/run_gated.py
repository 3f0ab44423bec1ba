"""GPU: int8 launch shapes of the shipped GEMV against the word-wise kernel, 7B (1 GPU) and 70B (one of 2 ranks)."""
import json, math, os, sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent.parent)); sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels as K, quantize as Q
from gpu_check_quant import time_graph
import w8

dev, bf16 = "cuda", torch.bfloat16
gen = torch.Generator(device=dev).manual_seed(0)
pdl = K._pdl(torch.zeros(1, device=dev))
SETS = {"7b": {"wqkv": (12288, 4096, False, False), "wo": (4096, 4096, False, True), "w13": (11008, 4096, True, False),
               "w2": (4096, 11008, False, True)},
        "70b/2": {"wqkv": (5120, 8192, False, False), "wo": (8192, 4096, False, True), "w13": (14336, 8192, True, False),
                  "w2": (8192, 14336, False, True)}}
G = [(2, 512, 2), (2, 1024, 2), (4, 512, 2), (4, 1024, 2), (4, 1024, 4), (8, 1024, 4), (4, 2048, 4), (2, 2048, 2), (8, 512, 2), (8, 1024, 2)]
NG = [(4, 1024, 2), (8, 1024, 2), (8, 1024, 4), (8, 2048, 4), (4, 2048, 2), (4, 1024, 4), (16, 1024, 4), (8, 512, 2)]
rows = []
for sname, SH in SETS.items():
    for name, (n, k, gated, res) in SH.items():
        rn = 2 * n if gated else n
        copies = max(2, math.ceil(256e6 / (rn * k)))
        q8 = [(q, s.to(bf16)) for q, s in (Q.quantize_int8(torch.randn(rn, k, device=dev, dtype=bf16, generator=gen) * 0.02) for _ in range(copies))]
        x = torch.randn(k, device=dev, dtype=bf16, generator=gen)
        r = torch.randn(n, device=dev, dtype=bf16, generator=gen) if res else None
        y = (q8[0][0].float() @ x.float()) * q8[0][1].float()
        if gated:
            y = torch.nn.functional.silu(y[:n]) * y[n:]
        if res:
            y = y + r.float()
        nb = rn * k + rn * 2
        def add(variant, f):
            out = f(*q8[0]).float()
            err = ((out - y).abs().max() / y.abs().max()).item()
            sec = time_graph(lambda: [f(q, s) for q, s in q8]) / copies
            rows.append(dict(set=sname, shape=name, variant=variant, us=sec * 1e6, gb_s=nb / sec / 1e9, rel_err=err))
            print(f"{sname:5s} {name:5s} {variant:26s} {sec*1e6:8.2f} us {nb/sec/1e9:7.0f} GB/s err {err:.2e}", flush=True)
        for bn, bk, nw in (G if gated else NG):
            add(f"bytes {bn},{bk},{nw}", lambda q, s: K.gemv_launch(x, q, s, bn, bk, nw, gated=gated, residual=r))
            for xs in (False, True):
                add(f"word xs={int(xs)} {bn},{bk},{nw}",
                    lambda q, s: w8.launch(x, q, s, bn, bk, nw, gated=gated, residual=r, asm=True, xsplit=xs, pdl=pdl))
        del q8
print("\nbest per set/shape (bytes = the shipped kernel):")
for sname, SH in SETS.items():
    for name in SH:
        rs = sorted([r for r in rows if r["set"] == sname and r["shape"] == name], key=lambda r: r["us"])
        b = [r for r in rs if r["variant"].startswith("bytes")]
        print(f"  {sname} {name}: best {[(r['variant'], round(r['us'], 2)) for r in rs[:3]]}; best bytes {b[0]['variant']} {b[0]['us']:.2f}")
json.dump(rows, open(os.path.join(os.environ.get("OUT", "/tmp"), "gated.json"), "w"), indent=1)
