"""GPU check of the quantized GEMVs (kernels.py) and of quantize.py's speed; run on the device:

python scripts/gpu_check_quant.py [--json FILE]

1. Correctness: each Triton GEMV (int8: the float16-pair one, also with activations that overflow its float16 sums,
   and the float32 one, also on bf16 weights, as wo and w2 of bf16 models run it; int4: both kernels at groups of 32, 64
   and 128, at 32 and 128 also with 5 rows, the residual and the SwiGLU, and x = 3e4, the float16-pair kernel's
   float32 fallback), the
   compiled PyTorch one-row paths and tinygemm (the layout pack_for_device loads int4 layers into on CUDA with
   GPTFAST_INT4=tinygemm) against the PyTorch path (dequantize in float32, then matmul) on the Llama-2-7B layer
   shapes with bf16 activations, and a small int4 model's logits before and after pack_for_device; exit status 1
   above a relative error of 1e-2 (2e-2 for the model).
2. Speed: the four GEMVs of one block (wqkv, wo, w13, w2) over 4 different copies of the weights
   (400+ MB, beyond the 50 MB L2), replayed in a CUDA graph: us per block and GB/s of weight bytes,
   for bf16 (cuBLAS), tinygemm int4 (aten._weight_int4pack_mm, the baseline) and the Triton kernels at
   kernels.py's launch shapes (scripts/bench_gemv.py sweeps the launch shapes).
3. quantize_model time for the whole 7B shape (int8, int4 g32), GPTQ time of one block (x 32 = estimate).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kernels as K  # noqa: E402
import quantize as Q  # noqa: E402

SHAPES = {"wqkv": (12288, 4096), "wo": (4096, 4096), "w13": (22016, 4096), "w2": (4096, 11008)}  # (N, K)
COPIES = 4


def time_graph(fn, reps: int = 5) -> float:
    """Seconds per call of fn, from a CUDA graph of `reps` calls (no launch overhead), median of 5 replays."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()  # warm-up (and Triton compilation) outside the graph
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    times = []
    for _ in range(6):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000 / reps)
    return statistics.median(times[1:])


def nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def tinygemm_fn(packed, scales, zeros, G):
    """The same int4 weights in tinygemm's layout (kernels.tinygemm_pack, what pack_for_device loads);
    returns x (1, K) -> (1, N)."""
    wp, sz = K.tinygemm_pack(packed, scales, zeros, G)
    return lambda x: K.tinygemm_linear(x, wp, sz, G)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    dev, bf16 = "cuda", torch.bfloat16
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {K.triton.__version__}", flush=True)
    gen = torch.Generator(device=dev).manual_seed(0)
    xs = {name: torch.randn(1, k, device=dev, dtype=bf16, generator=gen) for name, (n, k) in SHAPES.items()}
    # weights[name][copy] = bf16 (N, K); quantized versions built from them
    weights = {name: [torch.randn(n, k, device=dev, dtype=bf16, generator=gen) * 0.02 for _ in range(COPIES)]
               for name, (n, k) in SHAPES.items()}
    ok, rows = True, []
    # The PyTorch one-row paths compiled by inductor (what runs under --compile with GPTFAST_NO_TRITON=1).
    torch._dynamo.config.cache_size_limit = 64
    opts = {"coordinate_descent_tuning": True}
    int8_inductor = torch.compile(K.int8_row, fullgraph=True, dynamic=False, options=opts)
    int4_inductor = torch.compile(K.int4_row, fullgraph=True, dynamic=False, options=opts)

    # ---- correctness (launch shape of kernels.py) ------------------------------------------------
    for name, (n, k) in SHAPES.items():
        w, x = weights[name][0], xs[name]
        q, s = Q.quantize_int8(w)
        s = s.to(bf16)
        ref = (x.float() @ q.float().t()) * s.float()
        err = ((torch.ops.gptfast.gemv(x, q, s).float() - ref).abs().max() / ref.abs().max()).item()
        ok &= err < 1e-2
        err_i = ((int8_inductor(x, q, s).float() - ref).abs().max() / ref.abs().max()).item()
        x5 = torch.randn(5, k, device=dev, dtype=bf16, generator=gen)  # 5 rows: the skinny kernel
        ref5 = (x5.float() @ q.float().t()) * s.float()
        err5 = ((torch.ops.gptfast.skinny_mm(x5, q, s).float() - ref5).abs().max() / ref5.abs().max()).item()
        # the float32 GEMV, which takes int8 products the float16-pair one does not (float16 activations,
        # GPTFAST_INT8_F32=1)
        y32 = K.gemv_launch(x.view(-1), q, s, **K.CONFIGS["int8"]).float()
        err32 = ((y32 - ref).abs().max() / ref.abs().max()).item()
        ok &= err_i < 1e-2 and err5 < 1e-2 and err32 < 1e-2
        print(f"check int8 {name} ({n}x{k}): max rel err {err:.2e} (float16 pairs: {K.f16_fits(x.view(-1), q)}), "
              f"float32 GEMV {err32:.2e}, inductor {err_i:.2e}, 5 rows {err5:.2e}", flush=True)
        # activations the float16 sums overflow on (any product of a weight >= 35 with x = 3e4 exceeds 65504, and
        # every row has such weights): each program sums its rows again in float32
        xo, qo = torch.full_like(x, 3e4), q.abs().clamp_min(1)
        refo = (xo.float() @ qo.float().t()) * s.float()
        y_o = torch.ops.gptfast.gemv(xo, qo, s).float()
        err_o = ((y_o - refo).abs().max() / refo.abs().max()).item()
        ok &= err_o < 1e-2
        print(f"check int8 {name}, x = 3e4: max rel err {err_o:.2e} (float16 sums overflow; float32 again)", flush=True)
        for small in (1e-3, 1e-4):  # small activations: float16 is normal down to 2^-14 only (bfloat16: 2^-126)
            y_s = torch.ops.gptfast.gemv(x * small, q, s).float()
            err_s = ((y_s - ref * small).abs().max() / (ref * small).abs().max()).item()
            ok &= err_s < 1e-2
            print(f"check int8 {name}, x * {small:g}: max rel err {err_s:.2e}", flush=True)
        # the residual add after the product, in the GEMV (kernels.int8_linear)
        r = torch.randn(1, n, device=dev, dtype=bf16, generator=gen)
        y_r = torch.ops.gptfast.gemv(x, q, s, False, r).float()
        err_r = ((y_r - r.float() - ref).abs().max() / ref.abs().max()).item()
        ok &= err_r < 1e-2
        print(f"check int8 {name} with the residual: max rel err {err_r:.2e}", flush=True)
        # the same GEMV on the bf16 weights, as kernels.linear runs a bf16 model's wo and w2 (gemv=True), with the
        # residual (tensor-parallel rank 0, one GPU) and without (the other ranks)
        ref16 = x.float() @ w.float().t()
        y16 = K.linear(x, w, None, r, gemv=True).float() - r.float()
        err16 = ((y16 - ref16).abs().max() / ref16.abs().max()).item()
        err16n = ((K.linear(x, w, gemv=True).float() - ref16).abs().max() / ref16.abs().max()).item()
        ok &= err16 < 1e-2 and err16n < 1e-2
        print(f"check bf16 {name} (kernels.linear, gemv=True): max rel err {err16n:.2e}, with the residual {err16:.2e}",
              flush=True)
        if name == "w13":  # gate and up: the SwiGLU in the GEMV (kernels.int8_swiglu)
            gate, up = ref.chunk(2, dim=-1)
            ref_g = F.silu(gate) * up
            y_g = torch.ops.gptfast.gemv(x, q, s, True).float()
            err_g = ((y_g - ref_g).abs().max() / ref_g.abs().max()).item()
            y_g32 = K.gemv_launch(x.view(-1), q, s, gated=True, **K.CONFIGS["int8_gated"]).float()
            err_g32 = ((y_g32 - ref_g).abs().max() / ref_g.abs().max()).item()
            gate, up = refo.chunk(2, dim=-1)
            y_go = torch.ops.gptfast.gemv(xo, qo, s, True).float()
            err_go = ((y_go - F.silu(gate) * up).abs().max() / (F.silu(gate) * up).abs().max()).item()
            ok &= err_g < 1e-2 and err_go < 1e-2 and err_g32 < 1e-2
            print(f"check int8 w13 with the SwiGLU: max rel err {err_g:.2e}, x = 3e4: {err_go:.2e}, "
                  f"float32 GEMV {err_g32:.2e}", flush=True)
        for G in (32, 64, 128):
            pk, s4, z4 = Q.quantize_int4(w, G)
            ref = x.float() @ K.dequantize_int4(pk, s4, z4, G).t()
            args = K.int4_launch_args(x, G, pk.shape[0])  # the float16-pair kernel (f16=True) on sm_80 and later
            y = K.int4_gemv_launch(x.view(-1), pk, s4, z4, G, **args)  # not the op: it falls back on errors
            err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
            y32 = K.int4_gemv_launch(x.view(-1), pk, s4, z4, G, **K.CONFIGS[G])  # the float32-word kernel
            err32 = ((y32.float() - ref).abs().max() / ref.abs().max()).item()
            err_i = ((int4_inductor(x, pk, s4, z4, G).float() - ref).abs().max() / ref.abs().max()).item()
            ok &= err < 1e-2 and err32 < 1e-2 and err_i < 1e-2
            try:
                tg = ((tinygemm_fn(pk, s4, z4, G)(x).float() - ref).abs().max() / ref.abs().max()).item()
            except Exception as e:  # the private op's signature changes between releases
                tg = f"failed ({type(e).__name__}: {str(e)[:80]})"
            ok &= isinstance(tg, float) and tg < 1e-2
            print(f"check int4 g{G} {name}: max rel err {err:.2e} ({args}), float32-word kernel {err32:.2e}, "
                  f"inductor {err_i:.2e} (tinygemm vs same reference: {tg})", flush=True)
            if G not in (32, 128):
                continue
            # 5 rows (a grid row each), the residual add and (w13) the SwiGLU in the GEMV, as for int8, in both kernels
            # (the float16-pair one at the model's launch shape, the other at CONFIGS[G])
            ref5 = x5.float() @ K.dequantize_int4(pk, s4, z4, G).t()
            for kernel, kargs in (("float16 pairs", args), ("float32 words", K.CONFIGS[G])):
                y5 = K.int4_gemv_launch(x5, pk, s4, z4, G, **kargs).float()
                err5 = ((y5 - ref5).abs().max() / ref5.abs().max()).item()
                y_r = K.int4_gemv_launch(x.view(-1), pk, s4, z4, G, **kargs, residual=r.view(-1)).float()
                err_r = ((y_r - r.float() - ref).abs().max() / ref.abs().max()).item()
                ok &= err5 < 1e-2 and err_r < 1e-2
                line = f"check int4 g{G} {name} ({kernel}): 5 rows max rel err {err5:.2e}, with the residual {err_r:.2e}"
                if name == "w13":
                    gate, up = ref.chunk(2, dim=-1)
                    ref_g = F.silu(gate) * up
                    y_g = K.int4_gemv_launch(x.view(-1), pk, s4, z4, G, **kargs, gated=True).float()
                    err_g = ((y_g - ref_g).abs().max() / ref_g.abs().max()).item()
                    ok &= err_g < 1e-2
                    line += f", with the SwiGLU {err_g:.2e}"
                print(line, flush=True)
            xo = x * 3e4  # the float16-pair kernel's group sums overflow: each program sums again in float32
            y_o = K.int4_gemv_launch(xo.view(-1), pk, s4, z4, G, **args).float()
            err_o = ((y_o - 3e4 * ref).abs().max() / (3e4 * ref).abs().max()).item()
            ok &= err_o < 1e-2
            print(f"check int4 g{G} {name}, x = 3e4: max rel err {err_o:.2e}", flush=True)

    # ---- a quantized model repacked for tinygemm (pack_for_device) keeps its logits ---------------
    from bench import random_model

    cfg = dict(model_type="llama", hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=512, vocab_size=512, max_position_embeddings=128, rms_norm_eps=1e-5)
    m = random_model(cfg, dev, bf16, 64)
    Q.quantize_model(m, "int4", 32)
    m.setup_caches(1, 64)
    idx, pos = torch.randint(0, 512, (1, 9), device=dev, generator=gen), torch.arange(9, device=dev)
    with torch.no_grad():
        ref = [m(idx, pos).float(), m(idx[:, :1], pos[:1]).float()]  # a prompt, then one decode step
        packed = sum(x.pack_for_cuda() for x in m.modules() if isinstance(x, Q.Int4Linear))  # pack_for_device's step
        out = [m(idx, pos).float(), m(idx[:, :1], pos[:1]).float()]
    err = max(((o - r).abs().max() / r.abs().max()).item() for o, r in zip(out, ref))
    ok &= packed == 2 * 4 + 1 and err < 2e-2
    print(f"check pack_for_device: {packed} of 9 int4 layers packed, logits max rel err {err:.2e}", flush=True)
    # An int8 model in bf16 on the GPU (9-token prompt: the skinny kernel; decode: Triton GEMV) against itself in
    # float32 on the CPU (the PyTorch path).
    m = random_model(cfg, dev, bf16, 64)
    Q.quantize_model(m, "int8")
    m.setup_caches(1, 64)
    with torch.no_grad():
        out = [m(idx, pos).float().cpu(), m(idx[:, :1], pos[:1]).float().cpu()]
        m = m.float().cpu()
        ref = [m(idx.cpu(), pos.cpu()), m(idx[:, :1].cpu(), pos[:1].cpu())]
    err = max(((o - r).abs().max() / r.abs().max()).item() for o, r in zip(out, ref))
    ok &= err < 5e-2
    print(f"check int8 model, bf16 GPU vs float32 CPU: logits max rel err {err:.2e}", flush=True)
    del m

    # ---- timing: one block of GEMVs, 4 copies ----------------------------------------------------
    def bench(label, make):
        """make(name, copy) -> (callable(x), bytes); times the whole block over all copies."""
        fns = [[make(name, c) for name in SHAPES] for c in range(COPIES)]
        total = sum(b for per_copy in fns for _, b in per_copy)
        names = list(SHAPES)

        def run():
            for per_copy in fns:
                for name, (fn, _) in zip(names, per_copy):
                    fn(xs[name])

        sec = time_graph(run)
        r = dict(variant=label, us_per_block=1e6 * sec / COPIES, gb_s=total / sec / 1e9, mb_per_block=total / COPIES / 1e6)
        rows.append(r)
        print(f"{label:44s} {r['us_per_block']:8.1f} us/block {r['gb_s']:7.0f} GB/s ({r['mb_per_block']:.0f} MB/block)",
              flush=True)
        return r

    cache = {}

    def quantized(kind, name, c):
        key = (kind, name, c)
        if key not in cache:
            w = weights[name][c]
            if kind == 8:
                q, s = Q.quantize_int8(w)
                cache[key] = (q, s.to(bf16))
            else:
                pk, s4, z4 = Q.quantize_int4(w, kind)
                cache[key] = (pk, s4, z4)
        return cache[key]

    bench("bf16 F.linear (cuBLAS)", lambda n, c: ((lambda x, w=weights[n][c]: F.linear(x, w)), nbytes(weights[n][c])))
    bench("int8 PyTorch path (eager, dequantize+matmul)",
          lambda n, c: ((lambda x, t=quantized(8, n, c): F.linear(x, t[0].to(bf16)) * t[1]), nbytes(*quantized(8, n, c))))
    bench("int8 triton float16 pairs (kernels.gemv)",
          lambda n, c: ((lambda x, t=quantized(8, n, c): torch.ops.gptfast.gemv(x, *t)), nbytes(*quantized(8, n, c))))
    bench("int8 triton float32 " + str(K.CONFIGS["int8"]),
          lambda n, c: ((lambda x, t=quantized(8, n, c): K.gemv_launch(x.view(-1), *t, **K.CONFIGS["int8"])),
                        nbytes(*quantized(8, n, c))))
    bench("int8 inductor (compiled int8_row)",
          lambda n, c: ((lambda x, t=quantized(8, n, c): int8_inductor(x, *t)), nbytes(*quantized(8, n, c))))
    for G in (32, 64, 128):
        bench(f"int4 g{G} inductor (compiled int4_row)",
              lambda n, c: ((lambda x, t=quantized(G, n, c): int4_inductor(x, *t, G)), nbytes(*quantized(G, n, c))))
        try:
            bench(f"int4 g{G} tinygemm",
                  lambda n, c: (tinygemm_fn(*quantized(G, n, c), G), nbytes(*quantized(G, n, c))))
        except Exception as e:
            print(f"int4 g{G} tinygemm failed: {type(e).__name__}: {str(e)[:100]}", flush=True)
        bench(f"int4 g{G} triton (int4_launch_args)",
              lambda n, c: ((lambda x, t=quantized(G, n, c): K.int4_gemv_launch(
                  x.view(-1), *t, G, **K.int4_launch_args(x, G, t[0].shape[0]))), nbytes(*quantized(G, n, c))))
        bench(f"int4 g{G} triton float32 words " + str(K.CONFIGS[G]),
              lambda n, c: ((lambda x, t=quantized(G, n, c): K.int4_gemv_launch(x.view(-1), *t, G, **K.CONFIGS[G])),
                            nbytes(*quantized(G, n, c))))
    cache.clear()
    del weights
    torch.cuda.empty_cache()

    # ---- quantize_model speed on the 7B shape, GPTQ of one block -----------------------------------
    from bench import random_model, shape_config

    for mode in ("int8", "int4"):
        model = random_model(shape_config("llama-2-7b"), dev, bf16, 256)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        Q.quantize_model(model, mode, 32)
        torch.cuda.synchronize()
        print(f"quantize_model({mode}) on the 7B shape: {time.perf_counter() - t0:.1f} s", flush=True)
        rows.append(dict(variant=f"quantize_model {mode} 7B", seconds=time.perf_counter() - t0))
        del model
        torch.cuda.empty_cache()
    t0 = time.perf_counter()
    for name, (n, k) in SHAPES.items():
        X = torch.randn(4096, k, device=dev)
        Q.gptq_int4(torch.randn(n, k, device=dev) * 0.02, X.t() @ X, 32)
    torch.cuda.synchronize()
    one = time.perf_counter() - t0
    print(f"GPTQ of one 7B block (4 layers, g32): {one:.1f} s, x 32 blocks = {32 * one:.0f} s (without the forward passes)")
    rows.append(dict(variant="gptq one 7B block g32", seconds=one))
    if a.json:
        a.json.write_text(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), indent=1))
    print("\n| variant | us/block | GB/s |\n|---|---|---|")
    for r in sorted((r for r in rows if "gb_s" in r), key=lambda r: (r["variant"].split()[0:2], -r["gb_s"])):
        print(f"| {r['variant']} | {r['us_per_block']:.1f} | {r['gb_s']:.0f} |")
    print("correctness:", "OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
