// Public entry points: accept the call (every check, the backend's limits included), then hand
// it to the backend of the tensors' device.
#include "accept.h"
#include "matmul_ogs_config.h"

#include "moekit/error.h"
#include "moekit/ops.h"

#include "../cpu/backend.h"
#if defined(MOEKIT_WITH_CUDA)
#include "../cuda/launch/backend.h"
#endif

// `cpu_call` on the CPU, `cuda_call` on CUDA (accepted calls only: check_backend has refused the
// devices this build has no backend for).
#if defined(MOEKIT_WITH_CUDA)
#define MOEKIT_ON_BACKEND(device, cpu_call, cuda_call) \
  do {                                                 \
    if ((device).type == DeviceType::kCUDA) {          \
      cuda_call;                                       \
    } else {                                           \
      cpu_call;                                        \
    }                                                  \
  } while (0)
#else
#define MOEKIT_ON_BACKEND(device, cpu_call, cuda_call) \
  do {                                                 \
    cpu_call;                                          \
  } while (0)
#endif

namespace moekit {

void check_backend(const char* op, const Device& device) {
  const auto where = [&] { return std::string("moekit.") + op + ": tensors are on " + device.str(); };
  if (device.type == DeviceType::kMeta) {
    throw Error(Error::Kind::kDevice, where() + ", which holds no data: moekit validates calls on meta tensors "
                                                "but runs none");
  }
#if !defined(MOEKIT_WITH_CUDA)
  if (device.type == DeviceType::kCUDA) {
    throw Error(Error::Kind::kDevice, where() + ", but this build of moekit has no CUDA backend");
  }
#endif
}

MxProblem accept_quantize_mxfp4(const TensorView& w, const TensorView& blocks, const TensorView& scales) {
  const MxProblem p = check_quantize_mxfp4_inputs(w);
  check_quantize_mxfp4_outputs(p, blocks, scales);
  check_backend("quantize_mxfp4", p.device);
  MOEKIT_ON_BACKEND(p.device, (void)0, cuda::can_implement_quantize_mxfp4(p, blocks));
  return p;
}

void run_quantize_mxfp4(const MxProblem& p, const TensorView& w, const TensorView& blocks, const TensorView& scales,
                        const ExecContext& ctx) {
  if (p.rows == 0) return;
  MOEKIT_ON_BACKEND(p.device, cpu::quantize_mxfp4(p, w, blocks, scales, ctx),
                    cuda::quantize_mxfp4(p, w, blocks, scales, ctx));
}

MxProblem accept_dequantize_mxfp4(const TensorView& blocks, const TensorView& scales, const TensorView& out) {
  const MxProblem p = check_dequantize_mxfp4_inputs(blocks, scales);
  check_dequantize_mxfp4_outputs(p, out);
  check_backend("dequantize_mxfp4", p.device);
  MOEKIT_ON_BACKEND(p.device, (void)0, cuda::can_implement_dequantize_mxfp4(p, blocks));
  return p;
}

void run_dequantize_mxfp4(const MxProblem& p, const TensorView& blocks, const TensorView& scales,
                          const TensorView& out, const ExecContext& ctx) {
  if (p.rows == 0) return;
  MOEKIT_ON_BACKEND(p.device, cpu::dequantize_mxfp4(p, blocks, scales, out, ctx),
                    cuda::dequantize_mxfp4(p, blocks, scales, out, ctx));
}

MxSlabsProblem accept_repack_mxfp4(const TensorView& blocks, const TensorView& scales, const TensorView& codes,
                                   const TensorView& slab_scales) {
  const MxSlabsProblem p = check_repack_mxfp4_inputs(blocks, scales);
  check_repack_mxfp4_outputs(p, codes, slab_scales);
  check_backend("repack_mxfp4", p.device);
  return p;
}

void run_repack_mxfp4(const MxSlabsProblem& p, const TensorView& blocks, const TensorView& scales,
                      const TensorView& codes, const TensorView& slab_scales, const ExecContext& ctx) {
  if (p.E == 0 || p.slabs == 0 || p.steps == 0) return;
  MOEKIT_ON_BACKEND(p.device, cpu::repack_mxfp4(p, blocks, scales, codes, slab_scales, ctx),
                    cuda::repack_mxfp4(p, blocks, scales, codes, slab_scales, ctx));
}

RouteProblem accept_route(const TensorView& logits, int64_t k, const RouteOutputs& out) {
  const RouteProblem p = check_route_inputs(logits, k);
  check_route_outputs(p, out);
  accept_route_on_backend(p);
  return p;
}

void accept_route_on_backend(const RouteProblem& p) {
  check_backend("route", p.device);
  MOEKIT_ON_BACKEND(p.device, (void)0, cuda::can_implement_route(p));
}

void run_route(const RouteProblem& p, const TensorView& logits, const RouteOutputs& out, const ExecContext& ctx) {
  // T == 0 still writes the (all-zero) counts and offsets.
  MOEKIT_ON_BACKEND(p.device, cpu::route(p, logits, out, ctx), cuda::route(p, logits, out, ctx));
}

MatmulOgsProblem accept_matmul_ogs(const MatmulOgsArgs& args) {
  const MatmulOgsProblem p = check_matmul_ogs_inputs(args);
  check_matmul_ogs_outputs(p, args);
  accept_matmul_ogs_on_backend(p, args);
  return p;
}

void accept_matmul_ogs_on_backend(const MatmulOgsProblem& p, const MatmulOgsArgs& args) {
  check_backend("matmul_ogs", p.device);
  MOEKIT_ON_BACKEND(p.device, (void)0, cuda::can_implement_matmul_ogs(p, args));
}

void run_matmul_ogs(const MatmulOgsProblem& p, const MatmulOgsArgs& args, const ExecContext& ctx) {
  if (p.out_rows == 0 || p.out_cols == 0) return;
  MOEKIT_ON_BACKEND(p.device, cpu::matmul_ogs(p, args, ctx), cuda::matmul_ogs(p, args, ctx));
}

MatmulOgsProblem accept_matmul_ogs_backward(const MatmulOgsBackwardArgs& args) {
  const MatmulOgsProblem p = check_matmul_ogs_backward_inputs(args);
  check_matmul_ogs_backward_outputs(p, args);
  check_backend("matmul_ogs_backward", p.device);
  MOEKIT_ON_BACKEND(p.device, (void)0, cuda::can_implement_matmul_ogs_backward(p, args));
  return p;
}

void run_matmul_ogs_backward(const MatmulOgsProblem& p, const MatmulOgsBackwardArgs& args, const ExecContext& ctx) {
  MOEKIT_ON_BACKEND(p.device, cpu::matmul_ogs_backward(p, args, ctx), cuda::matmul_ogs_backward(p, args, ctx));
}

AddRmsNormProblem accept_add_rms_norm(const TensorView& x, const TensorView& residual, const TensorView& scale,
                                      float eps, const TensorView& sum, const TensorView& out) {
  const AddRmsNormProblem p = check_add_rms_norm_inputs(x, residual, scale, eps);
  check_add_rms_norm_outputs(p, x, sum, out);
  check_backend("add_rms_norm", p.device);
  MOEKIT_ON_BACKEND(p.device, (void)0, cuda::can_implement_add_rms_norm(p));
  return p;
}

void run_add_rms_norm(const AddRmsNormProblem& p, const TensorView& x, const TensorView& residual,
                      const TensorView& scale, const TensorView& sum, const TensorView& out, const ExecContext& ctx) {
  if (p.T == 0 || p.H == 0) return;
  MOEKIT_ON_BACKEND(p.device, cpu::add_rms_norm(p, x, residual, scale, sum, out, ctx),
                    cuda::add_rms_norm(p, x, residual, scale, sum, out, ctx));
}

AttentionDecodeProblem accept_attention_decode(const AttentionDecodeArgs& args) {
  const AttentionDecodeProblem p = check_attention_decode_inputs(args);
  check_attention_decode_outputs(p, args);
  check_backend("attention_decode", p.device);
  MOEKIT_ON_BACKEND(p.device, (void)0, cuda::can_implement_attention_decode(p, args));
  return p;
}

void run_attention_decode(const AttentionDecodeProblem& p, const AttentionDecodeArgs& args, const ExecContext& ctx) {
  if (p.T == 0) return;
  MOEKIT_ON_BACKEND(p.device, cpu::attention_decode(p, args, ctx), cuda::attention_decode(p, args, ctx));
}

GreedyTokenProblem accept_greedy_token(const TensorView& logits, const TensorView& position, const TensorView& token,
                                       const TensorView& ids) {
  const GreedyTokenProblem p = check_greedy_token_args(logits, position, token, ids);
  check_backend("greedy_token", p.device);
  return p;
}

void run_greedy_token(const GreedyTokenProblem& p, const TensorView& logits, const TensorView& position,
                      const TensorView& token, const TensorView& ids, const ExecContext& ctx) {
  MOEKIT_ON_BACKEND(p.device, cpu::greedy_token(p, logits, position, token, ids, ctx),
                    cuda::greedy_token(p, logits, position, token, ids, ctx));
}

void quantize_mxfp4(const TensorView& w, const TensorView& blocks, const TensorView& scales, const ExecContext& ctx) {
  run_quantize_mxfp4(accept_quantize_mxfp4(w, blocks, scales), w, blocks, scales, ctx);
}

void repack_mxfp4(const TensorView& blocks, const TensorView& scales, const TensorView& codes,
                  const TensorView& slab_scales, const ExecContext& ctx) {
  run_repack_mxfp4(accept_repack_mxfp4(blocks, scales, codes, slab_scales), blocks, scales, codes, slab_scales, ctx);
}

void dequantize_mxfp4(const TensorView& blocks, const TensorView& scales, const TensorView& out,
                      const ExecContext& ctx) {
  run_dequantize_mxfp4(accept_dequantize_mxfp4(blocks, scales, out), blocks, scales, out, ctx);
}

void route(const TensorView& logits, int k, const RouteOutputs& out, const ExecContext& ctx) {
  run_route(accept_route(logits, k, out), logits, out, ctx);
}

size_t matmul_ogs_workspace_size(const MatmulOgsArgs& args) {
  return check_matmul_ogs_inputs(args).workspace.total;
}

void matmul_ogs(const MatmulOgsArgs& args, const ExecContext& ctx) {
  if (!ctx.matmul_ogs_config.empty()) matmul_ogs_kernel_named(ctx.matmul_ogs_config);  // a name, on every backend
  run_matmul_ogs(accept_matmul_ogs(args), args, ctx);
}

size_t matmul_ogs_backward_workspace_size(const MatmulOgsBackwardArgs& args) {
  const MatmulOgsProblem p = check_matmul_ogs_backward_inputs(args);
  size_t bytes = 0;  // the CPU backend needs none
  if (p.device.type == DeviceType::kCUDA) {
    check_backend("matmul_ogs_backward", p.device);
    MOEKIT_ON_BACKEND(p.device, (void)0, bytes = cuda::matmul_ogs_backward_workspace_size(p, args));
  }
  return bytes;
}

void matmul_ogs_backward(const MatmulOgsBackwardArgs& args, const ExecContext& ctx) {
  run_matmul_ogs_backward(accept_matmul_ogs_backward(args), args, ctx);
}

void add_rms_norm(const TensorView& x, const TensorView& residual, const TensorView& scale, float eps,
                  const TensorView& sum, const TensorView& out, const ExecContext& ctx) {
  run_add_rms_norm(accept_add_rms_norm(x, residual, scale, eps, sum, out), x, residual, scale, sum, out, ctx);
}

size_t attention_decode_workspace_size(const AttentionDecodeArgs& args) {
  return check_attention_decode_inputs(args).workspace;
}

void attention_decode(const AttentionDecodeArgs& args, const ExecContext& ctx) {
  run_attention_decode(accept_attention_decode(args), args, ctx);
}

void greedy_token(const TensorView& logits, const TensorView& position, const TensorView& token,
                  const TensorView& ids, const ExecContext& ctx) {
  run_greedy_token(accept_greedy_token(logits, position, token, ids), logits, position, token, ids, ctx);
}

}  // namespace moekit
