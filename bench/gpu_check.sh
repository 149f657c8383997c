#!/usr/bin/env bash
# The GPU checks of the scale work, as one prepared script (under 10 minutes on one GPU):
#   1. the GPU tests (pytest -m gpu: every path on CUDA, every registered editor, bf16 edit and
#      rollback bitwise);
#   2. bench/scale_memory.py --device cuda: the Llama-2-7B shape (bf16, rank 1920), one edit,
#      one batched edit of 10 and one meta-training step, peak CUDA memory and time, against
#      edit-plan;
#   3. bench/gpu_sidecar.py --num-gpus 1: a 1B Llama-architecture model loaded as
#      `edit-serve --num-gpus 1` loads it; Edit, Generate, Rollback, restart over gRPC.
# Without CUDA it says so and exits 0 (the CPU figures of bench/scale_memory.py stand).
#
# It runs from the source tree with the machine's own Python (PYTHON, default python3), which must
# have torch with CUDA, transformers, grpcio, protobuf, typer, pytest and tqdm. Missing pure-Python
# packages (datasets, dill, multiprocess, safetensors, ...) can be put as wheels in .whl/; they are
# installed into /tmp/site first. Results go to $OUT (default bench/results): JSON, PNG, logs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=packages/graddecomp/src:packages/edit-data/src:packages/editor-nets/src:packages/edit-serve/src${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "[gpu_check] no CUDA device here: nothing to check (the CPU measurements stand)"
    exit 0
fi
"$PY" -c "import torch; print('[gpu_check]', torch.__version__, torch.cuda.get_device_name(0))"
status=0
run() {  # run NAME TIMEOUT CMD...: log to $OUT/NAME.log, remember a failure, go on
    local name=$1 limit=$2; shift 2
    echo "[gpu_check] == $name"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tr '\r' '\n' | grep -a -v 'it/s\]$' | tail -25
    local rc=${PIPESTATUS[0]}
    echo "[gpu_check] $name: exit $rc in $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || status=1
}
run gpu_tests 240 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/editor_nets/test_gpu.py
run scale_memory_gpu 300 "$PY" bench/scale_memory.py --device cuda --out "$OUT/scale_memory_gpu.json"
run gpu_sidecar 240 "$PY" bench/gpu_sidecar.py --num-gpus 1 --out "$OUT/gpu_sidecar.json"
echo "[gpu_check] done (exit $status)"
exit $status
