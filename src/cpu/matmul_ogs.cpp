#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../core/check.h"
#include "../core/mxfp4.h"
#include "backend.h"
#include "element.h"
#include "parallel.h"

namespace moekit::cpu {
namespace {

constexpr int kColsPerItem = 16;  // weight rows decoded together, then reused by every token row; even (SwiGLU pairs)

// Index tensors are data, so their values are checked here, where reading them is free.
void check_indices(const MatmulOgsProblem& p, const MatmulOgsArgs& a) {
  const char* op = "matmul_ogs";
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

// Row n of expert e's weight, as floats.
void decode_weight_row(const MatmulOgsProblem& p, const ExpertWeights& w, int64_t e, int64_t n, float* dst) {
  const int64_t row = e * p.N + n;
  if (!p.mxfp4) {
    for (int64_t i = 0; i < p.K; ++i) dst[i] = load_float(w.values.data, w.values.dtype, row * p.K + i);
    return;
  }
  const uint8_t* codes = w.values.ptr<uint8_t>() + row * (p.K / 2);
  const uint8_t* scales = w.scales.ptr<uint8_t>() + row * (p.K / mxfp4::kBlock);
  for (int64_t i = 0; i < p.K / 2; ++i) {
    const float scale = mxfp4::e8m0_to_float(scales[i / mxfp4::kBytesPerBlock]);
    dst[2 * i] = mxfp4::e2m1_to_float(codes[i] & 0xf) * scale;
    dst[2 * i + 1] = mxfp4::e2m1_to_float(codes[i] >> 4) * scale;
  }
}

// Fixed-order fp32 dot product (8 independent partial sums, then summed in order).
float dot(const float* a, const float* b, int64_t K) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= K; i += 8) {
    for (int u = 0; u < 8; ++u) acc[u] += a[i + u] * b[i + u];
  }
  for (; i < K; ++i) acc[i % 8] += a[i] * b[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// SwiGLU of gpt-oss on one (glu, linear) pair; NaN propagates through the clamps.
float swiglu(float glu, float lin, const Swiglu& s) {
  glu = glu > s.limit ? s.limit : glu;
  lin = lin > s.limit ? s.limit : (lin < -s.limit ? -s.limit : lin);
  return glu / (1.0f + std::exp(-s.alpha * glu)) * (lin + 1.0f);
}

}  // namespace

// Memory stays bounded by the output: each work item decodes its weight rows and converts one
// x row at a time (never a copy of all gathered rows, which can be far larger than the output:
// P rows of K for an output of P or T rows of N). Only a scatter keeps its activated rows
// [P, out_cols] to combine them, k times the output.
void matmul_ogs(const MatmulOgsProblem& p, const MatmulOgsArgs& a, const ExecContext& ctx) {
  check_indices(p, a);
  const int64_t K = p.K, N = p.N, cols = p.out_cols;

  std::vector<int64_t> row_begin(p.E + 1, 0);
  if (a.expert_offsets.present()) {
    for (int64_t e = 0; e <= p.E; ++e) row_begin[e] = a.expert_offsets.ptr<int32_t>()[e];
  } else {
    row_begin[1] = p.P;
  }
  // Activated rows go straight to `out`, or with a scatter to `rows` for the combine below.
  std::vector<float> rows(p.scatter ? static_cast<size_t>(p.P * cols) : 0);
  auto store_row_value = [&](int64_t r, int64_t c, float v) {
    if (p.scatter) rows[r * cols + c] = v;
    else store_float(a.out.data, a.out.dtype, r * cols + c, v);
  };

  // h = x_row @ W[e]^T + bias[e], then SwiGLU over (glu, linear) column pairs: one work item
  // per (expert, block of columns); a block holds whole pairs.
  struct Item { int64_t e, n0; };
  std::vector<Item> items;
  for (int64_t e = 0; e < p.E; ++e) {
    if (row_begin[e + 1] == row_begin[e]) continue;
    for (int64_t n0 = 0; n0 < N; n0 += kColsPerItem) items.push_back({e, n0});
  }
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
        if (p.swiglu) {
          for (int64_t c = 0; c < n_cols; c += 2) store_row_value(r, (n0 + c) / 2, swiglu(h[c], h[c + 1], a.swiglu));
        } else {
          for (int64_t c = 0; c < n_cols; ++c) store_row_value(r, n0 + c, h[c]);
        }
      }
    }
  });
  if (!p.scatter) return;

  // The weighted combine of each output row's k slots, in slot order.
  const int32_t* scatter = a.scatter_idx.ptr<int32_t>();
  const bool weighted = a.combine_weight.present();
  parallel_for(p.out_rows, 16, ctx, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      for (int64_t c = 0; c < cols; ++c) {
        float v = 0.0f;
        for (int64_t j = 0; j < p.k; ++j) {
          v += (weighted ? a.combine_weight.ptr<float>()[o * p.k + j] : 1.0f) * rows[scatter[o * p.k + j] * cols + c];
        }
        store_float(a.out.data, a.out.dtype, o * cols + c, v);
      }
    }
  });
}

}  // namespace moekit::cpu
