// Every op in two steps. accept_*: the one place a call is accepted or refused: shapes, dtypes,
// devices and values (src/core/problem.h), then the limits of the backend that will run it
// (alignment, workspace, grid sizes); it reads no tensor data and launches nothing. run_*: the
// work, on the backend of the tensors' device. The public ops accept and then run; moe_mlp
// accepts all four of its calls before it runs the first, so a layer either fails before
// touching memory or runs to completion.
#pragma once

#include "problem.h"

namespace moekit {

MxProblem accept_quantize_mxfp4(const TensorView& w, const TensorView& blocks, const TensorView& scales);
void run_quantize_mxfp4(const MxProblem& p, const TensorView& w, const TensorView& blocks, const TensorView& scales,
                        const ExecContext& ctx);

MxProblem accept_dequantize_mxfp4(const TensorView& blocks, const TensorView& scales, const TensorView& out);
void run_dequantize_mxfp4(const MxProblem& p, const TensorView& blocks, const TensorView& scales,
                          const TensorView& out, const ExecContext& ctx);

MxSlabsProblem accept_repack_mxfp4(const TensorView& blocks, const TensorView& scales, const TensorView& codes,
                                   const TensorView& slab_scales);
void run_repack_mxfp4(const MxSlabsProblem& p, const TensorView& blocks, const TensorView& scales,
                      const TensorView& codes, const TensorView& slab_scales, const ExecContext& ctx);

RouteProblem accept_route(const TensorView& logits, int64_t k, const RouteOutputs& out);
// The last part of accept_route: the backend's limits on a call whose arguments are checked.
void accept_route_on_backend(const RouteProblem& p);
void run_route(const RouteProblem& p, const TensorView& logits, const RouteOutputs& out, const ExecContext& ctx);

MatmulOgsProblem accept_matmul_ogs(const MatmulOgsArgs& args);
// The last part of accept_matmul_ogs: the backend's limits on a call whose arguments are checked.
void accept_matmul_ogs_on_backend(const MatmulOgsProblem& p, const MatmulOgsArgs& args);
void run_matmul_ogs(const MatmulOgsProblem& p, const MatmulOgsArgs& args, const ExecContext& ctx);

MatmulOgsProblem accept_matmul_ogs_backward(const MatmulOgsBackwardArgs& args);
void run_matmul_ogs_backward(const MatmulOgsProblem& p, const MatmulOgsBackwardArgs& args, const ExecContext& ctx);

// moe_mlp's four steps (gate, route, mlp1, mlp2) as the calls of the ops they are, their
// intermediates in a's workspace, each accepted (a refusal is the layer's, naming its argument):
// their problems are moe_mlp_step_problems', so what is left to accept is each backend's limits.
struct MoeMlpSteps {
  TensorView logits;
  RouteOutputs route;
  MatmulOgsArgs gate, mlp1, mlp2;
  MatmulOgsProblem gate_p, mlp1_p, mlp2_p;
  RouteProblem route_p;
};
// For T >= 1, after check_moe_mlp_outputs.
MoeMlpSteps accept_moe_mlp_steps(const MoeMlpProblem& p, const MoeMlpArgs& a);
// moe_mlp whose inputs check_moe_mlp_inputs accepted as p (the torch binding sized y and the
// workspace from p): the rest of moekit::moe_mlp, its outputs' checks and its four steps'.
void run_moe_mlp(const MoeMlpProblem& p, const MoeMlpArgs& a, const ExecContext& ctx);

AddRmsNormProblem accept_add_rms_norm(const TensorView& x, const TensorView& residual, const TensorView& scale,
                                      float eps, const TensorView& sum, const TensorView& out);
void run_add_rms_norm(const AddRmsNormProblem& p, const TensorView& x, const TensorView& residual,
                      const TensorView& scale, const TensorView& sum, const TensorView& out, const ExecContext& ctx);

AttentionDecodeProblem accept_attention_decode(const AttentionDecodeArgs& args);
void run_attention_decode(const AttentionDecodeProblem& p, const AttentionDecodeArgs& args, const ExecContext& ctx);

GreedyTokenProblem accept_greedy_token(const TensorView& logits, const TensorView& position, const TensorView& token,
                                       const TensorView& ids);
void run_greedy_token(const GreedyTokenProblem& p, const TensorView& logits, const TensorView& position,
                      const TensorView& token, const TensorView& ids, const ExecContext& ctx);

}  // namespace moekit
