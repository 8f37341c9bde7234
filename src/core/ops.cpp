// Public entry points: validate, then hand the op to the backend of the tensors' device.
#include "moekit/error.h"
#include "moekit/ops.h"

#include "../cpu/backend.h"
#include "problem.h"
#if MOEKIT_WITH_CUDA
#include "../cuda/launch/backend.h"
#endif

namespace moekit {
namespace {

[[noreturn]] void no_backend(const char* op, const Device& device) {
  throw Error(Error::Kind::kDevice, std::string("moekit.") + op + ": tensors are on " + device.str() +
                                        ", but this build of moekit has no CUDA backend");
}

}  // namespace

#if MOEKIT_WITH_CUDA
#define MOEKIT_DISPATCH(op, device, ...)                          \
  do {                                                            \
    if ((device).type == DeviceType::kCPU) cpu::op(__VA_ARGS__);  \
    else cuda::op(__VA_ARGS__);                                   \
  } while (0)
#else
#define MOEKIT_DISPATCH(op, device, ...)                          \
  do {                                                            \
    if ((device).type == DeviceType::kCPU) cpu::op(__VA_ARGS__);  \
    else no_backend(#op, device);                                 \
  } while (0)
#endif

void quantize_mxfp4(const TensorView& w, const TensorView& blocks, const TensorView& scales, const ExecContext& ctx) {
  const MxProblem p = check_quantize_mxfp4_inputs(w);
  check_quantize_mxfp4_outputs(p, blocks, scales);
  if (p.rows == 0) return;
  MOEKIT_DISPATCH(quantize_mxfp4, p.device, p, w, blocks, scales, ctx);
}

void dequantize_mxfp4(const TensorView& blocks, const TensorView& scales, const TensorView& out,
                      const ExecContext& ctx) {
  const MxProblem p = check_dequantize_mxfp4_inputs(blocks, scales);
  check_dequantize_mxfp4_outputs(p, out);
  if (p.rows == 0) return;
  MOEKIT_DISPATCH(dequantize_mxfp4, p.device, p, blocks, scales, out, ctx);
}

void route(const TensorView& logits, int k, const RouteOutputs& out, const ExecContext& ctx) {
  const RouteProblem p = check_route_inputs(logits, k);
  check_route_outputs(p, out);
  // T == 0 still writes the (all-zero) counts and offsets.
  MOEKIT_DISPATCH(route, p.device, p, logits, out, ctx);
}

void matmul_ogs(const MatmulOgsArgs& args, const ExecContext& ctx) {
  const MatmulOgsProblem p = check_matmul_ogs_inputs(args);
  check_matmul_ogs_outputs(p, args);
  if (p.out_rows == 0 || p.out_cols == 0) return;
  MOEKIT_DISPATCH(matmul_ogs, p.device, p, args, ctx);
}

}  // namespace moekit
