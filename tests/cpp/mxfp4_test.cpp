// MXFP4 format: the e2m1 / e8m0 helpers of core/mxfp4.h bit by bit, and quantize_mxfp4 /
// dequantize_mxfp4 through the public API. The expected values come from a test-side table
// and a test-side quantizer written from docs/mxfp4.md, not from the library's helpers.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/mxfp4.h"
#include "core/mxfp4_slabs.h"
#include "test_util.h"

namespace moekit::test {
namespace {

constexpr const float* kMag = kE2m1Mag;

// Test-side e2m1 decoding (the OCP table), independent of mxfp4::e2m1_to_float.
double code_value(uint8_t code) { return e2m1_value(code); }

// Test-side quantizer of one block, from the documented rule: scale 2^e, e the smallest with
// amax <= 6 * 2^e, clamped to [-127, 127]; elements x / 2^e rounded to the nearest e2m1
// magnitude, ties to the even code (even mantissa), saturating at 6; sign of zero kept.
uint8_t ref_scale(double amax) {
  if (amax == 0.0) return 0;
  int e = std::ilogb(amax) - 3;
  while (6.0 * std::ldexp(1.0, e) < amax) ++e;
  while (6.0 * std::ldexp(1.0, e - 1) >= amax) --e;
  e = std::max(-127, std::min(127, e));
  return static_cast<uint8_t>(e + 127);
}
uint8_t ref_code(double x) {
  const uint8_t sign = std::signbit(x) ? 8 : 0;
  const double a = std::fabs(x);
  int best = 0;
  for (int c = 1; c < 8; ++c) {
    const double dc = std::fabs(a - kMag[c]), db = std::fabs(a - kMag[best]);
    if (dc < db || (dc == db && c % 2 == 0)) best = c;
  }
  return sign | static_cast<uint8_t>(best);
}

struct Quantized {
  HostTensor blocks, scales;
};

Quantized quantize(HostTensor& w, const ExecContext& ctx = {}) {
  std::vector<int64_t> lead(w.shape().begin(), w.shape().end() - 1);
  const int64_t K = w.shape().back();
  std::vector<int64_t> bshape = lead, sshape = lead;
  bshape.push_back(K / 32);
  bshape.push_back(16);
  sshape.push_back(K / 32);
  Quantized q{HostTensor(DType::kUInt8, bshape), HostTensor(DType::kUInt8, sshape)};
  q.blocks.poison();
  q.scales.poison();
  quantize_mxfp4(w.view(), q.blocks.view(), q.scales.view(), ctx);
  return q;
}

HostTensor dequantize(Quantized& q, DType out_dtype, const ExecContext& ctx = {}) {
  std::vector<int64_t> shape(q.scales.shape().begin(), q.scales.shape().end());
  shape.back() *= 32;
  HostTensor out(out_dtype, shape);
  out.poison();
  dequantize_mxfp4(q.blocks.view(), q.scales.view(), out.view(), ctx);
  return out;
}

// ------------------------------------------------------------------------------- e2m1 codes

TEST(E2m1, AllSixteenCodesDecode) {
  const float expected[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                              -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
  for (int c = 0; c < 16; ++c) {
    EXPECT_EQ(bits_of(mxfp4::e2m1_to_float(static_cast<uint8_t>(c))), bits_of(expected[c])) << "code " << c;
  }
  EXPECT_TRUE(std::signbit(mxfp4::e2m1_to_float(8)));
  EXPECT_FALSE(std::signbit(mxfp4::e2m1_to_float(0)));
}

TEST(E2m1, EveryCodeValueEncodesToItself) {
  for (int c = 0; c < 16; ++c) {
    const float v = c & 8 ? -kMag[c & 7] : kMag[c & 7];
    EXPECT_EQ(mxfp4::float_to_e2m1(v), c) << "value " << v;
  }
}

TEST(E2m1, RoundsToNearestTiesToEven) {
  struct Tie { float v; uint8_t code; uint8_t below; uint8_t above; };
  // value at the midpoint, its code, and the codes just below / just above the midpoint.
  const Tie ties[] = {{0.25f, 0, 0, 1}, {0.75f, 2, 1, 2}, {1.25f, 2, 2, 3}, {1.75f, 4, 3, 4},
                      {2.5f, 4, 4, 5},  {3.5f, 6, 5, 6},  {5.0f, 6, 6, 7}};
  for (const Tie& t : ties) {
    EXPECT_EQ(mxfp4::float_to_e2m1(t.v), t.code) << t.v;
    EXPECT_EQ(mxfp4::float_to_e2m1(-t.v), t.code | 8) << -t.v;
    EXPECT_EQ(mxfp4::float_to_e2m1(std::nextafter(t.v, 0.0f)), t.below) << "just below " << t.v;
    EXPECT_EQ(mxfp4::float_to_e2m1(std::nextafter(t.v, 100.0f)), t.above) << "just above " << t.v;
    EXPECT_EQ(mxfp4::float_to_e2m1(-std::nextafter(t.v, 100.0f)), t.above | 8) << "just above " << -t.v;
  }
  // Off-midpoint values go to the nearest.
  EXPECT_EQ(mxfp4::float_to_e2m1(0.3f), 1);
  EXPECT_EQ(mxfp4::float_to_e2m1(2.9f), 5);
  EXPECT_EQ(mxfp4::float_to_e2m1(4.9f), 6);
  EXPECT_EQ(mxfp4::float_to_e2m1(5.1f), 7);
}

TEST(E2m1, SaturatesAboveSix) {
  for (float v : {6.0f, std::nextafter(6.0f, 7.0f), 7.0f, 100.0f, FLT_MAX, INFINITY}) {
    EXPECT_EQ(mxfp4::float_to_e2m1(v), 7) << v;
    EXPECT_EQ(mxfp4::float_to_e2m1(-v), 15) << -v;
  }
}

TEST(E2m1, KeepsTheSignOfZero) {
  EXPECT_EQ(mxfp4::float_to_e2m1(0.0f), 0);
  EXPECT_EQ(mxfp4::float_to_e2m1(-0.0f), 8);
  EXPECT_EQ(mxfp4::float_to_e2m1(-0.1f), 8);           // rounds to -0
  EXPECT_EQ(mxfp4::float_to_e2m1(-FLT_TRUE_MIN), 8);
  EXPECT_EQ(mxfp4::float_to_e2m1(FLT_TRUE_MIN), 0);
}

// ------------------------------------------------------------------------------ e8m0 scales

TEST(E8m0, ExtremesAndEveryByte) {
  EXPECT_EQ(bits_of(mxfp4::e8m0_to_float(0)), 0x00400000u);  // 2^-127, a float32 subnormal
  EXPECT_EQ(mxfp4::e8m0_to_float(0), std::ldexp(1.0f, -127));
  EXPECT_EQ(mxfp4::e8m0_to_float(127), 1.0f);
  EXPECT_EQ(bits_of(mxfp4::e8m0_to_float(254)), 0x7f000000u);  // 2^127
  EXPECT_TRUE(std::isnan(mxfp4::e8m0_to_float(255)));
  for (int s = 0; s < 255; ++s) {
    EXPECT_EQ(double(mxfp4::e8m0_to_float(static_cast<uint8_t>(s))), std::ldexp(1.0, s - 127)) << "s " << s;
  }
}

TEST(ScaleForAmax, ZeroAndSubnormalsClampToZero) {
  EXPECT_EQ(mxfp4::scale_for_amax(0.0f), 0);
  EXPECT_EQ(mxfp4::scale_for_amax(-0.0f), 0);
  EXPECT_EQ(mxfp4::scale_for_amax(FLT_TRUE_MIN), 0);
  EXPECT_EQ(mxfp4::scale_for_amax(float_of_bits(0x007fffffu)), 0);  // largest subnormal
  EXPECT_EQ(mxfp4::scale_for_amax(FLT_MIN), 0);
  const float six_tiny = 6.0f * std::ldexp(1.0f, -127);  // exactly 6 * 2^-127: s = 0, no clamping needed
  EXPECT_EQ(mxfp4::scale_for_amax(six_tiny), 0);
  EXPECT_EQ(mxfp4::scale_for_amax(std::nextafter(six_tiny, 1.0f)), 1);
}

TEST(ScaleForAmax, LargeFloats) {
  // 6 * 2^126 > FLT_MAX > 6 * 2^125: s = 126 + 127.
  EXPECT_EQ(mxfp4::scale_for_amax(FLT_MAX), 253);
  EXPECT_EQ(mxfp4::scale_for_amax(6.0f * std::ldexp(1.0f, 125)), 252);
  EXPECT_EQ(mxfp4::scale_for_amax(std::nextafter(6.0f * std::ldexp(1.0f, 125), INFINITY)), 253);
}

TEST(ScaleForAmax, ExactPowersAndTheirNeighbours) {
  for (int e = -127; e <= 125; ++e) {
    const float six = static_cast<float>(6.0 * std::ldexp(1.0, e));
    const float four = static_cast<float>(4.0 * std::ldexp(1.0, e));  // in (3, 6] * 2^e
    EXPECT_EQ(mxfp4::scale_for_amax(six), e + 127) << "6 * 2^" << e;
    EXPECT_EQ(mxfp4::scale_for_amax(four), e + 127) << "4 * 2^" << e;
    EXPECT_EQ(mxfp4::scale_for_amax(std::nextafter(six, INFINITY)), e + 128) << "above 6 * 2^" << e;
    if (e > -127) {
      // 3 * 2^e == 6 * 2^(e-1): the smaller scale still holds it.
      const float three = static_cast<float>(3.0 * std::ldexp(1.0, e));
      EXPECT_EQ(mxfp4::scale_for_amax(three), e + 126) << "3 * 2^" << e;
      EXPECT_EQ(mxfp4::scale_for_amax(std::nextafter(three, INFINITY)), e + 127) << "above 3 * 2^" << e;
    }
  }
}

TEST(ScaleForAmax, MatchesTheRuleOnRandomFloats) {
  std::mt19937 rng(7);
  for (int i = 0; i < 20000; ++i) {
    const float amax = float_of_bits(static_cast<uint32_t>(rng()) & 0x7f7fffffu);  // finite, >= 0
    if (amax == 0.0f) continue;
    EXPECT_EQ(mxfp4::scale_for_amax(amax), ref_scale(amax)) << amax;
  }
}

// ------------------------------------------------------------------- quantize / dequantize

// Every scale a finite block can get (0..252; 253 needs amax > 6 * 2^125, where codes >= 6
// would overflow float) with random codes and a forced +-4 or +-6: quantization recovers the
// exact codes and scales, and dequantization gives back every input bit (f32 and bf16 out).
TEST(QuantizeMxfp4, ExactBlocksRoundTripAtEveryScale) {
  const int kScales = 253;  // = 11 * 23
  const int64_t K = 64;
  std::mt19937 rng(1);
  HostTensor w(DType::kFloat32, {11, 23, K});
  std::vector<uint8_t> want_blocks(kScales * 2 * 16), want_scales(kScales * 2);
  for (int s = 0; s < kScales; ++s) {
    for (int b = 0; b < 2; ++b) {
      uint8_t codes[32];
      for (uint8_t& c : codes) c = static_cast<uint8_t>(rng() % 16);
      codes[rng() % 32] = static_cast<uint8_t>((rng() % 2 ? 6 : 7) | (rng() % 2 ? 8 : 0));
      for (int i = 0; i < 32; ++i) {
        w.set((s * 2 + b) * 32 + i, static_cast<float>(code_value(codes[i]) * std::ldexp(1.0, s - 127)));
      }
      for (int i = 0; i < 16; ++i) want_blocks[(s * 2 + b) * 16 + i] = codes[2 * i] | (codes[2 * i + 1] << 4);
      want_scales[s * 2 + b] = static_cast<uint8_t>(s);
    }
  }
  Quantized q = quantize(w);
  for (int i = 0; i < kScales * 2; ++i) ASSERT_EQ(q.scales.ptr<uint8_t>()[i], want_scales[i]) << "block " << i;
  for (int i = 0; i < kScales * 32; ++i) ASSERT_EQ(q.blocks.ptr<uint8_t>()[i], want_blocks[i]) << "byte " << i;

  HostTensor f32 = dequantize(q, DType::kFloat32);
  HostTensor bf16 = dequantize(q, DType::kBFloat16);
  EXPECT_EQ(f32.shape(), w.shape());
  for (int64_t i = 0; i < w.numel(); ++i) {
    ASSERT_EQ(bits_of(f32.get(i)), bits_of(w.get(i))) << "element " << i;
    ASSERT_EQ(bf16.ptr<uint16_t>()[i], float_to_bf16(w.get(i))) << "element " << i;  // exact: 2 significant bits
    ASSERT_EQ(bits_of(bf16.get(i)), bits_of(w.get(i))) << "element " << i;
  }

  // bfloat16 input holding the same (bf16-exact) values quantizes identically.
  HostTensor wb(DType::kBFloat16, w.shape());
  for (int64_t i = 0; i < w.numel(); ++i) wb.set(i, w.get(i));
  Quantized qb = quantize(wb);
  EXPECT_EQ(qb.blocks.bytes(), q.blocks.bytes());
  EXPECT_EQ(qb.scales.bytes(), q.scales.bytes());
}

TEST(QuantizeMxfp4, RoundsTiesToEvenAndSaturatesNothing) {
  // Block 0: amax 6 * 2^-3 -> s = 124, ties at every midpoint (scaled by 2^-3).
  // Block 1: amax 5 -> s = 127; 5 is a tie and rounds to 4.
  // Block 2: amax 7 -> s = 128 (round-up rule: 7 <= 6 * 2); 7 / 2 = 3.5 ties to 4 -> 8.
  const float ties[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
  const uint8_t tie_codes[] = {0, 2, 2, 4, 4, 6, 6};
  HostTensor w(DType::kFloat32, {3, 32});
  std::vector<uint8_t> want(96);
  for (int i = 0; i < 32; ++i) {
    const int t = i % 7;
    const bool neg = (i / 7) % 2;
    w.set(i, (neg ? -ties[t] : ties[t]) * 0.125f);
    want[i] = tie_codes[t] | (neg ? 8 : 0);
    w.set(32 + i, i == 0 ? 5.0f : 1.0f);
    want[32 + i] = i == 0 ? 6 : 2;
    w.set(64 + i, i == 31 ? -7.0f : 0.5f);
    want[64 + i] = i == 31 ? 14 : 0;  // at s = 128: 0.5 / 2 = 0.25 ties to +0; -3.5 ties to -4
  }
  w.set(31, 6.0f * 0.125f);  // block 0's amax: 0.75 = 6 * 2^-3
  want[31] = 7;
  Quantized q = quantize(w);
  EXPECT_EQ(q.scales.ptr<uint8_t>()[0], 124);
  EXPECT_EQ(q.scales.ptr<uint8_t>()[1], 127);
  EXPECT_EQ(q.scales.ptr<uint8_t>()[2], 128);
  for (int i = 0; i < 96; ++i) {
    const uint8_t byte = q.blocks.ptr<uint8_t>()[i / 2];
    EXPECT_EQ(i % 2 ? byte >> 4 : byte & 0xf, want[i]) << "element " << i;
  }
  HostTensor out = dequantize(q, DType::kFloat32);
  EXPECT_EQ(out.get(32), 4.0f);
  EXPECT_EQ(out.get(95), -8.0f);
}

TEST(QuantizeMxfp4, MatchesAReferenceQuantizerOnRandomData) {
  // 4096 blocks (enough for the CPU backend to split the work over threads), each with its
  // own magnitude over a wide range; compared code by code with the test-side quantizer.
  std::mt19937 rng(2);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t rows = 64, K = 2048;
  HostTensor w(DType::kFloat32, {rows, K});
  for (int64_t b = 0; b < rows * K / 32; ++b) {
    const float mag = std::ldexp(1.0f, static_cast<int>(rng() % 60) - 30);
    for (int i = 0; i < 32; ++i) {
      float v = normal(rng) * mag;
      if (v == 0.0f) v = mag;
      w.set(b * 32 + i, v);
    }
  }
  for (int threads : {0, 1, 3}) {
    SCOPED_TRACE("cpu_threads " + std::to_string(threads));
    ExecContext ctx;
    ctx.cpu_threads = threads;
    Quantized q = quantize(w, ctx);
    for (int64_t b = 0; b < rows * K / 32; ++b) {
      double amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(double(w.get(b * 32 + i))));
      const uint8_t s = ref_scale(amax);
      ASSERT_EQ(q.scales.ptr<uint8_t>()[b], s) << "block " << b;
      for (int i = 0; i < 32; ++i) {
        const uint8_t want = ref_code(std::ldexp(double(w.get(b * 32 + i)), 127 - s));
        const uint8_t byte = q.blocks.ptr<uint8_t>()[b * 16 + i / 2];
        ASSERT_EQ(i % 2 ? byte >> 4 : byte & 0xf, want) << "block " << b << " element " << i;
      }
    }
    // Dequantization agrees with the test-side decoding.
    HostTensor out = dequantize(q, DType::kFloat32, ctx);
    for (int64_t i = 0; i < w.numel(); ++i) {
      const uint8_t byte = q.blocks.ptr<uint8_t>()[i / 2];
      const double want = code_value(i % 2 ? byte >> 4 : byte & 0xf) *
                          std::ldexp(1.0, q.scales.ptr<uint8_t>()[i / 32] - 127);
      ASSERT_EQ(double(out.get(i)), want) << "element " << i;
    }
  }
}

TEST(QuantizeMxfp4, NonFiniteBlocksGetTheNanScale) {
  HostTensor w(DType::kFloat32, {2, 64});
  std::mt19937 rng(3);
  for (int64_t i = 0; i < w.numel(); ++i) {  // nonzero e2m1 values: block 0 is exact
    w.set(i, (rng() % 2 ? -1.0f : 1.0f) * kMag[1 + rng() % 7]);
  }
  w.set(1 * 32 + 7, NAN);        // block 1
  w.set(2 * 32 + 0, INFINITY);   // block 2
  w.set(3 * 32 + 31, -INFINITY); // block 3
  Quantized q = quantize(w);
  EXPECT_NE(q.scales.ptr<uint8_t>()[0], 255);
  for (int b = 1; b < 4; ++b) EXPECT_EQ(q.scales.ptr<uint8_t>()[b], 255) << "block " << b;
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    HostTensor out = dequantize(q, dt);
    for (int i = 0; i < 32; ++i) EXPECT_EQ(out.get(i), round_to(dt, w.get(i))) << i;  // block 0 intact
    for (int i = 32; i < 128; ++i) EXPECT_TRUE(std::isnan(out.get(i))) << "element " << i;
  }
}

TEST(QuantizeMxfp4, ZeroBlocksAndNegativeZeros) {
  HostTensor w(DType::kFloat32, {3, 32});
  for (int i = 0; i < 32; ++i) {
    w.set(i, 0.0f);                          // block 0: all +0
    w.set(32 + i, -0.0f);                    // block 1: all -0
    w.set(64 + i, i % 3 ? -0.0f : 1.5f);     // block 2: -0 among 1.5s
  }
  Quantized q = quantize(w);
  EXPECT_EQ(q.scales.ptr<uint8_t>()[0], 0);
  EXPECT_EQ(q.scales.ptr<uint8_t>()[1], 0);
  EXPECT_EQ(q.scales.ptr<uint8_t>()[2], 125);  // amax 1.5 = 6 * 2^-2
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(q.blocks.ptr<uint8_t>()[i], 0x00) << i;
    EXPECT_EQ(q.blocks.ptr<uint8_t>()[16 + i], 0x88) << i;
  }
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    HostTensor out = dequantize(q, dt);
    for (int64_t i = 0; i < w.numel(); ++i) EXPECT_EQ(bits_of(out.get(i)), bits_of(w.get(i))) << "element " << i;
  }
}

TEST(DequantizeMxfp4, NibbleOrderLowIsEven) {
  HostTensor blocks(DType::kUInt8, {1, 16}), scales(DType::kUInt8, {1});
  blocks.u8(0) = 0x72;  // element 0: code 2 (1.0), element 1: code 7 (6.0)
  for (int i = 1; i < 16; ++i) blocks.u8(i) = static_cast<uint8_t>(i | ((15 - i) << 4));
  scales.u8(0) = 128;  // x2
  Quantized q{blocks, scales};
  HostTensor out = dequantize(q, DType::kFloat32);
  EXPECT_EQ(out.get(0), 2.0f);
  EXPECT_EQ(out.get(1), 12.0f);
  for (int i = 1; i < 16; ++i) {
    EXPECT_EQ(bits_of(out.get(2 * i)), bits_of(static_cast<float>(2 * code_value(i)))) << i;
    EXPECT_EQ(bits_of(out.get(2 * i + 1)), bits_of(static_cast<float>(2 * code_value(15 - i)))) << i;
  }
  // And quantizing it back rebuilds the hand-made bytes.
  Quantized back = quantize(out);
  EXPECT_EQ(back.scales.u8(0), 128);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(back.blocks.u8(i), blocks.u8(i)) << "byte " << i;
}

TEST(DequantizeMxfp4, EveryScaleByte) {
  HostTensor blocks(DType::kUInt8, {256, 16}), scales(DType::kUInt8, {256});
  for (int s = 0; s < 256; ++s) {
    scales.u8(s) = static_cast<uint8_t>(s);
    blocks.u8(s * 16 + 0) = 0x21;  // 0.5, 1.0
    for (int i = 1; i < 16; ++i) blocks.u8(s * 16 + i) = 0x4c;  // -2.0, 2.0
  }
  Quantized q{blocks, scales};
  HostTensor out = dequantize(q, DType::kFloat32);
  for (int s = 0; s < 255; ++s) {
    EXPECT_EQ(double(out.get(s * 32 + 0)), std::ldexp(0.5, s - 127)) << "s " << s;
    EXPECT_EQ(double(out.get(s * 32 + 1)), std::ldexp(1.0, s - 127)) << "s " << s;
  }
  // Documented: codes >= 2 at s = 254 overflow float32 to +-Inf.
  EXPECT_EQ(out.get(254 * 32 + 2), -INFINITY);
  EXPECT_EQ(out.get(254 * 32 + 3), INFINITY);
  for (int i = 0; i < 32; ++i) EXPECT_TRUE(std::isnan(out.get(255 * 32 + i))) << i;
}

TEST(QuantizeMxfp4, EmptyTensorsAreANoOp) {
  // Empty tensors have null data pointers, as torch gives them: any access would fault.
  HostTensor w(DType::kFloat32, {0, 64}), blocks(DType::kUInt8, {0, 2, 16}), scales(DType::kUInt8, {0, 2});
  ASSERT_EQ(blocks.view().data, nullptr);
  EXPECT_NO_THROW(quantize_mxfp4(w.view(), blocks.view(), scales.view()));
  HostTensor out(DType::kFloat32, {0, 64});
  EXPECT_NO_THROW(dequantize_mxfp4(blocks.view(), scales.view(), out.view()));
}

TEST(RepackMxfp4, EachCodeOfASlabStepHasExactlyOnePlace) {
  // The slab layout is a permutation: the 512 words' 4096 codes cover the 64 rows x 64 k once.
  std::vector<int> seen(mxfp4_slabs::kRows * mxfp4_slabs::kStepK, 0);
  for (int w = 0; w < mxfp4_slabs::kCodeWords; ++w) {
    for (int p = 0; p < 8; ++p) {
      int row = -1, k = -1;
      mxfp4_slabs::code_source(w, p, row, k);
      ASSERT_TRUE(row >= 0 && row < mxfp4_slabs::kRows && k >= 0 && k < mxfp4_slabs::kStepK) << w;
      ++seen[row * mxfp4_slabs::kStepK + k];
    }
  }
  for (int i = 0; i < static_cast<int>(seen.size()); ++i) EXPECT_EQ(seen[i], 1) << "row " << i / 64 << " k " << i % 64;
}

TEST(RepackMxfp4, AThreadsWordHoldsOneRowAndOneScaleBlock) {
  // Word q of a thread is one row's codes of one 32-block, so one scale multiplies its 8 codes.
  for (int w = 0; w < mxfp4_slabs::kCodeWords; ++w) {
    int row0, k0;
    mxfp4_slabs::code_source(w, 0, row0, k0);
    for (int p = 1; p < 8; ++p) {
      int row, k;
      mxfp4_slabs::code_source(w, p, row, k);
      EXPECT_EQ(row, row0) << w;
      EXPECT_EQ(k / 32, k0 / 32) << w;
    }
  }
}

TEST(RepackMxfp4, TheCodesBitsTileTheWord) {
  std::vector<int> seen(32, 0);
  for (int p = 0; p < 8; ++p)
    for (int b = 0; b < 4; ++b) ++seen[mxfp4_slabs::code_bit(p, b)];
  for (int i = 0; i < 32; ++i) EXPECT_EQ(seen[i], 1) << "bit " << i;
}

// A bf16 bit pattern's value (bf16 is float's upper half).
double bf16_value(uint32_t bits) {
  const uint32_t f = bits << 16;
  float v;
  std::memcpy(&v, &f, sizeof(v));
  return v;
}

template <int I>
uint32_t pair_bits(uint32_t c) { return mxfp4_slabs::pair_bits<I>(c); }

// The same value, the sign of a zero included (code 8 is -0).
bool same(double a, double b) { return a == b && std::signbit(a) == std::signbit(b); }

TEST(RepackMxfp4, EachPairDecodesItsTwoCodesExactlyWhateverTheOtherBits) {
  // pair_bits<i> (what the kernel runs, a rotation or a multiply and masks) of a word holding
  // codes (c0, c1) as codes i and i + 4: each half reads as that code's e2m1 value times 2^-126,
  // for every (c0, c1) and whatever the word's other 24 bits hold (no carry from them, none
  // between the multiply's copies).
  uint32_t (*const pair[4])(uint32_t) = {pair_bits<0>, pair_bits<1>, pair_bits<2>, pair_bits<3>};
  std::mt19937 rng(7);
  for (int i = 0; i < 4; ++i) {
    for (int c0 = 0; c0 < 16; ++c0) {
      for (int c1 = 0; c1 < 16; ++c1) {
        uint32_t mine = 0;
        for (int b = 0; b < 4; ++b) {
          mine |= ((c0 >> b) & 1u) << mxfp4_slabs::code_bit(i, b);
          mine |= ((c1 >> b) & 1u) << mxfp4_slabs::code_bit(i + 4, b);
        }
        uint32_t theirs_mask = 0;
        for (int b = 0; b < 4; ++b) theirs_mask |= (1u << mxfp4_slabs::code_bit(i, b)) | (1u << mxfp4_slabs::code_bit(i + 4, b));
        for (uint32_t other : {0u, ~0u, static_cast<uint32_t>(rng()), static_cast<uint32_t>(rng())}) {
          const uint32_t r = pair[i](mine | (other & ~theirs_mask));
          ASSERT_TRUE(same(bf16_value(r & 0xffffu), std::ldexp(code_value(c0), -126))) << i << " " << c0 << " " << c1;
          ASSERT_TRUE(same(bf16_value(r >> 16), std::ldexp(code_value(c1), -126))) << i << " " << c0 << " " << c1;
        }
      }
    }
  }
}

TEST(RepackMxfp4, AWordDecodesToTheCheckpointCodesAtItsFragmentPlaces) {
  // code_word (what repack_mxfp4 writes) read back by pair_bits: pair i's halves are the
  // checkpoint's codes at code_source(word, i) and code_source(word, i + 4), for a slab past N's
  // end and a step past K's (code 0 there).
  const int64_t N = 100, K = 96;
  std::mt19937 rng(11);
  std::vector<uint8_t> blocks(N * K / 2);
  for (auto& b : blocks) b = static_cast<uint8_t>(rng());
  uint32_t (*const pair[4])(uint32_t) = {pair_bits<0>, pair_bits<1>, pair_bits<2>, pair_bits<3>};
  for (int64_t slab = 0; slab < mxfp4_slabs::slabs(N); ++slab) {
    for (int64_t step = 0; step < mxfp4_slabs::steps(K); ++step) {
      for (int w = 0; w < mxfp4_slabs::kCodeWords; ++w) {
        const uint32_t word = mxfp4_slabs::code_word(blocks.data(), N, K, slab, step, w);
        for (int p = 0; p < 8; ++p) {
          int r, k;
          mxfp4_slabs::code_source(w, p, r, k);
          const int64_t row = slab * 64 + r, col = step * 64 + k;
          const uint8_t code = row < N && col < K ? (blocks[row * (K / 2) + col / 2] >> (4 * (col % 2))) & 0xf : 0;
          const uint32_t half = (pair[p % 4](word) >> (16 * (p / 4))) & 0xffffu;
          ASSERT_TRUE(same(bf16_value(half), std::ldexp(code_value(code), -126))) << slab << " " << step << " " << w << " " << p;
        }
      }
    }
  }
}

}  // namespace
}  // namespace moekit::test
