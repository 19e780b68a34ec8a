#!/usr/bin/env bash
# For the replica tests (tests/replicas): Debian's PostgreSQL server binaries (initdb, pg_ctl,
# postgres). The tests start their own server in a temporary folder (as the `postgres` user when
# run as root: PostgreSQL refuses to run as root). Installs with apt-get only what is missing.
set -euo pipefail
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "[setup-postgres] installing postgresql"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq postgresql >/dev/null
# Debian's package starts a cluster of its own; the tests do not use it.
$SUDO service postgresql stop >/dev/null 2>&1 || true
