"""scripts/download.py with the hub replaced: which files it fetches, where they land, and its errors."""
import sys

import pytest

from conftest import ROOT, run_cli
from generate import UsageError
from model import CheckpointError

pytest.importorskip("huggingface_hub")
sys.path.insert(0, str(ROOT / "scripts"))
import download  # noqa: E402
from huggingface_hub import errors as hub_errors  # noqa: E402

# A Llama-3-style repository listing: sharded safetensors, plus copies in formats generate.py does not load.
LISTING = [".gitattributes", "LICENSE", "README.md", "USE_POLICY.md", "config.json", "generation_config.json",
           "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
           "original/consolidated.00.pth", "original/params.json", "original/tokenizer.model",
           "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json", "special_tokens_map.json",
           "tokenizer.json", "tokenizer_config.json", "onnx/model.onnx", "model.Q4_0.gguf", "flax_model.msgpack",
           "consolidated.safetensors"]  # (Mistral's repositories ship this second copy of the weights)
WANTED = ["config.json", "generation_config.json", "model-00001-of-00002.safetensors",
          "model-00002-of-00002.safetensors", "model.safetensors.index.json", "special_tokens_map.json",
          "tokenizer.json", "tokenizer_config.json"]


def test_select_files():
    assert download.select_files("a/b", LISTING) == WANTED
    with pytest.raises(CheckpointError, match="no .safetensors"):
        download.select_files("a/b", ["config.json", "pytorch_model.bin", "tokenizer.json"])
    with pytest.raises(CheckpointError, match="no config.json"):
        download.select_files("a/b", ["model.safetensors", "tokenizer.json"])


def hub_error(cls, message="404 Client Error"):
    """A huggingface_hub error without an HTTP response (their constructors want one)."""
    e = cls.__new__(cls)
    Exception.__init__(e, message)
    return e


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace the two network calls; record what was asked and with which token."""
    calls = {"list": [], "get": [], "fail_on": None, "list_error": None}

    def list_repo_files(self, repo_id, revision=None, token=None):
        calls["list"].append((repo_id, revision, token))
        if calls["list_error"] is not None:
            raise calls["list_error"]
        return LISTING

    def hf_hub_download(repo_id, filename, revision=None, local_dir=None, token=None):
        calls["get"].append((repo_id, filename, token))
        if filename == calls["fail_on"]:
            raise ConnectionError("connection reset")
        (local_dir / ".cache").mkdir(exist_ok=True)  # as huggingface_hub does
        (local_dir / filename).write_text(f"content of {filename}")
        return str(local_dir / filename)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return calls


def test_download_fetches_only_the_selected_files(tmp_path, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    out = tmp_path / "checkpoints" / "org" / "model"
    assert download.download("org/model", out) == WANTED
    assert sorted(p.name for p in out.iterdir()) == WANTED  # no .cache, nothing else
    assert (out / "config.json").read_text() == "content of config.json"
    assert [f for _, f, _ in fake_hub["get"]] == WANTED
    assert {t for *_, t in fake_hub["get"]} == {"hf_secret"} and fake_hub["list"][0][2] == "hf_secret"
    assert list(out.parent.iterdir()) == [out]  # no temporary directory left
    with pytest.raises(UsageError, match="already exists"):
        download.download("org/model", out)


@pytest.mark.parametrize("error,message", [
    (hub_error(hub_errors.GatedRepoError), "gated: accept its license"),
    (hub_error(hub_errors.RepositoryNotFoundError), "not found on the Hugging Face hub"),
    (hub_error(hub_errors.OfflineModeIsEnabled if hasattr(hub_errors, "OfflineModeIsEnabled") else ConnectionError),
     "cannot reach the Hugging Face hub"),
    (ConnectionError("Name or service not known"), "cannot reach the Hugging Face hub"),
])
def test_errors_are_one_line_and_leave_nothing(tmp_path, fake_hub, error, message):
    fake_hub["list_error"] = error
    with pytest.raises(UsageError, match=message):
        download.download("org/model", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_out_must_be_new_or_an_empty_folder(tmp_path, fake_hub):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not an empty folder"):
        download.download("org/model", tmp_path / "file")
    with pytest.raises(UsageError, match="not a writable directory"):  # a folder under a file
        download.download("org/model", tmp_path / "file" / "out")
    assert (tmp_path / "file").read_text() == "x"


def test_failure_mid_download_leaves_nothing(tmp_path, fake_hub):
    fake_hub["fail_on"] = "tokenizer.json"
    with pytest.raises(UsageError, match="cannot reach"):
        download.download("org/model", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_cli_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # huggingface_hub then refuses at once, without a network call
    r = run_cli("scripts/download.py", "org/model", "--out", tmp_path / "out")
    assert r.returncode == 2 and r.stderr.startswith("error: cannot reach") and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1 and not (tmp_path / "out").exists()
    for bad in "not-a-repo-id", "my org/my model", "/":
        with pytest.raises(UsageError, match="owner/name"):
            download.main([bad])
