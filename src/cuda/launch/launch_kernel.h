// cudaLaunchKernelEx for the kernels chained by programmatic dependent launch: with `chained`
// the kernel may start before the work before it on the stream has ended (sm_90), and waits for
// it with griddepcontrol.wait (kernels/grid_dependency.cuh).
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "../runtime/check.h"

namespace moekit::cuda {

// Whether kernels launched on a device of this compute capability major may chain.
inline bool chains_on(int device_major) { return device_major >= 9; }

template <class... Params, class... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, unsigned threads, size_t smem, cudaStream_t stream,
                   bool chained, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = chained ? 1 : 0;
  MOEKIT_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace moekit::cuda
