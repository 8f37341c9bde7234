// MXFP4 quantize / dequantize: one thread per block of 32 values (format: src/core/mxfp4.h).
#pragma once

#include <cstdint>

#include "../../../core/mxfp4.h"
#include "../element.cuh"

namespace moekit::cuda {

template <class T>
__global__ void quantize_mxfp4_kernel(const T* __restrict__ w, uint8_t* __restrict__ blocks,
                                      uint8_t* __restrict__ scales, int64_t n_blocks) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= n_blocks) return;
  float v[mxfp4::kBlock];
  float amax = 0.0f;
  bool finite = true;
#pragma unroll
  for (int i = 0; i < mxfp4::kBlock; ++i) {
    v[i] = to_float(w[b * mxfp4::kBlock + i]);
    finite = finite && isfinite(v[i]);
    amax = fmaxf(amax, fabsf(v[i]));
  }
  uint32_t packed[4];
  uint8_t s = mxfp4::kNanScale;
  if (finite) {
    s = mxfp4::scale_for_amax(amax);
    const int shift = 127 - static_cast<int>(s);
#pragma unroll
    for (int word = 0; word < 4; ++word) {
      uint32_t bits = 0;
#pragma unroll
      for (int i = 0; i < 8; ++i) bits |= uint32_t(mxfp4::float_to_e2m1(ldexpf(v[word * 8 + i], shift))) << (4 * i);
      packed[word] = bits;
    }
  } else {
    packed[0] = packed[1] = packed[2] = packed[3] = 0;
  }
  reinterpret_cast<uint4*>(blocks)[b] = make_uint4(packed[0], packed[1], packed[2], packed[3]);
  scales[b] = s;
}

template <class T>
__global__ void dequantize_mxfp4_kernel(const uint8_t* __restrict__ blocks, const uint8_t* __restrict__ scales,
                                        T* __restrict__ out, int64_t n_blocks) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= n_blocks) return;
  const float scale = mxfp4::e8m0_to_float(scales[b]);
  const uint4 q = reinterpret_cast<const uint4*>(blocks)[b];
  const uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
  for (int word = 0; word < 4; ++word) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float v = mxfp4::e2m1_to_float((words[word] >> (4 * i)) & 0xf) * scale;
      if constexpr (sizeof(T) == 2) out[b * mxfp4::kBlock + word * 8 + i] = __float2bfloat16_rn(v);
      else out[b * mxfp4::kBlock + word * 8 + i] = v;
    }
  }
}

}  // namespace moekit::cuda
