"""Experiment: the int8 w13 GEMV with the SwiGLU in its epilogue against GEMV + SwiGLU kernel, chained with w2."""
import json, os, sys
import torch
sys.path.insert(0, "scripts"); sys.path.insert(0, ".")
import kernels as K
from exp_persist import time_graph

dev, bf16, L, D, I = "cuda", torch.bfloat16, 32, 4096, 11008
g = torch.Generator(device=dev).manual_seed(0)
w13 = [torch.randint(-127, 128, (2 * I, D), device=dev, dtype=torch.int8, generator=g) for _ in range(L)]
s13 = [(torch.rand(2 * I, device=dev, generator=g) * 2e-4 + 1e-5).to(bf16) for _ in range(L)]
w2 = [torch.randint(-127, 128, (D, I), device=dev, dtype=torch.int8, generator=g) for _ in range(L)]
s2 = [(torch.rand(D, device=dev, generator=g) * 2e-4 + 1e-5).to(bf16) for _ in range(L)]
x0 = torch.randn(D, device=dev, dtype=bf16, generator=g)

def chain_a():
    x = x0
    for i in range(L):
        x = torch.ops.gptfast.int8_gemv(K.swiglu_op(torch.ops.gptfast.int8_gemv(x, w13[i], s13[i])), w2[i], s2[i])
    return x

def chain_b(cfg):
    def f():
        x = x0
        for i in range(L):
            x = torch.ops.gptfast.int8_gemv(K.int8_gemv_launch(x, w13[i], s13[i], gated=True, **cfg), w2[i], s2[i])
        return x
    return f

ref = torch.ops.gptfast.swiglu(torch.ops.gptfast.int8_gemv(x0, w13[0], s13[0]))
res = []
t = time_graph(chain_a)
print(f"w13 GEMV + SwiGLU kernel + w2 GEMV: {t / L * 1e6:.2f} us/layer")
res.append(dict(variant="separate", us=t / L * 1e6))
best = None
for bn, bk, nw in [(2, 1024, 2), (4, 1024, 2), (2, 512, 2), (4, 512, 2), (2, 1024, 4), (4, 1024, 4), (1, 1024, 2), (8, 512, 4), (2, 2048, 4)]:
    cfg = dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=nw)
    y = K.int8_gemv_launch(x0, w13[0], s13[0], gated=True, **cfg)
    err = ((y.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
    t = time_graph(chain_b(cfg))
    print(f"gated {cfg}: {t / L * 1e6:.2f} us/layer, err vs separate {err:.1e}")
    res.append(dict(variant="gated", **cfg, us=t / L * 1e6, err=err))
    if err < 1e-2 and (best is None or t < best[0]):
        best = (t, cfg)
out = os.environ.get("OUT", ".")
json.dump(res, open(os.path.join(out, "gated.json"), "w"), indent=1)
json.dump({"int8_gated": best[1]}, open(os.path.join(out, "gated_cfg.json"), "w"))
print("best", best)
