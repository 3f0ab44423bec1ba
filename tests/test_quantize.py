"""quantize.py and kernels.py: formats, round trips through generate.py's loader, GPTQ, CLI errors."""
import json
import os
import stat

import pytest
import torch
from conftest import assert_compiled, graphs_made, run_cli, write_hf_checkpoint

import generate as g
import kernels as K
import quantize as Q
from model import CheckpointError, ModelArgs, Transformer


def greedy(model, prompt, n):
    model.setup_caches(1, len(prompt) + n)
    return g.generate(model, [prompt], n, temperature=0)[0]


def logits(model, ids):
    model.setup_caches(1, len(ids))
    with torch.no_grad():
        return model(torch.tensor([ids]), torch.arange(len(ids)))[0].float()


def quantized_stories(stories_dir, tmp_path_factory, mode):
    out = tmp_path_factory.mktemp("q") / f"stories-{mode}"
    r = run_cli("quantize.py", "--checkpoint", stories_dir, "--mode", mode, "--device", "cpu", "--output", out)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def stories_int4(stories_dir, tmp_path_factory):
    return quantized_stories(stories_dir, tmp_path_factory, "int4")


@pytest.fixture(scope="module")
def stories_int8(stories_dir, tmp_path_factory):
    return quantized_stories(stories_dir, tmp_path_factory, "int8")


# ------------------------------------------------------------------------------- format and math
def test_int4_pack_layout_and_round_trip():
    torch.manual_seed(0)
    q = torch.randint(0, 16, (5, 128), dtype=torch.uint8)
    for G in (32, 64, 128):
        p = K.pack_int4(q, G)
        assert p.shape == (5, 64) and p.dtype == torch.uint8
        assert torch.equal(K.unpack_int4(p, G), q)  # lossless
        # the documented layout: byte i of word m of group g = column g*G + i*G/8 + m (low nibble) and the
        # same + G/2 (high nibble)
        gi, m, i = 1 if G < 128 else 0, 2, 3
        col = gi * G + i * G // 8 + m
        assert p[2, gi * G // 2 + 4 * m + i] == q[2, col] + 16 * q[2, col + G // 2]


def test_quantize_error_bounds():
    """Round to nearest: every weight is within half a step of its dequantized value."""
    torch.manual_seed(0)
    w = torch.randn(16, 96) * 0.05
    q, s = Q.quantize_int8(w)
    assert ((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-7).all()
    for G in (32, 64):  # 96 is not a multiple of 64: padded to 128
        packed, scales, zeros = Q.quantize_int4(w, G)
        wq = K.dequantize_int4(packed, scales, zeros, G)[:, :96]
        step = scales.float().repeat_interleave(G, dim=1)[:, :96]
        # bfloat16 scales and zeros make the grid slightly coarser than (max - min) / 15: allow 2% of a step
        assert ((wq - w).abs() <= 0.52 * step).all()


def test_int4_linear_equals_dequantize_then_matmul():
    """The PyTorch path of Int4Linear against w[n, k] = (q - 8) * s[n, k // G] + z[n, k // G] built here."""
    torch.manual_seed(0)
    N, K_in, G = 24, 80, 32  # 80 is padded to 96
    q = torch.randint(0, 16, (N, 96), dtype=torch.uint8)
    s, z = torch.rand(N, 3) * 0.1 + 0.01, torch.randn(N, 3) * 0.1
    w = (q.float() - 8) * s.repeat_interleave(G, 1) + z.repeat_interleave(G, 1)  # (N, 96)
    m = Q.Int4Linear(K_in, N, G, bias=True, dtype=torch.float32)
    bias = torch.randn(N)
    m.load_state_dict(dict(weight=K.pack_int4(q, G), scales=s, zeros=z, bias=bias))
    x = torch.randn(3, 7, K_in)
    torch.testing.assert_close(m(x), x @ w[:, :K_in].T + bias, atol=1e-5, rtol=1e-5)


def test_int8_linear_equals_reference():
    torch.manual_seed(0)
    q = torch.randint(-127, 128, (12, 40), dtype=torch.int8)
    s = torch.rand(12)
    m = Q.Int8Linear(40, 12, dtype=torch.float32)
    m.load_state_dict(dict(weight=q, scales=s))
    x = torch.randn(2, 40)
    torch.testing.assert_close(m(x), x @ (q.float() * s[:, None]).T, atol=1e-5, rtol=1e-5)


def test_one_row_paths_compiled_equal_reference():
    """Batch-1 decode under torch.compile without Triton takes the one-row product-and-sum paths."""
    torch.manual_seed(0)
    w, x = torch.randn(24, 128), torch.randn(1, 1, 128)
    q, s = Q.quantize_int8(w)
    f8 = torch.compile(K.int8_linear, fullgraph=True)
    torch.testing.assert_close(f8(x, q, s), x @ (q.float() * s[:, None]).T, atol=1e-4, rtol=1e-4)
    for G in (32, 64):
        p, s4, z4 = Q.quantize_int4(w, G, torch.float32)
        f4 = torch.compile(K.int4_linear, fullgraph=True)
        torch.testing.assert_close(f4(x, p, s4, z4, G), x @ K.dequantize_int4(p, s4, z4, G).T, atol=1e-4, rtol=1e-4)


KERNEL_CHECK = """
import torch, kernels as K, quantize as Q
torch.manual_seed(0)
for N, Kd, G, cfg in [(24, 256, 32, (8, 64, 4)), (10, 192, 64, (4, 128, 4)), (18, 384, 128, (8, 256, 4))]:
    w, x = torch.randn(N, Kd), torch.randn(Kd)
    q, s = Q.quantize_int8(w)
    q[0, :4] = torch.tensor([-128, 127, 0, -1], dtype=torch.int8)  # the ends of the range convert exactly
    y = K.gemv_launch(x, q, s, *cfg)
    torch.testing.assert_close(y, (x @ q.float().T) * s, atol=1e-4, rtol=1e-4)
    gate, up = ((x @ q.float().T) * s).chunk(2)  # the first N/2 rows are the gate, the rest the up projection
    y = K.gemv_launch(x, q, s, *cfg, gated=True)
    torch.testing.assert_close(y, torch.nn.functional.silu(gate) * up, atol=1e-4, rtol=1e-4)
    r = torch.randn(N)  # the residual added as the output is stored
    y = K.gemv_launch(x, q, s, *cfg, residual=r)
    torch.testing.assert_close(y, r + (x @ q.float().T) * s, atol=1e-4, rtol=1e-4)
    wb = (w * 0.1).bfloat16()  # 16-bit weights, no scales (the bf16 model's wo and w2)
    torch.testing.assert_close(K.gemv_launch(x, wb, None, *cfg, residual=r), r + x @ wb.float().T, atol=1e-4, rtol=1e-4)
    gate, up = (x @ wb.float().T).chunk(2)
    torch.testing.assert_close(K.gemv_launch(x, wb, None, *cfg, gated=True), torch.nn.functional.silu(gate) * up,
                               atol=1e-4, rtol=1e-4)
    p, s4, z4 = Q.quantize_int4(w, G, torch.float32)
    y, ref = K.int4_gemv_launch(x, p, s4, z4, G, *cfg), x @ K.dequantize_int4(p, s4, z4, G).T
    # the kernel's float32 sums carry offsets of 16 and 256 (see it), so its error is ~1e-6 of the output's scale
    tol = dict(atol=2e-5 * ref.abs().max().item(), rtol=1e-4)
    torch.testing.assert_close(y, ref, **tol)
    torch.testing.assert_close(K.int4_gemv_launch(x, p, s4, z4, G, *cfg, residual=r), r + ref, **tol)
    gate, up = ref.chunk(2)
    y = K.int4_gemv_launch(x, p, s4, z4, G, *cfg, gated=True)
    torch.testing.assert_close(y, torch.nn.functional.silu(gate) * up, atol=2e-5 * (gate.abs().max() * up.abs().max()).item(), rtol=1e-4)
    x3, r3 = torch.randn(3, Kd), torch.randn(3, N)  # several rows (a grid row each): short prompts, batched decode
    ref3 = x3 @ K.dequantize_int4(p, s4, z4, G).T
    torch.testing.assert_close(K.int4_gemv_launch(x3, p, s4, z4, G, *cfg, residual=r3), r3 + ref3, **tol)
    gate3, up3 = ref3.chunk(2, dim=-1)
    torch.testing.assert_close(K.int4_gemv_launch(x3, p, s4, z4, G, *cfg, gated=True), torch.nn.functional.silu(gate3) * up3,
                               atol=2e-5 * (gate3.abs().max() * up3.abs().max()).item(), rtol=1e-4)
print("ok")
"""


GATED_CHECK = """
import os, sys, torch, kernels as K, generate as g, quantize as Q
q, tok = g.load(sys.argv[1], "cpu", torch.float32)
int4 = isinstance(q.layers[0].feed_forward.w13, Q.Int4Linear)
prompt = tok.encode("Once upon a time")
q.setup_caches(1, len(prompt) + 4)
ref = g.generate(q, [prompt], 4, temperature=0)[0]  # the PyTorch path: product, SwiGLU and residual add apart
K._use_triton = lambda x, rows=1: x.numel() // x.shape[-1] <= rows  # on the CPU: the Triton interpreter
torch.manual_seed(0)
x, r = torch.randn(1, 1, 64), torch.randn(1, 1, 24)
if int4:  # the fake's shape is the kernel's
    p, s4, z4 = Q.quantize_int4(torch.randn(24, 64), 32, torch.float32)
    for args in [(x, p, s4, z4, 32, True), (x, p, s4, z4, 32, False, r)]:
        torch.library.opcheck(torch.ops.gptfast.int4_gemv.default, args)
    m = Q.Int4Linear(64, 24, 32, bias=True)  # a bias: the GEMV, then the bias and the residual added apart
    m.weight.copy_(p), m.scales.copy_(s4), m.zeros.copy_(z4), m.bias.data.copy_(torch.randn(24))
    want = r + x @ K.dequantize_int4(p, s4, z4, 32).T + m.bias
else:
    w, s = torch.randint(-127, 128, (24, 64), dtype=torch.int8), torch.rand(24)
    for args in [(x, w, s, True), (x, w, s, False, r)]:
        torch.library.opcheck(torch.ops.gptfast.gemv.default, args)
    m = Q.Int8Linear(64, 24, bias=True)
    m.weight.copy_(w), m.scales.copy_(s), m.bias.data.copy_(torch.randn(24))
    want = r + x @ (w.float() * s[:, None]).T + m.bias
# the int4 kernel's float32 sums carry offsets of 16 and 256 (KERNEL_CHECK): its error scales with the output's
torch.testing.assert_close(m(x, residual=r), want, atol=1e-4 + (2e-5 * want.abs().max().item() if int4 else 0), rtol=1e-4)
name = "int4_gemv_launch" if int4 else "gemv_launch"
launches, launch = [], getattr(K, name)
# recorded once the launch returns: the int4 op computes the PyTorch path when its kernel raises
setattr(K, name, lambda *a, **kw: (launch(*a, **kw), launches.append((kw.get("gated", False), kw.get("residual") is not None)))[0])
assert g.generate(q, [prompt], 4, temperature=0)[0] == ref
eager = list(launches)
torch._dynamo.reset()
prefill_fn, decode_fn = g.compile_steps(True, False, q)
assert all(layer._compiled_call_impl is not None for layer in q.layers), "blocks not compiled"
assert g.generate(q, [prompt], 4, temperature=0, prefill_fn=prefill_fn, decode_fn=decode_fn)[0] == ref
add, gated = not os.environ.get("GPTFAST_NO_FUSED_ADD"), not os.environ.get("GPTFAST_NO_GATED")
layer = [(False, False), (False, add), (gated, False), (False, add)]  # wqkv, wo + x, w13 + SwiGLU, w2 + h
steps = 4 if int4 else 3  # 3 decode steps; int4 runs its prompt (of up to 16 tokens) through the GEMV too
assert eager == launches[len(eager):] == layer * q.args.n_layers * steps, launches  # every step, every layer
print("ok")
"""


@pytest.mark.parametrize("mode,env", [("int8", ""), ("int8", "GPTFAST_NO_FUSED_ADD"), ("int4", ""),
                                      ("int4", "GPTFAST_NO_GATED")])
def test_gated_gemv_in_the_model(stories_int8, stories_int4, mode, env, tmp_path):
    """Batch-1 decode of an int8 or int4 model runs each layer's products as four GEMVs: wqkv, wo with the
    residual add, w13 with the SwiGLU, w2 with the residual add; eager and compiled (the op's fake shapes checked
    by opcheck), with the PyTorch path's greedy tokens; Triton's interpreter. GPTFAST_NO_FUSED_ADD=1 or
    GPTFAST_NO_GATED=1: the adds or the SwiGLU apart."""
    pytest.importorskip("triton")
    configs = tmp_path / "configs.json"  # tiles the size of stories260K's layers: the interpreter runs each program
    configs.write_text(json.dumps({"32": dict(BLOCK_N=16, BLOCK_K=64, num_warps=1)}))
    env = {"TRITON_INTERPRET": "1", "GPTFAST_GEMV_CONFIGS": str(configs), **({env: "1"} if env else {})}
    r = run_cli("-c", GATED_CHECK, str(stories_int8 if mode == "int8" else stories_int4), env=env)
    assert r.returncode == 0 and "ok" in r.stdout and "GEMV failed" not in r.stderr, r.stderr[-3000:]


def test_int4_layout_on_cuda(monkeypatch):
    """Int4 layers keep the checkpoint's layout (the GEMV's) unless GPTFAST_INT4=tinygemm; other values are refused."""
    m = torch.nn.Sequential(Q.Int4Linear(64, 8, 32))
    calls = []
    monkeypatch.setattr(Q.Int4Linear, "pack_for_cuda", lambda self: calls.append(self) or False)
    for value, packed in (("", 0), ("gemv", 0), ("tinygemm", 1)):
        monkeypatch.setenv("GPTFAST_INT4", value) if value else monkeypatch.delenv("GPTFAST_INT4", raising=False)
        Q.pack_for_device(m)
        assert len(calls) == packed
    monkeypatch.setenv("GPTFAST_INT4", "tinygem")
    with pytest.raises(g.UsageError, match="choose gemv"):
        Q.pack_for_device(m)


def test_generate_asks_tinygemm_for_steps_of_several_rows(stories_int4, monkeypatch, capsys):
    """generate.py repacks int4 layers for tinygemm (on CUDA; pack_for_cuda does nothing on the CPU) for a batch,
    not for one row; GPTFAST_INT4=gemv keeps the GEMV's layout even for a batch."""
    calls = []
    monkeypatch.setattr(Q.Int4Linear, "pack_for_cuda", lambda self: calls.append(self) or False)
    base = ["--checkpoint", str(stories_int4), "--device", "cpu", "--prompt", "Once", "--max_new_tokens", "2"]
    for extra, env, packed in (([], "", False), (["--batch_size", "2"], "", True), (["--batch_size", "2"], "gemv", False)):
        calls.clear()
        monkeypatch.setenv("GPTFAST_INT4", env) if env else monkeypatch.delenv("GPTFAST_INT4", raising=False)
        g.main(base + extra)
        assert bool(calls) == packed, (extra, env)
    capsys.readouterr()


def test_triton_kernels_in_interpreter():
    """The Triton GEMVs (int8 and 16-bit weights, int4) against the PyTorch path, on CPU through Triton's
    interpreter (tiny shapes, partial last K block included). Skipped where Triton is not installed."""
    pytest.importorskip("triton")
    r = run_cli("-c", KERNEL_CHECK, env={"TRITON_INTERPRET": "1"})
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


# ------------------------------------------------------------------------------- round trips
def _run_ptx(fn, *args: int) -> int:
    """Interpret the inline PTX of one of kernels.py's f16x2 helpers (Triton's interpreter cannot) on 32-bit words:
    just the instructions they use, each as PTX defines it (fma rounds once)."""
    import re

    import numpy as np
    f16 = lambda v: np.array([v & 0xFFFF], np.uint16).view(np.float16)[0]  # noqa: E731
    f16bits = lambda v: int(np.array([v], np.float16).view(np.uint16)[0])  # noqa: E731
    f32 = lambda v: np.array([v], np.uint32).view(np.float32)[0]  # noqa: E731
    f32bits = lambda v: int(np.array([v], np.float32).view(np.uint32)[0])  # noqa: E731
    lanes = lambda v: (f16(v), f16(v >> 16))  # noqa: E731
    pack = lambda lo, hi: f16bits(lo) | f16bits(hi) << 16  # noqa: E731
    asm = re.search(r'"""(.*?)"""', fn.src, re.S).group(1)  # the source Triton compiles
    reg = {f"${i + 1}": a for i, a in enumerate(args)}

    def val(t):
        return int(t[2:], 16) if t.startswith("0f") else int(t, 0) if t[0].isdigit() else reg[t]
    for line in asm.split(";"):
        line = line.strip(" \n{}")
        if not line or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        d, *src = [t.strip() for t in re.split(r",(?![^{]*})", rest)]
        v = [val(t) for t in src]
        assert op != "prmt.b32" or not v[2] & 0x8888, "the sign-replicating selectors are not interpreted"
        if op == "mov.b32" and d.startswith("{"):
            lo, hi = d.strip("{}").split(", ")
            reg[lo], reg[hi] = v[0] & 0xFFFF, v[0] >> 16
            continue
        reg[d] = {"xor.b32": lambda: v[0] ^ v[1], "and.b32": lambda: v[0] & v[1], "mov.b32": lambda: v[0],
                  "shl.b32": lambda: v[0] << v[1] & 0xFFFFFFFF, "shr.u32": lambda: v[0] >> v[1],
                  "lop3.b32": lambda: sum(((v[3] >> ((v[0] >> i & 1) << 2 | (v[1] >> i & 1) << 1 | (v[2] >> i & 1))) & 1)
                                          << i for i in range(32)),
                  "mul.rn.f16x2": lambda: pack(*(np.float16(float(a) * float(b)) for a, b in zip(lanes(v[0]), lanes(v[1])))),
                  "add.rn.f16x2": lambda: pack(*(np.float16(float(a) + float(b)) for a, b in zip(lanes(v[0]), lanes(v[1])))),
                  "prmt.b32": lambda: sum(((v[0] | v[1] << 32) >> 8 * (v[2] >> 4 * i & 7) & 255) << 8 * i
                                          for i in range(4)),
                  "sub.f16x2": lambda: pack(*(a - b for a, b in zip(lanes(v[0]), lanes(v[1])))),
                  "fma.rn.f16x2": lambda: pack(*(np.float16(float(a) * float(b) + float(c))
                                                 for a, b, c in zip(lanes(v[0]), lanes(v[1]), lanes(v[2])))),
                  "mul.f32": lambda: f32bits(f32(v[0]) * f32(v[1])),
                  "cvt.rn.f16x2.f32": lambda: pack(np.float16(f32(v[1])), np.float16(f32(v[0]))),
                  "cvt.f32.f16": lambda: f32bits(np.float32(f16(v[0]))),
                  "add.f32": lambda: f32bits(f32(v[0]) + f32(v[1]))}[op]()
    return reg["$0"]


def test_int8_f16x2_arithmetic():
    """The float16-pair int8 GEMV's PTX (GPU only), interpreted here: each int8 byte becomes its exact float16 / 16,
    x words become float16 pairs, and words of 4 weights against 4 of x sum as float32 does."""
    pytest.importorskip("triton")
    import numpy as np
    bits = lambda t: t.contiguous().view(torch.int32).tolist()  # noqa: E731  little-endian words
    f32 = lambda v: float(np.array([v], np.uint32).view(np.float32)[0])  # noqa: E731
    x = torch.tensor([1.0, 2.0, -1.0, 4.0], dtype=torch.bfloat16)  # the products and sums are exact
    x01, x23 = (_run_ptx(K._x_to_f16x2, w & 0xFFFFFFFF) for w in bits(x))
    for w in torch.arange(-128, 128, dtype=torch.int8).view(-1, 4):  # every byte, 4 to a word
        acc = _run_ptx(K._dot4_f16x2, bits(w)[0] & 0xFFFFFFFF, x01, x23, 0)
        assert f32(_run_ptx(K._f16x2_sum, acc)) * 16 == float(w.float() @ x.float()), w
    torch.manual_seed(0)
    for _ in range(20):  # random weights and activations, accumulating over 4 words as over 4 tiles
        w, x = torch.randint(-128, 128, (4, 4), dtype=torch.int8), torch.randn(4, 4, dtype=torch.bfloat16) * 30
        acc = 0
        for wi, xi in zip(w, x):
            x01, x23 = (_run_ptx(K._x_to_f16x2, v & 0xFFFFFFFF) for v in bits(xi))
            acc = _run_ptx(K._dot4_f16x2, bits(wi)[0] & 0xFFFFFFFF, x01, x23, acc)
        ref, scale = float((w.float() * x.float()).sum()), float((w.float() * x.float()).abs().sum())
        assert abs(f32(_run_ptx(K._f16x2_sum, acc)) * 16 - ref) < 2e-3 * scale, (ref, scale)


# The float16-pair kernels' PTX helpers, written as the same arithmetic in Triton for its interpreter: the start of
# F16_KERNEL_CHECK and INT4_F16_KERNEL_CHECK.
F16_TRITON = """
import torch, triton, triton.language as tl, kernels as K, quantize as Q

@triton.jit
def lane(v, hi: tl.constexpr):  # one float16 of an f16x2 word, as float32
    return ((v >> 16) if hi else v).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)

@triton.jit
def pack(lo, hi):  # float32 -> float16 (rounded, inf beyond 65504) -> an f16x2 word
    h16 = lambda v: v.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
    return (h16(hi) << 16) | (h16(lo) & 0xFFFF)

@triton.jit
def f16x2_sum(acc):
    return lane(acc, False) + lane(acc, True)
"""

F16_KERNEL_CHECK = F16_TRITON + """
@triton.jit
def x_to_f16x2(x2):
    return pack((x2 << 16).to(tl.float32, bitcast=True), (x2 & -65536).to(tl.float32, bitcast=True))

@triton.jit
def dot4_f16x2(w, x01, x23, acc):
    w16 = lambda i: ((w << (24 - 8 * i)) >> 24).to(tl.float32) / 16  # byte i, sign-extended, / 16
    lo = pack(w16(0) * lane(x01, False) + lane(acc, False), w16(1) * lane(x01, True) + lane(acc, True))
    return pack(w16(2) * lane(x23, False) + lane(lo, False), w16(3) * lane(x23, True) + lane(lo, True))

# the kernel as it is, with its PTX helpers replaced by the same arithmetic in Triton (test_int8_f16x2_arithmetic
# checks the PTX itself)
K._x_to_f16x2, K._dot4_f16x2, K._f16x2_sum = x_to_f16x2, dot4_f16x2, f16x2_sum
torch.manual_seed(0)
for N, Kd, cfg in [(24, 260, (8, 128, 1)), (10, 520, (4, 256, 2)), (7, 64, (8, 128, 1))]:  # partial tiles
    w, x, r = torch.randn(N, Kd), torch.randn(Kd).bfloat16(), torch.randn(N).bfloat16()
    q, s = Q.quantize_int8(w)
    f = lambda x, **kw: K.int8_f16_gemv_launch(x, q, s, *cfg, **kw).float()
    # x = 3e4: float16 sums overflow, so each program sums its rows again in float32
    for x, overflow in ((x, False), (torch.full_like(x, 3e4), True)):
        ref = (x.float() @ q.float().T) * s
        tol = dict(atol=1e-2 * ref.abs().max().item(), rtol=0)
        torch.testing.assert_close(f(x), ref, **tol)
        if not overflow:
            torch.testing.assert_close(f(x, residual=r), r.float() + ref, **tol)
        if N % 2 == 0:  # gate and up: the first N/2 rows, the rest
            gate, up = ref.chunk(2)
            want = torch.nn.functional.silu(gate) * up
            torch.testing.assert_close(f(x, gated=True), want, atol=1e-2 * want.abs().max().item(), rtol=0)
print("ok")
"""


def test_int8_f16_gemv_in_interpreter():
    """_int8_f16_gemv_kernel's tiles, masks, SwiGLU, residual, scales and float32 fallback on overflow, on CPU:
    Triton's interpreter with the kernel's three PTX helpers replaced by the same float16 arithmetic in Triton."""
    pytest.importorskip("triton")
    r = run_cli("-c", F16_KERNEL_CHECK, env={"TRITON_INTERPRET": "1"})
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


def test_int4_f16x2_arithmetic():
    """The float16-pair int4 GEMV's PTX (GPU only), interpreted here: each nibble of a word (pack_int4's order) becomes
    its exact (q - 8) / 16 and meets the x of its column; random words against random x sum as float32 does."""
    pytest.importorskip("triton")
    import numpy as np
    f32 = lambda v: float(np.array([v], np.uint32).view(np.float32)[0])  # noqa: E731
    f32bits = lambda v: int(np.array([v], np.float32).view(np.uint32)[0])  # noqa: E731

    def dot(word, x):  # x: the 8 values of the word's nibble columns, in nibble order (bits 0-3, 4-7, ..., 28-31)
        pairs = [(x[0], x[4]), (x[1], x[5]), (x[2], x[6]), (x[3], x[7])]  # nibble i and i + 4 share a word of x
        xw = [_run_ptx(K._f16x2_pair, f32bits(lo), f32bits(hi)) for lo, hi in pairs]
        acc = _run_ptx(K._nibbles_dot_f16x2, word, *xw)
        return f32(_run_ptx(K._f16x2_sum, acc)) * 16
    for pos in range(8):  # every value of every nibble, the others 8 (weight 0), against exact x
        x = [1.0, 2.0, -4.0, 0.5, 3.0, -1.0, 8.0, 0.25]
        for q in range(16):
            word = sum((q if i == pos else 8) << 4 * i for i in range(8))
            assert dot(word, x) == (q - 8) * x[pos], (pos, q)
    # pack_int4's column of nibble i of word m in a group of G: byte i // 2, low or high nibble
    G, m = 32, 1
    cols = [(i // 2) * G // 8 + m + (G // 2 if i % 2 else 0) for i in range(8)]
    q = torch.zeros(1, G, dtype=torch.uint8)
    q[0, cols] = torch.arange(1, 9, dtype=torch.uint8)
    word = K.pack_int4(q, G).view(torch.int32)[0, m].item() & 0xFFFFFFFF
    assert [(word >> 4 * i) & 15 for i in range(8)] == list(range(1, 9)), "pack_int4's nibble order"
    a, b = (_run_ptx(K._f16x2_pair, f32bits(lo), f32bits(hi)) for lo, hi in ((1.5, -2.0), (0.25, 4.0)))
    assert f32(_run_ptx(K._f16x2_sum, _run_ptx(K._f16x2_add, a, b))) == 3.75  # (1.75, 2.0): a group's words
    torch.manual_seed(0)
    for _ in range(20):
        word, x = int(torch.randint(0, 2**32, ()).item()), (torch.randn(8) * 30).bfloat16().float().tolist()
        ref = sum((((word >> 4 * i) & 15) - 8) * x[i] for i in range(8))
        scale = sum(abs((((word >> 4 * i) & 15) - 8) * x[i]) for i in range(8))
        assert abs(dot(word, x) - ref) < 2e-3 * scale, (ref, scale)


INT4_F16_KERNEL_CHECK = F16_TRITON + """
@triton.jit
def f16x2_pair(lo, hi):
    return pack(lo, hi)

@triton.jit
def f16x2_add(a, b):
    return pack(lane(a, False) + lane(b, False), lane(a, True) + lane(b, True))

@triton.jit
def nib(w, shift: tl.constexpr):  # (q - 8) / 16 of the nibble at bit `shift`
    return (((w >> shift) & 15) - 8).to(tl.float32) / 16

@triton.jit
def round16(v):
    return v.to(tl.float16).to(tl.float32)

@triton.jit
def nibbles_dot_f16x2(w, x0, x1, x2, x3):  # the nibble pairs (0, 16), (4, 20), (8, 24), (12, 28) against x0..x3
    lo, hi = round16(nib(w, 0) * lane(x0, False)), round16(nib(w, 16) * lane(x0, True))
    lo, hi = round16(nib(w, 4) * lane(x1, False) + lo), round16(nib(w, 20) * lane(x1, True) + hi)
    lo, hi = round16(nib(w, 8) * lane(x2, False) + lo), round16(nib(w, 24) * lane(x2, True) + hi)
    return pack(nib(w, 12) * lane(x3, False) + lo, nib(w, 28) * lane(x3, True) + hi)

# the kernel as it is, with its PTX helpers replaced by the same arithmetic in Triton (test_int4_f16x2_arithmetic
# checks the PTX itself)
K._nibbles_dot_f16x2, K._f16x2_pair, K._f16x2_add, K._f16x2_sum = nibbles_dot_f16x2, f16x2_pair, f16x2_add, f16x2_sum
torch.manual_seed(0)
for G, N, Kd, M, cfg in [(32, 12, 256, 1, (4, 128, 1)), (64, 10, 512, 1, (4, 256, 1)), (128, 8, 512, 3, (8, 256, 1)),
                         (32, 7, 96, 2, (4, 64, 1))]:  # partial tiles, rows of x
    q = Q.quantize_int4(torch.randn(N, Kd), G)
    x, r = torch.randn(M, Kd).bfloat16(), torch.randn(M, N).bfloat16()
    deq = K.dequantize_int4(*q, G)
    # x = 3e4: float16 sums overflow, so each program sums its rows again in float32
    for x, overflow in ((x, False), (x * 3e4, True)):
        ref = x.float() @ deq.T
        f = lambda **kw: K.int4_gemv_launch(x, *q, G, *cfg, f16=True, **kw).float()
        tol = dict(atol=1e-2 * ref.abs().max().item(), rtol=0)
        torch.testing.assert_close(f(), ref, **tol)
        if not overflow:
            torch.testing.assert_close(f(residual=r), r.float() + ref, **tol)
        if N % 2 == 0:  # gate and up: the first N/2 rows, the rest
            gate, up = ref.chunk(2, dim=-1)
            want = torch.nn.functional.silu(gate) * up
            torch.testing.assert_close(f(gated=True), want, atol=1e-2 * want.abs().max().item(), rtol=0)
print("ok")
"""


def test_int4_f16_gemv_in_interpreter():
    """_int4_f16_gemv_kernel's tiles, groups, rows of x, SwiGLU, residual, scales and zeros and float32 fallback on
    overflow, on CPU: Triton's interpreter with the kernel's PTX helpers replaced by the same float16 arithmetic."""
    pytest.importorskip("triton")
    r = run_cli("-c", INT4_F16_KERNEL_CHECK, env={"TRITON_INTERPRET": "1"}, timeout=600)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


def test_int4_launch_args_rule(monkeypatch):
    """The model runs the float16-pair int4 kernel for groups of 32, 64 and 128 with 16-bit x on a GPU that runs it,
    at the wide launch shape for weights of WIDE_ROWS rows or more, and the other kernel at group 256, for
    float32 x and off such a GPU."""
    pytest.importorskip("triton")
    b16, f16, f32 = (torch.empty(0, dtype=d) for d in (torch.bfloat16, torch.float16, torch.float32))
    wide, narrow = K.WIDE_ROWS, K.WIDE_ROWS - 1
    assert not K.int4_launch_args(b16, 128, wide).get("f16")  # a CPU tensor: no such GPU
    monkeypatch.setattr(K, "_f16x2_device", lambda x: True)
    for x in (b16, f16):
        for G in (32, 64, 128):
            assert K.int4_launch_args(x, G, wide) == dict(**K.CONFIGS["int4_f16_wide"], f16=True)
            assert K.int4_launch_args(x, G, narrow) == dict(**K.CONFIGS["int4_f16_g32" if G == 32 else "int4_f16"],
                                                            f16=True)
    assert len({str(K.CONFIGS[k]) for k in ("int4_f16_wide", "int4_f16", "int4_f16_g32")}) == 3
    assert K.int4_launch_args(b16, 256, wide) == K.CONFIGS[256]
    assert K.int4_launch_args(f32, 32, wide) == K.CONFIGS[32]


def test_int8_f16_config_rule():
    """The float16-pair int8 GEMV's launch shape: gated (w13 with the SwiGLU) whatever its width, else the wide shape
    from WIDE_ROWS rows."""
    wide, narrow = K.WIDE_ROWS, K.WIDE_ROWS - 1
    assert K.int8_f16_config(wide, False) == K.CONFIGS["int8_f16_wide"] != K.CONFIGS["int8_f16"]
    assert K.int8_f16_config(narrow, False) == K.CONFIGS["int8_f16"]
    assert K.int8_f16_config(wide, True) == K.int8_f16_config(narrow, True) == K.CONFIGS["int8_f16_gated"]


def test_gemv_ops_ask_the_rules_about_the_whole_weight(monkeypatch):
    """The int8 and int4 GEMV ops pass the launch rules the weight's rows, a gated weight's gate and up rows together
    (the rules were measured by weight width), and use what the rules return."""
    pytest.importorskip("triton")
    seen = []

    def int4_rule(x, G, rows):
        seen.append(("int4", rows))
        raise RuntimeError("recorded")  # the op falls back to the PyTorch path

    def int8_launch(x, weight, scales, gated, residual, **cfg):
        seen.append(("int8", cfg))
        return x.new_zeros(weight.shape[0] // 2 if gated else weight.shape[0])

    monkeypatch.setattr(K, "_warned", True)  # no warning for the fallback
    monkeypatch.setattr(K, "int4_launch_args", int4_rule)
    monkeypatch.setattr(K, "f16_fits", lambda x, w: True)
    monkeypatch.setattr(K, "int8_f16_gemv_launch", int8_launch)
    monkeypatch.setattr(K, "int8_f16_config", lambda rows, gated: dict(rule_rows=rows, rule_gated=gated))
    x = torch.randn(1, 1, 64)
    w4 = torch.randn(6, 64)
    torch.ops.gptfast.int4_gemv(x, *Q.quantize_int4(w4, 32), 32, True)
    torch.ops.gptfast.gemv(x.bfloat16(), *Q.quantize_int8(w4), True)
    assert seen == [("int4", 6), ("int8", dict(rule_rows=6, rule_gated=True))]


def test_int8_compiled_decode_matches_eager(stories_int8):
    """The int8 model traces whole under torch.compile (generate.py --compile; the w13 product with its SwiGLU
    in FeedForward) and decodes the eager model's greedy tokens."""
    q, tok = g.load(stories_int8, "cpu", torch.float32)
    prompt = tok.encode("Once upon a time")
    eager = greedy(q, prompt, 40)
    torch._dynamo.reset()
    before = graphs_made()
    prefill_fn, decode_fn = g.compile_steps(True, False, q)
    q.setup_caches(1, len(prompt) + 40)
    assert g.generate(q, [prompt], 40, temperature=0, prefill_fn=prefill_fn, decode_fn=decode_fn)[0] == eager
    assert_compiled([q], before)


def test_int8_stories_greedy_equals_float(stories_dir, stories_int8):
    """int8 greedy text equals the float text: measured, all 200 tokens (float32 on CPU)."""
    ref, tok = g.load(stories_dir, "cpu", torch.float32)
    q, _ = g.load(stories_int8, "cpu", torch.float32)
    assert isinstance(q.layers[0].attention.wqkv, Q.Int8Linear)
    prompt = tok.encode("Once upon a time")
    assert greedy(q, prompt, 200) == greedy(ref, prompt, 200)
    ids = prompt + greedy(ref, prompt, 40)
    a, b = logits(ref, ids), logits(q, ids)
    assert (a - b).abs().max() < 0.03 * a.abs().max()  # measured 1.0%
    cfg = json.loads((stories_int8 / "config.json").read_text())["quantization"]
    assert cfg["mode"] == "int8" and cfg["bits"] == 8 and len(cfg["layers"]) == 5 * 4  # tied output stays float
    assert (stories_int8 / "tokenizer.model").is_file()
    assert not [p for p in stories_int8.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("mode,groupsize,model_type", [("int8", None, "llama"), ("int4", 32, "llama"),
                                                       ("int4", 64, "qwen2")])
def test_round_trip_random_model(tmp_path, mode, groupsize, model_type):
    """Save with the CLI, load with generate.load: logits equal the in-memory quantized model's (the file
    is lossless) and stay near the float Hugging Face model's. qwen2 adds q/k/v biases; 96 (the FFN width)
    is not a multiple of 64, so w2 is padded; the untied output layer is quantized too."""
    src, dst = tmp_path / "float", tmp_path / "quant"
    hf = write_hf_checkpoint(src, model_type)
    extra = ["--groupsize", str(groupsize)] if groupsize else []
    r = run_cli("quantize.py", "--checkpoint", src, "--mode", mode, *extra, "--device", "cpu", "--output", dst)
    assert r.returncode == 0, r.stderr
    if groupsize == 64:
        assert "padded to a multiple of 64 input columns" in r.stderr and "feed_forward.w2" in r.stderr
    loaded = Transformer.from_pretrained(dst, "cpu", torch.float32)  # (no tokenizer in a random checkpoint)
    assert isinstance(loaded.output, Q.Int8Linear if mode == "int8" else Q.Int4Linear)
    in_memory = Transformer.from_pretrained(src, "cpu", torch.float32)
    Q.quantize_model(in_memory, mode, groupsize or 32)
    ids = [3, 17, 42, 5, 88, 1, 60, 23, 9, 71]
    torch.testing.assert_close(logits(loaded, ids), logits(in_memory, ids), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].float()
    err = (logits(loaded, ids) - ref).abs().max() / ref.abs().max()
    # relative to the largest logit; measured 1.05% (int8), 13.3% (int4 g32), 12.4% (int4 g64)
    assert err < (0.03 if mode == "int8" else 0.25), err
    assert g.weight_bytes(loaded) < g.weight_bytes(Transformer.from_pretrained(src, "cpu", torch.float32)) / (3 if mode == "int8" else 4)


def test_int4_stories_quality(stories_dir, tmp_path):
    """int4 on stories260K, the greedy text starts like the float one; measured: 16 tokens for g32, g64, g128."""
    ref, tok = g.load(stories_dir, "cpu", torch.float32)
    prompt = tok.encode("Once upon a time")
    expected = greedy(ref, prompt, 16)
    for G in (32, 128):
        q, _ = g.load(stories_dir, "cpu", torch.float32)
        Q.quantize_model(q, "int4", G)
        assert greedy(q, prompt, 16) == expected


# ------------------------------------------------------------------------------------------ GPTQ
def test_gptq_beats_round_to_nearest(stories_dir):
    """On the calibration data, GPTQ's layer-output error is below round-to-nearest's, for the inputs
    of the first block's layers of stories260K (real activations, text from the pydoc help)."""
    model, tok = g.load(stories_dir, "cpu", torch.float32)
    tokens = Q.calibration_tokens(tok, Q.default_calibration_text(), 8, 128)
    seen = {}
    hooks = [getattr(model.layers[0].attention, n).register_forward_hook(
        lambda m, i, o, n=n: seen.update({n: i[0].reshape(-1, i[0].shape[-1])})) for n in ("wqkv", "wo")]
    model.setup_caches(tokens.shape[0], tokens.shape[1])
    with torch.no_grad():
        model(tokens, torch.arange(tokens.shape[1]))
    for h in hooks:
        h.remove()
    for name, X in seen.items():
        W = getattr(model.layers[0].attention, name).weight.detach()
        for G in (32, 64):
            rtn = K.dequantize_int4(*Q.quantize_int4(W, G), G)
            gptq = K.dequantize_int4(*Q.gptq_int4(W, X.T @ X, G), G)
            e_rtn, e_gptq = ((X @ (W - rtn).T) ** 2).mean(), ((X @ (W - gptq).T) ** 2).mean()
            assert e_gptq < 0.8 * e_rtn, (name, G, e_gptq, e_rtn)  # measured ratio 0.43-0.48


def test_gptq_cli(stories_dir, tmp_path):
    text = tmp_path / "cal.txt"
    text.write_text(Q.default_calibration_text()[:20000])
    out = tmp_path / "gptq"
    r = run_cli("quantize.py", "--checkpoint", stories_dir, "--mode", "int4-gptq", "--calibration_text", text,
                "--calibration_samples", "4", "--calibration_seq_len", "64", "--device", "cpu", "--output", out)
    assert r.returncode == 0, r.stderr
    assert "calibrating on 4 samples of 64 tokens" in r.stderr and "GPTQ [" in r.stderr
    cfg = json.loads((out / "config.json").read_text())["quantization"]
    assert cfg["method"] == "gptq" and cfg["groupsize"] == 32
    # the quantized model against the float one (a model of broken weights would still generate 16 tokens)
    model, tok = g.load(out, "cpu", torch.float32)
    ref, _ = g.load(stories_dir, "cpu", torch.float32)
    prompt = tok.encode("Once upon a time")
    assert greedy(model, prompt, 16) == greedy(ref, prompt, 16)  # measured: all 16 equal
    ids = prompt + greedy(ref, prompt, 40)
    a, b = logits(ref, ids), logits(model, ids)
    assert (a - b).abs().max() < 0.3 * a.abs().max()  # measured 0.197


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("extra,message", [
    (["--mode", "int3"], "unknown --mode 'int3'"),
    (["--mode", "int4", "--groupsize", "48"], "--groupsize 48 is not supported"),
    (["--mode", "int8", "--groupsize", "64"], "--groupsize applies to int4 modes"),
    (["--mode", "int4-gptq", "--calibration_text", "/nonexistent.txt"], "calibration text /nonexistent.txt not found"),
    (["--mode", "int4", "--calibration_text", "/nonexistent.txt"], "only used by --mode int4-gptq"),
    (["--mode", "int8", "--calibration_samples", "64"], "--calibration_samples is only used by --mode int4-gptq"),
    (["--mode", "int4-gptq", "--calibration_seq_len", "1"], "--calibration_seq_len >= 2"),
])
def test_cli_bad_input(stories_dir, extra, message):
    r = run_cli("quantize.py", "--checkpoint", stories_dir, "--device", "cpu", *extra)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_bad_checkpoints(stories_int8, tmp_path):
    r = run_cli("quantize.py", "--checkpoint", stories_int8, "--mode", "int4", "--device", "cpu")
    assert r.returncode == 2 and "is already quantized (int8)" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("quantize.py", "--checkpoint", tmp_path / "missing", "--mode", "int8", "--device", "cpu")
    assert r.returncode == 2 and "not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_output_that_cannot_be_made(stories_dir, tmp_path):
    (tmp_path / "a_file").write_text("")  # refused before any quantizing, in one line
    r = run_cli("quantize.py", "--checkpoint", stories_dir, "--mode", "int8", "--device", "cpu",
                "--output", tmp_path / "a_file" / "out")
    assert r.returncode == 2 and "not a writable directory" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "quantized" not in r.stderr


def test_cli_output_replaces_only_earlier_outputs(stories_dir, stories_int8, tmp_path, monkeypatch):
    """--output may replace an empty folder or an earlier quantize.py output, never the input, a file or a folder
    of other files; "--checkpoint ." works; the written files get the usual permissions (not safetensors' 0600)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me too")
    for out, message in [(mine, "is not an earlier quantize.py output"), (tmp_path / "file", "is not an earlier"),
                         (stories_dir, "would replace the input"), (stories_dir.parent, "would replace the input")]:
        r = run_cli("quantize.py", "--checkpoint", stories_dir, "--mode", "int8", "--device", "cpu", "--output", out)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, (out, r.stderr)
    assert (mine / "notes.txt").read_text() == "keep me" and (tmp_path / "file").read_text() == "keep me too"
    monkeypatch.chdir(stories_dir)
    again = tmp_path / "again"
    for _ in range(2):  # a new folder, then the same folder again (an earlier output: replaced)
        Q.main(["--checkpoint", ".", "--mode", "int8", "--device", "cpu", "--output", str(again)])
        assert (again / "model.safetensors").read_bytes() == (stories_int8 / "model.safetensors").read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((again / "model.safetensors").stat().st_mode) == 0o666 & ~umask


def test_cli_calibration_text_not_utf8(stories_dir, tmp_path):
    (tmp_path / "cal.txt").write_bytes(b"caf\xe9 " * 100)  # Latin-1
    r = run_cli("quantize.py", "--checkpoint", stories_dir, "--mode", "int4-gptq", "--device", "cpu",
                "--calibration_text", tmp_path / "cal.txt", "--output", tmp_path / "out")
    assert r.returncode == 2 and "is not UTF-8 text" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_bad_quantization_config(stories_dir):
    args = ModelArgs.from_hf_config(json.loads((stories_dir / "config.json").read_text()))
    with torch.device("meta"):
        model = Transformer(args)
    with pytest.raises(CheckpointError, match=r"\(mode 'int4', bits 4, groupsize 48\) is not supported") as e:
        Q.apply_quantization(model, {"mode": "int4", "bits": 4, "groupsize": 48, "layers": ["layers.0.attention.wqkv"]})
    assert "layers.0" not in str(e.value)  # the layer list is not dumped into the message
    with pytest.raises(CheckpointError, match="packing 1, an older nibble order"):  # written before packing 2
        Q.apply_quantization(model, {"mode": "int4", "bits": 4, "groupsize": 32, "layers": []})
    with pytest.raises(CheckpointError, match="lacks"):
        Q.apply_quantization(model, {"mode": "int8", "bits": 8, "layers": ["layers.9.attention.wqkv"]})
    with pytest.raises(g.UsageError, match="unknown mode"):
        Q.quantize_model(model, "fp3")
