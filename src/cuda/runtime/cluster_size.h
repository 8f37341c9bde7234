// The largest thread block cluster a kernel can launch with on a device, found once per device.
#pragma once

#include <cuda_runtime_api.h>

#include <array>
#include <mutex>

#include "../../core/device_info.h"
#include "check.h"

namespace moekit::cuda {

// The most blocks one cluster of kKernel can hold on `device` (the current device) with `threads`
// threads and up to `smem` bytes of dynamic shared memory a block, sizes above the portable 8
// allowed; 1 where the device has no clusters. Queried on the first call for each device (a failed
// query is retried by the next call); the arguments must be the same on every call.
template <auto* kKernel>
int max_cluster_blocks(unsigned threads, size_t smem, int device, int device_major) {
  if (device_major < 9) return 1;
  static std::array<std::once_flag, DeviceInfoCache::kMaxDevices> once;
  static std::array<int, DeviceInfoCache::kMaxDevices> blocks{};
  std::call_once(once.at(static_cast<size_t>(device)), [&] {
    MOEKIT_CUDA_CHECK(cudaFuncSetAttribute(kKernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(1, 32, 1);
    config.blockDim = dim3(threads);
    config.dynamicSmemBytes = smem;
    int size = 1;
    MOEKIT_CUDA_CHECK(cudaOccupancyMaxPotentialClusterSize(&size, kKernel, &config));
    blocks[static_cast<size_t>(device)] = size;
  });
  return blocks[static_cast<size_t>(device)];
}

}  // namespace moekit::cuda
