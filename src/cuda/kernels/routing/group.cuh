// Groups token-slots by expert in one block: per-expert counts (shared-memory histogram),
// offsets (warp scan), then a stable placement by one warp that walks the slots in order,
// so rows of an expert keep token order. Integer-only, so the result is deterministic.
#pragma once

#include <cstdint>

namespace moekit::cuda {

constexpr int kGroupThreads = 1024;

// Dynamic shared memory: 2 * n_experts ints.
__global__ void group_by_expert_kernel(const int32_t* __restrict__ expert_idx, int64_t n_slots, int k, int n_experts,
                                       int32_t* __restrict__ counts, int32_t* __restrict__ offsets,
                                       int32_t* __restrict__ gather_idx, int32_t* __restrict__ scatter_idx) {
  extern __shared__ int32_t smem[];
  int32_t* count_s = smem;
  int32_t* next_s = smem + n_experts;
  for (int e = threadIdx.x; e < n_experts; e += blockDim.x) count_s[e] = 0;
  __syncthreads();
  for (int64_t s = threadIdx.x; s < n_slots; s += blockDim.x) atomicAdd(&count_s[expert_idx[s]], 1);
  __syncthreads();

  const int lane = threadIdx.x % 32;
  if (threadIdx.x < 32) {
    // Exclusive scan: lane l sums a contiguous chunk of experts, then a warp scan of the sums.
    const int chunk = (n_experts + 31) / 32;
    const int begin = min(lane * chunk, n_experts), end = min(begin + chunk, n_experts);
    int32_t local = 0;
    for (int e = begin; e < end; ++e) local += count_s[e];
    int32_t inclusive = local;
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const int32_t up = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += up;
    }
    int32_t running = inclusive - local;
    for (int e = begin; e < end; ++e) {
      offsets[e] = running;
      counts[e] = count_s[e];
      next_s[e] = running;
      running += count_s[e];
    }
    if (lane == 31) offsets[n_experts] = inclusive;
    __syncwarp();

    // Stable placement, 32 slots at a time in slot order.
    const unsigned lanes_below = (1u << lane) - 1;
    for (int64_t base = 0; base < n_slots; base += 32) {
      const int64_t s = base + lane;
      const bool valid = s < n_slots;
      const int e = valid ? expert_idx[s] : -1;
      const unsigned peers = __match_any_sync(0xffffffffu, e);
      if (valid) {
        const int32_t row = next_s[e] + __popc(peers & lanes_below);
        gather_idx[row] = static_cast<int32_t>(s / k);
        scatter_idx[s] = row;
      }
      __syncwarp();
      if (valid && (peers & lanes_below) == 0) next_s[e] += __popc(peers);
      __syncwarp();
    }
  }
}

}  // namespace moekit::cuda
