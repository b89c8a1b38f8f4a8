#!/usr/bin/env bash
# Create the virtual environment if missing and install the pinned dependencies into it.
# The CPU build of torch where there is no GPU (always in CI), the CUDA build where there is one;
# SEEMRL_TORCH=cpu|gpu overrides the detection.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=2.13.0

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "seemrl needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip)

if [ -z "${SEEMRL_TORCH:-}" ]; then
  if [ -z "${CI:-}" ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    SEEMRL_TORCH=gpu
  else
    SEEMRL_TORCH=cpu
  fi
fi
echo "installing seemrl with the ${SEEMRL_TORCH} build of torch into ${VENV}"

case "$SEEMRL_TORCH" in
  cpu)
    # torch first and alone, so nothing later can pull the CUDA build: a local wheel (pip's
    # find-links) if there is one, otherwise PyTorch's CPU index.
    "${pip[@]}" install "torch==${TORCH_VERSION}+cpu" \
      || "${pip[@]}" install "torch==${TORCH_VERSION}+cpu" --index-url https://download.pytorch.org/whl/cpu
    requirements=envs/requirements-cpu.txt
    ;;
  gpu) requirements=envs/requirements-gpu.txt ;;
  *) echo "SEEMRL_TORCH must be cpu or gpu, got '$SEEMRL_TORCH'" >&2; exit 1 ;;
esac
"${pip[@]}" install -r "$requirements"
"${pip[@]}" install --no-deps --no-build-isolation -e . 2>/dev/null || "${pip[@]}" install --no-deps -e .
