// The pieces of matmul_ogs_backward on CUDA around its matmuls (src/cuda/launch/
// matmul_ogs_backward.cu composes them): sort keys, the starts of sorted runs, each problem row's
// share of grad_out, and the sums that give the combine weights', the bias's and x's gradients.
// No float atomics: every sum runs in one thread, or in a warp's fixed tree, in a fixed order,
// so the gradients have the same bits on every run.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "../element.cuh"

namespace moekit::cuda {

// keys[i] = index[i] (i without an index) where it lies in [0, limit), else limit; values[i] = i:
// a stable sort by key then lists the i reading each index in increasing order, the invalid last.
__global__ void sort_keys_kernel(const int32_t* index, int64_t n, int64_t limit, uint32_t* keys, int32_t* values) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t v = index ? index[i] : i;
  keys[i] = static_cast<uint32_t>(v >= 0 && v < limit ? v : limit);
  values[i] = static_cast<int32_t>(i);
}

// The transposed product over slots (scatter without SwiGLU): row i of it is the slot
// slot_of[i] (slots sorted by the problem row they read, slot_row[i]); it multiplies grad_out's
// row slot / k, and its sum into x's gradient is weighted by the slot's combine weight. Writes
// each row's grad_out row, weight and the sort key of the x row it belongs to.
struct SlotRows {
  const int32_t* slot_of;
  const uint32_t* slot_row;  // P where the slot's scatter index was invalid
  int64_t P, M;
  int k;
  const int32_t* gather_idx;     // or null
  const float* combine_weight;   // or null
  int32_t* a_row;
  float* scale;
  uint32_t* x_keys;
  int32_t* x_values;
};

__global__ void slot_rows_kernel(const SlotRows s) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= s.P) return;
  const int32_t slot = s.slot_of[i];
  const int64_t row = s.slot_row[i];
  s.a_row[i] = slot / s.k;
  s.scale[i] = s.combine_weight ? s.combine_weight[slot] : 1.0f;
  int64_t x_row = s.M;  // none
  if (row < s.P) x_row = s.gather_idx ? s.gather_idx[row] : row;
  s.x_keys[i] = static_cast<uint32_t>(x_row >= 0 && x_row < s.M ? x_row : s.M);
  s.x_values[i] = static_cast<int32_t>(i);
}

// out[j] = the first position in sorted[0, n) whose key is at least v_j, for j < count, where
// v_j = bounds[j] clamped to [0, limit] (or j without bounds): the starts of the runs of keys.
__global__ void run_starts_kernel(const uint32_t* sorted, int64_t n, const int32_t* bounds, int64_t limit,
                                  int64_t count, int32_t* out) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= count) return;
  int64_t v = bounds ? bounds[j] : j;
  v = v < 0 ? 0 : (v > limit ? limit : v);
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (static_cast<int64_t>(sorted[mid]) < v) lo = mid + 1;
    else hi = mid;
  }
  out[j] = static_cast<int32_t>(lo);
}

// g_a[row, c] = sum over the slots reading the row, in slot order, of the slot's combine weight
// times grad_out[slot / k, c] (float32). Grid: (rows, column chunks).
__global__ void row_share_kernel(const void* grad_out, bool grad_out_bf16, int64_t cols, const int32_t* row_start,
                                 const int32_t* slot_of, const float* combine_weight, int k, float* g_a) {
  const int64_t row = blockIdx.x, c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float sum = 0.0f;
  for (int32_t j = row_start[row]; j < row_start[row + 1]; ++j) {
    const int32_t slot = slot_of[j];
    const float w = combine_weight ? combine_weight[slot] : 1.0f;
    sum += w * load_float(grad_out, grad_out_bf16, static_cast<int64_t>(slot / k) * cols + c);
  }
  g_a[row * cols + c] = sum;
}

// Element `offset` of a float32 or bfloat16 array.
__device__ __forceinline__ const void* element_at(const void* base, bool is_bf16, int64_t offset) {
  return static_cast<const char*>(base) + offset * (is_bf16 ? 2 : 4);
}

// a . b over n elements in a warp (each operand float32 or bfloat16): each lane sums its strided
// elements in order, then a fixed butterfly; every lane gets the total.
__device__ __forceinline__ float warp_dot(const void* a, bool a_bf16, const void* b, bool b_bf16, int64_t n) {
  const int lane = threadIdx.x % 32;
  float sum = 0.0f;
  for (int64_t i = lane; i < n; i += 32) sum += load_float(a, a_bf16, i) * load_float(b, b_bf16, i);
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  return sum;
}

constexpr int kDotWarps = 8;  // warps per block of the combine weights' kernels, one row each

// Over slots (no SwiGLU): the combined row of slot s is h = x[x_row] W[e]^T + bias[e], so
// grad_out[t] . h = u[i] . x[x_row] + grad_out[t] . bias[e] with u[i] = grad_out[t] W[e], the
// transposed product's row i for the slot. NaN where the slot's indices were invalid.
struct SlotCombineGrad {
  const float* u;  // [P, K]
  const int32_t* slot_of;
  const uint32_t* slot_row;
  const int32_t* gather_idx;      // or null
  const int32_t* expert_offsets;  // or null (one expert)
  int E, k;
  int64_t P, M, K, N;
  const void* x;
  bool x_bf16;
  const void* grad_out;
  bool grad_out_bf16;
  const void* bias;  // or null
  bool bias_bf16;
  float* grad_combine_weight;
};

__global__ void __launch_bounds__(32 * kDotWarps) slot_combine_grad_kernel(const SlotCombineGrad g) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kDotWarps + threadIdx.x / 32;
  if (i >= g.P) return;
  const int32_t slot = g.slot_of[i];
  const int64_t row = g.slot_row[i];
  const int64_t x_row = row < g.P ? (g.gather_idx ? g.gather_idx[row] : row) : -1;
  float sum = __int_as_float(0x7fc00000);
  if (x_row >= 0 && x_row < g.M) {
    sum = warp_dot(g.u + i * g.K, false, element_at(g.x, g.x_bf16, x_row * g.K), g.x_bf16, g.K);
    if (g.bias) {
      int lo = 0, hi = g.E - 1;  // the expert: the last one whose rows start at or before the row
      while (g.expert_offsets && lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (g.expert_offsets[mid] <= row) lo = mid;
        else hi = mid - 1;
      }
      sum += warp_dot(element_at(g.grad_out, g.grad_out_bf16, (slot / g.k) * g.N), g.grad_out_bf16,
                      element_at(g.bias, g.bias_bf16, lo * g.N), g.bias_bf16, g.N);
    }
  }
  if (threadIdx.x % 32 == 0) g.grad_combine_weight[slot] = sum;
}

// With SwiGLU: grad_combine_weight[s] = grad_out[s / k] . act[scatter_idx[s]] (act: the SwiGLU
// outputs in float32, [P, cols]); NaN for an invalid scatter index.
__global__ void __launch_bounds__(32 * kDotWarps)
    act_combine_grad_kernel(const float* act, const void* grad_out, bool grad_out_bf16, const int32_t* scatter_idx,
                            int64_t P, int64_t cols, int k, float* grad_combine_weight) {
  const int64_t s = static_cast<int64_t>(blockIdx.x) * kDotWarps + threadIdx.x / 32;
  if (s >= P) return;
  const int64_t row = scatter_idx[s];
  float sum = __int_as_float(0x7fc00000);
  if (row >= 0 && row < P) {
    sum = warp_dot(act + row * cols, false, element_at(grad_out, grad_out_bf16, (s / k) * cols), grad_out_bf16, cols);
  }
  if (threadIdx.x % 32 == 0) grad_combine_weight[s] = sum;
}

// grad_bias[e, n] = sum over the transposed product's rows i of expert e of scale[i] * a[a_row[i], n]
// (the gradient at h), as 8 running sums over rows i = 8j + u, then added in a fixed tree: 8
// loads in flight per thread (one at a time left a layer's column sums latency-bound: ~1 ms for
// mlp1 at T = 8192). Grid: (experts, column chunks).
__global__ void bias_grad_kernel(const void* a, bool a_bf16, int64_t N, const int32_t* a_row, const float* scale,
                                 const int32_t* row_offsets, int64_t rows, void* grad_bias, bool grad_bias_bf16) {
  const int64_t e = blockIdx.x, n = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  int64_t lo = 0, hi = rows;
  if (row_offsets) {
    lo = min(max(static_cast<int64_t>(row_offsets[e]), int64_t{0}), rows);
    hi = min(max(static_cast<int64_t>(row_offsets[e + 1]), lo), rows);
  }
  auto term = [&](int64_t i) {
    const int64_t r = a_row ? a_row[i] : i;
    return (scale ? scale[i] : 1.0f) * load_float(a, a_bf16, r * N + n);
  };
  float sum[8] = {};
  int64_t i = lo;
  for (; i + 8 <= hi; i += 8) {
#pragma unroll
    for (int u = 0; u < 8; ++u) sum[u] += term(i + u);
  }
  for (int u = 0; i < hi; ++i, ++u) sum[u] += term(i);
  store_float(grad_bias, grad_bias_bf16, e * N + n,
              ((sum[0] + sum[1]) + (sum[2] + sum[3])) + ((sum[4] + sum[5]) + (sum[6] + sum[7])));
}

// grad_x[r, c] = sum over the rows i reading x row r (order[x_start[r] .. x_start[r + 1]), in
// increasing i) of scale[i] * u[i, c]; zero for rows nothing read. A thread takes kVec columns
// (4 when K % 4 == 0: 16-byte loads of u). Grid: (rows of x, column chunks).
template <int kVec>
__global__ void x_grad_kernel(const float* u, int64_t K, const int32_t* order, const int32_t* x_start,
                              const float* scale, void* grad_x, bool grad_x_bf16) {
  const int64_t r = blockIdx.x, c = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * kVec;
  if (c >= K) return;
  float sum[kVec] = {};
  for (int32_t j = x_start[r]; j < x_start[r + 1]; ++j) {
    const int64_t i = order[j];
    const float w = scale ? scale[i] : 1.0f;
    if constexpr (kVec == 4) {
      const float4 v = *reinterpret_cast<const float4*>(u + i * K + c);
      sum[0] += w * v.x;
      sum[1] += w * v.y;
      sum[2] += w * v.z;
      sum[3] += w * v.w;
    } else {
      sum[0] += w * u[i * K + c];
    }
  }
#pragma unroll
  for (int v = 0; v < kVec; ++v) store_float(grad_x, grad_x_bf16, r * K + c + v, sum[v]);
}

}  // namespace moekit::cuda
