// What the matmul_ogs kernels share at either end of the k loop: which x row each tile row
// reads, and how a pair of adjacent output columns is finished and stored.
#pragma once

#include <cstdint>

#include "../activation/swiglu.cuh"
#include "../element.cuh"
#include "matmul_ogs_params.cuh"

namespace moekit::cuda {

constexpr int64_t kNoRow = -1, kBadRow = -2;  // past the tile's rows; gather index out of range

// The x row that problem row `prow` reads: kNoRow at or past row_end, kBadRow for a gather
// index outside [0, M).
__device__ __forceinline__ int64_t source_row(const MatmulOgsParams& p, int64_t prow, int64_t row_end) {
  if (prow >= row_end) return kNoRow;
  const int64_t src = p.gather_idx ? p.gather_idx[prow] : prow;
  return src < 0 || src >= p.M ? kBadRow : src;
}

// src_row[r] for the BM rows of a tile (all threads of the block; sync before reading it).
template <int BM>
__device__ __forceinline__ void gather_rows(const MatmulOgsParams& p, int64_t row_begin, int64_t row_end,
                                            int64_t* src_row) {
  for (int r = threadIdx.x; r < BM; r += blockDim.x) src_row[r] = source_row(p, row_begin + r, row_end);
}

// The backward's recompute of h (matmul_ogs_params.cuh): the gradient at the (glu, linear) pair
// h0, h1 of problem row `row` from the gradient at its SwiGLU output, and that output where act is
// given. Out of line, so that the forward kernels' epilogues, which carry this branch, stay as
// short as they were (inlined, it doubled the wgmma kernel's code and slowed it ~10%).
static __device__ __noinline__ void store_gradient_pair(const void* grad_a, bool grad_a_bf16, float* act, void* out,
                                                        bool out_bf16, int64_t cols, int64_t N, float alpha,
                                                        float limit, int64_t row, int64_t n, float h0, float h1) {
  const int64_t c = row * cols + n / 2;
  const SwigluGrad d = swiglu_backward(h0, h1, load_float(grad_a, grad_a_bf16, c), alpha, limit);
  store_float(out, out_bf16, row * N + n, d.glu);
  store_float(out, out_bf16, row * N + n + 1, d.lin);
  if (act) act[c] = swiglu(h0, h1, alpha, limit);
}

// Output columns n and n + 1 (n even) of problem row `row` of expert e: bias (unless the caller
// added it), then SwiGLU over the (glu, linear) pair or two plain columns; a bad gather index
// makes them NaN. In the backward's recompute (p.grad_a), the pair's gradients instead, unless
// the caller is a kernel form that never recomputes (kMayRecompute false: no branch for it).
template <bool kMayRecompute = true>
__device__ __forceinline__ void store_output_pair(const MatmulOgsParams& p, int e, int64_t row, int64_t n, bool bad,
                                                  float h0, float h1, bool add_bias = true) {
  if (add_bias && p.bias) {
    h0 += load_float(p.bias, p.bias_bf16, static_cast<int64_t>(e) * p.N + n);
    if (n + 1 < p.N) h1 += load_float(p.bias, p.bias_bf16, static_cast<int64_t>(e) * p.N + n + 1);
  }
  if (bad) h0 = h1 = __int_as_float(0x7fc00000);
  if (kMayRecompute && p.grad_a) {  // matmul_ogs_backward's recompute (swiglu only), out of line: see store_gradient_pair
    store_gradient_pair(p.grad_a, p.grad_a_bf16, p.act, p.out, p.out_bf16, p.out_cols, p.N, p.alpha, p.limit, row, n,
                        h0, h1);
  } else if (p.swiglu) {
    store_float(p.out, p.out_bf16, row * p.out_cols + n / 2, swiglu(h0, h1, p.alpha, p.limit));
  } else {
    store_float(p.out, p.out_bf16, row * p.out_cols + n, h0);
    if (n + 1 < p.N) store_float(p.out, p.out_bf16, row * p.out_cols + n + 1, h1);
  }
}

}  // namespace moekit::cuda
