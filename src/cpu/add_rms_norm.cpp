#include <cmath>

#include "backend.h"
#include "element.h"
#include "parallel.h"

namespace moekit::cpu {

void add_rms_norm(const AddRmsNormProblem& p, const TensorView& x, const TensorView& residual, const TensorView& scale,
                  const TensorView& sum, const TensorView& out, const ExecContext& ctx) {
  const int64_t H = p.H;
  const float* g = scale.ptr<float>();
  parallel_for(p.T, 16, ctx, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      double squares = 0.0;
      for (int64_t i = 0; i < H; ++i) {
        const int64_t at = t * H + i;
        store_float(sum.data, sum.dtype, at, load_float(residual.data, residual.dtype, at) + load_float(x.data, x.dtype, at));
        const double s = load_float(sum.data, sum.dtype, at);  // the rounded sum is what is normalised
        squares += s * s;
      }
      const float mean = static_cast<float>(squares / static_cast<double>(H));  // H > 0: empty rows never get here
      const float inv_rms = 1.0f / std::sqrt(mean + p.eps);
      for (int64_t i = 0; i < H; ++i) {
        const int64_t at = t * H + i;
        store_float(out.data, out.dtype, at, load_float(sum.data, sum.dtype, at) * inv_rms * g[i]);
      }
    }
  });
}

}  // namespace moekit::cpu
