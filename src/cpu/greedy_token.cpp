#include <cmath>
#include <string>

#include "moekit/error.h"

#include "backend.h"
#include "element.h"

namespace moekit::cpu {

void greedy_token(const GreedyTokenProblem& p, const TensorView& logits, const TensorView& position,
                  const TensorView& token, const TensorView& ids, const ExecContext&) {
  const int64_t at = position.ptr<int32_t>()[0];
  if (at < 0 || at >= p.L) {
    throw Error(Error::Kind::kValue, "moekit.greedy_token: 'position' expected a position in [0, " +
                                         std::to_string(p.L) + ") of ids, got " + std::to_string(at));
  }
  // The first of the largest: a later logit wins only if it is larger, or the first NaN.
  int64_t best = 0;
  float top = load_float(logits.data, logits.dtype, 0);
  for (int64_t i = 1; i < p.V && !std::isnan(top); ++i) {
    const float v = load_float(logits.data, logits.dtype, i);
    if (std::isnan(v) || v > top) {
      best = i;
      top = v;
    }
  }
  token.ptr<int32_t>()[0] = static_cast<int32_t>(best);
  ids.ptr<int32_t>()[at] = static_cast<int32_t>(best);
}

}  // namespace moekit::cpu
