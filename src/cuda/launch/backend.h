// The CUDA backend's entry points, one launcher file per op family. Arguments arrive validated
// (src/core/problem.h); each launcher switches to the tensors' device with a guard and launches
// on ctx.cuda_stream.
#pragma once

#include "../../core/problem.h"

namespace moekit::cuda {

void quantize_mxfp4(const MxProblem& p, const TensorView& w, const TensorView& blocks, const TensorView& scales,
                    const ExecContext& ctx);
void dequantize_mxfp4(const MxProblem& p, const TensorView& blocks, const TensorView& scales, const TensorView& out,
                      const ExecContext& ctx);
void route(const RouteProblem& p, const TensorView& logits, const RouteOutputs& out, const ExecContext& ctx);
void matmul_ogs(const MatmulOgsProblem& p, const MatmulOgsArgs& a, const ExecContext& ctx);

}  // namespace moekit::cuda
