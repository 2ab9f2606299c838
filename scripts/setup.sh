#!/usr/bin/env bash
# Create .venv and install everything embdim needs on a CPU machine (see ../shared/docs/DEPENDENCIES.md).
# Safe to run again: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)

"${PIP[@]}" --upgrade pip
# CPU torch first and pinned: an unpinned torch pulls the CUDA build with several GB of packages.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[dev,onnx]"
# TorchRec CPU stack: torchrec's metadata asks for the CUDA fbgemm-gpu, so install it without deps.
"${PIP[@]}" "fbgemm-gpu-cpu==1.8.0" "tensordict==0.15.3" "pyre-extensions==0.0.32"
"${PIP[@]}" --no-deps "torchrec==1.8.0"
.venv/bin/python -c "import torch, torchrec, embdim; print('embdim ready: torch', torch.__version__, 'torchrec', torchrec.__version__)"
