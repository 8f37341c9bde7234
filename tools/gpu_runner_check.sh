#!/usr/bin/env bash
# On the GPU machine after tools/gpu_check.sh has built the extension: the shipped model on one
# GPU (three prompts) and on two torchrun processes sharing it (gloo). Logs under $OUT.
set -uo pipefail
OUT=${OUT:-gpu_logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
for prompt in "The old man walked into the city and" "A computer is a machine that" "Love is"; do
  $PY -m moekit.generate --device cuda:0 --no-progress --max-new-tokens 64 --prompt "$prompt" 2>&1 | tee -a "$OUT/generate.log"
done
$PY -m torch.distributed.run --standalone --nproc-per-node 2 -m moekit.generate --device cuda:0 --backend gloo \
  --no-progress --max-new-tokens 64 2>&1 | grep -v "^W1\|\*\*\*" | tee -a "$OUT/generate.log"
