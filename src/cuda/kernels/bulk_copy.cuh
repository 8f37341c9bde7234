// Bulk copies global -> shared (sm_90's copy engine: `cp.async.bulk` of contiguous bytes, and
// `cp.async.bulk.tensor` of a TMA descriptor's tile) and the shared-memory barriers that say when
// they have landed: a thread announces a copy's bytes on its barrier and issues it; readers wait
// for the barrier's phase. The caller compiles these only for sm_90 (MOEKIT_BULK_COPY).
#pragma once

#include <cstdint>

#include "shared_address.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MOEKIT_BULK_COPY 1
#else
#define MOEKIT_BULK_COPY 0
#endif

namespace moekit::cuda {

#if MOEKIT_BULK_COPY
__device__ __forceinline__ void barrier_init(uint64_t* bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(shared_address(bar)), "r"(arrivals) : "memory");
}
// Makes initialised barriers visible to the copy engine (then a block barrier, for the threads).
__device__ __forceinline__ void barrier_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }

// Arrives and expects `bytes` more from copies before the phase completes.
__device__ __forceinline__ void barrier_arrive_expect(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(shared_address(bar)), "r"(bytes)
               : "memory");
}
// Arrives (one of the phase's expected arrivals; no bytes).
__device__ __forceinline__ void barrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(shared_address(bar)) : "memory");
}
// Until the phase of the given parity has completed.
__device__ __forceinline__ void barrier_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
        : "=r"(done)
        : "r"(shared_address(bar)), "r"(parity)
        : "memory");
  }
}

// `bytes` (a multiple of 16, both addresses 16-aligned) from global to shared memory; they count
// against `bar`'s expected bytes when they land. Asks L2 to evict them first (each is read once),
// or, with kKeep, to keep them last (bytes that other blocks read soon after).
template <bool kKeep>
__device__ __forceinline__ uint64_t l2_policy() {
  uint64_t policy;
  if constexpr (kKeep) asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
  else asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}

template <bool kKeep = false>
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  const uint64_t policy = l2_policy<kKeep>();
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;" ::"r"(
          shared_address(dst)),
      "l"(src), "r"(bytes), "r"(shared_address(bar)), "l"(policy)
      : "memory");
}

// The tile of a 2-D TMA descriptor (`map`: a kernel parameter declared __grid_constant__, or
// global memory) whose first element is at column x0, row y0, into shared memory at `dst` (its
// alignment as the descriptor's swizzle needs: 1 KB for 128 bytes); all the tile's bytes, those
// past the tensor read as zeros, count against `bar`. L2 policy as bulk_copy's.
template <bool kKeep = false>
__device__ __forceinline__ void tensor_copy_2d(void* dst, const void* map, int x0, int y0, uint64_t* bar) {
  const uint64_t policy = l2_policy<kKeep>();
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%2, "
      "%3}], [%4], %5;" ::"r"(shared_address(dst)),
      "l"(map), "r"(x0), "r"(y0), "r"(shared_address(bar)), "l"(policy)
      : "memory");
}

// Fetches a TMA descriptor ahead of its first copy.
__device__ __forceinline__ void prefetch_tensor_map(const void* map) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(map) : "memory");
}
#endif

}  // namespace moekit::cuda
