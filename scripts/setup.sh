#!/usr/bin/env bash
# Installs what the project needs from its own files.
#   bash scripts/setup.sh         app dependencies
#   bash scripts/setup.sh --dev   plus test dependencies and headless Chromium (browser test)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# torch first: on a machine without an NVIDIA GPU, the pinned CPU build (a plain 'torch'
# would pull gigabytes of CUDA packages). With a GPU, the default (CUDA) build.
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install "torch>=2.3"
  else
    "$PY" -m pip install torch==2.13.0
  fi
fi

if [ "${1:-}" = "--dev" ]; then
  "$PY" -m pip install -r requirements-dev.txt
  if [ ! -x /usr/bin/chromium ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
else
  "$PY" -m pip install -r requirements.txt
fi
