#!/usr/bin/env bash
# Make the virtual environment for the llm-compressor peer (scripts/benchmarks/peer_llmcompressor.py).
#
# llm-compressor 0.14 pins transformers >=5.15,<=5.17 (older than the main venv's), so it gets a venv of its own,
# out/venvs/llmcompressor (out/ is git-ignored). torch==2.13.0 goes in FIRST, from the CPU build this machine
# keeps on local disk (pip's find-links), so that llm-compressor's `torch>=2.10,<=2.14.0` is already met and pip
# does not pull a multi-GB CUDA build; then `llmcompressor==0.14.*` and whatever it resolves, in this venv only.
#
# Idempotent: does nothing when the venv's python can already `import llmcompressor`.
# Usage, from anywhere:  bash scripts/benchmarks/setup_llmcompressor_venv.sh   (VENV=... to put it elsewhere)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$ROOT/out/venvs/llmcompressor}"
PY="$VENV/bin/python"

if [ -x "$PY" ] && "$PY" -c "import llmcompressor" >/dev/null 2>&1; then
    echo "llm-compressor venv ready: $VENV ($("$PY" -c 'import llmcompressor, torch, transformers; print("llmcompressor", llmcompressor.__version__, "torch", torch.__version__, "transformers", transformers.__version__)' 2>/dev/null | tail -n 1))"
    exit 0
fi

mkdir -p "$(dirname "$VENV")"
[ -x "$PY" ] || python3 -m venv "$VENV"
# torch first: the CPU build (a bare torch requirement would resolve to the CUDA build from PyPI). Here pip's
# find-links holds torch-2.13.0+cpu; where it does not, pass the CPU wheel index in TORCH_PIP_ARGS.
"$PY" -m pip install ${TORCH_PIP_ARGS:-} "torch==2.13.0"
CHECK_TORCH="import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else 'torch is ' + v)"
"$PY" -c "$CHECK_TORCH"
"$PY" -m pip install "llmcompressor==0.14.*"
"$PY" -c "$CHECK_TORCH"  # llm-compressor (torch>=2.10,<=2.14.0) must not have swapped torch
"$PY" -c "import llmcompressor, torch, transformers; print('llm-compressor venv made:', '$VENV', 'llmcompressor', llmcompressor.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
