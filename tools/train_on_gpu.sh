#!/usr/bin/env bash
# On the GPU machine, from the repo root: trains the tiny gpt-oss model (docs/tiny_model.md) and
# saves it to python/moekit/models/tiny_gpt_oss and to $OUT/tiny_gpt_oss; the log goes to
# $OUT/train.log, a JSON summary to $OUT/train_summary.json.
#   PYTHONPATH=python bash tools/train_on_gpu.sh [train_tiny_gpt_oss.py arguments...]
# Needs build/tiny_data/ (tokens.npy, tokenizer.json from tools/train_tokenizer.py) carried over.
# Builds moekit's op library (CPU backend: saving quantizes on the CPU) if python/moekit lacks it.
set -euo pipefail
OUT=${OUT:-build/tiny_train_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}

if ! $PY -c "import moekit" 2>/dev/null; then
  echo "== building moekit's op library (CPU backend) into python/moekit"
  { cmake -S . -B build/train_ext -G Ninja -DMOEKIT_BUILD_PYTHON=ON -DMOEKIT_BUILD_TESTS=OFF \
      -DMOEKIT_ENABLE_CUDA=OFF -DPython3_EXECUTABLE="$($PY -c 'import sys; print(sys.executable)')" &&
    cmake --build build/train_ext -j "$(nproc)"; } > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  cp build/train_ext/python/csrc/_moekit_ops.so python/moekit/
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

$PY tools/train_tiny_gpt_oss.py --also-save "$OUT/tiny_gpt_oss" --summary "$OUT/train_summary.json" "$@" \
  2>&1 | tee "$OUT/train.log"
ls -l "$OUT/tiny_gpt_oss" $([ -d python/moekit/models/tiny_gpt_oss ] && echo python/moekit/models/tiny_gpt_oss)
