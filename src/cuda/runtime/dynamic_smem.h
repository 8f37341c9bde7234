// The per-device attribute that lets a kernel take more than 48 KB of dynamic shared memory.
#pragma once

#include <cuda_runtime_api.h>

#include <array>
#include <mutex>

#include "../../core/device_info.h"
#include "check.h"

namespace moekit::cuda {

// Lets kKernel take at least `bytes` of dynamic shared memory on `device` (the current device).
// The attribute only rises, so a call that needs less never lowers it under a concurrent launch
// that needs more; a failed raise is retried by the next call.
template <auto* kKernel>
void allow_dynamic_smem(int bytes, int device) {
  static std::array<int, DeviceInfoCache::kMaxDevices> raised{};
  static std::mutex mutex;
  const std::lock_guard<std::mutex> lock(mutex);
  int& allowed = raised.at(static_cast<size_t>(device));
  if (bytes <= allowed) return;
  MOEKIT_CUDA_CHECK(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  allowed = bytes;
}

}  // namespace moekit::cuda
