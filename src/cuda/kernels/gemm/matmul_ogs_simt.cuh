// matmul_ogs, portable version: one 64x64 output tile of one expert per block, fp32 FMA on
// CUDA cores, weights (float, bf16 or MXFP4) decoded to float in shared memory. Each block
// finds its (expert, row tile) from expert_offsets, so the grid is sized from shapes alone
// (no host sync). Output: rows of the grouped problem, with bias and optional SwiGLU.
//
// kTransposed: matmul_ogs_backward's product u[r] = x[r] W[e] (x holds rows of N, the gradient at
// h; out takes float32 rows of K): the reduction runs over the weight rows, a block's 64 columns
// over K.
#pragma once

#include <cstdint>

#include "../../../core/mxfp4.h"
#include "../element.cuh"
#include "matmul_ogs_params.cuh"
#include "tile_io.cuh"
#include "tile_locate.cuh"

namespace moekit::cuda {

namespace simt {
constexpr int kBM = 64, kBN = 64, kBK = 32, kThreads = 256;
}

template <class XT, WeightKind WK, bool kTransposed>
__global__ void __launch_bounds__(simt::kThreads) matmul_ogs_simt_kernel(const MatmulOgsParams p) {
  using namespace simt;
  int e;
  int64_t row_begin, row_end;
  if (!locate_tile<kBM>(p, e, row_begin, row_end)) return;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN;
  const int64_t red = kTransposed ? p.N : p.K;  // the reduction's length, and x's row length

  __shared__ __align__(16) float As[kBK][kBM + 4];  // k-major, so the inner loop reads float4s
  __shared__ __align__(16) float Bs[kBK][kBN + 4];

  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  // Loads: thread -> one row (of x, or of W forward) and 8 consecutive k; transposed, W's row
  // k0 + tid / 8 of the step and 8 consecutive of the block's columns.
  const int lr = tid / 4, lk = (tid % 4) * 8;
  const int64_t src = source_row(p, row_begin + lr, row_end);  // kNoRow: zeros; kBadRow: NaN
  const XT* x = static_cast<const XT*>(p.x);
  const int64_t wrow = n0 + lr;
  const bool wvalid = wrow < p.N;
  const int64_t wrow_global = static_cast<int64_t>(e) * p.N + wrow;
  const int tr = tid / 8, tc = (tid % 8) * 8;  // transposed: step row, first column

  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < red; k0 += kBK) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t kk = k0 + lk + i;
      float v = 0.0f;
      if (src >= 0 && kk < red) v = to_float(x[src * red + kk]);
      else if (src == kBadRow) v = __int_as_float(0x7fc00000);
      As[lk + i][lr] = v;
    }
    if constexpr (kTransposed) {
      const int64_t n = k0 + tr, c = n0 + tc;  // weight row, first of 8 columns
      const int64_t row = static_cast<int64_t>(e) * p.N + n;
      if constexpr (WK == WeightKind::kMxfp4) {
        // K % 32 == 0: the 8 columns lie in one MXFP4 block.
        const bool valid = n < p.N && c < p.K;
        float scale = 0.0f;
        uint32_t codes = 0;
        if (valid) {
          scale = mxfp4::e8m0_to_float(p.w_scales[row * (p.K / 32) + c / 32]);
          codes = *reinterpret_cast<const uint32_t*>(static_cast<const uint8_t*>(p.w) + row * (p.K / 2) + c / 2);
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) Bs[tr][tc + i] = valid ? mxfp4::e2m1_to_float((codes >> (4 * i)) & 0xf) * scale : 0.0f;
      } else {
        using WT = std::conditional_t<WK == WeightKind::kBFloat16, bf16, float>;
        const WT* w = static_cast<const WT*>(p.w);
#pragma unroll
        for (int i = 0; i < 8; ++i) Bs[tr][tc + i] = n < p.N && c + i < p.K ? to_float(w[row * p.K + c + i]) : 0.0f;
      }
    } else if constexpr (WK == WeightKind::kMxfp4) {
      // K % 32 == 0: the tile's 32 k of a row are one MXFP4 block; this thread decodes 8 of them.
      float scale = 0.0f;
      uint32_t codes = 0;
      if (wvalid) {
        scale = mxfp4::e8m0_to_float(p.w_scales[wrow_global * (p.K / 32) + k0 / 32]);
        codes = *reinterpret_cast<const uint32_t*>(static_cast<const uint8_t*>(p.w) + wrow_global * (p.K / 2) +
                                                   k0 / 2 + lk / 2);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) Bs[lk + i][lr] = wvalid ? mxfp4::e2m1_to_float((codes >> (4 * i)) & 0xf) * scale : 0.0f;
    } else {
      using WT = std::conditional_t<WK == WeightKind::kBFloat16, bf16, float>;
      const WT* w = static_cast<const WT*>(p.w);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int64_t kk = k0 + lk + i;
        Bs[lk + i][lr] = (wvalid && kk < p.K) ? to_float(w[wrow_global * p.K + kk]) : 0.0f;
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      const float4 a = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
      const float4 b = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
      const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }

  // Epilogue: the thread's two column pairs of each of its rows (a bad row is NaN already).
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = row_begin + ty * 4 + i;
    if (r >= row_end) continue;
    if constexpr (kTransposed) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t c = n0 + tx * 4 + j;
        if (c < p.K) static_cast<float*>(p.out)[r * p.K + c] = acc[i][j];
      }
    } else {
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const int64_t n = n0 + tx * 4 + 2 * q;
        if (n < p.N) store_output_pair(p, e, r, n, false, acc[i][2 * q], acc[i][2 * q + 1]);
      }
    }
  }
}

}  // namespace moekit::cuda
