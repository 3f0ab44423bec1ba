"""Speculative decoding: greedy output equals plain greedy output (stories260K, random models, any k,
self/quantized/unrelated drafts, prompt lookup), sampled output is distributed as the target's
(chi-square against the exact distribution), no recompilation, and the CLI."""
import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, assert_compiled, graphs_made, run_cli, write_hf_checkpoint

import generate as g
from model import CheckpointError
from speculative import PromptLookup, Speculator, check_same_vocabulary, speculative_generator


def plain(model, prompts, n, **kw):
    model.setup_caches(len(prompts), max(map(len, prompts)) + n)
    return g.generate(model, prompts, n, **kw)


def speculate(model, prompts, n, draft=None, k=4, lookup=0, **kw):
    model.setup_caches(len(prompts), max(map(len, prompts)) + n)  # generate() grows it by k
    spec = Speculator(draft, k=k, prompt_lookup=lookup)
    return spec.generate(model, prompts, n, **kw), spec.stats


def acceptance(stats):
    return stats.accepted / (stats.k * stats.rounds)


@pytest.fixture(scope="module")
def stories(stories_dir):
    return g.load(stories_dir, "cpu", torch.float32)


@pytest.fixture(scope="module")
def int4_dir(stories_dir, tmp_path_factory):
    if not (ROOT / "quantize.py").is_file():
        pytest.skip("quantize.py is absent: no quantized draft to test")
    out = tmp_path_factory.mktemp("q") / "stories-int4"
    r = run_cli("quantize.py", "--checkpoint", stories_dir, "--mode", "int4", "--output", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    return out


# ------------------------------------------------------------------------------------------ greedy
@pytest.fixture(scope="module")
def stories_greedy(stories):
    model, tok = stories
    prompt = [tok.encode("Once upon a time")]
    return prompt, plain(model, prompt, 40, temperature=0)


@pytest.mark.parametrize("k", range(1, 9))
def test_greedy_stories_self_draft(stories, stories_dir, stories_greedy, k):
    prompt, expected = stories_greedy
    draft = g.Transformer.from_pretrained(stories_dir, dtype=torch.float32)
    out, stats = speculate(stories[0], prompt, 40, draft, k=k, temperature=0)
    assert out == expected and acceptance(stats) == 1.0


@pytest.mark.parametrize("k", [2, 5])
def test_greedy_stories_quantized_draft(stories, int4_dir, stories_greedy, k):
    prompt, expected = stories_greedy
    draft = g.Transformer.from_pretrained(int4_dir, dtype=torch.float32)
    out, stats = speculate(stories[0], prompt, 40, draft, k=k, temperature=0)
    assert out == expected and 0.3 < acceptance(stats) < 1.0  # measured about 0.7: partial acceptances


@pytest.mark.parametrize("k", [1, 8])
def test_greedy_stories_unrelated_draft(stories, stories_greedy, tmp_path, k):
    prompt, expected = stories_greedy
    write_hf_checkpoint(tmp_path, vocab_size=512, hidden_size=32, intermediate_size=48, num_hidden_layers=1)
    draft = g.Transformer.from_pretrained(tmp_path, dtype=torch.float32)
    out, stats = speculate(stories[0], prompt, 30, draft, k=k, temperature=0)
    assert out == [expected[0][:30]] and acceptance(stats) < 0.1


@pytest.fixture(scope="module")
def random_pair(tmp_path_factory):
    """A random Llama target and an unrelated random Qwen2-shaped draft with the same vocabulary."""
    tdir, ddir = tmp_path_factory.mktemp("target"), tmp_path_factory.mktemp("draft")
    write_hf_checkpoint(tdir, vocab_size=61, hidden_size=32, intermediate_size=48)
    write_hf_checkpoint(ddir, "qwen2", seed=1, vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=1)
    target, draft, copy = (g.Transformer.from_pretrained(p, dtype=torch.float32) for p in (tdir, ddir, tdir))
    return target, draft, copy


@pytest.mark.parametrize("k", range(1, 9))
def test_greedy_random_models_batch(random_pair, k):
    target, draft, copy = random_pair
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11]]  # left-padded into one batch
    expected = plain(target, prompts, 20, temperature=0)
    assert speculate(target, prompts, 20, draft, k=k, temperature=0)[0] == expected
    out, stats = speculate(target, prompts, 20, copy, k=k, temperature=0)
    assert out == expected and acceptance(stats) == 1.0


def test_eos_and_callback_match_plain(random_pair):
    target, draft, copy = random_pair
    prompts = [[1, 2, 3], [4, 5, 6, 7]]
    free = plain(target, prompts, 16, temperature=0)
    eos = [free[0][6]]
    for d in (draft, copy):
        calls, spec_calls = [], []
        expected = plain(target, prompts, 16, temperature=0, eos_ids=eos, callback=lambda s, t: calls.append((s, t)))
        out, _ = speculate(target, prompts, 16, d, k=3, temperature=0, eos_ids=eos,
                           callback=lambda s, t: spec_calls.append((s, t)))
        assert out == expected and expected[0] == free[0][:6]
        # Same tokens per step while any row is running (rows past EOS may differ: their tokens are unused).
        assert [s for s, _ in spec_calls] == [s for s, _ in calls]
        assert all(t[1] == u[1] for (_, t), (_, u) in zip(spec_calls, calls))


def test_near_context_end_falls_back_to_plain_steps(random_pair):
    target, draft, _ = random_pair
    prompt = [[i % 60 + 1 for i in range(99)]]  # 99 tokens; the context is 128
    out, stats = speculate(target, prompt, 29, draft, k=8, temperature=0)
    assert out == plain(target, prompt, 29, temperature=0) and stats.rounds > 0
    assert stats.tokens == 29 - 1  # the plain steps count too (the speed it reports is of every token)


# ----------------------------------------------------------------------------------- prompt lookup
def test_prompt_lookup_proposals():
    assert PromptLookup(2, 4).propose([5, 6, 7, 8]) == [8, 8, 8, 8]  # no earlier "7 8": a placeholder
    # The most recent earlier "1 2" starts at index 4; past the end the copy repeats what it proposed.
    assert PromptLookup(2, 4).propose([1, 2, 9, 9, 1, 2, 3, 1, 2]) == [3, 1, 2, 3]
    lk = PromptLookup(1, 3)  # one instance follows a growing sequence
    assert lk.propose([4, 5, 4, 6]) == [6, 6, 6]
    assert lk.propose([4, 5, 4, 6, 4]) == [6, 4, 6]
    assert lk.propose([4, 5, 4, 6, 4, 5]) == [4, 6, 4]


def test_prompt_lookup_repetitive_prompt(stories, stories_dir):
    model, tok = stories
    # The model's published greedy text repeats itself ("Lily was sad and didn't know what to do."):
    # its first 200 tokens as the prompt, the continuation copies much of it (acceptance measured 0.92).
    block = re.search(r"\n    (Once upon a time.*?)\n\n", (stories_dir / "README.md").read_text(), re.S).group(1)
    text = "\n".join(line.strip() for line in block.splitlines())
    prompt = [tok.encode(text)[:200]]
    expected = plain(model, prompt, 40, temperature=0)
    out, stats = speculate(model, prompt, 40, lookup=2, k=4, temperature=0)
    assert out == expected and acceptance(stats) > 0.6


def test_prompt_lookup_random_model_exact(random_pair):
    target = random_pair[0]
    prompts = [[1, 2, 3, 1, 2, 3, 1, 2], [5, 6, 5, 6, 5]]
    for n in (1, 2, 3):
        out, _ = speculate(target, prompts, 20, lookup=n, k=3, temperature=0)
        assert out == plain(target, prompts, 20, temperature=0)


# --------------------------------------------------------------------------- sampling is exact
V = 8  # a vocabulary small enough to enumerate every two-token continuation


def peaked(path: Path, seed: int, scale: float = 20.0, perturb: float = 0.0):
    """A random tiny model with a sharper output layer (random init gives near-uniform logits)."""
    write_hf_checkpoint(path, seed=seed, vocab_size=V, hidden_size=32, intermediate_size=48)
    model = g.Transformer.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        torch.manual_seed(seed + 100)
        model.output.weight.mul_(scale).add_(perturb * torch.randn_like(model.output.weight))
    return model


@torch.no_grad()
def exact_joint(model, prompt, **sampling) -> torch.Tensor:
    """P(second, third new token) (V, V) under plain sampling from the target, by enumeration."""
    def probs(rows):  # next-token distribution after each row (same length)
        model.setup_caches(len(rows), len(rows[0]))
        logits = model(torch.tensor(rows), torch.arange(len(rows[0])))[:, -1]
        return g.logits_to_probs(logits, **sampling)

    p0 = probs([prompt])[0]  # (V,)
    p1 = probs([prompt + [a] for a in range(V)])  # (V, V) [a, b]
    p2 = probs([prompt + [a, b] for a in range(V) for b in range(V)]).view(V, V, V)  # [a, b, c]
    return torch.einsum("a,ab,abc->bc", p0, p1, p2)


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom, cells expecting fewer than 5 draws pooled; the
    statistic is infinite if a draw has probability 0 (top_k/top_p filtered it out)."""
    counts, expected = counts.flatten().double(), probs.flatten().double() * counts.sum()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum().view(1)])
    exp = torch.cat([expected[~small], expected[small].sum().view(1)])
    obs, exp = obs[exp > 0], exp[exp > 0]
    impossible = counts[probs.flatten() == 0].sum() > 0
    return math.inf if impossible else float(((obs - exp) ** 2 / exp).sum()), len(exp) - 1


def joint_counts(rows) -> torch.Tensor:
    counts = torch.zeros(V, V)
    for r in rows:
        counts[r[1], r[2]] += 1
    return counts


@pytest.fixture(scope="module")
def tiny_vocab(tmp_path_factory):
    mk = tmp_path_factory.mktemp
    return dict(target=peaked(mk("t"), 0), copy=peaked(mk("c"), 0), unrelated=peaked(mk("u"), 5),
                near=peaked(mk("n"), 0, perturb=0.15))  # acceptance about 0.75


SAMPLING = [dict(temperature=1.0), dict(temperature=0.8, top_k=5, top_p=0.9)]


@pytest.mark.parametrize("sampling", SAMPLING, ids=["t1", "topk-topp"])
def test_sampling_distribution_matches_target(tiny_vocab, sampling):
    target, prompt, n_draws = tiny_vocab["target"], [1, 2, 3, 1, 2], 3000
    exact = exact_joint(target, prompt, **sampling)
    # Independent rows of one batch; every row is exact on its own, so the rows are n_draws draws.
    proposers = {"unrelated": dict(draft=tiny_vocab["unrelated"]), "self": dict(draft=tiny_vocab["copy"]),
                 "lookup": dict(lookup=1)}
    for name, kw in proposers.items():
        torch.manual_seed(0)
        rows, stats = speculate(target, [prompt] * n_draws, 3, k=2, **kw, **sampling)
        stat, dof = chi_square(joint_counts(rows), exact)
        assert stat < dof + 5 * math.sqrt(2 * dof), (name, stat, dof)
        if name == "self":
            assert acceptance(stats) == 1.0  # the bonus-token path
    # The test has power: the unrelated draft's own samples are far off.
    torch.manual_seed(0)
    wrong = plain(tiny_vocab["unrelated"], [prompt] * n_draws, 3, **sampling)
    stat, dof = chi_square(joint_counts(wrong), exact)
    assert stat > 10 * (dof + 5 * math.sqrt(2 * dof)), stat


def test_sampling_batch_1_partial_acceptance(tiny_vocab):
    """Batch 1 draws, where a round may accept some proposals and reject the next."""
    target, draft, prompt = tiny_vocab["target"], tiny_vocab["near"], [1, 2, 3, 1, 2]
    exact = exact_joint(target, prompt, temperature=1.0)
    spec = Speculator(draft, k=2)
    target.setup_caches(1, 16)
    torch.manual_seed(1)
    rows, accepted, proposed = [], 0, 0
    for _ in range(300):
        rows.append(spec.generate(target, [prompt], 3, temperature=1.0)[0])
        accepted, proposed = accepted + spec.stats.accepted, proposed + 2 * spec.stats.rounds
    assert 0.3 < accepted / proposed < 0.95
    stat, dof = chi_square(joint_counts(rows), exact)
    assert stat < dof + 5 * math.sqrt(2 * dof), (stat, dof)


# ------------------------------------------------------------------------------------- compile
def test_compiled_matches_eager_without_recompiling(random_pair):
    target, draft, _ = random_pair
    torch._dynamo.reset()
    target.setup_caches(2, 40)
    before = graphs_made()
    spec = Speculator(draft, k=3, compile=True)
    prompts = [[1, 2, 3, 4, 5], [7, 8, 9]]
    assert spec.generate(target, prompts, 12, temperature=0) == g.generate(target, prompts, 12, temperature=0)
    assert_compiled([target, draft], before)
    # Other prompt lengths and positions replay the same graphs.
    with torch._dynamo.config.patch(error_on_recompile=True):
        for p in ([[3, 1, 4, 1, 5, 9, 2], [6]], [[2, 7, 1, 8], [5, 5]]):
            assert spec.generate(target, p, 12, temperature=0) == g.generate(target, p, 12, temperature=0)
    torch._dynamo.reset()
    for m in (*target.modules(), *draft.modules()):  # undo the in-place compile for the fixture's other users
        m._compiled_call_impl = None


# ----------------------------------------------------------------------------------------- CLI
def test_cli_draft_and_prompt_lookup_exact(stories_dir, int4_dir):
    args = ["--checkpoint", stories_dir, "--prompt", "Once upon a time", "--temperature", "0",
            "--max_new_tokens", "80", "--device", "cpu"]
    outputs = []
    for extra in (["--draft_checkpoint", int4_dir, "--speculate_k", "4"], ["--prompt_lookup", "2"]):
        r = run_cli("generate.py", *args, *extra)
        assert r.returncode == 0, r.stderr
        assert "acceptance" in r.stderr and "tokens per verification" in r.stderr
        outputs.append(r.stdout)
    block = re.search(r"\n    (Once upon a time.*?)\n\n", (stories_dir / "README.md").read_text(), re.S).group(1)
    reference = "\n".join(line.strip() for line in block.splitlines())  # the published greedy text
    assert reference.startswith(outputs[0].strip()) and len(outputs[0]) > 200 and outputs[1] == outputs[0]


def test_cli_vocabulary_mismatch_before_loading(stories_dir, tmp_path):
    write_hf_checkpoint(tmp_path, vocab_size=97)
    shutil.copy(stories_dir / "tokenizer.model", tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not read")  # the check comes before the weights
    r = run_cli("generate.py", "--checkpoint", stories_dir, "--device", "cpu", "--draft_checkpoint", tmp_path)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "does not share the target's vocabulary" in errors[0]


def test_cli_prompt_too_long_for_the_draft_prints_no_prompt(stories_dir, tmp_path):
    """The error comes when generation starts; the streamed prompt is printed only once it is under way."""
    shutil.copytree(stories_dir, tmp_path / "draft")
    cfg = json.loads((tmp_path / "draft" / "config.json").read_text())
    (tmp_path / "draft" / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 64}))
    r = run_cli("generate.py", "--checkpoint", stories_dir, "--device", "cpu", "--draft_checkpoint", tmp_path / "draft",
                "--prompt", "Once upon a time " * 20, "--max_new_tokens", "5", "--temperature", "0")
    assert r.returncode == 2 and "does not fit the draft's context of 64" in r.stderr, r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr


def test_bad_arguments(stories, tmp_path):
    model, tok = stories
    # (--speculate_k, --prompt_lookup and both speculation flags at once: generate.check_args, tests/test_generate.py)
    (tmp_path / "file").write_text("")
    cases = [(dict(draft_checkpoint=tmp_path / "nope"), "not found"), (dict(draft_checkpoint=tmp_path / "file"), "is a file")]
    for kw, message in cases:
        args = SimpleNamespace(**{**dict(draft_checkpoint=None, speculate_k=5, prompt_lookup=0, compile=False), **kw})
        with pytest.raises(CheckpointError, match=message):  # (generate.run prints it as one line, status 2)
            speculative_generator(args, model, tok, "cpu", torch.float32)


def test_vocabulary_check_compares_tokens():
    def fake(ids):
        return SimpleNamespace(vocab_size=10, eos_ids=[2], encode=lambda text: ids)

    check_same_vocabulary(fake([1, 5, 6]), 10, fake([1, 5, 6]), 10, "d")
    with pytest.raises(g.UsageError, match="different tokens"):
        check_same_vocabulary(fake([1, 5, 6]), 10, fake([1, 6, 5]), 10, "d")
    with pytest.raises(g.UsageError, match="10 logits"):
        check_same_vocabulary(fake([1]), 12, fake([1]), 10, "d")
