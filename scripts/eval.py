"""Perplexity of a checkpoint on a text, with a sliding window:

    python scripts/eval.py --checkpoint DIR [--text FILE] [--seq_len N] [--stride N] [--batch_size N]

Each window of seq_len tokens starts stride tokens after the previous one and scores only the tokens
the previous window did not, so every token after the first is predicted once, with up to
seq_len - stride tokens of context before it. The default text is Python's own help texts
(pydoc_data/topics.py), which every Python install has.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from generate import UsageError, check_checkpoint_and_device, load, one_line_errors, run  # noqa: E402
from model import Transformer  # noqa: E402


def default_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def windows(n_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int]]:
    """(begin, first scored index) of each window. Each window covers [begin, begin + seq_len) and scores
    the tokens from its first scored index on; the last window is aligned to end at the text's end."""
    if n_tokens <= seq_len:
        return [(0, 1)]
    out, scored_to = [], 1  # token 0 has no context, so it is never scored
    begin = 0
    while scored_to < n_tokens:
        begin = min(begin, n_tokens - seq_len)
        out.append((begin, scored_to))
        scored_to = begin + seq_len
        begin += stride
    return out


@torch.no_grad()
def perplexity(model: Transformer, ids: list[int], seq_len: int, stride: int, batch_size: int = 4) -> tuple[float, int]:
    """(perplexity, number of tokens scored) of the token list ids."""
    if len(ids) < 2:
        raise UsageError(f"the text has {len(ids)} token(s): perplexity needs at least 2")
    device = model.tok_embeddings.weight.device
    seq_len = min(seq_len, len(ids))
    model.setup_caches(batch_size, seq_len)
    tokens = torch.tensor(ids, device=device)
    wins = windows(len(ids), seq_len, stride)
    total_nll, count = 0.0, 0
    for i in range(0, len(wins), batch_size):
        batch = wins[i:i + batch_size]
        x = torch.stack([tokens[b:b + seq_len] for b, _ in batch])  # (B, seq_len)
        logits = model(x, torch.arange(seq_len, device=device))  # (B, seq_len, vocab)
        for row, (b, first) in enumerate(batch):
            # logits at position p predict token p + 1: score tokens [first, b + seq_len)
            pred = logits[row, first - b - 1:seq_len - 1].float()  # (n, vocab)
            target = tokens[first:b + seq_len]  # (n,)
            total_nll += F.cross_entropy(pred, target, reduction="sum").item()
            count += target.numel()
    return math.exp(total_nll / count), count


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint directory (default: the demo model)")
    p.add_argument("--text", type=Path, default=None, help="UTF-8 text file (default: pydoc_data/topics.py's texts)")
    p.add_argument("--seq_len", type=int, default=1024, help="window length in tokens (capped at the model's context)")
    p.add_argument("--stride", type=int, default=None,
                   help="tokens between window starts, below seq_len (default: seq_len // 2)")
    p.add_argument("--batch_size", type=int, default=4, help="windows per forward pass")
    p.add_argument("--max_tokens", type=int, default=None, help="score only the first N tokens of the text")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="default: bfloat16 on cuda, float32 on cpu")
    args = one_line_errors(p).parse_args(argv)
    check_checkpoint_and_device(args)
    if args.seq_len < 2 or args.batch_size < 1 or (args.max_tokens is not None and args.max_tokens < 2):
        raise UsageError("--seq_len and --max_tokens must be >= 2, --batch_size >= 1")
    try:
        text = args.text.read_text(encoding="utf-8") if args.text is not None else default_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read --text {args.text}: {e}") from None
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    model, tokenizer = load(args.checkpoint, args.device, dtype)
    seq_len = min(args.seq_len, model.args.max_seq_len)
    stride = seq_len // 2 if args.stride is None else args.stride
    if not 1 <= stride < seq_len:  # a window's first token has no context in it, so windows must overlap
        raise UsageError(f"--stride must be in [1, seq_len - 1 = {seq_len - 1}], got {stride}")
    ids = tokenizer.encode(text)[:args.max_tokens]
    t0 = time.perf_counter()
    ppl, n = perplexity(model, ids, seq_len, stride, args.batch_size)
    print(f"perplexity {ppl:.4f} over {n} tokens (seq_len {min(seq_len, len(ids))}, stride {stride}, "
          f"{time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    run(main)
