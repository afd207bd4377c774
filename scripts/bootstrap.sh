#!/usr/bin/env bash
# Make this checkout runnable on a fresh Debian 12 machine: install the Debian
# packages listed in scripts/apt-packages.txt that are missing, then create
# .venv and install the project (editable) with its test extra.
# Idempotent and quiet when there is nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

say() { printf 'bootstrap: %s\n' "$*"; }

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "need Python >= 3.11 as '$PYTHON' (set PYTHON=...)" >&2
    exit 1
fi

missing=()
while read -r pkg _; do
    case "$pkg" in ''|'#'*) continue ;; esac
    case "$pkg" in
        # A pyenv or self-built interpreter brings its own headers and ensurepip.
        python3-dev)  "$PYTHON" -c 'import sysconfig,os,sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"],"Python.h")))' && continue ;;
        python3-venv) "$PYTHON" -c 'import ensurepip' 2>/dev/null && continue ;;
    esac
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done < scripts/apt-packages.txt

if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        say "missing Debian packages: ${missing[*]}; run as root or install them" >&2
        exit 1
    fi
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Packages such as prometheus (wanted for promtool only) start their server from the
    # sysvinit postinst when systemd is not PID 1. A policy-rc.d that denies every start
    # keeps the machine free of such daemons; one already in place is left alone.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rebuild the venv's install when pyproject.toml changes.
stamp="$VENV/.clever-cluster-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing the project and its test extra into $VENV"
    log="$VENV/pip-install.log"
    if ! { "$VENV/bin/python" -m pip install --upgrade pip && "$VENV/bin/python" -m pip install -e '.[test]'; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        say "pip install failed; full log in $log" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
