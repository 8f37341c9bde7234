set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/python:$PWD/tests/python"
cmake -S . -B build/gpu -G Ninja -DMOEKIT_BUILD_PYTHON=ON -DMOEKIT_BUILD_TESTS=OFF -DMOEKIT_ENABLE_CUDA=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython3_EXECUTABLE=$(command -v python3) > $OUT/build.log 2>&1 && cmake --build build/gpu -j 16 >> $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
cp build/gpu/python/csrc/_moekit_ops.so python/moekit/
gcc --version | head -1; python3 --version
echo "== errors alone"; python3 -X faulthandler -m pytest -q -p no:cacheprovider tests/python/test_errors.py 2>&1 | tail -3
echo "== sequence under cuda-gdb"
cuda-gdb -batch -ex "set pagination off" -ex run -ex bt -ex "info threads" --args python3 -X faulthandler -m pytest -q -p no:cacheprovider tests/python/test_cuda_ops.py tests/python/test_cuda_device_rules.py tests/python/test_mxfp4.py tests/python/test_route.py tests/python/test_matmul_ogs.py tests/python/test_moe_mlp.py tests/python/test_custom_ops.py tests/python/test_errors.py > $OUT/gdb.log 2>&1
grep -nE "SIGSEGV|^#[0-9]+ " $OUT/gdb.log | head -40; tail -5 $OUT/gdb.log
