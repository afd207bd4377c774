#!/usr/bin/env bash
# ruff and mypy over the project. mypy does not run the editable-install
# import hook, so it checks a symlinked view that has the real import names.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv/bin
if git grep -nE '^(<<<<<<< |>>>>>>> |=======$)' -- . ':!*.svg' >/dev/null 2>&1; then
    git grep -nE '^(<<<<<<< |>>>>>>> |=======$)' -- . ':!*.svg' >&2
    echo "lint: merge-conflict markers left in tracked files" >&2
    exit 1
fi
dirs=$(for d in daemon policy fencing sim tests bench scripts; do [ -d "$d" ] && echo "$d"; done)
# shellcheck disable=SC2086
$V/ruff check --quiet $dirs
view=.mypy-src/clever_cluster
mkdir -p "$view"
for pkg in daemon policy fencing sim; do
    ln -sfn "../../$pkg" "$view/$pkg"
done
MYPYPATH=.mypy-src $V/mypy --no-error-summary -p clever_cluster.daemon -p clever_cluster.policy -p clever_cluster.fencing -p clever_cluster.sim
echo "lint: ruff and mypy clean"
