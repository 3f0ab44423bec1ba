"""Decode and prefill attention by SDPA backend, on the GPU: which one model.py should let SDPA pick;
and kernels.py's fused decode attention (RoPE + cache write + attention) by number of slices.

python scripts/bench_attention.py [--json FILE]

Inputs as model.py builds them: queries of a key/value head folded into rows (GQA), a boolean mask over
the whole cache. Each case runs over 32 layers' worth of distinct K/V (beyond the L2 cache) in a CUDA
graph; prints us per call (one layer) for each backend that accepts the inputs.
"""
import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kernels as K  # noqa: E402
from gpu_check_quant import time_graph  # noqa: E402

LAYERS = 32
BACKENDS = {"default": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "math": SDPBackend.MATH}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    dev, dt = "cuda", torch.bfloat16
    rows = []
    # (label, kv heads, query rows per kv head, query length T, cache length S, filled positions)
    cases = [("7B decode, 205 of 256 cached", 32, 1, 1, 256, 205), ("7B decode, 8192 of 8192", 32, 1, 1, 8192, 8192),
             ("L3-8B decode, 205 of 256", 8, 4, 1, 256, 205), ("7B verify k+1=6, 211 of 256", 32, 1, 6, 256, 211),
             ("7B prefill 2048", 32, 1, 2048, 2048, 2048)]
    for label, KV, R, T, S, filled in cases:
        D = 128
        q = torch.randn(1, KV, R * T, D, device=dev, dtype=dt)
        kv = [(torch.randn(1, KV, S, D, device=dev, dtype=dt), torch.randn(1, KV, S, D, device=dev, dtype=dt))
              for _ in range(LAYERS)]
        q_pos = torch.arange(filled - T, filled, device=dev).repeat_interleave(R) if R > 1 else \
            torch.arange(filled - T, filled, device=dev)
        mask = (torch.arange(S, device=dev)[None, :] <= q_pos[:, None])[None, None]  # (1, 1, R*T, S)
        ref = F.scaled_dot_product_attention(q.float(), kv[0][0].float(), kv[0][1].float(), attn_mask=mask)
        for name, backend in BACKENDS.items():
            def run(backend=backend):
                for k, v in kv:
                    if backend is None:
                        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                    else:
                        with sdpa_kernel(backend):
                            F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            try:
                with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
                    err = (F.scaled_dot_product_attention(q, *kv[0], attn_mask=mask).float() - ref).abs().max().item()
                us = 1e6 * time_graph(run) / LAYERS
            except RuntimeError as e:
                print(f"{label:32s} {name:10s} not available ({str(e).splitlines()[0][:80]})", flush=True)
                continue
            rows.append(dict(case=label, backend=name, us=us, max_err=err))
            print(f"{label:32s} {name:10s} {us:8.1f} us  (max err {err:.1e})", flush=True)
        if T == 1:  # the fused kernel also applies RoPE and writes the new key and value (same bytes read)
            H = KV * R
            qkv = torch.randn(1, (H + 2 * KV) * D, device=dev, dtype=dt)
            cos, sin = torch.rand(2, 1, D // 2, device=dev)
            pos = torch.tensor([filled - 1], device=dev)
            for slices in (None, 1, 2, 4, 8, 16, 32, 64):  # None: the kernel's own choice
                def fused(slices=slices):
                    for k, v in kv:
                        K.decode_attention_launch(qkv, cos, sin, mask[0, 0, :1], pos, k, v, H, slices)
                us = 1e6 * time_graph(fused) / LAYERS
                rows.append(dict(case=label, backend=f"fused, {slices or 'auto'} slices", us=us))
                print(f"{label:32s} fused, {slices or 'auto'} slices {us:8.1f} us", flush=True)
        del kv
    if a.json:
        a.json.write_text(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows)))


if __name__ == "__main__":
    sys.exit(main())
