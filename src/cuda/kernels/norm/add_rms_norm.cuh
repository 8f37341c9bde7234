// Residual add + RMSNorm, one block per row: each thread adds and rounds its columns (writing the
// sum), the squares are summed in a fixed tree (warp shuffles, then the warps' totals in order),
// then each thread scales the columns it wrote. Row sums stay deterministic for any T.
#pragma once

#include <cstdint>

#include "../element.cuh"

namespace moekit::cuda {

constexpr int kAddRmsNormThreads = 256;

template <class T>
__global__ void __launch_bounds__(kAddRmsNormThreads) add_rms_norm_kernel(
    const T* __restrict__ x, const T* __restrict__ residual, const float* __restrict__ scale, float eps, int64_t H,
    T* __restrict__ sum, T* __restrict__ out) {
  __shared__ float warp_totals[kAddRmsNormThreads / 32];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * H;
  float squares = 0.0f;
  for (int64_t i = threadIdx.x; i < H; i += kAddRmsNormThreads) {
    const T s = static_cast<T>(to_float(residual[row + i]) + to_float(x[row + i]));
    sum[row + i] = s;
    const float f = to_float(s);
    squares = fmaf(f, f, squares);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) squares += __shfl_xor_sync(0xffffffffu, squares, offset);
  if (threadIdx.x % 32 == 0) warp_totals[threadIdx.x / 32] = squares;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kAddRmsNormThreads / 32; ++w) total += warp_totals[w];
  const float inv_rms = 1.0f / sqrtf(total / static_cast<float>(H) + eps);
  for (int64_t i = threadIdx.x; i < H; i += kAddRmsNormThreads) {
    out[row + i] = static_cast<T>(to_float(sum[row + i]) * inv_rms * scale[i]);
  }
}

}  // namespace moekit::cuda
