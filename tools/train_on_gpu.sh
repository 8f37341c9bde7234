#!/usr/bin/env bash
# On the GPU machine, from the repo root: trains the tiny gpt-oss model (docs/tiny_model.md) and
# saves it to python/moekit/models/tiny_gpt_oss and to $OUT/tiny_gpt_oss; the log goes to
# $OUT/train.log, a JSON summary to $OUT/train_summary.json.
#   bash tools/train_on_gpu.sh [train_tiny_gpt_oss.py arguments...]
# Needs build/tiny_data/ (tokens.npy, tokenizer.json from tools/train_tokenizer.py) carried over.
# Installs moekit (tools/gpu_build.sh) if the Python cannot import it.
set -euo pipefail
OUT=${OUT:-build/tiny_train_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}

if ! $PY -c "import moekit" 2>/dev/null; then
  echo "== installing moekit (editable, tools/gpu_build.sh)"
  OUT="$OUT" PY="$PY" bash tools/gpu_build.sh
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

$PY tools/train_tiny_gpt_oss.py --also-save "$OUT/tiny_gpt_oss" --summary "$OUT/train_summary.json" "$@" \
  2>&1 | tee "$OUT/train.log"
ls -l "$OUT/tiny_gpt_oss" $([ -d python/moekit/models/tiny_gpt_oss ] && echo python/moekit/models/tiny_gpt_oss)
