// cudaLaunchKernelEx for the kernels chained by programmatic dependent launch: with `chained`
// the kernel may start before the work before it on the stream has ended (sm_90), and waits for
// it with griddepcontrol.wait (kernels/grid_dependency.cuh). Optionally in thread block clusters.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "../runtime/check.h"

namespace moekit::cuda {

// Whether kernels launched on a device of this compute capability major may chain.
inline bool chains_on(int device_major) { return device_major >= 9; }

// The launch in clusters of `cluster` blocks (each dimension dividing the grid's; 1 x 1 x 1: no
// clusters).
template <class... Params, class... Args>
void launch_kernel_in_clusters(void (*kernel)(Params...), dim3 grid, dim3 cluster, unsigned threads, size_t smem,
                               cudaStream_t stream, bool chained, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attributes[2]{};
  if (chained) {
    attributes[config.numAttrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[config.numAttrs++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster.x * cluster.y * cluster.z > 1) {
    attributes[config.numAttrs].id = cudaLaunchAttributeClusterDimension;
    attributes[config.numAttrs].val.clusterDim.x = cluster.x;
    attributes[config.numAttrs].val.clusterDim.y = cluster.y;
    attributes[config.numAttrs++].val.clusterDim.z = cluster.z;
  }
  config.attrs = attributes;
  MOEKIT_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

template <class... Params, class... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, unsigned threads, size_t smem, cudaStream_t stream,
                   bool chained, Args&&... args) {
  launch_kernel_in_clusters(kernel, grid, dim3(1, 1, 1), threads, smem, stream, chained, std::forward<Args>(args)...);
}

}  // namespace moekit::cuda
