"""Speculative decoding: a cheap proposer guesses k tokens, the target checks them all in one pass.

    python generate.py --checkpoint TARGET --draft_checkpoint DRAFT --speculate_k 5 --compile
    python generate.py --checkpoint TARGET --prompt_lookup 3          # no draft model

Decode is bound by reading the weights, so scoring k+1 tokens costs about one decode step; every
accepted proposal is a token gained. The output is exactly the target's: with temperature 0 it is
token for token its greedy output, and with sampling it follows speculative sampling (accept a
proposal x with probability min(1, p(x)/q(x)), after a rejection sample from max(0, p - q)
normalised), whose output is distributed as the target's, top_k/top_p included.

Proposers: a draft model with the target's tokenizer (a smaller model, or a quantized copy of the
target), or prompt lookup: the continuation of the most recent earlier occurrence of the last n
tokens in the prompt and output so far.

Both caches hold every position before the last emitted token. Positions that a verification
rejected are written again by the next pass before any query can see them (a query only sees keys
at or before its own position), so rejections need no cache rollback.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

import generate as g
from model import Transformer, checkpoint_dir, read_config
from tokenizer import Tokenizer


def _race(probs: Tensor) -> Tensor:
    """Sample the last dim of probs: argmax(p / E), E ~ Exp(1), picks i with probability p_i, with no host sync."""
    return (probs / torch.empty_like(probs).exponential_(1)).argmax(-1)


# ------------------------------------------------------------------------------------ model steps
def draft_step(draft: Transformer, x: Tensor, input_pos: Tensor, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None) -> tuple[Tensor, Tensor | None]:
    """One draft decode step: x (B, 1) at input_pos (1,). Returns the proposed tokens (B,) and the
    distribution q (B, V) they were drawn from (None when greedy: verification then needs only the token)."""
    logits = draft(x, input_pos)[:, -1]  # (B, V)
    if temperature == 0:
        return logits.argmax(-1), None
    q = g.logits_to_probs(logits, temperature, top_k, top_p)
    return _race(q), q


def verify(model: Transformer, tokens: Tensor, input_pos: Tensor, draft_probs: Tensor | None = None,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> tuple[Tensor, Tensor]:
    """The target's verification pass and the acceptance test, in one graph of fixed shape.

    tokens (B, k+1): the last emitted token, then k proposals, at cache positions input_pos (k+1,).
    draft_probs (B, k, V): the distributions the proposals were drawn from; None for a deterministic
    proposer (prompt lookup), whose distribution is one-hot on its proposal.
    Returns n_accepted (B,), the length of each row's accepted prefix, and next_tokens (B, k+1):
    column j is what a row emits after accepting j proposals (a resample at a rejection; at j = k
    a bonus token drawn from the target's distribution after the last proposal).
    """
    logits = model(tokens, input_pos)  # (B, k+1, V)
    proposed = tokens[:, 1:]  # (B, k)
    if temperature == 0:  # accept while the proposal is the target's argmax; that argmax replaces the first miss
        best = logits.argmax(-1)  # (B, k+1)
        return (proposed == best[:, :-1]).long().cumprod(-1).sum(-1), best
    B, K1, V = logits.shape
    p = g.logits_to_probs(logits.view(B * K1, V), temperature, top_k, top_p).view(B, K1, V)
    q = draft_probs if draft_probs is not None else F.one_hot(proposed, V).to(p.dtype)  # (B, k, V)
    p_x = p[:, :-1].gather(-1, proposed.unsqueeze(-1)).squeeze(-1)  # (B, k) target probability of each proposal
    q_x = q.gather(-1, proposed.unsqueeze(-1)).squeeze(-1)  # (B, k) > 0: the proposer drew it
    accepted = torch.rand_like(p_x) * q_x < p_x  # u < p/q, without dividing
    n_accepted = accepted.long().cumprod(-1).sum(-1)  # (B,)
    residual = torch.cat([(p[:, :-1] - q).clamp(min=0), p[:, -1:]], dim=1)  # (B, k+1, V)
    total = residual.sum(-1, keepdim=True)
    # total == 0 means p == q at that position, where rejection cannot happen: any fallback will do.
    residual = torch.where(total > 0, residual / total, p)
    return n_accepted, _race(residual)


# ----------------------------------------------------------------------------------- prompt lookup
class PromptLookup:
    """Proposes the continuation of the most recent earlier occurrence of the sequence's last n tokens.

    One per row. An index from each n-gram to where its latest occurrence ended is updated as the
    sequence grows, so a proposal costs O(new tokens), not a scan of the whole text.
    """

    def __init__(self, n: int, k: int):
        self.n, self.k, self.ends, self.indexed = n, k, {}, n

    def propose(self, seq: list[int]) -> list[int]:
        n = self.n
        while self.indexed < len(seq):  # n-grams ending before the last token: earlier occurrences only
            self.ends[tuple(seq[self.indexed - n:self.indexed])] = self.indexed
            self.indexed += 1
        start = self.ends.get(tuple(seq[-n:])) if len(seq) > n else None
        if start is None:  # no match: any proposal is exact, it just will not be accepted often
            return [seq[-1]] * self.k
        out = []
        for i in range(self.k):  # copy forward; past the end, copy what was just proposed (a repeating period)
            j = start + i
            out.append(seq[j] if j < len(seq) else out[j - len(seq)])
        return out


# -------------------------------------------------------------------------------------- the loop
@dataclass
class Stats:
    """Counters of one generate() call (batch > 1 counts the proposals all active rows accepted)."""
    k: int
    rounds: int = 0
    accepted: int = 0
    tokens: int = 0  # emitted per row by the loop after the first token (its plain steps near the context end too)
    draft_s: float = 0.0
    verify_s: float = 0.0
    loop_s: float = 0.0

    def __str__(self) -> str:
        r, t = max(self.rounds, 1), max(self.loop_s, 1e-9)
        other = self.loop_s - self.draft_s - self.verify_s
        return (f"Speculative: acceptance {100 * self.accepted / (self.k * r):.1f}% (k={self.k}), "
                f"{(self.accepted + self.rounds) / r:.2f} tokens per verification, {self.tokens / t:.1f} tok/s "
                f"per row; time: draft {100 * self.draft_s / t:.0f}%, verify {100 * self.verify_s / t:.0f}%, "
                f"other {100 * other / t:.0f}%")


class Speculator:
    """Speculative generation with a draft model or prompt lookup; generate() is a drop-in for generate.generate.

    For benchmarks on an in-memory pair: spec = Speculator(draft, k=5, compile=True);
    spec.generate(target, prompts, n, temperature=0) then spec.stats (acceptance, draft/verify split),
    and spec.verify_once(target) times a single verification pass of k+1 tokens.
    """

    def __init__(self, draft: Transformer | None = None, k: int = 5, prompt_lookup: int = 0,
                 compile: bool = False, verbose: bool = False):
        if (draft is None) == (prompt_lookup == 0):
            raise g.UsageError("speculate with either a draft model or --prompt_lookup N, not both or neither")
        if k < 1:
            raise g.UsageError(f"--speculate_k must be >= 1, got {k}")
        self.draft, self.k, self.lookup_n, self.verbose = draft, k, prompt_lookup, verbose
        self.stats = Stats(k)
        # compile: both models run compiled blocks (generate.compile_regions; a verification pass shares
        # the prompts' graph of dynamic length, so k does not recompile), and on CUDA each step of fixed
        # shape, (B, 1) and (B, k+1) with positions passed as tensors, is recorded once as a CUDA graph
        # and replayed at every position.
        self.compile = compile
        self.draft_fn = g.CUDAGraphStep(draft_step) if compile else draft_step
        self.verify_fn = g.CUDAGraphStep(verify) if compile else verify
        if compile and draft is not None:
            g.compile_regions(draft)

    def fit_caches(self, model: Transformer, batch_size: int, seq_len: int) -> None:
        """Grow the target's cache to batch_size rows and seq_len positions (within its context); match the
        draft's. With compile, also compile the target's blocks (once)."""
        if self.compile:
            g.compile_regions(model)
        seq_len = max(model.max_seq_len, min(seq_len, model.args.max_seq_len))
        model.setup_caches(max(batch_size, model.max_batch_size), seq_len)
        if self.draft is not None:
            self.draft.setup_caches(model.max_batch_size, min(model.max_seq_len, self.draft.args.max_seq_len))

    @torch.no_grad()
    def verify_once(self, model: Transformer, batch_size: int = 1, pos: int = 0, **sampling) -> tuple[Tensor, Tensor]:
        """One verification pass of k+1 random tokens at positions pos..pos+k (for benchmarks; caches set up)."""
        V, device = model.args.vocab_size, model.tok_embeddings.weight.device
        tokens = torch.randint(V, (batch_size, self.k + 1), device=device)
        q = None
        if self.draft is not None and sampling.get("temperature", 1.0) != 0:
            q = torch.full((batch_size, self.k, V), 1.0 / V, device=device)
        return self.verify_fn(model, tokens, torch.arange(pos, pos + self.k + 1, device=device), q, **sampling)

    @torch.no_grad()
    def generate(self, model: Transformer, prompts: list[list[int]], max_new_tokens: int, *, eos_ids=(),
                 prefill_fn=g.prefill, decode_fn=None, callback=None, **sampling) -> list[list[int]]:
        """Same contract as generate.generate (decode_fn is unused): the new tokens of each row,
        callback(step, tokens) once per emitted position. Rows share positions, so a round emits as
        many tokens as its least accepting active row; each row stays exact."""
        k, draft, device = self.k, self.draft, model.tok_embeddings.weight.device
        B, T = len(prompts), max(len(p) for p in prompts)
        self.fit_caches(model, B, T + max_new_tokens + k)
        if T + max_new_tokens > model.max_seq_len:
            raise g.UsageError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                               f"context of {model.max_seq_len}: shorten the prompt or lower --max_new_tokens")
        limit = model.max_seq_len if draft is None else min(model.max_seq_len, draft.max_seq_len)
        if limit <= T:
            raise g.UsageError(f"the prompt ({T} tokens) does not fit the draft's context of {limit}: shorten it")
        models = [model] + ([draft] if draft is not None else [])
        idx = torch.tensor([[0] * (T - len(p)) + p for p in prompts], device=device)  # (B, T) left-padded
        for net in models:
            net.row_start[:B].copy_(torch.tensor([T - len(p) for p in prompts]))
        first = prefill_fn(model, idx, torch.arange(T, device=device), **sampling)
        if draft is not None:  # fills the draft's cache with the prompt; its prediction is not needed
            draft(idx, torch.arange(T, device=device), last_only=True)
        seqs = [list(p) for p in prompts]  # prompt and output of each row, for prompt lookup
        lookups = [PromptLookup(self.lookup_n, k) for _ in prompts]
        out, done, step, stats = [[] for _ in range(B)], [False] * B, 0, Stats(k)
        self.stats = stats

        def emit(tokens: list[int]) -> bool:  # one position, a token per row; True when generation is over
            nonlocal step
            for row, tok in enumerate(tokens):
                seqs[row].append(tok)
            g.keep_tokens(tokens, out, done, eos_ids)
            if callback is not None:
                callback(step, tokens)
            step += 1
            return all(done) or step == max_new_tokens

        over = emit(first.tolist())
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        t_loop = time.perf_counter()
        n = T + 1  # sequence length; both caches hold positions 0..n-2, the last token is not yet cached
        while not over:
            last = torch.tensor([s[-1] for s in seqs], device=device)  # (B,)
            if n + k > limit:  # no room left for k+1 positions: finish with plain decode steps
                over = emit(g.decode_one_token(model, last.view(B, 1), torch.tensor([n - 1], device=device),
                                               **sampling).tolist())
                n, stats.tokens = n + 1, stats.tokens + 1
                continue
            t0 = time.perf_counter()
            pos = torch.arange(n - 1, n + k, device=device)  # (k+1,)
            if draft is not None:
                proposals, qs = [last], []
                for j in range(k):  # clones: a CUDA graph's outputs are overwritten by its next replay
                    tok, q = self.draft_fn(draft, proposals[-1].view(B, 1), pos[j:j + 1], **sampling)
                    proposals.append(tok.clone())
                    qs.append(q.clone() if q is not None else None)
                tokens = torch.stack(proposals, 1)  # (B, k+1)
                q = torch.stack(qs, 1) if qs[0] is not None else None  # (B, k, V)
            else:
                tokens = torch.tensor([[s[-1]] + lk.propose(s) for s, lk in zip(seqs, lookups)], device=device)
                q = None
            sync()
            t1 = time.perf_counter()
            n_acc, nxt = self.verify_fn(model, tokens, pos, q, **sampling)
            host = torch.cat([n_acc[:, None], nxt, tokens[:, 1:]], 1).tolist()  # one sync per round
            t2 = time.perf_counter()
            host = [(h[0], h[1:k + 2], h[k + 2:]) for h in host]  # per row: (accepted, next_tokens, proposals)
            m = min(a for (a, _, _), d in zip(host, done) if not d)
            # Each row emits the m proposals every running row accepted, then its next proposal if it
            # accepted that one too, else its own resample (a cut that keeps every row exact).
            rows = [props[:m] + [props[m] if a > m else nxt_row[m]] for a, nxt_row, props in host]
            if draft is not None and m == k:  # the draft never saw its last proposal: cache it
                self.draft_fn(draft, tokens[:, k:k + 1], pos[k:k + 1], **sampling)
                sync()
            t3 = time.perf_counter()
            stats.rounds, stats.accepted = stats.rounds + 1, stats.accepted + m
            stats.draft_s += t1 - t0 + t3 - t2
            stats.verify_s += t2 - t1
            for j in range(m + 1):
                stats.tokens += 1
                if emit([r[j] for r in rows]):
                    over = True
                    break
            n += m + 1
        stats.loop_s = time.perf_counter() - t_loop
        for net in models:
            net.row_start.zero_()
        if self.verbose:
            print(stats, file=sys.stderr)
        return out


# ------------------------------------------------------------------------------------------ CLI
def check_same_vocabulary(tokenizer: Tokenizer, target_vocab: int, draft_tokenizer: Tokenizer,
                          draft_vocab: int, draft_path) -> None:
    """Raise UsageError unless the draft's tokenizer and output layer match the target's."""
    probe = "Speculative decoding, 1234: naïve café 日本語 🦊\n    def f(x): return x ** 2"
    problem = None
    if (tokenizer.vocab_size, target_vocab) != (draft_tokenizer.vocab_size, draft_vocab):
        problem = (f"vocabulary {draft_tokenizer.vocab_size} tokens / {draft_vocab} logits, "
                   f"target {tokenizer.vocab_size} / {target_vocab}")
    elif tokenizer.encode(probe) != draft_tokenizer.encode(probe) or tokenizer.eos_ids != draft_tokenizer.eos_ids:
        problem = "same size but different tokens"
    if problem:
        raise g.UsageError(f"--draft_checkpoint {draft_path} does not share the target's vocabulary ({problem}): "
                           "use a draft with the target's tokenizer, or --prompt_lookup N")


def speculative_generator(args, model: Transformer, tokenizer: Tokenizer, device, dtype, load_fn=None):
    """generate.py's hook: load and check the draft (if any) and return a drop-in for generate.generate.
    load_fn(path, device, dtype) loads the draft like the target (tp.py passes its sharded loader)."""
    draft = None  # (generate.check_args has checked the flags)
    if args.draft_checkpoint is not None:
        path = checkpoint_dir(args.draft_checkpoint, "--draft_checkpoint")
        # Compare vocabularies from the small files, before reading any draft weights.
        draft_vocab = read_config(path).get("vocab_size")
        check_same_vocabulary(tokenizer, model.args.vocab_size, Tokenizer(path), draft_vocab, path)
        t0 = time.perf_counter()
        draft, _ = (load_fn or g.load)(path, device, dtype)
        print(f"Loaded draft {path} in {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    spec = Speculator(draft, args.speculate_k, args.prompt_lookup, compile=args.compile, verbose=True)
    # main() sized the target's cache for prompt + max_new_tokens; verification reads k positions further.
    spec.fit_caches(model, model.max_batch_size, model.max_seq_len + args.speculate_k)
    return spec.generate


if __name__ == "__main__":  # a module of generate.py, not a command of its own
    print("error: speculative.py has no command line: run python generate.py --checkpoint TARGET "
          "--draft_checkpoint DRAFT (or --prompt_lookup 3)", file=sys.stderr)
    sys.exit(2)
