#!/usr/bin/env bash
# Builds the separate venv in which benchmarks/rl_step.py runs TRL's GRPOTrainer (the torch CPU baseline).
#
#     bash benchmarks/setup_trl_venv.sh [VENV_DIR]    # default: $TOKJAX_CACHE/trl-venv (else ~/.cache/tokjax/trl-venv)
#
# Kept apart from the project's .venv: recent TRL releases pull a CUDA torch and transformers 5.
# Pins that work together on CPU (checked with Python 3.11): torch 2.13.0 (the +cpu wheel where the
# local wheel directory or index has it), transformers 4.57 (< 5; trl 0.19.1 predates transformers 5),
# accelerate, datasets, gguf (transformers' GGUF loader), and trl 0.19.1 installed with --no-deps so it
# cannot pull another torch / transformers; what trl imports at module level is in the list above.
# Resolved and run here: torch 2.13.0+cpu, transformers 4.57.6, accelerate 1.16.0, datasets 5.0.1,
# gguf 0.19.0, numpy 2.4.6, trl 0.19.1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-${TOKJAX_CACHE:-$HOME/.cache/tokjax}/trl-venv}"
PY="${PYTHON:-python3.11}"

if ! command -v "$PY" >/dev/null 2>&1; then
    echo "needs $PY (set PYTHON=... to another 3.10-3.12 interpreter)" >&2
    exit 1
fi
"$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
# the CPU wheel: from a local wheel directory / extra index when there is one, else PyTorch's CPU index
if ! "$PIP" install -q "torch==2.13.0"; then
    "$PIP" install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi
"$PIP" install -q "transformers>=4.57,<5" accelerate datasets gguf
"$PIP" install -q --no-deps "trl==0.19.1"
"$VENV/bin/python" -c "import torch, transformers, trl; from trl import GRPOConfig, GRPOTrainer; \
print('ok: torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"
echo "TRL venv ready: $VENV/bin/python (benchmarks/rl_step.py finds it there, or pass --trl-python)"
