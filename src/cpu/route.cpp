#include <cmath>
#include <vector>

#include "backend.h"
#include "element.h"
#include "parallel.h"

namespace moekit::cpu {
namespace {

// Does logit a (expert ia) rank before logit b (expert ib)? Larger first, NaN above every
// number (as torch.topk), equal values (and NaN pairs) by lower expert index.
bool ranks_before(float a, int ia, float b, int ib) {
  const bool na = std::isnan(a), nb = std::isnan(b);
  if (na != nb) return na;
  if (!na && a != b) return a > b;
  return ia < ib;
}

}  // namespace

void route(const RouteProblem& p, const TensorView& logits, const RouteOutputs& out, const ExecContext& ctx) {
  const int64_t T = p.T, E = p.E;
  const int k = p.k;
  int32_t* expert_idx = out.expert_idx.ptr<int32_t>();
  float* expert_weight = out.expert_weight.ptr<float>();

  // Top-k per token by insertion into a sorted list of k, then softmax over the chosen logits.
  parallel_for(T, 64, ctx, [&](int64_t begin, int64_t end) {
    std::vector<float> best(k);
    std::vector<int> best_idx(k);
    for (int64_t t = begin; t < end; ++t) {
      int filled = 0;
      for (int e = 0; e < E; ++e) {
        const float v = load_float(logits.data, logits.dtype, t * E + e);
        if (filled == k && !ranks_before(v, e, best[k - 1], best_idx[k - 1])) continue;
        int at = filled < k ? filled++ : k - 1;
        while (at > 0 && ranks_before(v, e, best[at - 1], best_idx[at - 1])) {
          best[at] = best[at - 1];
          best_idx[at] = best_idx[at - 1];
          --at;
        }
        best[at] = v;
        best_idx[at] = e;
      }
      float sum = 0.0f;
      for (int j = 0; j < k; ++j) sum += std::exp(best[j] - best[0]);
      for (int j = 0; j < k; ++j) {
        expert_idx[t * k + j] = best_idx[j];
        expert_weight[t * k + j] = std::exp(best[j] - best[0]) / sum;
      }
    }
  });

  // Group token-slots by expert, token order kept within an expert.
  int32_t* counts = out.expert_counts.ptr<int32_t>();
  int32_t* offsets = out.expert_offsets.ptr<int32_t>();
  for (int64_t e = 0; e < E; ++e) counts[e] = 0;
  for (int64_t s = 0; s < T * k; ++s) ++counts[expert_idx[s]];
  offsets[0] = 0;
  for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + counts[e];
  std::vector<int32_t> next(offsets, offsets + E);
  int32_t* gather_idx = out.gather_idx.ptr<int32_t>();
  int32_t* scatter_idx = out.scatter_idx.ptr<int32_t>();
  for (int64_t s = 0; s < T * k; ++s) {
    const int32_t row = next[expert_idx[s]]++;
    gather_idx[row] = static_cast<int32_t>(s / k);
    scatter_idx[s] = row;
  }
}

}  // namespace moekit::cpu
