// The gpt-oss MoE layer as a composition of moekit's ops, the same on every backend:
// gate (a one-expert matmul_ogs into float32 logits), route, mlp1 with gather and SwiGLU,
// mlp2 with the weighted scatter-combine. Intermediates live in the caller's workspace. All
// four calls are accepted (src/core/accept.h) before the first one runs.
#include <string>

#include "accept.h"
#include "moekit/error.h"
#include "moekit/ops.h"
#if defined(MOEKIT_WITH_CUDA)
#include "../cuda/launch/backend.h"
#endif

namespace moekit {
namespace {

// Accepts one step of the layer; a refusal is reported as the layer's, naming the layer's
// argument the step reads (the backend's limits are checked per step, e.g. on mlp1's codes).
template <class Accept>
auto accept_step(const char* step, const char* arg, Accept&& accept) -> decltype(accept()) {
  try {
    return accept();
  } catch (const Error& e) {
    throw Error(e.kind(), std::string("moekit.moe_mlp: '") + arg + "' refused by the layer's " + step + " step: " + e.what());
  }
}

}  // namespace

size_t moe_mlp_workspace_size(const MoeMlpArgs& args) { return check_moe_mlp_inputs(args).workspace.total; }

void moe_mlp(const MoeMlpArgs& a, const ExecContext& ctx) { run_moe_mlp(check_moe_mlp_inputs(a), a, ctx); }

void run_moe_mlp(const MoeMlpProblem& p, const MoeMlpArgs& a, const ExecContext& ctx) {
  check_moe_mlp_outputs(p, a);
  check_backend("moe_mlp", p.device);
  if (p.T == 0) return;

  const MoeMlpWorkspace& ws = p.workspace;
  char* base = a.workspace.ptr<char>();
  const Device dev = p.device;
  const int64_t T = p.T, E = p.E, k = p.k;
  const TensorView logits(base + ws.logits, DType::kFloat32, {T, E}, dev);
  const RouteOutputs r{TensorView(base + ws.expert_idx, DType::kInt32, {T, k}, dev),
                       TensorView(base + ws.expert_weight, DType::kFloat32, {T, k}, dev),
                       TensorView(base + ws.expert_counts, DType::kInt32, {E}, dev),
                       TensorView(base + ws.expert_offsets, DType::kInt32, {E + 1}, dev),
                       TensorView(base + ws.gather_idx, DType::kInt32, {T * k}, dev),
                       TensorView(base + ws.scatter_idx, DType::kInt32, {T, k}, dev)};
  const TensorView act(base + ws.act, a.x.dtype, {T * k, p.I}, dev);
  const TensorView matmul_ws(base + ws.matmul, DType::kUInt8, {static_cast<int64_t>(ws.total - ws.matmul)}, dev);

  MatmulOgsArgs gate;
  gate.x = a.x;
  gate.w.values = a.gate_weight.reshape({1, E, p.H});
  gate.bias = a.gate_bias.reshape({1, E});
  gate.out = logits;
  gate.workspace = matmul_ws;

  MatmulOgsArgs mlp1;
  mlp1.x = a.x;
  mlp1.w = a.mlp1;
  mlp1.bias = a.mlp1_bias;
  mlp1.expert_offsets = r.expert_offsets;
  mlp1.gather_idx = r.gather_idx;
  mlp1.swiglu = {true, a.swiglu_alpha, a.swiglu_limit};
  mlp1.out = act;
  mlp1.workspace = matmul_ws;

  MatmulOgsArgs mlp2;
  mlp2.x = act;
  mlp2.w = a.mlp2;
  mlp2.bias = a.mlp2_bias;
  mlp2.expert_offsets = r.expert_offsets;
  mlp2.scatter_idx = r.scatter_idx;
  mlp2.combine_weight = r.expert_weight;
  mlp2.out = a.y;
  mlp2.workspace = matmul_ws;

  const auto gate_p = accept_step("gate", "gate_weight", [&] { return accept_matmul_ogs(gate); });
  const auto route_p = accept_step("route", "gate_weight", [&] { return accept_route(logits, p.k, r); });
  const auto mlp1_p = accept_step("mlp1", "mlp1_weight", [&] { return accept_matmul_ogs(mlp1); });
  const auto mlp2_p = accept_step("mlp2", "mlp2_weight", [&] { return accept_matmul_ogs(mlp2); });

#if defined(MOEKIT_WITH_CUDA)
  // A few tokens on CUDA: the same layer in three kernels (src/cuda/kernels/moe), whose sums
  // run in other orders than the general path's: not when the call asks for batch invariance.
  if (dev.type == DeviceType::kCUDA && !ctx.batch_invariant && cuda::moe_mlp_decode_fits(p, a)) {
    cuda::moe_mlp_decode(p, a, ctx);
    return;
  }
#endif
  run_matmul_ogs(gate_p, gate, ctx);
  run_route(route_p, logits, r, ctx);
  run_matmul_ogs(mlp1_p, mlp1, ctx);
  run_matmul_ogs(mlp2_p, mlp2, ctx);
}

}  // namespace moekit
