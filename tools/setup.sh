#!/usr/bin/env bash
# Set up a fresh machine: a venv at .venv with torch 2.13.0 (installed first, so nothing pulls a
# CUDA build) and q3tts installed editable with the extras given as arguments (e.g. dev).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${Q3TTS_VENV:-.venv}
PY=${PYTHON:-python3}
extras=$(IFS=,; echo "$*")
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==2.13.0" > "$constraints"
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  echo "[setup] installing torch==2.13.0"
  "$VENV/bin/pip" install -q torch==2.13.0
fi
echo "[setup] installing q3tts${extras:+[$extras]}"
"$VENV/bin/pip" install -q -c "$constraints" -e ".${extras:+[$extras]}"
"$VENV/bin/python" -c "import q3tts" || { echo "[setup] q3tts failed to install" >&2; exit 1; }
