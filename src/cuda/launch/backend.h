// The CUDA backend's entry points, one launcher file per op family. can_implement_* refuse (with
// moekit::Error naming the op and argument) what this backend cannot run: alignment, workspace,
// sizes beyond a kernel's limits; they launch nothing. The launchers take calls that were
// validated (src/core/problem.h) and accepted by can_implement_*, switch to the tensors' device
// with a guard and launch on ctx.cuda_stream.
#pragma once

#include "../../core/problem.h"

namespace moekit::cuda {

void can_implement_quantize_mxfp4(const MxProblem& p, const TensorView& blocks);
void can_implement_dequantize_mxfp4(const MxProblem& p, const TensorView& blocks);
void can_implement_route(const RouteProblem& p);
void can_implement_matmul_ogs(const MatmulOgsProblem& p, const MatmulOgsArgs& a);
void can_implement_matmul_ogs_backward(const MatmulOgsProblem& p, const MatmulOgsBackwardArgs& a);
void can_implement_add_rms_norm(const AddRmsNormProblem& p);
void can_implement_attention_decode(const AttentionDecodeProblem& p, const AttentionDecodeArgs& a);

void quantize_mxfp4(const MxProblem& p, const TensorView& w, const TensorView& blocks, const TensorView& scales,
                    const ExecContext& ctx);
void repack_mxfp4(const MxSlabsProblem& p, const TensorView& blocks, const TensorView& scales, const TensorView& codes,
                  const TensorView& slab_scales, const ExecContext& ctx);
void dequantize_mxfp4(const MxProblem& p, const TensorView& blocks, const TensorView& scales, const TensorView& out,
                      const ExecContext& ctx);
void route(const RouteProblem& p, const TensorView& logits, const RouteOutputs& out, const ExecContext& ctx);
void matmul_ogs(const MatmulOgsProblem& p, const MatmulOgsArgs& a, const ExecContext& ctx);
size_t matmul_ogs_backward_workspace_size(const MatmulOgsProblem& p, const MatmulOgsBackwardArgs& a);
void matmul_ogs_backward(const MatmulOgsProblem& p, const MatmulOgsBackwardArgs& a, const ExecContext& ctx);
void add_rms_norm(const AddRmsNormProblem& p, const TensorView& x, const TensorView& residual, const TensorView& scale,
                  const TensorView& sum, const TensorView& out, const ExecContext& ctx);
void attention_decode(const AttentionDecodeProblem& p, const AttentionDecodeArgs& a, const ExecContext& ctx);
void greedy_token(const GreedyTokenProblem& p, const TensorView& logits, const TensorView& position,
                  const TensorView& token, const TensorView& ids, const ExecContext& ctx);

// moe_mlp's decode path (three kernels) where it applies: a few tokens (p.decode.fits), bf16 x,
// MXFP4 experts, H and I multiples of 8, 16-byte aligned data, sm_80+. moe_mlp composes the ops
// otherwise.
bool moe_mlp_decode_fits(const MoeMlpProblem& p, const MoeMlpArgs& a);
void moe_mlp_decode(const MoeMlpProblem& p, const MoeMlpArgs& a, const ExecContext& ctx);

}  // namespace moekit::cuda
