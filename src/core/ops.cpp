// Public entry points: validate, then hand the op to the backend of the tensors' device.
#include "moekit/error.h"
#include "moekit/ops.h"

#include "../cpu/backend.h"
#include "problem.h"
#if defined(MOEKIT_WITH_CUDA)
#include "../cuda/launch/backend.h"
#endif

namespace moekit {
void check_backend(const char* op, const Device& device) {
#if !defined(MOEKIT_WITH_CUDA)
  if (device.type == DeviceType::kCUDA) {
    throw Error(Error::Kind::kDevice, std::string("moekit.") + op + ": tensors are on " + device.str() +
                                          ", but this build of moekit has no CUDA backend");
  }
#endif
  (void)op;
  (void)device;
}

#if defined(MOEKIT_WITH_CUDA)
#define MOEKIT_DISPATCH(op, device, ...)                          \
  do {                                                            \
    if ((device).type == DeviceType::kCPU) cpu::op(__VA_ARGS__);  \
    else cuda::op(__VA_ARGS__);                                   \
  } while (0)
#else
#define MOEKIT_DISPATCH(op, device, ...)                          \
  do {                                                            \
    check_backend(#op, device);                                   \
    cpu::op(__VA_ARGS__);                                         \
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

size_t matmul_ogs_workspace_size(const MatmulOgsArgs& args) {
  return matmul_ogs_workspace_bytes(check_matmul_ogs_inputs(args));
}

void matmul_ogs(const MatmulOgsArgs& args, const ExecContext& ctx) {
  const MatmulOgsProblem p = check_matmul_ogs_inputs(args);
  check_matmul_ogs_outputs(p, args);
  if (p.out_rows == 0 || p.out_cols == 0) return;
  MOEKIT_DISPATCH(matmul_ogs, p.device, p, args, ctx);
}

}  // namespace moekit
