"""Convert a llama.cpp GGUF file of a Llama-family (or Qwen2) model into a checkpoint directory generate.py loads.

    python scripts/convert_gguf.py FILE.gguf OUT_DIR [--dtype float32|bfloat16|float16]

Writes config.json (from the GGUF metadata), model.safetensors (dequantized weights, Hugging Face
names and layout) and the tokenizer: tokenizer.json for GGUF's byte-level BPE ("gpt2") vocabularies,
tokenizer.model for SentencePiece ("llama") ones, plus tokenizer_config.json with the chat template.
Q8_0, Q4_0 and Q4_1 are dequantized here in PyTorch; other quantized types through the gguf package.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from generate import UsageError, check_output_dir, one_line_errors, run, usual_permissions  # noqa: E402
from model import CheckpointError  # noqa: E402

# GGUF tensor name -> Hugging Face name ("{}" is the layer index)
NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
         "output.weight": "lm_head.weight"}
LAYER_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
               "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj"}

# llama.cpp's pre-tokenizer names -> the regex it splits text with before byte-level BPE
# (from llama.cpp's llama-vocab.cpp; None means GPT-2's own regex, which ByteLevel applies itself).
PRE_TOKENIZERS = {
    "default": None, "gpt2": None,
    "smollm": "digits", "starcoder": "digits", "refact": "digits",  # GPT-2's regex after one-digit splits
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)",
}
UNKNOWN, CONTROL, USER_DEFINED, BYTE = 2, 3, 4, 6  # GGUF token types (the same numbers as SentencePiece's)


# --------------------------------------------------------------------------------- metadata
def read_fields(reader) -> dict:
    """All metadata key-value pairs as Python values."""
    return {name: field.contents() for name, field in reader.fields.items()}


def make_config(meta: dict, tensors: dict) -> dict:
    """A Hugging Face config.json from GGUF metadata; raise CheckpointError for what is not supported."""
    arch = meta.get("general.architecture")
    if arch not in ("llama", "qwen2"):  # Mistral, Llama 2/3, SmolLM and TinyLlama GGUFs say "llama"
        raise CheckpointError(f"GGUF architecture {arch!r} is not supported (supported: llama, qwen2)")
    if meta.get(f"{arch}.expert_count"):
        raise CheckpointError(f"mixture-of-experts GGUF ({arch}.expert_count={meta[f'{arch}.expert_count']}) "
                              "is not supported")
    if "rope_freqs.weight" in tensors or meta.get(f"{arch}.rope.scaling.type", "none") != "none":
        raise CheckpointError("GGUF with RoPE scaling (Llama 3.1 rope_freqs or *.rope.scaling.*) is not "
                              "supported: use scripts/download.py for the Hugging Face checkpoint")

    def need(key):
        if f"{arch}.{key}" not in meta:
            raise CheckpointError(f"GGUF metadata {arch}.{key} is missing")
        return meta[f"{arch}.{key}"]

    n_heads, dim = need("attention.head_count"), need("embedding_length")
    if "token_embd.weight" not in tensors:
        raise CheckpointError("GGUF has no token_embd.weight tensor: not a Llama-family model file")
    emb = tensors["token_embd.weight"]
    cfg = {
        "architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"], "model_type": arch,
        "hidden_size": dim, "intermediate_size": need("feed_forward_length"),
        "num_hidden_layers": need("block_count"), "num_attention_heads": n_heads,
        "num_key_value_heads": meta.get(f"{arch}.attention.head_count_kv", n_heads),
        "head_dim": meta.get(f"{arch}.attention.key_length", meta.get(f"{arch}.rope.dimension_count", dim // n_heads)),
        "max_position_embeddings": need("context_length"),
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        "vocab_size": int(emb.shape[1]),  # GGUF shapes list the innermost dimension first
        "tie_word_embeddings": "output.weight" not in tensors,
        "hidden_act": "silu", "torch_dtype": "float32",
    }
    for key, hf_key in (("bos", "bos"), ("eos", "eos"), ("padding", "pad")):
        if f"tokenizer.ggml.{key}_token_id" in meta:
            cfg[f"{hf_key}_token_id"] = int(meta[f"tokenizer.ggml.{key}_token_id"])
    eot = meta.get("tokenizer.ggml.eot_token_id")  # Llama-3 ends turns with <|eot_id|>, not its EOS
    if eot is not None and eot != cfg.get("eos_token_id"):
        cfg["eos_token_id"] = [i for i in (cfg.get("eos_token_id"), int(eot)) if i is not None]
    return cfg


# ------------------------------------------------------------------------------------ weights
def dequantize(t) -> torch.Tensor:
    """A GGUF tensor as a float32 torch tensor in PyTorch's (rows, cols) order."""
    from gguf import GGMLQuantizationType as Q

    shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists ne0 (the contiguous dim) first
    kind = t.tensor_type
    raw = torch.from_numpy(np.array(t.data))  # a copy: the reader's memory map is read-only
    if kind in (Q.F32, Q.F16):
        return raw.float().reshape(shape)
    if kind == Q.BF16:
        return raw.view(torch.uint8).view(torch.bfloat16).float().reshape(shape)
    if kind in (Q.Q8_0, Q.Q4_0, Q.Q4_1):
        # Blocks of 32 weights along a row: an fp16 scale d (Q4_1 also an fp16 offset m), then the codes.
        block_bytes = {Q.Q8_0: 34, Q.Q4_0: 18, Q.Q4_1: 20}[kind]
        blocks = raw.view(torch.uint8).reshape(-1, block_bytes)  # (n_blocks, bytes)
        d = blocks[:, 0:2].contiguous().view(torch.float16).float()  # (n_blocks, 1)
        if kind == Q.Q8_0:
            w = d * blocks[:, 2:].contiguous().view(torch.int8).float()
        else:
            qs = blocks[:, block_bytes - 16:]  # 16 bytes: weight j in the low nibble, weight j + 16 in the high
            codes = torch.cat([qs & 0x0F, qs >> 4], dim=1).float()  # (n_blocks, 32)
            if kind == Q.Q4_0:
                w = d * (codes - 8)
            else:
                m = blocks[:, 2:4].contiguous().view(torch.float16).float()  # (n_blocks, 1)
                w = d * codes + m
        return w.reshape(shape)
    try:  # K-quants and the rest: the gguf package's numpy reference dequantizers
        from gguf.quants import dequantize as gguf_dequantize

        return torch.from_numpy(gguf_dequantize(t.data, kind).astype(np.float32)).reshape(shape)
    except NotImplementedError:
        raise CheckpointError(f"tensor {t.name} has GGUF type {kind.name}, which cannot be dequantized "
                              "(the gguf package has no dequantizer for it)") from None


def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation. Its converter reorders each head's rows from Hugging Face's
    rotate-half layout (first halves, then second halves) to interleaved pairs for its RoPE kernel."""
    rows = w.shape[0]
    head_dim = rows // n_heads
    # llama.cpp: w.reshape(n_heads, 2, head_dim // 2, ...).swapaxes(1, 2); this is the inverse.
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def convert_tensors(reader, cfg: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Hugging Face state dict (name -> tensor in dtype) from the GGUF tensors."""
    state = {}
    for t in reader.tensors:
        name = NAMES.get(t.name)
        parts = t.name.split(".")  # blk.{i}.{module}.{weight|bias}
        if name is None and len(parts) == 4 and parts[0] == "blk" and parts[2] in LAYER_NAMES:
            name = f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{parts[3]}"
        if name is None:
            raise CheckpointError(f"GGUF tensor {t.name!r} is not part of a Llama model: not supported")
        w = dequantize(t)
        if cfg["model_type"] == "llama" and parts[-2:-1] == ["attn_q"]:  # llama.cpp permutes only Llama's
            w = unpermute(w, cfg["num_attention_heads"])
        elif cfg["model_type"] == "llama" and parts[-2:-1] == ["attn_k"]:
            w = unpermute(w, cfg["num_key_value_heads"])
        state[name] = w.to(dtype).contiguous()
    return state


# ---------------------------------------------------------------------------------- tokenizer
def bpe_tokenizer_json(meta: dict) -> str:
    """tokenizer.json for a byte-level BPE ("gpt2") vocabulary, as llama.cpp tokenizes it."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"GGUF pre-tokenizer {pre!r} is not supported (supported: {', '.join(PRE_TOKENIZERS)})")
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    # llama.cpp takes a whole pre-token from the vocabulary, skipping merges, for Llama-3's tokenizer
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=pre == "llama-bpe")
    tok = Tokenizer(bpe)
    regex = PRE_TOKENIZERS[pre]
    if regex is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif regex == "digits":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    if types is not None:  # control and user-defined tokens match as whole strings, never split by BPE
        tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                for i, k in enumerate(types) if k == CONTROL])
        tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                        for i, k in enumerate(types) if k == USER_DEFINED])
    bos = meta.get("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token", False) and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A {tokens[bos]} $B", special_tokens=[(tokens[bos], bos)])
    return tok.to_str()


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32s are written as 10-byte two's complement varints
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, value) -> bytes:
    """One protobuf field: bytes/str (length-delimited), float (fixed32) or int/bool (varint)."""
    if isinstance(value, (bytes, str)):
        data = value.encode() if isinstance(value, str) else value
        return _varint(number << 3 | 2) + _varint(len(data)) + data
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    return _varint(number << 3 | 0) + _varint(int(value))


def sentencepiece_model(meta: dict) -> bytes:
    """A SentencePiece tokenizer.model for a "llama" vocabulary. Written as raw protobuf (field numbers
    from sentencepiece_model.proto) so that no protobuf package is needed."""
    tokens = meta["tokenizer.ggml.tokens"]
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    unknown = int(meta.get("tokenizer.ggml.unknown_token_id", 0))  # (llama.cpp's default for this vocabulary)
    if UNKNOWN not in types and 0 <= unknown < len(types):  # SentencePiece will not load without its unknown piece
        types[unknown] = UNKNOWN
    pieces = b"".join(_field(1, _field(1, t) + _field(2, float(s)) + _field(3, int(k)))
                      for t, s, k in zip(tokens, scores, types))  # ModelProto.pieces: piece, score, type
    ids = {k: int(meta.get(f"tokenizer.ggml.{k}_token_id", -1)) for k in ("bos", "eos", "pad")} | {"unknown": unknown}
    trainer = (_field(3, 2) + _field(4, len(tokens)) + _field(35, BYTE in types)  # model_type BPE, vocab, byte_fallback
               + _field(40, ids["unknown"]) + _field(41, ids["bos"]) + _field(42, ids["eos"]) + _field(43, ids["pad"]))
    # llama.cpp does not normalize; it prefixes a space and keeps repeated spaces unless told otherwise.
    normalizer = (_field(1, "identity") + _field(3, bool(meta.get("tokenizer.ggml.add_space_prefix", True)))
                  + _field(4, bool(meta.get("tokenizer.ggml.remove_extra_whitespaces", False))) + _field(5, True))
    return pieces + _field(2, trainer) + _field(3, normalizer)


def tokenizer_files(meta: dict) -> dict[str, bytes]:
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise CheckpointError("the GGUF file has no tokenizer (tokenizer.ggml.tokens is missing)")
    if kind == "gpt2":
        files = {"tokenizer.json": bpe_tokenizer_json(meta).encode()}
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    elif kind == "llama":
        files = {"tokenizer.model": sentencepiece_model(meta)}
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", True))
    else:
        raise CheckpointError(f"GGUF tokenizer model {kind!r} is not supported (supported: gpt2, llama)")
    tok_config = {"add_bos_token": add_bos}
    for key, out in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"), ("padding", "pad_token")):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if i is not None and 0 <= i < len(tokens):
            tok_config[out] = tokens[i]
    if "tokenizer.chat_template" in meta:
        tok_config["chat_template"] = meta["tokenizer.chat_template"]
    files["tokenizer_config.json"] = json.dumps(tok_config, indent=2, ensure_ascii=False).encode()
    return files


# ---------------------------------------------------------------------------------------- main
def convert(gguf_path: Path, out_dir: Path, dtype: torch.dtype = torch.float32) -> None:
    """Write the checkpoint directory out_dir; it appears complete or not at all."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise UsageError("reading GGUF files needs the gguf package: pip install gguf") from None
    from safetensors.torch import save_file

    if not gguf_path.is_file():
        raise UsageError(f"{gguf_path} not found: pass a .gguf file")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"{out_dir} already exists and is not an empty folder: remove it or choose another OUT_DIR")
    check_output_dir(out_dir, "OUT_DIR")
    try:
        reader = GGUFReader(gguf_path)
    except Exception as e:  # gguf raises what its parser meets in a damaged file (ValueError, IndexError, ...)
        raise CheckpointError(f"{gguf_path} is not a readable GGUF file ({type(e).__name__}: {e})") from None
    meta = read_fields(reader)
    cfg = make_config(meta, {t.name: t for t in reader.tensors})
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    files = tokenizer_files(meta)
    state = convert_tensors(reader, cfg, dtype)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        usual_permissions(tmp)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); os.replace needs the name free
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("gguf", type=Path, help="the .gguf file")
    p.add_argument("out", type=Path, help="checkpoint directory to create")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="stored weight type (float32 keeps dequantized weights exact; bfloat16 halves the size)")
    args = one_line_errors(p).parse_args(argv)
    convert(args.gguf, args.out, getattr(torch, args.dtype))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    run(main)
