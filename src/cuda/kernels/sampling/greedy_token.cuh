// greedy_token (include/moekit/ops.h): the blocks of one thread block cluster (a single block
// before sm_90) each take the first largest logit of their share, every thread asking for all of
// its logits at once (16 bytes a load where they are aligned) and the block reducing by warp
// shuffles; block 0 then takes the first largest of the blocks' candidates, which they store into
// its shared memory before one cluster barrier, and writes the token and the id. The order is
// total (value, NaN above all, then the smaller index), so the result is the same whatever the
// reduction's order.
#pragma once

#include <cstdint>

#include "../cluster.cuh"
#include "../element.cuh"
#include "../grid_dependency.cuh"

namespace moekit::cuda {

constexpr int kGreedyThreads = 512;
constexpr int kGreedyMaxBlocks = 8;   // a portable cluster
constexpr int kGreedyPerThread = 8;   // loads in flight a thread

struct GreedyCandidate {
  float value;
  int32_t index;
};

// Whether a is picked over b: a NaN first (the first of them), then the larger value, then, of
// equal values, the smaller index.
__device__ __forceinline__ bool picked_over(GreedyCandidate a, GreedyCandidate b) {
  const bool a_nan = a.value != a.value, b_nan = b.value != b.value;
  if (a_nan || b_nan) return a_nan && (!b_nan || a.index < b.index);
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

__device__ __forceinline__ GreedyCandidate pick(GreedyCandidate a, GreedyCandidate b) { return picked_over(b, a) ? b : a; }

__device__ __forceinline__ GreedyCandidate warp_pick(GreedyCandidate c) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const GreedyCandidate other{__shfl_xor_sync(0xffffffffu, c.value, offset),
                                __shfl_xor_sync(0xffffffffu, c.index, offset)};
    c = pick(c, other);
  }
  return c;
}

// kVec: logits 16-byte aligned, read N = 16 / sizeof(T) at a time (block shares are whole vectors).
template <class T, bool kVec>
__global__ void __launch_bounds__(kGreedyThreads) greedy_token_kernel(const T* __restrict__ logits, int V,
                                                                      const int32_t* position, int L,
                                                                      int32_t* token, int32_t* ids) {
  constexpr int N = kVec ? 16 / sizeof(T) : 1;
  struct alignas(16) Vec {
    T e[N];
  };
  __shared__ GreedyCandidate warp_best[kGreedyThreads / 32];
  __shared__ float block_best[2 * kGreedyMaxBlocks];  // block 0: the blocks' candidates (value, index bits)
  const int blocks = gridDim.x, b = blockIdx.x, tid = threadIdx.x;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (blocks > 1) cluster_arrive_relaxed();  // waited for before the first store into block 0
#endif
  wait_for_previous_grid();
  let_next_grid_start();
  // The block's share of whole vectors, [begin, end) in elements.
  const int64_t vectors = (V + N - 1) / N, per_block = (vectors + blocks - 1) / blocks;
  const int64_t begin = b * per_block * N, end = min(static_cast<int64_t>(V), (b + 1) * per_block * N);
  GreedyCandidate best{-INFINITY, INT32_MAX};  // any logit is picked over it
  for (int64_t base = begin + tid * N; base < end; base += kGreedyThreads * N * kGreedyPerThread) {
    Vec v[kGreedyPerThread];
#pragma unroll
    for (int n = 0; n < kGreedyPerThread; ++n) {
      const int64_t at = base + n * kGreedyThreads * N;
      if (kVec && at + N <= end) {
        v[n] = *reinterpret_cast<const Vec*>(logits + at);
      } else {
#pragma unroll
        for (int i = 0; i < N; ++i) v[n].e[i] = at + i < end ? logits[at + i] : static_cast<T>(-INFINITY);
      }
    }
#pragma unroll
    for (int n = 0; n < kGreedyPerThread; ++n) {
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const int64_t at = base + n * kGreedyThreads * N + i;
        if (at < end) best = pick(best, {to_float(v[n].e[i]), static_cast<int32_t>(at)});
      }
    }
  }
  best = warp_pick(best);
  if (tid % 32 == 0) warp_best[tid / 32] = best;
  __syncthreads();
  if (tid < 32) {
    best = warp_pick(tid < kGreedyThreads / 32 ? warp_best[tid] : GreedyCandidate{-INFINITY, INT32_MAX});
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (blocks > 1) {
    cluster_wait();  // block 0 has started
    if (tid == 0) {
      store_to_cluster_block(block_best + 2 * b, 0, best.value);
      store_to_cluster_block(block_best + 2 * b + 1, 0, __int_as_float(best.index));
    }
    cluster_sync();
    if (b != 0) return;
    if (tid == 0) {
      for (int other = 1; other < blocks; ++other) {
        best = pick(best, {block_best[2 * other], __float_as_int(block_best[2 * other + 1])});
      }
    }
  }
#endif
  if (tid == 0) {
    token[0] = best.index;
    const int at = position[0];
    if (at >= 0 && at < L) ids[at] = best.index;
  }
}

}  // namespace moekit::cuda
