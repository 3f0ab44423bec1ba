"""Generate text from a Llama-family checkpoint: python generate.py --checkpoint DIR --prompt TEXT --compile

Also the library the other files use: load(), sample(), prefill(), decode_one_token(), generate().
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from model import CheckpointError, Transformer, checkpoint_dir
from tokenizer import StreamDecoder, Tokenizer

DEMO_CHECKPOINT = Path(__file__).parent / "checkpoints" / "SmolLM2-135M-Instruct"


class UsageError(ValueError):
    """Bad input from the user; the CLI prints the message on one line and exits with status 2."""


# ---------------------------------------------------------------------------------------- sampling
def filter_logits(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Tensor:
    """float32 logits / temperature (B, V) with the tokens that top-k and top-p (nucleus) filter out at -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        # The k-th largest, found on the logits as they come (bf16 from a bf16 model): torch.topk's radix
        # select makes half the passes over 16-bit values that it makes over float32 ones.
        kth = torch.topk(logits, top_k, dim=-1, sorted=False).values.amin(-1, keepdim=True)  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    logits = logits.float() / max(temperature, 1e-5)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix with mass >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def logits_to_probs(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None) -> Tensor:
    """Probabilities (B, V) after temperature, top-k and top-p filtering (filter_logits). logits: (B, V)."""
    return filter_logits(logits, temperature, top_k, top_p).softmax(-1)


def argmax(x: Tensor, slices: int = 64) -> Tensor:
    """x.argmax(-1) for x (B, V) (the first index of the maximum, as torch.argmax gives), in two stages: the
    maximum of each of `slices` slices of V, then the first slice holding the largest. Compiled, a plain
    argmax over the vocabulary is one program per row; this is `slices` programs (sampling from a
    32000-token vocabulary on an H100: one kernel of 28.3 us before, two of 2.8 and 3.1 us now;
    BENCHMARKS.md run 29)."""
    B, V = x.shape
    x = F.pad(x, (0, -V % slices), value=float("-inf")).view(B, slices, -1)
    best, at = x.max(-1)  # (B, slices), first maximum of each slice
    s = best.argmax(-1, keepdim=True)  # (B, 1), first slice holding the maximum
    return (s * x.shape[-1] + at.gather(-1, s)).squeeze(-1)


def sample(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None) -> Tensor:
    """Next token ids (B,) from logits (B, V); temperature 0 is greedy."""
    if temperature == 0:
        return argmax(logits)
    logits = filter_logits(logits, temperature, top_k, top_p)
    # Gumbel-max sampling: argmax(logits - log E), E ~ Exp(1), picks index i with probability softmax(logits)_i
    # (it is the exponential race argmax(p / E), without computing p). Unlike torch.multinomial it needs no
    # device-to-host sync, so it runs inside a CUDA graph.
    return argmax(logits - torch.empty_like(logits).exponential_(1).log())


# ------------------------------------------------------------------------------- model steps
def prefill(model: Transformer, idx: Tensor, input_pos: Tensor, **sampling) -> Tensor:
    """Run the prompt idx (B, T) at positions input_pos (T,) through the model; return next tokens (B,)."""
    return sample(model(idx, input_pos, last_only=True)[:, -1], **sampling)


def decode_one_token(model: Transformer, x: Tensor, input_pos: Tensor, **sampling) -> Tensor:
    """One decode step: x (B, 1) at position input_pos (1,); return next tokens (B,)."""
    return sample(model(x, input_pos)[:, -1], **sampling)


def cache_length(needed: int, limit: int) -> int:
    """The KV cache length to allocate for `needed` positions: the next power of two from 256 to 1024, above
    that the next multiple of 1024 (at most 1023 positions unused), and at most `limit` (the model's context).
    The cache's length is part of every compiled graph's shapes; rounded, a run with a prompt of another
    length reuses the compiled graphs (Inductor's on-disk cache across processes) instead of compiling them
    again. The fused decode attention reads only the positions filled so far."""
    step = min(max(256, 1 << (needed - 1).bit_length()), 1024)
    return min(-(-needed // step) * step, limit)


def compile_regions(model: Transformer) -> None:
    """Regional compilation: each transformer block is compiled, and one compile serves every layer
    (25 s for a 7B model on an H100, against 84 s compiling the whole step; BENCHMARKS.md); so are the
    final norm and the output layer. Prompts and verification passes (more than one token) share one
    graph with a dynamic length (Transformer.forward); two for int8 on CUDA, up to 16 tokens and more
    (kernels.int8_linear). Compiling an already compiled model does nothing."""
    import torch._inductor.config as inductor_config

    if "TORCHINDUCTOR_COORDINATE_DESCENT_TUNING" not in os.environ:  # the user's setting wins
        inductor_config.coordinate_descent_tuning = True  # tunes the matrix-vector kernels' block sizes
    if "TORCHINDUCTOR_ENABLE_PDL" not in os.environ and hasattr(inductor_config.triton, "enable_pdl"):  # Hopper+:
        inductor_config.triton.enable_pdl = True  # programmatic dependent launch: a kernel starts while the one
        # before it finishes, hiding most of the ~1 us between kernels (8% faster bf16 decode, BENCHMARKS.md)
    inductor_config.triton.unique_kernel_names = True  # readable names in profiles
    # A warm process must not tune again what its cache marks as tuned. Inductor (torch 2.11) loses that mark
    # whenever it copies or pickles a config (triton.Config's __setstate__ keeps only its own fields): for the smaller
    # reduction block it tries beside a cached one (dynamic_scale_rblock) and for kernels back from its compile
    # workers (PyTorch #181292); 2-10 s of tuning again in many warm processes (BENCHMARKS.md runs 45-53). Both are
    # off; coordinate descent still tunes. (On the CPU the workers stay: they build C++ in parallel.)
    if "TORCHINDUCTOR_DYNAMIC_SCALE_RBLOCK" not in os.environ:
        inductor_config.dynamic_scale_rblock = False
    if model.tok_embeddings.weight.is_cuda and "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        inductor_config.compile_threads = 1
    # Triton's on-disk cache keys a kernel by the ptxas that builds it, and Inductor switches Triton to torch's own
    # ptxas only when it compiles a kernel: in a process that loads every graph from the cache it never does, so
    # Triton built all 19 kernels of a 7B step again there (3 s; BENCHMARKS.md run 55). Switch it first, everywhere.
    try:
        from torch._inductor.runtime.compile_tasks import _set_triton_ptxas_path

        _set_triton_ptxas_path()
    except ImportError:  # a torch without it
        pass
    for layer in model.layers:
        if layer._compiled_call_impl is None:
            layer.compile(fullgraph=True)
    if "head" not in vars(model):  # the final norm and output layer, as one graph: Inductor then makes the output
        model.head = torch.compile(model.head, fullgraph=True)  # product its own kernel (faster than cuBLAS's)


def compile_steps(compile_decode: bool, compile_prefill: bool, model: Transformer):
    """The (prefill, decode) callables, compiled as asked (compile_regions); on CUDA the decode step is
    then recorded into one CUDA graph (CUDAGraphStep). Held as values, never rebound globals."""
    if not (compile_decode or compile_prefill):
        return prefill, decode_one_token
    compile_regions(model)
    sample_fn = torch.compile(sample, fullgraph=True)  # the sampling ops fuse into a few kernels

    def decode(model, x, input_pos, **sampling):
        return sample_fn(model(x, input_pos)[:, -1], **sampling)

    return prefill, (CUDAGraphStep(decode) if compile_decode else decode)


class CUDAGraphStep:
    """fn(model, *tensors, **options), recorded into a CUDA graph once per model, cache, input shapes and
    options, then replayed (on other devices fn is simply called).

    One replay launches all of a step's few hundred kernels at once; at batch 1, launching them one by
    one from Python would take longer than running them. The result is overwritten by the next replay:
    callers clone what they keep.
    """

    def __init__(self, fn):
        self.fn, self.graphs = fn, {}

    def __call__(self, model, *tensors: Tensor | None, **options):
        cache = model.layers[0].attention.kv_cache.k
        if not cache.is_cuda:
            return self.fn(model, *tensors, **options)
        shapes = tuple(None if t is None else tuple(t.shape) for t in tensors)
        key = (id(model), cache.data_ptr(), tuple(cache.shape), shapes, tuple(sorted(options.items())))
        if key not in self.graphs:
            self.graphs[key] = self.record(model, [None if t is None else t.clone() for t in tensors], options)
        graph, static, out = self.graphs[key]
        for s, t in zip(static, tensors):
            if t is not None:
                s.copy_(t)
        graph.replay()
        return out

    def record(self, model, static, options):
        rng = torch.cuda.get_rng_state()  # recording must not shift the random stream a seeded run sees
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up runs compile and autotune outside the capture;
            for _ in range(2):  # they write the same cache positions the real step writes next
                self.fn(model, *static, **options)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.fn(model, *static, **options)
        torch.cuda.set_rng_state(rng)
        return graph, static, out


@torch.no_grad()
def generate(model: Transformer, prompts: list[list[int]], max_new_tokens: int, *, eos_ids=(),
             prefill_fn=prefill, decode_fn=decode_one_token, callback=None, **sampling) -> list[list[int]]:
    """Generate up to max_new_tokens after each prompt; return the new tokens of each row.

    Prompts of different lengths are left-padded into one batch; each row stops at its first EOS
    (the EOS is not returned). callback(step, tokens) receives each step's tokens (a list, one per row).
    The caller has set up caches for at least len(prompts) rows and the longest prompt + max_new_tokens.
    """
    device = model.tok_embeddings.weight.device
    B, T = len(prompts), max(len(p) for p in prompts)
    if T + max_new_tokens > model.max_seq_len:
        raise UsageError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds the cache of "
                         f"{model.max_seq_len} tokens: shorten the prompt or lower --max_new_tokens")
    idx = torch.tensor([[0] * (T - len(p)) + p for p in prompts], device=device)  # (B, T) left-padded
    model.row_start[:B].copy_(torch.tensor([T - len(p) for p in prompts]))
    next_tok = prefill_fn(model, idx, torch.arange(T, device=device), **sampling)
    out, done = [[] for _ in range(B)], [False] * B
    input_pos = torch.tensor([T], device=device)
    cuda = device.type == "cuda"

    def launch_next() -> Tensor:  # clone: a CUDA-graph output is overwritten by the next replay
        following = decode_fn(model, next_tok.view(B, 1), input_pos, **sampling).clone()
        input_pos.add_(1)
        return following

    for step in range(max_new_tokens):
        # On CUDA the device runs the next step while this step's tokens travel to the host and Python handles
        # them: the next step is launched before they are read (it takes them on the device), so the device does
        # not wait for the host between steps unless the host's work takes longer than a step. That wait was
        # 0.13-0.25 ms of a 4.8 ms 7B step on an H100; without it bench.py measured 1.6% more tokens/s at batch
        # 1, 2.4% at batch 8 (BENCHMARKS.md). At an EOS the step already launched is wasted.
        host = next_tok.to("cpu", non_blocking=cuda)  # into pinned memory, in stream order
        if cuda:
            copied = torch.cuda.Event()
            copied.record()
            if step < max_new_tokens - 1:
                following = launch_next()
            copied.synchronize()  # this step's tokens only, not the step just launched
        tokens = host.tolist()
        keep_tokens(tokens, out, done, eos_ids)
        if callback is not None:
            callback(step, tokens)
        if all(done) or step == max_new_tokens - 1:
            break
        next_tok = following if cuda else launch_next()
    model.row_start.zero_()
    return out


def keep_tokens(tokens: list[int], out: list[list[int]], done: list[bool], eos_ids) -> None:
    """Append one step's token of each row to out, except after (and including) the row's first EOS."""
    for row, tok in enumerate(tokens):
        if not done[row]:
            done[row] = tok in eos_ids
            if not done[row]:
                out[row].append(tok)


# ------------------------------------------------------------------------------------ loading
def load(checkpoint: str | Path, device: str = "cpu", dtype: torch.dtype = torch.bfloat16):
    """(model, tokenizer) from a checkpoint directory; raises CheckpointError with a clear message."""
    path = checkpoint_dir(checkpoint)
    tokenizer = Tokenizer(path)
    model = Transformer.from_pretrained(path, device=device, dtype=dtype)
    return model, tokenizer


def weight_bytes(model: Transformer) -> int:
    """Bytes of weights one decode step reads: every parameter and quantized buffer, but from the
    embedding table only one row (unless it is tied to the output layer, which reads it all)."""
    total = sum(t.numel() * t.element_size() for t in model.parameters())
    total += sum(b.numel() * b.element_size() for n, b in model.named_buffers()
                 if not (n.endswith((".k", ".v")) or n.startswith(("rope_", "row_start"))))
    if not model.args.tie_embeddings:
        emb = model.tok_embeddings.weight
        total -= emb.numel() * emb.element_size()
    return total


# ---------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None,
                   help=f"checkpoint directory (default: {DEMO_CHECKPOINT.relative_to(Path(__file__).parent)})")
    p.add_argument("--prompt", action="append", help="prompt text; repeat for a batch of prompts")
    p.add_argument("--prompt_file", type=Path, help="file with one prompt per line (a batch)")
    p.add_argument("--max_new_tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    p.add_argument("--top_k", type=int, default=200, help="0 disables")
    p.add_argument("--top_p", type=float, default=1.0, help="1.0 disables")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num_samples", type=int, default=1, help="generate this many times (timed separately)")
    p.add_argument("--batch_size", type=int, default=1, help="repeat a single prompt into a batch")
    p.add_argument("--compile", action="store_true", help="compile the decode step with CUDA graphs")
    p.add_argument("--compile_prefill", action="store_true", help="compile prefill (dynamic shapes)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--chat", action="store_true", help="multi-turn chat in the terminal (chat.py)")
    p.add_argument("--system", default=None, help="system prompt for --chat")
    p.add_argument("--draft_checkpoint", type=Path, default=None, help="draft model for speculative decoding")
    p.add_argument("--speculate_k", type=int, default=5, help="tokens the draft proposes per verification")
    p.add_argument("--prompt_lookup", type=int, default=0,
                   help="speculate without a draft model: match the last N tokens in the text so far")

    return one_line_errors(p)


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make argparse report a bad flag as one 'error: ...' line with status 2, without the usage dump."""
    def error(message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)

    parser.error = error
    return parser


def check_checkpoint_and_device(args) -> None:
    """Default --checkpoint to the demo model (or say how to get it); refuse --device cuda without a GPU."""
    if args.checkpoint is None:
        if not DEMO_CHECKPOINT.is_dir():
            raise UsageError("no --checkpoint given and no demo model: run ./scripts/demo.sh, or pass --checkpoint DIR")
        args.checkpoint = DEMO_CHECKPOINT
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA GPU is available: use --device cpu")


def check_args(args) -> None:
    check_checkpoint_and_device(args)
    if args.max_new_tokens < 1:
        raise UsageError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UsageError(f"--temperature must be a number >= 0 (0 is greedy), got {args.temperature}")
    if args.top_k < 0:
        raise UsageError(f"--top_k must be >= 0 (0 disables), got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top_p must be in (0, 1], got {args.top_p}")
    if args.num_samples < 1 or args.batch_size < 1:
        raise UsageError("--num_samples and --batch_size must be >= 1")
    if args.speculate_k < 1:
        raise UsageError(f"--speculate_k must be >= 1, got {args.speculate_k}")
    if args.prompt_lookup < 0:
        raise UsageError(f"--prompt_lookup must be >= 1 (the n-gram length), got {args.prompt_lookup}")
    if args.draft_checkpoint is not None and args.prompt_lookup:
        raise UsageError("--draft_checkpoint and --prompt_lookup are alternatives: pass one of them")
    if args.system is not None and not args.chat:
        raise UsageError("--system is the system prompt of --chat: add --chat, or drop --system")
    if args.chat and (args.prompt or args.prompt_file):
        raise UsageError("--chat reads its messages from the terminal: drop --prompt and --prompt_file")


def read_prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompt_file is not None:
        try:
            prompts += [line for line in args.prompt_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError as e:
            raise UsageError(f"cannot read --prompt_file {args.prompt_file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--prompt_file {args.prompt_file} is not UTF-8 text: save it as UTF-8") from None
    if not prompts:
        prompts = ["Once upon a time"] if args.prompt is None and args.prompt_file is None else [""]
    if any(not p for p in prompts):
        raise UsageError("empty prompt: pass some text with --prompt")
    if len(prompts) > 1 and args.batch_size > 1:
        raise UsageError("--batch_size repeats one prompt; with several prompts the batch is the prompts")
    return prompts * args.batch_size


def main(argv=None, load_fn=load, args=None) -> None:
    """The CLI; load_fn(checkpoint, device, dtype) -> (model, tokenizer) lets tp.py load a shard, and args lets it
    pass the flags it parsed (generate.py's and its own)."""
    args = args or build_parser().parse_args(argv)
    check_args(args)
    prompts = read_prompts(args)
    device = args.device
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    if args.chat:  # refuse a checkpoint without a chat format before its weights load
        from chat import detect_format

        detect_format(args.checkpoint, Tokenizer(args.checkpoint))
    t0 = time.perf_counter()
    model, tokenizer = load_fn(args.checkpoint, device, dtype)
    if hasattr(model, "quantization") and (len(prompts) > 1 or args.draft_checkpoint or args.prompt_lookup):
        from quantize import pack_for_device  # steps of several rows: on CUDA int4 is faster in PyTorch's kernel

        pack_for_device(model, "tinygemm")
    print(f"Loaded {args.checkpoint} in {time.perf_counter() - t0:.2f} s", file=sys.stderr)

    encoded = [tokenizer.encode(p) for p in prompts]
    longest = max(len(e) for e in encoded)
    if not args.chat and longest + args.max_new_tokens > model.args.max_seq_len:  # (a chat stops when it is full)
        raise UsageError(f"prompt ({longest} tokens) + --max_new_tokens ({args.max_new_tokens}) exceeds the "
                         f"model's context of {model.args.max_seq_len}: shorten the prompt or lower --max_new_tokens")
    model.setup_caches(len(encoded), cache_length(longest + args.max_new_tokens, model.args.max_seq_len))
    sampling = dict(temperature=args.temperature, top_k=args.top_k or None,
                    top_p=args.top_p if args.top_p < 1 else None)
    prefill_fn, decode_fn = compile_steps(args.compile, args.compile_prefill, model)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    if args.chat:
        from chat import chat_loop

        return chat_loop(args, model, tokenizer, prefill_fn=prefill_fn, decode_fn=decode_fn, **sampling)
    gen = generate  # speculative.py supplies a drop-in replacement with the same signature
    if args.draft_checkpoint is not None or args.prompt_lookup:
        from speculative import speculative_generator

        gen = speculative_generator(args, model, tokenizer, device, dtype, load_fn)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    if args.compile or args.compile_prefill:  # compile (and record CUDA graphs) outside the timed runs
        t0 = time.perf_counter()
        gen(model, encoded, min(args.max_new_tokens, 3), prefill_fn=prefill_fn, decode_fn=decode_fn, **sampling)
        sync()
        print(f"Compiled in {time.perf_counter() - t0:.2f} s", file=sys.stderr)
        if args.seed is not None:
            torch.manual_seed(args.seed)
    n_bytes = weight_bytes(model)
    for i in range(args.num_samples):
        stream = StreamDecoder(tokenizer, context=encoded[0][-1:]) if len(encoded) == 1 else None
        first = []

        def on_token(step, tokens):  # tokens are on the host: this step is done on the device
            if step == 0:
                first.append(time.perf_counter())
                if stream is not None:  # the prompt, once generation is under way (not before a late error)
                    print(prompts[0], end="", flush=True)
            if stream is not None and tokens[0] not in tokenizer.eos_ids:
                print(stream.put(tokens[0]), end="", flush=True)

        sync()
        t0 = time.perf_counter()
        out = gen(model, encoded, args.max_new_tokens, eos_ids=tokenizer.eos_ids, prefill_fn=prefill_fn,
                       decode_fn=decode_fn, callback=on_token, **sampling)
        sync()
        t1 = time.perf_counter()
        if stream is None:
            for ids, row in zip(encoded, out):  # decoded with the prompt: SentencePiece drops a leading space
                print(f"--- {tokenizer.decode(ids + row)}")
        else:
            print()
        n = max(len(r) for r in out)
        tok_s = (n - 1) / (t1 - first[0]) if n > 1 else float("nan")
        stats = (f"Sample {i + 1}: {sum(len(r) for r in out)} tokens in {t1 - t0:.2f} s, "
                 f"time to first token {1000 * (first[0] - t0):.1f} ms, decode {tok_s:.1f} tok/s per row")
        if device == "cuda":
            stats += (f", {n_bytes * tok_s / 1e9:.0f} GB/s of weights, "
                      f"peak memory {torch.cuda.max_memory_allocated() / 1e9:.2f} GB")
        print(stats, file=sys.stderr)


def check_output_dir(path: Path, flag: str) -> None:
    """Refuse an output folder that cannot be made before any work: the nearest existing folder above it must be a
    writable directory (quantize.py, scripts/convert_gguf.py, scripts/download.py)."""
    above = next(p for p in Path(path).absolute().parents if p.exists())
    if not (above.is_dir() and os.access(above, os.W_OK | os.X_OK)):
        raise UsageError(f"{flag} {path}: cannot make it under {above} (not a writable directory): choose another place")


def usual_permissions(folder: Path) -> None:
    """Give a folder written to be renamed into place, and its files, the permissions the umask gives new files:
    mkdtemp and safetensors create theirs private (quantize.py, scripts/convert_gguf.py)."""
    umask = os.umask(0)
    os.umask(umask)
    for f in [folder, *folder.iterdir()]:
        os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)


def run(main_fn, *args) -> None:
    """Run a CLI entry point: user errors print one line and exit with status 2, no traceback."""
    try:
        main_fn(*args)
    except (UsageError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # the reader of stdout went away (e.g. `| head`): stop quietly, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush fails no more
        sys.exit(141)


if __name__ == "__main__":
    import generate  # the importable module: other files raise its UsageError, not __main__'s

    generate.run(generate.main)
