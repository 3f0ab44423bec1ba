"""Shared test helpers: the real stories260K model, tiny random Hugging Face checkpoints, CLI runner."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
STORIES = ROOT.parent / "shared" / "models" / "stories260K"
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def stories_dir() -> Path:
    if not (STORIES / "model.safetensors").is_file():
        pytest.skip(f"{STORIES} is absent (the real stories260K test model)")
    return STORIES


def write_hf_checkpoint(path: Path, model_type: str = "llama", seed: int = 0, max_shard_size=None, **overrides):
    """Save a tiny random Hugging Face model (LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM)
    with save_pretrained and return it (float32, eval mode) as the reference."""
    import transformers

    cfg = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False)
    cfg.update(overrides)
    config_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                             "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
                             "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[model_type]
    torch.manual_seed(seed)
    ref = model_cls(config_cls(**cfg)).float().eval()
    with torch.no_grad():  # HF initialises biases and norms to constants: randomise so they are tested
        for name, p in ref.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    ref.save_pretrained(path, safe_serialization=True, **kwargs)
    return ref


def run_cli(*args, timeout=300, input=None, env=None):
    """Run a repository script (e.g. 'generate.py', or '-c', code) in a subprocess, with env added to the
    environment (e.g. TRITON_INTERPRET=1: Triton kernels on the CPU); return CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env, input=input)


def graphs_made() -> int:
    """Graphs Dynamo has made in this process so far (torch._dynamo.reset does not clear the count)."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def assert_compiled(models, graphs_before: int) -> None:
    """What compile_regions does is there: each model's transformer blocks have a compiled call, and Dynamo made a
    graph since graphs_before. Without it, a compiled-equals-eager test with compile_regions broken would compare
    eager with eager and pass."""
    for model in models:
        assert all(layer._compiled_call_impl is not None for layer in model.layers), "blocks not compiled"
    assert graphs_made() > graphs_before, "Dynamo made no graph"
