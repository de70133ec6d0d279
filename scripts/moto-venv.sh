#!/usr/bin/env bash
# Creates .venv-moto/ at the repository root: a Python virtual environment with moto's server (the AWS API
# emulator the `aws` provider tests run on loopback) and boto3 (for tests/aws/fixture.py), both pinned.
# Idempotent: when the environment already holds exactly these pins it only prints the path.
# Installs Debian's python3 / python3-venv when needed (scripts/venv-lib.sh).
# Prints the path of moto_server on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv-lib.sh

# Bump these together; the stamp makes a changed pin rebuild the environment.
PINS=("moto[server]==5.2.5" "boto3==1.44.5")
VENV=.venv-moto

if venv_current "$VENV" "${PINS[@]}" && [ -x "$VENV/bin/moto_server" ]; then
  echo "$PWD/$VENV/bin/moto_server"
  exit 0
fi
venv_create moto-venv "$VENV" "${PINS[@]}"
"$VENV/bin/python" -c 'import moto, boto3' >&2
[ -x "$VENV/bin/moto_server" ] || { echo "moto-venv: $VENV/bin/moto_server missing after install" >&2; exit 1; }
venv_stamp "$VENV" "${PINS[@]}"
echo "$PWD/$VENV/bin/moto_server"
