#include <algorithm>

#include "../kernels/quant/mxfp4.cuh"
#include "../runtime/device_guard.h"
#include "../runtime/stream.h"
#include "backend.h"
#include "launch_util.h"

namespace moekit::cuda {

// The kernels read and write whole 16-byte blocks.
void can_implement_quantize_mxfp4(const MxProblem&, const TensorView& blocks) {
  require_aligned("quantize_mxfp4", "blocks", blocks, 16);
}

void can_implement_dequantize_mxfp4(const MxProblem&, const TensorView& blocks) {
  require_aligned("dequantize_mxfp4", "blocks", blocks, 16);
}

void quantize_mxfp4(const MxProblem& p, const TensorView& w, const TensorView& blocks, const TensorView& scales,
                    const ExecContext& ctx) {
  DeviceGuard guard(p.device.index);
  const cudaStream_t stream = stream_of("quantize_mxfp4", p.device, ctx);
  const int64_t n_blocks = p.rows * (p.K / mxfp4::kBlock);
  const unsigned grid = static_cast<unsigned>(ceil_div(n_blocks, kElementwiseThreads));
  if (w.dtype == DType::kBFloat16) {
    quantize_mxfp4_kernel<<<grid, kElementwiseThreads, 0, stream>>>(w.ptr<bf16>(), blocks.ptr<uint8_t>(),
                                                                     scales.ptr<uint8_t>(), n_blocks);
  } else {
    quantize_mxfp4_kernel<<<grid, kElementwiseThreads, 0, stream>>>(w.ptr<float>(), blocks.ptr<uint8_t>(),
                                                                     scales.ptr<uint8_t>(), n_blocks);
  }
  MOEKIT_CHECK_LAUNCH(ctx, stream, "quantize_mxfp4_kernel");
}

void dequantize_mxfp4(const MxProblem& p, const TensorView& blocks, const TensorView& scales, const TensorView& out,
                      const ExecContext& ctx) {
  DeviceGuard guard(p.device.index);
  const cudaStream_t stream = stream_of("dequantize_mxfp4", p.device, ctx);
  const int64_t n_blocks = p.rows * (p.K / mxfp4::kBlock);
  const unsigned grid = static_cast<unsigned>(ceil_div(n_blocks, kElementwiseThreads));
  if (out.dtype == DType::kBFloat16) {
    dequantize_mxfp4_kernel<<<grid, kElementwiseThreads, 0, stream>>>(blocks.ptr<uint8_t>(), scales.ptr<uint8_t>(),
                                                                       out.ptr<bf16>(), n_blocks);
  } else {
    dequantize_mxfp4_kernel<<<grid, kElementwiseThreads, 0, stream>>>(blocks.ptr<uint8_t>(), scales.ptr<uint8_t>(),
                                                                       out.ptr<float>(), n_blocks);
  }
  MOEKIT_CHECK_LAUNCH(ctx, stream, "dequantize_mxfp4_kernel");
}

void repack_mxfp4(const MxSlabsProblem& p, const TensorView& blocks, const TensorView& scales, const TensorView& codes,
                  const TensorView& slab_scales, const ExecContext& ctx) {
  DeviceGuard guard(p.device.index);
  const cudaStream_t stream = stream_of("repack_mxfp4", p.device, ctx);
  const int64_t n_code_words = p.E * p.slabs * p.steps * mxfp4_slabs::kCodeWords;
  const int64_t n = n_code_words / mxfp4_slabs::kCodeWords * (mxfp4_slabs::kCodeWords + mxfp4_slabs::kScaleBytes);
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(ceil_div(n, kElementwiseThreads), 1 << 20));
  repack_mxfp4_kernel<<<grid, kElementwiseThreads, 0, stream>>>(
      blocks.ptr<uint8_t>(), scales.ptr<uint8_t>(), codes.ptr<uint8_t>(), slab_scales.ptr<uint8_t>(), p.N, p.K,
      p.slabs, p.steps, n_code_words);
  MOEKIT_CHECK_LAUNCH(ctx, stream, "repack_mxfp4_kernel");
}

}  // namespace moekit::cuda
