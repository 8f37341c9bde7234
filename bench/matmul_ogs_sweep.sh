#!/usr/bin/env bash
# Every MXFP4 matmul_ogs config forced on mlp1 and mlp2 of the issue-22 rows (E = 32 and 128,
# T = 8 ... 8192), one bench/matmul_ogs_configs run each, into one text file with the GPU, driver
# and commit on top. Needs a CUDA GPU, and the library built (`make install`) or the binary
# built elsewhere and copied to build/mb (a GPU machine without the build).
#
#   bash bench/matmul_ogs_sweep.sh [out file]   (default: bench/results/matmul_ogs_configs_<GPU>.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=build/mb/matmul_ogs_configs
mkdir -p build/mb
if [ -f build/python/libmoekit.a ]; then
  g++ -O2 -std=c++17 -I include -I /usr/local/cuda/include bench/matmul_ogs_configs.cpp build/python/libmoekit.a \
      -L /usr/local/cuda/lib64 -lcudart -lpthread -o "$bin"
fi
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
out=${1:-bench/results/matmul_ogs_configs_$(echo "$gpu" | grep -oE 'H[0-9]+|A[0-9]+|B[0-9]+' | head -1).txt}
configs=stream8,stream16,stream32,tiled64,wgmma128,swapab16,swapab32,swapab64,swapab128
{
  echo "# $gpu, driver $(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)," \
       "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src include || echo '+changes'), $(date -u +%F)"
  echo "# bench/matmul_ogs_sweep.sh: each config forced (bench/matmul_ogs_configs.cpp), median of a 20-call graph"
  for E in 32 128; do
    for T in 8 32 128 512 2048 8192; do
      for mlp in 1 2; do
        "$bin" --experts "$E" --tokens "$T" --mlp "$mlp" --configs "$configs"
      done
    done
  done
} | tee "$out"
