// Groups token-slots by expert in one block, stably (rows of an expert keep token order), with
// integer work only, so the result is deterministic:
//   1. W warps each take a contiguous chunk of the slots and count its experts (hist[w][e]);
//   2. per-expert totals, their exclusive scan (offsets), and each chunk's first row per expert
//      (offset[e] + the counts of the chunks before it);
//   3. each warp places its chunk in slot order, 32 slots at a time.
// W is as large as shared memory allows (32 for E <= 128), so placement runs W chunks at once.
#pragma once

#include <cstdint>

namespace moekit::cuda {

constexpr int kGroupThreads = 1024;
constexpr int kGroupSmemBytes = 48 * 1024;

// Chunks (warps) the placement uses for n_slots slots of n_experts experts: as many as shared
// memory holds (hist needs chunks * n_experts ints, plus 2 * n_experts for totals and offsets),
// one per warp at most, and one per 32 slots at most: a warp places 32 slots at a time, and every
// further chunk lengthens the per-expert loops over chunks (at T = 8, k = 4: 1 chunk, not 32).
inline int group_chunks(int n_experts, int64_t n_slots) {
  const int fit = (kGroupSmemBytes / 4 - 2 * n_experts) / (n_experts > 0 ? n_experts : 1);
  const int64_t useful = (n_slots + 31) / 32;
  int chunks = fit < kGroupThreads / 32 ? fit : kGroupThreads / 32;
  if (useful < chunks) chunks = static_cast<int>(useful);
  return chunks < 1 ? 1 : chunks;
}
inline size_t group_smem_bytes(int n_experts, int chunks) {
  return (static_cast<size_t>(chunks) + 2) * static_cast<size_t>(n_experts) * sizeof(int32_t);
}

// The grouping by one whole block (kGroupThreads threads) with group_smem_bytes(n_experts,
// chunks) of shared memory at `smem`. expert_idx is read with coherent loads: the block may
// have written it.
__device__ __forceinline__ void group_by_expert_block(const int32_t* expert_idx, int64_t n_slots, int k,
                                                      int n_experts, int chunks, int32_t* smem,
                                                      int32_t* __restrict__ counts, int32_t* __restrict__ offsets,
                                                      int32_t* __restrict__ gather_idx,
                                                      int32_t* __restrict__ scatter_idx) {
  int32_t* hist = smem;                                  // [chunks][n_experts]
  int32_t* total_s = smem + chunks * n_experts;          // [n_experts]
  int32_t* offset_s = total_s + n_experts;               // [n_experts]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t chunk_len = (n_slots + chunks - 1) / chunks;
  const int64_t begin = min(static_cast<int64_t>(warp) * chunk_len, n_slots);
  const int64_t end = min(begin + chunk_len, n_slots);

  for (int i = threadIdx.x; i < chunks * n_experts; i += blockDim.x) hist[i] = 0;
  __syncthreads();
  if (warp < chunks) {
    for (int64_t s = begin + lane; s < end; s += 32) atomicAdd(&hist[warp * n_experts + expert_idx[s]], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < n_experts; e += blockDim.x) {
    int32_t sum = 0;
    for (int w = 0; w < chunks; ++w) sum += hist[w * n_experts + e];
    total_s[e] = sum;
  }
  __syncthreads();

  if (warp == 0) {
    // Exclusive scan: lane l sums a contiguous run of experts, then a warp scan of the sums.
    const int run = (n_experts + 31) / 32;
    const int first = min(lane * run, n_experts), last = min(first + run, n_experts);
    int32_t local = 0;
    for (int e = first; e < last; ++e) local += total_s[e];
    int32_t inclusive = local;
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const int32_t up = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += up;
    }
    int32_t running = inclusive - local;
    for (int e = first; e < last; ++e) {
      offsets[e] = running;
      counts[e] = total_s[e];
      offset_s[e] = running;
      running += total_s[e];
    }
    if (lane == 31) offsets[n_experts] = inclusive;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < n_experts; e += blockDim.x) {  // hist becomes each chunk's next row
    int32_t row = offset_s[e];
    for (int w = 0; w < chunks; ++w) {
      const int32_t c = hist[w * n_experts + e];
      hist[w * n_experts + e] = row;
      row += c;
    }
  }
  __syncthreads();

  if (warp < chunks) {
    int32_t* next = hist + warp * n_experts;
    const unsigned lanes_below = (1u << lane) - 1;
    for (int64_t base = begin; base < end; base += 32) {
      const int64_t s = base + lane;
      const bool valid = s < end;
      const int e = valid ? expert_idx[s] : -1;
      const unsigned peers = __match_any_sync(0xffffffffu, e);
      if (valid) {
        const int32_t row = next[e] + __popc(peers & lanes_below);
        gather_idx[row] = static_cast<int32_t>(s / k);
        scatter_idx[s] = row;
      }
      __syncwarp();
      if (valid && (peers & lanes_below) == 0) next[e] += __popc(peers);
      __syncwarp();
    }
  }
}

// One block per SM at most, said so: with the block size alone ptxas held these kernels to 32
// registers and spilled (12-40 bytes, nvcc 13.0); a launch is one block.
__global__ void __launch_bounds__(kGroupThreads, 1)
    group_by_expert_kernel(const int32_t* __restrict__ expert_idx, int64_t n_slots, int k, int n_experts, int chunks,
                           int32_t* __restrict__ counts, int32_t* __restrict__ offsets,
                           int32_t* __restrict__ gather_idx, int32_t* __restrict__ scatter_idx) {
  extern __shared__ int32_t smem[];
  group_by_expert_block(expert_idx, n_slots, k, n_experts, chunks, smem, counts, offsets, gather_idx, scatter_idx);
}

}  // namespace moekit::cuda
