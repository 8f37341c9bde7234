// Bulk copies global -> shared (sm_90's copy engine, `cp.async.bulk`) and the shared-memory
// barriers that say when they have landed: a thread announces a copy's bytes on its barrier and
// issues it; readers wait for the barrier's phase. The caller compiles these only for sm_90
// (MOEKIT_BULK_COPY).
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
template <bool kKeep = false>
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  uint64_t policy;
  if constexpr (kKeep) asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
  else asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;" ::"r"(
          shared_address(dst)),
      "l"(src), "r"(bytes), "r"(shared_address(bar)), "l"(policy)
      : "memory");
}
#endif

}  // namespace moekit::cuda
