"""Generation: the stories260K reference text, tokenizers, batching, sampling, compile, and CLI errors."""
import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, assert_compiled, graphs_made, run_cli, write_hf_checkpoint

import generate as g
from tokenizer import StreamDecoder, Tokenizer

README_TEXT_RE = re.compile(r"\n    (Once upon a time.*?)\n\n", re.S)


def reference_text(stories_dir) -> str:
    """The greedy continuation published in the model's README (indented block, lines joined by newlines)."""
    block = README_TEXT_RE.search((stories_dir / "README.md").read_text()).group(1)
    return "\n".join(line.strip() for line in block.splitlines())


@pytest.fixture(scope="module")
def stories(stories_dir):
    return g.load(stories_dir, "cpu", torch.float32)


def greedy(model, prompts, n, **kw):
    model.setup_caches(len(prompts), max(map(len, prompts)) + n)
    return g.generate(model, prompts, n, temperature=0, **kw)


def test_stories260k_reference_text(stories, stories_dir):
    model, tok = stories
    prompt = tok.encode("Once upon a time")
    out = greedy(model, [prompt], 256 - len(prompt) + 1)[0]  # the README text is 256 tokens after BOS
    text = tok.decode(prompt + out)
    expected = reference_text(stories_dir)
    assert len(expected) > 550
    assert text == expected[: len(text)] and len(text) >= len(expected) - 12


def test_cli_greedy_streams_reference_text(stories_dir):
    r = run_cli("generate.py", "--checkpoint", stories_dir, "--prompt", "Once upon a time",
                "--temperature", "0", "--max_new_tokens", "100", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert reference_text(stories_dir).startswith(r.stdout.strip())
    assert len(r.stdout) > 250 and "tok/s" in r.stderr


def test_cli_stream_keeps_the_space_before_the_first_word(stories, stories_dir):
    """A prompt whose continuation starts with a word: the streamed text equals the prompt and the generated ids
    decoded together (SentencePiece drops the leading space of a first token decoded alone)."""
    model, tok = stories
    prompt = "Tom had a big red ball and"
    ids = tok.encode(prompt)
    out = greedy(model, [ids], 12)[0]
    assert tok.decode(out).startswith("a ")  # the case this test is about: the continuation starts with a word
    r = run_cli("generate.py", "--checkpoint", stories_dir, "--prompt", prompt, "--temperature", "0",
                "--max_new_tokens", "12", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == tok.decode(ids + out), r.stdout


def test_batch_rows_equal_batch_1(stories):
    model, tok = stories
    prompts = [tok.encode(p) for p in ["Once upon a time", "Tom had a big red", "The cat"]]
    batched = greedy(model, prompts, 30)
    for p, row in zip(prompts, batched):
        assert row == greedy(model, [p], 30)[0]


def test_eos_stops(stories):
    model, tok = stories
    prompt = tok.encode("Once upon a time")
    free = greedy(model, [prompt], 20)[0]
    stop = free[5]
    out = greedy(model, [prompt], 20, eos_ids=[stop])[0]
    assert out == free[: free.index(stop)]


def test_seeded_sampling_reproducible(stories):
    model, tok = stories
    prompt = tok.encode("Once upon a time")
    model.setup_caches(1, len(prompt) + 40)
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(g.generate(model, [prompt], 40, temperature=1.0, top_k=50)[0])
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_top_k_top_p_respected():
    torch.manual_seed(0)
    logits = torch.randn(3, 100)
    probs = g.logits_to_probs(logits, temperature=1.0, top_k=5)
    assert ((probs > 0).sum(-1) == 5).all()
    assert torch.equal(probs.topk(5).indices.sort().values, logits.topk(5).indices.sort().values)
    probs = g.logits_to_probs(logits, temperature=0.7, top_p=0.5)
    full = (logits / 0.7).softmax(-1)
    for row in range(3):  # the kept set is the smallest top prefix whose mass reaches 0.5
        s = full[row].sort(descending=True).values
        n = int((s.cumsum(0) < 0.5).sum()) + 1
        assert (probs[row] > 0).sum() == n
    draws = torch.stack([g.sample(logits, temperature=1.0, top_k=3) for _ in range(300)])
    allowed = logits.topk(3).indices
    assert all(torch.isin(draws[:, r], allowed[r]).all() for r in range(3))
    assert torch.equal(g.sample(logits, temperature=0), logits.argmax(-1))


def test_sampling_frequencies_match_probs():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    draws = torch.stack([g.sample(logits, temperature=1.0) for _ in range(20000)]).flatten()
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert (freq - logits.softmax(-1)[0]).abs().max() < 0.015


def test_sentencepiece_round_trip_and_stream(stories_dir):
    tok = Tokenizer(stories_dir)
    assert tok.bos_id == 1 and tok.eos_ids == [2]
    text = "Once upon a time, Lily saw a cat.\nShe said: \"hi!\" 42 ü"
    ids = tok.encode(text)
    assert ids[0] == 1 and tok.decode(ids) == text
    stream = StreamDecoder(tok)
    assert "".join(stream.put(i) for i in ids[1:]) == text


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    path = tmp_path_factory.mktemp("bpe")
    tok.save(str(path / "tokenizer.json"))
    (path / "config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1}))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 5]}))
    return path


def test_tokenizer_json_round_trip_and_stream(bpe_dir):
    tok = Tokenizer(bpe_dir)
    assert tok.bos_id == 0 and tok.eos_ids == [1, 5]
    text = "the lazy fox — naïve 日本語 🦊!"
    ids = tok.encode(text)
    assert ids[0] == 0 and tok.decode(ids) == text
    stream = StreamDecoder(tok)
    pieces = [stream.put(i) for i in ids[1:]]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_compiled_decode_matches_eager(tmp_path):
    write_hf_checkpoint(tmp_path, "llama", vocab_size=61, hidden_size=32, intermediate_size=48)
    model = g.Transformer.from_pretrained(tmp_path, dtype=torch.float32)
    model.setup_caches(2, 32)  # one cache for every call: its shape is part of the compiled graph
    prompts = [[1, 2, 3, 4, 5], [7, 8, 9]]
    eager = g.generate(model, prompts, 12, temperature=0)
    torch._dynamo.reset()
    before = graphs_made()
    prefill_fn, decode_fn = g.compile_steps(True, True, model)  # CPU inductor, the CLI's --compile path
    assert g.generate(model, prompts, 12, temperature=0, prefill_fn=prefill_fn, decode_fn=decode_fn) == eager
    assert_compiled([model], before)
    one = [[4, 4, 4]]  # batch 1 compiles its own decode graph once
    assert g.generate(model, one, 12, temperature=0, prefill_fn=prefill_fn, decode_fn=decode_fn) == \
        g.generate(model, one, 12, temperature=0)
    # New prompts of new lengths reuse the compiled blocks and head: no recompilation.
    with torch._dynamo.config.patch(error_on_recompile=True):
        for p in ([[3, 1, 4, 1, 5, 9, 2], [6]], [[2, 7, 1, 8], [5, 5]], [[1, 2, 3, 4, 5, 6, 7, 8, 9]]):
            out = g.generate(model, p, 12, temperature=0, prefill_fn=prefill_fn, decode_fn=decode_fn)
            assert out == g.generate(model, p, 12, temperature=0)


BAD = [
    (["--checkpoint", "/nonexistent/dir"], "not found"),
    (["--prompt", ""], "empty prompt"),
    (["--temperature", "-1"], "--temperature"),
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "inf"], "--temperature"),
    (["--top_k", "-3"], "--top_k"),
    (["--top_p", "1.5"], "--top_p"),
    (["--max_new_tokens", "0"], "--max_new_tokens"),
    (["--max_new_tokens", "600"], "exceeds the model's context"),
    (["--prompt", "a " * 600], "exceeds the model's context"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--temperature", "warm"], "invalid float"),
    (["--prompt_lookup", "2", "--speculate_k", "0"], "--speculate_k must be >= 1"),
    (["--prompt_lookup", "-1"], "--prompt_lookup must be >= 1"),
    (["--prompt_lookup", "2", "--draft_checkpoint", "/nonexistent"], "are alternatives"),
    (["--system", "Be brief."], "--system is the system prompt of --chat"),
    (["--chat", "--prompt", "Hi"], "--chat reads its messages from the terminal"),
    (["--draft_checkpoint", "README.md"], "--draft_checkpoint README.md is a file"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[m for _, m in BAD])
def test_cli_bad_input(stories_dir, extra, message):
    if extra[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    args = ["--checkpoint", str(stories_dir), "--device", "cpu", *extra]
    if extra[0] == "--device":
        args = ["--checkpoint", str(stories_dir), *extra]
    r = run_cli("generate.py", *args)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in r.stderr, r.stderr


def test_cli_chat_format_checked_before_loading_and_broken_pipe(stories_dir):
    r = run_cli("generate.py", "--checkpoint", stories_dir, "--device", "cpu", "--chat")
    assert r.returncode == 2 and "--chat needs an instruction-tuned checkpoint" in r.stderr, r.stderr
    assert "Loaded" not in r.stderr  # the weights were not read
    p = subprocess.Popen([sys.executable, "generate.py", "--checkpoint", str(stories_dir), "--device", "cpu",
                          "--max_new_tokens", "300"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(20)
    p.stdout.close()  # as `| head -c 20` does
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and "Traceback" not in err, err


def test_cli_missing_files(tmp_path, stories_dir):
    r = run_cli("generate.py", "--checkpoint", stories_dir / "model.safetensors", "--device", "cpu")
    assert r.returncode == 2 and f"is a file: pass the checkpoint directory that holds it ({stories_dir})" in r.stderr
    for module in "chat.py", "speculative.py":  # modules of generate.py: their own command line says so
        r = run_cli(module, "--help")
        assert r.returncode == 2 and r.stderr.startswith("error:") and "generate.py" in r.stderr, r.stderr
    r = run_cli("generate.py", "--checkpoint", tmp_path, "--device", "cpu")
    assert r.returncode == 2 and "tokenizer" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "tokenizer.model").write_bytes((stories_dir / "tokenizer.model").read_bytes())
    r = run_cli("generate.py", "--checkpoint", tmp_path, "--device", "cpu")
    assert r.returncode == 2 and "config.json not found" in r.stderr
    (tmp_path / "prompts.txt").write_bytes(b"caf\xe9\n")  # Latin-1, not UTF-8
    r = run_cli("generate.py", "--checkpoint", stories_dir, "--device", "cpu", "--prompt_file", tmp_path / "prompts.txt")
    assert r.returncode == 2 and "not UTF-8" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_two_stage_argmax_is_first_maximum(dtype):
    """generate.argmax (used by sampling) against torch.argmax, ties included (first index wins), for
    vocabularies that are and are not multiples of the slice count; eager and compiled."""
    torch.manual_seed(0)
    compiled = torch.compile(g.argmax, fullgraph=True, dynamic=False)
    for V in (64, 1000, 32000, 49152):
        x = torch.randint(0, 4, (3, V)).to(dtype)  # many ties
        x[1] = torch.randn(V).to(dtype)
        x[2, -1] = 9  # the maximum in the (padded) last slice
        assert torch.equal(g.argmax(x), x.argmax(-1)), V
        assert torch.equal(compiled(x), x.argmax(-1)), V


def test_cache_length():
    assert [g.cache_length(n, 8192) for n in (1, 205, 256, 257, 600, 2098, 4096, 5000)] == \
        [256, 256, 256, 512, 1024, 3072, 4096, 5120]
    assert g.cache_length(30, 128) == 128 and g.cache_length(300, 1000) == 512


REUSE = """
import sys, torch, generate as g
from torch._dynamo.utils import counters
for prompt in ("Once upon a time", "Once upon a time there was a little girl named Lily who loved to play"):
    before = dict(counters["inductor"])
    g.main(["--checkpoint", sys.argv[1], "--prompt", prompt, "--max_new_tokens", "20", "--compile", "--temperature", "0"])
    print("misses", counters["inductor"]["fxgraph_cache_miss"] - before.get("fxgraph_cache_miss", 0),
          "hits", counters["inductor"]["fxgraph_cache_hit"] - before.get("fxgraph_cache_hit", 0), file=sys.stderr)
    torch._dynamo.reset()
"""


def test_prompts_of_other_lengths_reuse_compiled_graphs(stories_dir, tmp_path):
    """The CLI rounds the KV cache (generate.cache_length), so a run with a prompt of another length finds
    every compiled graph in Inductor's cache instead of compiling it again (here: two runs in one process,
    which go through the same on-disk cache as two processes do)."""
    r = run_cli("-c", REUSE, stories_dir, env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path)})
    counts = re.findall(r"misses (\d+) hits (\d+)", r.stderr)
    assert r.returncode == 0 and len(counts) == 2, r.stderr[-3000:]
    (miss1, _), (miss2, hit2) = [tuple(map(int, c)) for c in counts]
    assert miss1 > 0 and miss2 == 0 and hit2 > 0, counts
