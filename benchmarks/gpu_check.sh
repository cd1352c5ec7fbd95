#!/usr/bin/env bash
# Every device measurement of round five in one call (benchmarks/README.md, "Round five: GPU").
#
#   bash benchmarks/gpu_check.sh            # on the lent GPU: writes under $OUT
#   DEVICE=cpu MODEL=ovseg-test-tiny IMAGES=4 SIZES="1 2" GRAPHS= STEPS=4 BUDGET=1500 \
#       OUT=/tmp/gpu-out bash benchmarks/gpu_check.sh   # the same steps on a CPU, tiny
#       (fp16 steps then fail: fp16 is CUDA only)
#
# Steps, most important first, each bounded by what is left of BUDGET seconds; a failing
# step does not stop the next. Wheels missing on the device (.gpu/whl) are installed into
# /tmp/site; the official fixture is read from .gpu/fixtures/official-tiny (both carried).
set -u
OUT=${OUT:-/tmp/gpu-out}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-ovseg-swinB-vitL14}
IMAGES=${IMAGES:-64}
SIZES=${SIZES:-"1 8 16 32"}
BUDGET=${BUDGET:-540}
FIXTURE=${FIXTURE:-.gpu/fixtures/official-tiny}
PY=${PY:-python3}
STEPS=${STEPS:-40}  # fp16 / bf16 / fp32 training steps of the AMP check
GRAPHS=${GRAPHS-graphs}  # empty: no CUDA graphs (a CPU run)
mkdir -p "$OUT"
LOG="$OUT/log.txt"
START=$(date +%s)
if [ -d .gpu/whl ] && [ "$DEVICE" = cuda ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .gpu/whl/*.whl >>"$LOG" 2>&1
    export PYTHONPATH="$PWD:/tmp/site"
else
    export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1 OVSEG_HOME=${OVSEG_HOME:-/tmp/ovseg-home}
{ nvidia-smi 2>&1 | head -20; uptime; nproc; } >>"$LOG"

step() {  # step NAME LIMIT_S COMMAND...: run within min(LIMIT, time left - 5 s)
    local name=$1 limit=$2 left
    shift 2
    left=$((START + BUDGET - $(date +%s) - 5))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then
        echo "== $name skipped: ${left}s left" | tee -a "$LOG"
        return
    fi
    echo "== $name (limit ${limit}s) at $(($(date +%s) - START))s: $*" | tee -a "$LOG"
    timeout "$limit" "$@" >>"$LOG" 2>&1
    echo "== $name rc=$? at $(($(date +%s) - START))s" | tee -a "$LOG"
}

step check 150 $PY benchmarks/gpu_check.py --device "$DEVICE" --fixture "$FIXTURE" \
    --steps "$STEPS" --json "$OUT/check.json"
# shellcheck disable=SC2086
step throughput 220 $PY benchmarks/throughput.py --model "$MODEL" --device "$DEVICE" \
    --variants "bf16${GRAPHS:++graphs}" "fp16${GRAPHS:++graphs}@1,${SIZES##* }" bf16@1 \
    "bf16${GRAPHS:++graphs}+unfused@1,${SIZES##* }" \
    --batch-sizes $SIZES --images "$IMAGES" \
    --json "$OUT/throughput.json"
for dtype in bf16 fp16; do
    step "latency-$dtype" 120 $PY benchmarks/latency.py --model "$MODEL" --device "$DEVICE" \
        --dtype $dtype ${GRAPHS:+--cuda-graphs} --repeats 5 --warmup 2 --top-k 0 \
        --json "$OUT/latency-$dtype.json"
done
# last: a compile may be long
step compile 300 $PY benchmarks/throughput.py --model "$MODEL" --device "$DEVICE" \
    --variants "bf16${GRAPHS:++graphs}+compile@${SIZES##* }" --images "$IMAGES" \
    --json "$OUT/throughput-compile.json"
echo "== done at $(($(date +%s) - START))s" | tee -a "$LOG"
tail -c 3000 "$LOG" | grep -E "^== |Error|error" | tail -20
