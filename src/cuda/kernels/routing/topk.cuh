// Top-k per token, one warp per token: k rounds of a warp-wide arg-max over the experts not
// yet chosen, ranked as the CPU backend ranks them (larger first, NaN above numbers, ties to
// the lower index); then the softmax over the chosen logits (lane j holds the j-th for k <= 32,
// so no value makes a round trip through memory, and the decode kernels keep them there).
//
// A round is two warp reductions (redux.sync): the largest rank key among the lanes' best
// candidates, then the lowest expert holding it. The comparison-and-shuffle butterfly it
// replaced took ~4500 cycles for E = 32, k = 4 (bench/topk_cycles.cu); this takes ~1840, and
// ~1570 for E <= 32, where each lane holds one key and a ballot finds the lowest lane holding
// the largest.
#pragma once

#include <climits>
#include <cstdint>

#include "../element.cuh"

namespace moekit::cuda {

constexpr int kTopkMaxExperts = 64 * 32;  // each lane marks its chosen experts in one uint64
// Up to 32 * kTopkHeld experts, a lane loads its logits once, before the rounds, and keeps their
// rank keys in registers, so that the rounds wait on no memory.
constexpr int kTopkHeld = 4;

// An unsigned key that orders logits as the top-k ranks them: NaN above every number, -0 and +0
// alike, and 0 below every logit (a chosen or absent expert).
__device__ __forceinline__ uint32_t topk_rank_key(float v) {
  if (isnan(v)) return 0xffffffffu;
  const uint32_t bits = __float_as_uint(v == 0.0f ? 0.0f : v);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);  // -inf -> 0x007fffff
}
// The logit a key stands for (NaN for NaN, +0 for either zero: the softmax cannot tell).
__device__ __forceinline__ float topk_key_value(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// The k rounds over one token's logits `row`, by one whole warp: on_choice(j, expert, logit) for
// the j-th choice, on every lane.
template <class T, class OnChoice>
__device__ __forceinline__ void topk_rounds(const T* __restrict__ row, int n_experts, int k, OnChoice&& on_choice) {
  const int lane = threadIdx.x % 32;
  const bool held_all = n_experts <= 32 * kTopkHeld;
  uint32_t held[kTopkHeld];  // the keys of experts lane + 32 * i, 0 once chosen
  if (held_all) {
#pragma unroll
    for (int i = 0; i < kTopkHeld; ++i) {
      held[i] = lane + 32 * i < n_experts ? topk_rank_key(to_float(row[lane + 32 * i])) : 0u;
    }
  }
  uint64_t chosen = 0;  // past 32 * kTopkHeld experts, bit i: expert lane + 32 * i chosen
  if (n_experts <= 32) {
    // One key a lane (gpt-oss-20b's 32 experts): the lane is its own candidate, and a ballot
    // of the lanes holding the top key gives the lowest.
    for (int j = 0; j < k; ++j) {
      const uint32_t top = __reduce_max_sync(0xffffffffu, held[0]);
      const int best = __ffs(__ballot_sync(0xffffffffu, held[0] == top)) - 1;
      if (best == lane) held[0] = 0u;
      on_choice(j, best, topk_key_value(top));
    }
    return;
  }
  for (int j = 0; j < k; ++j) {
    // The lane's best candidate: its largest key, the lowest of its experts on ties.
    uint32_t key = 0;
    int idx = INT_MAX;
    if (held_all) {
#pragma unroll
      for (int i = 0; i < kTopkHeld; ++i) {
        if (held[i] > key) key = held[i], idx = lane + 32 * i;
      }
    } else {
      for (int i = 0, e = lane; e < n_experts; ++i, e += 32) {
        const uint32_t c = topk_rank_key(to_float(row[e]));
        if (!((chosen >> i) & 1) && c > key) key = c, idx = e;
      }
    }
    // k <= n_experts, so some lane has a candidate and the largest key is above 0.
    const uint32_t top = __reduce_max_sync(0xffffffffu, key);
    const int best = __reduce_min_sync(0xffffffffu, key == top ? idx : INT_MAX);
    if (best % 32 == lane) {
      if (held_all) {
#pragma unroll
        for (int i = 0; i < kTopkHeld; ++i) held[i] = best / 32 == i ? 0u : held[i];
      } else {
        chosen |= uint64_t{1} << (best / 32);
      }
    }
    on_choice(j, best, topk_key_value(top));
  }
}

// Up to 32 choices, held one a lane: lane j < k has the j-th choice and its softmax weight.
struct TopkLane {
  int expert;
  float weight;
};

template <class T>
__device__ __forceinline__ TopkLane topk_softmax_lanes(const T* __restrict__ row, int n_experts, int k) {
  const int lane = threadIdx.x % 32;
  TopkLane mine{-1, 0.0f};
  float logit = 0.0f;
  topk_rounds(row, n_experts, k, [&](int j, int expert, float value) {
    if (j == lane) mine.expert = expert, logit = value;
  });
  const float top = __shfl_sync(0xffffffffu, logit, 0);  // the first chosen is the largest
  const float ex = lane < k ? expf(logit - top) : 0.0f;
  float sum = ex;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  mine.weight = ex / sum;
  return mine;
}

// Token t's choices, by one whole warp.
template <class T>
__device__ __forceinline__ void topk_softmax_token(const T* __restrict__ logits, int64_t t, int n_experts, int k,
                                                   int32_t* __restrict__ expert_idx,
                                                   float* __restrict__ expert_weight) {
  const int lane = threadIdx.x % 32;
  const T* row = logits + t * n_experts;
  if (k <= 32) {
    const TopkLane mine = topk_softmax_lanes(row, n_experts, k);
    if (lane < k) {
      expert_idx[t * k + lane] = mine.expert;
      expert_weight[t * k + lane] = mine.weight;
    }
    return;
  }
  // More choices than lanes: lane 0 keeps them in memory (the logits until the softmax).
  int32_t* idx = expert_idx + t * k;
  float* w = expert_weight + t * k;
  topk_rounds(row, n_experts, k, [&](int j, int expert, float value) {
    if (lane == 0) idx[j] = expert, w[j] = value;
  });
  if (lane == 0) {
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
