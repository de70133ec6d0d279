# Shared by the scripts that make the tests' Python environments (moto-venv.sh, gcp-venv.sh): sourced,
# never run. An environment holds exactly the pins its script names; a stamp file records them, so a
# changed pin rebuilds it and an unchanged one costs nothing.

# venv_current VENV PIN...: VENV's Python runs and its stamp holds exactly these pins.
venv_current() {
  local venv=$1
  shift
  [ -x "$venv/bin/python" ] && [ -f "$venv/.stele-pins" ] \
    && [ "$(cat "$venv/.stele-pins")" = "$(printf '%s\n' "$@")" ] && "$venv/bin/python" -c '' 2>/dev/null
}

# venv_create WHO VENV PIN...: creates VENV afresh with these pins (unstamped: the caller checks what it
# needs, then calls venv_stamp). Installs Debian's python3 / python3-venv when `python3 -m venv` cannot
# work (Debian splits venv's pip bootstrap, ensurepip, into python3-venv; without it `-m venv` fails
# halfway). $PYTHON picks the interpreter.
venv_create() {
  local who=$1 venv=$2
  shift 2
  local python=${PYTHON:-python3} need=()
  if ! command -v "$python" >/dev/null; then
    need+=(python3 python3-venv)
  elif ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    need+=(python3-venv)
  fi
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >&2
  fi
  echo "$who: creating $venv with $*" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" >&2
}

# venv_stamp VENV PIN...: records the pins VENV now holds.
venv_stamp() {
  local venv=$1
  shift
  printf '%s\n' "$@" > "$venv/.stele-pins"
}
