"""Session 14: the int8 GEMV in float16 pairs against the shipped float32 one. python3 exp14.py [--tp2only] OUT.json"""
import itertools, json, math, sys, time
import torch
sys.path.insert(0, "scripts"); sys.path.insert(0, ".")
import kernels as K
import quantize as Q
from gpu_check_quant import time_graph
from bench_gemv import layer_shapes

dev, bf16 = "cuda", torch.bfloat16
print(torch.cuda.get_device_name(), torch.__version__, K.triton.__version__, flush=True)
gen = torch.Generator(device=dev).manual_seed(0)
GRID = [dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=nw) for bn, bk, nw in itertools.product((1, 2, 4, 8), (512, 1024, 2048), (1, 2, 4))
        if bk // 4 >= 32 * nw and 1024 <= bn * bk <= 16384 and bn * bk // 4 // (32 * nw) <= 32]
out, rows = sys.argv[-1], []
shapes = [("7b", 1), ("llama-2-70b", 2)] if "--tp2only" not in sys.argv else [("llama-2-70b", 2)]
best_cfg = {}
for shape, tp in shapes:
    t0 = time.time()
    tot_old, per_cfg = 0.0, {}
    for name, (n, k) in layer_shapes("llama-2-7b" if shape == "7b" else shape, tp).items():
        if name == "output":
            continue
        gated = name == "w13"
        resid = name in ("wo", "w2")
        nout = n // 2 if gated else n
        copies = max(2, math.ceil(256e6 / (n * k)))
        x = torch.randn(k, device=dev, dtype=bf16, generator=gen)
        r = torch.randn(nout, device=dev, dtype=bf16, generator=gen) if resid else None
        qs = [Q.quantize_int8(torch.randn(n, k, device=dev, dtype=bf16, generator=gen) * 0.02) for _ in range(copies)]
        qs = [(q, s.to(bf16)) for q, s in qs]
        wf = qs[0][0].float() * qs[0][1].float()[:, None]
        ref = wf @ x.float()
        if gated:
            g, u = ref.chunk(2)
            ref = torch.nn.functional.silu(g) * u
        if resid:
            ref = ref + r.float()
        nb = n * k + n * 2
        err = lambda y: ((y.float() - ref).abs().max() / ref.abs().max()).item()
        old_cfg = K.CONFIGS["int8_gated" if gated else "int8"]
        old = lambda q, s, cfg=old_cfg: K.gemv_launch(x, q, s, **cfg, gated=gated, residual=r)
        t = time_graph(lambda: [old(q, s) for q, s in qs]) / copies * 1e6
        tot_old += t
        rows.append(dict(shape=shape, tp=tp, name=name, variant="f32 shipped " + str(old_cfg), us=t, err=err(old(*qs[0]))))
        print(f"{shape} tp{tp} {name} ({n}x{k}) shipped {t:.2f} us  {nb / t / 1e3:.0f} GB/s err {rows[-1]['err']:.2e}", flush=True)
        res = []
        for cfg in GRID:
            if gated and cfg['BLOCK_N'] * cfg['BLOCK_K'] // 4 // (32 * cfg['num_warps']) > 16:
                continue
            new = lambda q, s, cfg=cfg: K.int8_f16_gemv_launch(x, q, s, **cfg, gated=gated, residual=r)
            try:
                e = err(new(*qs[0]))
                t = time_graph(lambda: [new(q, s) for q, s in qs]) / copies * 1e6
            except Exception as ex:
                print("fail", cfg, type(ex).__name__, str(ex)[:200], flush=True)
                continue
            key = (gated, tuple(cfg.values()))
            per_cfg.setdefault(key, 0.0)
            per_cfg[key] += t
            res.append((t, cfg, e))
            rows.append(dict(shape=shape, tp=tp, name=name, variant="f16 " + str(cfg), us=t, err=e))
        res.sort(key=lambda z: z[0])
        for t, cfg, e in res[:4]:
            print(f"   f16 {cfg} {t:.2f} us {nb / t / 1e3:.0f} GB/s err {e:.2e}", flush=True)
        # range: x with large entries
        for scale in (100.0, 1000.0):
            xb = x * scale
            yb = K.int8_f16_gemv_launch(xb, *qs[0], **res[0][1], gated=gated, residual=r)
            refb = wf @ xb.float()
            if gated:
                g, u = refb.chunk(2); refb = torch.nn.functional.silu(g) * u
            if resid:
                refb = refb + r.float()
            print(f"   x*{scale:g} (max |x| {xb.abs().max().item():.0f}): err {((yb.float() - refb).abs().max() / refb.abs().max()).item():.2e}"
                  f" finite {bool(torch.isfinite(yb).all())}", flush=True)
    ng = min((v, c) for (g, c), v in per_cfg.items() if not g)
    gg = min((v, c) for (g, c), v in per_cfg.items() if g)
    print(f"== {shape} tp{tp}: shipped block {tot_old:.1f} us; f16 best single non-gated {ng} + gated {gg} = {ng[0] + gg[0]:.1f} us ({time.time() - t0:.0f} s)", flush=True)
    best_cfg[shape] = {"int8_f16": dict(zip(("BLOCK_N", "BLOCK_K", "num_warps"), ng[1])),
                       "int8_f16_gated": dict(zip(("BLOCK_N", "BLOCK_K", "num_warps"), gg[1]))}
json.dump(dict(rows=rows, best=best_cfg), open(out, "w"), indent=1)
for shape, c in best_cfg.items():
    json.dump(c, open(out.replace(".json", f"_cfg_{shape}.json"), "w"))
print(best_cfg)
