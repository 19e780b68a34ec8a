#!/usr/bin/env bash
# For the evaluation tests (tests/test_eval.py): Debian's espeak-ng, which speaks the real sentences
# the metrics are checked on. Installs with apt-get only what is missing; a no-op otherwise.
set -euo pipefail
command -v espeak-ng >/dev/null 2>&1 && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "[setup-eval] installing espeak-ng"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq espeak-ng >/dev/null
