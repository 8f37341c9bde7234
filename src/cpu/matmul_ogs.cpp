#include <algorithm>
#include <vector>

#include "backend.h"
#include "element.h"
#include "matmul_ogs_rows.h"
#include "parallel.h"

namespace moekit::cpu {

// Memory stays bounded by the output: each work item decodes its weight rows and converts one
// x row at a time (never a copy of all gathered rows, which can be far larger than the output:
// P rows of K for an output of P or T rows of N). Only a scatter keeps its activated rows
// [P, out_cols] to combine them, k times the output.
void matmul_ogs(const MatmulOgsProblem& p, const MatmulOgsArgs& a, const ExecContext& ctx) {
  check_indices("matmul_ogs", p, a);
  const int64_t cols = p.out_cols;

  const std::vector<int64_t> row_begin = expert_row_begin(p, a);
  // Activated rows go straight to `out`, or with a scatter to `rows` for the combine below.
  std::vector<float> rows(p.scatter ? static_cast<size_t>(p.P * cols) : 0);
  auto store_row_value = [&](int64_t r, int64_t c, float v) {
    if (p.scatter) rows[r * cols + c] = v;
    else store_float(a.out.data, a.out.dtype, r * cols + c, v);
  };

  // h, then SwiGLU over its (glu, linear) column pairs.
  for_each_h_block(p, a, row_begin, ctx, [&](int64_t r, int64_t n0, const float* h, int64_t n_cols) {
    if (p.swiglu) {
      for (int64_t c = 0; c < n_cols; c += 2) store_row_value(r, (n0 + c) / 2, swiglu(h[c], h[c + 1], a.swiglu));
    } else {
      for (int64_t c = 0; c < n_cols; ++c) store_row_value(r, n0 + c, h[c]);
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
