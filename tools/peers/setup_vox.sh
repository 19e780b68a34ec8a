#!/usr/bin/env bash
# Create the isolated virtualenv that runs the CPU peer engine vox-tts for `q3tts bench --peer vox-tts`.
#
#   tools/peers/setup_vox.sh         # idempotent; a second run returns at once
#
# Environment:
#   Q3TTS_PEER_VOX_VENV     venv location, relative to the repo root (default .peer-venv-vox)
#   Q3TTS_PEER_VOX_PYTHON   interpreter used to create it (default python3.11, else python3); the
#                           vox-tts 0.19.5 wheels are built for CPython 3.9-3.13 on x86-64 / aarch64
#   Q3TTS_PEER_VOX_FORCE=1  reinstall even if the marker says the venv is complete
#
# Why it looks like this:
# * vox-tts is a C++ engine with a Python module; it and its converter (`python -m vox build`)
#   need only numpy, so no torch goes in (its `tools` extra, which pulls torch and qwen-tts, is
#   only for its own reference checks).
# * It is never installed into q3tts' own environment: the bench runs it in its own process with
#   this venv's Python (q3tts/bench_peer_vox.py), so its peak RSS is its own.
# * The marker stores the requirement spec; changing the spec below triggers a reinstall.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${Q3TTS_PEER_VOX_VENV:-.peer-venv-vox}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
MARKER="$VENV/.q3tts-peer-complete"

REQS=("vox-tts==0.19.5" "numpy")
SPEC="v1 ${REQS[*]}"

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$SPEC" && "${Q3TTS_PEER_VOX_FORCE:-0}" != 1 ]]; then
  echo "[peer vox] venv ready: $VENV"
  exit 0
fi

step() { echo "[peer vox] $(date +%H:%M:%S) $*"; }
START=$SECONDS

PY="${Q3TTS_PEER_VOX_PYTHON:-}"
if [[ -z "$PY" ]]; then
  if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi

rm -f "$MARKER"
if [[ ! -x "$VENV/bin/python" ]]; then
  step "creating venv $VENV with $("$PY" --version 2>&1)"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
step "installing ${REQS[*]}"
# pip warns once per package about local index folders that lack it; that noise hides real errors.
"$VPY" -m pip install --disable-pip-version-check --no-input -q "${REQS[@]}" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

step "checking the install"
"$VPY" -c 'import vox, vox.build; vox.devices(); print("[peer vox] vox", vox.__version__)'

"$VPY" -m pip freeze --disable-pip-version-check > "$VENV/q3tts-freeze.txt"
echo "$SPEC" > "$MARKER"
step "done in $((SECONDS - START)) s: $VENV"
