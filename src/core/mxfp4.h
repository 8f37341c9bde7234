// The MXFP4 format (OCP Microscaling v1.0): blocks of 32 values along the reduction axis,
// each an e2m1 code (4 bits: sign, 2 exponent bits, 1 mantissa bit), two codes per byte with
// the even element in the low nibble, and one e8m0 scale byte per block, 2^(s - 127),
// s = 255 meaning NaN.
//
// Scale rounding (our choice, the "round up" rule also used by triton_kernels): a block's
// scale is the smallest power of two 2^e with amax <= 6 * 2^e, so no element saturates;
// elements are then rounded to the nearest e2m1 value, ties to even. Blocks whose values are
// all e2m1 codes times one power of two round-trip exactly. s is clamped to [0, 254]; a block
// holding a NaN or an infinity gets s = 255 (all its elements dequantize to NaN); an all-zero
// block gets s = 0.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "host_device.h"

namespace moekit::mxfp4 {

constexpr int kBlock = 32;            // values per scale
constexpr int kBytesPerBlock = 16;    // two codes per byte
constexpr uint8_t kNanScale = 255;

MOEKIT_HD uint32_t float_bits(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v);
#else
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
#endif
}

// e2m1 code -> value: 0, .5, 1, 1.5, 2, 3, 4, 6 and their negatives (code 8 is -0).
MOEKIT_HD float e2m1_to_float(uint8_t code) {
  const int exp = (code >> 1) & 3;
  const float mant = static_cast<float>(code & 1);
  const float mag = exp == 0 ? 0.5f * mant : (1.0f + 0.5f * mant) * static_cast<float>(1 << (exp - 1));
  return (code & 8) ? -mag : mag;
}

// Nearest e2m1 code, ties to the even mantissa, |v| > 6 saturating to 6; the sign of zero
// is kept. NaN maps to +-6 (callers give NaN blocks the NaN scale instead).
MOEKIT_HD uint8_t float_to_e2m1(float v) {
  const uint8_t sign = (float_bits(v) >> 31) ? 8 : 0;
  const float a = fabsf(v);
  uint8_t mag;
  if (a <= 0.25f) mag = 0;        // tie 0.25 -> 0
  else if (a < 0.75f) mag = 1;    // 0.5; tie 0.75 -> 1.0
  else if (a <= 1.25f) mag = 2;   // 1.0; tie 1.25 -> 1.0
  else if (a < 1.75f) mag = 3;    // 1.5; tie 1.75 -> 2.0
  else if (a <= 2.5f) mag = 4;    // 2.0; tie 2.5 -> 2.0
  else if (a < 3.5f) mag = 5;     // 3.0; tie 3.5 -> 4.0
  else if (a <= 5.0f) mag = 6;    // 4.0; tie 5.0 -> 4.0
  else mag = 7;                   // 6.0, saturating
  return sign | mag;
}

MOEKIT_HD float e8m0_to_float(uint8_t s) {
  return s == kNanScale ? NAN : ldexpf(1.0f, static_cast<int>(s) - 127);
}

// The scale byte for a block whose largest magnitude is `amax` (finite, >= 0).
MOEKIT_HD uint8_t scale_for_amax(float amax) {
  if (!(amax > 0.0f)) return 0;
  int q;
  const float fr = frexpf(amax, &q);  // amax = fr * 2^q, fr in [0.5, 1)
  // smallest e with amax <= 6 * 2^e = 0.75 * 2^(e + 3)
  const int e = fr <= 0.75f ? q - 3 : q - 2;
  const int s = e + 127;
  return static_cast<uint8_t>(s < 0 ? 0 : (s > 254 ? 254 : s));
}

}  // namespace moekit::mxfp4
