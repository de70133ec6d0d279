#!/usr/bin/env bash
# Creates .venv-gcp/ at the repository root: a Python virtual environment with google-api-python-client,
# pinned, for the Compute Engine v1 discovery document it ships
# (googleapiclient/discovery_cache/documents/compute.v1.json). tests/gcp/fake.py, the loopback Compute
# Engine fake the `gcp` provider tests run against, loads that document and validates every request with it.
# Idempotent: when the environment already holds exactly these pins it only prints the path.
# Installs Debian's python3 / python3-venv when needed (scripts/venv-lib.sh).
# Prints the path of the discovery document on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv-lib.sh

# Bump together; the stamp makes a changed pin rebuild the environment.
PINS=("google-api-python-client==2.202.0")
VENV=.venv-gcp
DOC_OF='import importlib.util, pathlib; s = importlib.util.find_spec("googleapiclient"); print(pathlib.Path(s.origin).parent / "discovery_cache/documents/compute.v1.json")'

if venv_current "$VENV" "${PINS[@]}"; then
  doc="$("$VENV/bin/python" -c "$DOC_OF" 2>/dev/null || true)"
  if [ -n "$doc" ] && [ -f "$doc" ]; then
    echo "$doc"
    exit 0
  fi
fi
venv_create gcp-venv "$VENV" "${PINS[@]}"
doc="$("$VENV/bin/python" -c "$DOC_OF")"
[ -f "$doc" ] || { echo "gcp-venv: the compute v1 discovery document is missing after install: $doc" >&2; exit 1; }
venv_stamp "$VENV" "${PINS[@]}"
echo "$doc"
