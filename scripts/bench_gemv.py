"""Batch-1 matrix-vector products of the Llama-2-7B layer shapes, one shape at a time, on the GPU:

python scripts/bench_gemv.py [--budget_s 300] [--json FILE]

For bf16 weights: cuBLAS (F.linear) and Inductor's kernel (F.linear compiled as compile_regions compiles
the model: coordinate descent tuning, programmatic dependent launch; also with the RMSNorm in front, as wqkv
and w13 run in the model); for int8 weights kernels.py's Triton GEMV over a grid of launch shapes. Each
timing replays a CUDA graph of one product per copy of the weights (copies enough to exceed the 50 MB L2),
so the kernels' starts and ends overlap as in a decode step. Prints the variants per shape, best first,
and the launch shape that is best over the four products of a block together.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kernels as K  # noqa: E402
import quantize as Q  # noqa: E402
from gpu_check_quant import time_graph  # noqa: E402
from model import rms_norm  # noqa: E402

SHAPES = {"wqkv": (12288, 4096), "wo": (4096, 4096), "w13": (22016, 4096), "w2": (4096, 11008),
          "output": (32000, 4096)}  # (N, K)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--budget_s", type=float, default=300, help="stop the launch-shape sweep after this long")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    t0 = time.perf_counter()
    dev, bf16 = "cuda", torch.bfloat16
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {K.triton.__version__}", flush=True)
    torch._dynamo.config.cache_size_limit = 64
    opts = {"coordinate_descent_tuning": True, "triton.enable_pdl": K.USE_PDL}
    inductor = torch.compile(lambda x, w: F.linear(x, w), fullgraph=True, dynamic=False, options=opts)
    inductor_norm = torch.compile(lambda x, g, w: F.linear(rms_norm(x, g, 1e-5), w), fullgraph=True, dynamic=False,
                                  options=opts)
    gen = torch.Generator(device=dev).manual_seed(0)
    grid = [dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=nw)
            for bn, bk, nw in itertools.product((1, 2, 4, 8), (512, 1024, 2048), (2, 4, 8)) if 1024 <= bn * bk <= 8192]
    rows = []
    for name, (n, k) in SHAPES.items():
        x = torch.randn(1, k, device=dev, dtype=bf16, generator=gen)
        g = torch.rand(k, device=dev, dtype=bf16, generator=gen) + 0.5
        copies = max(2, math.ceil(256e6 / (n * k * 2)))
        ws = [torch.randn(n, k, device=dev, dtype=bf16, generator=gen) * 0.02 for _ in range(copies)]
        q8 = [Q.quantize_int8(w) for w in ws]
        q8 = [(q, s.to(bf16)) for q, s in q8]
        ref = x.float() @ ws[0].float().t()
        ref8 = (x.float() @ q8[0][0].float().t()) * q8[0][1].float()

        def add(kind, variant, fn, nbytes, out, reference):
            err = ((out.float().view(-1) - reference.view(-1)).abs().max() / reference.abs().max()).item()
            sec = time_graph(fn) / copies  # fn runs one product per copy of the weights
            r = dict(shape=name, kind=kind, variant=variant, us=sec * 1e6, gb_s=nbytes / sec / 1e9, rel_err=err)
            rows.append(r)
            return r

        nb16, nb8 = n * k * 2, n * k + n * 2
        add("bf16", "cuBLAS", lambda: [F.linear(x, w) for w in ws], nb16, F.linear(x, ws[0]), ref)
        add("bf16", "inductor", lambda: [inductor(x, w) for w in ws], nb16, inductor(x, ws[0]), ref)
        add("bf16", "inductor with RMSNorm", lambda: [inductor_norm(x, g, w) for w in ws], nb16,
            inductor_norm(x, g, ws[0]), rms_norm(x.float(), g.float(), 1e-5) @ ws[0].float().t())
        xv = x.view(-1)
        for cfg in grid:
            if time.perf_counter() - t0 > a.budget_s:
                print("sweep stopped: --budget_s reached", flush=True)
                break
            label = "triton " + ",".join(str(v) for v in cfg.values())
            add("int8", label, lambda: [K.int8_gemv_launch(xv, q, s, **cfg) for q, s in q8], nb8,
                K.int8_gemv_launch(xv, *q8[0], **cfg), ref8)
        for kind in ("bf16", "int8"):
            mine = sorted((r for r in rows if r["shape"] == name and r["kind"] == kind), key=lambda r: r["us"])
            print(f"\n{name} ({n}x{k}) {kind}, {copies} copies: " + "; ".join(
                f"{r['variant']} {r['us']:.1f} us {r['gb_s']:.0f} GB/s" for r in mine[:6]), flush=True)
            for r in mine:
                if not r["variant"].startswith("triton"):
                    print(f"   {r['variant']}: {r['us']:.1f} us {r['gb_s']:.0f} GB/s err {r['rel_err']:.1e}", flush=True)
            bad = [r for r in mine if r["rel_err"] > 2e-2]
            if bad:
                print(f"   ERROR: {len(bad)} variants off by > 2e-2, e.g. {bad[0]}", flush=True)
        del ws, q8
        torch.cuda.empty_cache()
    print("\nbest launch shape over wqkv, wo, w13, w2 together (sum of us):")
    for kind in ("int8",):
        totals = {}
        for r in rows:
            if r["kind"] == kind and r["variant"].startswith("triton") and r["shape"] != "output":
                totals.setdefault(r["variant"], []).append(r["us"])
        best = sorted((sum(v), cfg) for cfg, v in totals.items() if len(v) == 4)[:5]
        print(kind, "; ".join(f"{cfg}: {t:.1f} us" for t, cfg in best), flush=True)
    if a.json:
        a.json.write_text(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows),
                                     indent=1))


if __name__ == "__main__":
    main()
