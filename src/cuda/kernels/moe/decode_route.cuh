// The routing of a few tokens, computed by every block of mlp1's expert kernel into its shared
// memory (mlp2's blocks copy the one mlp1's block 0 leaves in the workspace): top-k and the
// softmax per token (topk.cuh, as the route op computes them), then the token-slots grouped by
// expert, experts in increasing order, each expert's slots in order. One token is routed by
// every warp in its own lanes (route_token_in_warp), so that each knows its experts at once.
#pragma once

#include <cstdint>

#include "../routing/topk.cuh"
#include "moe_decode_params.cuh"

namespace moekit::cuda {

struct DecodeRoute {
  int experts;                                                // distinct experts chosen (D)
  int expert[moe_decode::kMaxPairs];                          // d -> expert
  int count[moe_decode::kMaxPairs];                           // d -> its token-slots (<= T)
  int slot[moe_decode::kMaxPairs][moe_decode::kMaxTokens];    // d, i -> token-slot t * k + j
  int slot_expert[moe_decode::kMaxPairs];                     // token-slot -> d
  int slot_rank[moe_decode::kMaxPairs];                       // token-slot -> i
  int32_t choice[moe_decode::kMaxPairs];                      // token-slot -> expert
  float weight[moe_decode::kMaxPairs];                        // token-slot -> combine weight
};
static_assert(sizeof(DecodeRoute) == kMoeDecodeRouteBytes, "the workspace's copy of the routing");

// Copies a routing between shared and global memory, by all threads of the block; a block
// barrier must come before the copy is read.
__device__ __forceinline__ void copy_route(const DecodeRoute& from, DecodeRoute& to) {
  const int* src = reinterpret_cast<const int*>(&from);
  int* dst = reinterpret_cast<int*>(&to);
  for (int i = threadIdx.x; i < static_cast<int>(sizeof(DecodeRoute) / 4); i += blockDim.x) dst[i] = src[i];
}

// One token's routing as every warp of a block holds it: lane j < k has the j-th choice, its
// weight and its expert's place d among the k (distinct for one token, in increasing order).
struct WarpRoute {
  int expert, d;
  float weight;
  // The expert at place `place` (< k), on every lane.
  __device__ __forceinline__ int expert_at(int place, int k) const {
    const unsigned holder = __ballot_sync(0xffffffffu, static_cast<int>(threadIdx.x % 32) < k && d == place);
    return __shfl_sync(0xffffffffu, expert, __ffs(holder) - 1);
  }
};

// Token 0 of `logits` routed by the calling warp, without waiting for the block.
__device__ __forceinline__ WarpRoute route_token_in_warp(const float* logits, int E, int k) {
  const TopkLane mine = topk_softmax_lanes(logits, E, k);
  WarpRoute w{mine.expert, 0, mine.weight};
  for (int q = 0; q < k; ++q) w.d += __shfl_sync(0xffffffffu, mine.expert, q) < mine.expert;
  return w;
}

// By one warp: `r` for that token, as route_in_block would write it. A block barrier must come
// before r is read.
__device__ __forceinline__ void write_token_route(const WarpRoute& w, int k, DecodeRoute& r) {
  const int lane = threadIdx.x % 32;
  if (lane < k) {
    r.expert[w.d] = w.expert;
    r.count[w.d] = 1;
    r.slot[w.d][0] = lane;
    r.slot_expert[lane] = w.d;
    r.slot_rank[lane] = 0;
    r.choice[lane] = w.expert;
    r.weight[lane] = w.weight;
  }
  if (lane == 0) r.experts = k;
}

// All threads of the block; r is valid after it returns. T * k <= kMaxPairs.
__device__ __forceinline__ void route_in_block(const float* logits, int T, int E, int k, DecodeRoute& r) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int t = warp; t < T; t += warps) topk_softmax_token(logits, t, E, k, r.choice, r.weight);
  __syncthreads();
  if (warp == 0) {
    const int slots = T * k;
    const int e = lane < slots ? r.choice[lane] : -1;
    int rank = 0, count = 0;  // this slot's place among its expert's slots, and their number
    for (int q = 0; q < slots; ++q) {
      const int other = __shfl_sync(0xffffffffu, e, q);
      count += other == e;
      rank += other == e && q < lane;
    }
    const unsigned firsts = __ballot_sync(0xffffffffu, lane < slots && rank == 0);
    int d = 0;  // distinct experts below e
    for (int q = 0; q < slots; ++q) {
      const int other = __shfl_sync(0xffffffffu, e, q);
      d += ((firsts >> q) & 1) && other < e;
    }
    if (lane < slots) {
      if (rank == 0) {
        r.expert[d] = e;
        r.count[d] = count;
      }
      r.slot[d][rank] = lane;
      r.slot_expert[lane] = d;
      r.slot_rank[lane] = rank;
    }
    if (lane == 0) r.experts = __popc(firsts);
  }
  __syncthreads();
}

}  // namespace moekit::cuda
