// What the C++ probes stream: every block of the grid reads its share of `words` 16-byte words
// with 8 loads in flight a thread (streaming loads that ask L2 for whole lines), and returns their
// xor, which keeps the loads alive.
#pragma once

#include <cstdint>

#include "cuda/kernels/gemm/mma.cuh"

__device__ __forceinline__ uint32_t stream_share(const uint4* w, int64_t words) {
  constexpr int kInFlight = 8;
  const int64_t begin = words * blockIdx.x / gridDim.x, end = words * (blockIdx.x + 1) / gridDim.x;
  uint32_t sum = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kInFlight * blockDim.x) {
    uint4 v[kInFlight];
#pragma unroll
    for (int j = 0; j < kInFlight; ++j) {
      const int64_t at = i + j * blockDim.x;
      v[j] = at < end ? moekit::cuda::load_streaming<128>(w + at) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int j = 0; j < kInFlight; ++j) sum ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w;
  }
  return sum;
}
