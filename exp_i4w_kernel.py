"""Prototype: int4 GEMV on 32-bit words, nibbles to float32 by one mask-and-or each, zero point hoisted."""
import torch
import triton
import triton.language as tl


def permute_bytes(packed, G):
    """Portable layout (byte j of a group: columns j and j + G/2) -> the kernel's: within each group the
    (4, W) bytes transposed, so that byte i of word m is the portable byte i * W + m (W = G / 8 words)."""
    N, KB = packed.shape
    W = G // 8
    return packed.view(N, KB // (G // 2), 4, W).transpose(-1, -2).reshape(N, KB).contiguous()


@triton.jit
def i4w_kernel(x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, N, K, KW, M_LO, M_HI, G: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    # Byte i of word m of a group holds columns i*W + m (low nibble) and G/2 + i*W + m (high nibble).
    # A nibble moved to bits 15-18 (19-22) of the float32 MAGIC = 0x43000000 (128.0) reads as 128 + q/2
    # (128 + 8q): one AND-OR (LOP3) a weight; the 128 is taken out once a group: sum (q - 8) x = p - c.
    NG: tl.constexpr = BLOCK_K // G
    W: tl.constexpr = G // 8  # words per group
    H: tl.constexpr = G // 2
    KT: tl.constexpr = BLOCK_K // 8  # words per tile row
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    k = tl.arange(0, KT)
    col = (k // W) * G + k % W  # low nibble of byte 0 of word k: column col + i*W for byte i (+ H: high)
    g = tl.arange(0, NG)
    acc = tl.zeros((BLOCK_N, NG), dtype=tl.float32)
    w_at = w_ptr + rows[:, None] * KW + k[None, :]
    wv = tl.load(w_at, mask=row_ok[:, None] & (k < KW)[None, :], other=0)
    if PDL:
        tl.extra.cuda.gdc_wait()
    for k0 in range(0, K, BLOCK_K):
        k_ok = k0 // 8 + k < KW
        wv_next = tl.load(w_at + (k0 + BLOCK_K) // 8, mask=row_ok[:, None] & (k0 // 8 + KT + k < KW)[None, :], other=0)
        xa = x_ptr + k0 + col
        p = tl.zeros((BLOCK_N, KT), dtype=tl.float32)
        sl = tl.zeros((KT,), dtype=tl.float32)
        sh = tl.zeros((KT,), dtype=tl.float32)
        for i in tl.static_range(4):
            if i == 0:  # byte i to bits 15-22
                b = wv << 15
            elif i == 1:
                b = wv << 7
            elif i == 2:
                b = wv >> 1
            else:
                b = wv >> 9
            lo = ((b & 0x78000) | M_LO).to(tl.float32, bitcast=True)  # 256 + q
            hi = ((b & 0x780000) | M_HI).to(tl.float32, bitcast=True)  # 16 + q
            x_lo = tl.load(xa + i * W, mask=k_ok, other=0.0).to(tl.float32)
            x_hi = tl.load(xa + H + i * W, mask=k_ok, other=0.0).to(tl.float32)
            p += lo * x_lo[None, :]
            p += hi * x_hi[None, :]
            sl += x_lo
            sh += x_hi
        groups = k0 // G + g
        sg = rows[:, None] * (K // G) + groups[None, :]
        sg_ok = row_ok[:, None] & (groups < K // G)[None, :]
        s = tl.load(s_ptr + sg, mask=sg_ok, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + sg, mask=sg_ok, other=0.0).to(tl.float32)
        pg = tl.sum(tl.reshape(p, (BLOCK_N, NG, W)), axis=2)
        slg = tl.sum(tl.reshape(sl, (NG, W)), axis=1)
        shg = tl.sum(tl.reshape(sh, (NG, W)), axis=1)
        acc += s * (pg - (264.0 * slg + 24.0 * shg)[None, :]) + z * (slg + shg)[None, :]
        wv = wv_next
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    y = tl.sum(acc, axis=1)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)


def i4w_launch(x, weight, scales, zeros, G, BLOCK_N, BLOCK_K, num_warps, pdl=None):
    """weight: permute_bytes of the portable layout."""
    N, K = weight.shape[0], 2 * weight.shape[1]
    y = torch.empty(N, device=x.device, dtype=x.dtype)
    i4w_kernel[(triton.cdiv(N, BLOCK_N),)](x, weight.view(torch.int32), scales, zeros, y, N, K, K // 8, 0x43800000, 0x41800000,
                                           G=G, BLOCK_N=BLOCK_N, BLOCK_K=max(BLOCK_K, G), num_warps=num_warps, **(pdl or dict(PDL=False)))
    return y
