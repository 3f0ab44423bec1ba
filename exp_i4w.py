"""Experiment (not kept): the word-wise int4 GEMV (exp_i4w_kernel.py) against tinygemm and the shipped Triton int4
GEMV, per 7B layer shape and group size, CUDA graphs over copies exceeding L2 (as scripts/bench_gemv.py)."""
import itertools, json, math, os, sys, time
sys.path.insert(0, "scripts"); sys.path.insert(0, ".")
import torch
import kernels as K, quantize as Q
from gpu_check_quant import time_graph
from exp_i4w_kernel import i4w_launch, permute_bytes
dev, bf16 = "cuda", torch.bfloat16
print(torch.cuda.get_device_name(), torch.__version__, K.triton.__version__, flush=True)
SHAPES = {"wqkv": (12288, 4096), "wo": (4096, 4096), "w13": (22016, 4096), "w2": (4096, 11008)}
GRID = [(2, 2048, 2), (4, 1024, 1), (4, 2048, 2), (4, 4096, 4), (8, 1024, 1), (8, 2048, 2), (8, 4096, 4), (16, 1024, 1),
        (16, 2048, 2)]
groups = [int(g) for g in os.environ.get("GS", "32,64,128").split(",")]
gen = torch.Generator(device=dev).manual_seed(0)
pdl = K._pdl(torch.empty(1, device=dev))
rows = []
t0 = time.time()
for name, (n, k) in SHAPES.items():
    x = torch.randn(1, k, device=dev, dtype=bf16, generator=gen)
    xv = x.view(-1)
    copies = max(2, math.ceil(256e6 / (n * k * 2))) * 3
    w = torch.randn(n, k, device=dev, dtype=bf16, generator=gen) * 0.02
    for G in groups:
        q0 = Q.quantize_int4(w, G)
        q4 = [tuple(t.clone() for t in q0) for _ in range(copies)]
        nb = n * k // 2 + 2 * n * (k // G) * 2
        ref = x.float() @ K.dequantize_int4(*q0, G).t()
        def add(variant, fn, out):
            err = ((out.float().reshape(-1) - ref.reshape(-1)).abs().max() / ref.abs().max()).item()
            us = time_graph(fn) / copies * 1e6
            rows.append(dict(shape=name, G=G, variant=variant, us=us, gb_s=nb / us / 1e3, err=err))
        tg = [K.tinygemm_pack(*q, G) for q in q4]
        add("tinygemm", lambda: [K.tinygemm_linear(x, *t, G) for t in tg], K.tinygemm_linear(x, *tg[0], G))
        del tg
        cfg = K.CONFIGS[G]
        add("shipped", lambda: [K.int4_gemv_launch(xv, *q, G, **cfg) for q in q4], K.int4_gemv_launch(xv, *q4[0], G, **cfg))
        p4 = [(permute_bytes(q[0], G), q[1], q[2]) for q in q4]
        del q4
        for bn, bk, nw in GRID:
            try:
                add(f"new {bn},{bk},{nw}", lambda: [i4w_launch(xv, *q, G, bn, bk, nw, pdl) for q in p4],
                    i4w_launch(xv, *p4[0], G, bn, bk, nw, pdl))
            except Exception as e:
                print("fail", name, G, bn, bk, nw, str(e)[:200], flush=True)
        del p4
        mine = sorted((r for r in rows if r["shape"] == name and r["G"] == G), key=lambda r: r["us"])
        base = {r["variant"]: r for r in mine if not r["variant"].startswith("new")}
        news = [r for r in mine if r["variant"].startswith("new")][:3]
        print(f"{name} g{G}: tinygemm {base['tinygemm']['us']:.1f} us, shipped {base['shipped']['us']:.1f}; best new: "
              + "; ".join(f"{r['variant'][4:]} {r['us']:.1f} us {r['gb_s']:.0f} GB/s err {r['err']:.1e}" for r in news)
              + f"  [{time.time() - t0:.0f} s]", flush=True)
        bad = [r for r in mine if r["err"] > 2e-2]
        if bad:
            print("ERROR", bad[:2], flush=True)
print("\nper 7B block (wqkv + wo + w13 + w2):")
for G in groups:
    tot = {}
    for r in rows:
        if r["G"] == G:
            tot.setdefault(r["variant"], []).append(r["us"])
    tot = {v: sum(t) for v, t in tot.items() if len(t) == 4}
    best = sorted((t, v) for v, t in tot.items() if v.startswith("new"))[:4]
    print(f"g{G}: tinygemm {tot['tinygemm']:.1f} us, shipped {tot['shipped']:.1f} us, new best: " +
          "; ".join(f"{v[4:]} {t:.1f}" for t, v in best), flush=True)
    # best per shape (what per-shape launch shapes would give)
    per = sum(min(r["us"] for r in rows if r["G"] == G and r["shape"] == s and r["variant"].startswith("new")) for s in SHAPES)
    print(f"   new, best shape per layer: {per:.1f} us", flush=True)
out = os.environ.get("OUT")
if out:
    json.dump(rows, open(os.path.join(out, "exp_i4w.json"), "w"), indent=1)
