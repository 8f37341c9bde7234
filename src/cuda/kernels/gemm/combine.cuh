// The weighted combine after a scattered matmul_ogs: out[t, c] = sum_j w[t, j] * h[scatter[t, j], c],
// summed in slot order (deterministic; no atomics). An out-of-range row index gives NaN.
#pragma once

#include <cstdint>

#include "../element.cuh"

namespace moekit::cuda {

__global__ void combine_kernel(const float* __restrict__ h, const int32_t* __restrict__ scatter_idx,
                               const float* __restrict__ combine_weight, int64_t n_rows, int k, int64_t cols,
                               int64_t n_h_rows, void* __restrict__ out, bool out_bf16) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n_rows * cols) return;
  const int64_t t = i / cols, c = i % cols;
  float v = 0.0f;
  for (int j = 0; j < k; ++j) {
    const int32_t r = scatter_idx[t * k + j];
    const float hv = (r >= 0 && r < n_h_rows) ? h[r * cols + c] : __int_as_float(0x7fc00000);
    v += (combine_weight ? combine_weight[t * k + j] : 1.0f) * hv;
  }
  store_float(out, out_bf16, i, v);
}

}  // namespace moekit::cuda
