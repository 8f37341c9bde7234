#include "../../core/check.h"

#include "../kernels/norm/add_rms_norm.cuh"
#include "../runtime/device_guard.h"
#include "../runtime/device_info.h"
#include "../runtime/stream.h"
#include "backend.h"
#include "launch_kernel.h"
#include "launch_util.h"

namespace moekit::cuda {

void can_implement_add_rms_norm(const AddRmsNormProblem& p) {
  check::at_most("add_rms_norm", "x", "rows", p.T, 2147483647, "one CUDA block per row");
}

void add_rms_norm(const AddRmsNormProblem& p, const TensorView& x, const TensorView& residual, const TensorView& scale,
                  const TensorView& sum, const TensorView& out, const ExecContext& ctx) {
  DeviceGuard guard(p.device.index);
  const cudaStream_t stream = stream_of("add_rms_norm", p.device, ctx);
  const unsigned grid = static_cast<unsigned>(p.T);
  const bool chained = chains_on(device_info(p.device.index).major);
  auto launch = [&](auto element) {
    using T = decltype(element);
    launch_kernel(add_rms_norm_kernel<T>, grid, kAddRmsNormThreads, 0, stream, chained, x.ptr<T>(), residual.ptr<T>(),
                  scale.ptr<float>(), p.eps, p.H, sum.ptr<T>(), out.ptr<T>());
  };
  if (x.dtype == DType::kBFloat16) launch(bf16());
  else launch(float());
  MOEKIT_CHECK_LAUNCH(ctx, stream, "add_rms_norm_kernel");
}

}  // namespace moekit::cuda
