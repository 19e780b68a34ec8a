#!/usr/bin/env bash
# Create the isolated virtualenv that runs the official `qwen-tts` package, our test oracle.
#
#   tools/oracle/setup.sh            # idempotent; a second run returns in about a second
#
# Environment:
#   Q3TTS_ORACLE_VENV        venv location, relative to the repo root (default .oracle-venv)
#   Q3TTS_ORACLE_PYTHON      interpreter used to create it (default python3.11, else python3)
#   Q3TTS_ORACLE_TORCH_ARGS  extra pip args for the torch step only, e.g.
#                            "--index-url https://download.pytorch.org/whl/cpu" on a machine
#                            without the local CPU wheel
#   Q3TTS_ORACLE_FORCE=1     reinstall even if the marker says the venv is complete
#
# Why it looks like this:
# * torch==2.13.0 goes in FIRST and every later step runs under a constraints file pinning it.
#   Any unpinned torch requirement (accelerate, qwen-tts' torchaudio) otherwise pulls a newer
#   CUDA torch: gigabytes.
# * qwen-tts is installed with --no-deps: its metadata drags in gradio, torchaudio, sox and
#   onnxruntime. The 12 Hz path needs none of them; only the unused 25 Hz tokenizer imports
#   sox/onnxruntime/torchaudio at package import, and tools/oracle/reference.py stubs those.
# * einops is tiny and is imported eagerly (25 Hz VQ module), so it is installed, not stubbed.
# * The marker stores the requirement spec; changing the spec below triggers a reinstall.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${Q3TTS_ORACLE_VENV:-.oracle-venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
MARKER="$VENV/.q3tts-oracle-complete"

TORCH_PIN="torch==2.13.0"
REQS=(
  "qwen-tts==0.1.1"          # installed --no-deps, see above
  "transformers==4.57.3"     # qwen-tts pin; 5.x breaks its import
  "accelerate==1.12.0"       # qwen-tts pin
  "huggingface_hub==0.36.2"  # newest that transformers 4.57.3 accepts (<1.0)
  "librosa==0.11.0"          # mel filterbank, load, resample
  "soundfile==0.14.0"
  "safetensors==0.8.0"
  "einops==0.8.2"
  "numpy"
)
SPEC="v1 $TORCH_PIN ${REQS[*]} ${Q3TTS_ORACLE_TORCH_ARGS:-}"

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$SPEC" && "${Q3TTS_ORACLE_FORCE:-0}" != 1 ]]; then
  echo "[oracle] venv ready: $VENV"
  exit 0
fi

step() { echo "[oracle] $(date +%H:%M:%S) $*"; }
START=$SECONDS

PY="${Q3TTS_ORACLE_PYTHON:-}"
if [[ -z "$PY" ]]; then
  if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || { echo "[oracle] error: $PY is older than 3.10" >&2; exit 1; }

rm -f "$MARKER"
if [[ ! -x "$VENV/bin/python" ]]; then
  step "creating venv $VENV with $("$PY" --version 2>&1)"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check --no-input -q)
# pip warns once per package about local index folders that lack it; that noise hides real errors.
pip_install() {
  "${PIP[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

CONSTRAINTS="$VENV/q3tts-constraints.txt"
echo "$TORCH_PIN" > "$CONSTRAINTS"

step "installing $TORCH_PIN"
# shellcheck disable=SC2086  # word splitting of the optional extra args is intended
pip_install "$TORCH_PIN" ${Q3TTS_ORACLE_TORCH_ARGS:-}

step "installing ${REQS[*]:1}"
pip_install -c "$CONSTRAINTS" "${REQS[@]:1}"

# Last, so pip's resolver never sees (and complains about) the dependencies we leave out.
step "installing ${REQS[0]} (--no-deps)"
pip_install -c "$CONSTRAINTS" --no-deps "${REQS[0]}"

step "checking the install"
"$VPY" - <<'PY'
import importlib.metadata as md, sys
torch_version = md.version("torch")
assert torch_version.startswith("2.13.0"), f"torch {torch_version} got installed, expected 2.13.0"
for banned in ("torchaudio", "sox", "onnxruntime", "gradio"):
    try:
        md.version(banned)
    except md.PackageNotFoundError:
        continue
    sys.exit(f"{banned} is installed but must not be (it is stubbed by reference.py)")
PY
"$VPY" "$ROOT/tools/oracle/reference.py" --selftest

"$VPY" -m pip freeze --disable-pip-version-check > "$VENV/q3tts-freeze.txt"
echo "$SPEC" > "$MARKER"
step "done in $((SECONDS - START)) s: $VENV"
