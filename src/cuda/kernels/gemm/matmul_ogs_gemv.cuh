// matmul_ogs for a dense layer at decode: bf16 x of at most 8 rows times one expert's bf16
// weights [N, K] plus the bias (the attention projections of the decode step). The weights are
// the whole cost, so the kernel is built to keep DRAM busy: a warp owns one weight row at a
// time and issues the loads of up to kChunk * 32 16-byte words of it (3072 k) before using any,
// each lane reading every 32nd word so that a warp's load is 512 contiguous bytes. The x rows
// (at most 8 * K bf16) come through L1, where every warp of the SM finds them. Products add in
// fp32 per lane, then across the warp in a fixed tree: deterministic.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "../../../core/matmul_ogs_config.h"
#include "../element.cuh"
#include "matmul_ogs_params.cuh"
#include "mma.cuh"

namespace moekit::cuda {

namespace gemv {
constexpr int kWarps = 8;     // per block
constexpr int kChunk = 12;    // 16-byte words of the row in flight per lane
constexpr int kMaxRows = static_cast<int>(kGemvMaxRows);  // x rows
constexpr int kMinBlocks = 2; // resident per SM (the launch bounds cap registers to fit them)
}  // namespace gemv

// The 8 bf16 of a word as floats (exact).
__device__ __forceinline__ void bf16x8_to_float(const uint4 v, float (&f)[8]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(words[i] << 16);
    f[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
}

__global__ void __launch_bounds__(32 * gemv::kWarps, gemv::kMinBlocks) matmul_ogs_gemv_kernel(const MatmulOgsParams p) {
  using namespace gemv;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t words = p.K / 8;  // 16-byte words a row
  const int rows = static_cast<int>(p.P);
  const uint4* x = static_cast<const uint4*>(p.x);
  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + warp; n < p.N;
       n += static_cast<int64_t>(gridDim.x) * kWarps) {
    const uint4* w = static_cast<const uint4*>(p.w) + n * words;
    float acc[kMaxRows] = {};
    for (int64_t first = 0; first < words; first += 32 * kChunk) {
      uint4 wv[kChunk];
#pragma unroll
      for (int j = 0; j < kChunk; ++j) {
        const int64_t c = first + 32 * j + lane;
        wv[j] = c < words ? load_streaming<128>(w + c) : zero;
      }
#pragma unroll
      for (int j = 0; j < kChunk; ++j) {
        const int64_t c = first + 32 * j + lane;
        if (c >= words) break;  // the lane's later words lie past K too
        float wf[8];
        bf16x8_to_float(wv[j], wf);
#pragma unroll
        for (int r = 0; r < kMaxRows; ++r) {
          if (r >= rows) break;
          float xf[8];
          bf16x8_to_float(__ldg(x + r * words + c), xf);
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[r] = fmaf(wf[i], xf[i], acc[r]);
        }
      }
    }
    const float bias = p.bias ? load_float(p.bias, p.bias_bf16, n) : 0.0f;
#pragma unroll
    for (int r = 0; r < kMaxRows; ++r) {
      if (r >= rows) break;
      float v = acc[r];
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
      if (lane == r) store_float(p.out, p.out_bf16, r * p.out_cols + n, v + bias);
    }
  }
}

}  // namespace moekit::cuda
