"""scripts/eval.py: sliding-window perplexity against Hugging Face transformers, and a sanity check that the
number means something (a model's own text is far more predictable to it than Python's help texts)."""
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, STORIES, run_cli
from generate import UsageError
from model import Transformer
from tokenizer import Tokenizer

sys.path.insert(0, str(ROOT / "scripts"))
import eval as ppl_eval  # noqa: E402

# stories260K's own greedy output from BOS (its README, checked there against transformers).
OWN_TEXT = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, "
            "she saw a big, red ball. She wanted to play with it, but it was too high.\nLily's mom said, \"Lily, "
            "let's go to the park.\" Lily was sad and didn't know what to do. She said, \"I want to play with my "
            "ball.\" Her mom said, \"I want to play with you, Lily. We can't find it.\"")


@pytest.fixture(scope="module")
def stories(stories_dir):
    import transformers

    hf = transformers.LlamaForCausalLM.from_pretrained(stories_dir, dtype=torch.float32).eval()
    return Transformer.from_pretrained(stories_dir, dtype=torch.float32), Tokenizer(stories_dir), hf


@pytest.mark.parametrize("n,seq_len,stride", [(10, 16, 8), (100, 16, 8), (100, 16, 15), (101, 32, 1), (57, 20, 7)])
def test_windows_score_every_token_once_with_context(n, seq_len, stride):
    scored = []
    for begin, first in ppl_eval.windows(n, seq_len, stride):
        end = min(begin + seq_len, n)
        assert 0 <= begin < first < end <= n  # at least one token of context inside the window
        scored += range(first, end)
    assert scored == list(range(1, n))


def test_matches_transformers(stories):
    """One window: exp of transformers' own mean loss. Sliding windows: each token scored by transformers
    given the tokens from the start of the first window that reaches past it."""
    model, tok, hf = stories
    ids = tok.encode(OWN_TEXT + " " + OWN_TEXT[::-1])  # half of it unlikely, so the number is not trivial
    with torch.no_grad():
        direct = math.exp(hf(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item())
    ppl, n = ppl_eval.perplexity(model, ids, seq_len=512, stride=256)
    assert n == len(ids) - 1 and ppl == pytest.approx(direct, rel=1e-4)

    seq_len, stride = 48, 20
    begins = list(range(0, len(ids) - seq_len, stride)) + [len(ids) - seq_len]
    nll = 0.0
    for i, b in enumerate(begins):  # causal: logits at position p see exactly ids[b:p + 1]
        with torch.no_grad():
            logits = hf(torch.tensor([ids[b:b + seq_len]])).logits[0]
        for t in range(max(b + 1, 1), b + seq_len):
            if next(w for w in begins if w + seq_len > t) == b:  # the first window that contains token t
                nll += F.cross_entropy(logits[t - b - 1], torch.tensor(ids[t])).item()
    want = math.exp(nll / (len(ids) - 1))
    for batch_size in (1, 3):
        assert ppl_eval.perplexity(model, ids, seq_len, stride, batch_size)[0] == pytest.approx(want, rel=1e-4)


def test_own_text_is_far_more_predictable_than_help_texts(stories):
    model, tok, _ = stories
    own, _ = ppl_eval.perplexity(model, tok.encode(OWN_TEXT), 256, 128)
    help_texts, n = ppl_eval.perplexity(model, tok.encode(ppl_eval.default_text())[:2000], 256, 128)
    assert n == 1999
    assert own < 3 and help_texts > 30 * own, (own, help_texts)


def test_cli(tmp_path, stories):
    model, tok, _ = stories
    (tmp_path / "t.txt").write_text(OWN_TEXT)
    r = run_cli("scripts/eval.py", "--checkpoint", STORIES, "--text", tmp_path / "t.txt", "--seq_len", "32",
                "--stride", "16", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    ppl, n = ppl_eval.perplexity(model, tok.encode(OWN_TEXT), 32, 16)
    assert r.stdout.startswith(f"perplexity {ppl:.4f} over {n} tokens")
    with pytest.raises(UsageError, match="--stride"):
        ppl_eval.main(["--checkpoint", str(STORIES), "--text", str(tmp_path / "t.txt"), "--seq_len", "32",
                       "--stride", "32", "--device", "cpu"])
    with pytest.raises(UsageError, match="--stride"):  # 0 is not "the default"
        ppl_eval.main(["--checkpoint", str(STORIES), "--text", str(tmp_path / "t.txt"), "--seq_len", "32",
                       "--stride", "0", "--device", "cpu"])
    r = run_cli("scripts/eval.py", "--checkpoint", STORIES, "--seq_len", "abc")
    assert r.returncode == 2 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    with pytest.raises(UsageError, match="missing.txt"):
        ppl_eval.main(["--checkpoint", str(STORIES), "--text", str(tmp_path / "missing.txt"), "--device", "cpu"])
