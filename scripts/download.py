"""Download a checkpoint from the Hugging Face hub: python scripts/download.py REPO_ID [--out DIR]

Fetches only what generate.py loads: config, safetensors weights (and their index), tokenizer and
generation-config files; never .bin/.pth/GGUF/ONNX copies. Gated or private models need a token in
the HF_TOKEN environment variable (or a saved `hf auth login`). The directory appears complete or not at all.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from fnmatch import fnmatch
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from generate import UsageError, check_output_dir, one_line_errors, run  # noqa: E402
from model import CheckpointError  # noqa: E402

# The weights as model.load_hf_state_dict reads them (not, e.g., the consolidated.safetensors copy Mistral ships too)
WANTED = ("config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
          "model.safetensors.index.json",
          "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
          "chat_template.jinja", "chat_template.json")


def select_files(repo_id: str, names: list[str]) -> list[str]:
    """The repository files to fetch: top-level files matching WANTED (subfolders hold other formats)."""
    chosen = sorted(n for n in names if "/" not in n and any(fnmatch(n, pattern) for pattern in WANTED))
    if "config.json" not in chosen:
        raise CheckpointError(f"{repo_id} has no config.json: it is not a Hugging Face transformers checkpoint")
    if not any(n.endswith(".safetensors") for n in chosen):
        raise CheckpointError(f"{repo_id} has no .safetensors weights (only {', '.join(sorted(names)[:5])} ...): "
                              "convert its .bin/.pth weights to safetensors, or pick a repository that has them")
    return chosen


def is_network_error(e: BaseException) -> bool:
    """A connection failure, whichever HTTP library huggingface_hub uses (requests, httpx, httpx2)."""
    names = {c.__name__ for c in type(e).__mro__}
    return isinstance(e, (ConnectionError, TimeoutError)) or bool(names & {"TransportError", "Timeout"})


def download(repo_id: str, out: Path, revision: str | None = None) -> list[str]:
    """Fetch the selected files of repo_id into out; return their names."""
    try:
        import huggingface_hub
        from huggingface_hub import errors as hub_errors
    except ImportError:
        raise UsageError("downloading needs the huggingface_hub package: pip install huggingface_hub") from None
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} already exists and is not an empty folder: remove it or pass another --out")
    check_output_dir(out, "--out")
    token = os.environ.get("HF_TOKEN")  # None lets huggingface_hub fall back to a saved login
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        names = huggingface_hub.HfApi().list_repo_files(repo_id, revision=revision, token=token)
        files = select_files(repo_id, names)
        for name in files:
            print(f"fetching {repo_id}/{name}", file=sys.stderr)
            huggingface_hub.hf_hub_download(repo_id, name, revision=revision, local_dir=tmp, token=token)
        shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
        os.chmod(tmp, 0o755)  # mkdtemp made it private
        if out.exists():
            out.rmdir()  # empty (checked above); os.replace needs the name free
        os.replace(tmp, out)
        return files
    except hub_errors.GatedRepoError:
        raise UsageError(f"{repo_id} is gated: accept its license on huggingface.co, then set HF_TOKEN") from None
    except hub_errors.RepositoryNotFoundError:
        raise UsageError(f"{repo_id} not found on the Hugging Face hub: check the name "
                         "(private repositories need HF_TOKEN)") from None
    except hub_errors.RevisionNotFoundError:
        raise UsageError(f"revision {revision!r} of {repo_id} not found") from None
    except hub_errors.HfHubHTTPError as e:
        raise UsageError(f"the Hugging Face hub refused the download of {repo_id}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # offline mode (a ConnectionError), DNS or connection failures
        if isinstance(e, hub_errors.LocalEntryNotFoundError) or is_network_error(e):
            raise UsageError(f"cannot reach the Hugging Face hub ({type(e).__name__}): check the network "
                             "connection, and unset HF_HUB_OFFLINE") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful os.replace


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("repo_id", help="e.g. HuggingFaceTB/SmolLM2-360M-Instruct")
    p.add_argument("--out", type=Path, default=None, help="directory to create (default: checkpoints/REPO_ID)")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    args = one_line_errors(p).parse_args(argv)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", args.repo_id):
        raise UsageError(f"REPO_ID must look like owner/name, got {args.repo_id!r}")
    out = args.out or Path(__file__).resolve().parent.parent / "checkpoints" / args.repo_id
    files = download(args.repo_id, out, args.revision)
    print(f"wrote {len(files)} files to {out}", file=sys.stderr)


if __name__ == "__main__":
    run(main)
