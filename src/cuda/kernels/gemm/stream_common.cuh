// What the weight-streaming kernels (matmul_ogs_stream*.cuh) share: a work item is 16 output
// columns (weight rows, the MMA's M) x a tile of 8 * NT tokens of one expert (the MMA's N), and
// the warps of its block each hold partial sums of the whole item in mma.sync's accumulator
// layout, which are added in a fixed order (deterministic).
#pragma once

#include <cstdint>

#include "../activation/swiglu.cuh"
#include "../element.cuh"
#include "matmul_ogs_params.cuh"

namespace moekit::cuda::stream {

constexpr int kCols = 16;  // output columns per work item

template <int BM>
using Partial = float[kCols][BM + 1];

// The x row of this lane's token in each 8-token group (token row_begin + 8i + g), given the
// gathered index (or the row itself): -1 for no token, -2 for an index outside [0, M).
template <int NT>
__device__ __forceinline__ void token_sources(const MatmulOgsParams& p, int64_t row_begin, int64_t row_end, int g,
                                              const int32_t (&gathered)[NT], int64_t (&src)[NT]) {
#pragma unroll
  for (int i = 0; i < NT; ++i) {
    src[i] = -1;
    if (row_begin + i * 8 + g < row_end) src[i] = gathered[i] < 0 || gathered[i] >= p.M ? -2 : gathered[i];
  }
}

// The end of an item: each warp's acc[i] holds (column g, tokens 8i + 2t and 8i + 2t + 1) and
// (column g + 8, the same tokens); they are summed over warps in order, the bias added, SwiGLU
// applied over column pairs, and the outputs stored. `partial` is shared memory no warp reads
// or writes until this returns; it returns after a barrier.
template <int NT, int kWarps>
__device__ __forceinline__ void finish_item(const MatmulOgsParams& p, Partial<8 * NT>* partial,
                                            const float (&acc)[NT][4], int e, int64_t row_begin, int64_t row_end,
                                            int64_t n0) {
  constexpr int BM = 8 * NT, kThreads = 32 * kWarps;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int i = 0; i < NT; ++i) {
    partial[warp][g][i * 8 + 2 * t] = acc[i][0];
    partial[warp][g][i * 8 + 2 * t + 1] = acc[i][1];
    partial[warp][g + 8][i * 8 + 2 * t] = acc[i][2];
    partial[warp][g + 8][i * 8 + 2 * t + 1] = acc[i][3];
  }
  __syncthreads();
  auto column = [&](int c, int token) {
    float h = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) h += partial[w][c][token];
    if (p.bias) h += load_float(p.bias, p.bias_bf16, static_cast<int64_t>(e) * p.N + n0 + c);
    return h;
  };
  if (p.swiglu) {  // column pairs (glu, linear); N is even
    for (int v = threadIdx.x; v < BM * kCols / 2; v += kThreads) {
      const int token = v / (kCols / 2), c = 2 * (v % (kCols / 2));
      const int64_t row = row_begin + token, n = n0 + c;
      if (row < row_end && n < p.N) {
        store_float(p.out, p.out_bf16, row * p.out_cols + n / 2,
                    swiglu(column(c, token), column(c + 1, token), p.alpha, p.limit));
      }
    }
  } else {
    for (int v = threadIdx.x; v < BM * kCols; v += kThreads) {
      const int token = v / kCols, c = v % kCols;
      const int64_t row = row_begin + token, n = n0 + c;
      if (row < row_end && n < p.N) store_float(p.out, p.out_bf16, row * p.out_cols + n, column(c, token));
    }
  }
  __syncthreads();  // `partial` may be reused
}

}  // namespace moekit::cuda::stream
