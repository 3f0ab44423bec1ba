"""Experiment: int8 GEMV reading weights as int32 words (4 int8 each), bytes to float by PRMT (asm) or shifts."""
import triton, triton.language as tl


@triton.jit
def _word_to_floats(w, ASM: tl.constexpr):
    # 4 float32 tensors: byte j of each word w, as 2^23 + (byte ^ 0x80) = 2^23 + 128 + int8 value
    if ASM:
        return tl.inline_asm_elementwise(
            """{
            .reg .b32 t;
            xor.b32 t, $4, 0x80808080;
            prmt.b32 $0, t, 0x4B000000, 0x7540;
            prmt.b32 $1, t, 0x4B000000, 0x7541;
            prmt.b32 $2, t, 0x4B000000, 0x7542;
            prmt.b32 $3, t, 0x4B000000, 0x7543;
            }""", "=r,=r,=r,=r,r", [w], dtype=(tl.float32, tl.float32, tl.float32, tl.float32), is_pure=True, pack=1)
    t = w ^ -2139062144  # 0x80808080
    return (((t & 0xFF) | 0x4B000000).to(tl.float32, bitcast=True), (((t >> 8) & 0xFF) | 0x4B000000).to(tl.float32, bitcast=True),
            (((t >> 16) & 0xFF) | 0x4B000000).to(tl.float32, bitcast=True), (((t >> 24) & 0xFF) | 0x4B000000).to(tl.float32, bitcast=True))


@triton.jit
def gemvw(x_ptr, w_ptr, s_ptr, r_ptr, y_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
          GATED: tl.constexpr, RESIDUAL: tl.constexpr, PDL: tl.constexpr, ASM: tl.constexpr, XSPLIT: tl.constexpr):
    KT: tl.constexpr = BLOCK_K // 4
    KW = K // 4
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    k = tl.arange(0, KT)
    w_at = w_ptr + rows[:, None] * KW + k[None, :]
    u_at = w_at + N * KW
    w = tl.load(w_at, mask=row_ok[:, None] & (k[None, :] < KW), other=0)
    u = w
    if GATED:
        u = tl.load(u_at, mask=row_ok[:, None] & (k[None, :] < KW), other=0)
    if PDL:
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros((BLOCK_N, KT), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_N, KT), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        xm = k0 + 4 * k < K
        if XSPLIT:
            c = tl.arange(0, 4)
            x4 = tl.load(x_ptr + k0 + 4 * k[:, None] + c[None, :], mask=xm[:, None], other=0.0).to(tl.float32)
            xa, xb = tl.split(tl.reshape(x4, (KT, 2, 2)))
            x0, x2 = tl.split(xa)
            x1, x3 = tl.split(xb)
        else:
            x0 = tl.load(x_ptr + k0 + 4 * k, mask=xm, other=0.0).to(tl.float32)
            x1 = tl.load(x_ptr + k0 + 4 * k + 1, mask=xm, other=0.0).to(tl.float32)
            x2 = tl.load(x_ptr + k0 + 4 * k + 2, mask=xm, other=0.0).to(tl.float32)
            x3 = tl.load(x_ptr + k0 + 4 * k + 3, mask=xm, other=0.0).to(tl.float32)
        next_ok = row_ok[:, None] & ((k0 + BLOCK_K) // 4 + k[None, :] < KW)
        w_next = tl.load(w_at + (k0 + BLOCK_K) // 4, mask=next_ok, other=0)
        f0, f1, f2, f3 = _word_to_floats(w, ASM)
        acc += (f0 - 8388736.0) * x0[None, :]
        acc += (f1 - 8388736.0) * x1[None, :]
        acc += (f2 - 8388736.0) * x2[None, :]
        acc += (f3 - 8388736.0) * x3[None, :]
        w = w_next
        if GATED:
            u_next = tl.load(u_at + (k0 + BLOCK_K) // 4, mask=next_ok, other=0)
            g0, g1, g2, g3 = _word_to_floats(u, ASM)
            acc_u += (g0 - 8388736.0) * x0[None, :]
            acc_u += (g1 - 8388736.0) * x1[None, :]
            acc_u += (g2 - 8388736.0) * x2[None, :]
            acc_u += (g3 - 8388736.0) * x3[None, :]
            u = u_next
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    y = tl.sum(acc, axis=1) * tl.load(s_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    if GATED:
        up = tl.sum(acc_u, axis=1) * tl.load(s_ptr + N + rows, mask=row_ok, other=0.0).to(tl.float32)
        y = y / (1.0 + tl.exp(-y)) * up
    if RESIDUAL:
        r = tl.load(r_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        y = y.to(y_ptr.dtype.element_ty).to(tl.float32) + r
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)


def launch(x, weight, scales, BLOCK_N, BLOCK_K, num_warps, gated=False, residual=None, asm=True, xsplit=False, pdl=None):
    import torch
    N, K = weight.shape[0] // (2 if gated else 1), weight.shape[1]
    y = torch.empty(N, device=x.device, dtype=x.dtype)
    gemvw[(triton.cdiv(N, BLOCK_N),)](x, weight.view(torch.int32), scales, x if residual is None else residual, y, N, K,
                                      BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, GATED=gated, RESIDUAL=residual is not None,
                                      ASM=asm, XSPLIT=xsplit, num_warps=num_warps, **(pdl or dict(PDL=False)))
    return y
