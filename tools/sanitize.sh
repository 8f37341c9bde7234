#!/usr/bin/env bash
# The sanitizer stage of CI: the CPU backend, the gtest suite and the torch extension built with
# AddressSanitizer and UndefinedBehaviorSanitizer (build/sanitize), then the gtest suite, the
# bad-input matrix and the property test run under them. Any report stops the run (ASan halts on
# its first error; UBSan is built not to recover), so passing means 0 reports.
# Usage: bash tools/sanitize.sh [PYTHON]   (default .venv/bin/python, with torch installed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute, symlinks kept (a venv's python is one)
B=build/sanitize

cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOEKIT_SANITIZE=ON -DMOEKIT_ENABLE_CUDA=OFF \
  -DMOEKIT_BUILD_TESTS=ON -DMOEKIT_BUILD_PYTHON=ON -DPython3_EXECUTABLE="$PY" >/dev/null
cmake --build "$B"

export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# Leaks: the gtest suite is checked; Python and torch keep what they allocate until exit.
ASAN_OPTIONS=detect_leaks=1 "$B/tests/cpp/moekit_tests" --gtest_brief=1

# The package's sources with the instrumented op library beside them. Python runs with -S (no
# site initialisation), so the editable install's import hook stays out and this copy is the one
# imported; the environment's packages come from its site-packages on PYTHONPATH.
site="$PWD/$B/site"
rm -rf "$site"
mkdir -p "$site/moekit"
cp python/moekit/*.py "$B/python/csrc/_moekit_ops.so" "$B"/python/csrc/_eager.*.so "$site/moekit/"
ln -s "$PWD/python/moekit/models" "$site/moekit/models"
packages=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export ASAN_OPTIONS=detect_leaks=0 PYTHONPATH="$site:$packages"
export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)"
"$PY" -S -c 'import moekit, sys; assert moekit.__file__.startswith(sys.argv[1]), moekit.__file__' "$site"
"$PY" -S -m pytest -q -p no:cacheprovider tests/python/test_bad_input_matrix.py tests/python/test_properties.py
