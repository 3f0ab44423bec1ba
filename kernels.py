"""The Triton kernels of the decode step, each with a PyTorch path that is its reference and runs wherever
the kernel does not (CPU, no Triton, shapes it does not take):
- matmuls with quantized weights: GEMVs for batch-1 decode (below; reference paths here), the int4 one also
  for 2-16 rows, once a row; the int8 one in float32 arithmetic also takes 16-bit weights (wo and w2 of a 16-bit
  model, see linear);
- matmuls of 2-16 activation rows (batched decode; with int8 weights also short prompts and speculative
  verification): a skinny product that reads each weight once;
- decode attention for one new token: RoPE, KV-cache write and flash-decoding attention in one kernel
  (reference: model.Attention's PyTorch path);
- SwiGLU, as a kernel of its own (Inductor inlined it into its w2 product, recomputing it in every program).

Decode at batch 1 multiplies one activation row by every weight matrix, so its speed is bytes of
weights read per second. The Triton kernels below read the quantized bytes once, dequantize in
registers and never write a dequantized matrix. (PyTorch's own int4 kernel, tinygemm, takes int4 layers
instead where each step has several rows: quantize.pack_for_device.)
Everything else (longer prompts, CPU, no Triton) takes the PyTorch path, which is also the reference the
tests compare the kernels with.

Layouts (as in the checkpoint, on every device; tinygemm's, where chosen, is made from them at load time):
  int8: weight (N, K) int8, scales (N,): w[n, k] = weight[n, k] * scales[n]
  int4: weight (N, K // 2) uint8, two 4-bit q per byte (see pack_int4); scales, zeros (N, K // G):
        w[n, k] = (q[n, k] - 8) * scales[n, k // G] + zeros[n, k // G]
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the PyTorch paths below do all the work
    triton = None


# ------------------------------------------------------------------------------ int4 packing
def pack_int4(q: Tensor, groupsize: int) -> Tensor:
    """(N, K) integers in [0, 15] -> (N, K // 2) uint8. A group of G columns is G/8 little-endian 32-bit
    words of 8 nibbles: in word m, byte i holds column i*G/8 + m in its low nibble and G/2 + i*G/8 + m in
    its high nibble. So every nibble of a word shares the group's scale, and the GEMV kernel, taking a
    word's 8 nibbles one after another, multiplies each by a contiguous slice of x."""
    N, K = q.shape
    q = q.to(torch.uint8).view(N, K // groupsize, 2, 4, groupsize // 8)  # (N, groups, low/high, byte i, word m)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).transpose(-1, -2).reshape(N, K // 2)  # bytes in order (m, i)


def unpack_int4(packed: Tensor, groupsize: int) -> Tensor:
    """(N, K // 2) uint8 -> (N, K) uint8 in [0, 15]; the inverse of pack_int4."""
    N = packed.shape[0]
    p = packed.view(N, -1, groupsize // 8, 4).transpose(-1, -2)  # (N, groups, byte i, word m)
    return torch.stack([p & 15, p >> 4], dim=2).reshape(N, -1)  # (N, groups, low/high, i, m) -> (N, K)


def dequantize_int4(packed: Tensor, scales: Tensor, zeros: Tensor, groupsize: int) -> Tensor:
    """The float32 (N, K) matrix an int4 layer stands for."""
    q = unpack_int4(packed, groupsize).float()
    N, K = q.shape
    w = (q.view(N, K // groupsize, groupsize) - 8) * scales.float()[..., None] + zeros.float()[..., None]
    return w.view(N, K)


# ------------------------------------------------------------------------ tinygemm (CUDA int4)
def tinygemm_pack(weight: Tensor, scales: Tensor, zeros: Tensor, groupsize: int) -> tuple[Tensor, Tensor]:
    """An int4 layer in the layout of PyTorch's CUDA int4 kernel (aten._weight_int4pack_mm, "tinygemm"),
    which computes the same w = (q - 8) * s + z: q re-paired (columns 2j, 2j + 1 in the high and low
    nibbles of byte j) and tiled by aten._convert_weight_to_int4pack; scales and zeros interleaved as
    (K / G, N, 2). Needs N % 8 == 0, K % 128 == 0, bf16 scales."""
    q = unpack_int4(weight, groupsize)
    packed = torch.ops.aten._convert_weight_to_int4pack((q[:, 0::2] << 4 | q[:, 1::2]).contiguous(), 8)
    return packed, torch.stack([scales.t(), zeros.t()], dim=-1).contiguous()


def tinygemm_linear(x: Tensor, packed: Tensor, scales_zeros: Tensor, groupsize: int) -> Tensor:
    """x (..., K) bf16 @ the packed layer's weight^T -> (..., N)."""
    K_pad = scales_zeros.shape[0] * groupsize
    if x.shape[-1] != K_pad:
        x = F.pad(x, (0, K_pad - x.shape[-1]))
    y = torch.ops.aten._weight_int4pack_mm(x.reshape(-1, K_pad), packed, groupsize, scales_zeros)
    return y.view(*x.shape[:-1], -1)


# ---------------------------------------------------------------------------------- dispatch
# GPTFAST_NO_TRITON=1 forces the PyTorch path (to compare, or to work around a Triton problem).
USE_TRITON = triton is not None and not os.environ.get("GPTFAST_NO_TRITON")
# GPTFAST_NO_DECODE_ATTENTION=1 keeps decode attention on the PyTorch path (RoPE, cache writes, SDPA).
USE_DECODE_ATTENTION = USE_TRITON and not os.environ.get("GPTFAST_NO_DECODE_ATTENTION")
# GPTFAST_NO_SKINNY=1 leaves products of 2-16 rows to the PyTorch path: cuBLAS (linear), dequantize + cuBLAS (int8).
USE_SKINNY = USE_TRITON and not os.environ.get("GPTFAST_NO_SKINNY")
# GPTFAST_NO_GATED=1 leaves the SwiGLU after a quantized w13 to its own kernel (swiglu) instead of the GEMV (int8_swiglu).
USE_GATED = USE_TRITON and not os.environ.get("GPTFAST_NO_GATED")
# GPTFAST_NO_FUSED_ADD=1 leaves the residual add after a GEMV (wo, w2: quantized, or 16-bit) to a kernel of its own.
USE_FUSED_ADD = USE_TRITON and not os.environ.get("GPTFAST_NO_FUSED_ADD")
# GPTFAST_NO_ROW_NORM=1 leaves every RMSNorm to Inductor (model.rms_norm) instead of rms_norm_launch's kernel.
USE_ROW_NORM = USE_TRITON and not os.environ.get("GPTFAST_NO_ROW_NORM")
# GPTFAST_DECODE_SLICES=n fixes the decode attention kernel's number of slices (decode_attention_launch).
DECODE_SLICES = int(os.environ.get("GPTFAST_DECODE_SLICES", 0))


# Programmatic dependent launch (Hopper and later): each kernel below is launched so that it may start
# while the kernel before it finishes; it loads what does not depend on that kernel (weights), then waits
# for it (gdc_wait) before reading its output, and lets the next kernel start once its own loads are done
# (gdc_launch_dependents). Inductor does the same in its kernels (generate.compile_regions). Off with
# TORCHINDUCTOR_ENABLE_PDL=0, which also turns it off in Inductor; needs Triton >= 3.4 (torch >= 2.8).
USE_PDL = (os.environ.get("TORCHINDUCTOR_ENABLE_PDL", "1") != "0" and not os.environ.get("TRITON_INTERPRET")
           and triton is not None and hasattr(getattr(tl.extra, "cuda", None), "gdc_wait"))
_pdl_devices: dict[int, dict] = {}


def _pdl(t: Tensor) -> dict:
    """Launch options for a kernel taking a PDL flag: PDL on Hopper and later; older Triton releases do not
    know the launch_pdl option, so it is passed only when used."""
    if t.device.index not in _pdl_devices:
        on = USE_PDL and torch.cuda.get_device_capability(t.device)[0] >= 9
        _pdl_devices[t.device.index] = dict(PDL=True, launch_pdl=True) if on else dict(PDL=False)
    return _pdl_devices[t.device.index]


def _use_triton(x: Tensor, rows: int = 1) -> bool:
    """Whether a Triton GEMV takes x: on CUDA, one activation row (batch-1 decode) or up to `rows`."""
    return USE_TRITON and x.is_cuda and 1 <= x.numel() // x.shape[-1] <= rows


# GPTFAST_INT8_F32=1 keeps one-row int8 products in _gemv_kernel's float32 arithmetic instead of float16 pairs.
USE_INT8_F16 = USE_TRITON and not os.environ.get("GPTFAST_INT8_F32") and not os.environ.get("TRITON_INTERPRET")
# GPTFAST_INT4_F32=1 keeps int4 products in _int4_gemv_kernel instead of float16 pairs.
USE_INT4_F16 = USE_TRITON and not os.environ.get("GPTFAST_INT4_F32") and not os.environ.get("TRITON_INTERPRET")


_f16x2_devices: dict[int, bool] = {}


def _f16x2_device(x: Tensor) -> bool:
    """Whether x is on an NVIDIA GPU of compute capability 8.0 or later, which the float16-pair GEMVs need (their PTX
    converts float32 pairs to float16 pairs)."""
    if not x.is_cuda:
        return False
    if x.device.index not in _f16x2_devices:
        cap = torch.cuda.get_device_capability(x.device)
        _f16x2_devices[x.device.index] = torch.version.hip is None and cap >= (8, 0)
    return _f16x2_devices[x.device.index]


def f16_fits(x: Tensor, weight: Tensor) -> bool:
    """Whether _int8_f16_gemv_kernel takes this one-row int8 product: x bfloat16, K % 4 == 0, both 4-byte aligned,
    on a GPU that runs it (_f16x2_device)."""
    return (USE_INT8_F16 and x.dtype == torch.bfloat16 and weight.dtype == torch.int8 and weight.shape[1] % 4 == 0
            and x.data_ptr() % 4 == 0 and weight.data_ptr() % 4 == 0 and _f16x2_device(x))


def int8_f16_config(rows: int, gated: bool) -> dict:
    """_int8_f16_gemv_kernel's launch shape for a weight of `rows` rows: int8_f16_gated for w13 with the SwiGLU,
    int8_f16_wide from WIDE_ROWS rows, else int8_f16."""
    return CONFIGS["int8_f16_gated" if gated else "int8_f16_wide" if rows >= WIDE_ROWS else "int8_f16"]


def int4_launch_args(x: Tensor, groupsize: int, rows: int) -> dict:
    """int4_gemv_launch's kernel and launch shape for x and a weight of `rows` rows (a gated one's gate and up rows
    together): the float16-pair kernel for groups of 32, 64 and 128 and 16-bit x on a GPU that runs it, at launch
    shape int4_f16_wide from WIDE_ROWS rows (more programs of one warp, enough of them to fill the GPU), else
    int4_f16; otherwise _int4_gemv_kernel at CONFIGS[groupsize]."""
    if USE_INT4_F16 and groupsize in (32, 64, 128) and x.dtype in (torch.bfloat16, torch.float16) and _f16x2_device(x):
        key = "int4_f16_wide" if rows >= WIDE_ROWS else "int4_f16_g32" if groupsize == 32 else "int4_f16"
        return dict(**CONFIGS[key], f16=True)
    return dict(CONFIGS[groupsize])


def _use_gemv(x: Tensor, weight: Tensor) -> bool:
    """Whether _gemv_kernel takes this product: one row of x (_use_triton), and rows of K contiguous weights that its
    32-bit offsets address."""
    return _use_triton(x) and weight.is_contiguous() and weight.numel() < 2 ** 31


def use_decode_attention(qkv: Tensor, k_cache: Tensor) -> bool:
    """Whether model.Attention can hand a one-token step to the fused Triton kernel (decode_attention_launch):
    CUDA, 16-bit, a power-of-two head_dim from 32 to 256, and a cache its 32-bit offsets can address."""
    return (USE_DECODE_ATTENTION and qkv.is_cuda and qkv.dtype in (torch.bfloat16, torch.float16)
            and k_cache.shape[-1] in (32, 64, 128, 256) and k_cache.numel() < 2 ** 31)


def use_row_norm(x: Tensor, weight: Tensor) -> bool:
    """Whether model.RMSNorm may hand x to rms_norm_launch's one-pass kernel: on CUDA, _row_norm_fits."""
    return USE_ROW_NORM and x.is_cuda and _row_norm_fits(x, weight)


def _row_norm_fits(x: Tensor, weight: Tensor) -> bool:
    """A decode step, x (B, 1, dim) with B <= 16 (measured at 1 and 8; larger batches keep Inductor's norm), x and the
    norm weight of one 16-bit dtype, dim at most 32768. Prompts stay with Inductor: a test of their length would make
    torch.compile's prefill graph, compiled for any length, recompile."""
    return (x.dim() == 3 and x.shape[1] == 1 and x.shape[0] <= 16 and x.dtype == weight.dtype
            and x.dtype in (torch.bfloat16, torch.float16) and x.shape[-1] <= 32768)


def swiglu(gate_up: Tensor) -> Tensor:
    """silu(gate) * up, gate and up the two halves of the last dimension (the fused w13 output).

    On CUDA it is a kernel of its own (a custom op). Left to Inductor, it was inlined into Inductor's bf16 w2
    matrix-vector kernel that read it (before one row of w2 ran the GEMV below), where every program recomputed
    it for the whole row (an exp and a division per element per program): on an H100 that w2 took 41.6 us per
    7B layer; as a kernel of its own, 1.2 us plus 36.7 us for w2 (BENCHMARKS.md)."""
    if USE_TRITON and gate_up.is_cuda:
        return torch.ops.gptfast.swiglu(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def _use_skinny(x: Tensor, weight: Tensor) -> bool:
    return USE_SKINNY and x.is_cuda and _skinny_fits(x, weight)


def _skinny_fits(x: Tensor, weight: Tensor) -> bool:
    """2 to 16 activation rows of 16-bit floats, and a weight the skinny kernel's 32-bit offsets address."""
    return (2 <= x.numel() // x.shape[-1] <= 16 and x.dtype in (torch.bfloat16, torch.float16)
            and weight.is_contiguous() and weight.numel() < 2 ** 31)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, residual: Tensor | None = None,
           gemv: bool = False) -> Tensor:
    """x @ weight^T + bias + residual. On CUDA with 16-bit weights and no bias, batched decode (2 to 16 rows of one
    token each) runs the skinny product below: at 8 rows on an H100 152 us per 7B block against cuBLAS's 157 (plus
    cuBLAS's split-K reduction kernels), and batch-8 decode went from 1337 to 1425 tok/s (BENCHMARKS.md).
    One row stays with Inductor, whose GEMV has the RMSNorm in front fused in (wqkv, w13), unless `gemv` (wo, w2:
    their input comes from a kernel of this file, so Inductor has nothing to fuse): then the Triton GEMV, which also
    adds the residual (without a bias). Inductor's took 10.6 us at wo's shape on one of two tensor-parallel ranks
    (K = 2048), the GEMV 5.7; 2-GPU 7B decode went from 349.5 to 390.7 tok/s, one H200 from 256.5 to 273.4
    (BENCHMARKS.md runs 105-106). Under tp.py every rank's GEMV adds that rank's part of the residual stream."""
    if x.dim() == 3 and x.shape[1] == 1 and bias is None and weight.dtype == x.dtype and _use_skinny(x, weight):
        y = torch.ops.gptfast.skinny_mm(x, weight)
    elif gemv and _use_gemv(x, weight) and weight.dtype == x.dtype and x.dtype in (torch.bfloat16, torch.float16):
        if bias is None and (residual is None or _fused_add(x, weight, residual)):
            return torch.ops.gptfast.gemv(x, weight, None, False, residual)
        y = torch.ops.gptfast.gemv(x, weight, None)
        y = y if bias is None else y + bias
    else:
        y = F.linear(x, weight, bias)
    return y if residual is None else residual + y


def int8_linear(x: Tensor, weight: Tensor, scales: Tensor, bias: Tensor | None = None,
                residual: Tensor | None = None) -> Tensor:
    """x (..., K) @ dequantized weight^T + bias + residual -> (..., N). For one row on CUDA and no bias the GEMV
    adds the residual (of x's shape and dtype) as it stores its output: 0.7 us more a 7B layer on an H200, and no
    add kernel (BENCHMARKS.md runs 85, 87)."""
    if _use_gemv(x, weight) and bias is None and (residual is None or _fused_add(x, weight, residual)):
        return torch.ops.gptfast.gemv(x, weight, scales, False, residual)
    y = _int8_product(x, weight, scales)
    y = y if bias is None else y + bias
    return y if residual is None else residual + y


def _fused_add(x: Tensor, weight: Tensor, residual: Tensor) -> bool:
    return USE_FUSED_ADD and residual.dtype == x.dtype and residual.shape == (*x.shape[:-1], weight.shape[0])


def _int8_product(x: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    if _use_gemv(x, weight):
        return torch.ops.gptfast.gemv(x, weight, scales)
    if _use_skinny(x, weight):  # 2-16 rows in all (short prompts, speculative verification, batched decode): on an
        return torch.ops.gptfast.skinny_mm(x, weight, scales)  # H100 95 us per 7B block at 5 or 8 rows, against
        # 1223 us for the path below run eagerly (BENCHMARKS.md run 59)
    if x.numel() == x.shape[-1] and torch.compiler.is_compiling():
        return int8_row(x, weight, scales)
    # The scales multiply the weight, not the output: inductor rewrites "F.linear(x, w.to(dtype)) * scales"
    # into aten._weight_int8pack_mm, whose CUDA kernel took 116 of the 118 ms of a 5-token 7B prefill.
    return F.linear(x, weight.to(x.dtype) * scales[:, None].to(x.dtype))


def int8_swiglu(x: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    """swiglu(int8_linear(x, weight, scales)), weight the fused [gate; up]. For one row on CUDA the GEMV does it:
    its programs compute row r of gate and of up and store silu(gate) * up, so the SwiGLU kernel goes."""
    if _use_gemv(x, weight) and USE_GATED:
        return torch.ops.gptfast.gemv(x, weight, scales, True)
    return swiglu(int8_linear(x, weight, scales))


def int4_linear(x: Tensor, weight: Tensor, scales: Tensor, zeros: Tensor, groupsize: int, bias: Tensor | None = None,
                residual: Tensor | None = None) -> Tensor:
    """x (..., K) @ dequantized weight^T + bias + residual -> (..., N); K may be below the padded 2 * weight.shape[1].
    1-16 rows on CUDA run the GEMV, once a row (batched decode, short prompts, speculative verification), which with
    no bias adds the residual as int8_linear's does; more rows dequantize the matrix once and call cuBLAS."""
    x = _pad_int4(x, weight)
    if _use_triton(x, 16):
        if bias is None and (residual is None or _fused_add(x, weight, residual)):
            return torch.ops.gptfast.int4_gemv(x, weight, scales, zeros, groupsize, False, residual)
        y = torch.ops.gptfast.int4_gemv(x, weight, scales, zeros, groupsize)
    elif x.numel() == x.shape[-1] and torch.compiler.is_compiling():
        y = int4_row(x, weight, scales, zeros, groupsize)
    else:
        y = F.linear(x, dequantize_int4(weight, scales, zeros, groupsize).to(x.dtype))
    y = y if bias is None else y + bias
    return y if residual is None else residual + y


def int4_swiglu(x: Tensor, weight: Tensor, scales: Tensor, zeros: Tensor, groupsize: int) -> Tensor:
    """swiglu(int4_linear(...)), weight the fused [gate; up]; for 1-16 rows on CUDA inside the GEMV (int8_swiglu)."""
    if _use_triton(x, 16) and USE_GATED:
        return torch.ops.gptfast.int4_gemv(_pad_int4(x, weight), weight, scales, zeros, groupsize, True)
    return swiglu(int4_linear(x, weight, scales, zeros, groupsize))


def _pad_int4(x: Tensor, weight: Tensor) -> Tensor:
    """x with zero columns up to the int4 layer's padded width (in_features not a multiple of the group size)."""
    K_pad = 2 * weight.shape[1]
    return x if x.shape[-1] == K_pad else F.pad(x, (0, K_pad - x.shape[-1]))


# One activation row (batch-1 decode) under torch.compile without Triton (CPU): a product and a sum over
# each weight row, which inductor compiles into a single reduction kernel that reads every quantized byte
# once (the dequantized matrix exists only in registers): 20-40x faster on CPU than compiling the matmul
# path, which materialises the dequantized matrix every step (BENCHMARKS.md). Eager, the matmul path is faster.
def int8_row(x: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    y = (weight * x.reshape(1, -1).float()).sum(-1) * scales
    return y.to(x.dtype).view(*x.shape[:-1], -1)


def int4_row(x: Tensor, weight: Tensor, scales: Tensor, zeros: Tensor, groupsize: int) -> Tensor:
    N, G = weight.shape[0], groupsize
    p = weight.view(N, -1, G // 2)  # (N, groups, G/2): both nibbles of a byte share their group
    # x in byte order (pack_int4): the column of byte 4m + i is i*G/8 + m (+ G/2 for the high nibbles)
    xg = x.reshape(-1, 2, 4, G // 8).transpose(-1, -2).reshape(-1, 2, G // 2).float()  # (groups, low/high, G/2)
    s, z = scales.float()[..., None], zeros.float()[..., None]  # (N, groups, 1)
    w_lo, w_hi = ((p & 15).float() - 8) * s + z, ((p >> 4).float() - 8) * s + z
    y = (w_lo * xg[:, 0] + w_hi * xg[:, 1]).sum((-2, -1))
    return y.to(x.dtype).view(*x.shape[:-1], -1)


# --------------------------------------------------------------------------- Triton kernels
# Launch shapes by kind ("int8", or the int4 group size): picked from the sweep in scripts/bench_gemv.py
# on an H100 (see README). GPTFAST_GEMV_CONFIGS=file.json overrides them (bench_gemv.py --configs_out
# writes such a file), so a benchmark can use freshly measured shapes.
# int8: scripts/bench_gemv.py on an H100 (2026-11-27, torch 2.11, Triton 3.6; BENCHMARKS.md): (4, 1024, 2)
# moves the four products of a 7B block at 2.0-2.7 TB/s, 82.8 us a block against 88.5 for (8, 1024, 4).
# skinny (8 rows): bench_gemv.py --kinds skinny on an H100 (2026-11-27): (16, 128, 2 warps, 5 stages) best over a
# block, 152.2 us (the next four within 0.8%; cuBLAS 156.8). skinny_int8 (int8 weights): the best of 5 shapes over a
# block on an H100 (2026-11-27, BENCHMARKS.md run 59), 95.2-95.3 us at 5 and 8 rows (others 98-123); bench_gemv.py
# --kinds skinny_int8 sweeps it.
# int4, every group size: (4, 2048, 2), the best of 9 shapes over a 7B block at g32 and g128 in two sweeps on H100s
# (2026-11-27, BENCHMARKS.md runs 90 and 94: g32 62.8-63.9 us, tinygemm 78.2-78.8; g128 55.2-57.6, tinygemm 64.2-64.3);
# at g64 the best shape changed between the sweeps, and (4, 2048, 2) took 63.8-66.8 us (tinygemm 66.7-67.2).
# int8_gated (w13 with the SwiGLU): (2, 512, 2) the best of 9 shapes on an H100 (2026-11-27, BENCHMARKS.md run 76),
# 51.8 us for w13 and w2 of a 7B layer; (2, 1024, 2) 52.6, (4, 1024, 2) 56.3.
# bf16 (wo and w2 of a 16-bit model, kernels.linear): (8, 512, 2), the best of 29 shapes over a 7B block at the shapes
# of one of two tensor-parallel ranks on an H200 (2026-11-27, BENCHMARKS.md run 105): wo 5.7 us (Inductor's 10.6), w2
# 12.8 (13.1). Over wo and w2 alone it is within 2% of the best on one H200 and 5% on an H100 ((8, 1024, 2): 0-4%).
# int8_f16 (the float16-pair GEMV): (8, 2048, 4), over 29 shapes on an H100 (2026-11-28, BENCHMARKS.md run 134) the
# best for wqkv, wo and w2 of a 7B block, and in bench_gemv.py's sweep at Llama-2-70B widths on one of two H200 ranks
# (run 142). int8_f16_gated (w13 with the SwiGLU): (2, 2048, 4), the best in the sweeps of run 138 (7B, H100: 31.8 us
# against 33.1 for (4, 1024, 4)) and run 142 (57.7 us; (4, 1024, 4) not among the five best, which were within 3%);
# end to end on H200s, against (4, 1024, 4): 7B int8 416.1 tok/s against 411.7-411.8, 70B int8 on two 91.6-91.7
# against 90.7-90.8 (runs 142-143).
# The _wide shapes serve weights of WIDE_ROWS rows or more that are not gated int8 (7B: wqkv, the output layer, and w13
# in int4): programs of one warp, of which such a weight has enough to fill the GPU (7B wo and w2, 4096 rows, lose with
# them). On an H200 (2026-11-28, BENCHMARKS.md runs 164-169): int8_f16_wide (8, 512, 1), the best of 29 shapes on 7B
# wqkv (14.7 us against 16.3 at int8_f16's) and on the output layer (33.4 against 35.0); 7B int8 decode 445.4-446.0
# tok/s against 434.8-435.0. int4_f16_wide (8, 1024, 1), the best of 13 shapes over wqkv and w13 at g32, g64 and g128
# and over wqkv, w13 and the output layer at g32 and g128.
# int4_f16 (the float16-pair int4 GEMV on the other weights, groups of 64 and 128): (8, 4096, 4), the best on wo and
# w2 at g64 and g128 on an H200 (run 165; 15.3 us against 16.3 for (4, 2048, 2) at g128), and on an H100 (run 163).
# At g32 it took 23.5 us there: int4_f16_g32 (4, 2048, 2), 18.8 us, the best at g32 (run 164). 7B int4 decode on an
# H200 with these shapes (run 168): g32 512.4 tok/s, g64 538.4, g128 575.4; with the float32-word kernel at (4, 2048, 2)
# (run 165) 440.2, 432.3 and 493.0.
CONFIGS = {"bf16": dict(BLOCK_N=8, BLOCK_K=512, num_warps=2),
           "int8": dict(BLOCK_N=4, BLOCK_K=1024, num_warps=2),
           "int8_gated": dict(BLOCK_N=2, BLOCK_K=512, num_warps=2),
           "int8_f16": dict(BLOCK_N=8, BLOCK_K=2048, num_warps=4),
           "int8_f16_gated": dict(BLOCK_N=2, BLOCK_K=2048, num_warps=4),
           "int8_f16_wide": dict(BLOCK_N=8, BLOCK_K=512, num_warps=1),
           "skinny": dict(BLOCK_N=16, BLOCK_K=128, num_warps=2, num_stages=5),
           "skinny_int8": dict(BLOCK_N=32, BLOCK_K=256, num_warps=4, num_stages=3),
           "int4_f16": dict(BLOCK_N=8, BLOCK_K=4096, num_warps=4),
           "int4_f16_g32": dict(BLOCK_N=4, BLOCK_K=2048, num_warps=2),
           "int4_f16_wide": dict(BLOCK_N=8, BLOCK_K=1024, num_warps=1),
           **{G: dict(BLOCK_N=4, BLOCK_K=2048, num_warps=2) for G in (32, 64, 128, 256)}}
if os.environ.get("GPTFAST_GEMV_CONFIGS"):
    import json

    with open(os.environ["GPTFAST_GEMV_CONFIGS"]) as f:
        _given = {int(k) if k.isdigit() else k: v for k, v in json.load(f).items()}
    if set(_given) - set(CONFIGS):
        raise ValueError(f"GPTFAST_GEMV_CONFIGS: unknown keys {sorted(map(str, set(_given) - set(CONFIGS)))}; "
                         f"the keys are {sorted(map(str, CONFIGS))}")
    CONFIGS.update(_given)

WIDE_ROWS = 12288  # int8_f16_wide and int4_f16_wide from this many weight rows: 7B wqkv, w13, output; not wo, w2
_warned = False

if triton is not None:

    # Integers to float32 without the integer-to-float instruction, which issues at 1/8 of the FMA rate
    # on recent GPUs (16 vs 128 per clock per SM): an integer u in [0, 2^23) placed in the mantissa of
    # 2^23 (bit pattern 0x4B000000) is the float 2^23 + u, so an OR and a subtraction convert it exactly.
    @triton.jit
    def _int8_to_float(w):  # int8 -> float32: the byte with its sign bit flipped is w + 128 in [0, 255]
        u = w.to(tl.uint8, bitcast=True).to(tl.int32)
        return (u ^ 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0  # 2^23 + 128

    @triton.jit
    def _to_float(w):  # a tile of weights, int8 or 16-bit floats, to float32
        if w.dtype == tl.int8:
            return _int8_to_float(w)
        return w.to(tl.float32)

    @triton.jit
    def _first_tiles(w_ptr, rows, row_ok, cols, width, N, GATED: tl.constexpr):
        # The GEMVs' first weight tile of `rows` (elements `cols` of rows `width` long) and, GATED, of the up rows N
        # further, with where they start: loaded before the kernel waits for its input (PDL).
        w_at = w_ptr + rows[:, None] * width + cols[None, :]
        u_at = w_at + N * width  # the up rows (GATED)
        w = tl.load(w_at, mask=row_ok[:, None] & (cols[None, :] < width), other=0)  # independent of the kernel before
        u = w
        if GATED:
            u = tl.load(u_at, mask=row_ok[:, None] & (cols[None, :] < width), other=0)
        return w_at, u_at, w, u

    @triton.jit
    def _store_rows(y, up, s_ptr, r_ptr, y_ptr, rows, row_ok, N, GATED: tl.constexpr, RESIDUAL: tl.constexpr,
                    SCALED: tl.constexpr):
        # The GEMVs' epilogue, y (and, GATED, up) the rows' float32 sums: times the row scales (SCALED: int8),
        # silu(gate) * up (GATED), plus the residual, rounded as a separate add would round it (RESIDUAL), stored.
        if SCALED:
            y *= tl.load(s_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        if GATED:
            if SCALED:
                up *= tl.load(s_ptr + N + rows, mask=row_ok, other=0.0).to(tl.float32)
            y = y / (1.0 + tl.exp(-y)) * up
        if RESIDUAL:
            r = tl.load(r_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
            y = y.to(y_ptr.dtype.element_ty).to(tl.float32) + r  # y rounded first, as the model's separate add has it
        tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)

    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, s_ptr, r_ptr, y_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GATED: tl.constexpr, RESIDUAL: tl.constexpr, SCALED: tl.constexpr, PDL: tl.constexpr):
        # y = (w @ x) * s: w int8 (N, K), s the per-row scales; or, SCALED false, y = w @ x with w 16-bit floats.
        # GATED: w has 2N rows, gate then up (the fused w13), and y = silu(gate) * up: the program computes row r
        # of both, so the SwiGLU costs no kernel.
        # RESIDUAL: y = r + y, rounded as a separate add would round it, which then costs no kernel either.
        # (The RMSNorm before wqkv and w13 measured slower inside this kernel than in a kernel of its own: BENCHMARKS.md.)
        # Each program owns BLOCK_N output rows and walks all of K: the reduction stays in registers
        # and the result is written once (no split-K atomics, no zero-fill or cast kernels). The next
        # tile of weights is loaded before the current one is used, so two tiles are in flight.
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        cols = tl.arange(0, BLOCK_K)
        w_at, u_at, w, u = _first_tiles(w_ptr, rows, row_ok, cols, K, N, GATED)
        if PDL:
            tl.extra.cuda.gdc_wait()  # x is its output
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)  # reduced once, after the loop
        acc_u = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            x = tl.load(x_ptr + k0 + cols, mask=k0 + cols < K, other=0.0).to(tl.float32)
            next_ok = row_ok[:, None] & (k0 + BLOCK_K + cols[None, :] < K)
            w_next = tl.load(w_at + k0 + BLOCK_K, mask=next_ok, other=0)
            acc += _to_float(w) * x[None, :]
            w = w_next
            if GATED:
                u_next = tl.load(u_at + k0 + BLOCK_K, mask=next_ok, other=0)
                acc_u += _to_float(u) * x[None, :]
                u = u_next
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
        _store_rows(tl.sum(acc, axis=1), tl.sum(acc_u, axis=1), s_ptr, r_ptr, y_ptr, rows, row_ok, N, GATED, RESIDUAL,
                    SCALED)

    # int8 x bf16 in float16 pairs (f16x2): four weights cost one XOR, two PRMT, two f16x2 subtractions and two f16x2
    # multiply-adds (1.75 instructions a weight; the loop of the sm_90 build runs 2.7-3.5 a weight with its loads and
    # x's conversion, against 5.1 for _gemv_kernel's float32 arithmetic). The byte u = w + 128 under 0x54 is the
    # float16 64 + u / 16, and minus 72 it is w / 16, exactly. x converts to float16 unscaled, exactly for |x| in
    # [2^-17, 65504] (bf16 has 8 significant bits; smaller values round to float16's subnormals, steps of 2^-24).
    # A lane adds 2 products of at most 8 |x| per tile, so its float16 sums (max 65504) cannot overflow while
    # |x| < 4094 / (K / BLOCK_K); if one does (or x holds an inf), the sum is not finite and the program sums its
    # rows again in float32 (_int8_rows_f32): large activations cost time, not accuracy. Inline PTX: CUDA only. The
    # CPU tests interpret the helpers' PTX, and run the kernel in Triton's interpreter with the helpers rewritten in
    # Triton; scripts/gpu_check_quant.py checks it on the GPU.
    # On H100s: 7B int8 decode 326.3-334.6 -> 339.1-346.8 tok/s, Llama-2-70B int8 on two 68.3-69.3 -> 71.5-72.0
    # (BENCHMARKS.md runs 134-141; the 70B rows with x scaled by 2^-8 instead of the weights by 1/16).
    @triton.jit
    def _x_to_f16x2(x2):  # int32 words of two bfloat16 -> int32 words of the same two as float16
        return tl.inline_asm_elementwise(
            """{
            .reg .b32 lo, hi;
            shl.b32 lo, $1, 16;
            and.b32 hi, $1, 0xffff0000;
            cvt.rn.f16x2.f32 $0, hi, lo;
            }""", "=r,r", [x2], dtype=tl.int32, is_pure=True, pack=1)

    @triton.jit
    def _dot4_f16x2(w, x01, x23, acc):  # acc (f16x2) + (w0 x0 + w2 x2, w1 x1 + w3 x3) / 16, w a word of 4 int8
        return tl.inline_asm_elementwise(
            """{
            .reg .b32 t, a, b, c, d;
            xor.b32 t, $1, 0x80808080;
            mov.b32 c, 0x54805480;
            prmt.b32 a, t, 0x54545454, 0x4140;
            prmt.b32 b, t, 0x54545454, 0x4342;
            sub.f16x2 a, a, c;
            sub.f16x2 b, b, c;
            fma.rn.f16x2 d, a, $2, $4;
            fma.rn.f16x2 $0, b, $3, d;
            }""", "=r,r,r,r,r", [w, x01, x23, acc], dtype=tl.int32, is_pure=True, pack=1)

    @triton.jit
    def _f16x2_sum(acc):  # a word of two float16 -> their sum in float32
        return tl.inline_asm_elementwise(
            """{
            .reg .f16 l, h;
            .reg .f32 a, b;
            mov.b32 {l, h}, $1;
            cvt.f32.f16 a, l;
            cvt.f32.f16 b, h;
            add.f32 $0, a, b;
            }""", "=r,r", [acc], dtype=tl.float32, is_pure=True, pack=1)

    @triton.jit
    def _int8_rows_f32(x_ptr, w_ptr, rows, row_ok, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # sum over k of w[rows, k] x[k] in float32 (as _gemv_kernel), w int8 and x 16-bit: the overflow fallback
        cols = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ok = k0 + cols < K
            x = tl.load(x_ptr + k0 + cols, mask=ok, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + rows[:, None] * K + k0 + cols[None, :], mask=row_ok[:, None] & ok[None, :], other=0)
            acc += _int8_to_float(w) * x[None, :]
        return tl.sum(acc, axis=1)

    @triton.jit
    def _int8_f16_gemv_kernel(x_ptr, w_ptr, s_ptr, r_ptr, y_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                              GATED: tl.constexpr, RESIDUAL: tl.constexpr, PDL: tl.constexpr):
        # _gemv_kernel's int8 product (GATED, RESIDUAL and the tiles alike) in float16 pairs: w read as int32
        # words (K / 4 a row), x as words of two bfloat16; a lane's pair of sums stays float16 across the loop
        # and is summed in float32 after it.
        KT: tl.constexpr = BLOCK_K // 4  # words a tile row
        KW = K // 4
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        k = tl.arange(0, KT)
        w_at, u_at, w, u = _first_tiles(w_ptr, rows, row_ok, k, KW, N, GATED)
        if PDL:
            tl.extra.cuda.gdc_wait()  # x is its output
        acc = tl.zeros((BLOCK_N, KT), dtype=tl.int32)  # f16x2 zeros
        acc_u = tl.zeros((BLOCK_N, KT), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            k_ok = k0 // 4 + k < KW
            x01 = _x_to_f16x2(tl.load(x_ptr + k0 // 2 + 2 * k, mask=k_ok, other=0))[None, :]
            x23 = _x_to_f16x2(tl.load(x_ptr + k0 // 2 + 2 * k + 1, mask=k_ok, other=0))[None, :]
            next_ok = row_ok[:, None] & (k0 // 4 + KT + k[None, :] < KW)
            w_next = tl.load(w_at + k0 // 4 + KT, mask=next_ok, other=0)
            acc = _dot4_f16x2(w, x01, x23, acc)
            w = w_next
            if GATED:
                u_next = tl.load(u_at + k0 // 4 + KT, mask=next_ok, other=0)
                acc_u = _dot4_f16x2(u, x01, x23, acc_u)
                u = u_next
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
        y = tl.sum(_f16x2_sum(acc), axis=1) * 16.0  # the weights were w / 16; inf or NaN if a sum overflowed
        up = y
        if GATED:
            up = tl.sum(_f16x2_sum(acc_u), axis=1) * 16.0
        if tl.max((((y - y) != 0) | ((up - up) != 0)).to(tl.int32), axis=0) > 0:  # not finite: again in float32
            x16, w8 = x_ptr.to(tl.pointer_type(tl.bfloat16)), w_ptr.to(tl.pointer_type(tl.int8))
            y = _int8_rows_f32(x16, w8, rows, row_ok, K, BLOCK_N, 256)
            if GATED:
                up = _int8_rows_f32(x16, w8, rows + N, row_ok, K, BLOCK_N, 256)
        _store_rows(y, up, s_ptr, r_ptr, y_ptr, rows, row_ok, N, GATED, RESIDUAL, True)

    @triton.jit
    def _int4_program(x_ptr, w_ptr, y_ptr, r_ptr, M, N, K, KW, G: tl.constexpr, BLOCK_N: tl.constexpr,
                      KT: tl.constexpr, R: tl.constexpr):
        # The int4 GEMVs' program p: row p % M of x and tile p // M of BLOCK_N output rows, R weight rows each (a gated
        # tile interleaves the gate's rows with the same rows of the up projection, N further); with 2-16 rows the
        # programs of one tile run together, so the later rows read its weights from L2. Returns its pointers, rows,
        # word columns k and the column of each word's byte 0 low nibble (byte i: + i * G/8, high nibble: + G/2), and
        # its first weight tile, loaded before the kernel waits for its input (PDL).
        m, tile = tl.program_id(0) % M, tl.program_id(0) // M
        j = tl.arange(0, R * BLOCK_N)
        out_rows = tile * BLOCK_N + j // R
        row_ok = out_rows < N
        rows = out_rows + (j % R) * N  # the weight row of tile row j
        k = tl.arange(0, KT)
        col = (k // (G // 8)) * G + k % (G // 8)
        w_at = w_ptr + rows[:, None] * KW + k[None, :]
        w = tl.load(w_at, mask=row_ok[:, None] & (k < KW)[None, :], other=0)  # independent of the kernel before
        return x_ptr + m * K, y_ptr + m * N, r_ptr + m * N, tile, rows, row_ok, k, col, w_at, w

    @triton.jit
    def _int4_store(y, y_ptr, r_ptr, tile, N, BLOCK_N: tl.constexpr, GATED: tl.constexpr, RESIDUAL: tl.constexpr):
        # The int4 GEMVs' epilogue, y the float32 sums of the tile's weight rows: silu(gate) * up (GATED), plus the
        # residual, rounded as a separate add would round it (RESIDUAL), stored.
        rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        if GATED:
            gate, up = tl.split(tl.reshape(y, (BLOCK_N, 2)))
            y = gate / (1.0 + tl.exp(-gate)) * up
        if RESIDUAL:
            r = tl.load(r_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
            y = y.to(y_ptr.dtype.element_ty).to(tl.float32) + r  # y rounded first, as the model's separate add has it
        tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rows < N)

    @triton.jit
    def _int4_gemv_kernel(x_ptr, w_ptr, s_ptr, z_ptr, r_ptr, y_ptr, M, N, K, KW, M_LO, M_HI, G: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GATED: tl.constexpr, RESIDUAL: tl.constexpr,
                          PDL: tl.constexpr):
        # y = w @ x, w int4 in pack_int4's layout read as int32 words (KW a row), tiles of BLOCK_N rows and
        # BLOCK_K / 8 words. Nibbles become float32 without a conversion instruction: a nibble moved to bits
        # 15-18 of M_LO (the float 256.0) reads as 256 + q, one at bits 19-22 of M_HI (16.0) as 16 + q, so
        # each weight costs one AND-OR (LOP3, the magic in a register) after a shift shared by its byte,
        # and one FMA. The offsets and the zero point come out once a group, from sums of x:
        # sum (q - 8) x = sum (256 + q) x_lo + sum (16 + q) x_hi - 264 sum x_lo - 24 sum x_hi.
        # (4.2 instructions a weight against 10 for dequantizing each nibble; a 7B block on an H100 20% faster
        # than tinygemm at g32, 10-14% at g128, about even at g64: BENCHMARKS.md runs 90-98.)
        # GATED and RESIDUAL as in _gemv_kernel: a gated tile interleaves BLOCK_N rows of the gate (w's first
        # N rows) with the same rows of the up projection (its last N). The model runs the float16-pair kernel below
        # where it can (int4_launch_args); this one takes float32 x, group 256, other GPUs (_f16x2_device) and
        # GPTFAST_INT4_F32=1.
        NG: tl.constexpr = BLOCK_K // G  # groups a tile
        W: tl.constexpr = G // 8  # words a group
        KT: tl.constexpr = BLOCK_K // 8  # words a tile row
        R: tl.constexpr = 2 if GATED else 1  # weight rows an output row
        x_ptr, y_ptr, r_ptr, tile, rows, row_ok, k, col, w_at, w = _int4_program(
            x_ptr, w_ptr, y_ptr, r_ptr, M, N, K, KW, G, BLOCK_N, KT, R)
        if PDL:
            tl.extra.cuda.gdc_wait()  # x is its output
        acc = tl.zeros((R * BLOCK_N, NG), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_ok = k0 // 8 + k < KW
            w_next = tl.load(w_at + (k0 + BLOCK_K) // 8, mask=row_ok[:, None] & (k0 // 8 + KT + k < KW)[None, :],
                             other=0)
            p = tl.zeros((R * BLOCK_N, KT), dtype=tl.float32)
            sum_lo = tl.zeros((KT,), dtype=tl.float32)
            sum_hi = tl.zeros((KT,), dtype=tl.float32)
            for i in tl.static_range(4):  # byte i of each word, moved to bits 15-22
                if i == 0:
                    b = w << 15
                elif i == 1:
                    b = w << 7
                elif i == 2:
                    b = w >> 1
                else:
                    b = w >> 9
                x_lo = tl.load(x_ptr + k0 + col + i * W, mask=k_ok, other=0.0).to(tl.float32)
                x_hi = tl.load(x_ptr + k0 + col + i * W + G // 2, mask=k_ok, other=0.0).to(tl.float32)
                p += ((b & 0x78000) | M_LO).to(tl.float32, bitcast=True) * x_lo[None, :]
                p += ((b & 0x780000) | M_HI).to(tl.float32, bitcast=True) * x_hi[None, :]
                sum_lo += x_lo
                sum_hi += x_hi
            groups = k0 // G + tl.arange(0, NG)
            sg = rows[:, None] * (K // G) + groups[None, :]
            sg_ok = row_ok[:, None] & (groups < K // G)[None, :]
            s = tl.load(s_ptr + sg, mask=sg_ok, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + sg, mask=sg_ok, other=0.0).to(tl.float32)
            lo = tl.sum(tl.reshape(sum_lo, (NG, W)), axis=1)[None, :]
            hi = tl.sum(tl.reshape(sum_hi, (NG, W)), axis=1)[None, :]
            acc += s * (tl.sum(tl.reshape(p, (R * BLOCK_N, NG, W)), axis=2) - 264.0 * lo - 24.0 * hi) + z * (lo + hi)
            w = w_next
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
        _int4_store(tl.sum(acc, axis=1), y_ptr, r_ptr, tile, N, BLOCK_N, GATED, RESIDUAL)

    # int4 in float16 pairs, for groups of 32, 64 and 128 (int4_launch_args): a word's 8 nibbles become four f16x2
    # pairs (q - 8) / 16 with one LOP3 and one f16x2 multiply-add a pair, which four f16x2 multiply-adds accumulate
    # against pairs of x, and a group's words are summed in float16 before one conversion to float32 a group: 1.6
    # instructions a weight of arithmetic, 2.8-2.9 in the loop of the sm_90 build at (8, 4096, 4 warps), against 4.2
    # for _int4_gemv_kernel. A float16 lane sums G/2 products of at most |x| / 2 a group, so it cannot overflow while
    # |x| < 4094 * 64 / G; if one does, the program sums its rows again in float32 (_int4_rows_f32). Products below
    # float16's normal range (|x| under about 1e-3) lose precision, as in the int8 kernel: at G = 128, x drawn from
    # normal(0, 1e-5) measured 0.8% off in Triton's interpreter, against 0.2% for _int4_gemv_kernel. Per 7B block on
    # an H200 (gpu_check_quant.py, BENCHMARKS.md run 168), at CONFIGS' launch shapes against _int4_gemv_kernel's:
    # g32 51.9 us against 59.6, g64 47.4 against 60.8, g128 43.2 against 52.9 (decode: CONFIGS' comment). Inline PTX:
    # CUDA only; the CPU tests interpret the helpers' PTX and run the kernel in Triton's interpreter with the helpers
    # rewritten in Triton.
    @triton.jit
    def _nibbles_dot_f16x2(w, x0, x1, x2, x3):  # the f16x2 pair of sums of w's (q - 8) / 16 times x
        # bits 0-3 and 16-19 of a word under 0x6400 read as the float16 pair 1024 + q, bits 4-7 and 20-23 as
        # 1024 + 16 q; (1024 + q) / 16 - 64.5 and (1024 + 16 q) / 256 - 4.5 are (q - 8) / 16, exactly. In pack_int4's
        # order those pairs meet x at columns (c, c + 2W), (c + G/2, c + 2W + G/2), then, 8 bits on, (c + W, c + 3W)
        # and (c + W + G/2, c + 3W + G/2): x0..x3, each an f16x2 word (low half first).
        return tl.inline_asm_elementwise(
            """{
            .reg .b32 s, a, b, c, d, m, k1, k2, n1, n2, t;
            mov.b32 m, 0x64006400;
            mov.b32 k1, 0x2C002C00;
            mov.b32 n1, 0xD408D408;
            mov.b32 k2, 0x1C001C00;
            mov.b32 n2, 0xC480C480;
            shr.u32 s, $1, 8;
            lop3.b32 a, $1, 0x000F000F, m, 0xea;
            lop3.b32 b, $1, 0x00F000F0, m, 0xea;
            lop3.b32 c, s, 0x000F000F, m, 0xea;
            lop3.b32 d, s, 0x00F000F0, m, 0xea;
            fma.rn.f16x2 a, a, k1, n1;
            fma.rn.f16x2 b, b, k2, n2;
            fma.rn.f16x2 c, c, k1, n1;
            fma.rn.f16x2 d, d, k2, n2;
            mul.rn.f16x2 t, a, $2;
            fma.rn.f16x2 t, b, $3, t;
            fma.rn.f16x2 t, c, $4, t;
            fma.rn.f16x2 $0, d, $5, t;
            }""", "=r,r,r,r,r,r", [w, x0, x1, x2, x3], dtype=tl.int32, is_pure=True, pack=1)

    @triton.jit
    def _f16x2_pair(lo, hi):  # two float32 -> one f16x2 word, lo in the low half
        return tl.inline_asm_elementwise(
            """{
            cvt.rn.f16x2.f32 $0, $2, $1;
            }""", "=r,r,r", [lo, hi], dtype=tl.int32, is_pure=True, pack=1)

    @triton.jit
    def _f16x2_add(a, b):
        return tl.inline_asm_elementwise(
            """{
            add.rn.f16x2 $0, $1, $2;
            }""", "=r,r,r", [a, b], dtype=tl.int32, is_pure=True, pack=1)

    @triton.jit
    def _int4_rows_f32(x_ptr, w_ptr, s_ptr, z_ptr, rows, row_ok, K, KW, G: tl.constexpr, ROWS: tl.constexpr):
        # sum over k of dequantized w[rows, k] x[k] in float32, a group at a time: the f16x2 kernel's overflow fallback
        W: tl.constexpr = G // 8
        k = tl.arange(0, W)
        acc = tl.zeros((ROWS,), dtype=tl.float32)
        for g in range(0, K // G):
            w = tl.load(w_ptr + rows[:, None] * KW + g * W + k[None, :], mask=row_ok[:, None], other=0)
            p = tl.zeros((ROWS, W), dtype=tl.float32)
            sx = tl.zeros((W,), dtype=tl.float32)
            for i in tl.static_range(4):
                x_lo = tl.load(x_ptr + g * G + k + i * W).to(tl.float32)
                x_hi = tl.load(x_ptr + g * G + k + i * W + G // 2).to(tl.float32)
                p += (((w >> (8 * i)) & 15) - 8).to(tl.float32) * x_lo[None, :]
                p += (((w >> (8 * i + 4)) & 15) - 8).to(tl.float32) * x_hi[None, :]
                sx += x_lo + x_hi
            s = tl.load(s_ptr + rows * (K // G) + g, mask=row_ok, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + rows * (K // G) + g, mask=row_ok, other=0.0).to(tl.float32)
            acc += s * tl.sum(p, axis=1) + z * tl.sum(sx, axis=0)
        return acc

    @triton.jit
    def _int4_f16_gemv_kernel(x_ptr, w_ptr, s_ptr, z_ptr, r_ptr, y_ptr, M, N, K, KW, G: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GATED: tl.constexpr,
                              RESIDUAL: tl.constexpr, PDL: tl.constexpr):
        # _int4_gemv_kernel's product (rows of x, GATED, RESIDUAL alike) in float16 pairs (_nibbles_dot_f16x2); if a
        # float16 sum overflowed, the program sums its rows again in float32 (_int4_rows_f32).
        NG: tl.constexpr = BLOCK_K // G  # groups a tile
        W: tl.constexpr = G // 8  # words a group
        KT: tl.constexpr = BLOCK_K // 8  # words a tile row
        R: tl.constexpr = 2 if GATED else 1  # weight rows an output row
        x_ptr, y_ptr, r_ptr, tile, rows, row_ok, k, col, w_at, w = _int4_program(
            x_ptr, w_ptr, y_ptr, r_ptr, M, N, K, KW, G, BLOCK_N, KT, R)
        if PDL:
            tl.extra.cuda.gdc_wait()  # x is its output
        acc = tl.zeros((R * BLOCK_N, NG), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_ok = k0 // 8 + k < KW
            w_next = tl.load(w_at + (k0 + BLOCK_K) // 8, mask=row_ok[:, None] & (k0 // 8 + KT + k < KW)[None, :],
                             other=0)
            xa = x_ptr + k0 + col
            x0 = tl.load(xa, mask=k_ok, other=0.0).to(tl.float32)
            x1 = tl.load(xa + 2 * W, mask=k_ok, other=0.0).to(tl.float32)
            x2 = tl.load(xa + G // 2, mask=k_ok, other=0.0).to(tl.float32)
            x3 = tl.load(xa + 2 * W + G // 2, mask=k_ok, other=0.0).to(tl.float32)
            x4 = tl.load(xa + W, mask=k_ok, other=0.0).to(tl.float32)
            x5 = tl.load(xa + 3 * W, mask=k_ok, other=0.0).to(tl.float32)
            x6 = tl.load(xa + W + G // 2, mask=k_ok, other=0.0).to(tl.float32)
            x7 = tl.load(xa + 3 * W + G // 2, mask=k_ok, other=0.0).to(tl.float32)
            p = _nibbles_dot_f16x2(w, _f16x2_pair(x0, x1)[None, :], _f16x2_pair(x2, x3)[None, :],
                                   _f16x2_pair(x4, x5)[None, :], _f16x2_pair(x6, x7)[None, :])
            gp = tl.reduce(tl.reshape(p, (R * BLOCK_N, NG, W)), 2, _f16x2_add)  # a group's words, in float16
            sx = tl.sum(tl.reshape(((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)), (NG, W)), axis=1)[None, :]
            groups = k0 // G + tl.arange(0, NG)
            sg = rows[:, None] * (K // G) + groups[None, :]
            sg_ok = row_ok[:, None] & (groups < K // G)[None, :]
            s = tl.load(s_ptr + sg, mask=sg_ok, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + sg, mask=sg_ok, other=0.0).to(tl.float32)
            acc += s * (16.0 * _f16x2_sum(gp)) + z * sx
            w = w_next
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
        y = tl.sum(acc, axis=1)
        if tl.max(((y - y) != 0).to(tl.int32), axis=0) > 0:  # a float16 sum overflowed: again in float32
            y = _int4_rows_f32(x_ptr, w_ptr, s_ptr, z_ptr, rows, row_ok, K, KW, G, R * BLOCK_N)
        _int4_store(y, y_ptr, r_ptr, tile, N, BLOCK_N, GATED, RESIDUAL)

    def gemv_launch(x: Tensor, weight: Tensor, scales: Tensor | None, BLOCK_N: int, BLOCK_K: int, num_warps: int,
                    gated: bool = False, residual: Tensor | None = None) -> Tensor:
        """One row x (K,) -> (N,), weight int8 with row scales or 16-bit (scales None); gated: the SwiGLU of the
        two halves (N / 2,); residual (N,): added."""
        assert not (gated and weight.shape[0] % 2), "a gated weight stacks the gate and up halves"
        N, K = weight.shape[0] // (2 if gated else 1), weight.shape[1]
        assert residual is None or (residual.numel() == N and residual.dtype == x.dtype), "residual: (N,), x's dtype"
        y = torch.empty(N, device=x.device, dtype=x.dtype)
        _gemv_kernel[(triton.cdiv(N, BLOCK_N),)](
            x, weight, x if scales is None else scales, x if residual is None else residual, y, N, K, BLOCK_N=BLOCK_N,
            BLOCK_K=BLOCK_K, GATED=gated, RESIDUAL=residual is not None, SCALED=scales is not None, num_warps=num_warps,
            **_pdl(x))
        return y

    def int8_f16_gemv_launch(x: Tensor, weight: Tensor, scales: Tensor, BLOCK_N: int, BLOCK_K: int, num_warps: int,
                             gated: bool = False, residual: Tensor | None = None) -> Tensor:
        """gemv_launch's int8 product through _int8_f16_gemv_kernel: x bfloat16 (K,), K % 4 == 0, x and weight
        4-byte aligned (f16_fits)."""
        assert not (gated and weight.shape[0] % 2), "a gated weight stacks the gate and up halves"
        N, K = weight.shape[0] // (2 if gated else 1), weight.shape[1]
        assert residual is None or (residual.numel() == N and residual.dtype == x.dtype), "residual: (N,), x's dtype"
        y = torch.empty(N, device=x.device, dtype=x.dtype)
        _int8_f16_gemv_kernel[(triton.cdiv(N, BLOCK_N),)](
            x.view(torch.int32), weight.view(torch.int32), scales, x if residual is None else residual, y, N, K,
            BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, GATED=gated, RESIDUAL=residual is not None, num_warps=num_warps,
            **_pdl(x))
        return y

    def int4_gemv_launch(x: Tensor, weight: Tensor, scales: Tensor, zeros: Tensor, groupsize: int,
                         BLOCK_N: int, BLOCK_K: int, num_warps: int, gated: bool = False,
                         residual: Tensor | None = None, f16: bool = False) -> Tensor:
        """x (K,) or (M, K) -> (N,) or (M, N); gated: the SwiGLU of the two halves (N / 2 columns), with tiles of
        BLOCK_N / 2 rows of each (the registers of BLOCK_N rows); residual (x's rows, N): added; f16: through
        _int4_f16_gemv_kernel (x 16-bit; int4_launch_args says where the model uses it)."""
        assert not (gated and weight.shape[0] % 2), "a gated weight stacks the gate and up halves"
        assert weight.is_contiguous() and scales.is_contiguous() and zeros.is_contiguous(), "rows of K // 8 words"
        N, K = weight.shape[0] // (2 if gated else 1), 2 * weight.shape[1]
        M = x.numel() // K
        assert residual is None or (residual.numel() == M * N and residual.dtype == x.dtype), "residual: (M, N), x's dtype"
        BLOCK_N = max(1, BLOCK_N // 2) if gated else BLOCK_N
        y = torch.empty(*x.shape[:-1], N, device=x.device, dtype=x.dtype)
        # the float32-word kernel also takes its two float constants (256.0 and 16.0) as bit patterns
        kernel, magic = (_int4_f16_gemv_kernel, ()) if f16 else (_int4_gemv_kernel, (0x43800000, 0x41800000))
        kernel[(M * triton.cdiv(N, BLOCK_N),)](
            x, weight.view(torch.int32), scales, zeros, x if residual is None else residual, y, M, N, K, K // 8,
            *magic, G=groupsize, BLOCK_N=BLOCK_N, BLOCK_K=max(BLOCK_K, groupsize), GATED=gated,
            RESIDUAL=residual is not None, num_warps=num_warps, **_pdl(x))
        return y

    @triton.jit
    def _skinny_mm_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, SCALED: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
        # y (M, N) = x (M, K) @ w (N, K)^T for a few rows M <= BLOCK_M (batched decode). Each program owns
        # BLOCK_N rows of w and walks all of K, so every weight is read once whatever M; the rows of x are
        # padded to BLOCK_M >= 16 for tl.dot (tensor cores: the arithmetic is free here, the bytes are not).
        # Triton pipelines the loop's loads (num_stages tiles in flight). SCALED: w is int8 (each value is
        # exact in x's dtype) and row n of y is multiplied by s[n], the weight row's scale.
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        m, cols = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_K)
        if PDL:
            tl.extra.cuda.gdc_wait()  # x is the previous kernel's output
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_ok = k0 + cols < K
            w = tl.load(w_ptr + rows[:, None] * K + k0 + cols[None, :], mask=(rows < N)[:, None] & k_ok[None, :],
                        other=0)
            if SCALED:
                w = _int8_to_float(w).to(x_ptr.dtype.element_ty)
            x = tl.load(x_ptr + m[:, None] * K + k0 + cols[None, :], mask=(m < M)[:, None] & k_ok[None, :], other=0.0)
            acc = tl.dot(x, tl.trans(w), acc)
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
        if SCALED:
            acc *= tl.load(s_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + m[:, None] * N + rows[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=(m < M)[:, None] & (rows < N)[None, :])

    def skinny_mm_launch(x: Tensor, weight: Tensor, BLOCK_N: int, BLOCK_K: int, num_warps: int,
                         num_stages: int, scales: Tensor | None = None) -> Tensor:
        """x (M, K) contiguous, M <= 16 @ weight (N, K)^T -> (M, N); an int8 weight takes its row scales."""
        (M, K), N = x.shape, weight.shape[0]
        y = torch.empty(M, N, device=x.device, dtype=x.dtype)
        _skinny_mm_kernel[(triton.cdiv(N, BLOCK_N),)](x, weight, weight if scales is None else scales, y, M, N, K,
                                                      SCALED=scales is not None,
                                                      BLOCK_M=max(16, triton.next_power_of_2(M)),
                                                      BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=num_warps,
                                                      num_stages=num_stages, **_pdl(x))
        return y

    # ------------------------------------------------------------------ decode attention (one query)
    # One decode step's attention for one layer in one kernel: RoPE on the new query and key, the new key
    # and value written into the cache, then attention over the cached positions the mask allows. It
    # replaces model.Attention's PyTorch path for one token (RoPE, two cache writes, SDPA: 4-5 kernels a
    # layer; that path is the reference the tests compare this with). Program (b, kv head, slice) takes
    # the R query heads sharing that key/value head (padded to 16 rows for tl.dot) over one slice of the
    # positions 0..pos, keeping a running softmax (flash decoding); with more than one slice,
    # _merge_slices_kernel combines their partial results. The slices divide the positions filled so far,
    # not the whole cache, so every program has work however long the cache is (the grid is fixed, which
    # CUDA graphs need; the position is read on the device).
    @triton.jit
    def _decode_attention_kernel(qkv_ptr, cos_ptr, sin_ptr, mask_ptr, pos_ptr, k_ptr, v_ptr, out_ptr, m_ptr, l_ptr,
                                 stride_qkv, stride_mask, stride_kb, stride_kh, scale,
                                 H: tl.constexpr, KV: tl.constexpr, D: tl.constexpr, N_SLICES: tl.constexpr,
                                 BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr):
        b, kvh, sl = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        if PDL:
            tl.extra.cuda.gdc_wait()  # qkv is the previous kernel's output
        R: tl.constexpr = H // KV
        HALF: tl.constexpr = D // 2
        dtype = k_ptr.dtype.element_ty
        r, d, dd = tl.arange(0, BLOCK_R), tl.arange(0, HALF), tl.arange(0, D)
        pos = tl.load(pos_ptr).to(tl.int32)
        cos, sin = tl.load(cos_ptr + b * HALF + d), tl.load(sin_ptr + b * HALF + d)  # at this row's position
        row = qkv_ptr + b * stride_qkv  # this row's q (H heads), k (KV heads), v (KV heads)
        # RoPE (rotate-half) in float32, rounded to the cache dtype as the PyTorch path rounds it
        q_at = row + (kvh * R + r)[:, None] * D + d[None, :]
        q1 = tl.load(q_at, mask=(r < R)[:, None], other=0.0).to(tl.float32)
        q2 = tl.load(q_at + HALF, mask=(r < R)[:, None], other=0.0).to(tl.float32)
        qa, qb = (q1 * cos - q2 * sin).to(dtype), (q2 * cos + q1 * sin).to(dtype)
        k_cache, v_cache = k_ptr + b * stride_kb + kvh * stride_kh, v_ptr + b * stride_kb + kvh * stride_kh
        slice_len = tl.cdiv(tl.cdiv(pos + 1, N_SLICES), BLOCK_S) * BLOCK_S  # whole tiles
        start = sl * slice_len
        if (pos >= start) & (pos < start + slice_len):  # the slice holding the new position writes its key and value
            k1 = tl.load(row + (H + kvh) * D + d).to(tl.float32)
            k2 = tl.load(row + (H + kvh) * D + HALF + d).to(tl.float32)
            tl.store(k_cache + pos * D + d, (k1 * cos - k2 * sin).to(dtype))
            tl.store(k_cache + pos * D + HALF + d, (k2 * cos + k1 * sin).to(dtype))
            tl.store(v_cache + pos * D + dd, tl.load(row + (H + KV + kvh) * D + dd))
            tl.debug_barrier()  # the loop below reads them back through other threads of this program
        # Running softmax in base 2 (scale includes log2(e)); the max starts finite so that a tile the
        # mask hides entirely (left padding) gives zeros, not NaN.
        m = tl.full((BLOCK_R,), -1e30, tl.float32)
        l = tl.zeros((BLOCK_R,), tl.float32)
        acc = tl.zeros((BLOCK_R, D), tl.float32)
        end = tl.minimum(start + slice_len, pos + 1)  # a slice past the end gets no work
        for s0 in range(start, end, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            ok = (s < end) & (tl.load(mask_ptr + b * stride_mask + s, mask=s < end, other=0) != 0)
            k1 = tl.load(k_cache + s[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)
            k2 = tl.load(k_cache + s[:, None] * D + HALF + d[None, :], mask=ok[:, None], other=0.0)
            scores = (tl.dot(qa, tl.trans(k1)) + tl.dot(qb, tl.trans(k2))) * scale  # (BLOCK_R, BLOCK_S)
            scores = tl.where(ok[None, :], scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, 1))
            p = tl.exp2(scores - m_new[:, None])
            alpha = tl.exp2(m - m_new)
            v = tl.load(v_cache + s[:, None] * D + dd[None, :], mask=ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(dtype), v)
            l = l * alpha + tl.sum(p, 1)
            m = m_new
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
        heads = b * H + kvh * R + r  # (BLOCK_R,) row of each query head in (B * H, ...) outputs
        if N_SLICES == 1:
            tl.store(out_ptr + heads[:, None] * D + dd[None, :], (acc / l[:, None]).to(dtype), mask=(r < R)[:, None])
        else:  # partial results, merged by _merge_slices_kernel
            at = heads * N_SLICES + sl
            tl.store(out_ptr + at[:, None] * D + dd[None, :], acc, mask=(r < R)[:, None])
            tl.store(m_ptr + at, m, mask=r < R)
            tl.store(l_ptr + at, l, mask=r < R)

    @triton.jit
    def _merge_slices_kernel(part_ptr, m_ptr, l_ptr, out_ptr, N_SLICES: tl.constexpr, BLOCK: tl.constexpr,
                             D: tl.constexpr, PDL: tl.constexpr):
        # softmax(all) @ V from per-slice (max m, sum l, unnormalised acc); an empty slice has l = 0, m = -1e30
        bh, sl, dd = tl.program_id(0), tl.arange(0, BLOCK), tl.arange(0, D)
        ok = sl < N_SLICES
        if PDL:
            tl.extra.cuda.gdc_wait()
        m = tl.load(m_ptr + bh * N_SLICES + sl, mask=ok, other=-1e30)
        l = tl.load(l_ptr + bh * N_SLICES + sl, mask=ok, other=0.0)
        acc = tl.load(part_ptr + (bh * N_SLICES + sl)[:, None] * D + dd[None, :], mask=ok[:, None], other=0.0)
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
        w = tl.exp2(m - tl.max(m, 0))
        y = tl.sum(acc * w[:, None], 0) / tl.sum(l * w, 0)
        tl.store(out_ptr + bh * D + dd, y.to(out_ptr.dtype.element_ty))

    def decode_attention_launch(qkv: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, input_pos: Tensor,
                                k_cache: Tensor, v_cache: Tensor, n_heads: int, n_slices: int | None = None) -> Tensor:
        """qkv (B, (H + 2 KV) D) of the new token; cos, sin (B, D/2) float32; mask (B, S) bool; input_pos (1,);
        caches (B_cache >= B, KV, S, D), updated in place at input_pos. Returns the attention output (B, H D)."""
        B, (_, KV, S, D) = qkv.shape[0], k_cache.shape
        H, BLOCK_S = n_heads, 64
        # About 256 programs in all (two per SM of an H100), each slice at least a tile when the cache is
        # full: the best of the slicings measured by scripts/bench_attention.py (BENCHMARKS.md).
        n_slices = n_slices or DECODE_SLICES or max(1, min(triton.cdiv(S, BLOCK_S), 256 // (B * KV)))
        y = torch.empty(B, H * D, device=qkv.device, dtype=qkv.dtype)
        if n_slices == 1:
            out = m = l = y
        else:
            out = torch.empty(B * H * n_slices, D, device=qkv.device, dtype=torch.float32)
            m, l = torch.empty(2, B * H * n_slices, device=qkv.device, dtype=torch.float32)
        pdl = _pdl(qkv)
        _decode_attention_kernel[(B, KV, n_slices)](
            qkv, cos.contiguous(), sin.contiguous(), mask.view(torch.uint8), input_pos, k_cache, v_cache, out, m, l,
            qkv.stride(0), mask.stride(0), k_cache.stride(0), k_cache.stride(1), D ** -0.5 * 1.4426950408889634,
            H=H, KV=KV, D=D, N_SLICES=n_slices, BLOCK_R=max(16, triton.next_power_of_2(H // KV)),
            BLOCK_S=BLOCK_S, num_warps=4, **pdl)
        if n_slices > 1:
            _merge_slices_kernel[(B * H,)](out, m, l, y, N_SLICES=n_slices, BLOCK=triton.next_power_of_2(n_slices), D=D,
                                           **pdl)
        return y

    # One-shot all-reduce of one decode activation over the GPUs of one host (tp.py --all_reduce symm_mem). Each
    # rank owns a buffer in symmetric memory (mapped into every rank; `peers` holds its address in each rank): two
    # sets of WORLD slots of int64 words, each word 4 bytes of x (two 16-bit values or one 32-bit one) and, above
    # them, the number of the call that wrote it (NCCL's "LL" protocol). Every rank stores its words into slot RANK
    # of every other rank's buffer (stores over NVLink, which do not wait for a reply) and reads its own buffer
    # until every word of every other rank's slot carries this call's number; then it sums x and theirs, in rank
    # order, so that every rank gets the same bits. A word is stored and read whole (8 bytes, aligned; strong
    # stores and volatile loads, for which PTX promises it), so its value is there once its number is: no flag, no
    # fence, one crossing of NVLink. One all-reduce + RMSNorm of 4096 bf16 on two H200s: 3.5-3.7 us (3.1 with plain
    # stores, 0.9% faster end to end but not promised whole), against 4.3 with a flag raised after the values
    # (BENCHMARKS.md runs 176-180).
    # Calls are counted on the device (epoch, one counter per program; under CUDA graphs nothing else could count
    # them), and alternate between the two sets of slots, so a rank that has gone on to call e + 1 cannot
    # overwrite the slots a slower rank is still summing for call e (to reach e + 2 it needs that rank's words of
    # e + 1, stored only after that rank finished e). This holds if every rank makes the same calls, in one
    # stream, with the same split (block), and every kernel launched with PDL waits (gdc_wait) before it touches
    # memory, as all of this file's and Inductor's do. Like NCCL, a rank waits for the others as long as it takes
    # (torchrun stops every rank if one dies).
    # With NORM (one program for the row), the kernel returns model.rms_norm of the sum instead of the sum: tp.py keeps
    # the residual stream as a part on each rank, summed only where a norm reads it, so that a decode step's
    # all-reduce and the norm after it are one kernel.
    AR_BLOCK, AR_WARPS = 1024, 4  # the values each program sums, its warps

    def ar_words(n: int, dtype) -> int:
        """int64 words of one slot of n values of dtype (16- or 32-bit)."""
        return triton.cdiv(n * dtype.itemsize, 4)

    @triton.jit
    def _ll_pack(x, e):  # x (B,), 16- or 32-bit -> (B * bits / 32,) int64 words: 4 bytes of x, call number e above
        if x.dtype.primitive_bitwidth == 16:
            b = x.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
            lo, hi = tl.split(tl.reshape(b, (x.shape[0] // 2, 2)))
            d = lo | (hi << 16)
        else:
            d = x.to(tl.int32, bitcast=True)
        return (d.to(tl.int64) & 0xFFFFFFFF) | (e.to(tl.int64) << 32)

    @triton.jit
    def _ll_unpack(words, dtype: tl.constexpr):  # _ll_pack's words -> the values of x, as float32
        d = words.to(tl.int32)  # the low half
        if dtype.primitive_bitwidth == 16:
            lo = (d & 0xFFFF).to(tl.int16).to(dtype, bitcast=True)
            hi = (d >> 16).to(tl.int16).to(dtype, bitcast=True)
            v = tl.reshape(tl.join(lo, hi), (2 * words.shape[0],))
        else:
            v = d.to(dtype, bitcast=True)
        return v.to(tl.float32)

    @triton.jit
    def _store_sys(ptr, words, mask, STRONG: tl.constexpr):
        # int64 words stored whole as the PTX memory model promises it to a volatile reader: strong (relaxed, system
        # scope) stores, as NCCL's st.volatile; a plain tl.store in Triton's interpreter, which cannot run PTX.
        if STRONG:
            tl.inline_asm_elementwise(
                """{
                .reg .pred p;
                setp.ne.b32 p, $3, 0;
                @p st.relaxed.sys.global.b64 [$1], $2;
                mov.b32 $0, 0;
                }""", "=r,l,l,r", [ptr, words, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)
        else:
            tl.store(ptr, words, mask=mask)

    @triton.jit
    def _all_reduce_kernel(x_ptr, y_ptr, peers_ptr, epoch_ptr, w_ptr, eps, N, RANK: tl.constexpr, WORLD: tl.constexpr,
                           BLOCK: tl.constexpr, NORM: tl.constexpr, STRONG: tl.constexpr, PDL: tl.constexpr):
        p = tl.program_id(0)  # the programs split x; each has its own epoch
        offs = p * BLOCK + tl.arange(0, BLOCK)
        ok = offs < N
        dtype = x_ptr.dtype.element_ty
        PAIRS: tl.constexpr = 32 // dtype.primitive_bitwidth  # values a word
        NW = (N + PAIRS - 1) // PAIRS  # words a slot
        words = p * (BLOCK // PAIRS) + tl.arange(0, BLOCK // PAIRS)
        words_ok = words < NW
        if NORM:
            w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)  # independent of the kernel before
        if PDL:
            tl.extra.cuda.gdc_wait()  # x, and the epoch, which the kernel before may be the all-reduce before
        e = tl.load(epoch_ptr + p) + 1  # wraps around (int32); only its last bit and equality are used
        slots = (e & 1) * WORLD  # this call's set of slots
        x = tl.load(x_ptr + offs, mask=ok, other=0.0)
        mine = _ll_pack(x, e)
        for r in tl.static_range(WORLD):  # x into slot RANK of every other rank's buffer
            if r != RANK:
                _store_sys(tl.load(peers_ptr + r).to(tl.pointer_type(tl.int64)) + (slots + RANK) * NW + words, mine,
                           words_ok, STRONG)
        own = tl.load(peers_ptr + RANK).to(tl.pointer_type(tl.int64))
        now = e.to(tl.int64) << 32  # (the masked-off words count as arrived)
        acc = tl.zeros((BLOCK,), tl.float32)
        for r in tl.static_range(WORLD):
            if r == RANK:
                acc += x.to(tl.float32)
            else:  # read rank r's slot (volatile: from memory each time) until all of it is from this call
                got = tl.load(own + (slots + r) * NW + words, mask=words_ok, other=now, volatile=True)
                while tl.min(((got >> 32).to(tl.int32) == e).to(tl.int32), axis=0) == 0:
                    got = tl.load(own + (slots + r) * NW + words, mask=words_ok, other=now, volatile=True)
                acc += _ll_unpack(got, dtype)
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
        if NORM:  # one program holds the row: _rms_norm_kernel's arithmetic on the sum, rounded to x's dtype first
            h = acc.to(dtype).to(tl.float32)
            r = tl.rsqrt(tl.sum(h * h, axis=0) / N + eps)
            acc = (h * r).to(dtype).to(tl.float32) * w
        tl.store(y_ptr + offs, acc.to(dtype), mask=ok)
        tl.store(epoch_ptr + p, e)

    def all_reduce_launch(x: Tensor, peers: Tensor, epoch: Tensor, rank: int, block: int | None = None,
                          num_warps: int | None = None, weight: Tensor | None = None, eps: float = 0.0) -> Tensor:
        """The sum over ranks of x (one row, 16- or 32-bit), each rank's buffer of 2 x world x ar_words(x.numel(),
        x.dtype) int64 words at peers[r] (int64 addresses, on the device); epoch: int32, one per program of this split
        (block, even), zero on a new buffer and kept between calls. With a weight: model.rms_norm(sum, weight, eps)
        instead of the sum, in one program (block: norm_block(x.numel()))."""
        N, world, block = x.numel(), peers.numel(), block or AR_BLOCK
        assert epoch.numel() == triton.cdiv(N, block) and block % 2 == 0, "one buffer, one split"
        assert weight is None or block >= N, "the norm needs the whole row in one program"
        y = torch.empty_like(x)
        _all_reduce_kernel[(triton.cdiv(N, block),)](x, y, peers, epoch, x if weight is None else weight, eps, N,
                                                      RANK=rank, WORLD=world, BLOCK=block, NORM=weight is not None,
                                                      STRONG=x.is_cuda, num_warps=num_warps or AR_WARPS, **_pdl(x))
        return y

    def norm_block(dim: int) -> tuple[int, int]:
        """(block, num_warps) of a row of dim values in one program (rms_norm_launch, the all-reduce with the norm):
        16 values a thread at widths 4096-8192, 8 at 576 (4 or 16 warps at 4096: no faster end to end, BENCHMARKS.md
        run 152)."""
        block = triton.next_power_of_2(dim)
        return block, min(16, max(4, block // 512))

    @triton.jit
    def _swiglu_kernel(x_ptr, y_ptr, I, BLOCK: tl.constexpr, PDL: tl.constexpr):
        # row r of x is [gate (I), up (I)]; y[r] = silu(gate) * up, in float32, rounded once
        row, cols = tl.program_id(0).to(tl.int64), tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        if PDL:
            tl.extra.cuda.gdc_wait()
        gate = tl.load(x_ptr + row * 2 * I + cols, mask=cols < I, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + row * 2 * I + I + cols, mask=cols < I, other=0.0).to(tl.float32)
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
        tl.store(y_ptr + row * I + cols, (gate / (1.0 + tl.exp(-gate)) * up).to(y_ptr.dtype.element_ty), mask=cols < I)

    @triton.jit
    def _rms_norm_kernel(x_ptr, w_ptr, y_ptr, D, eps, BLOCK: tl.constexpr, PDL: tl.constexpr):
        # Row program_id(0) of x, w * (x / rms(x)), in one pass with the row in registers, rounded as model.rms_norm
        # rounds: the normalised row in float32, rounded to x's dtype, times w, rounded again. Inductor's kernel
        # for one row wider than 1024 loops over it twice, a dependent load an iteration (BENCHMARKS.md).
        row, d = tl.program_id(0).to(tl.int64), tl.arange(0, BLOCK)
        ok = d < D
        w = tl.load(w_ptr + d, mask=ok, other=0.0).to(tl.float32)  # independent of the kernel before
        if PDL:
            tl.extra.cuda.gdc_wait()  # x is its output
        x = tl.load(x_ptr + row * D + d, mask=ok, other=0.0).to(tl.float32)
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
        r = tl.rsqrt(tl.sum(x * x, axis=0) / D + eps)
        y = (x * r).to(y_ptr.dtype.element_ty).to(tl.float32) * w
        tl.store(y_ptr + row * D + d, y.to(y_ptr.dtype.element_ty), mask=ok)

    def rms_norm_launch(x: Tensor, weight: Tensor, eps: float) -> Tensor:
        """model.rms_norm(x, weight, eps) for x and weight of one 16-bit dtype: a program a row."""
        D = x.shape[-1]
        x2, y = x.reshape(-1, D).contiguous(), torch.empty_like(x, memory_format=torch.contiguous_format)
        BLOCK, num_warps = norm_block(D)
        _rms_norm_kernel[(x2.shape[0],)](x2, weight.contiguous(), y, D, eps, BLOCK=BLOCK, num_warps=num_warps,
                                         **_pdl(x))
        return y

    def swiglu_launch(gate_up: Tensor) -> Tensor:
        x = gate_up.contiguous()
        I = x.shape[-1] // 2
        y = x.new_empty(*x.shape[:-1], I)
        rows = x.numel() // (2 * I)
        if rows:
            _swiglu_kernel[(rows, triton.cdiv(I, 1024))](x, y, I, BLOCK=1024, num_warps=4, **_pdl(x))
        return y

    # Custom ops: torch.compile treats them as opaque calls (no tracing into Triton) and CUDA graphs
    # capture their launches like any other kernel.
    @torch.library.custom_op("gptfast::gemv", mutates_args=())
    def gemv(x: Tensor, weight: Tensor, scales: Tensor | None, gated: bool = False,
             residual: Tensor | None = None) -> Tensor:
        x1, r1 = x.reshape(-1).contiguous(), None if residual is None else residual.reshape(-1).contiguous()
        if scales is not None and f16_fits(x1, weight):
            y = int8_f16_gemv_launch(x1, weight, scales, gated=gated, residual=r1,
                                     **int8_f16_config(weight.shape[0], gated))
        else:
            y = gemv_launch(x1, weight, scales, gated=gated, residual=r1,
                            **CONFIGS["bf16" if scales is None else "int8_gated" if gated else "int8"])
        return y.view(*x.shape[:-1], -1)

    @gemv.register_fake
    def _(x, weight, scales, gated=False, residual=None):
        return x.new_empty(*x.shape[:-1], weight.shape[0] // (2 if gated else 1))

    @torch.library.custom_op("gptfast::skinny_mm", mutates_args=())
    def skinny_mm(x: Tensor, weight: Tensor, scales: Tensor | None = None) -> Tensor:
        y = skinny_mm_launch(x.reshape(-1, x.shape[-1]).contiguous(), weight, scales=scales,
                             **CONFIGS["skinny" if scales is None else "skinny_int8"])
        return y.view(*x.shape[:-1], weight.shape[0])

    @skinny_mm.register_fake
    def _(x, weight, scales=None):
        return x.new_empty(*x.shape[:-1], weight.shape[0])

    @torch.library.custom_op("gptfast::int4_gemv", mutates_args=())
    def int4_gemv(x: Tensor, weight: Tensor, scales: Tensor, zeros: Tensor, groupsize: int, gated: bool = False,
                  residual: Tensor | None = None) -> Tensor:
        try:
            y = int4_gemv_launch(x.reshape(-1, x.shape[-1]).contiguous(), weight, scales, zeros, groupsize, gated=gated,
                                 residual=None if residual is None else residual.reshape(-1, residual.shape[-1]).contiguous(),
                                 **int4_launch_args(x, groupsize, weight.shape[0]))
        except Exception as e:  # noqa: BLE001 -- a Triton release that cannot build it: slower but correct
            global _warned
            if not _warned:
                print(f"warning: the Triton int4 GEMV failed ({type(e).__name__}: {str(e)[:200]}); "
                      "using the PyTorch path", file=sys.stderr)
                _warned = True
            y = F.linear(x, dequantize_int4(weight, scales, zeros, groupsize).to(x.dtype))
            y = swiglu(y) if gated else y
            return y if residual is None else residual + y
        return y.view(*x.shape[:-1], -1)

    @int4_gemv.register_fake
    def _(x, weight, scales, zeros, groupsize, gated=False, residual=None):
        return x.new_empty(*x.shape[:-1], weight.shape[0] // (2 if gated else 1))

    @torch.library.custom_op("gptfast::decode_attention", mutates_args=("k_cache", "v_cache"))
    def decode_attention(qkv: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, input_pos: Tensor,
                         k_cache: Tensor, v_cache: Tensor, n_heads: int) -> Tensor:
        return decode_attention_launch(qkv, cos, sin, mask, input_pos, k_cache, v_cache, n_heads)

    @decode_attention.register_fake
    def _(qkv, cos, sin, mask, input_pos, k_cache, v_cache, n_heads):
        return qkv.new_empty(qkv.shape[0], n_heads * k_cache.shape[-1])

    @torch.library.custom_op("gptfast::rms_norm", mutates_args=())
    def rms_norm_op(x: Tensor, weight: Tensor, eps: float) -> Tensor:
        return rms_norm_launch(x, weight, eps)

    @rms_norm_op.register_fake
    def _(x, weight, eps):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.custom_op("gptfast::swiglu", mutates_args=())
    def swiglu_op(gate_up: Tensor) -> Tensor:
        return swiglu_launch(gate_up)

    @swiglu_op.register_fake
    def _(gate_up):
        return gate_up.new_empty(*gate_up.shape[:-1], gate_up.shape[-1] // 2)
