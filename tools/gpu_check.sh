#!/usr/bin/env bash
# On the GPU machine: build the CUDA extension, run every test (CPU and GPU), the sanitizers on
# the GPU tests, and the main job on the GPU. Logs go to $OUT (or ./gpu_logs; PACK=1: as one tar
# file there, tools/pack_out.sh). Each half can run alone, in a ten-minute call of its own:
# `tests` (the build and every test: ~4 minutes after the build on an H100, 2026-12-05) or
# `sanitizers` (the build, the sanitizers and the main job).
#   bash tools/gpu_check.sh [tests | sanitizers]        (TESTS="paths..." narrows the pytest run)
set -uo pipefail
OUT=${OUT:-gpu_logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/tests/python"
PY=${PY:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

mode=${1:-all}
case $mode in
  all | tests | sanitizers) ;;
  *) echo "tools/gpu_check.sh: '$mode' is not tests or sanitizers"; exit 2 ;;
esac

echo "== build"
bash tools/gpu_build.sh || exit 1

if [ "$mode" != sanitizers ]; then
  echo "== pytest (all)"
  # In JOBS processes side by side (pytest-xdist, from the carried build/wheels): one after another
  # the tests take ~50 minutes on an H100, five times a call's limit.
  if ! $PY -c "import xdist" 2>/dev/null; then
    $PY -m pip install -q --no-deps --no-index --find-links build/wheels -r requirements-parallel-tests.txt || {
      echo "moekit: pytest-xdist is not installed and build/wheels lacks it: run \`make gpu-wheels\` and carry build/wheels"
      exit 1
    }
  fi
  # Each process gets its share of the cores for torch's CPU pool: twelve processes of sixteen
  # threads each on sixteen cores left an H100 run at 95% after ten minutes. Work stealing keeps the
  # slow tests (the training example's, ~2 minutes each) from queueing behind one process.
  # The files whose module-scoped fixtures are dear (the bad-input matrix runs every case in a
  # process of its own, per device; the generate tests build a model) run in one process of their
  # own beside the others: under xdist each worker that drew one of their tests built them again.
  # -v: the log names each test as it ends, so a run the call's limit cuts short still says which ran.
  JOBS=${JOBS:-8}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}
  run_pytest() {  # log name, pytest arguments...
    local name=$1
    shift
    $PY -m pytest -v -rs -p no:cacheprovider --junitxml="$OUT/$name.xml" "$@" > "$OUT/$name.log" 2>&1
  }
  if [ -n "${TESTS:-}" ]; then
    ONE=() REST=($TESTS)
  else
    ONE=(tests/python/test_bad_input_matrix.py tests/python/test_gpt_oss.py tests/python/test_cuda_generate.py
         tests/python/test_generate_torchrun.py)
    REST=(tests/python tests/multigpu); for f in "${ONE[@]}"; do REST+=(--ignore "$f"); done
  fi
  [ ${#ONE[@]} -gt 0 ] && { run_pytest pytest_one --durations=20 "${ONE[@]}" & }
  run_pytest pytest --durations=40 -n "$(( ${#ONE[@]} > 0 ? JOBS - 1 : JOBS ))" --dist worksteal "${REST[@]}"
  tail -15 "$OUT/pytest.log"
  if [ ${#ONE[@]} -gt 0 ]; then
    wait
    echo "== pytest (${ONE[*]##*/}, one process)"
    tail -5 "$OUT/pytest_one.log"
  fi
fi

if [ "$mode" != tests ]; then
  echo "== compute-sanitizer"
  SUB=(tests/python/test_cuda_ops.py tests/python/test_cuda_matmul_kernels.py
       -k "mxfp4_roundtrip or plain or 7-32-4 or 128-32-4 or 1000-1-1 or ties or extreme or bad_gather or (scatter and mxfp4) or swapab_edges or every_config_forced or repacked")
  # The decode step's kernels, the MoE layer's decode path among them.
  DECODE=(tests/python/test_decode_ops.py tests/python/test_cuda_moe_decode.py -k "gpu or gpt_oss_shapes or scales or dtypes")
  # Under the sanitizers the profiler (CUPTI) does not start: tests that assert which kernels ran
  # fail there on that assertion alone; the sanitizer's ERROR / RACECHECK SUMMARY is the verdict.
  for tool in memcheck racecheck; do
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool $tool --error-exitcode 99 --print-limit 20 \
      $PY -m pytest -q -p no:cacheprovider "${SUB[@]}" > "$OUT/sanitizer_$tool.log" 2>&1
    echo "$tool: exit $? ; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|passed|failed' "$OUT/sanitizer_$tool.log" | tail -3 | tr '\n' ' ')"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool $tool --error-exitcode 99 --print-limit 20 \
      $PY -m pytest -q -p no:cacheprovider "${DECODE[@]}" > "$OUT/sanitizer_decode_$tool.log" 2>&1
    echo "$tool (decode): exit $? ; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|passed|failed' "$OUT/sanitizer_decode_$tool.log" | tail -3 | tr '\n' ' ')"
  done
  # The bad-input matrix under memcheck, its cases one after another in one process (the pytest
  # run above ran each in its own).
  (cd tests/python && PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --print-limit 20 \
    $PY bad_inputs.py --device cuda --in-process) > "$OUT/sanitizer_matrix.log" 2>&1
  echo "matrix memcheck: exit $? ; $(grep -c '"id"' "$OUT/sanitizer_matrix.log") cases;" \
    "$(grep -h 'ERROR SUMMARY' "$OUT/sanitizer_matrix.log" | sort | uniq -c | tr '\n' ' ')"
  echo "== main job on the GPU"
  $PY -m moekit.demo --device cuda 2>&1 | tee "$OUT/demo.log"
fi
bash tools/pack_out.sh "$OUT" gpu_check
