#!/usr/bin/env bash
# Creates the project's virtual environment with exactly the versions in
# requirements.lock, or (with --lock) writes that lock afresh.
#
#   scripts/setup-venv.sh [VENV]          create or update VENV (default .venv) from the lock
#   scripts/setup-venv.sh --lock [FILE]   resolve pyproject.toml's ranges (dependencies and the dev
#                                         and docs extras) in a scratch environment, newest versions
#                                         within them, and write every installed version to FILE
#                                         (default requirements.lock); `make lock` runs this
#
# lava-nc 0.10 runs on Python 3.10 only, so find a 3.10 interpreter first and
# say how to get one if there is none.
set -euo pipefail
cd "$(dirname "$0")/.."

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
    # uv can fetch a standalone 3.10 by itself; everyone else is told how.
    if command -v uv >/dev/null 2>&1; then
        echo "setup: no Python 3.10 found; fetching one with: uv python install 3.10" >&2
        uv python install 3.10 >&2 || true
    fi
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
fi

# `pip freeze` names, lower case with `-` for `_`, one a line, sorted.
names() { sed -n 's/==.*//p' | tr 'A-Z_' 'a-z-' | LC_ALL=C sort; }

if [ "${1:-}" = "--lock" ]; then
    LOCK=${2:-requirements.lock}
    SCRATCH=$(mktemp -d)
    trap 'rm -rf "$SCRATCH"' EXIT
    echo "setup: resolving pyproject.toml's ranges in a scratch environment ($SCRATCH)"
    "$PY" -m venv "$SCRATCH/venv"
    "$SCRATCH/venv/bin/python" -m pip install --quiet --upgrade pip
    "$SCRATCH/venv/bin/python" -m pip install --quiet -e ".[dev,docs]"
    {
        echo "# Every package of the environment, direct (pyproject.toml) and transitive, pip and"
        echo "# setuptools included. Written by \`make lock\` (scripts/setup-venv.sh --lock) from"
        echo "# pyproject.toml's ranges with CPython $("$PY" -c 'import platform; print(platform.python_version())')" \
             "on $(uname -s) $(uname -m); \`make setup\` installs exactly"
        echo "# these versions. Change a range in pyproject.toml, then run \`make lock\`; do not edit by hand."
        # `pip freeze`, plus what it hides as "standard library" (argparse, wsgiref)
        # although unittest2 installs argparse from PyPI; sorted as pip sorts.
        "$SCRATCH/venv/bin/python" - <<'PY'
import importlib.metadata, subprocess, sys
lines = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
                       check=True, capture_output=True, text=True).stdout.split()
lines += [f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
          if d.metadata["Name"].lower() in ("argparse", "wsgiref")]
print("\n".join(sorted(set(lines), key=lambda l: l.split("==")[0].lower())))
PY
    } > "$LOCK.tmp"
    mv "$LOCK.tmp" "$LOCK"
    echo "setup: wrote $LOCK ($(grep -vc '^#' "$LOCK") packages)"
    exit 0
fi

VENV=${1:-.venv}
LOCK=requirements.lock
[ -f "$LOCK" ] || { echo "error: $LOCK missing; run \`make lock\` to write it" >&2; exit 1; }

# An existing 3.10 environment is updated in place (pip installs only what the
# lock changed); anything else is rebuilt from scratch.
if ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then
    echo "setup: creating $VENV with $PY"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
else
    echo "setup: updating $VENV"
fi
# The lock constrains every package, pip first; anything the lock does not
# hold (left by an older lock) is removed, so the environment is the lock.
"$VENV/bin/python" -m pip install --quiet -c "$LOCK" pip
"$VENV/bin/python" -m pip install --quiet -c "$LOCK" -e ".[dev,docs]"
extra=$(LC_ALL=C comm -23 <("$VENV/bin/python" -m pip freeze --all --exclude-editable | names) \
                          <(grep -v '^#' "$LOCK" | names))
if [ -n "$extra" ]; then
    echo "setup: removing packages the lock does not hold:" $extra
    "$VENV/bin/python" -m pip uninstall --quiet -y $extra
fi
touch "$VENV/.installed"
echo "setup: environment ready in $VENV ($(du -sh "$VENV" | cut -f1))"
