"""Weight-only quantization to a new checkpoint: python quantize.py --checkpoint DIR --mode int8|int4|int4-gptq

int8: per-output-channel symmetric, w = q * scale, q in [-127, 127].
int4: groups of G input columns, asymmetric: w = (q - 8) * scale + zero, q in [0, 15] (round to nearest).
int4-gptq: the same format; the rounding is chosen by GPTQ (Frantar et al., 2022) from the layer
inputs seen on calibration text, layer by layer, so each rounding error is compensated by the
columns not yet quantized.

What is quantized: every linear layer of the transformer blocks, and the output layer unless it is
tied to the embedding table (then both stay in the checkpoint's float dtype: the embedding lookup
reads one row per token, so quantizing it would not speed up decoding). Norms and biases stay float.

The checkpoint keeps Hugging Face tensor names (q_proj, ..., lm_head) with the quantized data:
  {layer}.weight  int8 (out, in)            | uint8 (out, in_pad // 2): a group of G columns is G/8 32-bit
                                            |   words; byte i of word m holds column i*G/8 + m (low nibble)
                                            |   and G/2 + i*G/8 + m (high nibble)
  {layer}.scales  float32 (out,)            | bfloat16 (out, in_pad // G)
  {layer}.zeros                             | bfloat16 (out, in_pad // G)
in_pad is in_features rounded up to a multiple of G (the padding columns multiply zeros). config.json
gets a "quantization" entry: {"mode", "bits", "groupsize", "method", "layers": [our module names]}, and for
int4 "packing": 2 (this nibble order). Nothing is device-specific: the same files load on CPU and GPU, where
kernels.py's int4 GEMV reads this layout as it is (pack_for_device can repack it for PyTorch's int4 kernel).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import kernels
from generate import UsageError, check_output_dir, one_line_errors, run, usual_permissions
from model import (CheckpointError, KVCache, Transformer, checkpoint_dir, hf_to_ours, read_config, rope_frequencies,
                   safetensors_files)

MODES = ("int8", "int4", "int4-gptq")
GROUPSIZES = (32, 64, 128, 256)
# The int4 nibble order (kernels.pack_int4) as config.json's "packing": 2 since 2026-11-27 (word order, for the
# GEMV kernel); checkpoints without it have the older order (byte j: columns j and j + G/2) and are refused.
INT4_PACKING = 2


# ------------------------------------------------------------------------------------- modules
class Int8Linear(nn.Module):
    """A linear layer with int8 weights and one scale per output channel."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(out_features, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device)) if bias else None

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """The product, plus residual if given (model.Linear)."""
        return kernels.int8_linear(x, self.weight, self.scales, self.bias, residual)

    def swiglu(self, x: Tensor) -> Tensor:
        """silu(gate) * up, gate and up the two halves of this layer's output (model.FeedForward's w13)."""
        if self.bias is None:
            return kernels.int8_swiglu(x, self.weight, self.scales)
        return kernels.swiglu(self(x))


class Int4Linear(nn.Module):
    """A linear layer with grouped asymmetric int4 weights, two per byte (layout in kernels.py)."""

    def __init__(self, in_features: int, out_features: int, groupsize: int, bias: bool = False, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.groupsize = in_features, out_features, groupsize
        k_pad = padded(in_features, groupsize)
        self.register_buffer("weight", torch.empty(out_features, k_pad // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.empty(out_features, k_pad // groupsize, dtype=dtype, device=device))
        self.register_buffer("zeros", torch.empty(out_features, k_pad // groupsize, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device)) if bias else None

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """The product, plus residual if given (model.Linear)."""
        if not hasattr(self, "packed"):
            return kernels.int4_linear(x, self.weight, self.scales, self.zeros, self.groupsize, self.bias, residual)
        y = kernels.tinygemm_linear(x, self.packed, self.scales_zeros, self.groupsize)  # pack_for_device's layout
        y = y if self.bias is None else y + self.bias
        return y if residual is None else residual + y

    def swiglu(self, x: Tensor) -> Tensor:
        """silu(gate) * up, gate and up the two halves of this layer's output (model.FeedForward's w13)."""
        if hasattr(self, "packed") or self.bias is not None:
            return kernels.swiglu(self(x))
        return kernels.int4_swiglu(x, self.weight, self.scales, self.zeros, self.groupsize)

    def pack_for_cuda(self) -> bool:
        """Swap the portable tensors for tinygemm's layout, where the kernel takes this layer; True if so."""
        if hasattr(self, "packed"):
            return True
        N, k_pad = self.weight.shape[0], 2 * self.weight.shape[1]
        if not (self.weight.is_cuda and self.scales.dtype == torch.bfloat16 and N % 8 == 0 and k_pad % 128 == 0):
            return False
        packed, scales_zeros = kernels.tinygemm_pack(self.weight, self.scales, self.zeros, self.groupsize)
        del self.weight, self.scales, self.zeros
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scales_zeros", scales_zeros, persistent=False)
        return True


def pack_for_device(model: nn.Module, layout: str | None = None) -> None:
    """After loading onto a CUDA device, for layout "tinygemm" (GPTFAST_INT4, if set, wins over the argument):
    repack int4 layers for PyTorch's int4 kernel (tinygemm). It is faster than kernels.py's int4 GEMV where a
    step multiplies several rows (batch 8: 1430.5 against 670.1-676.8 tok/s in all), so generate.py asks for it
    for batches and speculative verification; it is slower for one row (321.5 against 408.9 tok/s) and on long
    prompts (it dequantizes the matrix for every 16 rows: 918 against 68 ms for a 2048-token prompt to the 7B
    shape); H100, BENCHMARKS.md. Otherwise ("gemv", the default) the layers keep the checkpoint's layout, which
    the GEMV reads (1-16 rows, once a row) and longer prompts dequantize (then cuBLAS). Layers tinygemm cannot
    take keep it too. The packed model cannot be saved: checkpoints are written before this step."""
    layout = os.environ.get("GPTFAST_INT4") or layout or "gemv"
    if layout not in ("gemv", "tinygemm"):
        raise UsageError(f"GPTFAST_INT4={layout}: choose gemv (the default) or tinygemm")
    if layout == "gemv":
        return
    for m in model.modules():
        if isinstance(m, Int4Linear):
            m.pack_for_cuda()


def padded(k: int, groupsize: int) -> int:
    return -(-k // groupsize) * groupsize


# ---------------------------------------------------------------------------- quantizers (math)
def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """w (N, K) float -> (int8 (N, K), float32 scales (N,)), symmetric per output row."""
    w = w.float()
    scales = w.abs().amax(dim=1).clamp(min=1e-10) / 127
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def int4_params(w: Tensor, groupsize: int, scale_dtype=torch.bfloat16) -> tuple[Tensor, Tensor]:
    """Scales and zeros (N, K // G) of w (N, K), rounded to scale_dtype: min maps to q=0, max to q=15."""
    g = w.float().reshape(w.shape[0], -1, groupsize)  # (N, K/G, G)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scales = ((hi - lo).clamp(min=1e-6) / 15).to(scale_dtype)
    zeros = (lo + 8 * scales.float()).to(scale_dtype)
    return scales, zeros


def int4_round(w: Tensor, scales: Tensor, zeros: Tensor) -> Tensor:
    """Nearest q in [0, 15] for w (N, k) given one group's scales, zeros (N,) or (N, k)."""
    s, z = scales.float(), zeros.float()
    if s.dim() == 1:
        s, z = s[:, None], z[:, None]
    return (torch.round((w.float() - z) / s) + 8).clamp(0, 15)


def quantize_int4(w: Tensor, groupsize: int, scale_dtype=torch.bfloat16) -> tuple[Tensor, Tensor, Tensor]:
    """w (N, K) float -> (packed uint8 (N, K_pad // 2), scales, zeros (N, K_pad // G)); round to nearest."""
    w = pad_columns(w.float(), groupsize)
    scales, zeros = int4_params(w, groupsize, scale_dtype)
    s = scales.repeat_interleave(groupsize, dim=1)  # (N, K)
    z = zeros.repeat_interleave(groupsize, dim=1)
    return kernels.pack_int4(int4_round(w, s, z), groupsize), scales, zeros


def pad_columns(w: Tensor, groupsize: int) -> Tensor:
    """Pad (N, K) to a multiple of groupsize by repeating the last column: padding then stays inside
    the group's range (it multiplies zero activations, so its value is otherwise irrelevant)."""
    pad = padded(w.shape[1], groupsize) - w.shape[1]
    return F.pad(w[None], (0, pad), mode="replicate")[0] if pad else w


def gptq_int4(w: Tensor, H: Tensor, groupsize: int, scale_dtype=torch.bfloat16, block: int = 128,
              damp: float = 0.01) -> tuple[Tensor, Tensor, Tensor]:
    """GPTQ: quantize w (N, K) column by column, spreading each column's rounding error over the later
    columns through the inverse Hessian of the layer's squared output error, H = X^T X (K, K).
    Returns the same (packed, scales, zeros) as quantize_int4."""
    w = pad_columns(w.float(), groupsize).clone()
    N, K = w.shape
    H = H.float().clone()
    if K > H.shape[0]:  # padding columns: unit curvature, no coupling, so they absorb no error
        H = torch.block_diag(H, torch.eye(K - H.shape[0], device=H.device))
    dead = H.diagonal() == 0  # inputs that were always zero: any value is exact
    H[dead, dead] = 1
    H.diagonal().add_(damp * H.diagonal().mean())  # dampening keeps the Cholesky factorisation stable
    # Upper Cholesky factor of H^-1: row i holds the update that column i's error applies to columns > i.
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    block = max(block, groupsize)  # groups never straddle blocks, so their scales see updated weights
    q = torch.zeros(N, K, dtype=torch.uint8, device=w.device)
    scales = torch.empty(N, K // groupsize, dtype=scale_dtype, device=w.device)
    zeros = torch.empty_like(scales)
    for b0 in range(0, K, block):
        b1 = min(b0 + block, K)
        W1, Hinv1 = w[:, b0:b1].clone(), Hinv[b0:b1, b0:b1]
        err = torch.zeros_like(W1)
        for i in range(b1 - b0):
            col = b0 + i
            if col % groupsize == 0:
                g = col // groupsize
                s, z = int4_params(W1[:, i:i + groupsize], groupsize, scale_dtype)
                scales[:, g], zeros[:, g] = s[:, 0], z[:, 0]
            s, z = scales[:, col // groupsize], zeros[:, col // groupsize]
            qc = int4_round(W1[:, i:i + 1], s, z)[:, 0]
            q[:, col] = qc.to(torch.uint8)
            e = (W1[:, i] - ((qc - 8) * s.float() + z.float())) / Hinv1[i, i]
            W1[:, i:] -= e[:, None] * Hinv1[i, i:][None, :]
            err[:, i] = e
        w[:, b1:] -= err @ Hinv[b0:b1, b1:]  # the block's errors, applied to the later columns at once
    return kernels.pack_int4(q, groupsize), scales, zeros


# ----------------------------------------------------------------------------- model surgery
def target_layers(model: Transformer) -> list[str]:
    """Names of the nn.Linear modules to quantize: all in the blocks, and the output unless tied."""
    names = [n for n, m in model.layers.named_modules() if isinstance(m, nn.Linear)]
    names = [f"layers.{n}" for n in names]
    return names if model.args.tie_embeddings else names + ["output"]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def apply_quantization(model: Transformer, qcfg: dict) -> None:
    """Swap the layers qcfg["layers"] for empty quantized modules whose buffers match the checkpoint
    (called by Transformer.from_pretrained, on the meta device, before the weights are loaded)."""
    bits, groupsize = qcfg.get("bits"), qcfg.get("groupsize")
    if bits not in (4, 8) or (bits == 4 and groupsize not in GROUPSIZES):
        raise CheckpointError(f"config.json quantization (mode {qcfg.get('mode')!r}, bits {bits!r}, groupsize "
                              f"{groupsize!r}) is not supported (bits 8, or bits 4 with "
                              f"groupsize in {GROUPSIZES}): re-quantize with this version of quantize.py")
    if bits == 4 and qcfg.get("packing") != INT4_PACKING:
        raise CheckpointError(f"this int4 checkpoint has packing {qcfg.get('packing', 1)}, an older nibble order than "
                              f"this code reads ({INT4_PACKING}): quantize the float checkpoint again with quantize.py")
    for name in qcfg.get("layers", []):
        try:
            lin = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"config.json quantization lists layer {name!r}, which this model lacks") from None
        _set_module(model, name, _empty_like(lin, bits, groupsize))
    model.quantization = qcfg


def _empty_like(lin: nn.Linear, bits: int, groupsize: int, device=None) -> nn.Module:
    device = device or lin.weight.device
    has_bias, dtype = lin.bias is not None, lin.weight.dtype
    if bits == 8:
        return Int8Linear(lin.in_features, lin.out_features, has_bias, device, dtype)
    return Int4Linear(lin.in_features, lin.out_features, groupsize, has_bias, device, dtype)


def _quantized(lin: nn.Linear, bits: int, groupsize: int, H: Tensor | None = None) -> nn.Module:
    """The quantized replacement of lin, on lin's device; scales in lin's dtype (as the loader casts them)."""
    dtype = lin.weight.dtype
    m = _empty_like(lin, bits, groupsize, device="meta")  # empty shell; load_state_dict(assign=True) fills it
    if bits == 8:
        q, scales = quantize_int8(lin.weight)
        tensors = dict(weight=q, scales=scales.to(dtype))
    else:
        packed, scales, zeros = (gptq_int4(lin.weight, H, groupsize) if H is not None
                                 else quantize_int4(lin.weight, groupsize))
        tensors = dict(weight=packed, scales=scales.to(dtype), zeros=zeros.to(dtype))
    if lin.bias is not None:
        tensors["bias"] = lin.bias.detach()
    m.load_state_dict(tensors, assign=True)
    return m


@torch.no_grad()
def quantize_model(model: Transformer, mode: str, groupsize: int = 32, calibration: Tensor | None = None,
                   verbose: bool = False) -> Transformer:
    """Quantize model's linear layers in place, on the device the weights are on; return model.

    mode: "int8" (per-channel), "int4" (grouped round-to-nearest) or "int4-gptq" (needs calibration,
    token ids (n_samples, seq_len)). The result has exactly the modules and buffers that loading the
    checkpoint quantize.py writes would give (scales in the model's dtype), and runs on CPU (PyTorch)
    and GPU (pack_for_device afterwards, as the loader does, repacks int4 for tinygemm if GPTFAST_INT4=tinygemm;
    not before saving). model.quantization holds the config.json entry.
    On an H100 the Llama-2-7B shape (bf16, already on the GPU) took 0.1 s for int8 and 0.3 s for int4.
    """
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    if groupsize not in GROUPSIZES:
        raise UsageError(f"group size {groupsize} is not supported: choose one of {GROUPSIZES}")
    if getattr(model, "quantization", None):
        raise UsageError("the model is already quantized: start from a float checkpoint")
    bits = 8 if mode == "int8" else 4
    names = target_layers(model)
    if mode == "int4-gptq":
        if calibration is None:
            raise UsageError("int4-gptq needs calibration token ids")
        _gptq_model(model, names, groupsize, calibration, verbose)
    else:
        for name in names:
            _set_module(model, name, _quantized(model.get_submodule(name), bits, groupsize))
    model.quantization = {"mode": mode, "bits": bits, "groupsize": groupsize if bits == 4 else None,
                          "method": "gptq" if mode == "int4-gptq" else "round-to-nearest", "layers": names,
                          **({"packing": INT4_PACKING} if bits == 4 else {})}
    if bits == 4:
        odd = [n for n in names if model.get_submodule(n).in_features % groupsize]
        if odd and verbose:
            print(f"padded to a multiple of {groupsize} input columns (the last column repeated; the activations "
                  f"padded with zeros): {', '.join(odd)}", file=sys.stderr)
    return model


def _gptq_model(model: Transformer, names: list[str], groupsize: int, tokens: Tensor, verbose: bool,
                batch: int = 8) -> None:
    """GPTQ block by block: run the calibration activations through one block (with its float weights)
    collecting each linear layer's input Hessian, quantize the block, then recompute its outputs with
    the quantized weights as the next block's inputs. Peak memory: one block's activations."""
    a = model.args
    dev = model.tok_embeddings.weight.device
    tokens = tokens.to(dev)
    n, T = tokens.shape
    cos_sin = torch.outer(torch.arange(T, device=dev).float(), rope_frequencies(a, dev))
    cos, sin = cos_sin.cos()[None, :, None], cos_sin.sin()[None, :, None]  # (1, T, 1, D/2)
    mask = torch.ones(T, T, dtype=torch.bool, device=dev).tril()[None, None]  # (1, 1, T, T) causal
    pos = torch.arange(T, device=dev)
    xs = [model.tok_embeddings(tokens[i:i + batch]) for i in range(0, n, batch)]  # each (b, T, dim)
    t0 = time.perf_counter()

    def hessians(modules: dict[str, nn.Linear], run) -> dict[str, Tensor]:
        H = {k: torch.zeros(m.in_features, m.in_features, device=dev) for k, m in modules.items()}

        def hook(key):
            def f(_, inputs, __):
                x = inputs[0].reshape(-1, inputs[0].shape[-1]).float()  # (b * T, in)
                H[key].addmm_(x.T, x)
            return f

        handles = [m.register_forward_hook(hook(k)) for k, m in modules.items()]
        run()
        for h in handles:
            h.remove()
        return H

    for i, layer in enumerate(model.layers):
        def run_block():
            for j, x in enumerate(xs):
                layer.attention.kv_cache = KVCache(x.shape[0], a.n_kv_heads, T, a.head_dim, x.dtype, dev)
                xs[j] = layer(x, cos, sin, mask.expand(x.shape[0], 1, T, T), pos)
            layer.attention.kv_cache = None

        mine = {n_: model.get_submodule(n_) for n_ in names if n_.startswith(f"layers.{i}.")}
        saved = list(xs)
        H = hessians(mine, run_block)
        for name, lin in mine.items():
            _set_module(model, name, _quantized(lin, 4, groupsize, H[name]))
        xs[:] = saved
        run_block()  # outputs of the quantized block feed the next one
        if verbose:
            _progress(i + 1, len(model.layers), t0)
    if "output" in names:
        out = model.output
        H = hessians({"output": out}, lambda: [out(model.norm(x)) for x in xs])
        model.output = _quantized(out, 4, groupsize, H["output"])


def _progress(done: int, total: int, t0: float) -> None:
    bar = "#" * (30 * done // total)
    print(f"\rGPTQ [{bar:<30}] block {done}/{total}, {time.perf_counter() - t0:.0f} s", end="\n" if done == total else "",
          file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ saving
def hf_state_dict(model: Transformer, float_dtype: torch.dtype) -> dict[str, Tensor]:
    """The model's tensors under Hugging Face names, fused q/k/v and gate/up split back along dim 0
    (every quantized tensor is per output row, so the split is exact); float tensors in float_dtype,
    except int8 scales (float32: they are tiny) and int4 scales/zeros (bfloat16, the format)."""
    a = model.args
    splits = {"attention.wqkv": (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                                 [a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim, a.n_kv_heads * a.head_dim]),
              "feed_forward.w13": (["mlp.gate_proj", "mlp.up_proj"], [a.intermediate_size] * 2)}
    renames = {"attention.wo": "self_attn.o_proj", "feed_forward.w2": "mlp.down_proj",
               "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    top = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    out = {}
    for name, t in model.state_dict().items():
        if a.tie_embeddings and name.startswith("output."):
            continue
        if t.is_floating_point():
            bits = (model.quantization or {}).get("bits")
            leaf = name.rsplit(".", 1)[1]
            t = t.to(torch.float32 if (bits == 8 and leaf == "scales") else
                     torch.bfloat16 if (bits == 4 and leaf in ("scales", "zeros")) else float_dtype)
        if name in top or name.startswith("output."):
            out[top.get(name, name.replace("output.", "lm_head.", 1))] = t
            continue
        parts = name.split(".")  # layers.{i}.{module}.{leaf}
        module, leaf = ".".join(parts[2:-1]), parts[-1]
        prefix = f"model.layers.{parts[1]}."
        if module in splits:
            hf_modules, sizes = splits[module]
            for hf_module, piece in zip(hf_modules, t.split(sizes, dim=0)):
                out[prefix + f"{hf_module}.{leaf}"] = piece.contiguous()
        else:
            out[prefix + f"{renames[module]}.{leaf}"] = t.contiguous()
    for hf_name in out:  # the loader's mapping must take every name back to where it came from
        assert hf_to_ours(hf_name)[0] in model.state_dict(), hf_name
    return out


def write_checkpoint(model: Transformer, src: Path, dst: Path) -> None:
    """dst gets the quantized model.safetensors, config.json with the format, and the other files of
    src (tokenizer, generation config, ...); written in a temporary folder, then renamed into place."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(safetensors_files(src)[0], framework="pt") as f:  # keep the checkpoint's float dtype
        float_dtype = next((f.get_slice(k).get_dtype() for k in f.keys()), "F32")
    float_dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}.get(float_dtype, torch.float32)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        skip = {"config.json", "model.safetensors.index.json"}
        for f in src.iterdir():
            if f.is_file() and f.name not in skip and f.suffix not in (".safetensors", ".bin", ".pth", ".pt", ".gguf"):
                shutil.copy2(f, tmp / f.name)
        config = read_config(src)
        config["quantization"] = model.quantization
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(hf_state_dict(model, float_dtype), tmp / "model.safetensors", metadata={"format": "pt"})
        usual_permissions(tmp)
    except BaseException as e:  # (a full disk, an interrupt): no half-written folder is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise UsageError(f"cannot write {dst} ({e.strerror or e}): choose another --output") from None
        raise
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------- calibration
def calibration_tokens(tokenizer, text: str, n_samples: int, seq_len: int) -> Tensor:
    """(n, seq_len) token ids: consecutive windows of the tokenized text, each starting with BOS when the
    tokenizer has one; fewer than n_samples if the text is short."""
    bos = [tokenizer.bos_id] if tokenizer.add_bos else []
    body = tokenizer.encode(text, bos=False)
    step = seq_len - len(bos)
    rows = [bos + body[i:i + step] for i in range(0, len(body) - step + 1, step)][:n_samples]
    if not rows:
        raise UsageError(f"the calibration text has {len(body)} tokens, fewer than --calibration_seq_len {seq_len}")
    return torch.tensor(rows)


def default_calibration_text() -> str:
    """Python's own help texts (pydoc_data), shipped with every Python: real English and code."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


# ---------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="float Hugging Face checkpoint directory")
    p.add_argument("--mode", required=True, help=f"one of {', '.join(MODES)}")
    p.add_argument("--groupsize", type=int, default=None, help="int4 group size: 32 (default), 64, 128 or 256")
    p.add_argument("--calibration_text", type=Path, default=None, help="int4-gptq: a text file (default: pydoc help texts)")
    p.add_argument("--calibration_samples", type=int, default=None, help="int4-gptq: windows of text (default 128)")
    p.add_argument("--calibration_seq_len", type=int, default=None, help="int4-gptq: tokens per window (default 256)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--output", type=Path, default=None, help="default: next to the input, named after mode and group size")

    return one_line_errors(p)


def check_args(args) -> None:
    if args.mode not in MODES:
        raise UsageError(f"unknown --mode {args.mode!r}: choose one of {', '.join(MODES)}")
    if args.mode == "int8" and args.groupsize is not None:
        raise UsageError("--groupsize applies to int4 modes; int8 has one scale per output channel")
    if args.groupsize is None:
        args.groupsize = 32
    if args.groupsize not in GROUPSIZES:
        raise UsageError(f"--groupsize {args.groupsize} is not supported: choose one of {', '.join(map(str, GROUPSIZES))}")
    given = [f"--{k}" for k in ("calibration_text", "calibration_samples", "calibration_seq_len")
             if getattr(args, k) is not None]
    if args.mode != "int4-gptq" and given:
        raise UsageError(f"{given[0]} is only used by --mode int4-gptq")
    args.calibration_samples = 128 if args.calibration_samples is None else args.calibration_samples
    args.calibration_seq_len = 256 if args.calibration_seq_len is None else args.calibration_seq_len
    if args.calibration_text is not None and not args.calibration_text.is_file():
        raise UsageError(f"calibration text {args.calibration_text} not found: pass an existing text file")
    if args.calibration_samples < 1 or args.calibration_seq_len < 2:
        raise UsageError("--calibration_samples must be >= 1 and --calibration_seq_len >= 2")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA GPU is available: use --device cpu")
    checkpoint_dir(args.checkpoint)
    if "quantization" in read_config(args.checkpoint):
        raise UsageError(f"{args.checkpoint} is already quantized ({read_config(args.checkpoint)['quantization']['mode']}): "
                         "pass the float checkpoint")
    src = args.checkpoint = args.checkpoint.resolve()  # (".": a name to put the default output next to)
    name = f"{src.name}-{args.mode}" + ("" if args.mode == "int8" else f"-g{args.groupsize}")
    dst = args.output = (args.output or src.with_name(name)).resolve()
    # The output replaces only an earlier output of this tool (or an empty folder): never the input, another
    # checkpoint or a folder of the user's files.
    if src.is_relative_to(dst):  # dst is the input or a folder holding it
        raise UsageError(f"--output {dst} would replace the input checkpoint: choose another directory")
    if dst.exists() and not (dst.is_dir() and (not any(dst.iterdir()) or _is_quantize_output(dst))):
        raise UsageError(f"--output {dst} exists and is not an earlier quantize.py output: choose a new directory "
                         "(quantize.py replaces only its own outputs)")
    check_output_dir(dst, "--output")


def _is_quantize_output(path: Path) -> bool:
    try:
        return "quantization" in read_config(path)
    except CheckpointError:
        return False


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    check_args(args)
    src, dst = args.checkpoint, args.output  # both checked and resolved by check_args
    t0 = time.perf_counter()
    model = Transformer.from_pretrained(src, device=args.device, dtype=torch.float32)  # quantization math in fp32
    calibration = None
    if args.mode == "int4-gptq":
        from tokenizer import Tokenizer

        try:
            text = args.calibration_text.read_text(encoding="utf-8") if args.calibration_text \
                else default_calibration_text()
        except UnicodeDecodeError:
            raise UsageError(f"--calibration_text {args.calibration_text} is not UTF-8 text: save it as UTF-8") \
                from None
        seq_len = min(args.calibration_seq_len, model.args.max_seq_len)
        calibration = calibration_tokens(Tokenizer(src), text, args.calibration_samples, seq_len)
        print(f"calibrating on {calibration.shape[0]} samples of {seq_len} tokens", file=sys.stderr)
    t1 = time.perf_counter()
    quantize_model(model, args.mode, args.groupsize, calibration, verbose=True)
    if args.device == "cuda":
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    write_checkpoint(model, src, dst)
    kept = "output layer tied to the embeddings: both kept in float" if model.args.tie_embeddings else \
        "embeddings kept in float, output layer quantized"
    print(f"{args.mode}: quantized {len(model.quantization['layers'])} linear layers in {t2 - t1:.1f} s "
          f"({kept}); wrote {dst} in {time.perf_counter() - t0:.1f} s total", file=sys.stderr)


if __name__ == "__main__":
    run(main)
