"""chat.py: each family's chat format against the exact strings its models expect, format detection from
the checkpoint, and a KV cache kept across turns that gives the same tokens as re-prefilling everything."""
import json
import shutil
from argparse import Namespace

import pytest
import torch

from chat import FORMATS, ChatSession, ContextFull, chat_loop, detect_format, encode, render
from conftest import run_cli
from generate import generate
from model import CheckpointError, Transformer
from tokenizer import Tokenizer

TURNS = [("Hi!", "Hello, how can I help?"), ("Name a color.", None)]

# The layouts each family documents, written out by hand (not produced by chat.py).
EXPECTED = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
              "Hello, how can I help?<|im_end|>\n<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
              "Hello, how can I help?<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nName a color.<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "llama2": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST] Hello, how can I help? </s>"
              "<s>[INST] Name a color. [/INST]",
    "mistral": "<s>[INST] Be brief.\n\nHi! [/INST] Hello, how can I help?</s>[INST] Name a color. [/INST]",
}

# SmolLM2-135M-Instruct's own chat template (tokenizer.chat_template in its GGUF file).
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.mark.parametrize("name", EXPECTED)
def test_render_matches_family_format(name):
    assert "".join(render(FORMATS[name], "Be brief.", TURNS)) == EXPECTED[name]


def test_chatml_matches_smollm2_template():
    """Rendered by Jinja from the model's own template, with and without a system prompt (its default)."""
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(SMOLLM2_TEMPLATE)
    messages = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Bye."}]
    fmt = FORMATS["chatml"]
    turns = [("Hi!", "Hello."), ("Bye.", None)]
    want = template.render(messages=[{"role": "system", "content": "S"}] + messages, add_generation_prompt=True)
    assert "".join(render(fmt, "S", turns)) == want


def test_detect_format_from_the_checkpoint(tmp_path, stories_dir):
    tok = Tokenizer(stories_dir)
    templates = {"llama3": "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}",
                 "llama2": "{{ bos_token + '[INST] ' + '<<SYS>>\\n' + system_message + ' [/INST]' }}",
                 "mistral": "{{ bos_token }}{% for m in messages %}{{ '[INST] ' + m['content'] + ' [/INST]' }}",
                 "chatml": SMOLLM2_TEMPLATE}
    for name, template in templates.items():
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
        assert detect_format(tmp_path, tok).name == name
    # the ChatML default system prompt is taken from the template, and reproduces its rendering
    jinja2 = pytest.importorskip("jinja2")
    fmt = detect_format(tmp_path, tok)
    assert fmt.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    want = jinja2.Environment().from_string(SMOLLM2_TEMPLATE).render(
        messages=[{"role": "user", "content": "Hi!"}], add_generation_prompt=True)
    assert "".join(render(fmt, fmt.default_system, [("Hi!", None)])) == want
    # no template: the special tokens decide; none of them: a clear error
    (tmp_path / "tokenizer_config.json").unlink()
    with pytest.raises(CheckpointError, match="no chat template"):
        detect_format(tmp_path, tok)

    class WithTokens:
        token_to_id = staticmethod(lambda t: 7 if t in ("<|im_start|>", "<|im_end|>") else None)
    assert detect_format(tmp_path, WithTokens()).name == "chatml"


def test_special_segments_are_single_tokens(stories_dir):
    tok = Tokenizer(stories_dir)
    ids = encode(tok, FORMATS["llama2"], ["<s>", "[INST] Hi [/INST]", "</s>"])
    assert ids == [1] + tok.encode("[INST] Hi [/INST]", bos=False) + [2]


@pytest.fixture(scope="module")
def stories(stories_dir):
    model = Transformer.from_pretrained(stories_dir, dtype=torch.float32)
    return model, Tokenizer(stories_dir)


def test_kv_cache_reuse_equals_reprefill(stories, stories_dir):
    """Each reply equals greedy decoding of the whole conversation so far in a fresh cache, and each
    turn prefills only its new tokens, at the positions after those already cached."""
    model, tok = stories
    model.setup_caches(1, 512)
    prefills = []

    def recording_prefill(m, idx, input_pos, **sampling):
        prefills.append((int(input_pos[0]), idx.shape[1]))
        from generate import prefill
        return prefill(m, idx, input_pos, **sampling)

    session = ChatSession(model, tok, FORMATS["llama2"], "You tell stories.", prefill_fn=recording_prefill,
                          temperature=0)
    replies = [list(session.send(text, 20)) for text in ["Tell me about a cat.", "What next?", "And then?"]]
    assert all(replies)

    fresh = Transformer.from_pretrained(stories_dir, dtype=torch.float32)
    fresh.setup_caches(1, 512)
    for k, ((start, n), reply) in enumerate(zip(prefills, replies)):
        prompt = session.ids[:start + n]  # the cache holds the conversation in order
        assert session.ids[start + n:start + n + len(reply) - 1] == reply[:-1]
        assert generate(fresh, [prompt], 20, eos_ids=session.stop_ids, temperature=0)[0] == reply
        if k:  # only the new tokens: what ended the previous reply, then the new user turn
            prev_start, prev_n = prefills[k - 1]
            cut = len(replies[k - 1]) == 20  # cut off: its last token and </s> were not yet in the cache
            assert start == prev_start + prev_n + len(replies[k - 1]) - cut
            user = encode(tok, FORMATS["llama2"], ["<s>", f"[INST] {['What next?', 'And then?'][k - 1]} [/INST]"])
            assert session.ids[start:start + n] == ([replies[k - 1][-1]] if cut else []) + [2] + user


def test_context_overflow_is_reported(stories):
    model, tok = stories
    model.setup_caches(1, 40)
    session = ChatSession(model, tok, FORMATS["llama2"], temperature=0)
    with pytest.raises(ContextFull, match="overflow the context of 40"):
        list(session.send("word " * 60, 10))
    session = ChatSession(model, tok, FORMATS["llama2"], temperature=0)
    got = []
    with pytest.raises(ContextFull, match="filled the context of 40"):
        for t in session.send("Hi", 100):
            got.append(t)
    assert got  # the reply so far was delivered before the cache ran out
    assert len(session.ids) == 40  # every position of the cache was used
    # A turn that fills the cache exactly is prefilled; its first token is delivered, then the cache is full.
    session = ChatSession(model, tok, FORMATS["llama2"], temperature=0)
    n = len(session.pending + encode(tok, FORMATS["llama2"], FORMATS["llama2"].user("Hi", None, True)))
    model.setup_caches(1, n)
    got = []
    with pytest.raises(ContextFull, match=f"filled the context of {n}"):
        for t in session.send("Hi", 100):
            got.append(t)
    assert len(got) == 1 and len(session.ids) == n


def test_chat_loop_ends_cleanly(stories, stories_dir, tmp_path, monkeypatch, capsys):
    model, tok = stories
    ckpt = tmp_path / "ckpt"
    shutil.copytree(stories_dir, ckpt)
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"chat_template": "[INST] <<SYS>> [/INST]"}))
    args = Namespace(checkpoint=ckpt, system=None, max_new_tokens=5)
    lines = iter(["Hello", ""])

    def fake_input(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    chat_loop(args, model, tok, temperature=0)
    assert "llama2 format" in capsys.readouterr().err

    def interrupt(prompt):
        raise KeyboardInterrupt

    monkeypatch.setattr("builtins.input", interrupt)
    chat_loop(args, model, tok, temperature=0)  # returns instead of raising


def test_chat_cli(stories_dir, tmp_path):
    r = run_cli("generate.py", "--checkpoint", stories_dir, "--chat", "--device", "cpu", input="Hi\n")
    assert r.returncode == 2 and "no chat template" in r.stderr and "Traceback" not in r.stderr
    ckpt = tmp_path / "ckpt"
    shutil.copytree(stories_dir, ckpt)
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"chat_template": "[INST] <<SYS>> [/INST]"}))
    r = run_cli("generate.py", "--checkpoint", ckpt, "--chat", "--device", "cpu", "--temperature", "0",
                "--max_new_tokens", "8", input="Hello\n" + "word " * 600 + "\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("> ") and len(r.stdout.splitlines()[0]) > 2  # a reply to the first turn
    assert "overflow the context of 512 tokens" in r.stderr and "Traceback" not in r.stderr
