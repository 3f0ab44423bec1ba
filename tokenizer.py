"""Tokenizers of a checkpoint directory: SentencePiece tokenizer.model, or Hugging Face tokenizer.json.

Special token ids (BOS, EOS, which may be several) come from the checkpoint's own files.
"""
from __future__ import annotations

import json
from pathlib import Path

from model import CheckpointError


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text()) if file.is_file() else {}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file} is not readable JSON ({e})") from None


def _as_list(x) -> list[int]:
    return [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]


class Tokenizer:
    """encode(text) -> ids (with BOS where the model expects it), decode(ids) -> text."""

    def __init__(self, path: str | Path):
        path = Path(path)
        tok_config = _read_json(path / "tokenizer_config.json")
        self.sp = self.hf = None
        if (path / "tokenizer.json").is_file() and not (path / "tokenizer.model").is_file():
            try:
                from tokenizers import Tokenizer as HFTokenizer
            except ImportError:
                raise CheckpointError(f"{path}/tokenizer.json needs the tokenizers package: pip install tokenizers") from None
            try:
                self.hf = HFTokenizer.from_file(str(path / "tokenizer.json"))
            except Exception as e:  # the library raises a bare Exception for malformed files
                raise CheckpointError(f"{path}/tokenizer.json could not be read ({e})") from None
        elif (path / "tokenizer.model").is_file():
            import sentencepiece as spm

            self.sp = spm.SentencePieceProcessor()
            try:
                self.sp.Load(str(path / "tokenizer.model"))
            except (OSError, RuntimeError) as e:
                raise CheckpointError(f"{path}/tokenizer.model could not be read ({e})") from None
        else:
            raise CheckpointError(f"no tokenizer.model or tokenizer.json in {path}: copy the tokenizer files there")

        config, gen_config = _read_json(path / "config.json"), _read_json(path / "generation_config.json")
        self.bos_id = gen_config.get("bos_token_id", config.get("bos_token_id"))
        if self.bos_id is None and isinstance(tok_config.get("bos_token"), str):
            self.bos_id = self.token_to_id(tok_config["bos_token"])
        eos = set(_as_list(config.get("eos_token_id"))) | set(_as_list(gen_config.get("eos_token_id")))
        if not eos and isinstance(tok_config.get("eos_token"), str):
            eos = set(_as_list(self.token_to_id(tok_config["eos_token"])))
        if not eos and self.sp is not None and self.sp.eos_id() >= 0:
            eos = {self.sp.eos_id()}
        self.eos_ids: list[int] = sorted(eos)
        # SentencePiece Llama/Mistral tokenizers prepend BOS unless told not to; tokenizer.json
        # tokenizers say it themselves in their post-processor.
        self.add_bos = bool(tok_config.get("add_bos_token", True)) and self.bos_id is not None

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size() if self.sp is not None else self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, bos: bool = True) -> list[int]:
        if self.hf is not None:
            return self.hf.encode(text, add_special_tokens=bos).ids
        return ([self.bos_id] if bos and self.add_bos else []) + self.sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        if self.hf is not None:
            return self.hf.decode(ids, skip_special_tokens=True)
        return self.sp.decode(ids)

    def token_to_id(self, token: str) -> int | None:
        if self.hf is not None:
            return self.hf.token_to_id(token)
        i = self.sp.piece_to_id(token)
        return None if i == self.sp.unk_id() and token != self.sp.id_to_piece(i) else i


class StreamDecoder:
    """Turns a stream of token ids into text pieces, holding back incomplete multi-byte characters.

    Decoding tokens one by one would drop SentencePiece's leading spaces and split UTF-8 sequences
    that span byte-fallback tokens, so each step decodes a short window and emits what it added.
    """

    def __init__(self, tokenizer: Tokenizer, context: list[int] = ()):
        # context: ids already printed (the prompt's last token), so that the first new token keeps its space
        self.tokenizer, self.ids, self.prefix, self.read = tokenizer, list(context), 0, len(context)

    def put(self, token: int) -> str:
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self.prefix:self.read])
        text = self.tokenizer.decode(self.ids[self.prefix:])
        if len(text) > len(before) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(before):]
        return ""
