#!/usr/bin/env bash
# Creates .venv-moto/ at the repository root: a Python virtual environment with moto's server (the AWS API
# emulator the `aws` provider tests run on loopback) and boto3 (for tests/aws/fixture.py), both pinned.
# Idempotent: when the environment already holds exactly these pins it only prints the path.
# Installs Debian's python3 / python3-venv when `python3 -m venv` cannot work (same pattern as scripts/test.sh).
# Prints the path of moto_server on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

# Bump these together; the stamp below makes a changed pin rebuild the environment.
PINS=("moto[server]==5.2.5" "boto3==1.44.5")
VENV=.venv-moto
STAMP="$VENV/.stele-pins"
PYTHON=${PYTHON:-python3}

want="$(printf '%s\n' "${PINS[@]}")"
if [ -x "$VENV/bin/moto_server" ] && [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] \
   && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c '' 2>/dev/null; then
  echo "$PWD/$VENV/bin/moto_server"
  exit 0
fi

# Debian splits venv's pip bootstrap (ensurepip) into python3-venv; without it `-m venv` fails halfway.
need=()
if ! command -v "$PYTHON" >/dev/null; then
  need+=(python3 python3-venv)
elif ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
  need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >&2
fi

echo "moto-venv: creating $VENV with ${PINS[*]}" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}" >&2
"$VENV/bin/python" -c 'import moto, boto3' >&2
[ -x "$VENV/bin/moto_server" ] || { echo "moto-venv: $VENV/bin/moto_server missing after install" >&2; exit 1; }
printf '%s\n' "$want" > "$STAMP"
echo "$PWD/$VENV/bin/moto_server"
