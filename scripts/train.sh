#!/usr/bin/env bash
# The main job: set up, then run `edit-train` (no arguments = the built-in synthetic
# default, fully offline). Extra arguments are passed to edit-train.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/edit-train "$@"
