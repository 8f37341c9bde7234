// MXFP4 quantize / dequantize: one thread per block of 32 values (format: src/core/mxfp4.h); the
// repack into the Hopper main loop's slabs (src/core/mxfp4_slabs.h).
#pragma once

#include <cstdint>

#include "../../../core/mxfp4.h"
#include "../../../core/mxfp4_slabs.h"
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

// repack_mxfp4: a thread per code word (its four bytes, little-endian), then per scale byte (a
// grid-stride loop), each computed by the specification's own function (mxfp4_slabs.h);
// n_code_words = E * slabs * steps * 512.
__global__ void repack_mxfp4_kernel(const uint8_t* __restrict__ blocks, const uint8_t* __restrict__ scales,
                                    uint8_t* __restrict__ codes, uint8_t* __restrict__ slab_scales, int64_t N,
                                    int64_t K, int64_t slabs, int64_t steps, int64_t n_code_words) {
  namespace sl = mxfp4_slabs;
  const int64_t n = n_code_words + n_code_words / sl::kCodeWords * sl::kScaleBytes;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const bool scale = i >= n_code_words;
    const int64_t at = scale ? i - n_code_words : i;
    const int run = scale ? sl::kScaleBytes : sl::kCodeWords;
    const int64_t slab_step = at / run, e = slab_step / (slabs * steps);
    const int64_t slab = slab_step / steps % slabs, step = slab_step % steps;
    const int o = static_cast<int>(at % run);
    if (scale) {
      slab_scales[at] = sl::scale_byte(scales + e * N * (K / 32), N, K, slab, step, o);
    } else {
      const uint32_t word = sl::code_word(blocks + e * N * (K / 2), N, K, slab, step, o);
#pragma unroll
      for (int j = 0; j < 4; ++j) codes[4 * at + j] = static_cast<uint8_t>(word >> (8 * j));
    }
  }
}

}  // namespace moekit::cuda
