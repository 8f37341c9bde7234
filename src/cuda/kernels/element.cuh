// Element conversions shared by the kernels: float32 and bfloat16 to and from float.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace moekit::cuda {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16 v) { return __bfloat162float(v); }

// Reads element i of a float32 (is_bf16 == false) or bfloat16 array.
__device__ __forceinline__ float load_float(const void* p, bool is_bf16, int64_t i) {
  return is_bf16 ? __bfloat162float(static_cast<const bf16*>(p)[i]) : static_cast<const float*>(p)[i];
}

// 8 bf16 in one 16-byte word, in order, as floats (exact: a bf16 is a float's high half).
__device__ __forceinline__ void bf16x8_to_floats(const uint4 v, float (&f)[8]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(words[i] << 16);
    f[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
}

__device__ __forceinline__ void store_float(void* p, bool is_bf16, int64_t i, float v) {
  if (is_bf16) static_cast<bf16*>(p)[i] = __float2bfloat16_rn(v);
  else static_cast<float*>(p)[i] = v;
}

}  // namespace moekit::cuda
