"""Session 14: the int4 GEMV with f16x2 products against the shipped one, 7B block. python3 exp14c.py OUT.json"""
import json, math, sys
import torch
sys.path.insert(0, "scripts"); sys.path.insert(0, ".")
import kernels as K
import quantize as Q
from gpu_check_quant import time_graph
from bench_gemv import layer_shapes

dev, bf16 = "cuda", torch.bfloat16
print(torch.cuda.get_device_name(), flush=True)
gen = torch.Generator(device=dev).manual_seed(0)
CFGS = [(4, 2048, 2), (8, 2048, 2), (8, 1024, 1), (4, 4096, 4), (8, 4096, 4), (16, 2048, 4), (16, 4096, 8), (8, 2048, 4)]
rows = []
for G in (32, 128):
    tot = {}
    for name, (n, k) in layer_shapes("llama-2-7b", 1).items():
        if name == "output":
            continue
        gated, resid = name == "w13", name in ("wo", "w2")
        copies = max(2, math.ceil(256e6 / (n * k // 2)))
        x = torch.randn(k, device=dev, dtype=bf16, generator=gen)
        r = torch.randn(n // 2 if gated else n, device=dev, dtype=bf16, generator=gen) if resid else None
        w0 = torch.randn(n, k, device=dev, dtype=bf16, generator=gen) * 0.02
        q4 = [Q.quantize_int4(w0, G) for _ in range(copies)]
        ref = K.dequantize_int4(*q4[0], G).float() @ x.float()
        if gated:
            a, b = ref.chunk(2); ref = torch.nn.functional.silu(a) * b
        if resid:
            ref = ref + r.float()
        err = lambda y: ((y.float() - ref).abs().max() / ref.abs().max()).item()
        f = lambda q, cfg: K.int4_gemv_launch(x, *q, G, **cfg, gated=gated, residual=r)
        variants = [("f32 " + str(K.CONFIGS[G]), f, K.CONFIGS[G])]
        for bn, bk, nw in CFGS:
            cfg = dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=nw)
            variants.append((f"f16 {bn},{bk},{nw}", lambda q, cfg: K.int4_f16_gemv_launch(x, *q, G, **cfg, gated=gated, residual=r), cfg))
        for v, fn, cfg in variants:
            try:
                e = err(fn(q4[0], cfg))
                t = time_graph(lambda: [fn(q, cfg) for q in q4]) / copies * 1e6
            except Exception as ex:
                print("fail", v, type(ex).__name__, str(ex)[:300], flush=True)
                continue
            tot[v] = tot.get(v, 0) + t
            rows.append(dict(G=G, name=name, variant=v, us=t, err=e))
            print(f"g{G} {name} {v}: {t:.2f} us err {e:.2e}", flush=True)
    print(f"== g{G} block:", "; ".join(f"{v} {t:.1f}" for v, t in sorted(tot.items(), key=lambda z: z[1])), flush=True)
json.dump(rows, open(sys.argv[-1], "w"), indent=1)
