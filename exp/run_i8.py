"""GPU: shipped int8 GEMV vs the word-wise kernel (exp/w8.py) on the 7B block's products, as the model runs them."""
import json, math, os, sys, statistics
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
SH = {"wqkv": (12288, 4096, False, False), "wo": (4096, 4096, False, True), "w13": (11008, 4096, True, False),
      "w2": (4096, 11008, False, True)}
if len(sys.argv) > 1 and sys.argv[1] == "tp2":  # one rank of 2 (70B int8 shapes)
    SH = {"wqkv": (5120, 8192, False, False), "wo": (8192, 4096, False, True), "w13": (14336, 8192, True, False),
          "w2": (8192, 14336, False, True)}
CFGS = [(4, 1024, 2), (8, 1024, 2), (8, 512, 2), (4, 2048, 2), (8, 2048, 4), (2, 1024, 2), (16, 1024, 4), (4, 1024, 4),
        (2, 2048, 2), (8, 1024, 4), (16, 512, 2)]
rows = []
for name, (n, k, gated, res) in SH.items():
    rn = 2 * n if gated else n
    copies = max(2, math.ceil(256e6 / (rn * k)))
    ws = [torch.randn(rn, k, device=dev, dtype=bf16, generator=gen) * 0.02 for _ in range(copies)]
    q8 = [(q, s.to(bf16)) for q, s in map(Q.quantize_int8, ws)]
    del ws
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
        rows.append(dict(shape=name, variant=variant, us=sec * 1e6, gb_s=nb / sec / 1e9, rel_err=err))
        print(f"{name:5s} {variant:28s} {sec*1e6:8.2f} us {nb/sec/1e9:7.0f} GB/s err {err:.2e}", flush=True)
    cfg = K.CONFIGS["int8_gated" if gated else "int8"]
    add("shipped " + str(tuple(cfg.values())), lambda q, s: K.gemv_launch(x, q, s, **cfg, gated=gated, residual=r))
    for bn, bk, nw in CFGS:
        if gated and bn == 16: continue
        for asm, xs in ((True, True), (True, False)):
            add(f"word asm={int(asm)} xs={int(xs)} {bn},{bk},{nw}",
                lambda q, s: w8.launch(x, q, s, bn, bk, nw, gated=gated, residual=r, asm=asm, xsplit=xs, pdl=pdl))
    for bn, bk, nw in CFGS[:3]:
        add(f"word asm=0 xs=1 {bn},{bk},{nw}", lambda q, s: w8.launch(x, q, s, bn, bk, nw, gated=gated, residual=r, asm=False, xsplit=True, pdl=pdl))
    del q8
print("\nbest per shape:")
tot = {}
for name in SH:
    rs = sorted([r for r in rows if r["shape"] == name], key=lambda r: r["us"])
    sh = [r for r in rs if r["variant"].startswith("shipped")][0]
    print(f"{name}: shipped {sh['us']:.2f} us; best {rs[0]['variant']} {rs[0]['us']:.2f}; next {rs[1]['variant']} {rs[1]['us']:.2f}; {rs[2]['variant']} {rs[2]['us']:.2f}")
# best single config for the word kernel over the block (non-gated shapes share one, gated its own)
vs = sorted({r["variant"] for r in rows if r["variant"].startswith("word")})
for v in vs:
    t = sum(r["us"] for r in rows if r["variant"] == v and r["shape"] != "w13")
    tot[v] = t
print("non-gated (wqkv+wo+w2) per variant, best 6:", sorted(tot.items(), key=lambda kv: kv[1])[:6])
print("non-gated shipped:", sum(r["us"] for r in rows if r["variant"].startswith("shipped") and r["shape"] != "w13"))
os.makedirs(os.environ.get("OUT", "/tmp"), exist_ok=True)
json.dump(rows, open(os.path.join(os.environ.get("OUT", "/tmp"), "i8.json"), "w"), indent=1)
