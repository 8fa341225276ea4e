#!/usr/bin/env bash
# Installs the headless browser the report test opens the demo's page in
# (Debian's chromium). `make browser` runs this, and `make test` runs that,
# so the test itself only tests. Does nothing when chromium is already here.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "setup-browser: chromium is missing and this is not root: install it with" >&2
    echo "    sudo apt-get install --no-install-recommends chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt_install=(apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=600 chromium)
# A fresh machine has no package lists yet.
"${apt_install[@]}" || { apt-get update -o DPkg::Lock::Timeout=600 && "${apt_install[@]}"; }
command -v chromium >/dev/null
