#!/usr/bin/env bash
# Builds moekit with its CUDA backend and installs it, editable, into the GPU machine's Python:
# the same build as `make install` (pip -e through scikit-build-core into build/python), so
# Python files come from python/moekit and nothing is copied into the source tree.
set -euo pipefail
OUT=${OUT:-gpu_logs}
mkdir -p "$OUT"
PY=${PY:-python3}
# CuTe's headers (requirements-headers.txt): the GPU machine is offline, so the wheel comes
# carried in build/wheels (`make gpu-wheels` puts it there).
if ! $PY -c "import importlib.util as u; assert u.find_spec('cutlass_library')" 2>/dev/null; then
  $PY -m pip install -q --no-deps --no-index --find-links build/wheels -r requirements-headers.txt || {
    echo "moekit: requirements-headers.txt's packages are not installed and build/wheels lacks their wheels:" \
         "run \`make gpu-wheels\` and carry build/wheels"
    exit 1
  }
fi
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) $PY -m pip install -v --no-build-isolation --no-deps -e . \
  -Ccmake.define.MOEKIT_ENABLE_CUDA=ON > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
$PY -c "import moekit, torch; assert torch._C._dispatch_has_kernel_for_dispatch_key('moekit::moe_mlp', 'CUDA')"
