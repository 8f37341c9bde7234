// The CPU backend: the readable specification of every op, and the oracle of every test.
// Entry points take arguments already validated by src/core/problem.h.
#pragma once

#include "../core/problem.h"

namespace moekit::cpu {

void quantize_mxfp4(const MxProblem& p, const TensorView& w, const TensorView& blocks, const TensorView& scales,
                    const ExecContext& ctx);
void repack_mxfp4(const MxSlabsProblem& p, const TensorView& blocks, const TensorView& scales, const TensorView& codes,
                  const TensorView& slab_scales, const ExecContext& ctx);
void dequantize_mxfp4(const MxProblem& p, const TensorView& blocks, const TensorView& scales, const TensorView& out,
                      const ExecContext& ctx);
void route(const RouteProblem& p, const TensorView& logits, const RouteOutputs& out, const ExecContext& ctx);
void matmul_ogs(const MatmulOgsProblem& p, const MatmulOgsArgs& a, const ExecContext& ctx);
void matmul_ogs_backward(const MatmulOgsProblem& p, const MatmulOgsBackwardArgs& a, const ExecContext& ctx);
void add_rms_norm(const AddRmsNormProblem& p, const TensorView& x, const TensorView& residual, const TensorView& scale,
                  const TensorView& sum, const TensorView& out, const ExecContext& ctx);
void attention_decode(const AttentionDecodeProblem& p, const AttentionDecodeArgs& a, const ExecContext& ctx);
void greedy_token(const GreedyTokenProblem& p, const TensorView& logits, const TensorView& position,
                  const TensorView& token, const TensorView& ids, const ExecContext& ctx);

}  // namespace moekit::cpu
