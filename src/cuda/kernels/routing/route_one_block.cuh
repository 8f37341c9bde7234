// Routing of a few tokens in one block: top-k (a warp per token), then the grouping, in one
// launch instead of two; at decode sizes each launch costs a few microseconds of a layer that
// takes 60-200.
#pragma once

#include <cstdint>

#include "group.cuh"
#include "topk.cuh"

namespace moekit::cuda {

// At most one token per warp: with 4 per warp (T = 128, E = 128) the block took 37 us, the two
// kernels 15 (H100).
constexpr int64_t kRouteOneBlockTokens = 32;

template <class T>
__global__ void __launch_bounds__(kGroupThreads, 1)  // as group_by_expert_kernel's (group.cuh)
    route_one_block_kernel(const T* __restrict__ logits, int64_t n_tokens, int n_experts, int k, int chunks,
                           int32_t* expert_idx, float* __restrict__ expert_weight, int32_t* __restrict__ counts,
                           int32_t* __restrict__ offsets, int32_t* __restrict__ gather_idx,
                           int32_t* __restrict__ scatter_idx) {
  extern __shared__ int32_t smem[];
  for (int64_t t = threadIdx.x / 32; t < n_tokens; t += kGroupThreads / 32) {
    topk_softmax_token(logits, t, n_experts, k, expert_idx, expert_weight);
  }
  __syncthreads();  // every warp's expert_idx writes are visible to the whole block
  group_by_expert_block(expert_idx, n_tokens * k, k, n_experts, chunks, smem, counts, offsets, gather_idx,
                        scatter_idx);
}

}  // namespace moekit::cuda
