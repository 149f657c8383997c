#!/usr/bin/env bash
# The test suite: set up, lint, then pytest. Extra arguments go to pytest.
# pytest's exit code 5 ("no tests collected") is treated as a failure on purpose:
# this suite always has tests, so collecting none means something is broken.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check packages tests bench scripts
exec .venv/bin/python -m pytest "$@"
