// Reading and writing one element of a float32 or bfloat16 tensor on the host.
#pragma once

#include <cstdint>

#include "../core/bf16.h"
#include "moekit/tensor.h"

namespace moekit::cpu {

inline float load_float(const void* data, DType dtype, int64_t i) {
  return dtype == DType::kBFloat16 ? bf16_to_float(static_cast<const uint16_t*>(data)[i])
                                   : static_cast<const float*>(data)[i];
}

inline void store_float(void* data, DType dtype, int64_t i, float v) {
  if (dtype == DType::kBFloat16) static_cast<uint16_t*>(data)[i] = float_to_bf16(v);
  else static_cast<float*>(data)[i] = v;
}

}  // namespace moekit::cpu
