"""Tensor parallelism on CPU: torchrun with gloo processes must reproduce single-process output.

Run as a script under torchrun (see _torchrun) this file is also the worker that writes rank 0's logits.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
GREEDY = ["--device", "cpu", "--temperature", "0", "--max_new_tokens", "48", "--prompt", "Once upon a time"]


def _torchrun(n: int, *args, timeout=120, env=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([*TORCHRUN, f"--nproc_per_node={n}", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def single_greedy(stories_dir):
    from conftest import run_cli

    r = run_cli("generate.py", "--checkpoint", stories_dir, *GREEDY)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("n, flags", [(2, ["--compile"]), (4, [])])
def test_greedy_text_equals_single_process(stories_dir, single_greedy, n, flags):
    # The published greedy text of stories260K (its README) starts the same way: an independent check.
    assert single_greedy.startswith("Once upon a time, there was a little girl named Lily. She loved to play")
    # --compile: generate.py's compiled blocks (fullgraph) with the all-reduces inside, on the CPU; Dynamo prints
    # the code of each graph it makes (TORCH_LOGS=graph_code), which must hold the all-reduce
    compiled = "--compile" in flags
    r = _torchrun(n, "tp.py", "--checkpoint", stories_dir, *GREEDY, *flags,
                  env={"TORCH_LOGS": "graph_code"} if compiled else None)
    assert r.returncode == 0, r.stderr
    assert r.stdout == single_greedy  # only rank 0 printed
    assert not compiled or any("[__graph_code]" in line and "_c10d_functional.all_reduce(" in line
                               for line in r.stderr.splitlines()), "no compiled graph holds an all-reduce"
    assert f"Rank 0 of {n}:" in r.stderr and r.stderr.count("Sample 1:") == 1


def test_sampling_with_seed_equals_single_process(stories_dir):
    from conftest import run_cli

    flags = ["--checkpoint", stories_dir, "--device", "cpu", "--max_new_tokens", "40", "--seed", "3",
             "--temperature", "1.0", "--prompt", "Once upon a time"]
    single = run_cli("generate.py", *flags)
    r = _torchrun(2, "tp.py", *flags)
    assert r.returncode == 0, r.stderr
    assert r.stdout == single.stdout


def test_int8_checkpoint_equals_single_process(stories_dir, tmp_path):
    from conftest import run_cli

    from model import Transformer
    from quantize import quantize_model, write_checkpoint

    # Row-parallel int8 layers split their columns; their per-output-channel scales are replicated.
    write_checkpoint(quantize_model(Transformer.from_pretrained(stories_dir, "cpu", torch.float32), "int8"),
                     stories_dir, tmp_path / "int8")
    single = run_cli("generate.py", "--checkpoint", tmp_path / "int8", *GREEDY)
    r = _torchrun(4, "tp.py", "--checkpoint", tmp_path / "int8", *GREEDY)
    assert r.returncode == 0, r.stderr
    assert r.stdout == single.stdout and single.stdout.startswith("Once upon a time, there was a little girl")


def test_draft_model_equals_single_process(stories_dir, single_greedy):
    # Greedy speculative decoding gives exactly the greedy text.
    r = _torchrun(2, "tp.py", "--checkpoint", stories_dir, *GREEDY, "--draft_checkpoint", stories_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout == single_greedy and "Speculative: acceptance 100.0%" in r.stderr


def _worker(out: str, *checkpoints: str) -> None:
    """Under torchrun: rank 0 saves prefill logits and cached decode logits of each checkpoint, sharded
    by from_pretrained_sharded (slices read from the files) and, for float checkpoints, by shard_model
    (from an in-memory model, also quantized afterwards)."""
    import torch.distributed as dist

    from model import Transformer, read_config
    from quantize import quantize_model
    from tp import from_pretrained_sharded, shard_model

    dist.init_process_group("gloo")
    rank, n = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    idx = torch.randint(0, 97, (2, 24))
    results = {}
    for ckpt in checkpoints:
        models = {"files": from_pretrained_sharded(ckpt, rank, n, "cpu", torch.float32)}
        full = Transformer.from_pretrained(ckpt, "cpu", torch.float32)
        if "quantization" not in read_config(Path(ckpt)):
            models["in_memory"] = shard_model(full, rank, n)
            # quantized after sharding (as a benchmark would): the norms that all-reduce must survive
            models["in_memory_int8"] = quantize_model(shard_model(full, rank, n), "int8")
        for route, model in models.items():
            with torch.no_grad():
                model.setup_caches(2, 32)
                results[f"{Path(ckpt).name}/{route}"] = model(idx, torch.arange(24))
                # fullgraph: the collectives cause no graph break (compiled once per checkpoint, for time)
                decode = torch.compile(model, fullgraph=True, backend="aot_eager") if route == "files" else model
                steps = [model(idx[:, :8], torch.arange(8))]
                steps += [decode(idx[:, t:t + 1], torch.tensor([t])) for t in range(8, 24)]
                results[f"{Path(ckpt).name}/{route}/decode"] = torch.cat(steps, 1)
    if rank == 0:
        torch.save(results, out)  # no destroy_process_group: see tp.main


def test_logits_match_single_process(tmp_path):
    from conftest import write_hf_checkpoint

    from model import Transformer
    from quantize import quantize_model, write_checkpoint

    # 4 query heads and 2 key/value heads on 4 ranks: each key/value head lives on 2 ranks.
    # attention_bias gives q/k/v biases (split) and an output bias (added on rank 0 only).
    ref = write_hf_checkpoint(tmp_path / "float", num_key_value_heads=2, attention_bias=True)
    # int4 with groups of 32: 4 ranks get 32 of wo's 128 and 32 of w2's 128 input features each.
    write_hf_checkpoint(tmp_path / "src", head_dim=32, intermediate_size=128, tie_word_embeddings=True, seed=1)
    model = quantize_model(Transformer.from_pretrained(tmp_path / "src", "cpu", torch.float32), "int4", 32)
    write_checkpoint(model, tmp_path / "src", tmp_path / "int4")
    r = _torchrun(4, __file__, tmp_path / "logits.pt", tmp_path / "float", tmp_path / "int4")
    assert r.returncode == 0, r.stderr
    torch.manual_seed(0)
    idx = torch.randint(0, 97, (2, 24))
    with torch.no_grad():
        expected = {"float": ref(idx).logits}  # Hugging Face transformers
        int4 = Transformer.from_pretrained(tmp_path / "int4", "cpu", torch.float32)  # one process
        int4.setup_caches(2, 32)
        expected["int4"] = int4(idx, torch.arange(24))
    results = torch.load(tmp_path / "logits.pt", weights_only=True)
    assert len(results) == 8
    for name, logits in results.items():
        err = (logits - expected[name.split("/")[0]]).abs().max()
        # int8 shards quantize each rank's columns on their own: close to the float model, not equal
        assert err <= (1e-2 if "int8" in name else 1e-4), name


def test_int4_groups_must_not_straddle_ranks(tmp_path):
    from conftest import write_hf_checkpoint

    from model import CheckpointError, Transformer
    from quantize import quantize_model, write_checkpoint
    from tp import from_pretrained_sharded

    # wo has 4 heads x 16 = 64 input features: 4 ranks would get 16 each, half a group of 32.
    write_hf_checkpoint(tmp_path / "src", intermediate_size=128, tie_word_embeddings=True)
    model = quantize_model(Transformer.from_pretrained(tmp_path / "src", "cpu", torch.float32), "int4", 32)
    write_checkpoint(model, tmp_path / "src", tmp_path / "int4")
    with pytest.raises(CheckpointError, match="layers.0.attention.wo has 16 input features per rank, not a "
                                              "multiple of the int4 group size 32"):
        from_pretrained_sharded(tmp_path / "int4", 0, 4)
    assert from_pretrained_sharded(tmp_path / "int4", 1, 2).layers[0].attention.wo.in_features == 32


def test_invalid_split_and_missing_environment(stories_dir):
    from conftest import run_cli

    from model import CheckpointError, ModelArgs
    from tp import shard_args

    base = ModelArgs(dim=64, n_layers=1, n_heads=8, n_kv_heads=4, head_dim=8, intermediate_size=96, vocab_size=10)
    assert (shard_args(base, 8).n_heads, shard_args(base, 8).n_kv_heads) == (1, 1)  # KV heads replicated
    for overrides, word in [(dict(n_heads=6), "6 attention heads"), (dict(n_kv_heads=3), "3 key/value heads"),
                            (dict(intermediate_size=90), "FFN size 90")]:
        with pytest.raises(CheckpointError, match=word):
            shard_args(ModelArgs(**{**base.__dict__, **overrides}), 4)
    # stories260K (8 heads, 4 key/value heads, FFN 172) on 3 ranks: every rank fails before loading, rank 0 says why.
    r = _torchrun(3, "tp.py", "--checkpoint", stories_dir, *GREEDY)
    assert r.returncode != 0 and r.stdout == ""
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: cannot split 8 attention heads and 4 key/value heads (need a multiple or a divisor of "
                      "the world size) and FFN size 172 across 3 ranks: choose a --nproc_per_node that divides them"]
    r = run_cli("tp.py", "--checkpoint", stories_dir, *GREEDY)  # not under torchrun
    assert r.returncode == 2 and r.stderr.startswith("error: RANK and WORLD_SIZE are not set: launch with torchrun")
    assert "Traceback" not in r.stderr


def test_too_few_gpus_is_reported_by_every_rank(stories_dir, monkeypatch):
    """Rank 0 (the one that prints) must see it too, not only the ranks whose GPU is missing."""
    import tp
    from generate import UsageError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for k, v in dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="2").items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UsageError, match="2 ranks on this host need 2 GPUs but 1 are visible"):
        tp.main(["--checkpoint", str(stories_dir), "--device", "cuda"])


def test_abbreviated_all_reduce_flag_is_accepted(stories_dir, single_greedy):
    """tp.py's own flag, abbreviated as argparse allows, reaches no parser that does not know it."""
    for flag in (["--all_red", "nccl"], ["--all_reduce=nccl"]):
        r = _torchrun(2, "tp.py", "--checkpoint", stories_dir, *GREEDY, *flag)
        assert r.returncode == 0, r.stderr
        assert r.stdout == single_greedy


def test_set_all_reduce_replaces_the_norms(monkeypatch):
    """One all-reduce before each norm however often the norms are set (two would add the parts twice), and a world of
    one gives the full model's logits; symm_mem on a model that is not on a CUDA device is a clear error that leaves
    the norms as they were."""
    import tp
    from generate import UsageError
    from model import ModelArgs, Transformer

    torch.manual_seed(0)
    full = Transformer(ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, intermediate_size=128,
                                 vocab_size=32)).eval()
    calls = []
    monkeypatch.setattr(tp, "_all_reduce", lambda x: calls.append(x.shape) or x)  # the sum over a world of one
    shard = tp.set_all_reduce(tp.shard_model(full, 0, 1), "nccl")
    norms = [shard.norm, *(n for layer in shard.layers for n in (layer.attention_norm, layer.ffn_norm))]
    assert all(type(n) is tp.AllReduceRMSNorm for n in norms)
    with pytest.raises(UsageError, match="needs the model on a CUDA device"):
        tp.set_all_reduce(shard, "symm_mem")
    assert norms == [shard.norm, *(n for layer in shard.layers for n in (layer.attention_norm, layer.ffn_norm))]
    idx, pos = torch.tensor([[3, 1, 4]]), torch.arange(3)
    for model in (full, shard):
        model.setup_caches(1, 8)
    with torch.no_grad():
        torch.testing.assert_close(shard(idx, pos), full(idx, pos), rtol=1e-5, atol=1e-5)
    assert calls == [(1, 3, 64)] * 5  # two a layer, one before the output layer


ALL_REDUCE_CHECK = """
import sys, threading, time, torch, kernels as K
from model import rms_norm
# Three ranks' buffers in CPU memory; the kernel runs as rank 1, after ranks 0 and 2 have stored their rows in its
# buffer (the interpreter runs one kernel at a time, so the others are played by PyTorch), each word of 4 bytes of
# the row with the number of the call above them. With "norm", the kernel returns model.rms_norm of the sum, in one
# program. The norm runs in float16, where the kernel must round the sum before normalising, as model.rms_norm does.
# "sum16": float16 values, two a word, an odd width split between programs.
mode = sys.argv[1]
norm = mode == "norm"
N, world, block, rank = 999 if mode == "sum16" else 1000, 3, 1024 if norm else 256, 1
dtype = torch.float32 if mode == "sum" else torch.float16
w = (torch.rand(N) + 0.5).to(dtype)
P, NW = -(-N // block), K.ar_words(N, dtype)
bufs = [torch.zeros(2 * world * NW, dtype=torch.int64) for _ in range(world)]
peers = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.int64)
epoch = torch.zeros(P, dtype=torch.int32)
def slot(b, e, r):  # rank r's slot of call e's set in buffer b
    return b[((e & 1) * world + r) * NW:][:NW]
def words(x, e):  # little-endian: value 2i in the low 2 bytes of word i
    d = x.view(torch.int16) if dtype.itemsize == 2 else x.view(torch.int32)
    d = torch.cat([d, d.new_zeros(len(d) % (4 // dtype.itemsize))]).view(torch.int32)
    return (d.to(torch.int64) & 0xFFFFFFFF) | (torch.tensor(e, dtype=torch.int64) << 32)
def call(e, late=False):
    xs = [torch.randn(N).to(dtype) for _ in range(world)]
    for r in (0, 2):
        slot(bufs[rank], e, r).copy_(words(xs[r], e))
    if late:  # one word of rank 2 is still call e - 2's: the kernel must wait for it
        slot(bufs[rank], e, 2)[NW - 3] = words(torch.randn(N).to(dtype), e - 2)[NW - 3]
    before = [b.clone() for b in bufs]
    y = []
    launch = lambda: y.append(K.all_reduce_launch(xs[rank], peers, epoch, rank, block=block, num_warps=1,
                                                  weight=w if norm else None, eps=1e-5))
    t = threading.Thread(target=launch, daemon=True)  # (daemon: a kernel that never returns fails the test)
    t.start()
    if late:
        time.sleep(2)
        assert t.is_alive() and not y, "the kernel went on without the word of this call"
        slot(bufs[rank], e, 2)[NW - 3] = slot(before[rank], e, 2)[NW - 3] = words(xs[2], e)[NW - 3]
    t.join(120)
    assert not t.is_alive(), "the kernel is still waiting"
    y = y[0]
    if norm:  # the same bits, but where the sum of squares in another order than torch.mean's tips a rounding
        ref = rms_norm((xs[0].float() + xs[1].float() + xs[2].float()).to(dtype), w, 1e-5)
        torch.testing.assert_close(y, ref, rtol=2 ** -10, atol=0)
        assert (y == ref).float().mean() > 0.98, (y == ref).float().mean()
    else:  # in rank order, in float32
        ref = (xs[0].float() + xs[1].float() + xs[2].float()).to(dtype)
        assert torch.equal(y, ref), (y - ref).abs().max()
    for b, old in zip(bufs, before):  # rank 1 stored its row, with the call's number, in the other ranks' buffers
        if b is not bufs[rank]:    # and wrote nothing else
            assert torch.equal(slot(b, e, rank), words(xs[rank], e))
            slot(old, e, rank).copy_(slot(b, e, rank))
        assert torch.equal(b, old)
    assert epoch.tolist() == [e] * P
for e in (1, 2, 3):  # calls alternate between the two sets of slots
    call(e, late=e == 3)
epoch.fill_(2 ** 31 - 2)  # the count wraps around: 2^31 - 1, then -2^31, -2^31 + 1
for e in (2 ** 31 - 1, -2 ** 31, -2 ** 31 + 1):
    call(e)
print("ok")
"""


@pytest.mark.parametrize("mode", ["sum", "sum16", "norm"])
def test_all_reduce_kernel_in_interpreter(mode):
    """tp.py's symmetric-memory all-reduce kernel on CPU through Triton's interpreter: the sum in rank order (or the
    RMSNorm of the sum, as model.rms_norm computes it), the stores to the other ranks and nowhere else, the wait for
    every word of this call, the alternating slots, and the count wrapping around."""
    pytest.importorskip("triton")
    from conftest import run_cli

    r = run_cli("-c", ALL_REDUCE_CHECK, mode, env={"TRITON_INTERPRET": "1"})
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


if __name__ == "__main__":
    _worker(*sys.argv[1:])
    # As tp.py does: skip interpreter teardown, where gloo's threads sometimes abort a rank ("terminate
    # called without an active exception", seen in CI once in about 10 runs) after its work is done.
    import torch.distributed as dist

    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

