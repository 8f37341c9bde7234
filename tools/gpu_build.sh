#!/usr/bin/env bash
# Builds moekit with its CUDA backend and installs it, editable, into the GPU machine's Python:
# the same build as `make install` (pip -e through scikit-build-core into build/python), so
# Python files come from python/moekit and nothing is copied into the source tree.
set -euo pipefail
OUT=${OUT:-gpu_logs}
mkdir -p "$OUT"
PY=${PY:-python3}
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) $PY -m pip install -v --no-build-isolation --no-deps -e . \
  -Ccmake.define.MOEKIT_ENABLE_CUDA=ON > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
$PY -c "import moekit, torch; assert torch._C._dispatch_has_kernel_for_dispatch_key('moekit::moe_mlp', 'CUDA')"
