"""Multi-turn chat in the terminal: python generate.py --checkpoint DIR --chat [--system TEXT]

The chat format comes from the checkpoint (its chat template, else its special tokens): ChatML,
Llama-2 [INST], Llama-3 header tokens or Mistral. The KV cache persists across turns: each turn
prefills only its new tokens, after the tokens already in the cache.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from generate import decode_one_token, prefill
from model import CheckpointError
from tokenizer import StreamDecoder, Tokenizer

# A static cache costs memory and attention time for its full length on every step, so the chat
# uses at most this much of a long-context model's window.
CHAT_CONTEXT = 4096


@dataclass
class ChatFormat:
    """One family's chat layout. Segments are strings; those in `specials` are single tokens."""
    name: str
    specials: tuple[str, ...]
    end_of_turn: str  # the token the model ends its reply with
    default_system: str | None = None
    between: list[str] = field(default_factory=list)  # after end_of_turn, before the next user turn

    def start(self, system: str | None) -> list[str]:
        """The segments before the first user turn."""
        if self.name == "chatml":
            return ["<|im_start|>", f"system\n{system}", "<|im_end|>", "\n"] if system else []
        if self.name == "llama3":
            head = ["<|begin_of_text|>"]
            return head + (["<|start_header_id|>", "system", "<|end_header_id|>", f"\n\n{system}", "<|eot_id|>"]
                           if system else [])
        return ["<s>"] if self.name == "mistral" else []  # Llama-2 opens every turn with <s>

    def user(self, text: str, system: str | None, first: bool) -> list[str]:
        """A user turn and the header after which the assistant writes its reply."""
        if self.name == "chatml":
            return ["<|im_start|>", f"user\n{text}", "<|im_end|>", "\n", "<|im_start|>", "assistant\n"]
        if self.name == "llama3":
            return ["<|start_header_id|>", "user", "<|end_header_id|>", f"\n\n{text}", "<|eot_id|>",
                    "<|start_header_id|>", "assistant", "<|end_header_id|>", "\n\n"]
        if self.name == "llama2":  # the system prompt lives inside the first [INST]
            sys_block = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if first and system else ""
            return ["<s>", f"[INST] {sys_block}{text} [/INST]"]
        sys_block = f"{system}\n\n" if first and system else ""  # mistral: no system role
        return [f"[INST] {sys_block}{text} [/INST]"]

    def reply(self, text: str) -> str:
        """An assistant reply as the family's template writes it (used to render whole conversations)."""
        return f" {text} " if self.name == "llama2" else f" {text}" if self.name == "mistral" else text


FORMATS = {
    "chatml": ChatFormat("chatml", ("<|im_start|>", "<|im_end|>"), "<|im_end|>", between=["\n"]),
    "llama3": ChatFormat("llama3", ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                         "<|eot_id|>"),
    "llama2": ChatFormat("llama2", ("<s>", "</s>"), "</s>"),
    "mistral": ChatFormat("mistral", ("<s>", "</s>"), "</s>"),
}


def render(fmt: ChatFormat, system: str | None, turns: list[tuple[str, str | None]]) -> list[str]:
    """Segments of a whole conversation: (user, reply) pairs, the last reply None to ask for one."""
    segs = fmt.start(system)
    for i, (user, reply) in enumerate(turns):
        segs += fmt.user(user, system, first=i == 0)
        if reply is not None:
            segs += [fmt.reply(reply), fmt.end_of_turn, *fmt.between]
    return segs


def encode(tokenizer: Tokenizer, fmt: ChatFormat, segments: list[str]) -> list[int]:
    """Token ids of segments: special tokens by id, text without BOS."""
    ids = []
    for seg in segments:
        i = tokenizer.token_to_id(seg) if seg in fmt.specials else None
        ids += [i] if i is not None else tokenizer.encode(seg, bos=False) if seg else []
    return ids


def read_template(path: Path) -> str | None:
    """The checkpoint's Jinja chat template: chat_template.jinja, chat_template.json or tokenizer_config.json."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "tokenizer_config.json"):
        try:
            template = json.loads((path / name).read_text()).get("chat_template")
        except (OSError, ValueError):
            continue
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if template:
            return template
    return None


def detect_format(path: Path, tokenizer: Tokenizer) -> ChatFormat:
    """The chat format from the checkpoint's template, else from which special tokens its vocabulary has."""
    template = read_template(Path(path))
    if template is not None:
        has = lambda marker: marker in template  # noqa: E731
    else:
        has = lambda marker: tokenizer.token_to_id(marker) is not None  # noqa: E731
    if has("<|start_header_id|>"):
        return FORMATS["llama3"]
    if has("<|im_start|>"):
        # ChatML templates (SmolLM2, Qwen2) often insert a default system prompt: keep it.
        m = re.search(r"<\|im_start\|>system\n([^'\"{}]+?)<\|im_end\|>", template or "")
        return ChatFormat(**{**FORMATS["chatml"].__dict__, "default_system": m.group(1) if m else None})
    if has("[INST]"):
        return FORMATS["llama2" if template is not None and "<<SYS>>" in template else "mistral"]
    # CheckpointError, not generate.UsageError: under `python generate.py` that module is __main__, whose
    # UsageError is another class than the one importing generate gives, and would escape its handler.
    raise CheckpointError(f"{path} has no chat template and none of the ChatML, Llama-2/3 or Mistral special tokens: "
                     "--chat needs an instruction-tuned checkpoint")


class ContextFull(Exception):
    """The conversation no longer fits in the KV cache."""


class ChatSession:
    """A conversation whose tokens stay in the model's KV cache between turns."""

    def __init__(self, model, tokenizer: Tokenizer, fmt: ChatFormat, system: str | None = None,
                 prefill_fn=prefill, decode_fn=decode_one_token, **sampling):
        self.model, self.tokenizer, self.fmt, self.system = model, tokenizer, fmt, system
        self.prefill_fn, self.decode_fn, self.sampling = prefill_fn, decode_fn, sampling
        self.eot = encode(tokenizer, fmt, [fmt.end_of_turn])
        self.stop_ids = set(self.eot[-1:]) | set(tokenizer.eos_ids)
        self.ids: list[int] = []  # every token in the KV cache, in order
        self.pending = encode(tokenizer, fmt, fmt.start(system))  # tokens the next turn must prefill first
        self.turns = 0

    def send(self, text: str, max_new_tokens: int) -> Iterator[int]:
        """Add a user turn and yield the reply's tokens; raise ContextFull when the cache is full."""
        model, device = self.model, self.model.tok_embeddings.weight.device
        new = self.pending + encode(self.tokenizer, self.fmt, self.fmt.user(text, self.system, self.turns == 0))
        start = len(self.ids)
        if start + len(new) > model.max_seq_len:  # positions start .. start + len(new) - 1 must exist
            raise ContextFull(f"this turn would overflow the context of {model.max_seq_len} tokens")
        with torch.no_grad():
            tok = self.prefill_fn(model, torch.tensor([new], device=device),
                                  torch.arange(start, start + len(new), device=device), **self.sampling)
        self.ids += new
        self.pending, self.turns = self.eot + self.encode_between(), self.turns + 1  # if the reply is cut off
        input_pos = torch.tensor([len(self.ids)], device=device)
        for n in range(max_new_tokens):
            t = int(tok)
            if t in self.stop_ids:
                self.pending = [t] + self.encode_between()
                return
            yield t
            if n == max_new_tokens - 1:
                self.pending = [t] + self.pending  # sampled but not yet in the cache: the next turn feeds it
                return
            if len(self.ids) >= model.max_seq_len:  # t would go to position len(self.ids)
                raise ContextFull(f"the conversation filled the context of {model.max_seq_len} tokens")
            with torch.no_grad():  # clone: a CUDA-graph output is overwritten by the next replay
                tok = self.decode_fn(model, tok.view(1, 1), input_pos, **self.sampling).clone()
            self.ids.append(t)
            input_pos += 1

    def encode_between(self) -> list[int]:
        return encode(self.tokenizer, self.fmt, self.fmt.between)


def chat_loop(args, model, tokenizer: Tokenizer, prefill_fn=prefill, decode_fn=decode_one_token, **sampling) -> None:
    """Read user lines from stdin and stream replies until EOF or Ctrl-C."""
    fmt = detect_format(args.checkpoint, tokenizer)
    model.setup_caches(1, min(model.args.max_seq_len, CHAT_CONTEXT))
    session = ChatSession(model, tokenizer, fmt, args.system or fmt.default_system, prefill_fn, decode_fn, **sampling)
    print(f"Chat ({fmt.name} format, {model.max_seq_len}-token context). End with Ctrl-D or Ctrl-C.", file=sys.stderr)
    while True:
        try:
            text = input("> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not text.strip():
            continue
        stream = StreamDecoder(tokenizer)
        try:
            for t in session.send(text, args.max_new_tokens):
                print(stream.put(t), end="", flush=True)
            print()
        except KeyboardInterrupt:
            print()
            return
        except ContextFull as e:
            print(f"\n[{e}: start a new chat to continue]", file=sys.stderr)
            return


if __name__ == "__main__":  # a module of generate.py, not a command of its own
    print("error: chat.py has no command line: run python generate.py --checkpoint DIR --chat", file=sys.stderr)
    sys.exit(2)
