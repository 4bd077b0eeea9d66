#!/usr/bin/env bash
# Install sarsteer-guard into .venv (CPU torch, pinned first) and run lint, types and tests.
# This is the README's test command; .ci/run calls it after installing system packages.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
# Pin torch before anything that depends on it, or pip resolves a multi-GB CUDA build.
"$VPY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
packages=(-e '.[dev]')
for dir in integrations/*/; do
  if [ -f "$dir/pyproject.toml" ]; then packages+=(-e "$dir"); fi
done
"$VPY" -m pip install -q --disable-pip-version-check "${packages[@]}"

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest "$@"
