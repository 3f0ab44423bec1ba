"""Decode speed against the memory-bandwidth ceiling, measured in one process.

python scripts/bench.py --shape llama-2-7b [--modes bf16,int8,int4] [--batch_sizes 1,8,32]
    [--prompt_lengths 5,2048] [--new_tokens 200] [--context 8192] [--checkpoint DIR] [--json FILE]

Builds a model of a real architecture with random weights directly on the device (or loads
--checkpoint), measures the device copy bandwidth (the ceiling), then for each mode, batch size and
prompt length: decode tokens/s (median of --runs runs after a warm-up), achieved GB/s of weights and KV
cache read per step and its fraction of the ceiling, time to first token, compile time, peak memory.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

T_START = time.perf_counter()  # for the warm-start probe's breakdown
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import generate as g  # noqa: E402
from model import ModelArgs, Transformer  # noqa: E402

SHAPES = {  # Hugging Face config fields of each architecture
    "llama-2-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008,
                       vocab_size=32000, max_position_embeddings=4096),
    "llama-2-13b": dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, intermediate_size=13824,
                        vocab_size=32000, max_position_embeddings=4096),
    "llama-2-70b": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                        intermediate_size=28672, vocab_size=32000, max_position_embeddings=4096),
    "llama-3-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0),
    "llama-3.1-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=14336, vocab_size=128256, max_position_embeddings=131072,
                         rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                           original_max_position_embeddings=8192), rope_theta=500000.0),
    "llama-3.1-70b": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                          intermediate_size=28672, vocab_size=128256, max_position_embeddings=131072,
                          rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                            original_max_position_embeddings=8192), rope_theta=500000.0),
    "mistral-7b": dict(model_type="mistral", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, intermediate_size=14336, vocab_size=32000,
                       max_position_embeddings=32768, rope_theta=1000000.0),
    "tinyllama-1.1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                           intermediate_size=5632, vocab_size=32000, max_position_embeddings=2048),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=256, max_position_embeddings=512),
}
# --sampling: "default" is the peers' setting (shared/PERF.md)
SAMPLINGS = {"default": dict(temperature=0.8, top_k=200), "greedy": dict(temperature=0.0)}


def shape_config(shape: str) -> dict:
    if shape in SHAPES:
        return {"model_type": "llama", "rms_norm_eps": 1e-5, **SHAPES[shape]}
    path = Path(shape)
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise g.UsageError(f"--shape {shape}: not a JSON config ({e}): give a model's config.json") from None
    raise g.UsageError(f"unknown --shape {shape!r}: use one of {', '.join(SHAPES)} or a path to a config.json")


def random_model(cfg: dict, device, dtype, max_seq_len: int, tp=None) -> Transformer:
    """A model of cfg's shape with random normal(0, 0.02) weights (never zeros: they run unrealistically fast).
    tp=(rank, world_size, all_reduce): only this rank's tensor-parallel shard is allocated."""
    args = ModelArgs.from_hf_config(cfg)
    args.max_seq_len = max(args.max_seq_len, max_seq_len)  # RoPE extends; lets a 4k model time 8k contexts
    with torch.device("meta"):
        model = Transformer(args)
    if tp is not None:
        from tp import shard_model

        model = shard_model(model, *tp[:2])  # on the meta device (its norms all-reduce; symm_mem is set below)
    model = model.to(dtype).to_empty(device=device)  # allocated in dtype at once (not float32, then a copy)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02, generator=gen)
    if model.args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    if tp is not None:
        from tp import set_all_reduce

        set_all_reduce(model, tp[2])  # for the model's device and dtype (symm_mem's buffers need them)
    return model.eval()


def copy_bandwidth(device, n_bytes=2 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read + written (the decode ceiling)."""
    src = torch.randn(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        t = timer(device)
        dst.copy_(src)
        times.append(t())
    return 2 * n_bytes / statistics.median(times[2:]) / 1e9


def timer(device):
    """Start a timer; calling the result returns seconds elapsed, with the device's work finished."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()

        def stop():
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000
        return stop
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0


def kv_bytes_per_step(model: Transformer, batch: int, position: float) -> float:
    """Bytes of K and V a decode step must read at a given position (the useful part of the cache)."""
    a = model.args
    return 2 * a.n_layers * batch * a.n_kv_heads * a.head_dim * position * model.tok_embeddings.weight.element_size()


def run_one(model, prefill_fn, decode_fn, device, batch, prompt_len, new_tokens, runs, sampling, vocab):
    """Time generation; return dict of the medians."""
    prompts = torch.randint(0, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(1)).tolist()
    model.setup_caches(batch, g.cache_length(prompt_len + new_tokens, model.args.max_seq_len))  # as generate.py does
    first = {}

    def on_token(step, _tokens):  # tokens are on the host, so the device has finished this step
        if step == 0:
            first["t"] = time.perf_counter()

    t0 = time.perf_counter()
    g.generate(model, prompts, 3, prefill_fn=prefill_fn, decode_fn=decode_fn, callback=on_token, **sampling)
    compile_s = time.perf_counter() - t0  # first prefill + first decode calls: compile and graph capture
    decode_s, ttft_s = [], []
    for _ in range(runs + 1):  # the first is a warm-up
        sync(device)
        t0 = time.perf_counter()
        g.generate(model, prompts, new_tokens, prefill_fn=prefill_fn, decode_fn=decode_fn, callback=on_token,
                   **sampling)
        sync(device)
        t1 = time.perf_counter()
        decode_s.append((t1 - first["t"]) / (new_tokens - 1))
        ttft_s.append(first["t"] - t0)
    step_s, ttft = statistics.median(decode_s[1:]), statistics.median(ttft_s[1:])
    return dict(step_ms=1000 * step_s, tok_s=1 / step_s, agg_tok_s=batch / step_s, ttft_ms=1000 * ttft,
                compile_s=compile_s,
                spread_pct=100 * (max(decode_s[1:]) - min(decode_s[1:])) / step_s)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def warm_start(argv: list[str]) -> tuple[float, float]:
    """Seconds from launching a fresh process (compile cache warm) until it has its first compiled tokens, and
    until it has exited (tearing down CUDA and the compile workers takes seconds more)."""
    t0 = time.time()  # wall clock: the probe reads it too (GPTFAST_PROBE_T0)
    r = subprocess.run([sys.executable, __file__, *argv, "--_probe"], capture_output=True, text=True,
                       env={**os.environ, "GPTFAST_PROBE_T0": repr(t0)})
    if r.returncode != 0:
        print(r.stderr[-2000:], file=sys.stderr)
        return float("nan"), float("nan")
    print("".join(line for line in r.stderr.splitlines(True) if line.startswith("probe:")), end="", file=sys.stderr)
    first = [float(line.split()[4]) for line in r.stderr.splitlines() if line.startswith("probe: first tokens at")]
    return (first[0] if first else float("nan")), time.time() - t0


def speculative_row(model, a, device, sampling, decode_row, build) -> dict:
    """Speculative decoding at batch 1 after a 5-token prompt: the cost of one verification pass of k+1
    tokens against one decode step (decode_row), acceptance and end-to-end tokens/s. build(mode) makes
    the draft: the same seeded weights as the target, quantized (a self-speculation draft)."""
    from speculative import Speculator

    draft = None if a.draft == "lookup" else model if a.draft == "self" else build(a.draft)
    spec = Speculator(draft, a.speculate_k, 3 if draft is None else 0, compile=not a.no_compile)
    spec.fit_caches(model, 1, 5 + a.new_tokens + a.speculate_k)
    times = []
    for _ in range(12):  # the first calls compile and record
        t = timer(device)
        spec.verify_once(model, 1, pos=5, **sampling)
        times.append(t())
    verify_ms = 1000 * statistics.median(times[4:])
    prompt = torch.randint(0, model.args.vocab_size, (1, 5), generator=torch.Generator().manual_seed(1)).tolist()
    spec.generate(model, prompt, 20, **sampling)  # warm-up
    spec.stats = type(spec.stats)(a.speculate_k)
    sync(device)
    t0 = time.perf_counter()
    out = spec.generate(model, prompt, a.new_tokens, **sampling)[0]
    sync(device)
    st = spec.stats
    return dict(mode=f"spec {a.draft} k={a.speculate_k}", sampling=a.sampling.split(",")[0], batch=1, prompt=5,
                new_tokens=len(out), tok_s=len(out) / (time.perf_counter() - t0), agg_tok_s=float("nan"),
                verify_ms=verify_ms, verify_over_step=verify_ms / decode_row["step_ms"],
                acceptance=st.accepted / max(st.rounds * a.speculate_k, 1), gb_s=float("nan"), of_ceiling=float("nan"),
                ttft_ms=float("nan"), compile_s=float("nan"), peak_gb=float("nan"), draft_s=st.draft_s, verify_s=st.verify_s,
                loop_s=st.loop_s, loop_overhead=1 - (st.draft_s + st.verify_s) / st.loop_s)


@torch.no_grad()
def profile(model, decode_fn, prefill_fn, batch, prompt_len, sampling, steps=20):
    """Kernel time per decode step and per prefill of the case's prompt, summed by kernel name (where the time goes)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    x = torch.zeros(batch, 1, dtype=torch.long, device="cuda")
    pos = torch.tensor([prompt_len], device="cuda")
    prompt = torch.zeros(batch, prompt_len, dtype=torch.long, device="cuda")
    for what, step, n in (("decode step", lambda: decode_fn(model, x, pos, **sampling), steps),
                          (f"prefill of {prompt_len} tokens", lambda: prefill_fn(model, prompt, torch.arange(
                              prompt_len, device="cuda"), **sampling), 3)):
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                step()
            torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
        total = sum(e.self_device_time_total for e in events)
        print(f"profile: {sum(e.count for e in events) / n:.0f} kernels and {total / n / 1000:.3f} ms "
              f"of kernel time per {what}", file=sys.stderr)
        for e in sorted(events, key=lambda e: -e.self_device_time_total)[:12 if n < steps else 25]:
            print(f"  {e.self_device_time_total / n:8.1f} us {e.count / n:5.1f}x  {e.key[:110]}", file=sys.stderr)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama-2-7b")
    p.add_argument("--checkpoint", type=Path, default=None, help="benchmark real weights instead of --shape")
    p.add_argument("--modes", default="bf16", help="comma list: bf16, int8, int4 (group 32), int4-g64, int4-g128")
    p.add_argument("--batch_sizes", default="1")
    p.add_argument("--prompt_lengths", default="5")
    p.add_argument("--new_tokens", type=int, default=200)
    p.add_argument("--context", type=int, default=0, help="also time decode after a prompt filling this context")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--sampling", default="default", help="comma list: default (temperature 0.8, top_k 200), greedy")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--no_compile", action="store_true", help="eager (for quick CPU checks)")
    p.add_argument("--compile_prefill", action="store_true", help="also compile prefill (dynamic shapes)")
    p.add_argument("--warm_start", action="store_true", help="also time a fresh process with the compile cache warm")
    p.add_argument("--draft", default=None, help="also time speculative decoding, batch 1: a draft that is the target "
                   "quantized (int8, int4, ...), the target itself (self), or prompt lookup (lookup)")
    p.add_argument("--speculate_k", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="print the top kernels of 20 decode steps (first case)")
    p.add_argument("--all_reduce", choices=["nccl", "symm_mem"], default="nccl",
                   help="under torchrun: tp.py's all-reduce (symm_mem: CUDA, one host)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--_probe", action="store_true", help=argparse.SUPPRESS)
    a = g.one_line_errors(p).parse_args(argv)
    modes, batch_sizes, prompt_lengths = check_args(a)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise g.UsageError("--device cuda but no CUDA GPU is available: use --device cpu (with --shape tiny)")
    device, dtype = a.device, torch.bfloat16 if a.device == "cuda" else torch.float32
    if a.all_reduce == "symm_mem" and (device != "cuda" or "WORLD_SIZE" not in os.environ):
        raise g.UsageError("--all_reduce symm_mem needs --device cuda and torchrun (tensor parallelism)")
    # Tensor-parallel mode when launched by torchrun: every rank builds and times its shard, rank 0 reports.
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    tp = None
    if world > 1:
        import torch.distributed as dist

        if device == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        tp = (rank, world, a.all_reduce)
        torch.manual_seed(0)  # every rank samples the same tokens from the same logits
        if rank != 0:
            sys.stdout = sys.stderr = open(os.devnull, "w")
    t_start = time.perf_counter()
    cases = [(b, pl, a.new_tokens) for b in batch_sizes for pl in prompt_lengths]
    if a.context:
        cases.append((1, a.context - a.new_tokens, a.new_tokens))
    need = max(pl + n for _, pl, n in cases)

    def build(mode: str) -> Transformer:  # a fresh bf16 model per mode, then quantized in place
        if a.checkpoint is not None:
            if tp is not None:
                raise g.UsageError("the tensor-parallel bench uses --shape; for a checkpoint time tp.py")
            model = Transformer.from_pretrained(a.checkpoint, device=device, dtype=dtype)
        else:
            model = random_model(shape_config(a.shape), device, dtype, need, tp)
        if mode != "bf16":
            from quantize import pack_for_device, quantize_model  # noqa: PLC0415 (quantize.py: issue 5)

            bits, _, group = mode.partition("-g")
            quantize_model(model, bits, int(group or 32))
            pack_for_device(model)  # as the loader does (GPTFAST_INT4=tinygemm: repacked for tinygemm)
        return model

    backend = a.all_reduce if device == "cuda" else "gloo"
    source = str(a.checkpoint or a.shape) + (f", tensor parallel over {world} GPUs, {backend} all-reduce (GB/s per GPU)"
                                             if tp else "")
    if a._probe:  # fresh-process warm start: build, compile (from cache), first token, exit
        t_built = time.perf_counter()
        model = build(modes[0])
        sync(device)
        t_model = time.perf_counter()
        prefill_fn, decode_fn = g.compile_steps(not a.no_compile, a.compile_prefill, model)
        batch, prompt_len, new_tokens = cases[0]  # the measuring process's first case, so the same compiled graphs
        model.setup_caches(batch, g.cache_length(prompt_len + new_tokens, model.args.max_seq_len))
        g.generate(model, [[1, 2, 3, 4, 5]] * batch, 2, prefill_fn=prefill_fn, decode_fn=decode_fn,
                   **SAMPLINGS["default"])
        sync(device)  # the first token and one compiled decode step are done
        t_done = time.perf_counter()
        since_launch = time.time() - float(os.environ["GPTFAST_PROBE_T0"])
        print(f"probe: first tokens at {since_launch:.2f} s after launch", file=sys.stderr)
        c = torch._dynamo.utils.counters["inductor"]
        print(f"probe: imports {t_built - T_START:.1f} s, random model {t_model - t_built:.1f} s, compile (cache warm) "
              f"and first tokens {t_done - t_model:.1f} s; inductor graph cache {c['fxgraph_cache_hit']} hits, "
              f"{c['fxgraph_cache_miss']} misses, {c['fxgraph_cache_bypass']} bypasses", file=sys.stderr)
        print("probe: " + torch._dynamo.utils.compile_times(repr="str").replace("\n", "\nprobe: "), file=sys.stderr)
        return
    ceiling = copy_bandwidth(device) if device == "cuda" else float("nan")
    print(f"{source} on {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"copy bandwidth {ceiling:.0f} GB/s", file=sys.stderr)
    rows = []
    for mode in modes:
        model = build(mode)
        w_bytes = g.weight_bytes(model)
        prefill_fn, decode_fn = g.compile_steps(not a.no_compile, a.compile_prefill, model)
        for sname in a.sampling.split(","):
            for batch, pl, n in cases:
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                r = run_one(model, prefill_fn, decode_fn, device, batch, pl, n, a.runs, SAMPLINGS[sname],
                            model.args.vocab_size)
                kv = kv_bytes_per_step(model, batch, pl + n / 2)
                gbs = (w_bytes + kv) * r["tok_s"] / 1e9
                r.update(mode=mode, sampling=sname, batch=batch, prompt=pl, new_tokens=n,
                         weight_gb=w_bytes / 1e9, kv_gb=kv / 1e9, gb_s=gbs, of_ceiling=gbs / ceiling,
                         peak_gb=torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else float("nan"))
                rows.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
                save(a.json if rank == 0 else None, dict(partial=True, rows=rows))
                if a.profile and (batch, pl, n) == cases[0] and sname == a.sampling.split(",")[0]:
                    profile(model, decode_fn, prefill_fn, batch, pl, SAMPLINGS[sname])
        if a.draft:
            rows.append(speculative_row(model, a, device, SAMPLINGS[a.sampling.split(",")[0]], rows[-1], build))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        del model, prefill_fn, decode_fn
        torch._dynamo.reset()  # the next mode compiles cold, as a user's first run would
        if device == "cuda":
            torch.cuda.empty_cache()
    result = dict(source=source, device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                  torch=torch.__version__, copy_gb_s=ceiling, rows=rows, command=" ".join(sys.argv),
                  date=time.strftime("%Y-%m-%d"), total_s=time.perf_counter() - t_start)
    if a.warm_start and not a.no_compile and tp is None:
        result["warm_start_s"], result["warm_start_exit_s"] = warm_start([x for x in (argv or sys.argv[1:])
                                                                         if x != "--warm_start"])
    save(a.json if rank == 0 else None, result)
    print(table(result))


def check_args(a) -> tuple[list[str], list[int], list[int]]:
    """Refuse bad flags before anything is built (a one-line error each); return the modes, batch sizes and prompt
    lengths."""
    def positive_ints(flag: str) -> list[int]:
        text = getattr(a, flag)
        try:
            values = [int(x) for x in text.split(",")]
        except ValueError:
            values = [0]
        if min(values) < 1:
            raise g.UsageError(f"--{flag} {text!r}: give positive integers separated by commas, e.g. 1,8")
        return values

    from quantize import GROUPSIZES  # noqa: PLC0415 (quantize.py: issue 5)

    modes = a.modes.split(",")
    known = ["bf16", "int8", "int4"] + [f"int4-g{n}" for n in GROUPSIZES]
    if a.checkpoint is None:
        shape_config(a.shape)
    for mode in modes:
        if mode not in known:
            raise g.UsageError(f"--modes: unknown mode {mode!r}: choose from {', '.join(known)}")
    if a.draft not in (None, "self", "lookup", *known):
        raise g.UsageError(f"--draft: unknown mode {a.draft!r}: choose from {', '.join(known)}, self (the target) or "
                           "lookup (prompt lookup)")
    if set(a.sampling.split(",")) - set(SAMPLINGS):
        raise g.UsageError(f"--sampling {a.sampling!r}: choose from {', '.join(SAMPLINGS)} (a comma list)")
    if a.new_tokens < 2:
        raise g.UsageError("--new_tokens must be at least 2 (tokens/s is timed from the first new token to the last)")
    for flag in "runs", "speculate_k":
        if getattr(a, flag) < 1:
            raise g.UsageError(f"--{flag} must be at least 1")
    if a.context and a.context <= a.new_tokens:
        raise g.UsageError(f"--context {a.context} leaves no prompt before --new_tokens {a.new_tokens}: give a larger "
                           "--context (the prompt is --context minus --new_tokens)")
    if a.json is not None and (a.json.is_dir() or not a.json.parent.is_dir()):
        raise g.UsageError(f"--json {a.json}: give a file path in an existing directory")
    return modes, positive_ints("batch_sizes"), positive_ints("prompt_lengths")


def save(path: Path | None, result: dict) -> None:
    if path is not None:  # atomically, and after every row: a run cut short still leaves its numbers
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, path)


def table(result) -> str:
    lines = [f"{result['source']} | {result['device']} | torch {result['torch']} | copy {result['copy_gb_s']:.0f} GB/s"
             + (f" | warm start {result['warm_start_s']:.1f} s to first tokens ({result['warm_start_exit_s']:.1f} s to "
                "exit)" if "warm_start_s" in result else ""), "",
             "| mode | sampling | batch | prompt | tok/s | agg tok/s | GB/s | of ceiling | TTFT ms | compile s | peak GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "verify_ms" in r:
            lines.append(f"| {r['mode']} | {r['sampling']} | 1 | 5 | {r['tok_s']:.1f} | verify {r['verify_ms']:.2f} ms = "
                         f"{r['verify_over_step']:.2f}x a decode step | acceptance {100 * r['acceptance']:.0f}% | "
                         f"loop overhead {100 * r['loop_overhead']:.1f}% | | | |")
            continue
        lines.append(f"| {r['mode']} | {r['sampling']} | {r['batch']} | {r['prompt']} | {r['tok_s']:.1f} | "
                     f"{r['agg_tok_s']:.1f} | {r['gb_s']:.0f} | {100 * r['of_ceiling']:.1f}% | {r['ttft_ms']:.1f} | "
                     f"{r['compile_s']:.1f} | {r['peak_gb']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    g.run(main)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # see tp.py: skip a teardown that can abort gloo ranks
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
