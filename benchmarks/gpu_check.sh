#!/usr/bin/env bash
# The CUDA path proven on a bare GPU machine, in one run of a few minutes.
#
#   bash benchmarks/gpu_check.sh [--wheels STASH] [--steps A,B,...] OUTDIR   # on the GPU machine
#   bash benchmarks/gpu_check.sh --device cpu [...] OUTDIR                     # a dry run on a CPU
#
# Nothing is installed into the machine's own Python: dlkit runs from this tree (PYTHONPATH),
# with python3 or $PYTHON. With --wheels STASH (the wheels benchmarks/carry_wheels.py carried
# there: tritonserver, tritonclient, numpy < 2, onnxruntime-gpu), the first step installs them
# with `pip install --no-index --no-deps` into a virtual environment over the machine's packages
# (benchmarks/install_wheels.sh), and every later step runs in it. Steps: environment (nvidia-smi,
# versions, which packages and toolkit modules import), `dlkit train` on CUDA with AMP fp16,
# `dlkit eval` of that checkpoint on the CPU with CUDA hidden, the out-of-memory message,
# `pytest -m cuda`, `dlkit deploy --device cuda --no-smoke-test`, benchmarks/amp_training.py,
# benchmarks/gpu_serving.py (package --device cuda, dlkit serve on the GPU, bench --url at
# concurrency 1, 4, 16, 64 against the in-process ceiling, a short dlkit tune --device cuda),
# benchmarks/cuda_variants.py (torch and ONNX Runtime variants). --steps runs only the named
# ones (in this order). Each runs under `timeout`, clipped to an overall deadline
# (GPU_CHECK_SECONDS, default 400 s), with its log kept; a failure is recorded and the next step
# runs. Everything is packed into one archive, OUTDIR/gpu_check.tar.gz (rewritten after every
# step, so a run cut short returns what it did), next to OUTDIR/gpu_check_summary.md; the
# summary table is printed last. The dry run hides torchao (benchmarks/hide_modules), as the GPU
# machine lacks it.
set -u -o pipefail

DEVICE=cuda WHEELS="" STEPS=""
while [[ $# -gt 1 ]]; do
    case $1 in
        --device) DEVICE=${2:?--device needs cuda or cpu} ;;
        --wheels) WHEELS=${2:?--wheels needs the folder the wheels were stashed in} ;;
        --steps) STEPS=${2:?--steps needs a comma-separated list} ;;
        *) break ;;
    esac
    shift 2
done
if [[ $# -ne 1 || ! $DEVICE =~ ^(cuda|cpu)$ || $1 == -* ]]; then
    echo "usage: $0 [--device cuda|cpu] [--wheels STASH] [--steps A,B,...] OUTDIR" >&2
    exit 2
fi
mkdir -p "$1"
OUTDIR=$(cd "$1" && pwd)
if [[ -n $WHEELS ]]; then
    WHEELS=$(cd "$WHEELS" && pwd) || exit 2
    export WHEELS
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRATCH=$(mktemp -d)
export DEVICE REPO WORK="$SCRATCH/gpu_check" PYTHON=${PYTHON:-python3}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
DEADLINE=$(($(date +%s) + ${GPU_CHECK_SECONDS:-400}))
mkdir -p "$WORK/logs"
: > "$WORK/steps.tsv"
cd "$REPO" || exit 2

# Argument lists of the steps (split on whitespace): full sizes on CUDA, tiny ones on a CPU.
if [[ $DEVICE == cuda ]]; then
    export TRAIN_ARGS="--amp fp16 --epochs 3" AMP_ARGS="" VARIANT_ARGS="" DEPLOY_ARGS=""
    export SERVING_ARGS=${SERVING_ARGS:-}  # e.g. "--format torchscript" without onnxruntime-gpu
else
    export PYTHONPATH="$REPO/benchmarks/hide_modules:$PYTHONPATH"
    export DLKIT_HIDE_MODULES=torchao
    export TRAIN_ARGS="--model simplenet --image-size 16 --amp bf16 --epochs 1"
    export AMP_ARGS="--quick --model smallresnet" DEPLOY_ARGS="--batch-sizes 1"
    export VARIANT_ARGS="--quick --model simplenet --image-size 16
        --variants eager-fp32,eager-amp-cl,torchscript,compile,onnx-fp32"
    export SERVING_ARGS="--quick --levels 1,4 --duration 1 --tune-minutes 0.2"
fi
export VENV=${VENV:-/tmp/dlkit-venv}  # kept while the machine is warm: a rerun reuses it

install_step() { bash benchmarks/install_wheels.sh install "$WHEELS" "$VENV"; }

environment_step() {
    { nvidia-smi || echo "nvidia-smi is not available"; } > "$WORK/nvidia-smi.txt" 2>&1
    "$PYTHON" benchmarks/gpu_check.py environment "$WORK"
}
train_step() {
    # shellcheck disable=SC2086  # word splitting of the argument lists is wanted
    "$PYTHON" -m toolkit train --device "$DEVICE" $TRAIN_ARGS --out "$WORK/train" --json \
        > "$WORK/train.json"
}
eval_step() {  # a checkpoint trained on the GPU must load where there is none
    CUDA_VISIBLE_DEVICES="" "$PYTHON" -m toolkit eval "$WORK/train/best.pt" --device cpu --json \
        > "$WORK/eval_cpu.json"
}
oom_step() { "$PYTHON" benchmarks/gpu_check.py oom "$WORK" --device "$DEVICE"; }
pytest_step() {  # only the modules with cuda tests
    "$PYTHON" -m pytest -p no:cacheprovider -m cuda -q --durations 10 tests/test_cuda.py \
        tests/test_bench.py tests/test_onnx_cuda.py tests/test_pinned.py \
        tests/test_package_gpu.py "$@"
}
amp_step() {
    # shellcheck disable=SC2086
    "$PYTHON" benchmarks/amp_training.py --device "$DEVICE" $AMP_ARGS --out "$WORK/amp_training"
}
variants_step() {
    # shellcheck disable=SC2086
    "$PYTHON" benchmarks/cuda_variants.py --device "$DEVICE" $VARIANT_ARGS \
        --out "$WORK/cuda_variants"
}
serving_step() {
    # shellcheck disable=SC2086
    "$PYTHON" benchmarks/gpu_serving.py --device "$DEVICE" $SERVING_ARGS --out "$WORK/serving"
}
deploy_step() {
    # shellcheck disable=SC2086
    "$PYTHON" -m toolkit deploy "$WORK/train/best.pt" --device "$DEVICE" --no-smoke-test \
        $DEPLOY_ARGS --out "$WORK/deploy" --repo "$WORK/deploy/model_repository" --json \
        > "$WORK/deploy.json"
}
export -f install_step environment_step train_step eval_step oom_step pytest_step amp_step \
    variants_step serving_step deploy_step

pack() {  # the archive, rewritten whole: a run cut short still returns what it did
    tar -czf "$OUTDIR/gpu_check.tar.gz.part" -C "$SCRATCH" gpu_check \
        && mv "$OUTDIR/gpu_check.tar.gz.part" "$OUTDIR/gpu_check.tar.gz"
}
trap 'pack; exit 130' INT TERM

wanted() {  # whether --steps asks for step $1 (the install, and a rerun of a step, always are)
    local name=${1%_warnings_allowed}
    [[ -z $STEPS || $name == install_wheels || ,$STEPS, == *,$name,* ]]
}

step() {  # step NAME LIMIT_SECONDS FUNCTION [ARGS...]: run it, log it, record how it ended
    local name=$1 limit=$2 left=$((DEADLINE - $(date +%s)))
    shift 2
    if ! wanted "$name"; then
        return
    fi
    ((limit > left)) && limit=$left
    if ((limit < 10)); then
        printf '%s\tnot run\t0\t-\n' "$name" >> "$WORK/steps.tsv"
        echo "== $name: not run, the time budget is spent"
        return
    fi
    echo "== $name (at most ${limit}s)"
    local start status rc
    start=$(date +%s.%N)
    timeout -k 5 "$limit" bash -c '"$@"' _ "$@" > "$WORK/logs/$name.log" 2>&1 < /dev/null
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status="timed out" ;;
        *) status=failed ;;
    esac
    local seconds
    seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$seconds" "$rc" >> "$WORK/steps.tsv"
    echo "   $status (exit $rc) in ${seconds}s"
    pack
}

if [[ -n $WHEELS ]]; then
    step install_wheels 120 install_step
    if grep -q $'^install_wheels\tok' "$WORK/steps.tsv"; then
        export PYTHON=$VENV/bin/python  # every later step runs with what was carried
    fi
fi
step environment 45 environment_step
step train 75 train_step
step eval_cpu 45 eval_step
step oom 60 oom_step
step pytest_cuda 150 pytest_step --junitxml "$WORK/pytest_cuda.xml"
step deploy 90 deploy_step
step amp_training 100 amp_step
step serving 240 serving_step
# Last, as it keeps what it measured when cut short (its sweeps are ordered for that).
step cuda_variants 210 variants_step
if grep -q $'^pytest_cuda\tfailed' "$WORK/steps.tsv"; then
    # Which failures are only warnings turned into errors (pyproject's filterwarnings)?
    step pytest_cuda_warnings_allowed 120 pytest_step -W default \
        --junitxml "$WORK/pytest_cuda_warnings_allowed.xml"
fi

"$PYTHON" benchmarks/gpu_check.py summary "$WORK" > "$WORK/logs/summary.log" 2>&1
pack
cp "$WORK/summary.md" "$OUTDIR/gpu_check_summary.md" 2> /dev/null
echo "archive: $OUTDIR/gpu_check.tar.gz ($(du -h "$OUTDIR/gpu_check.tar.gz" | cut -f1))"
cat "$WORK/summary.txt" 2> /dev/null || { cat "$WORK/logs/summary.log"; cat "$WORK/steps.tsv"; }
rm -rf "$SCRATCH"
