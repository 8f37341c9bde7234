// matmul_ogs_backward on the CPU (include/moekit/ops.h), the gradients' readable specification:
// each problem row's share of grad_out, h recomputed where SwiGLU's derivative or the combine
// weights' gradient needs it, the gradient at h, then the bias's, the combine weights' and x's
// gradients, each summed in row order in float32.
#include <algorithm>
#include <vector>

#include "backend.h"
#include "element.h"
#include "matmul_ogs_rows.h"
#include "parallel.h"

namespace moekit::cpu {
namespace {

constexpr int64_t kKPerItem = 64;  // columns of K whose weights an item of x's gradient decodes (a multiple of 32)

}  // namespace

void matmul_ogs_backward(const MatmulOgsProblem& p, const MatmulOgsBackwardArgs& b, const ExecContext& ctx) {
  const MatmulOgsArgs& a = b.forward;
  check_indices("matmul_ogs_backward", p, a);
  const int64_t K = p.K, N = p.N, P = p.P, cols = p.out_cols;
  const std::vector<int64_t> row_begin = expert_row_begin(p, a);
  auto grad_out = [&](int64_t row, int64_t c) { return load_float(b.grad_out.data, b.grad_out.dtype, row * cols + c); };
  auto x_row_of = [&](int64_t r) -> int64_t { return p.gather ? a.gather_idx.ptr<int32_t>()[r] : r; };

  // g_a: each problem row's share of grad_out (its slots' combine weights times their rows).
  std::vector<float> g_a(static_cast<size_t>(P * cols), 0.0f);
  if (p.scatter) {
    const int32_t* slot_row = a.scatter_idx.ptr<int32_t>();
    for (int64_t s = 0; s < p.T * p.k; ++s) {
      const float w = a.combine_weight.present() ? a.combine_weight.ptr<float>()[s] : 1.0f;
      for (int64_t c = 0; c < cols; ++c) g_a[slot_row[s] * cols + c] += w * grad_out(s / p.k, c);
    }
  } else {
    for (int64_t r = 0; r < P; ++r) {
      for (int64_t c = 0; c < cols; ++c) g_a[r * cols + c] = grad_out(r, c);
    }
  }

  // h = x_row @ W[e]^T + bias[e], as the forward computes it, where it is needed.
  const bool need_h = p.swiglu || b.grad_combine_weight.present();
  std::vector<float> h(need_h ? static_cast<size_t>(P * N) : 0);
  if (need_h) {
    for_each_h_block(p, a, row_begin, ctx, [&](int64_t r, int64_t n0, const float* hb, int64_t n_cols) {
      std::copy(hb, hb + n_cols, h.begin() + r * N + n0);
    });
  }

  // g_h: the gradient at h, through SwiGLU's derivative where the forward applied it.
  std::vector<float> g_h(p.swiglu ? static_cast<size_t>(P * N) : 0);
  if (p.swiglu) {
    for (int64_t r = 0; r < P; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const SwigluGrad g = swiglu_backward(h[r * N + 2 * c], h[r * N + 2 * c + 1], g_a[r * cols + c], a.swiglu);
        g_h[r * N + 2 * c] = g.glu;
        g_h[r * N + 2 * c + 1] = g.lin;
      }
    }
  }
  const std::vector<float>& grad_h = p.swiglu ? g_h : g_a;  // [P, N]

  if (b.grad_combine_weight.present()) {  // grad_out[t] . the row the slot combined
    const int32_t* slot_row = a.scatter_idx.ptr<int32_t>();
    for (int64_t s = 0; s < p.T * p.k; ++s) {
      const float* hr = h.data() + slot_row[s] * N;
      float sum = 0.0f;
      for (int64_t c = 0; c < cols; ++c) {
        sum += grad_out(s / p.k, c) * (p.swiglu ? swiglu(hr[2 * c], hr[2 * c + 1], a.swiglu) : hr[c]);
      }
      b.grad_combine_weight.ptr<float>()[s] = sum;
    }
  }

  if (b.grad_bias.present()) {
    for (int64_t e = 0; e < p.E; ++e) {
      for (int64_t n = 0; n < N; ++n) {
        float sum = 0.0f;
        for (int64_t r = row_begin[e]; r < row_begin[e + 1]; ++r) sum += grad_h[r * N + n];
        store_float(b.grad_bias.data, b.grad_bias.dtype, e * N + n, sum);
      }
    }
  }

  if (!b.grad_x.present()) return;
  // x's gradient: each problem row's g_h @ W[e] (over n in order), then summed per x row in row order.
  std::vector<float> contribution(static_cast<size_t>(P * K), 0.0f);
  const std::vector<ExpertBlock> items = expert_blocks(p, row_begin, K, kKPerItem);
  parallel_for(static_cast<int64_t>(items.size()), 1, ctx, [&](int64_t begin, int64_t end) {
    std::vector<float> wcols(static_cast<size_t>(N * kKPerItem));
    for (int64_t it = begin; it < end; ++it) {
      const auto [e, k0] = items[it];
      const int64_t k1 = std::min(K, k0 + kKPerItem), width = k1 - k0;
      for (int64_t n = 0; n < N; ++n) decode_weight_row(p, a.w, e, n, wcols.data() + n * width, k0, k1);
      for (int64_t r = row_begin[e]; r < row_begin[e + 1]; ++r) {
        float* out = contribution.data() + r * K + k0;
        for (int64_t n = 0; n < N; ++n) {
          const float g = grad_h[r * N + n];
          for (int64_t i = 0; i < width; ++i) out[i] += g * wcols[n * width + i];
        }
      }
    }
  });
  std::vector<float> grad_x(static_cast<size_t>(p.M * K), 0.0f);
  for (int64_t r = 0; r < P; ++r) {
    for (int64_t i = 0; i < K; ++i) grad_x[x_row_of(r) * K + i] += contribution[r * K + i];
  }
  for (int64_t i = 0; i < p.M * K; ++i) store_float(b.grad_x.data, b.grad_x.dtype, i, grad_x[i]);
}

}  // namespace moekit::cpu
