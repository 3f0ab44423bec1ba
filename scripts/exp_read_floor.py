"""Experiment (session 17): how far the int8 GEMV is from the memory floor. For each 7B int8 product shape, the shipped
GEMV (kernels.int8_f16_gemv_launch at CONFIGS) against kernels that read the same bytes and compute nothing but an XOR:
"rows", the GEMV's own loop (BLOCK_N rows a program, the next tile loaded before the current one is used, the first
before the PDL wait); "flat", each program a contiguous chunk; and both over 1 GiB, the read bandwidth at all. Every
timing is a CUDA graph over copies of the weights exceeding L2, kernels chained with PDL as in the model.
`python3 scripts/exp_read_floor.py` (GPU); `TRITON_INTERPRET=1 python3 scripts/exp_read_floor.py --check` (CPU)."""
import itertools
import math
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kernels as K  # noqa: E402


@triton.jit
def _rows_read_kernel(w_ptr, y_ptr, N, KW, BLOCK_N: tl.constexpr, KT: tl.constexpr, PDL: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    k = tl.arange(0, KT)
    w_at = w_ptr + rows[:, None] * KW + k[None, :]
    w = tl.load(w_at, mask=row_ok[:, None] & (k < KW)[None, :], other=0)
    if PDL:
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros((BLOCK_N, KT), dtype=tl.int32)
    for k0 in range(0, KW, KT):
        nxt = tl.load(w_at + k0 + KT, mask=row_ok[:, None] & (k0 + KT + k < KW)[None, :], other=0)
        acc ^= w
        w = nxt
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    tl.store(y_ptr + rows, tl.xor_sum(acc, axis=1), mask=row_ok)


@triton.jit
def _flat_read_kernel(w_ptr, y_ptr, NW, CHUNK: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    base = tl.program_id(0).to(tl.int64) * CHUNK
    offs = tl.arange(0, BLOCK)
    w = tl.load(w_ptr + base + offs, mask=base + offs < NW, other=0)
    if PDL:
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros((BLOCK,), dtype=tl.int32)
    for i in range(0, CHUNK, BLOCK):
        at = base + i + BLOCK + offs
        nxt = tl.load(w_ptr + at, mask=(i + BLOCK + offs < CHUNK) & (at < NW), other=0)
        acc ^= w
        w = nxt
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    tl.store(y_ptr + tl.program_id(0), tl.xor_sum(acc, axis=0))


@triton.jit
def _stream_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, KD, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        GATED: tl.constexpr, PDL: tl.constexpr):
    # _int8_f16_gemv_kernel (no residual, no overflow fallback) with a grid smaller than the row blocks: program p
    # takes row blocks p, p + G, ... and walks their tiles as one sequence, so the next tile (of the next row block
    # at the end of one) is always in flight while a tile is summed; a row block's outputs are stored after its
    # last tile.
    KT: tl.constexpr = BLOCK_K // 4
    KW = KD // 4
    p, G = tl.program_id(0), tl.num_programs(0)
    KTILES = tl.cdiv(KW, KT)
    total = tl.cdiv(tl.cdiv(N, BLOCK_N) - p, G) * KTILES
    r, k = tl.arange(0, BLOCK_N), tl.arange(0, KT)
    rows = p * BLOCK_N + r
    w = tl.load(w_ptr + rows[:, None] * KW + k[None, :], mask=(rows < N)[:, None] & (k < KW)[None, :], other=0)
    u = w
    if GATED:
        u = tl.load(w_ptr + (rows + N)[:, None] * KW + k[None, :], mask=(rows < N)[:, None] & (k < KW)[None, :],
                    other=0)
    if PDL:
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros((BLOCK_N, KT), dtype=tl.int32)
    acc_u = tl.zeros((BLOCK_N, KT), dtype=tl.int32)
    for t in range(0, total):
        kt = t % KTILES
        t1 = t + 1
        kt1 = t1 % KTILES
        rows1 = (p + (t1 // KTILES) * G) * BLOCK_N + r
        ok1 = (rows1 < N)[:, None] & (kt1 * KT + k < tl.where(t1 < total, KW, 0))[None, :]  # none past the last
        w_next = tl.load(w_ptr + rows1[:, None] * KW + kt1 * KT + k[None, :], mask=ok1, other=0)
        k_ok = kt * KT + k < KW
        x01 = K._x_to_f16x2(tl.load(x_ptr + 2 * (kt * KT + k), mask=k_ok, other=0))[None, :]
        x23 = K._x_to_f16x2(tl.load(x_ptr + 2 * (kt * KT + k) + 1, mask=k_ok, other=0))[None, :]
        acc = K._dot4_f16x2(w, x01, x23, acc)
        w = w_next
        if GATED:
            u_next = tl.load(w_ptr + (rows1 + N)[:, None] * KW + kt1 * KT + k[None, :], mask=ok1, other=0)
            acc_u = K._dot4_f16x2(u, x01, x23, acc_u)
            u = u_next
        if kt == KTILES - 1:  # the row block's last tile: its outputs
            rows = (p + (t // KTILES) * G) * BLOCK_N + r
            row_ok = rows < N
            y = tl.sum(K._f16x2_sum(acc), axis=1) * 16.0
            up = y
            if GATED:
                up = tl.sum(K._f16x2_sum(acc_u), axis=1) * 16.0
            K._store_rows(y, up, s_ptr, s_ptr, y_ptr, rows, row_ok, N, GATED, False, True)
        last = kt == KTILES - 1
        acc = tl.where(last, 0, acc)
        acc_u = tl.where(last, 0, acc_u)
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def _pipe_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, KD, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GATED: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr):
    # _int8_f16_gemv_kernel (no residual, no overflow fallback) with the weight tiles loaded inside a tl.range loop of
    # STAGES stages: Triton's pipeliner may stage them through shared memory (cp.async), so that STAGES - 1 tiles
    # are in flight without holding registers.
    KT: tl.constexpr = BLOCK_K // 4
    KW = KD // 4
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    k = tl.arange(0, KT)
    w_at = w_ptr + rows[:, None] * KW + k[None, :]
    if PDL:
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros((BLOCK_N, KT), dtype=tl.int32)
    acc_u = tl.zeros((BLOCK_N, KT), dtype=tl.int32)
    for k0 in tl.range(0, KW, KT, num_stages=STAGES):
        k_ok = k0 + k < KW
        w = tl.load(w_at + k0, mask=row_ok[:, None] & k_ok[None, :], other=0)
        x01 = K._x_to_f16x2(tl.load(x_ptr + 2 * (k0 + k), mask=k_ok, other=0))[None, :]
        x23 = K._x_to_f16x2(tl.load(x_ptr + 2 * (k0 + k) + 1, mask=k_ok, other=0))[None, :]
        acc = K._dot4_f16x2(w, x01, x23, acc)
        if GATED:
            u = tl.load(w_at + N * KW + k0, mask=row_ok[:, None] & k_ok[None, :], other=0)
            acc_u = K._dot4_f16x2(u, x01, x23, acc_u)
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    y = tl.sum(K._f16x2_sum(acc), axis=1) * 16.0
    up = y
    if GATED:
        up = tl.sum(K._f16x2_sum(acc_u), axis=1) * 16.0
    K._store_rows(y, up, s_ptr, s_ptr, y_ptr, rows, row_ok, N, GATED, False, True)


def pipe_gemv(x, weight, scales, BLOCK_N, BLOCK_K, num_warps, stages, gated=False):
    N, Kd = weight.shape[0] // (2 if gated else 1), weight.shape[1]
    y = torch.empty(N, device=x.device, dtype=x.dtype)
    _pipe_gemv_kernel[(triton.cdiv(N, BLOCK_N),)](x.view(torch.int32), weight.view(torch.int32), scales, y, N, Kd,
                                                  BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, GATED=gated, STAGES=stages,
                                                  num_warps=num_warps, **K._pdl(x))
    return y


def stream_gemv(x, weight, scales, BLOCK_N, BLOCK_K, num_warps, programs, gated=False):
    N, Kd = weight.shape[0] // (2 if gated else 1), weight.shape[1]
    y = torch.empty(N, device=x.device, dtype=x.dtype)
    grid = min(triton.cdiv(N, BLOCK_N), programs)
    _stream_gemv_kernel[(grid,)](x.view(torch.int32), weight.view(torch.int32), scales, y, N, Kd, BLOCK_N=BLOCK_N,
                                 BLOCK_K=BLOCK_K, GATED=gated, num_warps=num_warps, **K._pdl(x))
    return y


def rows_read(w32, BLOCK_N, BLOCK_K, num_warps):  # w32: (N, K / 4) int32 words; BLOCK_K in bytes as CONFIGS has it
    N, KW = w32.shape
    y = torch.empty(N, device=w32.device, dtype=torch.int32)
    _rows_read_kernel[(triton.cdiv(N, BLOCK_N),)](w32, y, N, KW, BLOCK_N=BLOCK_N, KT=BLOCK_K // 4, num_warps=num_warps,
                                                   **K._pdl(w32))
    return y


def flat_read(w32, CHUNK, BLOCK, num_warps):
    NW = w32.numel()
    y = torch.empty(triton.cdiv(NW, CHUNK), device=w32.device, dtype=torch.int32)
    _flat_read_kernel[(y.numel(),)](w32, y, NW, CHUNK=CHUNK, BLOCK=BLOCK, num_warps=num_warps, **K._pdl(w32))
    return y


F16_HELPERS = """
@triton.jit
def lane(v, hi: tl.constexpr):  # one float16 of an f16x2 word, as float32
    return ((v >> 16) if hi else v).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)

@triton.jit
def pack(lo, hi):  # float32 -> float16 (rounded, inf beyond 65504) -> an f16x2 word
    h16 = lambda v: v.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
    return (h16(hi) << 16) | (h16(lo) & 0xFFFF)

@triton.jit
def x_to_f16x2(x2):
    return pack((x2 << 16).to(tl.float32, bitcast=True), (x2 & -65536).to(tl.float32, bitcast=True))

@triton.jit
def dot4_f16x2(w, x01, x23, acc):
    w16 = lambda i: ((w << (24 - 8 * i)) >> 24).to(tl.float32) / 16  # byte i, sign-extended, / 16
    lo = pack(w16(0) * lane(x01, False) + lane(acc, False), w16(1) * lane(x01, True) + lane(acc, True))
    return pack(w16(2) * lane(x23, False) + lane(lo, False), w16(3) * lane(x23, True) + lane(lo, True))

@triton.jit
def f16x2_sum(acc):
    return lane(acc, False) + lane(acc, True)

K._x_to_f16x2, K._dot4_f16x2, K._f16x2_sum = x_to_f16x2, dot4_f16x2, f16x2_sum
"""


def check():  # CPU, Triton's interpreter: both kernels XOR every word exactly once
    w = torch.randint(-2**31, 2**31 - 1, (37, 96), dtype=torch.int32)
    want_rows = torch.tensor([int(torch.tensor(0))] * 37)
    for r in range(37):
        v = 0
        for x in w[r].tolist():
            v ^= x
        want_rows[r] = v
    assert torch.equal(rows_read(w, 8, 64, 1).long(), want_rows), "rows"
    v = 0
    for x in w.view(-1).tolist():
        v ^= x
    for chunk, block in ((512, 128), (1024, 256), (4096, 512)):
        y = flat_read(w.view(-1), chunk, block, 1)
        got = 0
        for x in y.tolist():
            got ^= x
        assert got == v, (chunk, block)
    exec(F16_HELPERS, globals())
    import quantize as Q
    torch.manual_seed(0)
    for N, Kd, cfg, progs in [(24, 260, (8, 128, 1), 2), (10, 520, (4, 256, 2), 2), (7, 64, (8, 128, 1), 1),
                              (40, 512, (4, 128, 1), 3), (40, 512, (4, 128, 1), 100)]:
        wf, x = torch.randn(N, Kd), torch.randn(Kd).bfloat16()
        q, s = Q.quantize_int8(wf)
        ref = (x.float() @ q.float().T) * s
        got = stream_gemv(x, q, s, *cfg, progs).float()
        torch.testing.assert_close(got, ref, atol=1e-2 * ref.abs().max().item(), rtol=0)
        assert torch.equal(got, K.int8_f16_gemv_launch(x, q, s, *cfg).float())  # the same sums in the same order
        assert torch.equal(pipe_gemv(x, q, s, *cfg, 3).float(), got)
        if N % 2 == 0:
            gate, up = ref.chunk(2)
            want = torch.nn.functional.silu(gate) * up
            got = stream_gemv(x, q, s, *cfg, progs, gated=True).float()
            shipped = K.int8_f16_gemv_launch(x, q, s, *cfg, gated=True).float()
            assert torch.equal(got, shipped), (got, shipped, want)
            assert torch.equal(pipe_gemv(x, q, s, *cfg, 3, gated=True).float(), shipped)
    print("check ok")


def main():
    from gpu_check_quant import time_graph
    from bench_gemv import layer_shapes

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    a = torch.empty(2**31, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    copy = 2 * a.numel() / time_graph(lambda: b.copy_(a), reps=3) / 1e9
    del b
    print(f"copy of 2 GiB: {copy:.0f} GB/s (read + write)", flush=True)
    a32 = a.view(torch.int32)[: 2**28]  # 1 GiB
    for chunk, block, nw in ((2**16, 2048, 4), (2**17, 4096, 8), (2**15, 1024, 4)):
        sec = time_graph(lambda: flat_read(a32, chunk, block, nw), reps=3)
        print(f"flat read of 1 GiB, chunk {chunk * 4 // 1024} KB, tile {block * 4} B, {nw} warps: "
              f"{a32.numel() * 4 / sec / 1e9:.0f} GB/s", flush=True)
    del a, a32
    torch.cuda.empty_cache()
    shapes = {k: v for k, v in layer_shapes("llama-2-7b", 1).items() if k != "output"}
    print("\n| product | MB | shipped GEMV us (GB/s) | rows, shipped shape | rows, best | flat, best | pipelined GEMV, shipped "
          "shape | pipelined GEMV, best |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (n, k) in shapes.items():
        gated = name == "w13"
        cfg = K.CONFIGS["int8_f16_gated" if gated else "int8_f16"]
        nbytes = n * k + 2 * n
        copies = max(2, math.ceil(256e6 / nbytes))
        qs = [torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda") for _ in range(copies)]
        ss = [torch.rand(n, dtype=torch.bfloat16, device="cuda") * 0.01 for _ in range(copies)]
        x = torch.randn(k, dtype=torch.bfloat16, device="cuda")
        us = lambda fn: time_graph(fn) / copies * 1e6  # noqa: E731
        t_gemv = us(lambda: [K.int8_f16_gemv_launch(x, q, s, **cfg, gated=gated) for q, s in zip(qs, ss)])
        w32 = [q.view(torch.int32) for q in qs]
        t_rows = us(lambda: [rows_read(w, cfg["BLOCK_N"] * (2 if gated else 1), cfg["BLOCK_K"], cfg["num_warps"])
                             for w in w32])
        rows_grid = [(bn, bk, nw) for bn in (2, 4, 8, 16) for bk in (1024, 2048, 4096) for nw in (2, 4, 8)
                     if bk // 4 >= 32 * nw and bn * bk // 4 <= 128 * 32 * nw // 4]
        t_rows_best = min((us(lambda: [rows_read(w, bn, bk, nw) for w in w32]), (bn, bk, nw)) for bn, bk, nw in rows_grid)
        flat_grid = [(c, bl, nw) for c in (2**12, 2**13, 2**14, 2**15) for bl in (512, 1024, 2048) for nw in (2, 4)
                     if bl <= c and bl >= 128 * nw]
        t_flat_best = min((us(lambda: [flat_read(w.view(-1), c, bl, nw) for w in w32]), (c, bl, nw))
                          for c, bl, nw in flat_grid)
        xv = x.view(-1)
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        bn0, bk0, nw0 = cfg["BLOCK_N"], cfg["BLOCK_K"], cfg["num_warps"]
        y0 = K.int8_f16_gemv_launch(x, qs[0], ss[0], **cfg, gated=gated)
        streams = []
        for bn, bk, nw, st in itertools.product((2, 4, 8, 16), (1024, 2048), (4, 8), (3, 4)):
            if (gated and bn > 8) or (not gated and bn < 4) or bk // 4 < 32 * nw:
                continue
            y1 = pipe_gemv(xv, qs[0], ss[0], bn, bk, nw, st, gated)
            same = torch.equal(y1, y0) if (bn, bk) == (bn0, bk0) else (y1 - y0).abs().max().item() <= 0.02 * y0.abs().max().item()
            t = us(lambda: [pipe_gemv(xv, q, s_, bn, bk, nw, st, gated) for q, s_ in zip(qs, ss)])
            streams.append((t, (bn, bk, nw, st), same))
        streams.sort()
        print(f"{name}: pipelined variants (us, (BLOCK_N, BLOCK_K, warps, stages), equal to shipped):",
              "; ".join(f"{t:.1f} {c} {'=' if e else 'DIFF'}" for t, c, e in streams[:8]), flush=True)
        if not all(e for _, _, e in streams):
            print("ERROR: a pipelined variant differs", [c for _, c, e in streams if not e])
        ship_shape = [v for v in streams if v[1][:3] == (bn0, bk0, nw0)] or streams
        gb = lambda t: nbytes / t / 1e3  # noqa: E731
        print(f"| {name} {n}x{k} | {nbytes / 1e6:.1f} | {t_gemv:.1f} ({gb(t_gemv):.0f}) | {t_rows:.1f} ({gb(t_rows):.0f}) "
              f"| {t_rows_best[0]:.1f} ({gb(t_rows_best[0]):.0f}) {t_rows_best[1]} "
              f"| {t_flat_best[0]:.1f} ({gb(t_flat_best[0]):.0f}) {t_flat_best[1]} "
              f"| {ship_shape[0][0]:.1f} ({gb(ship_shape[0][0]):.0f}) {ship_shape[0][1]} "
              f"| {streams[0][0]:.1f} ({gb(streams[0][0]):.0f}) {streams[0][1]} |", flush=True)
        del qs, ss, w32
        torch.cuda.empty_cache()


if __name__ == "__main__":
    check() if "--check" in sys.argv else main()
