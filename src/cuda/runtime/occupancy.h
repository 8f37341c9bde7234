// How many blocks of a kernel one SM holds at once (the occupancy API), per device: the size of
// a persistent grid.
#pragma once

#include <cuda_runtime_api.h>

#include <array>
#include <mutex>

#include "../../core/device_info.h"
#include "check.h"

namespace moekit::cuda {

// Blocks of kKernel resident per SM on `device` (the current device) at `threads` threads and
// `smem` bytes of dynamic shared memory a block; queried once per device (a launch's shape is
// fixed per kernel), at least 1.
template <auto* kKernel>
int resident_blocks_per_sm(int threads, int smem, int device) {
  static std::array<int, DeviceInfoCache::kMaxDevices> known{};
  static std::mutex mutex;
  const std::lock_guard<std::mutex> lock(mutex);
  int& blocks = known.at(static_cast<size_t>(device));
  if (blocks == 0) {
    int n = 0;
    MOEKIT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kKernel, threads, static_cast<size_t>(smem)));
    blocks = n > 0 ? n : 1;
  }
  return blocks;
}

}  // namespace moekit::cuda
