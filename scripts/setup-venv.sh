#!/usr/bin/env bash
# Creates the project's virtual environment. lava-nc 0.10 runs on Python 3.10
# only, so find a 3.10 interpreter first and say how to get one if there is none.
set -euo pipefail
VENV=${1:-.venv}

find_python310() {
    local candidates=()
    command -v python3.10 >/dev/null 2>&1 && candidates+=("$(command -v python3.10)")
    if command -v pyenv >/dev/null 2>&1; then
        local root; root=$(pyenv root)
        for p in "$root"/versions/3.10*/bin/python3.10; do candidates+=("$p"); done
    fi
    for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10; do candidates+=("$p"); done
    if command -v uv >/dev/null 2>&1; then
        local found; found=$(uv python find 3.10 2>/dev/null || true)
        [ -n "$found" ] && candidates+=("$found")
    fi
    for p in "${candidates[@]}"; do
        if [ -x "$p" ] && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then
            echo "$p"; return 0
        fi
    done
    return 1
}

if ! PY=$(find_python310); then
    cat >&2 <<'MSG'
error: Python 3.10 not found (lava-nc 0.10 and lava-dl 0.6 run on 3.10 only).
Install one of these, then run the command again:
  pyenv install 3.10.13          (https://github.com/pyenv/pyenv)
  uv python install 3.10         (https://docs.astral.sh/uv/)
  apt-get install python3.10 python3.10-venv
MSG
    exit 1
fi

# An existing 3.10 environment is updated in place (pip installs only what the
# pins changed); anything else is rebuilt from scratch.
if ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then
    echo "setup: creating $VENV with $PY"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
else
    echo "setup: updating $VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e ".[dev]"
touch "$VENV/.installed"
echo "setup: environment ready in $VENV ($(du -sh "$VENV" | cut -f1))"
