#include "../../core/check.h"

#include "../kernels/norm/add_rms_norm.cuh"
#include "../runtime/device_guard.h"
#include "../runtime/stream.h"
#include "backend.h"
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
  if (x.dtype == DType::kBFloat16) {
    add_rms_norm_kernel<<<grid, kAddRmsNormThreads, 0, stream>>>(x.ptr<bf16>(), residual.ptr<bf16>(), scale.ptr<float>(),
                                                                 p.eps, p.H, sum.ptr<bf16>(), out.ptr<bf16>());
  } else {
    add_rms_norm_kernel<<<grid, kAddRmsNormThreads, 0, stream>>>(x.ptr<float>(), residual.ptr<float>(),
                                                                 scale.ptr<float>(), p.eps, p.H, sum.ptr<float>(),
                                                                 out.ptr<float>());
  }
  MOEKIT_CHECK_LAUNCH(ctx, stream, "add_rms_norm_kernel");
}

}  // namespace moekit::cuda
