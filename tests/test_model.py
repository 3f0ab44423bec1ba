"""Logits parity with Hugging Face transformers, loaded through our loader, and loader errors."""
import json

import pytest
import torch
from conftest import run_cli, write_hf_checkpoint

from model import CheckpointError, ModelArgs, Transformer

CONFIGS = {
    "llama-gqa": ("llama", {}),
    "llama-mha-tied": ("llama", dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "llama-mqa": ("llama", dict(num_key_value_heads=1)),
    "llama-head-dim": ("llama", dict(head_dim=24)),  # head_dim * heads != hidden_size
    "llama-attention-bias": ("llama", dict(attention_bias=True)),
    "llama3-rope-scaling": ("llama", dict(rope_theta=500000.0, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16))),
    "mistral": ("mistral", dict(sliding_window=None)),
    "qwen2-bias-tied": ("qwen2", dict(tie_word_embeddings=True)),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    model_type, overrides = CONFIGS[request.param]
    path = tmp_path_factory.mktemp(request.param)
    shard = "40KB" if request.param == "llama-gqa" else None  # exercise the sharded index path once
    ref = write_hf_checkpoint(path, model_type, max_shard_size=shard, **overrides)
    if shard:
        assert (path / "model.safetensors.index.json").is_file()
    model = Transformer.from_pretrained(path, device="cpu", dtype=torch.float32)
    return ref, model


def test_prefill_and_decode_match_transformers(pair):
    ref, model = pair
    torch.manual_seed(1)
    idx = torch.randint(0, ref.config.vocab_size, (2, 40))
    with torch.no_grad():
        expected = ref(idx).logits
        model.setup_caches(2, 64)
        prefill = model(idx, torch.arange(40))
        assert (prefill - expected).abs().max() <= 1e-4
        # Token by token through the KV cache, after a short prefill.
        model.setup_caches(2, 48)
        steps = [model(idx[:, :8], torch.arange(8))]
        steps += [model(idx[:, t:t + 1], torch.tensor([t])) for t in range(8, 40)]
        assert (torch.cat(steps, 1) - expected).abs().max() <= 1e-4


def test_args_from_config_variants():
    base = dict(model_type="llama", hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                intermediate_size=96, vocab_size=10)
    assert ModelArgs.from_hf_config(base).n_kv_heads == 4  # MHA when num_key_value_heads is absent
    new_style = ModelArgs.from_hf_config({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
    assert new_style.rope_theta == 1e6
    assert ModelArgs.from_hf_config({**base, "model_type": "mistral", "max_position_embeddings": 32768,
                                     "sliding_window": 4096}).max_seq_len == 4096
    for bad, word in [({"model_type": "gpt2"}, "gpt2"), ({"num_local_experts": 8}, "experts"),
                      ({"rope_scaling": {"rope_type": "yarn", "factor": 4}}, "yarn"),
                      ({"hidden_act": "gelu"}, "gelu")]:
        with pytest.raises(CheckpointError, match=word):
            ModelArgs.from_hf_config({**base, **bad})
    with pytest.raises(CheckpointError, match="config.json lacks 'hidden_size'"):
        ModelArgs.from_hf_config({k: v for k, v in base.items() if k != "hidden_size"})


def test_loader_errors(tmp_path, stories_dir):
    import shutil

    with pytest.raises(CheckpointError, match="config.json"):
        Transformer.from_pretrained(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(stories_dir, bad)
    (bad / "config.json").chmod(0o644)
    (bad / "model.safetensors").chmod(0o644)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 100}))
    with pytest.raises(CheckpointError, match="feed_forward.w13.weight has shape"):
        Transformer.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 6}))
    with pytest.raises(CheckpointError, match="missing.*layers.5"):
        Transformer.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 4}))
    with pytest.raises(CheckpointError, match="unexpected.*layers.4"):
        Transformer.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps(cfg))
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupt"):
        Transformer.from_pretrained(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        Transformer.from_pretrained(bad)


MODEL_KERNELS_CHECK = """
import torch, generate as g, kernels as K, model as M


def compile_regions(model):  # g.compile_regions, checked: a compiled section below must not run eagerly
    g.compile_regions(model)
    assert all(layer._compiled_call_impl is not None for layer in model.layers), "blocks not compiled"

for shape in [(3, 200), (1, 1, 5000)]:  # SwiGLU: widths below and above one block of 1024
    x = torch.randn(shape)
    gate, up = x.chunk(2, dim=-1)
    torch.testing.assert_close(K.swiglu_launch(x), torch.nn.functional.silu(gate) * up, atol=1e-6, rtol=1e-5)

# RMSNorm in one pass against model.rms_norm: float32, and the rounding of 16-bit rows (float16: the interpreter
# rounds to bfloat16 otherwise than the GPU; scripts/gpu_check.py checks bfloat16)
torch.manual_seed(0)
x, w = torch.randn(3, 1, 100) * torch.tensor([1.0, 1e-3, 30.0])[:, None, None], torch.randn(100)  # eps counts in row 1
torch.testing.assert_close(K.rms_norm_launch(x, w, 1e-5), M.rms_norm(x, w, 1e-5), atol=0, rtol=1e-5)
xt = torch.randn(100, 3).t()  # a strided x: the output is x's shape, row-major
torch.testing.assert_close(K.rms_norm_launch(xt, w, 1e-5), M.rms_norm(xt, w, 1e-5), atol=0, rtol=1e-5)
torch.library.opcheck(torch.ops.gptfast.rms_norm.default, (x.half(), w.half(), 1e-5))
for shape in [(1, 1, 4096), (3, 576)]:
    x, w = torch.randn(shape, dtype=torch.float16) * 3, torch.randn(shape[-1], dtype=torch.float16)
    y, ref = K.rms_norm_launch(x, w, 1e-5).float(), M.rms_norm(x, w, 1e-5).float()
    assert y.shape == ref.shape and (y == ref).float().mean() > 0.98, (shape, (y == ref).float().mean())
    torch.testing.assert_close(y, ref, atol=0, rtol=2 ** -6)
# The model's rule (model.RMSNorm; use_row_norm without the CUDA test): in a decode step, the kernel before a quantized
# layer and before a 16-bit Linear for 2-16 rows; one row of a 16-bit model stays with Inductor, which fuses it into
# its GEMV; float32 models and prompts stay with Inductor.
import quantize as Q
args = M.ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, intermediate_size=96, vocab_size=50,
                   max_seq_len=64)
use_row_norm, norm_launch, nlaunched = K.use_row_norm, K.rms_norm_launch, []
K.rms_norm_launch = lambda x, w, eps: nlaunched.append(x.numel() // x.shape[-1]) or norm_launch(x, w, eps)
for quantized, dtype in [(False, torch.float16), (True, torch.float16), (True, torch.float32)]:
    model = M.Transformer(args)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    model = Q.quantize_model(model.to(dtype), "int8") if quantized else model.to(dtype)
    model.setup_caches(2, 64)
    idx = torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        K.use_row_norm = lambda x, w: False
        ref = {B: model(idx[:B, 5:], torch.tensor([5])).float() for B in (1, 2)}
        K.use_row_norm = K._row_norm_fits
        compile_too = quantized and dtype == torch.float16
        for compiled in (False, True) if compile_too else (False,):
            if compiled:
                compile_regions(model)
            for B in (1, 2):
                nlaunched.clear()
                got = model(idx[:B, 5:], torch.tensor([5])).float()
                assert (got - ref[B]).abs().max() < 0.01 * ref[B].abs().max(), (quantized, compiled, B)
                want = [B] * (2 * args.n_layers + 1) if dtype == torch.float16 and (quantized or B == 2) else []
                assert nlaunched == want, (quantized, dtype, compiled, B, nlaunched)
        if compile_too:  # prompts (Inductor's norm) of any length share one compiled graph: the rule adds no guard
            prompt = torch.randint(0, 50, (1, 23))
            model(prompt[:, :5], torch.arange(5))
            with torch._dynamo.config.patch(error_on_recompile=True):
                model(prompt, torch.arange(23))
K.use_row_norm, K.rms_norm_launch = use_row_norm, norm_launch
torch._dynamo.reset()  # the compiled blocks above count towards the recompile limit of the sections below

torch.manual_seed(0)  # the skinny product (batched decode): 2-16 rows, partial blocks of N and K, several launch shapes
for rows, N, Kd, cfg in [(2, 48, 200, (32, 64, 4, 3)), (8, 64, 256, (16, 128, 2, 5)), (16, 40, 96, (16, 32, 2, 3))]:
    x, w = torch.randn(rows, Kd, dtype=torch.float16), torch.randn(N, Kd, dtype=torch.float16)
    y, ref = K.skinny_mm_launch(x, w, *cfg).float(), x.float() @ w.float().T
    assert (y - ref).abs().max() < 1e-3 * ref.abs().max(), (rows, N, Kd, (y - ref).abs().max())
    q, s = torch.randint(-128, 128, (N, Kd), dtype=torch.int8), torch.rand(N, dtype=torch.float16) + 0.5  # int8 weights
    y, ref = K.skinny_mm_launch(x, q, *cfg, scales=s).float(), (x.float() @ q.float().T) * s.float()
    assert (y - ref).abs().max() < 1e-3 * ref.abs().max(), (rows, N, Kd, (y - ref).abs().max())

# An int8 model's prompts of 2-16 rows (batch x tokens) take the skinny kernel (kernels.int8_linear; its rule without
# the CUDA test, here on the CPU): logits against the dequantize-and-matmul path, eager and compiled (more rows keep
# that path). (args: the shape of the RMSNorm section's models)
model = M.Transformer(args)
for p in model.parameters():
    torch.nn.init.normal_(p, std=0.5)
model = Q.quantize_model(model.to(torch.float16), "int8")
model.setup_caches(2, 64)
idx, use_skinny, launch, launched = torch.randint(0, 50, (2, 20)), K._use_skinny, K.skinny_mm_launch, []
K.skinny_mm_launch = lambda *a, **kw: launched.append(a[0].shape[0]) or launch(*a, **kw)
with torch.no_grad():
    K._use_skinny = lambda x, w: False
    ref = {T: model(idx[:, :T], torch.arange(T)).float() for T in (5, 8, 9)}  # 10, 16 and 18 rows
    K._use_skinny = K._skinny_fits
    for compiled in (False, True):
        if compiled:
            compile_regions(model)
        for T in (5, 8, 9):
            launched.clear()
            got = model(idx[:, :T], torch.arange(T)).float()
            assert (got - ref[T]).abs().max() < 0.02 * ref[T].abs().max(), (compiled, T, (got - ref[T]).abs().max())
            assert launched == ([2 * T] * (4 * args.n_layers + 1) if T <= 8 else []), (compiled, T, launched)  # + output
K._use_skinny, K.skinny_mm_launch = use_skinny, launch

# One row (batch-1 decode) of wo and w2 (Linear(gemv=True)) runs the GEMV with the residual added in (kernels.linear;
# its rule without the CUDA test): decode logits against F.linear's, eager and compiled, two launches a layer a step.
model = M.Transformer(args).to(torch.float16)
for p in model.parameters():
    torch.nn.init.normal_(p, std=0.5)
model.setup_caches(1, 64)
idx, use_triton, glaunch, glaunched = torch.randint(0, 50, (1, 8)), K._use_triton, K.gemv_launch, []
K.gemv_launch = lambda *a, **kw: (glaunched.append((kw.get("gated", False), kw.get("residual") is not None))
                                  or glaunch(*a, **kw))
def decode(model):
    model(idx[:, :4], torch.arange(4))  # a prompt of 4 rows: F.linear
    return torch.stack([model(idx[:, p:p + 1], torch.tensor([p]))[:, -1] for p in range(4, 8)]).float()
with torch.no_grad():
    ref = decode(model)
    K._use_triton = lambda x, rows=1: x.numel() // x.shape[-1] <= rows
    for compiled in (False, True):
        if compiled:
            compile_regions(model)
        glaunched.clear()
        got = decode(model)
        assert (got - ref).abs().max() < 0.01 * ref.abs().max(), (compiled, (got - ref).abs().max())
        assert glaunched == [(False, True)] * (2 * args.n_layers * 4), (compiled, glaunched)
x, w, r = (torch.randn(shape, dtype=torch.float16) for shape in ((1, 1, 96), (64, 96), (1, 1, 64)))
torch.library.opcheck(torch.ops.gptfast.gemv.default, (x, w, None, False, r))
# with a bias (o_bias) the GEMV leaves the bias and the residual to adds; a strided weight goes to F.linear
for weight, bias, want in [(w, None, [(False, True)]), (w, torch.randn(64, dtype=torch.float16), [(False, False)]),
                           (torch.randn(96, 64, dtype=torch.float16).t(), None, [])]:
    glaunched.clear()
    y, y_ref = K.linear(x, weight, bias, r, gemv=True).float(), r.float() + x.float() @ weight.float().T
    y_ref = y_ref if bias is None else y_ref + bias.float()
    assert (y - y_ref).abs().max() < 1e-2 * y_ref.abs().max() and glaunched == want, (bias is None, glaunched)
K._use_triton, K.gemv_launch = use_triton, glaunch

def run(model, fused, B, prompt_len, row_start, steps=4):
    K.use_decode_attention = lambda qkv, k_cache: fused  # the model's dispatch, forced either way
    for layer in model.layers:
        layer.attention.kv_cache.k.zero_(); layer.attention.kv_cache.v.zero_()
    model.row_start[:B] = torch.tensor(row_start)
    idx = torch.randint(0, model.args.vocab_size, (B, prompt_len + steps), generator=torch.Generator().manual_seed(1))
    out = [model(idx[:, :prompt_len], torch.arange(prompt_len))[:, -1]]  # prefill: always the PyTorch path
    for p in range(prompt_len, prompt_len + steps):
        out.append(model(idx[:, p:p + 1], torch.tensor([p]))[:, -1])
    return torch.stack(out).float(), [(l.attention.kv_cache.k.clone(), l.attention.kv_cache.v.clone()) for l in model.layers]

torch.manual_seed(0)
# (heads, kv heads, head_dim, cache, slices, batch, prompt, left padding): GQA 2 and 3 (padded to 16 query
# rows), MHA; 4 slices whose length grows from 64 to 128 positions as the decoded position passes 255,
# one slice (no merge), slices with no position at all.
for H, KV, D, S, slices, B, prompt_len, row_start, compiled in [
        (4, 2, 32, 300, 4, 2, 254, [0, 3], False), (6, 2, 32, 40, 3, 1, 3, [0], True),
        (2, 2, 64, 70, 1, 2, 5, [2, 0], False)]:
    K.DECODE_SLICES = slices
    args = M.ModelArgs(dim=H * D, n_layers=2, n_heads=H, n_kv_heads=KV, head_dim=D, intermediate_size=64,
                       vocab_size=50, max_seq_len=S)
    model = M.Transformer(args).to(torch.float16)  # (bfloat16's tl.dot is wrong in the CPU interpreter)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    model.setup_caches(B, S)
    with torch.no_grad():
        ref, ref_caches = run(model, False, B, prompt_len, row_start)
        if compiled:  # the kernel's in-place cache writes survive torch.compile
            compile_regions(model)
        got, got_caches = run(model, True, B, prompt_len, row_start)
    tol = (0.05 if compiled else 0.03) * ref.abs().max().item()
    assert (got - ref).abs().max() < tol, (H, KV, D, (got - ref).abs().max())
    if not compiled:  # layer 0's new values are copied as they are
        assert torch.equal(got_caches[0][1], ref_caches[0][1])
    for cache, ref_cache in zip(got_caches[0] + got_caches[1], ref_caches[0] + ref_caches[1]):
        assert (cache - ref_cache).abs().max() < 0.005 * ref_cache.abs().max() * (2 if compiled else 1)
print("ok")
"""


def test_model_kernels_in_interpreter():
    """kernels.py's kernels for the model, through Triton's CPU interpreter: SwiGLU against F.silu; RMSNorm against
    model.rms_norm, and the model's rule for it (eager and compiled, no recompilation for a new prompt length); the skinny
    product (16-bit and int8 weights) against a float32 matmul; the GEMV of wo and w2 in batch-1 decode against
    F.linear, eager and compiled; the fused
    decode attention (RoPE, cache write, flash decoding, slice merge) against model.Attention's PyTorch path,
    eager and once compiled with compile_regions."""
    pytest.importorskip("triton")
    r = run_cli("-c", MODEL_KERNELS_CHECK, env={"TRITON_INTERPRET": "1"}, timeout=600)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
