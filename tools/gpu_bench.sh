#!/usr/bin/env bash
# One call on the GPU machine: issue 22's measurements, each into $OUT (or ./gpu_bench): the
# build, the one-token call's host time with a profiler trace (bench/host_calls.py), the layer
# beside triton_kernels in its default and batch-invariant modes (bench/moe_layer.py; the peer
# from .peers/, carried), the config sweep (bench/matmul_ogs_sweep.py), and at T = 1 .. 8 the
# layer given repacked weights beside the layer given the checkpoint layout alone, whose T <= 8
# calls take the decode kernels (where moe_decode_max_tokens ends them beside repacked weights),
# the one-token layer's eager overhead in three processes of its own (no peer timed beside it),
# and the probes of that overhead (bench/launch_cost.cu: what a launch costs the host;
# bench/host_checks.cpp: the layer's C++ before and with its launches). Carry
# build/wheels (`make gpu-wheels`) and .peers. Each step has its own time limit, so one that
# overruns leaves the others' results. PACK=1 leaves them in one tar file.
#   bash tools/gpu_bench.sh COMMIT [host] [layer] [sweep] [decode] [eager] [probes]      (default: all six)
set -uo pipefail
OUT=${OUT:-gpu_bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
commit=${1:?the commit measured: the GPU machine has no .git}
shift
steps=${*:-host layer sweep decode eager probes}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import moekit" 2>/dev/null || OUT=$OUT bash tools/gpu_build.sh || exit 1

step() {  # name, time limit (s), command...
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "== $name: exit $?, $((SECONDS - start)) s"
  tail -${TAIL:-20} "$OUT/$name.txt"
}
for s in $steps; do
  case $s in
    host) step host 120 $PY bench/host_calls.py --device cuda --calls 3000 --commit "$commit" --trace "$OUT/traces" \
            --out "$OUT/host_calls.json" ;;
    layer) TAIL=45 step layer 300 $PY bench/moe_layer.py --commit "$commit" --repacked --batch-invariant \
             --out "$OUT/moe_layer.json" ;;
    sweep) step sweep 300 $PY bench/matmul_ogs_sweep.py --commit "$commit" --out "$OUT/matmul_ogs_configs.json" ;;
    decode) step decode_repacked 100 $PY bench/moe_layer.py --commit "$commit" --repacked --tokens 1 2 3 4 5 6 7 8 \
              --out "$OUT/moe_layer_decode_repacked.json"
            step decode_checkpoint 100 $PY bench/moe_layer.py --commit "$commit" --tokens 1 2 3 4 5 6 7 8 \
              --out "$OUT/moe_layer_decode_checkpoint.json" ;;
    eager) for run in 1 2 3; do  # the one-token layer alone in a process: no peer's state beside it
             TAIL=2 step "eager_T1_$run" 100 $PY bench/moe_layer.py --commit "$commit" --repacked --tokens 1 \
               --peer-dir /nonexistent --out "$OUT/moe_layer_eager_T1_$run.json"
           done ;;
    probes) mkdir -p build
            nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I src -I include -I bench \
              bench/launch_cost.cu -o build/launch_cost || exit 1
            step launch_cost 60 build/launch_cost
            g++ -O2 -std=c++17 -DMOEKIT_WITH_CUDA=1 -I include -I src -I /usr/local/cuda/include bench/host_checks.cpp \
              build/python/libmoekit.a -o build/host_checks -L/usr/local/cuda/lib64 -lcudart_static -ldl -lrt -lpthread \
              || exit 1
            step host_checks 120 build/host_checks ;;
    *) echo "tools/gpu_bench.sh: unknown step '$s' (host, layer, sweep, decode, eager, probes)"; exit 2 ;;
  esac
done
bash tools/pack_out.sh "$OUT" gpu_bench
