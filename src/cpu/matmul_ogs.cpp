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

constexpr int kColsPerItem = 16;  // weight rows decoded together, then reused by every token row

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

void matmul_ogs(const MatmulOgsProblem& p, const MatmulOgsArgs& a, const ExecContext& ctx) {
  check_indices(p, a);
  const int64_t P = p.P, K = p.K, N = p.N;

  // x rows in problem order, as floats.
  std::vector<float> xs(static_cast<size_t>(P * K));
  const int32_t* gather = p.gather ? a.gather_idx.ptr<int32_t>() : nullptr;
  parallel_for(P, 16, ctx.cpu_threads, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t src = gather ? gather[r] : r;
      for (int64_t i = 0; i < K; ++i) xs[r * K + i] = load_float(a.x.data, a.x.dtype, src * K + i);
    }
  });

  // h = x_row @ W[e]^T + bias[e]: one work item per (expert, block of columns).
  std::vector<int64_t> row_begin(p.E + 1, 0);
  if (a.expert_offsets.present()) {
    for (int64_t e = 0; e <= p.E; ++e) row_begin[e] = a.expert_offsets.ptr<int32_t>()[e];
  } else {
    row_begin[1] = P;
  }
  struct Item { int64_t e, n0; };
  std::vector<Item> items;
  for (int64_t e = 0; e < p.E; ++e) {
    if (row_begin[e + 1] == row_begin[e]) continue;
    for (int64_t n0 = 0; n0 < N; n0 += kColsPerItem) items.push_back({e, n0});
  }
  std::vector<float> h(static_cast<size_t>(P * N));
  parallel_for(static_cast<int64_t>(items.size()), 1, ctx.cpu_threads, [&](int64_t begin, int64_t end) {
    std::vector<float> wrows(static_cast<size_t>(kColsPerItem * K));
    for (int64_t it = begin; it < end; ++it) {
      const auto [e, n0] = items[it];
      const int64_t cols = std::min<int64_t>(kColsPerItem, N - n0);
      for (int64_t c = 0; c < cols; ++c) decode_weight_row(p, a.w, e, n0 + c, wrows.data() + c * K);
      for (int64_t r = row_begin[e]; r < row_begin[e + 1]; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          const float b = a.bias.present() ? load_float(a.bias.data, a.bias.dtype, e * N + n0 + c) : 0.0f;
          h[r * N + n0 + c] = dot(xs.data() + r * K, wrows.data() + c * K, K) + b;
        }
      }
    }
  });

  // Epilogue: SwiGLU, then the weighted combine of each output row's k slots (in slot order).
  const int64_t cols = p.out_cols;
  auto activated = [&](int64_t r, int64_t c) {
    return p.swiglu ? swiglu(h[r * N + 2 * c], h[r * N + 2 * c + 1], a.swiglu) : h[r * N + c];
  };
  const int32_t* scatter = p.scatter ? a.scatter_idx.ptr<int32_t>() : nullptr;
  const float* cw = a.combine_weight.present() ? a.combine_weight.ptr<float>() : nullptr;
  parallel_for(p.out_rows, 16, ctx.cpu_threads, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      for (int64_t c = 0; c < cols; ++c) {
        float v;
        if (scatter) {
          v = 0.0f;
          for (int64_t j = 0; j < p.k; ++j) v += (cw ? cw[o * p.k + j] : 1.0f) * activated(scatter[o * p.k + j], c);
        } else {
          v = activated(o, c);
        }
        store_float(a.out.data, a.out.dtype, o * cols + c, v);
      }
    }
  });
}

}  // namespace moekit::cpu
