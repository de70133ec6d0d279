#!/usr/bin/env bash
# Creates .venv-gcp/ at the repository root: a Python virtual environment with google-api-python-client,
# pinned, for the Compute Engine v1 discovery document it ships
# (googleapiclient/discovery_cache/documents/compute.v1.json). tests/gcp/fake.py, the loopback Compute
# Engine fake the `gcp` provider tests run against, loads that document and validates every request with it.
# Idempotent: when the environment already holds exactly these pins it only prints the path.
# Installs Debian's python3 / python3-venv when `python3 -m venv` cannot work (same pattern as moto-venv.sh).
# Prints the path of the discovery document on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

# Bump together; the stamp below makes a changed pin rebuild the environment.
PINS=("google-api-python-client==2.202.0")
VENV=.venv-gcp
STAMP="$VENV/.stele-pins"
PYTHON=${PYTHON:-python3}
DOC_OF='import importlib.util, pathlib; s = importlib.util.find_spec("googleapiclient"); print(pathlib.Path(s.origin).parent / "discovery_cache/documents/compute.v1.json")'

want="$(printf '%s\n' "${PINS[@]}")"
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  doc="$("$VENV/bin/python" -c "$DOC_OF" 2>/dev/null || true)"
  if [ -n "$doc" ] && [ -f "$doc" ]; then
    echo "$doc"
    exit 0
  fi
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

echo "gcp-venv: creating $VENV with ${PINS[*]}" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}" >&2
doc="$("$VENV/bin/python" -c "$DOC_OF")"
[ -f "$doc" ] || { echo "gcp-venv: the compute v1 discovery document is missing after install: $doc" >&2; exit 1; }
printf '%s\n' "$want" > "$STAMP"
echo "$doc"
