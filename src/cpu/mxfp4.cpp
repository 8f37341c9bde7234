#include "../core/mxfp4.h"
#include "../core/mxfp4_slabs.h"

#include <cmath>

#include "backend.h"
#include "element.h"
#include "mxfp4_block.h"
#include "parallel.h"

namespace moekit::cpu {

void quantize_mxfp4(const MxProblem& p, const TensorView& w, const TensorView& blocks, const TensorView& scales,
                    const ExecContext& ctx) {
  const int64_t n_blocks = p.rows * (p.K / mxfp4::kBlock);
  uint8_t* codes = blocks.ptr<uint8_t>();
  uint8_t* scale_out = scales.ptr<uint8_t>();
  parallel_for(n_blocks, 1024, ctx, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      float v[mxfp4::kBlock];
      float amax = 0.0f;
      bool finite = true;
      for (int i = 0; i < mxfp4::kBlock; ++i) {
        v[i] = load_float(w.data, w.dtype, b * mxfp4::kBlock + i);
        finite = finite && std::isfinite(v[i]);
        amax = std::fmax(amax, std::fabs(v[i]));
      }
      uint8_t* out = codes + b * mxfp4::kBytesPerBlock;
      if (!finite) {
        scale_out[b] = mxfp4::kNanScale;
        for (int i = 0; i < mxfp4::kBytesPerBlock; ++i) out[i] = 0;
        continue;
      }
      const uint8_t s = mxfp4::scale_for_amax(amax);
      scale_out[b] = s;
      const int shift = 127 - static_cast<int>(s);  // multiply by 2^-e: exact for powers of two
      for (int i = 0; i < mxfp4::kBytesPerBlock; ++i) {
        const uint8_t lo = mxfp4::float_to_e2m1(std::ldexp(v[2 * i], shift));
        const uint8_t hi = mxfp4::float_to_e2m1(std::ldexp(v[2 * i + 1], shift));
        out[i] = static_cast<uint8_t>(lo | (hi << 4));
      }
    }
  });
}

void dequantize_mxfp4(const MxProblem& p, const TensorView& blocks, const TensorView& scales, const TensorView& out,
                      const ExecContext& ctx) {
  const int64_t n_blocks = p.rows * (p.K / mxfp4::kBlock);
  const uint8_t* codes = blocks.ptr<uint8_t>();
  const uint8_t* scale_in = scales.ptr<uint8_t>();
  parallel_for(n_blocks, 1024, ctx, [&](int64_t begin, int64_t end) {
    float values[mxfp4::kBlock];
    for (int64_t b = begin; b < end; ++b) {
      decode_mxfp4_block(codes + b * mxfp4::kBytesPerBlock, scale_in[b], values);
      for (int i = 0; i < mxfp4::kBlock; ++i) store_float(out.data, out.dtype, b * mxfp4::kBlock + i, values[i]);
    }
  });
}

void repack_mxfp4(const MxSlabsProblem& p, const TensorView& blocks, const TensorView& scales, const TensorView& codes,
                  const TensorView& slab_scales, const ExecContext& ctx) {
  parallel_for(p.E * p.slabs * p.steps, 16, ctx, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {  // one slab step: (expert, slab, step)
      const int64_t e = i / (p.slabs * p.steps), slab = i / p.steps % p.slabs, step = i % p.steps;
      const uint8_t* expert_blocks = blocks.ptr<uint8_t>() + e * p.N * (p.K / 2);
      const uint8_t* expert_scales = scales.ptr<uint8_t>() + e * p.N * (p.K / 32);
      uint8_t* out = codes.ptr<uint8_t>() + i * mxfp4_slabs::kCodeBytes;
      for (int w = 0; w < mxfp4_slabs::kCodeWords; ++w) {
        const uint32_t word = mxfp4_slabs::code_word(expert_blocks, p.N, p.K, slab, step, w);
        for (int j = 0; j < 4; ++j) out[4 * w + j] = static_cast<uint8_t>(word >> (8 * j));  // little-endian
      }
      uint8_t* out_scales = slab_scales.ptr<uint8_t>() + i * mxfp4_slabs::kScaleBytes;
      for (int o = 0; o < mxfp4_slabs::kScaleBytes; ++o) {
        out_scales[o] = mxfp4_slabs::scale_byte(expert_scales, p.N, p.K, slab, step, o);
      }
    }
  });
}

}  // namespace moekit::cpu
