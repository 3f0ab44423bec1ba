"""GPU check of tensor parallelism (tp.py): correctness, memory, speed, all-reduce cost. Run on one host:

  NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
      torchrun --standalone --nproc_per_node=2 scripts/gpu_check_tp.py [--layers 32] [--new_tokens 200] [--all_reduce_only]

1. Correctness (float32, Llama-2-7B widths, 4 layers, random weights): greedy tokens of one GPU (eager),
   of the N-GPU shard eager and compiled with CUDA graphs must all be equal; with sampling (same seed)
   every rank must draw the same tokens; the same greedy checks with the weights quantized to int4, and in
   bfloat16 (the float16-pair int4 GEMV) one decode step's logits of one GPU and of N near the float32 model's.
2. Speed (bfloat16, Llama-2-7B shape): compiled decode tokens/s on one GPU and on N GPUs, per-GPU
   weight memory and bandwidth (weights read per token x tokens/s). With --int8_70b 80: the same for
   a Llama-2-70B-shape int8 model, as a fraction of the copy bandwidth measured in the same process.
3. All-reduce of one decode activation (1, 1, dim), 2 x layers + 1 of them in one CUDA graph: NCCL through
   the functional collective tp.py uses, PyTorch's symmetric-memory one-shot all-reduce, and tp.py's
   symm_mem all-reduce (kernels.all_reduce_launch) at several splits and with the RMSNorm (as tp.py's decode
   steps run it); that kernel checked against NCCL, and with the norm against NCCL + model.rms_norm.
4. Last, tp.py's opt-in --all_reduce symm_mem: greedy equality (float32) and tokens/s (bf16).
Rank 0 prints a table last and writes gpu_check_tp.json under $OUT (if set).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import generate  # noqa: E402
from model import ModelArgs, Transformer, rms_norm  # noqa: E402
import kernels as K  # noqa: E402
from tp import shard_model, symm_mem_buffers  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import copy_bandwidth  # noqa: E402

PROMPT = [[1, 450, 4996, 17354, 1701]]  # 5 fixed token ids


def build(args: ModelArgs, dtype) -> Transformer:
    """A random model (normal, std 0.02; norms 1) on this rank's GPU, the same on every rank."""
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Transformer(args).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.02)
    return model.eval()


def run(model, n_tokens, decode_fn=generate.decode_one_token, temperature=0.0, top_k=None):
    """(tokens, decode tok/s) of one generate call, timed from the first token like generate.py;
    greedy unless a temperature is given."""
    model.setup_caches(1, len(PROMPT[0]) + n_tokens)
    first = []

    def on_token(step, _):  # tokens are on the host: this step is done on the device (not the one after it)
        if step == 0:
            first.append(time.perf_counter())

    out = generate.generate(model, PROMPT, n_tokens, decode_fn=decode_fn, callback=on_token,
                            temperature=temperature, top_k=top_k)[0]
    torch.cuda.synchronize()
    return out, (len(out) - 1) / (time.perf_counter() - first[0])


@torch.no_grad()
def decode_logits(model) -> Tensor:
    """Float32 logits of one decode step after PROMPT (through the model's blocks as they are, compiled or not): one
    row through each product's decode kernel."""
    model.max_batch_size = -1  # setup_caches makes new caches and RoPE tables (float32), even after model.to(dtype)
    model.setup_caches(1, 16)
    idx, n = torch.tensor(PROMPT, device="cuda"), len(PROMPT[0])
    model(idx, torch.arange(n, device="cuda"))
    return model(idx[:, -1:], torch.tensor([n], device="cuda")).float()


def rel_err(y: Tensor, ref: Tensor) -> float:
    return ((y - ref).abs().max() / ref.abs().max()).item()


def timed(model, n_tokens, decode_fn, repeats=3):
    """Median decode tok/s, sampling as in PERF.md (temperature 0.8, top_k 200), after a warm-up run."""
    sampling = dict(temperature=0.8, top_k=200)
    run(model, n_tokens, decode_fn, **sampling)  # compile and record CUDA graphs
    return sorted(run(model, n_tokens, decode_fn, **sampling)[1] for _ in range(repeats))[repeats // 2]


def graph_time_ms(fn, calls: int) -> float:
    """Milliseconds per call of fn(), `calls` of them recorded in one CUDA graph, median of 20 replays."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        dist.barrier()
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return sorted(times)[10]


def all_reduce_times(dim: int, calls: int) -> dict:
    """Milliseconds per all-reduce of one decode activation, or why it could not run: NCCL, PyTorch's one-shot
    all-reduce in symmetric memory, and tp.py's (kernels.all_reduce_launch) at several splits of the row."""
    x = torch.randn(1, 1, dim, device="cuda", dtype=torch.bfloat16)
    group = dist.group.WORLD.group_name

    def symm_mem_fn():
        import torch.distributed._symmetric_memory as symm_mem

        buf = symm_mem.empty(dim, dtype=torch.bfloat16, device="cuda")
        symm_mem.rendezvous(buf, group)
        # The input must live in symmetric memory: the copy is part of the cost a model would pay.
        return lambda: torch.ops.symm_mem.one_shot_all_reduce(buf.copy_(x.view(-1)), "sum", group)

    def triton_fn(block, num_warps, weight=None):
        def make():
            _, handle, peers, epoch = symm_mem_buffers(dim, x.dtype, x.device, group, block)
            return lambda: K.all_reduce_launch(x.view(-1), peers, epoch, handle.rank, block, num_warps, weight, 1e-5)
        return make

    variants = {"nccl (funcol)": lambda: lambda: funcol.wait_tensor(funcol.all_reduce(x, "sum", dist.group.WORLD)),
                "symm_mem one_shot (PyTorch)": symm_mem_fn,
                **{f"tp.py symm_mem, {dim // b} x ({b}, {w} warps)": triton_fn(b, w)
                   for b, w in ((dim, 8), (2048, 4), (1024, 4), (512, 4), (512, 2), (256, 2))},
                "tp.py symm_mem + RMSNorm (the model's)": triton_fn(*K.norm_block(dim), torch.ones_like(x.view(-1)))}
    out = {}
    for name, make in variants.items():
        try:
            out[name] = graph_time_ms(make(), calls)
        except Exception as e:  # not built, or not supported on this machine: report and go on
            out[name] = f"n/a ({type(e).__name__}: {str(e)[:80]})"
    return out


def all_reduce_agrees(dim: int, calls: int = 50, norm: bool = False) -> bool:
    """tp.py's all-reduce (eager, replayed in a CUDA graph, and many calls in one graph with the ranks out of step)
    against NCCL's, on new random rows each time: within a bf16 rounding of it (NCCL's order of additions
    differs), and the same bits on every rank. norm: the all-reduce with the RMSNorm (tp.py's decode steps) against
    model.rms_norm of NCCL's sum."""
    block, num_warps = K.norm_block(dim) if norm else (None, None)
    _, handle, peers, epoch = symm_mem_buffers(dim, torch.bfloat16, torch.device("cuda"), dist.group.WORLD.group_name,
                                               block)
    torch.manual_seed(2)  # the norm's weight, the same on every rank
    w = (torch.rand(dim, device="cuda") + 0.5).to(torch.bfloat16) if norm else None
    torch.manual_seed(3 + handle.rank)  # rows that differ between ranks
    x = torch.randn(dim, device="cuda", dtype=torch.bfloat16)

    def launch(x):
        return K.all_reduce_launch(x, peers, epoch, handle.rank, block, num_warps, w, 1e-5)

    launch(x)  # built before the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_graph = launch(x)
    ok = True
    for i in range(calls):
        x.normal_()
        if i % 2:
            graph.replay()
            y = y_graph.clone()
        else:
            y = launch(x)
        ok &= agrees(x, y, w)
    # Back to back with the ranks out of step: 16 calls in one CUDA graph, each rank sleeping before different
    # calls, so that one rank runs ahead of another (what the two sets of slots are for)
    xs = torch.randn(16, dim, device="cuda", dtype=torch.bfloat16)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ys = []
        for i in range(len(xs)):
            if (i + handle.rank) % 3 == 0:
                torch.cuda._sleep(100_000)  # GPU clock cycles: tens of microseconds
            ys.append(launch(xs[i]))
    for _ in range(5):
        xs.normal_()
        graph.replay()
        ok &= all([agrees(x, y, w) for x, y in zip(xs, ys)])  # (a list: every rank makes every collective call)
    return ok


def all_reduce_rows(times: dict, prefix: str) -> list[str]:
    return [f"{prefix + k:<40} {v if isinstance(v, str) else f'{v * 1000:.1f} us'}" for k, v in times.items()]


def agrees(x: Tensor, y: Tensor, w: Tensor | None = None) -> bool:
    """y, this rank's all-reduce of x, is NCCL's within a bf16 rounding (with a norm weight w, model.rms_norm of
    NCCL's within three: the sum is rounded, normalised and scaled), and the same bits on every rank."""
    ref = funcol.wait_tensor(funcol.all_reduce(x.float(), "sum", dist.group.WORLD))
    ref = ref if w is None else rms_norm(ref.to(x.dtype), w, 1e-5).float()
    every = funcol.wait_tensor(funcol.all_gather_tensor(y.reshape(1, -1), 0, dist.group.WORLD))
    rtol = 2 ** -7 if w is None else 3 * 2 ** -8
    return bool(torch.allclose(y.float(), ref, rtol=rtol, atol=1e-6) and (every == y.reshape(1, -1)).all())


def int8_70b(layers: int, new_tokens: int, rank: int, n: int) -> dict:
    """Llama-2-70B shape, int8: each rank builds only its shard (meta device, shard_model, to_empty,
    random init, quantize_model), so no GPU ever holds the whole model."""
    from quantize import quantize_model

    args = ModelArgs(n_layers=layers, dim=8192, n_heads=64, n_kv_heads=8, head_dim=128, intermediate_size=28672,
                     vocab_size=32000)
    with torch.device("meta"):
        shard = shard_model(Transformer(args), rank, n)
    shard = shard.to(torch.bfloat16).to_empty(device="cuda")  # bf16 first: 35B float32 values would not fit
    torch.manual_seed(0)  # replicated tensors (embedding, norms, output) must be equal on every rank
    with torch.no_grad():
        for name, t in shard.named_parameters():
            if "norm" in name:
                t.fill_(1.0)
            else:
                t.normal_(0, 0.02)
    shard = quantize_model(shard.eval(), "int8")
    tok_s = timed(shard, new_tokens, generate.compile_steps(True, False, shard)[1])
    # bench.py's measure (2 GiB copy, median of 10): 4248 GB/s on an H200; a single 4 GB copy in a CUDA
    # graph, used here before, read 2766 GB/s on the same machine (BENCHMARKS.md).
    weights, bw = generate.weight_bytes(shard), copy_bandwidth("cuda") * 1e9
    return {"tok_s": tok_s, "weights_GB_per_gpu": weights / 1e9, "GB_s_per_gpu": weights * tok_s / 1e9,
            "copy_GB_s": bw / 1e9, "fraction_of_ceiling": weights * tok_s / bw}


def write_json(report: dict) -> None:
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "gpu_check_tp.json"
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str))
        os.replace(tmp, out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=32, help="layers of the speed model (Llama-2-7B: 32)")
    p.add_argument("--new_tokens", type=int, default=200)
    p.add_argument("--int8_70b", type=int, default=0, metavar="LAYERS",
                   help="also time a Llama-2-70B-shape int8 model with this many layers (80 for the real depth)")
    p.add_argument("--all_reduce_only", action="store_true",
                   help="only part 3 (the all-reduce times, tp.py's against NCCL): a quick check of a new host")
    a = p.parse_args()
    # This script compiles the same block for several models (float32, bf16, 70B int8, symm_mem): more
    # compiled variants of one function than dynamo keeps by default.
    torch._dynamo.config.cache_size_limit = torch._dynamo.config.accumulated_cache_size_limit = 64
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    n = dist.get_world_size()
    shape = dict(dim=4096, n_heads=32, n_kv_heads=32, head_dim=128, intermediate_size=11008, vocab_size=32000)
    report, ok = {"world_size": n, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}, True
    calls = 2 * a.layers + 1  # the all-reduces of a decode step: two a layer, one before the output layer

    if a.all_reduce_only:
        times = all_reduce_times(shape["dim"], calls)
        agrees = all_reduce_agrees(shape["dim"]) & all_reduce_agrees(shape["dim"], norm=True)
        if rank == 0:
            print(f"\ntp.py's all-reduce on {n} x {report['gpu']}: == NCCL, on all ranks: {'PASS' if agrees else 'FAIL'}",
                  *all_reduce_rows(times, ""), sep="\n")
        dist.destroy_process_group()
        sys.exit(0 if agrees else 1)

    # 1. correctness, float32
    full = build(ModelArgs(n_layers=4, **shape), torch.float32)
    single, _ = run(full, 64)
    shard = shard_model(full, rank, n)
    del full
    eager, _ = run(shard, 64)
    compiled, _ = run(shard, 64, generate.compile_steps(True, False, shard)[1])
    torch.manual_seed(1)  # the same seed on every rank, as tp.py does
    sampled, _ = run(shard, 64, temperature=0.8, top_k=200)
    every = [None] * n
    dist.all_gather_object(every, sampled)
    checks = {"eager N-GPU == 1 GPU": eager == single, "compiled N-GPU == 1 GPU": compiled == single,
              "sampled tokens equal on all ranks": all(s == sampled for s in every)}
    del shard
    # the same with int4 weights (quantize.py's GEMV, the SwiGLU and the residual add inside it, each rank adding
    # its part of the residual stream): quantizing the shard is quantizing the model's rows and groups
    from quantize import quantize_model

    full = quantize_model(build(ModelArgs(n_layers=4, **shape), torch.float32), "int4", 32)
    single4, _ = run(full, 64)
    shard = quantize_model(shard_model(build(ModelArgs(n_layers=4, **shape), torch.float32), rank, n), "int4", 32)
    checks["int4: eager N-GPU == 1 GPU"] = run(shard, 64)[0] == single4
    checks["int4: compiled N-GPU == 1 GPU"] = run(shard, 64, generate.compile_steps(True, False, shard)[1])[0] == single4
    # In bfloat16 the products take the float16-pair int4 GEMV (float32 activations take the float32-word one): the
    # decode logits of one GPU and of N, each against the float32 model's (the same int4 weights)
    ref = decode_logits(full)
    errs = [rel_err(decode_logits(m.to(torch.bfloat16)), ref) for m in (full, shard)]
    report["int4 bf16 decode logits, max error / max |logit|: 1 GPU, N GPUs"] = errs
    checks[f"int4 bf16: N-GPU logits near float32 ({errs[1]:.1e}; 1 GPU {errs[0]:.1e})"] = max(errs) < 0.05
    del full
    ok = all(checks.values())
    report["checks"] = checks
    del shard
    torch.cuda.empty_cache()

    # 2. speed, bfloat16
    args = ModelArgs(n_layers=a.layers, **shape)
    full = build(args, torch.bfloat16)
    tok_s_1 = timed(full, a.new_tokens, generate.compile_steps(True, False, full)[1])
    bytes_1 = generate.weight_bytes(full)
    shard = shard_model(full, rank, n)
    del full
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    tok_s_n = timed(shard, a.new_tokens, generate.compile_steps(True, False, shard)[1])
    bytes_n = generate.weight_bytes(shard)
    mem = [None] * n
    dist.all_gather_object(mem, (torch.cuda.memory_allocated() / 1e9, torch.cuda.max_memory_allocated() / 1e9))
    report["speed"] = {"tok_s_1gpu": tok_s_1, "tok_s_ngpu": tok_s_n, "speedup": tok_s_n / tok_s_1,
                       "weights_GB_1gpu": bytes_1 / 1e9, "weights_GB_per_gpu": bytes_n / 1e9,
                       "GB_s_1gpu": bytes_1 * tok_s_1 / 1e9, "GB_s_per_gpu": bytes_n * tok_s_n / 1e9,
                       "memory_GB_per_rank (allocated, peak)": mem}
    del shard
    torch.cuda.empty_cache()

    # 3. the all-reduces of a decode step
    report["all_reduce_ms"] = all_reduce_times(shape["dim"], calls)
    try:
        checks["tp.py symm_mem all-reduce == NCCL, on all ranks"] = ok_ar = all_reduce_agrees(shape["dim"])
        checks["tp.py symm_mem all-reduce + RMSNorm == NCCL + model.rms_norm"] = ok_n = all_reduce_agrees(shape["dim"],
                                                                                                      norm=True)
        ok &= ok_ar & ok_n
    except Exception as e:  # not supported here: reported, the NCCL path stands
        print(f"rank {rank}: the symm_mem all-reduce check could not run: {type(e).__name__}: {str(e)[:200]}")
    if a.int8_70b:
        report["int8_70b"] = int8_70b(a.int8_70b, a.new_tokens, rank, n)
    if rank == 0:
        s, dim, nccl_ms = report["speed"], shape["dim"], report["all_reduce_ms"]["nccl (funcol)"]
        nccl_share = f"{calls * nccl_ms * s['tok_s_ngpu'] / 1000:.0%}" if isinstance(nccl_ms, float) else "n/a"
        rows = [*(f"{k:<40} {'PASS' if v else 'FAIL'}" for k, v in checks.items()),
                f"{'decode tok/s, 1 GPU (bf16, compiled)':<40} {s['tok_s_1gpu']:.1f}",
                f"{f'decode tok/s, {n} GPUs':<40} {s['tok_s_ngpu']:.1f} ({s['speedup']:.2f}x)",
                f"{'weights GB: 1 GPU / per GPU':<40} {s['weights_GB_1gpu']:.2f} / {s['weights_GB_per_gpu']:.2f}",
                f"{'weight GB/s: 1 GPU / per GPU':<40} {s['GB_s_1gpu']:.0f} / {s['GB_s_per_gpu']:.0f}",
                *(f"{f'memory GB rank {r} (allocated, peak)':<40} {m[0]:.2f}, {m[1]:.2f}" for r, m in enumerate(mem)),
                *all_reduce_rows(report["all_reduce_ms"], f"all-reduce (1, 1, {dim}) bf16, "),
                f"{f'{calls} NCCL all-reduces, share of a token':<40} {nccl_share}"]
        if a.int8_70b:
            b = report["int8_70b"]
            rows += [f"{f'70B-shape int8 ({a.int8_70b} layers), {n} GPUs':<40} {b['tok_s']:.1f} tok/s, "
                     f"{b['weights_GB_per_gpu']:.1f} GB and {b['GB_s_per_gpu']:.0f} GB/s per GPU, "
                     f"{b['fraction_of_ceiling']:.0%} of {b['copy_GB_s']:.0f} GB/s copy bandwidth"]
        print("\n".join(["", f"tp.py on {n} x {report['gpu']}, torch {report['torch']}", *rows]), flush=True)
        write_json(report)

    # 4. tp.py's opt-in symmetric-memory all-reduce, last: the table above is out even if it fails
    try:
        full = build(ModelArgs(n_layers=4, **shape), torch.float32)
        shard = shard_model(full, rank, n, all_reduce="symm_mem")
        del full
        same = run(shard, 64, generate.compile_steps(True, False, shard)[1])[0] == single
        del shard
        full = build(args, torch.bfloat16)
        shard = shard_model(full, rank, n, all_reduce="symm_mem")
        del full
        ok &= same
        report["symm_mem"] = {"compiled N-GPU == 1 GPU": same,
                              "tok_s_ngpu": timed(shard, a.new_tokens, generate.compile_steps(True, False, shard)[1])}
        line = f"compiled greedy == 1 GPU: {'PASS' if same else 'FAIL'}, {report['symm_mem']['tok_s_ngpu']:.1f} tok/s"
    except Exception as e:  # not built or not supported here
        report["symm_mem"] = line = f"n/a ({type(e).__name__}: {str(e)[:120]})"
    if rank == 0:
        print(f"{'--all_reduce symm_mem, ' + str(n) + ' GPUs':<40} {line}")
        write_json(report)
    dist.destroy_process_group()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
