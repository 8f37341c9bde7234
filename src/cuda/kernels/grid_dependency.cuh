// Programmatic dependent launch (sm_90): a kernel launched with launch_kernel(..., chained) may
// start while the kernel before it on the stream still runs. It must call wait_for_previous_grid
// (in every block, before any early return) before it reads what that kernel wrote, and calls
// let_next_grid_start when the next kernel's blocks may take their place on the SMs. Work that
// depends on nothing the previous kernels write (weights) can go before the wait. Both are no-ops
// where the kernel was not launched chained, and before sm_90.
#pragma once

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

}  // namespace moekit::cuda
