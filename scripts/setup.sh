#!/usr/bin/env bash
# Set up a fresh machine for clipforge: Debian data package, a venv, torch (CPU wheel), the package.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh   (VENV=path to override .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

# Fashion-MNIST comes from Debian (the built-in data's real images).
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "[setup] installing dataset-fashion-mnist (Debian)"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
# torch first and pinned: `torch==2.13.0` takes the CPU wheel; an open range would pull a CUDA build.
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  echo "[setup] installing torch 2.13.0 (CPU)"
  "$VENV/bin/pip" install -q --disable-pip-version-check torch==2.13.0
fi
echo "[setup] installing clipforge[test] (editable)"
"$VENV/bin/pip" install -q --disable-pip-version-check -e ".[test]"
"$VENV/bin/python" -c "import clipforge, torch, transformers; print('[setup] ok: torch', torch.__version__, '| transformers', transformers.__version__)"
