#!/usr/bin/env bash
# Builds the CUDA extension on the GPU machine into python/moekit (the first step of gpu_check.sh).
set -euo pipefail
OUT=${OUT:-gpu_logs}
mkdir -p "$OUT"
PY=${PY:-python3}
cmake -S . -B build/gpu -G Ninja -DMOEKIT_BUILD_PYTHON=ON -DMOEKIT_BUILD_TESTS=OFF -DMOEKIT_ENABLE_CUDA=ON \
  -DPython3_EXECUTABLE="$(command -v $PY)" > "$OUT/build.log" 2>&1 &&
  cmake --build build/gpu -j 16 >> "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
cp build/gpu/python/csrc/_moekit_ops.so python/moekit/
