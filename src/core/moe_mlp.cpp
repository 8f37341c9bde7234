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

MoeMlpSteps accept_moe_mlp_steps(const MoeMlpProblem& p, const MoeMlpArgs& a) {
  const MoeMlpWorkspace& ws = p.workspace;
  char* base = a.workspace.ptr<char>();
  const Device dev = p.device;
  const int64_t T = p.T, E = p.E, k = p.k;
  MoeMlpSteps s;
  s.logits = TensorView(base + ws.logits, DType::kFloat32, {T, E}, dev);
  s.route = {TensorView(base + ws.expert_idx, DType::kInt32, {T, k}, dev),
             TensorView(base + ws.expert_weight, DType::kFloat32, {T, k}, dev),
             TensorView(base + ws.expert_counts, DType::kInt32, {E}, dev),
             TensorView(base + ws.expert_offsets, DType::kInt32, {E + 1}, dev),
             TensorView(base + ws.gather_idx, DType::kInt32, {T * k}, dev),
             TensorView(base + ws.scatter_idx, DType::kInt32, {T, k}, dev)};
  const TensorView act(base + ws.act, a.x.dtype, {T * k, p.I}, dev);
  const TensorView matmul_ws(base + ws.matmul, DType::kUInt8, {static_cast<int64_t>(ws.total - ws.matmul)}, dev);

  s.gate.x = a.x;
  s.gate.w.values = a.gate_weight.reshape({1, E, p.H});
  s.gate.bias = a.gate_bias.reshape({1, E});
  s.gate.out = s.logits;
  s.gate.workspace = matmul_ws;

  s.mlp1.x = a.x;
  s.mlp1.w = a.mlp1;
  s.mlp1.bias = a.mlp1_bias;
  s.mlp1.expert_offsets = s.route.expert_offsets;
  s.mlp1.gather_idx = s.route.gather_idx;
  s.mlp1.swiglu = {true, a.swiglu_alpha, a.swiglu_limit};
  s.mlp1.out = act;
  s.mlp1.workspace = matmul_ws;

  s.mlp2.x = act;
  s.mlp2.w = a.mlp2;
  s.mlp2.bias = a.mlp2_bias;
  s.mlp2.expert_offsets = s.route.expert_offsets;
  s.mlp2.scatter_idx = s.route.scatter_idx;
  s.mlp2.combine_weight = s.route.expert_weight;
  s.mlp2.out = a.y;
  s.mlp2.workspace = matmul_ws;

  // The steps' arguments are the layer's, which check_moe_mlp_inputs accepted, and views of the
  // workspace of the shapes their problems name: checking them again as each op's would find
  // nothing (tests/cpp/moe_mlp_steps_test.cpp) and cost the decode step ~1 us of host time.
  const MoeMlpStepProblems q = moe_mlp_step_problems(p);
  s.gate_p = q.gate;
  s.route_p = q.route;
  s.mlp1_p = q.mlp1;
  s.mlp2_p = q.mlp2;
  accept_step("gate", "gate_weight", [&] { accept_matmul_ogs_on_backend(s.gate_p, s.gate); });
  accept_step("route", "gate_weight", [&] { accept_route_on_backend(s.route_p); });
  accept_step("mlp1", "mlp1_weight", [&] { accept_matmul_ogs_on_backend(s.mlp1_p, s.mlp1); });
  accept_step("mlp2", "mlp2_weight", [&] { accept_matmul_ogs_on_backend(s.mlp2_p, s.mlp2); });
  return s;
}

void run_moe_mlp(const MoeMlpProblem& p, const MoeMlpArgs& a, const ExecContext& ctx) {
  check_moe_mlp_outputs(p, a);
  check_backend("moe_mlp", p.device);
  if (p.T == 0) return;
  const MoeMlpSteps s = accept_moe_mlp_steps(p, a);
#if defined(MOEKIT_WITH_CUDA)
  // A few tokens on CUDA: the same layer in three kernels (src/cuda/kernels/moe), whose sums
  // run in other orders than the general path's: not when the call asks for batch invariance.
  if (p.device.type == DeviceType::kCUDA && !ctx.batch_invariant && cuda::moe_mlp_decode_fits(p, a)) {
    cuda::moe_mlp_decode(p, a, ctx);
    return;
  }
#endif
  run_matmul_ogs(s.gate_p, s.gate, ctx);
  run_route(s.route_p, s.logits, s.route, ctx);
  run_matmul_ogs(s.mlp1_p, s.mlp1, ctx);
  run_matmul_ogs(s.mlp2_p, s.mlp2, ctx);
}

}  // namespace moekit
