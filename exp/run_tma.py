"""GPU: shipped GEMVs vs TMA-pipelined GEMV (exp/tma.py) on 7B shapes, int8 and bf16."""
import json, math, os, sys, itertools
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent.parent)); sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels as K, quantize as Q
from gpu_check_quant import time_graph
import tma

dev, bf16 = "cuda", torch.bfloat16
gen = torch.Generator(device=dev).manual_seed(0)
pdl = K._pdl(torch.zeros(1, device=dev))
SH = {"wqkv": (12288, 4096), "wo": (4096, 4096), "w13": (22016, 4096), "w2": (4096, 11008)}
kinds = sys.argv[1].split(",") if len(sys.argv) > 1 else ["int8", "bf16"]
rows = []
for kind in kinds:
    for name, (n, k) in SH.items():
        eb = 1 if kind == "int8" else 2
        copies = max(2, math.ceil(256e6 / (n * k * eb)))
        ws = [torch.randn(n, k, device=dev, dtype=bf16, generator=gen) * 0.02 for _ in range(copies)]
        if kind == "int8":
            qs = [(q, s.to(bf16)) for q, s in map(Q.quantize_int8, ws)]
            del ws
        else:
            qs = [(w, None) for w in ws]
        x = torch.randn(k, device=dev, dtype=bf16, generator=gen)
        y = (qs[0][0].float() @ x.float()) * (qs[0][1].float() if kind == "int8" else 1)
        nb = n * k * eb + (n * 2 if kind == "int8" else 0)
        def add(variant, f):
            try:
                out = f(0).float()
                err = ((out - y).abs().max() / y.abs().max()).item()
                sec = time_graph(lambda: [f(i) for i in range(copies)]) / copies
            except Exception as e:
                print(f"{kind} {name} {variant}: {type(e).__name__} {str(e)[:150]}", flush=True)
                return
            rows.append(dict(kind=kind, shape=name, variant=variant, us=sec * 1e6, gb_s=nb / sec / 1e9, rel_err=err))
            print(f"{kind} {name:5s} {variant:24s} {sec*1e6:8.2f} us {nb/sec/1e9:7.0f} GB/s err {err:.2e}", flush=True)
        cfg = K.CONFIGS[kind]
        add("shipped " + ",".join(map(str, cfg.values())), lambda i: K.gemv_launch(x, qs[i][0], qs[i][1], **cfg))
        if kind == "int8":
            grid = [(bn, bk, nw, st) for bn, bk, nw, st in itertools.product((8, 16, 32), (128, 256), (2, 4, 8), (3, 4, 6))
                    if bn * bk >= 2048 and bn * bk // (32 * nw) >= 16]
        else:
            grid = [(bn, bk, nw, st) for bn, bk, nw, st in itertools.product((8, 16, 32), (64, 128, 256), (2, 4, 8), (3, 4, 6))
                    if bn * bk >= 1024 and bn * bk // (32 * nw) >= 8 and bk * 2 <= 256 * 2]
        for bn, bk, nw, st in grid:
            descs = [tma.make_desc(q, bn, bk) for q, _ in qs]
            add(f"tma {bn},{bk},{nw},{st}", lambda i: tma.launch(x, qs[i][0], qs[i][1], bn, bk, nw, st, desc=descs[i], pdl=pdl))
        del qs
print("\nsummary:")
for kind in kinds:
    vs = sorted({r["variant"] for r in rows if r["kind"] == kind})
    tot = {v: sum(r["us"] for r in rows if r["kind"] == kind and r["variant"] == v) for v in vs
           if sum(1 for r in rows if r["kind"] == kind and r["variant"] == v) == len(SH)}
    best = sorted(tot.items(), key=lambda kv: kv[1])
    print(kind, "block us, best 8:", [(v, round(t, 2)) for v, t in best[:8]])
    print(kind, "shipped:", [(v, round(t, 2)) for v, t in best if v.startswith("shipped")])
    for name in SH:
        rs = sorted([r for r in rows if r["kind"] == kind and r["shape"] == name], key=lambda r: r["us"])
        print(f"  {name}: best {rs[0]['variant']} {rs[0]['us']:.2f} us {rs[0]['gb_s']:.0f} GB/s; shipped",
              [f"{r['us']:.2f}" for r in rs if r["variant"].startswith("shipped")])
out = os.environ.get("OUT", "/tmp")
json.dump(rows, open(os.path.join(out, "tma.json"), "w"), indent=1)
