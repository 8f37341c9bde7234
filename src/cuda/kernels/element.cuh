// Element conversions shared by the kernels: float32 and bfloat16 to and from float.
#pragma once

#include <cuda_bf16.h>

namespace moekit::cuda {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16 v) { return __bfloat162float(v); }

// Reads element i of a float32 (is_bf16 == false) or bfloat16 array.
__device__ __forceinline__ float load_float(const void* p, bool is_bf16, int64_t i) {
  return is_bf16 ? __bfloat162float(static_cast<const bf16*>(p)[i]) : static_cast<const float*>(p)[i];
}

__device__ __forceinline__ void store_float(void* p, bool is_bf16, int64_t i, float v) {
  if (is_bf16) static_cast<bf16*>(p)[i] = __float2bfloat16_rn(v);
  else static_cast<float*>(p)[i] = v;
}

}  // namespace moekit::cuda
