// Thread block clusters (sm_90): the cluster barrier, in one piece or in two halves, and stores
// into another block's shared memory (distributed shared memory).
#pragma once

#include <cstdint>

#include "shared_address.cuh"

namespace moekit::cuda {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// All threads of every block of the cluster; shared-memory writes before it are visible to the
// cluster's blocks after it.
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// The cluster barrier in two halves: every block arrives as it starts and waits before its first
// store into another block's shared memory, which must not come before that block has started.
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.aligned;" ::: "memory"); }

// Stores v at `local`'s offset in the shared memory of the cluster's block `rank`.
__device__ __forceinline__ void store_to_cluster_block(float* local, int rank, float v) {
  uint32_t remote;
  asm("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(shared_address(local)), "r"(rank));
  asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(remote), "f"(v) : "memory");
}
#endif

}  // namespace moekit::cuda
