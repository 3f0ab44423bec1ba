"""Experiment: GEMV with the weight tiles brought in by TMA into a multi-stage shared-memory pipeline."""
import triton, triton.language as tl


@triton.jit
def _i8f(w):
    u = w.to(tl.uint8, bitcast=True).to(tl.int32)
    return (u ^ 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0


@triton.jit
def tma_gemv(x_ptr, w_desc, s_ptr, r_ptr, y_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
             STAGES: tl.constexpr, SCALED: tl.constexpr, RESIDUAL: tl.constexpr, PDL: tl.constexpr):
    row0 = tl.program_id(0) * BLOCK_N
    rows = row0 + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    cols = tl.arange(0, BLOCK_K)
    if PDL:
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        w = w_desc.load([row0, k0])
        x = tl.load(x_ptr + k0 + cols, mask=k0 + cols < K, other=0.0).to(tl.float32)
        if SCALED:
            acc += _i8f(w) * x[None, :]
        else:
            acc += w.to(tl.float32) * x[None, :]
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    y = tl.sum(acc, axis=1)
    if SCALED:
        y *= tl.load(s_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    if RESIDUAL:
        r = tl.load(r_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        y = y.to(y_ptr.dtype.element_ty).to(tl.float32) + r
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)


def make_desc(weight, BLOCK_N, BLOCK_K):
    from triton.tools.tensor_descriptor import TensorDescriptor
    return TensorDescriptor.from_tensor(weight, [BLOCK_N, BLOCK_K])


def launch(x, weight, scales, BLOCK_N, BLOCK_K, num_warps, stages, residual=None, desc=None, pdl=None):
    import torch
    N, K = weight.shape
    y = torch.empty(N, device=x.device, dtype=x.dtype)
    desc = desc or make_desc(weight, BLOCK_N, BLOCK_K)
    tma_gemv[(triton.cdiv(N, BLOCK_N),)](x, desc, x if scales is None else scales, x if residual is None else residual,
                                         y, N, K, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, STAGES=stages,
                                         SCALED=scales is not None, RESIDUAL=residual is not None,
                                         num_warps=num_warps, **(pdl or dict(PDL=False)))
    return y
