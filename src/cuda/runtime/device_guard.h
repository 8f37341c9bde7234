// RAII: makes `device` current for the guard's lifetime and restores the caller's device
// afterwards (also when an exception unwinds). Switches only when needed.
#pragma once

#include <cuda_runtime_api.h>

#include "check.h"

namespace moekit::cuda {

class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    MOEKIT_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) MOEKIT_CUDA_CHECK(cudaSetDevice(device));
    switched_ = previous_ != device;
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);  // nothing sensible to do with an error here
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

}  // namespace moekit::cuda
