"""Tensor parallelism: torchrun --standalone --nproc_per_node=N tp.py --checkpoint DIR [generate.py's flags]

Megatron-style: every layer is split across the N ranks (one GPU each, NCCL; or CPU processes, gloo).
Attention is split by heads (each rank's wqkv holds its query heads and their key/value heads) and
the FFN's gate/up projection by columns; the attention output (wo) and down projection (w2) are split
by rows, so each rank holds a partial sum. Each rank keeps its own part of the residual stream (rank 0's
starts as the embedding, the others' as zeros, and each adds its partial sums), and the parts are summed
where a norm reads the stream: one all-reduce before each norm, two per layer and one before the output
layer (with --all_reduce symm_mem, one kernel with the norm).
With fewer key/value heads than ranks, each key/value head is replicated on the ranks whose query
heads use it. The embedding, the norms and the output layer are replicated: the embedding reads one
row per token, and a replicated output layer gives every rank the full logits, so every rank samples
the same token (same seed everywhere) with no collective beyond the norms'; sharding the output
layer would save its 1/N share of the weights (2% of Llama-2-7B) at the cost of another collective.

Each rank builds its shard on the meta device from the checkpoint's config.json with the rank's head
counts and FFN width (a plain Transformer of the shard's shapes, with the norms made AllReduceRMSNorm),
then reads only its slices from the safetensors files. The rest (prompts, sampling, compile, speculation,
output) is generate.py's main(), run on every rank; ranks other than 0 print nothing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import sys
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor, nn

import generate
import kernels as K
from generate import UsageError
from model import (CheckpointError, ModelArgs, RMSNorm, Transformer, assign_weights, checkpoint_dir,
                   fuse_parts, hf_to_ours, read_config, safetensors_files)
from tokenizer import Tokenizer

COLUMN_PARALLEL = (".attention.wqkv.", ".feed_forward.w13.")  # output features split: q/k/v heads, gate/up
ROW_PARALLEL = (".attention.wo.", ".feed_forward.w2.")  # input features split: partial sums, then all-reduce


def _is(name: str, kinds: tuple[str, ...]) -> bool:
    return any(k in name for k in kinds)


def shard_args(args: ModelArgs, world_size: int) -> ModelArgs:
    """The shapes of one rank's shard; raise CheckpointError if the model cannot be split world_size ways."""
    H, KV, ffn = args.n_heads, args.n_kv_heads, args.intermediate_size
    problems = []
    if H % world_size:
        problems.append(f"{H} attention heads")
    if KV % world_size and world_size % KV:  # KV < N is fine when each head is replicated on N / KV ranks
        problems.append(f"{KV} key/value heads (need a multiple or a divisor of the world size)")
    if ffn % world_size:
        problems.append(f"FFN size {ffn}")
    if problems:
        raise CheckpointError(f"cannot split {' and '.join(problems)} across {world_size} ranks: "
                              f"choose a --nproc_per_node that divides them")
    return dataclasses.replace(args, n_heads=H // world_size, n_kv_heads=max(KV // world_size, 1),
                               intermediate_size=ffn // world_size)


def shard_range(name: str, part: int, shape, rank_shape, args: ModelArgs, rank: int, world_size: int):
    """(axis, start, stop) of this rank's slice of a stored tensor, or None if every rank holds it all.

    name: our tensor name; part: its index in a fused tensor (0 q, 1 k, 2 v; 0 gate, 1 up); shape: the
    stored (part) tensor's shape; rank_shape: the shape the rank's model has for the whole tensor.
    Column-parallel tensors are split on axis 0 (output features, for weights, biases and quantization
    scales alike); row-parallel ones on the one axis where the shard is smaller, so quantized layouts
    (packed int4, per-group scales) split along their own input axis, on group boundaries.
    """
    if _is(name, COLUMN_PARALLEL):
        if ".wqkv." in name and part > 0 and args.n_kv_heads < world_size:
            kv = rank * args.n_kv_heads // world_size  # the key/value head this rank's query heads use
            lo, hi, den = kv, kv + 1, args.n_kv_heads
        else:
            lo, hi, den = rank, rank + 1, world_size
        return 0, shape[0] * lo // den, shape[0] * hi // den
    if _is(name, ROW_PARALLEL):
        axes = [a for a in range(len(shape)) if shape[a] != rank_shape[a]]
        if not axes:
            return None  # per-output-channel scales, bias
        if len(axes) > 1 or shape[axes[0]] != rank_shape[axes[0]] * world_size:
            raise CheckpointError(f"tensor {name} of shape {tuple(shape)} cannot be split {world_size} ways "
                                  f"into shards of shape {tuple(rank_shape)} (quantization groups must not "
                                  f"straddle ranks): choose another --nproc_per_node or group size")
        a, size = axes[0], rank_shape[axes[0]]
        return a, rank * size, (rank + 1) * size
    return None  # embedding, norms, output layer: replicated


def _take(t, rng):
    """t[rng] for a tensor or a safetensors slice; rng from shard_range."""
    if rng is None:
        return t[:] if not isinstance(t, Tensor) else t
    axis, start, stop = rng
    return t[(slice(None),) * axis + (slice(start, stop),)]


def _all_reduce(x: Tensor) -> Tensor:
    # Functional collective: traced by torch.compile as a graph node (no graph break, CUDA-graph safe).
    return funcol.all_reduce(x, "sum", dist.group.WORLD)


class AllReduceRMSNorm(RMSNorm):
    """RMSNorm of the sum over ranks of its input. Each rank holds a part of the residual stream (rank 0 the
    embedding; every rank its attention and FFN outputs, which its wo and w2 add to its part), summed only where a
    norm reads it: two all-reduces a layer, and one before the output layer. With symm_mem (batch-1 decode on CUDA:
    symm, the key of its buffers) the all-reduce and the norm are one kernel (kernels._all_reduce_kernel with NORM)."""

    def __init__(self, norm: RMSNorm, symm: tuple | None = None):
        nn.Module.__init__(self)
        self.weight, self.eps, self.symm = norm.weight, norm.eps, symm
        self.group = dist.group.WORLD.group_name if symm is not None else None

    def forward(self, x: Tensor, into: nn.Module | None = None) -> Tensor:
        if self.symm is not None and (x.numel(), x.dtype, x.device) == self.symm:
            return torch.ops.gptfast.symm_mem_rms_norm(x, self.weight, self.eps, self.group)
        return super().forward(_all_reduce(x), into)


# The symmetric buffers, one per (size, dtype, device), made and exchanged between ranks once, with the
# kernel's call counters. The all-reduce is a custom op so that torch.compile sees one opaque call; it declares
# no mutation although it counts calls and writes to the other ranks, which is safe as long as no call is merged
# with another or dropped: each has its own input and its output is used.
_symm_bufs: dict = {}


def symm_mem_buffers(dim: int, dtype, device, group: str, block: int | None = None) -> tuple:
    """A new buffer in symmetric memory for kernels.all_reduce_launch: two sets of world slots of dim values (in
    int64 words, zero: no call's yet); with the rendezvous handle (which maps every rank's buffer into this
    process), the int64 address of each rank's buffer and the kernel's call counters (zero). A collective call."""
    import torch.distributed._symmetric_memory as symm_mem

    world, block = dist.get_world_size(), block or K.AR_BLOCK
    buf = symm_mem.empty(2 * world * K.ar_words(dim, dtype), dtype=torch.int64, device=device)
    buf.zero_()
    torch.cuda.synchronize(device)  # zero before any peer can write to it
    handle = symm_mem.rendezvous(buf, group)
    assert handle.buffer_ptrs[handle.rank] == buf.data_ptr(), "the addresses are those of the buffers' starts"
    peers = torch.tensor(handle.buffer_ptrs, dtype=torch.int64, device=device)
    return buf, handle, peers, torch.zeros(K.triton.cdiv(dim, block), dtype=torch.int32, device=device)


@torch.library.custom_op("gptfast::symm_mem_rms_norm", mutates_args=())
def symm_mem_rms_norm(x: Tensor, weight: Tensor, eps: float, group_name: str) -> Tensor:
    _, handle, peers, epoch = _symm_bufs[(x.numel(), x.dtype, x.device)]
    block, num_warps = K.norm_block(x.numel())
    return K.all_reduce_launch(x.reshape(-1).contiguous(), peers, epoch, handle.rank, block, num_warps,
                               weight, eps).view(x.shape)


@symm_mem_rms_norm.register_fake
def _(x, weight, eps, group_name):
    return torch.empty_like(x)


def set_all_reduce(model: Transformer, all_reduce: str = "nccl") -> Transformer:
    """Make the model's norms (or remake them) AllReduceRMSNorm for all_reduce; a shard built on the meta device
    gets symm_mem's once it is on the GPU, for its dtype and device. With symm_mem the 16-bit wqkv, w13 and output
    layer stay Inductor's products (now with no norm to fuse in): faster end to end than kernels.py's GEMV there
    (2-GPU 7B bf16 426.9 and 430.8 tok/s against 415.9 and 417.5, BENCHMARKS.md run 171)."""
    if all_reduce not in ("nccl", "symm_mem"):
        raise UsageError(f"unknown all-reduce {all_reduce!r}: choose nccl or symm_mem")
    emb, symm = model.tok_embeddings.weight, None
    if all_reduce == "symm_mem":
        if emb.device.type != "cuda":
            raise UsageError(f"--all_reduce symm_mem needs the model on a CUDA device, not {emb.device}: build a "
                             "meta shard with the NCCL all-reduce, move it to the GPU, then call tp.set_all_reduce")
        if K.triton is None:
            raise UsageError("--all_reduce symm_mem needs Triton (pip install triton), or use --all_reduce nccl")
        symm = (model.args.dim, emb.dtype, emb.device)
        if symm not in _symm_bufs:
            _symm_bufs[symm] = symm_mem_buffers(*symm, dist.group.WORLD.group_name, K.norm_block(model.args.dim)[0])
    for layer in model.layers:
        layer.attention_norm = AllReduceRMSNorm(layer.attention_norm, symm)
        layer.ffn_norm = AllReduceRMSNorm(layer.ffn_norm, symm)
    model.norm = AllReduceRMSNorm(model.norm, symm)
    return model


def _zeros(module, inputs, output: Tensor) -> Tensor:
    return torch.zeros_like(output)


def _rank0_holds(model: Transformer, rank: int) -> None:
    """Rank 0's part of the residual stream starts as the embedding, the others' as zeros; the row-parallel
    layers' biases stay on rank 0 (added once by the sum over ranks)."""
    if rank != 0:
        model.tok_embeddings.register_forward_hook(_zeros)
    for layer in model.layers:
        for linear in (layer.attention.wo, layer.feed_forward.w2):
            if rank != 0 and getattr(linear, "bias", None) is not None:
                linear.bias = None


def _dropped(name: str, rank: int) -> bool:
    return rank != 0 and _is(name, ROW_PARALLEL) and name.endswith(".bias")


def shard_model(model: Transformer, rank: int, world_size: int, all_reduce: str = "nccl") -> Transformer:
    """This rank's shard of an in-memory, unquantized model (any device, meta included), with the
    norms that all-reduce: a new Transformer of the shard's shapes holding copies of its slices.

    For benchmarks without a checkpoint: build a random model (on the meta device, then to_empty and
    initialise the shard; or on the GPU), call this in every rank after init_process_group, then
    setup_caches. To quantize, quantize the returned shard. From a checkpoint use from_pretrained_sharded.
    """
    args = model.args
    with torch.device("meta"):
        shard = Transformer(shard_args(args, world_size))
    full = model.state_dict()
    state = {}
    for name, target in shard.state_dict().items():
        if _dropped(name, rank) or (args.tie_embeddings and name == "output.weight"):
            continue
        t = full[name]
        if _is(name, COLUMN_PARALLEL):  # split the fused tensor into its parts
            heads = [args.n_heads, args.n_kv_heads, args.n_kv_heads] if ".wqkv." in name else [1, 1]
            parts = t.split([t.shape[0] // sum(heads) * h for h in heads])
            state[name] = torch.cat([_take(p, shard_range(name, i, p.shape, None, args, rank, world_size))
                                     for i, p in enumerate(parts)]).clone()
        else:
            state[name] = _take(t, shard_range(name, 0, t.shape, target.shape, args, rank, world_size)).clone()
    return _load_into(shard, state, rank, all_reduce)


def _load_into(shard: Transformer, state: dict[str, Tensor], rank: int, all_reduce: str, path="model") -> Transformer:
    """Leave the biases and the embedding to rank 0 (first: the check must not expect the biases), check and
    assign the rank's tensors, then make the norms all-reduce."""
    _rank0_holds(shard, rank)
    return set_all_reduce(assign_weights(shard, state, path), all_reduce)


def load_sharded(checkpoint: str | Path, device, dtype, rank: int, world_size: int, all_reduce: str = "nccl"):
    """(model shard, tokenizer) for this rank: generate.load's counterpart."""
    path = checkpoint_dir(checkpoint)
    tokenizer = Tokenizer(path)
    return from_pretrained_sharded(path, rank, world_size, device, dtype, all_reduce), tokenizer


def from_pretrained_sharded(path: str | Path, rank: int, world_size: int, device="cpu",
                            dtype=torch.bfloat16, all_reduce: str = "nccl") -> Transformer:
    """This rank's shard of a checkpoint, reading only its slices of the safetensors files."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    config = read_config(path)
    args = ModelArgs.from_hf_config(config)
    with torch.device("meta"):
        shard = Transformer(shard_args(args, world_size))
    if "quantization" in config:  # written by quantize.py: quantized layers of the shard's shapes
        from quantize import apply_quantization

        apply_quantization(shard, config["quantization"])
        for name, module in shard.named_modules():  # int4 groups run along input features
            group = getattr(module, "groupsize", None)
            if _is(name + ".", ROW_PARALLEL) and group and module.in_features % group:
                raise CheckpointError(f"{path}: {name} has {module.in_features} input features per rank, not a "
                                      f"multiple of the int4 group size {group}: use fewer ranks or a smaller "
                                      f"--groupsize in quantize.py")
    rank_shapes = {k: v.shape for k, v in shard.state_dict().items()}
    parts: dict[str, dict[int, Tensor]] = {}
    read = total = 0
    for file in safetensors_files(path):
        try:
            with safe_open(file, framework="pt", device="cpu") as f:
                for hf_name in f.keys():
                    name, index = hf_to_ours(hf_name)
                    if hf_name.endswith("rotary_emb.inv_freq") or _dropped(name, rank):
                        continue
                    sl = f.get_slice(hf_name)
                    # (a name the shard lacks is read whole and reported by _load_into)
                    rng = shard_range(name, index, sl.get_shape(), rank_shapes[name], args, rank, world_size) \
                        if name in rank_shapes else None
                    t = _take(sl, rng)  # reads only these bytes from the memory-mapped file
                    t = t.to(device, dtype if t.is_floating_point() else t.dtype)
                    parts.setdefault(name, {})[index] = t
                    read += t.numel() * t.element_size()
                    total += math.prod(sl.get_shape()) * t.element_size()
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"{file} is truncated or corrupt ({e}): re-download it") from None
    state = fuse_parts(parts, path)
    model = _load_into(shard, state, rank, all_reduce, path)
    if rank == 0:
        print(f"Rank 0 of {world_size}: {read / 1e6:.1f} MB of weights ({read / total:.0%} of the checkpoint's "
              f"{total / 1e6:.1f} MB)", file=sys.stderr)
    return model


# ---------------------------------------------------------------------------------------- CLI
def rank_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; UsageError when run without torchrun."""
    try:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    except (KeyError, ValueError):
        raise UsageError("RANK and WORLD_SIZE are not set: launch with torchrun --standalone "
                         "--nproc_per_node=N tp.py --checkpoint DIR ...") from None


def main(argv=None) -> None:
    """Check the split, join the process group, then run generate.py's main() with this rank's shard."""
    parser = generate.build_parser()
    parser.prog, parser.description = "tp.py", __doc__.splitlines()[0]
    parser.add_argument("--all_reduce", choices=["nccl", "symm_mem"], default="nccl",
                        help="nccl (gloo with --device cpu), or symm_mem: a one-kernel all-reduce through "
                             "symmetric memory for batch-1 decode (CUDA, one host, NVLink)")
    args = parser.parse_args(argv)
    rank, world_size, local_rank = rank_from_env()
    generate.check_args(args)
    if args.chat:
        raise UsageError("--chat is not supported with tensor parallelism: use generate.py --chat")
    if args.all_reduce == "symm_mem" and args.device != "cuda":
        raise UsageError("--all_reduce symm_mem needs --device cuda")
    shard_args(ModelArgs.from_hf_config(read_config(args.checkpoint)), world_size)  # fail before loading
    if args.device == "cuda":
        n_local = int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1))
        if torch.cuda.device_count() < n_local:  # checked on every rank, so that rank 0 reports it
            raise UsageError(f"{n_local} ranks on this host need {n_local} GPUs but {torch.cuda.device_count()} "
                             "are visible: lower --nproc_per_node")
        torch.cuda.set_device(local_rank)  # "cuda" now means this rank's GPU
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo")
    try:
        if args.seed is None:  # every rank must sample the same token: share rank 0's random seed
            seed = [random.randrange(2**31)]
            dist.broadcast_object_list(seed, src=0)
            args.seed = seed[0]
        # Ranks other than 0 run silently; an exception still reaches the caller.
        with contextlib.ExitStack() as quiet:
            if rank != 0:
                devnull = quiet.enter_context(open(os.devnull, "w"))
                quiet.enter_context(contextlib.redirect_stdout(devnull))
                quiet.enter_context(contextlib.redirect_stderr(devnull))
            generate.main(args=args, load_fn=partial(load_sharded, rank=rank, world_size=world_size,
                                                     all_reduce=args.all_reduce))
    finally:
        # With gloo (torch 2.13), destroy_process_group after functional collectives aborted a process
        # ("terminate called without an active exception") in about 1 run in 10; exit releases it too.
        if args.device == "cuda":
            dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
        # The work is done and flushed: skip interpreter teardown, where gloo's threads sometimes abort
        # the process ("terminate called without an active exception", torch 2.13) and fail the run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    except (UsageError, CheckpointError) as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # as generate.run
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
