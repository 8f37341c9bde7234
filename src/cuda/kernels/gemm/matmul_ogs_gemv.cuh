// matmul_ogs for a few rows of bf16 x against one dense bf16 weight without gather or scatter: a
// decode step's attention projections (torch's Linear at batch 1), where streaming the weight is
// the whole cost. Block b takes a contiguous run of weight rows and asks the copy engine for all
// of them (as many as its shared memory holds, one bulk copy and one barrier a row) before it
// waits for the kernel that wrote x: the weights depend on no earlier kernel, so when the kernels
// before it let it start early (programmatic dependent launch, grid_dependency.cuh), its weights
// arrive while they run, and what is left after the wait is x and the arithmetic. Rows past the
// shared memory are read from global memory after the wait.
// A warp takes two rows at a time: lane l multiplies words l, l + 32, ... of each row (8 bf16)
// with the x rows' words in float32 FMAs (exact bf16 products), and the warp sums the lanes.
// A row's sum is the same operations for any number of x rows, so a token's outputs do not
// depend on the tokens beside it.
#pragma once

#include <cstdint>

#include "../../../core/matmul_ogs_config.h"
#include "../bulk_copy.cuh"
#include "../element.cuh"
#include "../grid_dependency.cuh"
#include "matmul_ogs_params.cuh"
#include "mma.cuh"

namespace moekit::cuda {

__global__ void __launch_bounds__(32 * kGemvWarps, 1) matmul_ogs_gemv_kernel(const MatmulOgsParams p) {
#if MOEKIT_BULK_COPY
  extern __shared__ __align__(128) uint4 gemv_smem[];
  uint64_t* landed = reinterpret_cast<uint64_t*>(gemv_smem);  // [kGemvMaxSharedRows]: a row's copy
  const int64_t words = p.K / 8, stride = words + 1;         // a row of the weight, in shared memory
  uint4* w_shared = gemv_smem + kGemvHeaderBytes / 16;        // [p.gemv_shared_rows][stride]
  uint4* x_shared = w_shared + p.gemv_shared_rows * stride;   // [M][words]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;

  const int64_t row_begin = p.N * blockIdx.x / gridDim.x, rows = p.N * (blockIdx.x + 1) / gridDim.x - row_begin;
  const int64_t in_shared = min(rows, p.gemv_shared_rows);
  const uint4* w = static_cast<const uint4*>(p.w) + row_begin * words;
  const uint32_t row_bytes = static_cast<uint32_t>(words * 16);
  // Each warp asks for the rows it multiplies (2 * warp and 2 * warp + 1 of every 2 * kGemvWarps)
  // and waits only on their barriers.
  if (lane == 0) {
    auto for_my_rows = [&](auto&& f) {
      for (int64_t r0 = 2 * warp; r0 < in_shared; r0 += 2 * kGemvWarps) {
        for (int64_t r = r0; r < min(r0 + 2, in_shared); ++r) f(r);
      }
    };
    for_my_rows([&](int64_t r) { barrier_init(landed + r, 1); });
    barrier_init_fence();
    for_my_rows([&](int64_t r) {
      barrier_arrive_expect(landed + r, row_bytes);
      bulk_copy(w_shared + r * stride, w + r * words, row_bytes, landed + r);
    });
  }

  wait_for_previous_grid();
  let_next_grid_start();
  const int M = static_cast<int>(p.M);
  const uint4* x = static_cast<const uint4*>(p.x);
  for (int64_t i = threadIdx.x; i < M * words; i += blockDim.x) x_shared[i] = x[i];
  __syncthreads();  // x, and the barriers' initialisation, for every warp

  for (int64_t r0 = 2 * warp; r0 < rows; r0 += 2 * kGemvWarps) {
    const int n_rows = rows - r0 >= 2 ? 2 : 1;
    const uint4* src[2];
    bool global[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int64_t r = min(r0 + j, rows - 1);  // a lone last row is read twice, stored once
      global[j] = r >= in_shared;
      if (!global[j]) barrier_wait(landed + r, 0);
      src[j] = global[j] ? w + r * words : w_shared + r * stride;
    }
    float acc[2][kGemvMaxRows] = {};
    for (int64_t i = lane; i < words; i += 32) {
      float wf[2][8];
#pragma unroll
      for (int j = 0; j < 2; ++j) bf16x8_to_floats(global[j] ? load_streaming(src[j] + i) : src[j][i], wf[j]);
#pragma unroll
      for (int t = 0; t < kGemvMaxRows; ++t) {
        if (t >= M) break;
        float xf[8];
        bf16x8_to_floats(x_shared[t * words + i], xf);
#pragma unroll
        for (int j = 0; j < 2; ++j) {
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[j][t] = fmaf(wf[j][e], xf[e], acc[j][t]);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      if (j >= n_rows) break;
      const int64_t row = row_begin + r0 + j;
#pragma unroll
      for (int t = 0; t < kGemvMaxRows; ++t) {
        if (t >= M) break;
        float v = acc[j][t];
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
        if (lane == t) {
          if (p.bias) v += load_float(p.bias, p.bias_bf16, row);
          store_float(p.out, p.out_bf16, t * p.out_cols + row, v);
        }
      }
    }
  }
#else
  __trap();  // chosen on sm_90 only (choose_matmul_ogs_kernel)
#endif
}

}  // namespace moekit::cuda
