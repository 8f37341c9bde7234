// Small helpers the launchers share.
#pragma once

#include <cstdint>
#include <string>

#include "moekit/error.h"
#include "moekit/tensor.h"

namespace moekit::cuda {

constexpr int kElementwiseThreads = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline bool aligned(const TensorView& t, int bytes) { return reinterpret_cast<uintptr_t>(t.data) % bytes == 0; }

// Kernels that read 4- or 16-byte words need the view's data aligned to them.
inline void require_aligned(const char* op, const char* arg, const TensorView& t, int bytes) {
  if (reinterpret_cast<uintptr_t>(t.data) % bytes != 0) {
    throw Error(Error::Kind::kValue, std::string("moekit.") + op + ": '" + arg + "' expected data aligned to " +
                                         std::to_string(bytes) + " bytes on CUDA, got an address that is not");
  }
}

}  // namespace moekit::cuda
