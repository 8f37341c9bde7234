#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "moekit/error.h"

#include "backend.h"
#include "element.h"
#include "parallel.h"

namespace moekit::cpu {
namespace {

float round_to(DType dtype, float v) { return dtype == DType::kBFloat16 ? bf16_to_float(float_to_bf16(v)) : v; }

}  // namespace

void attention_decode(const AttentionDecodeProblem& p, const AttentionDecodeArgs& a, const ExecContext& ctx) {
  const int64_t T = p.T, Hq = p.Hq, Hkv = p.Hkv, D = p.D, half = p.D / 2, group = p.Hq / p.Hkv;
  const DType dt = a.qkv.dtype;
  const int64_t p0 = a.position.ptr<int32_t>()[0];
  if (p0 < 0 || p0 + T > p.L) {
    throw Error(Error::Kind::kValue, "moekit.attention_decode: 'position' expected p0 with 0 <= p0 and p0 + " +
                                         std::to_string(T) + " (tokens) <= " + std::to_string(p.L) +
                                         " (cache positions), got " + std::to_string(p0));
  }
  const float* inv_freq = a.inv_freq.ptr<float>();
  const int64_t row = (Hq + 2 * Hkv) * D;
  auto qkv_at = [&](int64_t t, int64_t col) { return load_float(a.qkv.data, dt, t * row + col); };

  // Rotary on q (kept, rounded) and k (into the cache), v copied into the cache.
  std::vector<float> q(static_cast<size_t>(T * Hq * D));
  for (int64_t t = 0; t < T; ++t) {
    const int64_t pos = p0 + t;
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(pos) * inv_freq[i];
      const float c = std::cos(angle) * p.rope_scale, s = std::sin(angle) * p.rope_scale;
      for (int64_t h = 0; h < Hq + Hkv; ++h) {
        const float x1 = qkv_at(t, h * D + i), x2 = qkv_at(t, h * D + half + i);
        const float r1 = round_to(dt, x1 * c - x2 * s), r2 = round_to(dt, x2 * c + x1 * s);
        if (h < Hq) {
          q[(t * Hq + h) * D + i] = r1;
          q[(t * Hq + h) * D + half + i] = r2;
        } else {
          const int64_t at = (pos * Hkv + (h - Hq)) * D;
          store_float(a.k_cache.data, dt, at + i, r1);
          store_float(a.k_cache.data, dt, at + half + i, r2);
        }
      }
    }
    for (int64_t g = 0; g < Hkv; ++g) {
      for (int64_t d = 0; d < D; ++d) {
        store_float(a.v_cache.data, dt, (pos * Hkv + g) * D + d, qkv_at(t, (Hq + Hkv + g) * D + d));
      }
    }
  }

  // Each (token, q head): softmax over its visible keys and its sink, then the weighted values.
  parallel_for(T * Hq, 4, ctx, [&](int64_t begin, int64_t end) {
    std::vector<double> scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / Hq, h = item % Hq, g = h / group, pos = p0 + t;
      const int64_t lo = p.window > 0 ? std::max<int64_t>(0, pos - p.window + 1) : 0;
      const float* qh = &q[(t * Hq + h) * D];
      scores.assign(static_cast<size_t>(pos - lo + 1), 0.0);
      double top = a.sinks.ptr<float>()[h];
      for (int64_t j = lo; j <= pos; ++j) {
        double dot = 0.0;
        for (int64_t d = 0; d < D; ++d) dot += qh[d] * static_cast<double>(load_float(a.k_cache.data, dt, (j * Hkv + g) * D + d));
        scores[j - lo] = dot * p.sm_scale;
        top = std::max(top, scores[j - lo]);
      }
      double denominator = std::exp(a.sinks.ptr<float>()[h] - top);
      for (double& s : scores) denominator += (s = std::exp(s - top));
      for (int64_t d = 0; d < D; ++d) {
        double acc = 0.0;
        for (int64_t j = lo; j <= pos; ++j) acc += scores[j - lo] * load_float(a.v_cache.data, dt, (j * Hkv + g) * D + d);
        store_float(a.out.data, a.out.dtype, (t * Hq + h) * D + d, static_cast<float>(acc / denominator));
      }
    }
  });
}

}  // namespace moekit::cpu
