// What matmul_ogs and its backward share on the CPU: the index checks, the weight rows as
// floats, the fixed-order dot product and SwiGLU with its derivative.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../core/check.h"
#include "../core/mxfp4.h"
#include "../core/problem.h"
#include "element.h"
#include "mxfp4_block.h"
#include "parallel.h"

namespace moekit::cpu {

constexpr int kColsPerItem = 16;  // weight rows decoded together, then reused by every token row; even (SwiGLU pairs)

// Index tensors are data, so their values are checked here, where reading them is free.
inline void check_indices(const char* op, const MatmulOgsProblem& p, const MatmulOgsArgs& a) {
  auto bad = [op](const char* arg, const std::string& expected, int64_t at, int64_t got) {
    check::fail(Error::Kind::kValue, op, arg, expected, std::to_string(got) + " at index " + std::to_string(at));
  };
  if (a.expert_offsets.present()) {
    const int32_t* off = a.expert_offsets.ptr<int32_t>();
    if (off[0] != 0) bad("expert_offsets", "offsets[0] == 0", 0, off[0]);
    for (int64_t e = 0; e < p.E; ++e) {
      if (off[e + 1] < off[e]) bad("expert_offsets", "non-decreasing offsets", e + 1, off[e + 1]);
    }
    if (off[p.E] != p.P) bad("expert_offsets", "offsets[E] == " + std::to_string(p.P) + " (rows)", p.E, off[p.E]);
  }
  if (p.gather) {
    const int32_t* g = a.gather_idx.ptr<int32_t>();
    for (int64_t i = 0; i < p.P; ++i) {
      if (g[i] < 0 || g[i] >= p.M) bad("gather_idx", "values in [0, " + std::to_string(p.M) + ")", i, g[i]);
    }
  }
  if (p.scatter) {
    const int32_t* s = a.scatter_idx.ptr<int32_t>();
    for (int64_t i = 0; i < p.P; ++i) {
      if (s[i] < 0 || s[i] >= p.P) bad("scatter_idx", "values in [0, " + std::to_string(p.P) + ")", i, s[i]);
    }
  }
}

// The first problem row of each expert, and P at [E].
inline std::vector<int64_t> expert_row_begin(const MatmulOgsProblem& p, const MatmulOgsArgs& a) {
  std::vector<int64_t> begin(p.E + 1, 0);
  if (a.expert_offsets.present()) {
    for (int64_t e = 0; e <= p.E; ++e) begin[e] = a.expert_offsets.ptr<int32_t>()[e];
  } else {
    begin[1] = p.P;
  }
  return begin;
}

// Elements [k0, k1) of row n of expert e's weight, as floats (k0, k1 multiples of 32 or K for MXFP4).
inline void decode_weight_row(const MatmulOgsProblem& p, const ExpertWeights& w, int64_t e, int64_t n, float* dst,
                              int64_t k0 = 0, int64_t k1 = -1) {
  if (k1 < 0) k1 = p.K;
  const int64_t row = e * p.N + n;
  if (!p.mxfp4) {
    for (int64_t i = k0; i < k1; ++i) dst[i - k0] = load_float(w.values.data, w.values.dtype, row * p.K + i);
    return;
  }
  const uint8_t* codes = w.values.ptr<uint8_t>() + row * (p.K / 2);
  const uint8_t* scales = w.scales.ptr<uint8_t>() + row * (p.K / mxfp4::kBlock);
  for (int64_t b = k0 / mxfp4::kBlock; b < k1 / mxfp4::kBlock; ++b) {
    decode_mxfp4_block(codes + b * mxfp4::kBytesPerBlock, scales[b], dst + b * mxfp4::kBlock - k0);
  }
}

// The work items of a loop over the experts that have rows and blocks of `width` of `extent`
// columns, in order: (expert, first column).
struct ExpertBlock {
  int64_t e, c0;
};
inline std::vector<ExpertBlock> expert_blocks(const MatmulOgsProblem& p, const std::vector<int64_t>& row_begin,
                                              int64_t extent, int64_t width) {
  std::vector<ExpertBlock> items;
  for (int64_t e = 0; e < p.E; ++e) {
    if (row_begin[e + 1] == row_begin[e]) continue;
    for (int64_t c0 = 0; c0 < extent; c0 += width) items.push_back({e, c0});
  }
  return items;
}

// Fixed-order fp32 dot product (8 independent partial sums, then summed in order).
inline float dot(const float* a, const float* b, int64_t K) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= K; i += 8) {
    for (int u = 0; u < 8; ++u) acc[u] += a[i + u] * b[i + u];
  }
  for (; i < K; ++i) acc[i % 8] += a[i] * b[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// h = x_row @ W[e]^T + bias[e] for every problem row, one work item per (expert, block of
// kColsPerItem columns: whole SwiGLU pairs), its weight rows decoded once and reused by every row
// of the expert: visit(r, n0, h, n_cols) gets row r's columns [n0, n0 + n_cols).
template <class Visit>
void for_each_h_block(const MatmulOgsProblem& p, const MatmulOgsArgs& a, const std::vector<int64_t>& row_begin,
                      const ExecContext& ctx, Visit visit) {
  const int64_t K = p.K, N = p.N;
  const std::vector<ExpertBlock> items = expert_blocks(p, row_begin, N, kColsPerItem);
  parallel_for(static_cast<int64_t>(items.size()), 1, ctx, [&](int64_t begin, int64_t end) {
    std::vector<float> wrows(static_cast<size_t>(kColsPerItem * K)), xrow(static_cast<size_t>(K));
    float h[kColsPerItem];
    for (int64_t it = begin; it < end; ++it) {
      const auto [e, n0] = items[it];
      const int64_t n_cols = std::min<int64_t>(kColsPerItem, N - n0);
      for (int64_t c = 0; c < n_cols; ++c) decode_weight_row(p, a.w, e, n0 + c, wrows.data() + c * K);
      for (int64_t r = row_begin[e]; r < row_begin[e + 1]; ++r) {
        const int64_t src = p.gather ? a.gather_idx.ptr<int32_t>()[r] : r;
        for (int64_t i = 0; i < K; ++i) xrow[i] = load_float(a.x.data, a.x.dtype, src * K + i);
        for (int64_t c = 0; c < n_cols; ++c) {
          const float b = a.bias.present() ? load_float(a.bias.data, a.bias.dtype, e * N + n0 + c) : 0.0f;
          h[c] = dot(xrow.data(), wrows.data() + c * K, K) + b;
        }
        visit(r, n0, h, n_cols);
      }
    }
  });
}

// SwiGLU of gpt-oss on one (glu, linear) pair; NaN propagates through the clamps.
inline float swiglu(float glu, float lin, const Swiglu& s) {
  glu = glu > s.limit ? s.limit : glu;
  lin = lin > s.limit ? s.limit : (lin < -s.limit ? -s.limit : lin);
  return glu / (1.0f + std::exp(-s.alpha * glu)) * (lin + 1.0f);
}

// The gradients of swiglu(glu, lin) for the output's gradient g: zero through an active clamp
// (glu > limit; lin outside [-limit, limit]); NaN propagates.
struct SwigluGrad {
  float glu, lin;
};
inline SwigluGrad swiglu_backward(float glu, float lin, float g, const Swiglu& s) {
  const bool glu_passes = !(glu > s.limit), lin_passes = !(lin > s.limit || lin < -s.limit);
  const float gc = glu_passes ? glu : s.limit;
  const float lc = lin_passes ? lin : (lin > s.limit ? s.limit : -s.limit);
  const float sig = 1.0f / (1.0f + std::exp(-s.alpha * gc));
  const float silu = gc * sig, dsilu = sig + s.alpha * gc * sig * (1.0f - sig);
  return {glu_passes ? g * (lc + 1.0f) * dsilu : 0.0f, lin_passes ? g * silu : 0.0f};
}

}  // namespace moekit::cpu
