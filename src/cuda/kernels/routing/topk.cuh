// Top-k per token, one warp per token: k rounds of a warp-wide arg-max over the experts not
// yet chosen, ranked as the CPU backend ranks them (larger first, NaN above numbers, ties to
// the lower index); then the softmax over the chosen logits (lane j holds the j-th for k <= 32,
// so no value makes a round trip through global memory).
#pragma once

#include <cstdint>

#include "../element.cuh"

namespace moekit::cuda {

constexpr int kTopkMaxExperts = 64 * 32;  // each lane marks its chosen experts in one uint64
// Up to 32 * kTopkHeld experts, a lane loads its logits once, before the rounds, and keeps them
// in registers, so that the rounds wait on no memory (the decode layer's routing ~0.3 us sooner,
// bench/moe_decode_phases.cu; its top-k still takes ~2.5 us, docs/kernels.md).
constexpr int kTopkHeld = 4;

__device__ __forceinline__ bool ranks_before(float a, int ia, float b, int ib) {
  const bool na = isnan(a), nb = isnan(b);
  if (na != nb) return na;
  if (!na && a != b) return a > b;
  return ia < ib;
}

// Token t's choices, by one whole warp.
template <class T>
__device__ __forceinline__ void topk_softmax_token(const T* __restrict__ logits, int64_t t, int n_experts, int k,
                                                   int32_t* __restrict__ expert_idx,
                                                   float* __restrict__ expert_weight) {
  const int lane = threadIdx.x % 32;
  const T* row = logits + t * n_experts;
  const bool held_all = n_experts <= 32 * kTopkHeld;
  float held[kTopkHeld];
  if (held_all) {
#pragma unroll
    for (int i = 0; i < kTopkHeld; ++i) held[i] = lane + 32 * i < n_experts ? to_float(row[lane + 32 * i]) : 0.0f;
  }
  uint64_t chosen = 0;  // bit i: expert lane + 32 * i
  float mine = 0.0f;    // the lane-th chosen logit (k <= 32)
  for (int j = 0; j < k; ++j) {
    float best = 0.0f;
    int best_idx = -1;
    auto consider = [&](float v, int e) {
      if (best_idx < 0 || ranks_before(v, e, best, best_idx)) {
        best = v;
        best_idx = e;
      }
    };
    if (held_all) {
#pragma unroll
      for (int i = 0; i < kTopkHeld; ++i) {
        if (lane + 32 * i < n_experts && !((chosen >> i) & 1)) consider(held[i], lane + 32 * i);
      }
    } else {
      for (int i = 0, e = lane; e < n_experts; ++i, e += 32) {
        if (!((chosen >> i) & 1)) consider(to_float(row[e]), e);
      }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      const float other = __shfl_xor_sync(0xffffffffu, best, offset);
      const int other_idx = __shfl_xor_sync(0xffffffffu, best_idx, offset);
      if (other_idx >= 0 && (best_idx < 0 || ranks_before(other, other_idx, best, best_idx))) {
        best = other;
        best_idx = other_idx;
      }
    }
    if (best_idx % 32 == lane) chosen |= uint64_t{1} << (best_idx / 32);
    if (j == lane) mine = best;
    if (lane == 0) {
      expert_idx[t * k + j] = best_idx;
      if (k > 32) expert_weight[t * k + j] = best;  // the logit, until the softmax below
    }
  }
  if (k <= 32) {
    const float top = __shfl_sync(0xffffffffu, mine, 0);  // the first chosen is the largest
    const float ex = lane < k ? expf(mine - top) : 0.0f;
    float sum = ex;
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane < k) expert_weight[t * k + lane] = ex / sum;
  } else if (lane == 0) {
    float* w = expert_weight + t * k;
    const float top = w[0];
    float sum = 0.0f;
    for (int j = 0; j < k; ++j) sum += expf(w[j] - top);
    for (int j = 0; j < k; ++j) w[j] = expf(w[j] - top) / sum;
  }
}

template <class T>
__global__ void topk_softmax_kernel(const T* __restrict__ logits, int64_t n_tokens, int n_experts, int k,
                                    int32_t* __restrict__ expert_idx, float* __restrict__ expert_weight) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (t < n_tokens) topk_softmax_token(logits, t, n_experts, k, expert_idx, expert_weight);
}

}  // namespace moekit::cuda
