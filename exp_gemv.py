"""Session 8 experiment: which part of the fused norm/residual int8 GEMV is slow. A CUDA graph of 32 layers of
wqkv -> wo -> w13 (gated) -> w2, distinct int8 weights per layer, PDL launches as in the model; us per layer."""
import json, os, sys, torch, triton, triton.language as tl
sys.path.insert(0, "."); sys.path.insert(0, "scripts")
import kernels as K, quantize as Q
from gpu_check_quant import time_graph

@triton.jit
def gemv(x_ptr, w_ptr, s_ptr, g_ptr, r_ptr, y_ptr, N, K, eps, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
         GATED: tl.constexpr, NORM: tl.constexpr, RESIDUAL: tl.constexpr, PDL: tl.constexpr, X2D: tl.constexpr = False, PARTIAL: tl.constexpr = 0):
    # NORM 0 none; 1 scalar ss per chunk + g; 2 vector ss + g; 3 vector ss, no g; 4 ss from a 2nd pass over x before the loop, + g
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    cols = tl.arange(0, BLOCK_K)
    w_at = w_ptr + rows[:, None] * K + cols[None, :]
    u_at = w_at + N * K
    w = tl.load(w_at, mask=row_ok[:, None] & (cols[None, :] < K), other=0)
    u = w
    if GATED:
        u = tl.load(u_at, mask=row_ok[:, None] & (cols[None, :] < K), other=0)
    if PDL:
        tl.extra.cuda.gdc_wait()
    ACC_K: tl.constexpr = BLOCK_K // PARTIAL if PARTIAL else BLOCK_K  # PARTIAL: sum each thread's PARTIAL columns at once
    acc = tl.zeros((BLOCK_N, ACC_K), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_N, ACC_K), dtype=tl.float32)
    ss = 0.0
    ssv = tl.zeros((1, BLOCK_K), dtype=tl.float32)
    if NORM == 4:
        for k0 in range(0, K, BLOCK_K):
            xx = tl.load(x_ptr + k0 + cols[None, :], mask=(k0 + cols < K)[None, :], other=0.0).to(tl.float32)
            ssv += xx * xx
    for k0 in range(0, K, BLOCK_K):
        if X2D:  # x loaded straight into the columns' layout of the weight tile
            x = tl.load(x_ptr + k0 + cols[None, :], mask=(k0 + cols < K)[None, :], other=0.0).to(tl.float32)
            if NORM == 2 or NORM == 3:
                ssv += x * x
            if NORM == 2 or NORM == 4:
                x *= tl.load(g_ptr + k0 + cols[None, :], mask=(k0 + cols < K)[None, :], other=0.0).to(tl.float32)
        else:
            x1 = tl.load(x_ptr + k0 + cols, mask=k0 + cols < K, other=0.0).to(tl.float32)
            if NORM == 1:
                ss += tl.sum(x1 * x1)
            if NORM == 2 or NORM == 3:
                ssv += (x1 * x1)[None, :]
            if NORM == 1 or NORM == 2 or NORM == 4:
                x1 *= tl.load(g_ptr + k0 + cols, mask=k0 + cols < K, other=0.0).to(tl.float32)
            x = x1[None, :]
        next_ok = row_ok[:, None] & (k0 + BLOCK_K + cols[None, :] < K)
        w_next = tl.load(w_at + k0 + BLOCK_K, mask=next_ok, other=0)
        if PARTIAL:
            acc += tl.sum(tl.reshape(K_._int8_to_float(w) * x, (BLOCK_N, ACC_K, PARTIAL)), axis=2)
        else:
            acc += K_._int8_to_float(w) * x
        w = w_next
        if GATED:
            u_next = tl.load(u_at + k0 + BLOCK_K, mask=next_ok, other=0)
            if PARTIAL:
                acc_u += tl.sum(tl.reshape(K_._int8_to_float(u) * x, (BLOCK_N, ACC_K, PARTIAL)), axis=2)
            else:
                acc_u += K_._int8_to_float(u) * x
            u = u_next
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    y = tl.sum(acc, axis=1) * tl.load(s_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    if NORM != 1:
        ss = tl.sum(tl.sum(ssv, 1), 0)
    inv_rms = tl.rsqrt(ss / K + eps) if NORM != 0 else 1.0
    y *= inv_rms
    if GATED:
        up = tl.sum(acc_u, axis=1) * tl.load(s_ptr + N + rows, mask=row_ok, other=0.0).to(tl.float32) * inv_rms
        y = y / (1.0 + tl.exp(-y)) * up
    if RESIDUAL:
        y = y.to(y_ptr.dtype.element_ty).to(tl.float32) + tl.load(r_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)

K_ = K
def launch(x, w, s, g, r, gated, norm, res, cfg, x2d=False, part=0):
    N, Kd = w.shape[0] // (2 if gated else 1), w.shape[1]
    y = torch.empty(N, device=x.device, dtype=x.dtype)
    gemv[(triton.cdiv(N, cfg[0]),)](x, w, s, g, r, y, N, Kd, 1e-5, BLOCK_N=cfg[0], BLOCK_K=cfg[1], GATED=gated,
                                    NORM=norm, RESIDUAL=res, num_warps=cfg[2], PDL=True, launch_pdl=True, X2D=x2d, PARTIAL=part)
    return y

dev, bf16, L = "cuda", torch.bfloat16, 32
torch.manual_seed(0)
def q8(n, k):
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=dev)
    return q, (torch.rand(n, device=dev) * 0.01).to(bf16)
layers = [dict(wqkv=q8(12288, 4096), wo=q8(4096, 4096), w13=q8(22016, 4096), w2=q8(4096, 11008)) for _ in range(L)]
g1, g2 = (torch.rand(4096, device=dev) + 0.5).to(bf16), (torch.rand(4096, device=dev) + 0.5).to(bf16)
x0 = torch.randn(4096, device=dev, dtype=bf16)
att = torch.randn(4096, device=dev, dtype=bf16)

def step(norm, res, c=(4, 1024, 2), cg=(2, 512, 2), cn=None, x2d=False, part=0, partg=None):
    cn = cn or c
    partg = part if partg is None else partg
    def run():
        x = x0
        for l in layers:
            qkv = launch(x, *l["wqkv"], g1, x, False, norm, False, cn, x2d, part)
            h = launch(qkv[:4096], *l["wo"], g1, x, False, 0, res, c, x2d, part)  # attention left out
            a = launch(h, *l["w13"], g2, h, True, norm, False, cg, x2d, partg)
            x = launch(a, *l["w2"], g2, h, False, 0, res, c, x2d, part)
    return run

rows = []
variants = [("plain + res", 0, True, {}), ("partial 16", 0, True, dict(part=16)), ("partial 8", 0, True, dict(part=8)),
            ("partial 16, norm 2", 2, True, dict(part=16))]
for bn, bk, nw in [(8, 1024, 2), (4, 2048, 2), (8, 1024, 4), (8, 2048, 4), (16, 1024, 4), (4, 1024, 4), (2, 2048, 2)]:
    variants.append((f"partial 16, non-gated ({bn},{bk},{nw})", 0, True, dict(part=16, c=(bn, bk, nw))))
for bn, bk, nw in [(4, 512, 2), (2, 1024, 2), (4, 1024, 2), (4, 1024, 4), (8, 512, 4)]:
    variants.append((f"partial 16, gated ({bn},{bk},{nw})", 0, True, dict(part=16, cg=(bn, bk, nw))))
variants.append(("plain + res again", 0, True, {}))
for name, norm, res, kw in variants:
    t = time_graph(step(norm, res, **kw), reps=1) * 1e6 / L
    rows.append(dict(variant=name, us_per_layer=t)); print(f"{name:40s} {t:8.2f} us/layer", flush=True)
json.dump(rows, open(os.path.join(os.environ.get("OUT", "/tmp"), "exp_gemv.json"), "w"), indent=1)
