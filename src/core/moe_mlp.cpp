// The gpt-oss MoE layer as a composition of moekit's ops, the same on every backend:
// gate (a one-expert matmul_ogs into float32 logits), route, mlp1 with gather and SwiGLU,
// mlp2 with the weighted scatter-combine. Intermediates live in the caller's workspace.
#include "check.h"
#include "moekit/ops.h"
#include "problem.h"

namespace moekit {

size_t moe_mlp_workspace_size(const MoeMlpArgs& args) {
  const MoeMlpProblem p = check_moe_mlp_inputs(args);
  return moe_mlp_workspace_layout(p, args.x.dtype).total;
}

void moe_mlp(const MoeMlpArgs& a, const ExecContext& ctx) {
  const char* op = "moe_mlp";
  const MoeMlpProblem p = check_moe_mlp_inputs(a);
  check::present(op, "y", a.y);
  check::dtype(op, "y", a.y, {a.x.dtype});
  check::shape(op, "y", a.y, {p.T, p.H});
  check::contiguous(op, "y", a.y);
  const MoeMlpWorkspace ws = moe_mlp_workspace_layout(p, a.x.dtype);
  check::present(op, "workspace", a.workspace);
  check::dtype(op, "workspace", a.workspace, {DType::kUInt8});
  check::contiguous(op, "workspace", a.workspace);
  if (a.workspace.ndim != 1 || static_cast<size_t>(a.workspace.numel()) < ws.total) {
    check::fail(Error::Kind::kValue, op, "workspace", "a 1-D buffer of at least " + std::to_string(ws.total) + " bytes",
                a.workspace.shape_str());
  }
  check_backend(op, p.device);
  if (p.T == 0) return;

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
  matmul_ogs(gate, ctx);

  route(logits, p.k, r, ctx);

  MatmulOgsArgs mlp1;
  mlp1.x = a.x;
  mlp1.w = a.mlp1;
  mlp1.bias = a.mlp1_bias;
  mlp1.expert_offsets = r.expert_offsets;
  mlp1.gather_idx = r.gather_idx;
  mlp1.swiglu = {true, a.swiglu_alpha, a.swiglu_limit};
  mlp1.out = act;
  mlp1.workspace = matmul_ws;
  matmul_ogs(mlp1, ctx);

  MatmulOgsArgs mlp2;
  mlp2.x = act;
  mlp2.w = a.mlp2;
  mlp2.bias = a.mlp2_bias;
  mlp2.expert_offsets = r.expert_offsets;
  mlp2.scatter_idx = r.scatter_idx;
  mlp2.combine_weight = r.expert_weight;
  mlp2.out = a.y;
  mlp2.workspace = matmul_ws;
  matmul_ogs(mlp2, ctx);
}

}  // namespace moekit
