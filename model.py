"""A Llama-family transformer (Llama 1/2/3, Mistral, Qwen2, SmolLM, TinyLlama) with a static KV cache.

One file, depends only on torch (safetensors to load weights; on CUDA, kernels.py's Triton kernels for
decode attention and SwiGLU). Configured from the checkpoint's own config.json, never from its folder
name. Weights keep Hugging Face's layout except that q/k/v and gate/up are fused into one matrix each
(fewer, larger matmuls: the decode step is bound by reading weights, and every kernel launch costs time).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import kernels


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names the file or tensor and the fix."""


@dataclass
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # Llama-3.1 "llama3" scaling parameters, else None
    tie_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2, and Llama with attention_bias
    o_bias: bool = False  # Llama with attention_bias
    max_seq_len: int = 2048

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "ModelArgs":
        """Build from a Hugging Face config.json dict; raise CheckpointError for what is not supported."""
        try:
            return cls._from_hf_config(cfg)
        except KeyError as e:
            raise CheckpointError(f"config.json lacks {e.args[0]!r}: not a complete Hugging Face config") from None

    @classmethod
    def _from_hf_config(cls, cfg: dict) -> "ModelArgs":
        model_type = cfg.get("model_type")
        if model_type not in ("llama", "mistral", "qwen2"):
            raise CheckpointError(f"model_type {model_type!r} is not supported (supported: llama, mistral, qwen2)")
        for key in ("num_local_experts", "num_experts", "n_routed_experts"):
            if cfg.get(key):
                raise CheckpointError(f"mixture-of-experts models ({key}={cfg[key]}) are not supported")
        if cfg.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"hidden_act {cfg['hidden_act']!r} is not supported (only silu)")
        if cfg.get("mlp_bias"):
            raise CheckpointError("mlp_bias=true is not supported")
        if cfg.get("partial_rotary_factor", 1.0) != 1.0:
            raise CheckpointError(f"partial_rotary_factor {cfg['partial_rotary_factor']} is not supported")
        # RoPE: transformers >= 5 writes rope_parameters (with rope_theta inside), older configs
        # write rope_theta and rope_scaling at the top level.
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        rope_theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise CheckpointError(f"RoPE scaling {rope_type!r} is not supported (supported: default, llama3)")
        n_heads = cfg["num_attention_heads"]
        max_seq_len = cfg.get("max_position_embeddings", 2048)
        # Sliding-window attention equals full attention while the context fits in the window,
        # so instead of refusing such models we cap the context at the window.
        window = cfg.get("sliding_window")
        if window and (model_type == "mistral" or cfg.get("use_sliding_window")):
            max_seq_len = min(max_seq_len, window)
        attention_bias = bool(cfg.get("attention_bias", False))
        return cls(
            dim=cfg["hidden_size"],
            n_layers=cfg["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
            intermediate_size=cfg["intermediate_size"],
            vocab_size=cfg["vocab_size"],
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope if rope_type == "llama3" else None,
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type != "qwen2" and attention_bias,
            max_seq_len=max_seq_len,
        )


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # Normalise in float32, scale in the input dtype: the order Hugging Face uses, for bitwise-close logits.
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


def rope_frequencies(args: ModelArgs, device=None) -> Tensor:
    """Inverse frequencies (head_dim // 2,), with Llama-3.1 scaling when the config asks for it."""
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, args.head_dim, 2, device=device).float() / args.head_dim))
    if args.rope_scaling is not None:
        s = args.rope_scaling
        factor, low, high = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
        old_len = s.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        # Long wavelengths are divided by `factor`, short ones kept, the band between interpolated.
        inv_freq = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = torch.where(medium, smoothed, inv_freq)
    return inv_freq


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE (Hugging Face layout). x: (B, T, H, D); cos, sin: (B, T, 1, D/2) float32."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).type_as(x)


class Linear(nn.Linear):
    """nn.Linear; on CUDA, batched decode's products go to a kernel that reads each weight once (kernels.linear),
    and so does one row where gemv is set (wo and w2, whose inputs Inductor cannot fuse into the product).
    Like every linear layer here (quantize.py's too) it takes the residual to add to its output, so that a kernel
    may add it as it stores the output (the GEMVs do; Inductor fuses the add into its own kernels)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, gemv: bool = False, **kwargs):
        super().__init__(in_features, out_features, bias, **kwargs)
        self.gemv = gemv

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        return kernels.linear(x, self.weight, self.bias, residual, self.gemv)


class KVCache(nn.Module):
    """Preallocated keys and values, written in place at the positions being decoded."""

    def __init__(self, batch_size: int, n_kv_heads: int, max_seq_len: int, head_dim: int, dtype, device=None):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)  # (B, n_kv, S, D)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # k, v: (B, n_kv, T, D) written at positions input_pos (T,); B may be below the cache's batch size
        k_cache, v_cache = (self.k, self.v) if k.shape[0] == self.k.shape[0] else (self.k[:k.shape[0]], self.v[:k.shape[0]])
        k_cache.index_copy_(2, input_pos, k)
        v_cache.index_copy_(2, input_pos, v)
        return k_cache, v_cache


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        qkv_out = (args.n_heads + 2 * args.n_kv_heads) * args.head_dim
        self.wqkv = Linear(args.dim, qkv_out, bias=args.qkv_bias)
        self.wo = Linear(args.n_heads * args.head_dim, args.dim, bias=args.o_bias, gemv=True)
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, input_pos: Tensor,
                residual: Tensor | None = None) -> Tensor:
        """attention(x), plus residual if given (added by wo)"""
        B, T, _ = x.shape
        H, KV, D = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.wqkv(x)
        if T == 1 and kernels.use_decode_attention(qkv, self.kv_cache.k):  # on CUDA, all of the below in one kernel
            y = torch.ops.gptfast.decode_attention(qkv.view(B, -1), cos.view(B, -1), sin.view(B, -1),
                                                   mask.view(B, -1), input_pos, self.kv_cache.k, self.kv_cache.v, H)
            return self.wo(y.view(B, 1, H * D), residual=residual)
        q, k, v = qkv.split([H * D, KV * D, KV * D], dim=-1)
        q = apply_rope(q.view(B, T, H, D), cos, sin)
        k = apply_rope(k.view(B, T, KV, D), cos, sin)
        v = v.view(B, T, KV, D)
        k, v = self.kv_cache.update(input_pos, k.transpose(1, 2), v.transpose(1, 2))  # (B, KV, S, D)
        # Grouped-query attention without repeating K/V: the R = H // KV query heads that share a
        # key/value head become R * T query rows of that head, so any SDPA backend sees plain MHA.
        R = H // KV
        q = q.view(B, T, KV, R, D).permute(0, 2, 3, 1, 4).reshape(B, KV, R * T, D)
        mask = mask.unsqueeze(2).expand(B, 1, R, T, mask.shape[-1]).reshape(B, 1, R * T, -1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, KV, R * T, D)
        y = y.view(B, KV, R, T, D).permute(0, 3, 1, 2, 4).reshape(B, T, H * D)
        return self.wo(y, residual=residual)


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w13 = Linear(args.dim, 2 * args.intermediate_size, bias=False)  # gate and up, fused
        self.w2 = Linear(args.intermediate_size, args.dim, bias=False, gemv=True)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """w2(silu(gate) * up), [gate; up] = w13(x), plus residual if given (added by w2)"""
        if hasattr(self.w13, "swiglu"):  # quantize's Int8Linear and Int4Linear: the SwiGLU inside their GEMV
            a = self.w13.swiglu(x)
        else:
            a = kernels.swiglu(self.w13(x))
        return self.w2(a, residual=residual)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, into: nn.Module | None = None) -> Tensor:
        """into: the layer that reads the output. A 16-bit linear layer of one row takes the norm into Inductor's
        GEMV (each program sums the squares of x as it reads it); before any other (a quantized layer's kernel, a
        batch of rows) a decode step's norm on CUDA is kernels.py's, one pass over the row where Inductor's kernel
        makes two over a row wider than 1024: 7B int8 decode 344.2 -> 350.5 tok/s and int4 413.2 -> 417.3-417.7 on
        an H100 (BENCHMARKS.md run 145)."""
        if kernels.use_row_norm(x, self.weight) and not (isinstance(into, nn.Linear) and x.shape[0] == 1):
            return torch.ops.gptfast.rms_norm(x, self.weight, self.eps)
        return rms_norm(x, self.weight, self.eps)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, input_pos: Tensor) -> Tensor:
        # The residual goes into wo and w2, whose kernels may add it as they store their output.
        h = self.attention(self.attention_norm(x, self.attention.wqkv), cos, sin, mask, input_pos, x)
        return self.feed_forward(self.ffn_norm(h, self.feed_forward.w13), h)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.max_batch_size = self.max_seq_len = -1

    def setup_caches(self, max_batch_size: int, max_seq_len: int) -> None:
        """Allocate the KV cache and RoPE tables; positions beyond max_seq_len cannot be decoded."""
        if max_seq_len > self.args.max_seq_len:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds the model's context of {self.args.max_seq_len}")
        if (max_batch_size, max_seq_len) == (self.max_batch_size, self.max_seq_len):
            return
        self.max_batch_size, self.max_seq_len = max_batch_size, max_seq_len
        w = self.tok_embeddings.weight
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(
                max_batch_size, self.args.n_kv_heads, max_seq_len, self.args.head_dim, w.dtype, w.device)
        freqs = torch.outer(torch.arange(max_seq_len, device=w.device).float(), rope_frequencies(self.args, w.device))
        self.register_buffer("rope_cos", freqs.cos(), persistent=False)  # (S, D/2) float32
        self.register_buffer("rope_sin", freqs.sin(), persistent=False)
        # First real position of each row: prompts of different lengths are left-padded to one length.
        self.register_buffer("row_start", torch.zeros(max_batch_size, dtype=torch.long, device=w.device),
                             persistent=False)

    def forward(self, idx: Tensor, input_pos: Tensor, last_only: bool = False) -> Tensor:
        """idx: (B, T) token ids at cache positions input_pos (T,). Returns logits (B, T or 1, vocab)."""
        B = idx.shape[0]
        start = self.row_start[:B, None]  # (B, 1)
        pos = (input_pos[None, :] - start).clamp(min=0)  # (B, T) RoPE position of each token in its row
        cos = self.rope_cos[pos].unsqueeze(2)  # (B, T, 1, D/2)
        sin = self.rope_sin[pos].unsqueeze(2)
        # A query sees cached keys at or before it and not in its row's left padding; a padding
        # query sees itself, so no softmax row is empty (an empty row would give NaN).
        k_pos = torch.arange(self.max_seq_len, device=idx.device)
        q_pos = input_pos[None, :, None]  # (1, T, 1)
        mask = (k_pos <= q_pos) & ((k_pos >= start[:, :, None]) | (k_pos == q_pos))  # (B, T, S)
        mask = mask.unsqueeze(1)  # (B, 1, T, S)
        x = self.tok_embeddings(idx)
        # Prefill: compiled blocks get one graph for every prompt length (not while tracing a caller's graph).
        if idx.shape[1] > 1 and not torch.compiler.is_compiling():
            for t, dim in ((x, 1), (cos, 1), (sin, 1), (mask, 2), (input_pos, 0)):
                torch._dynamo.maybe_mark_dynamic(t, dim)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, input_pos)
        if last_only:  # a copy: the compiled head then sees the layout of a decode step, whatever the prompt length
            x = x[:, -1:].clone(memory_format=torch.contiguous_format)
        return self.head(x)

    def head(self, x: Tensor) -> Tensor:
        """Final norm and output layer: hidden states (B, T, dim) -> logits (B, T, vocab)."""
        return self.output(self.norm(x, self.output))

    @classmethod
    def from_pretrained(cls, path: str | Path, device="cpu", dtype=torch.bfloat16) -> "Transformer":
        """Load a Hugging Face checkpoint directory (config.json + safetensors) onto device in dtype."""
        path = Path(path)
        config = read_config(path)
        args = ModelArgs.from_hf_config(config)
        with torch.device("meta"):
            model = cls(args)
        if "quantization" in config:  # written by quantize.py: swap in its quantized linear layers
            from quantize import apply_quantization

            apply_quantization(model, config["quantization"])
        return assign_weights(model, load_hf_state_dict(path, args, device, dtype), path)


def assign_weights(model: Transformer, state: dict[str, Tensor], path) -> Transformer:
    """Check state's names and shapes against model (built on the meta device), then make them its tensors."""
    tied = model.args.tie_embeddings
    if tied:
        state = {k: v for k, v in state.items() if k != "output.weight"}
    expected = {k for k in model.state_dict() if not (tied and k == "output.weight")}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{path}: tensors do not match config.json ({what}{' ...' if len(missing or unexpected) > 3 else ''})")
    for name, param in model.state_dict().items():
        if name in state and state[name].shape != param.shape:
            raise CheckpointError(f"{path}: tensor {name} has shape {tuple(state[name].shape)}, "
                                  f"config.json implies {tuple(param.shape)}")
    model.load_state_dict(state, assign=True, strict=not tied)
    if tied:
        model.output.weight = model.tok_embeddings.weight
    if hasattr(model, "quantization"):
        from quantize import pack_for_device

        pack_for_device(model)  # device-specific layouts (CUDA int4 with GPTFAST_INT4=tinygemm) are made here
    return model.eval()


def checkpoint_dir(path: str | Path, flag: str = "--checkpoint") -> Path:
    """path, if it is a directory; else a CheckpointError that says what to pass."""
    path = Path(path)
    if path.is_file():
        raise CheckpointError(f"{flag} {path} is a file: pass the checkpoint directory that holds it ({path.parent})")
    if not path.is_dir():
        raise CheckpointError(f"{flag} {path} not found: pass a checkpoint directory (a Hugging Face model folder "
                              "with config.json, *.safetensors and a tokenizer)")
    return path


def read_config(path: Path) -> dict:
    file = Path(path) / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{file} not found: pass a Hugging Face checkpoint directory with config.json")
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file} is not readable JSON ({e})") from None


def hf_to_ours(name: str) -> tuple[str, int]:
    """Map a Hugging Face tensor name to (our name, index of its part in a fused tensor)."""
    fused = {"self_attn.q_proj": ("attention.wqkv", 0), "self_attn.k_proj": ("attention.wqkv", 1),
             "self_attn.v_proj": ("attention.wqkv", 2), "self_attn.o_proj": ("attention.wo", 0),
             "mlp.gate_proj": ("feed_forward.w13", 0), "mlp.up_proj": ("feed_forward.w13", 1),
             "mlp.down_proj": ("feed_forward.w2", 0), "input_layernorm": ("attention_norm", 0),
             "post_attention_layernorm": ("ffn_norm", 0)}
    top = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
           "lm_head.weight": "output.weight"}
    if name in top:
        return top[name], 0
    if name.startswith("lm_head."):  # a quantized output layer's scales and zeros (quantize.py)
        return "output." + name[len("lm_head."):], 0
    parts = name.split(".")  # model.layers.{i}.{module}.{proj}.{weight|bias}
    if len(parts) >= 5 and parts[:2] == ["model", "layers"]:
        module, leaf = ".".join(parts[3:-1]), parts[-1]
        if module in fused:
            ours, index = fused[module]
            return f"layers.{parts[2]}.{ours}.{leaf}", index
    return name, 0  # unknown: reported as unexpected by the caller


def safetensors_files(path: Path) -> list[Path]:
    """The checkpoint's safetensors files: model.safetensors, or the shards its index lists."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e})") from None
        files = [path / n for n in names]
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        files = sorted(path.glob("model-*-of-*.safetensors"))
    if not files:
        raise CheckpointError(f"no model.safetensors in {path}: convert .bin/.pth weights to safetensors first")
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f} is listed in the index but missing: re-download the checkpoint")
    return files


def load_hf_state_dict(path: Path, args: ModelArgs, device, dtype) -> dict[str, Tensor]:
    """Read every tensor memory-mapped, one at a time, straight to device and dtype; fuse q/k/v and gate/up."""
    from safetensors import SafetensorError, safe_open

    parts: dict[str, dict[int, Tensor]] = {}
    for file in safetensors_files(path):
        try:
            with safe_open(file, framework="pt", device="cpu") as f:
                for hf_name in f.keys():
                    if hf_name.endswith("rotary_emb.inv_freq"):
                        continue  # old checkpoints saved this buffer; it is recomputed
                    name, index = hf_to_ours(hf_name)
                    t = f.get_tensor(hf_name)  # quantized checkpoints keep their integer tensors as stored
                    parts.setdefault(name, {})[index] = t.to(device, dtype if t.is_floating_point() else t.dtype)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"{file} is truncated or corrupt ({e}): re-download it") from None
    return fuse_parts(parts, path)


def fuse_parts(parts: dict[str, dict[int, Tensor]], path) -> dict[str, Tensor]:
    """{name: {part index: tensor}} -> {name: tensor}, concatenating q/k/v and gate/up in order."""
    state = {}
    for name, pieces in parts.items():
        n_parts = 3 if ".wqkv." in name else 2 if ".w13." in name else 1
        if sorted(pieces) != list(range(n_parts)):
            raise CheckpointError(f"{path}: tensor {name} is missing some of its q/k/v or gate/up parts")
        state[name] = pieces[0] if n_parts == 1 else torch.cat([pieces[i] for i in range(n_parts)])
    return state
