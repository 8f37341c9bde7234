// Residual add + RMSNorm, one block per row. Each thread loads its columns kPerThread at a time
// (all loads of a round in flight together: a decode row is one round trip, not one per column),
// writes the rounded sums and keeps them in registers; the squares are summed in a fixed tree
// (warp shuffles, then the warps' totals in order), so a row's result is the same bits for any T.
// Rows longer than one round re-read their sums for the scaling pass. Chained (grid_dependency.cuh):
// the next kernel's blocks may start at once, and wait for this one; the first round's scales,
// which no earlier kernel writes, are asked for before the wait.
#pragma once

#include <cstdint>

#include "../element.cuh"
#include "../grid_dependency.cuh"

namespace moekit::cuda {

constexpr int kAddRmsNormThreads = 256;
constexpr int kAddRmsNormPerThread = 16;

template <class T>
__global__ void __launch_bounds__(kAddRmsNormThreads) add_rms_norm_kernel(
    const T* __restrict__ x, const T* __restrict__ residual, const float* __restrict__ scale, float eps, int64_t H,
    T* __restrict__ sum, T* __restrict__ out) {
  constexpr int kRound = kAddRmsNormThreads * kAddRmsNormPerThread;
  __shared__ float warp_totals[kAddRmsNormThreads / 32];
  float first_scales[kAddRmsNormPerThread];
#pragma unroll
  for (int n = 0; n < kAddRmsNormPerThread; ++n) {
    const int64_t i = n * kAddRmsNormThreads + threadIdx.x;
    first_scales[n] = i < H ? scale[i] : 0.0f;
  }
  wait_for_previous_grid();
  let_next_grid_start();
  const int64_t row = static_cast<int64_t>(blockIdx.x) * H;
  float squares = 0.0f;
  float kept[kAddRmsNormPerThread];
  for (int64_t base = 0; base < H; base += kRound) {
    float a[kAddRmsNormPerThread], b[kAddRmsNormPerThread];
#pragma unroll
    for (int n = 0; n < kAddRmsNormPerThread; ++n) {
      const int64_t i = base + n * kAddRmsNormThreads + threadIdx.x;
      a[n] = i < H ? to_float(residual[row + i]) : 0.0f;
      b[n] = i < H ? to_float(x[row + i]) : 0.0f;
    }
#pragma unroll
    for (int n = 0; n < kAddRmsNormPerThread; ++n) {
      const int64_t i = base + n * kAddRmsNormThreads + threadIdx.x;
      const T s = static_cast<T>(a[n] + b[n]);
      kept[n] = to_float(s);
      if (i < H) {
        sum[row + i] = s;
        squares = fmaf(kept[n], kept[n], squares);
      }
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) squares += __shfl_xor_sync(0xffffffffu, squares, offset);
  if (threadIdx.x % 32 == 0) warp_totals[threadIdx.x / 32] = squares;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kAddRmsNormThreads / 32; ++w) total += warp_totals[w];
  const float inv_rms = 1.0f / sqrtf(total / static_cast<float>(H) + eps);
  for (int64_t base = 0; base < H; base += kRound) {
    const bool one_round = H <= kRound;  // then `kept` holds this thread's sums
#pragma unroll
    for (int n = 0; n < kAddRmsNormPerThread; ++n) {
      const int64_t i = base + n * kAddRmsNormThreads + threadIdx.x;
      if (i < H) {
        out[row + i] = static_cast<T>((one_round ? kept[n] : to_float(sum[row + i])) * inv_rms *
                                      (base == 0 ? first_scales[n] : scale[i]));
      }
    }
  }
}

}  // namespace moekit::cuda
