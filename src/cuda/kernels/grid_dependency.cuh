// Programmatic dependent launch (sm_90): a kernel launched with launch_kernel(..., chained) may
// start while the kernel before it on the stream still runs. It must call wait_for_previous_grid
// (in every block, before any early return) before it reads what that kernel wrote, and calls
// let_next_grid_start when the next kernel's blocks may take their place on the SMs. Work that
// depends on nothing the previous kernels write (weights) can go before the wait. Both are no-ops
// where the kernel was not launched chained, and before sm_90. Before the wait, what the kernels
// before may write can only be guessed (guess_before_wait), and the guess checked after it.
#pragma once

#include <cstdint>

namespace moekit::cuda {

__device__ __forceinline__ void wait_for_previous_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void let_next_grid_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// A value the kernels before this one may still be writing, read before wait_for_previous_grid
// as a guess (a relaxed load: any value it returns is one that was there); the caller checks it
// against the value read after the wait, and bounds it before using it as an index.
__device__ __forceinline__ int32_t guess_before_wait(const int32_t* at) {
  int32_t v;
  asm volatile("ld.relaxed.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(at) : "memory");
  return v;
}

}  // namespace moekit::cuda
