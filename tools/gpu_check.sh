#!/usr/bin/env bash
# The GPU check (tools/gpu_check.py has the details): on a CUDA machine, within 8 minutes,
#   fixed-shape / CUDA-graph steps == eager steps (greedy codes), engine and scheduler;
#   0.6b and 1.7b random checkpoints in bf16: engine batch 1 and 8, scheduler at 1, 8, 32 streams;
#   one JSON (--out, default gpu_check.json) and a short table.
#
#   tools/gpu_check.sh [--out $OUT/gpu_check.json] [gpu_check.py flags]
#   tools/gpu_check.sh --device cpu --preset tiny          # CPU, seconds: what the tests run
#   tools/gpu_check.sh --fetch-wheels [DIR]                # on a machine with pip access: wheels to carry
#
# Set-up, in seconds and without a network: no venv and no install. The Python is $PYTHON, else the
# first of .venv/bin/python, python3, python that imports torch; q3tts is imported from this checkout
# (PYTHONPATH). Packages q3tts needs that are missing there (a CUDA image often lacks soundfile and
# soxr) are installed with pip --no-index from the wheels in $Q3TTS_WHEELS (default .whl/, which git
# ignores) into a scratch folder put on PYTHONPATH. `--fetch-wheels` downloads those wheels, for
# CPython 3.12 on x86-64 Linux (override with Q3TTS_WHEEL_PYTHON=3.11 and so on).
set -u
cd "$(dirname "$0")/.."
NEEDED="soundfile soxr cffi pycparser"  # what q3tts needs beyond torch, numpy, safetensors, tokenizers, huggingface_hub

if [ "${1:-}" = "--fetch-wheels" ]; then
  dir=${2:-.whl}
  py=${PYTHON:-python3}
  version=${Q3TTS_WHEEL_PYTHON:-3.12}
  platforms=""
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms="$platforms --platform $p"
  done
  for name in $NEEDED; do
    # shellcheck disable=SC2086
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
      $platforms -d "$dir" "$name" || { echo "gpu_check: could not download a wheel of $name" >&2; exit 1; }
  done
  ls "$dir"
  exit 0
fi

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in .venv/bin/python python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch" >/dev/null 2>&1; then
      PY=$candidate
      break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "gpu_check: error: no Python with torch found (set PYTHON=...)" >&2
  exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

missing() {
  "$PY" - "$@" <<'PYCODE'
import importlib.util, sys
print(" ".join(name for name in sys.argv[1:] if importlib.util.find_spec(name) is None))
PYCODE
}
absent=$(missing numpy safetensors tokenizers huggingface_hub soundfile soxr)
if [ -n "$absent" ]; then
  wheels=${Q3TTS_WHEELS:-.whl}
  site=${Q3TTS_GPU_CHECK_SITE:-/tmp/q3tts-gpu-check-site}
  if ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "gpu_check: installing $absent from $wheels into $site" >&2
    "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$site" \
      "$wheels"/*.whl >&2 || echo "gpu_check: warning: pip install from $wheels failed" >&2
    export PYTHONPATH="$PYTHONPATH:$site"
    absent=$(missing numpy safetensors tokenizers huggingface_hub soundfile soxr)
  fi
  if [ -n "$absent" ]; then  # the driver still runs: its environment part records the import error
    echo "gpu_check: warning: missing Python packages: $absent (bring wheels: tools/gpu_check.sh --fetch-wheels)" >&2
  fi
fi
exec timeout --kill-after=10 "${Q3TTS_GPU_CHECK_TIMEOUT:-600}" "$PY" tools/gpu_check.py "$@"
