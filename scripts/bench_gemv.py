"""Matrix-vector products of one layer's shapes (Llama-2-7B unless --shape), one shape at a time, on the GPU:

python scripts/bench_gemv.py [--kinds bf16,skinny,skinny_int8,int8,int8_f16,int4,int4_f16,floor] [--shape llama-2-7b]
                             [--tp 1] [--rows 8] [--groups 32,64,128] [--budget_s 300] [--json FILE]
                             [--configs_out FILE]

For bf16 weights: cuBLAS (F.linear) and Inductor's kernel (F.linear compiled as compile_regions compiles
the model: coordinate descent tuning, programmatic dependent launch; also with the RMSNorm in front, as wqkv
and w13 run in the model), and for wo and w2 Inductor's with the residual added against kernels.py's GEMV
taking bf16 weights over a grid of launch shapes (the layers that run it, adding the residual); for --rows rows
of bf16 (skinny: batched decode) cuBLAS and kernels.py's skinny kernel over a grid of launch shapes (skinny_int8:
int8 weights, dequantize + cuBLAS against the same kernel taking int8 tiles and row scales); for int8 weights
kernels.py's float32 GEMV (int8) and its float16-pair GEMV (int8_f16; w13 with the SwiGLU: int8_f16_gated) over grids
of launch shapes; for int4 (groups of 32, 64, 128) PyTorch's tinygemm
(aten._weight_int4pack_mm) and kernels.py's int4 GEMV over a grid of launch shapes (int4_f16: its float16-pair
kernel, over a larger grid), and at 2048 rows (prefill)
tinygemm against the PyTorch path (dequantize, then cuBLAS); floor: the fastest of a few launch shapes of a kernel
that only reads as many bytes as each kind's product (bf16, int8, int4 at each group size), the time no GEMV of
those bytes can beat (BENCHMARKS.md runs 158-162). The shapes are one layer of --shape (one of
bench.py's) as one of --tp tensor-parallel ranks holds it. Each timing replays a CUDA graph of one product per
copy of the weights (copies enough to exceed the 50 MB L2), so the kernels' starts and ends overlap as in a
decode step. Prints the variants per shape, best first, and the launch shape of each kind that is best over the
products it runs together (bf16: wo and w2; int8_f16 and int4_f16 apart for weights of kernels.WIDE_ROWS rows or
more, the _wide kinds; int8_f16_gated: w13; the others: wqkv, wo, w13, w2); --configs_out writes those (for
GPTFAST_GEMV_CONFIGS).
"""
import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kernels as K  # noqa: E402
import quantize as Q  # noqa: E402
from gpu_check_quant import time_graph  # noqa: E402
from bench import SHAPES  # noqa: E402
from model import rms_norm  # noqa: E402


def layer_shapes(shape: str, tp: int) -> dict:
    """{product: (N, K)} of one layer of bench.py's --shape, as one of tp ranks holds it (tp.py's split: wqkv and
    w13 by rows, wo and w2 by columns); the output layer only without tensor parallelism."""
    c = SHAPES[shape]
    dim, H, ffn = c["hidden_size"], c["num_attention_heads"], c["intermediate_size"]
    D, KV = dim // H, max(c.get("num_key_value_heads", H) // tp, 1)
    s = {"wqkv": ((H // tp + 2 * KV) * D, dim), "wo": (dim, dim // tp), "w13": (2 * ffn // tp, dim),
         "w2": (dim, ffn // tp)}
    return s if tp > 1 else {**s, "output": (c["vocab_size"], dim)}


GRID8 = [dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=nw)
         for bn, bk, nw in itertools.product((1, 2, 4, 8), (512, 1024, 2048), (2, 4, 8)) if 1024 <= bn * bk <= 8192]
GRID16 = [dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=nw, num_stages=ns)
          for bn, bk, nw, ns in itertools.product((16, 32, 64), (64, 128, 256), (2, 4), (3, 4, 5)) if 2048 <= bn * bk <= 16384]
GRID16B = [dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=nw)  # the same GEMV taking bf16 weights (twice the bytes a tile)
           for bn, bk, nw in itertools.product((1, 2, 4, 8), (256, 512, 1024, 2048), (2, 4, 8))
           if 1024 <= bn * bk <= 8192 and bk >= 32 * nw * 4]
GRID8F = [dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=nw)  # the float16-pair GEMV: at most 32 words of a tile a thread
          for bn, bk, nw in itertools.product((1, 2, 4, 8), (512, 1024, 2048), (1, 2, 4))
          if bk >= 128 * nw and 1024 <= bn * bk <= 16384 and bn * bk <= 128 * 32 * nw]
GRID4 = [dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=nw)  # the kernel wants BLOCK_K >= 1024 * num_warps (4 words a thread)
         for bn, bk, nw in ((2, 2048, 2), (4, 1024, 1), (4, 2048, 2), (4, 4096, 4), (8, 1024, 1), (8, 2048, 2),
                            (8, 4096, 4), (16, 1024, 1), (16, 2048, 2))]


@triton.jit
def _read_kernel(w_ptr, y_ptr, NW, CHUNK: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    # XOR of the CHUNK int32 words of this program's contiguous chunk (the next tile loaded before the current one
    # is used, the first before the PDL wait, as the GEMVs do): reads the bytes and computes nothing else.
    base = tl.program_id(0).to(tl.int64) * CHUNK
    offs = tl.arange(0, BLOCK)
    w = tl.load(w_ptr + base + offs, mask=base + offs < NW, other=0)
    if PDL:
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros((BLOCK,), dtype=tl.int32)
    for i in range(0, CHUNK, BLOCK):
        at = base + i + BLOCK + offs
        nxt = tl.load(w_ptr + at, mask=(i + BLOCK + offs < CHUNK) & (at < NW), other=0)
        acc ^= w
        w = nxt
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    tl.store(y_ptr + tl.program_id(0), tl.xor_sum(acc, axis=0))


def read_launch(w32: torch.Tensor, CHUNK: int, BLOCK: int, num_warps: int) -> torch.Tensor:
    """The XOR of each CHUNK words of w32 (int32): a read of its bytes, nothing else (kind floor)."""
    y = torch.empty(triton.cdiv(w32.numel(), CHUNK), device=w32.device, dtype=torch.int32)
    _read_kernel[(y.numel(),)](w32, y, w32.numel(), CHUNK=CHUNK, BLOCK=BLOCK, num_warps=num_warps, **K._pdl(w32))
    return y


GRID_READ = [(c, b, nw) for c in (2**12, 2**13, 2**14, 2**15) for b in (512, 1024, 2048) for nw in (2, 4)
             if b <= c and b >= 128 * nw]
GRID4F = [dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=nw)  # int4_f16 also: more rows sharing x's conversion
          for bn, bk, nw in ((16, 4096, 8), (16, 2048, 4), (8, 8192, 8), (32, 2048, 8))]
BLOCK = ("wqkv", "wo", "w13", "w2")
# The products whose launch shape a kind sets in the model (bf16: kernels.linear's gemv layers); the others: uses().
USES = {"bf16": ("wo", "w2")}


def uses(kind: str) -> tuple:
    """The products whose launch shape the kind sets in the model: USES, the _wide kinds also the (quantized) output
    layer, the others BLOCK."""
    return USES.get(kind, BLOCK + ("output",) if "_wide" in kind else BLOCK)


def label(cfg: dict) -> str:
    return "triton " + ",".join(f"{k}={v}" for k, v in cfg.items())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kinds", default="bf16,int8_f16,int4", help="comma-separated: bf16, skinny, skinny_int8, int8, "
                   "int8_f16, int4, int4_f16, floor")
    p.add_argument("--shape", default="llama-2-7b", choices=[k for k in SHAPES if k != "tiny"])
    p.add_argument("--tp", type=int, default=1, help="the shapes one of this many tensor-parallel ranks holds")
    p.add_argument("--rows", type=int, default=8, help="activation rows for kind skinny (batched decode)")
    p.add_argument("--budget_s", type=float, default=300, help="stop each kind's launch-shape sweep after this long")
    p.add_argument("--groups", default="32,64,128", help="int4 group sizes for kinds int4, int4_f16 and floor")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--configs_out", type=Path, default=None, help="write the best launch shapes (int4_f16 and "
                   "int4_f16_wide from the g128 sweep, int4_f16_g32 from g32's: run both groups for all three)")
    a = p.parse_args()
    kinds = a.kinds.split(",")
    groups = [int(G) for G in a.groups.split(",")]
    if not set(groups) <= {32, 64, 128}:
        p.error(f"--groups {a.groups}: choose from 32, 64, 128")
    if not set(kinds) <= {"bf16", "skinny", "skinny_int8", "int8", "int8_f16", "int4", "int4_f16", "floor"}:
        p.error(f"--kinds {a.kinds}: choose from bf16, skinny, skinny_int8, int8, int8_f16, int4, int4_f16, floor")
    dev, bf16 = "cuda", torch.bfloat16
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {K.triton.__version__}, {a.shape}"
          f"{f', one of {a.tp} tensor-parallel ranks' if a.tp > 1 else ''}", flush=True)
    torch._dynamo.config.cache_size_limit = 64
    opts = {"coordinate_descent_tuning": True, "triton.enable_pdl": K.USE_PDL}
    inductor = torch.compile(lambda x, w: F.linear(x, w), fullgraph=True, dynamic=False, options=opts)
    inductor_add = torch.compile(lambda x, w, r: F.linear(x, w) + r, fullgraph=True, dynamic=False, options=opts)
    inductor_norm = torch.compile(lambda x, g, w: F.linear(rms_norm(x, g, 1e-5), w), fullgraph=True, dynamic=False,
                                  options=opts)
    gen = torch.Generator(device=dev).manual_seed(0)
    rows, t_kind = [], {}

    def add(shape, kind, variant, fn, nbytes, out, reference, copies):
        err = ((out.float().reshape(-1) - reference.reshape(-1)).abs().max() / reference.abs().max()).item()
        sec = time_graph(fn) / copies  # fn runs one product per copy of the weights
        rows.append(dict(shape=shape, kind=kind, variant=variant, us=sec * 1e6, gb_s=nbytes / sec / 1e9, rel_err=err))

    def in_budget(kind) -> bool:
        t_kind.setdefault(kind, time.perf_counter())
        if time.perf_counter() - t_kind[kind] > a.budget_s:
            print(f"{kind} sweep stopped: --budget_s reached", flush=True)
            return False
        return True

    for name, (n, k) in layer_shapes(a.shape, a.tp).items():
        x = torch.randn(1, k, device=dev, dtype=bf16, generator=gen)
        xv = x.view(-1)  # what the Triton GEMVs take
        g = torch.rand(k, device=dev, dtype=bf16, generator=gen) + 0.5
        copies = max(2, math.ceil(256e6 / (n * k * 2)))
        ws = [torch.randn(n, k, device=dev, dtype=bf16, generator=gen) * 0.02 for _ in range(copies)]
        ref = x.float() @ ws[0].float().t()
        nb16 = n * k * 2
        if "bf16" in kinds:
            add(name, "bf16", "cuBLAS", lambda: [F.linear(x, w) for w in ws], nb16, F.linear(x, ws[0]), ref, copies)
            add(name, "bf16", "inductor", lambda: [inductor(x, w) for w in ws], nb16, inductor(x, ws[0]), ref, copies)
            add(name, "bf16", "inductor with RMSNorm", lambda: [inductor_norm(x, g, w) for w in ws], nb16,
                inductor_norm(x, g, ws[0]), rms_norm(x.float(), g.float(), 1e-5) @ ws[0].float().t(), copies)
        if "bf16" in kinds and name in USES["bf16"]:  # the layers that run the GEMV, which adds their residual
            res = torch.randn(n, device=dev, dtype=bf16, generator=gen)
            refr = ref + res.float()
            add(name, "bf16", "inductor + residual", lambda: [inductor_add(x, w, res) for w in ws], nb16,
                inductor_add(x, ws[0], res), refr, copies)
            for cfg in GRID16B:
                if in_budget("bf16"):
                    add(name, "bf16", label(cfg), lambda: [K.gemv_launch(xv, w, None, **cfg, residual=res) for w in ws],
                        nb16, K.gemv_launch(xv, ws[0], None, **cfg, residual=res), refr, copies)
        if "skinny" in kinds:  # a.rows rows of one token (batched decode): cuBLAS against the skinny kernel
            xm = torch.randn(a.rows, 1, k, device=dev, dtype=bf16, generator=gen)
            refm = xm.view(a.rows, k).float() @ ws[0].float().t()
            add(name, "skinny", "cuBLAS", lambda: [F.linear(xm, w) for w in ws], nb16, F.linear(xm, ws[0]), refm, copies)
            for cfg in GRID16:
                if in_budget("skinny"):
                    add(name, "skinny", label(cfg), lambda: [K.skinny_mm_launch(xm.view(a.rows, k), w, **cfg) for w in ws],
                        nb16, K.skinny_mm_launch(xm.view(a.rows, k), ws[0], **cfg), refm, copies)
        int8_kinds = {"int8", "int8_f16", "skinny_int8"} & set(kinds)
        q8 = [(q, s.to(bf16)) for q, s in map(Q.quantize_int8, ws)] if int8_kinds else []
        if "skinny_int8" in kinds:  # a.rows rows of int8 layers: what int8_linear did before, then the kernel
            xm = torch.randn(a.rows, k, device=dev, dtype=bf16, generator=gen)
            refm = (xm.float() @ q8[0][0].float().t()) * q8[0][1].float()
            deq = lambda q, s: F.linear(xm, q.to(bf16) * s[:, None])  # noqa: E731
            add(name, "skinny_int8", "dequantize + cuBLAS", lambda: [deq(q, s) for q, s in q8], n * k + n * 2,
                deq(*q8[0]), refm, copies)
            for cfg in GRID16:
                if in_budget("skinny_int8"):
                    add(name, "skinny_int8", label(cfg),
                        lambda: [K.skinny_mm_launch(xm, q, **cfg, scales=s) for q, s in q8], n * k + n * 2,
                        K.skinny_mm_launch(xm, q8[0][0], **cfg, scales=q8[0][1]), refm, copies)
        if "int8" in kinds:
            ref8 = (x.float() @ q8[0][0].float().t()) * q8[0][1].float()
            for cfg in GRID8:
                if in_budget("int8"):
                    add(name, "int8", label(cfg), lambda: [K.gemv_launch(xv, q, s, **cfg) for q, s in q8],
                        n * k + n * 2, K.gemv_launch(xv, *q8[0], **cfg), ref8, copies)
        if "int8_f16" in kinds:  # the output layer too: it has WIDE_ROWS rows or more at every shape
            gated = name == "w13"  # as the model runs it: with the SwiGLU
            ref8 = (x.float() @ q8[0][0].float().t()) * q8[0][1].float()
            ref8 = F.silu(ref8[:, :n // 2]) * ref8[:, n // 2:] if gated else ref8
            kind = "int8_f16_gated" if gated else "int8_f16_wide" if n >= K.WIDE_ROWS else "int8_f16"
            for cfg in GRID8F:
                if gated and 2 * cfg["BLOCK_N"] * cfg["BLOCK_K"] > 128 * 32 * cfg["num_warps"]:
                    continue  # gate and up tiles: registers spill
                if in_budget(kind):
                    add(name, kind, label(cfg), lambda: [K.int8_f16_gemv_launch(xv, q, s, **cfg, gated=gated)
                                                         for q, s in q8],
                        n * k + n * 2, K.int8_f16_gemv_launch(xv, *q8[0], **cfg, gated=gated), ref8, copies)
        del q8
        for i4, f16 in (("int4", False), ("int4_f16", True)):  # int4_f16: _int4_f16_gemv_kernel
            if i4 not in kinds or (name == "output" and not f16):
                continue
            for G in groups:  # int4_f16 products of K.WIDE_ROWS rows or more run launch shape int4_f16_wide
                kind = f"{i4}{'_wide' if f16 and n >= K.WIDE_ROWS else ''} g{G}"
                c4 = copies * 3  # 3.5x fewer bytes than bf16 a copy
                q4 = [Q.quantize_int4(ws[i % copies], G) for i in range(c4)]  # equal copies, separate memory
                nb4 = n * k // 2 + 2 * n * (k // G) * 2
                ref4 = x.float() @ K.dequantize_int4(*q4[0], G).t()
                if not f16:
                    try:
                        tg = [K.tinygemm_pack(*q, G) for q in q4]
                        add(name, kind, "tinygemm", lambda: [K.tinygemm_linear(x, *t, G) for t in tg], nb4,
                            K.tinygemm_linear(x, *tg[0], G), ref4, c4)
                        del tg
                    except RuntimeError as e:
                        print(f"tinygemm failed: {str(e)[:200]}", flush=True)
                for cfg in GRID4 + (GRID4F if f16 else []):
                    if in_budget(kind):
                        add(name, kind, label(cfg), lambda: [K.int4_gemv_launch(xv, *q, G, **cfg, f16=f16) for q in q4],
                            nb4, K.int4_gemv_launch(xv, *q4[0], G, **cfg, f16=f16), ref4, c4)
                if G == 32 and name in ("wo", "w13") and not f16:  # prefill: 2048 rows
                    xp = torch.randn(2048, k, device=dev, dtype=bf16, generator=gen)
                    refp = xp.float() @ K.dequantize_int4(*q4[0], G).t()
                    tg = K.tinygemm_pack(*q4[0], G)
                    add(name, "int4 g32 prefill", "tinygemm", lambda: K.tinygemm_linear(xp, *tg, G), nb4,
                        K.tinygemm_linear(xp, *tg, G), refp, 1)
                    add(name, "int4 g32 prefill", "PyTorch path (dequantize, cuBLAS)",
                        lambda: K.int4_linear(xp, *q4[0], G), nb4, K.int4_linear(xp, *q4[0], G), refp, 1)
                del q4
        if "floor" in kinds and name != "output":  # as many bytes as each kind's product reads, read and nothing else
            for what, nb in (("bf16", nb16), ("int8", n * k + 2 * n),
                             *((f"int4 g{G}", n * k // 2 + 4 * n * (k // G)) for G in groups)):
                bufs = [torch.empty(-(-nb // 16) * 4, device=dev, dtype=torch.int32) for _ in range(
                    max(2, math.ceil(256e6 / nb)))]
                for c, b, nw in GRID_READ:
                    sec = time_graph(lambda: [read_launch(w, c, b, nw) for w in bufs]) / len(bufs)
                    rows.append(dict(shape=name, kind=f"floor {what}", variant=f"read chunk={c},block={b},warps={nw}",
                                     us=sec * 1e6, gb_s=nb / sec / 1e9, rel_err=0.0))
                del bufs
        for kind in sorted({r["kind"] for r in rows if r["shape"] == name}):
            mine = sorted((r for r in rows if r["shape"] == name and r["kind"] == kind), key=lambda r: r["us"])
            print(f"\n{name} ({n}x{k}) {kind}: " + "; ".join(
                f"{r['variant']} {r['us']:.1f} us {r['gb_s']:.0f} GB/s" for r in mine[:4]), flush=True)
            for r in mine:
                if not r["variant"].startswith("triton") or r is mine[0]:
                    print(f"   {r['variant']}: {r['us']:.1f} us {r['gb_s']:.0f} GB/s err {r['rel_err']:.1e}", flush=True)
            bad = [r for r in mine if r["rel_err"] > 2e-2]
            if bad:
                print(f"   ERROR: {len(bad)} variants off by > 2e-2, e.g. {bad[0]}", flush=True)
        del ws
        torch.cuda.empty_cache()
    floors = sorted({r["kind"] for r in rows if r["kind"].startswith("floor ")})
    if floors:
        print("\nfloor: the fastest read of each product's bytes, sum over " + ", ".join(BLOCK) + ":",
              "; ".join(f"{f[6:]} {sum(min(r['us'] for r in rows if r['kind'] == f and r['shape'] == sh) for sh in BLOCK):.1f} us"
                        for f in floors), flush=True)
    print(f"\nbest launch shapes over the products each kind runs in the model (bf16: wo and w2; int8_f16_gated: w13; "
          f"int8_f16_wide, int4_f16_wide: the others of {K.WIDE_ROWS} rows or more; int8_f16, int4_f16: the rest; "
          "int4 by group size: wqkv, wo, w13, w2), sum of us:")
    best = {}
    for kind in sorted({r["kind"] for r in rows if r["kind"] != "int4 g32 prefill" and not r["kind"].startswith("floor")}):
        ranked, shapes = best_configs(rows, kind, 5)
        print(f"{kind} ({shapes} shapes):", "; ".join(f"{label(cfg)}: {t:.1f} us" for t, cfg in ranked), flush=True)
        for base in ("tinygemm", "cuBLAS", "dequantize + cuBLAS", "inductor + residual"):
            ref = [r for r in rows
                   if r["kind"] == kind and r["variant"] == base and r["shape"] in uses(kind)]
            if ref:
                print(f"   {base}: {sum(r['us'] for r in ref):.1f} us over {len(ref)} shapes", flush=True)
        key = config_key(kind)
        if ranked and key is not None:
            best[key] = ranked[0][1]
    if a.configs_out and best:
        a.configs_out.write_text(json.dumps({str(k): v for k, v in best.items()}, indent=1))
    if a.json:
        a.json.write_text(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows),
                                     indent=1))


# The CONFIGS keys of the float16-pair int4 kernel's sweep kinds (kernels.int4_launch_args); its other kinds set none.
INT4_F16_KEYS = {"int4_f16 g128": "int4_f16", "int4_f16_wide g128": "int4_f16_wide", "int4_f16 g32": "int4_f16_g32"}


def config_key(kind: str):
    """The CONFIGS key that a sweep kind's best launch shape sets ("int4 g32" -> 32), or None."""
    if kind.startswith("int4_f16"):
        return INT4_F16_KEYS.get(kind)
    return int(kind.split(" g")[1]) if kind.startswith("int4") else kind


def best_configs(rows, kind, n):
    """[(total us, launch shape)] for the n shapes with the smallest total over the layer shapes the kind runs
    (uses) that every one of them ran (all unless --budget_s stopped the sweep), and that number of layer shapes."""
    totals = {}
    for r in rows:
        if r["kind"] == kind and r["variant"].startswith("triton") and r["shape"] in uses(kind):
            totals.setdefault(r["variant"], []).append(r["us"])
    most = max((len(v) for v in totals.values()), default=0)
    ranked = sorted((sum(v), cfg) for cfg, v in totals.items() if len(v) == most)[:n]
    # "triton A=1,B=2" -> dict(A=1, B=2)
    return [(t, {k: int(v) for k, v in (kv.split("=") for kv in cfg[len("triton "):].split(","))})
            for t, cfg in ranked], most


if __name__ == "__main__":
    main()
