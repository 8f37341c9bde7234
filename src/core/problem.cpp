#include "problem.h"

#include <cmath>
#include <string>

#include "byte_layout.h"
#include "check.h"
#include "mxfp4.h"
#include "mxfp4_slabs.h"

namespace moekit {
namespace {

using check::fail;
constexpr auto kValue = Error::Kind::kValue;
const std::initializer_list<DType> kFloatTypes = {DType::kFloat32, DType::kBFloat16};

std::vector<int64_t> dims(const TensorView& t, int from, int to) {
  return std::vector<int64_t>(t.shape + from, t.shape + to);
}

std::vector<int64_t> concat(std::vector<int64_t> a, std::initializer_list<int64_t> b) {
  a.insert(a.end(), b);
  return a;
}

void check_tensor(const char* op, const char* arg, const TensorView& t, std::initializer_list<DType> types,
                  check::Span<int64_t> shape) {
  check::present(op, arg, t);
  check::dtype(op, arg, t, types);
  check::shape(op, arg, t, shape);
  check::contiguous(op, arg, t);
}

void check_optional(const char* op, const char* arg, const TensorView& t, std::initializer_list<DType> types,
                    check::Span<int64_t> shape) {
  if (t.present()) check_tensor(op, arg, t, types, shape);
}

void check_k_multiple_of_block(const char* op, const char* arg, int64_t K, const char* why) {
  if (K % mxfp4::kBlock != 0) {
    fail(kValue, op, arg, std::string("a reduction dimension that is a multiple of 32 (") + why + ")",
         std::to_string(K));
  }
}

struct WeightDims {
  int64_t E = 0, N = 0, K = 0;
};

// Expert weights [E, N, K], float or MXFP4 in the checkpoint layout. `K` < 0: any.
WeightDims check_expert_weights(const char* op, const char* values_arg, const char* scales_arg,
                                const ExpertWeights& w, int64_t K) {
  check::present(op, values_arg, w.values);
  WeightDims d;
  if (w.is_mxfp4()) {
    check::dtype(op, values_arg, w.values, {DType::kUInt8});
    check::dtype(op, scales_arg, w.scales, {DType::kUInt8});
    if (K >= 0) check_k_multiple_of_block(op, values_arg, K, "MXFP4 weights");
    const int64_t kb = K >= 0 ? K / mxfp4::kBlock : -1;
    check::shape(op, values_arg, w.values, {-1, -1, kb, mxfp4::kBytesPerBlock});
    check::contiguous(op, values_arg, w.values);
    d = {w.values.shape[0], w.values.shape[1], w.values.shape[2] * mxfp4::kBlock};
    check::shape(op, scales_arg, w.scales, {d.E, d.N, d.K / mxfp4::kBlock});
    check::contiguous(op, scales_arg, w.scales);
  } else {
    check::dtype(op, values_arg, w.values, kFloatTypes);
    check::shape(op, values_arg, w.values, {-1, -1, K});
    check::contiguous(op, values_arg, w.values);
    d = {w.values.shape[0], w.values.shape[1], w.values.shape[2]};
  }
  if (d.E < 1) fail(kValue, op, values_arg, "at least one expert", "E = 0");
  return d;
}

// repack_mxfp4's codes and scales of E experts' [N, K] MXFP4 weights: their dtype and shapes.
void check_slab_tensors(const char* op, const char* codes_arg, const char* scales_arg, const TensorView& codes,
                        const TensorView& scales, int64_t E, int64_t N, int64_t K) {
  const int64_t slabs = mxfp4_slabs::slabs(N), steps = mxfp4_slabs::steps(K);
  check_tensor(op, codes_arg, codes, {DType::kUInt8}, {E, slabs, steps, mxfp4_slabs::kCodeBytes});
  check_tensor(op, scales_arg, scales, {DType::kUInt8}, {E, slabs, steps, mxfp4_slabs::kScaleBytes});
}

// The repacked MXFP4 weights (repack_mxfp4's codes and scales) where given: both, beside MXFP4
// weights of dims d. Returns whether they are.
bool check_weight_slabs(const char* op, const char* codes_arg, const char* scales_arg, const ExpertWeights& w,
                        const WeightDims& d) {
  if (!w.has_slabs()) return false;
  if (!w.is_mxfp4()) fail(kValue, op, codes_arg, "None with float weights (repack_mxfp4's layout is MXFP4's)", "a tensor");
  check_slab_tensors(op, codes_arg, scales_arg, w.slab_codes, w.slab_scales, d.E, d.N, d.K);
  return true;
}

}  // namespace

// ---------------------------------------------------------------------------------------- mxfp4

MxProblem check_quantize_mxfp4_inputs(const TensorView& w) {
  const char* op = "quantize_mxfp4";
  check::present(op, "w", w);
  check::dtype(op, "w", w, kFloatTypes);
  if (w.ndim < 1 || w.ndim > kMaxDims - 1) {
    fail(kValue, op, "w", "1 to " + std::to_string(kMaxDims - 1) + " dimensions", std::to_string(w.ndim));
  }
  check::contiguous(op, "w", w);
  MxProblem p;
  p.K = w.shape[w.ndim - 1];
  check_k_multiple_of_block(op, "w", p.K, "the quantized axis");
  p.lead = dims(w, 0, w.ndim - 1);
  p.rows = w.numel() / (p.K ? p.K : 1);
  if (p.K == 0) p.rows = 0;
  p.device = w.device;
  return p;
}

void check_quantize_mxfp4_outputs(const MxProblem& p, const TensorView& blocks, const TensorView& scales) {
  const char* op = "quantize_mxfp4";
  check_tensor(op, "blocks", blocks, {DType::kUInt8}, concat(p.lead, {p.K / mxfp4::kBlock, mxfp4::kBytesPerBlock}));
  check_tensor(op, "scales", scales, {DType::kUInt8}, concat(p.lead, {p.K / mxfp4::kBlock}));
  check::on_device(op, "blocks", blocks, p.device, "w");
  check::on_device(op, "scales", scales, p.device, "w");
}

MxProblem check_dequantize_mxfp4_inputs(const TensorView& blocks, const TensorView& scales) {
  const char* op = "dequantize_mxfp4";
  check::present(op, "blocks", blocks);
  check::present(op, "scales", scales);
  check::dtype(op, "blocks", blocks, {DType::kUInt8});
  check::dtype(op, "scales", scales, {DType::kUInt8});
  if (blocks.ndim < 2 || blocks.shape[blocks.ndim - 1] != mxfp4::kBytesPerBlock) {
    fail(kValue, op, "blocks", "shape [..., K/32, 16]", blocks.shape_str());
  }
  check::shape(op, "scales", scales, dims(blocks, 0, blocks.ndim - 1));
  check::contiguous(op, "blocks", blocks);
  check::contiguous(op, "scales", scales);
  MxProblem p;
  p.device = check::same_device(op, {{"blocks", &blocks}, {"scales", &scales}});
  p.K = blocks.shape[blocks.ndim - 2] * mxfp4::kBlock;
  p.lead = dims(blocks, 0, blocks.ndim - 2);
  p.rows = scales.numel() / (p.K ? p.K / mxfp4::kBlock : 1);
  if (p.K == 0) p.rows = 0;
  return p;
}

void check_dequantize_mxfp4_outputs(const MxProblem& p, const TensorView& out) {
  const char* op = "dequantize_mxfp4";
  check_tensor(op, "out", out, kFloatTypes, concat(p.lead, {p.K}));
  check::on_device(op, "out", out, p.device, "blocks");
}

MxSlabsProblem check_repack_mxfp4_inputs(const TensorView& blocks, const TensorView& scales) {
  const char* op = "repack_mxfp4";
  check_tensor(op, "blocks", blocks, {DType::kUInt8}, {-1, -1, -1, mxfp4::kBytesPerBlock});
  check_tensor(op, "scales", scales, {DType::kUInt8}, dims(blocks, 0, 3));
  MxSlabsProblem p;
  p.device = check::same_device(op, {{"blocks", &blocks}, {"scales", &scales}});
  p.E = blocks.shape[0];
  p.N = blocks.shape[1];
  p.K = blocks.shape[2] * mxfp4::kBlock;
  p.slabs = mxfp4_slabs::slabs(p.N);
  p.steps = mxfp4_slabs::steps(p.K);
  return p;
}

void check_repack_mxfp4_outputs(const MxSlabsProblem& p, const TensorView& codes, const TensorView& slab_scales) {
  const char* op = "repack_mxfp4";
  check_slab_tensors(op, "codes", "slab_scales", codes, slab_scales, p.E, p.N, p.K);
  check::on_device(op, "codes", codes, p.device, "blocks");
  check::on_device(op, "slab_scales", slab_scales, p.device, "blocks");
}

// ---------------------------------------------------------------------------------------- route

RouteProblem check_route_inputs(const TensorView& logits, int64_t k) {
  const char* op = "route";
  check_tensor(op, "logits", logits, kFloatTypes, {-1, -1});
  RouteProblem p{logits.shape[0], logits.shape[1], 0, logits.device};
  if (p.E < 1) fail(kValue, op, "logits", "at least one expert column", logits.shape_str());
  check::at_most(op, "logits", "experts", p.E, kMaxIndex - 1, "int32 expert offsets");
  if (k < 1 || k > p.E) {
    fail(kValue, op, "k", "1 <= k <= " + std::to_string(p.E) + " (the number of experts)", std::to_string(k));
  }
  p.k = static_cast<int>(k);
  check::at_most(op, "logits", "token-slots T * k", check::mul(op, "logits", p.T, k), kMaxIndex,
                 "int32 routing indices");
  return p;
}

void check_route_outputs(const RouteProblem& p, const RouteOutputs& o) {
  const char* op = "route";
  check_tensor(op, "expert_idx", o.expert_idx, {DType::kInt32}, {p.T, p.k});
  check_tensor(op, "expert_weight", o.expert_weight, {DType::kFloat32}, {p.T, p.k});
  check_tensor(op, "expert_counts", o.expert_counts, {DType::kInt32}, {p.E});
  check_tensor(op, "expert_offsets", o.expert_offsets, {DType::kInt32}, {p.E + 1});
  check_tensor(op, "gather_idx", o.gather_idx, {DType::kInt32}, {p.T * p.k});
  check_tensor(op, "scatter_idx", o.scatter_idx, {DType::kInt32}, {p.T, p.k});
  for (const auto& [name, t] : {std::pair{"expert_idx", &o.expert_idx}, {"expert_weight", &o.expert_weight},
                                {"expert_counts", &o.expert_counts}, {"expert_offsets", &o.expert_offsets},
                                {"gather_idx", &o.gather_idx}, {"scatter_idx", &o.scatter_idx}}) {
    check::on_device(op, name, *t, p.device, "logits");
  }
}

// ----------------------------------------------------------------------------------- matmul_ogs

MatmulOgsProblem check_matmul_ogs_inputs(const MatmulOgsArgs& a, const char* op) {
  check_tensor(op, "x", a.x, kFloatTypes, {-1, -1});
  MatmulOgsProblem p;
  p.M = a.x.shape[0];
  p.K = a.x.shape[1];
  p.mxfp4 = a.w.is_mxfp4();
  const WeightDims w = check_expert_weights(op, "w", "w_scales", a.w, p.K);
  p.E = w.E;
  p.N = w.N;
  p.slabs = check_weight_slabs(op, "w_codes", "w_slab_scales", a.w, w);
  check::at_most(op, "w", "experts", p.E, kMaxIndex - 1, "int32 expert offsets");
  check_optional(op, "bias", a.bias, kFloatTypes, {p.E, p.N});
  if (a.expert_offsets.present()) {
    check_tensor(op, "expert_offsets", a.expert_offsets, {DType::kInt32}, {p.E + 1});
  } else if (p.E != 1) {
    fail(kValue, op, "expert_offsets", "a tensor when w has " + std::to_string(p.E) + " experts", "None");
  }
  p.gather = a.gather_idx.present();
  if (p.gather) check_tensor(op, "gather_idx", a.gather_idx, {DType::kInt32}, {-1});
  p.P = p.gather ? a.gather_idx.shape[0] : p.M;
  check::at_most(op, p.gather ? "gather_idx" : "x", "rows", p.P, kMaxIndex, "int32 row indices");
  p.scatter = a.scatter_idx.present();
  if (p.scatter) {
    check_tensor(op, "scatter_idx", a.scatter_idx, {DType::kInt32}, {-1, -1});
    p.T = a.scatter_idx.shape[0];
    p.k = a.scatter_idx.shape[1];
    if (check::mul(op, "scatter_idx", p.T, p.k) != p.P) {
      fail(kValue, op, "scatter_idx", "T * k == " + std::to_string(p.P) + " (the rows of the grouped problem)",
           a.scatter_idx.shape_str());
    }
    check_optional(op, "combine_weight", a.combine_weight, {DType::kFloat32}, {p.T, p.k});
  } else if (a.combine_weight.present()) {
    fail(kValue, op, "combine_weight", "None without scatter_idx", "a tensor");
  }
  p.swiglu = a.swiglu.enabled;
  if (p.swiglu) {
    if (p.N % 2 != 0) fail(kValue, op, "w", "an even number of output columns for swiglu", std::to_string(p.N));
    check::finite(op, "swiglu_alpha", a.swiglu.alpha, false);
    check::finite(op, "swiglu_limit", a.swiglu.limit, true);
  }
  p.out_rows = p.scatter ? p.T : p.P;
  p.out_cols = p.swiglu ? p.N / 2 : p.N;
  check::mul(op, "w", check::mul(op, "w", p.out_rows, p.out_cols), sizeof(float));  // the output's bytes
  p.device = check::same_device(op, {{"x", &a.x}, {"w", &a.w.values}, {"w_scales", &a.w.scales},
                                     {"w_codes", &a.w.slab_codes}, {"w_slab_scales", &a.w.slab_scales}, {"bias", &a.bias},
                                     {"expert_offsets", &a.expert_offsets}, {"gather_idx", &a.gather_idx},
                                     {"scatter_idx", &a.scatter_idx}, {"combine_weight", &a.combine_weight}});
  p.workspace = matmul_ogs_workspace_layout(p);
  return p;
}

MatmulOgsWorkspace matmul_ogs_workspace_layout(const MatmulOgsProblem& p) {
  const char* op = "matmul_ogs";
  MatmulOgsWorkspace w;
  ByteLayout layout(op);
  const int64_t max_tiles = check::add(op, "x", (p.P + kMinTileRows - 1) / kMinTileRows, p.E);
  w.tiles = layout.take("x", max_tiles, 2 * sizeof(int32_t));
  w.tile_count = layout.take("x", 1, sizeof(int32_t));
  w.combine = layout.take("w", p.scatter ? check::mul(op, "w", p.P, p.out_cols) : 0, sizeof(float));
  // swapab_staged_rows(P) rows (P < 2^31) of 128 bytes a 64-k step.
  const int64_t staged = p.slabs && p.gather ? check::mul(op, "x", swapab_staged_rows(p.P), mxfp4_slabs::steps(p.K)) : 0;
  w.staged = layout.take("x", staged, 128);
  w.total = layout.size();
  return w;
}

void check_matmul_ogs_outputs(const MatmulOgsProblem& p, const MatmulOgsArgs& a) {
  const char* op = "matmul_ogs";
  check_tensor(op, "out", a.out, {a.x.dtype, DType::kFloat32}, {p.out_rows, p.out_cols});
  check::on_device(op, "out", a.out, p.device, "x");
}

MatmulOgsProblem check_matmul_ogs_backward_inputs(const MatmulOgsBackwardArgs& a) {
  const char* op = "matmul_ogs_backward";
  const MatmulOgsProblem p = check_matmul_ogs_inputs(a.forward, op);
  check_tensor(op, "grad_out", a.grad_out, {a.forward.x.dtype, DType::kFloat32}, {p.out_rows, p.out_cols});
  check::on_device(op, "grad_out", a.grad_out, p.device, "x");
  return p;
}

void check_matmul_ogs_backward_outputs(const MatmulOgsProblem& p, const MatmulOgsBackwardArgs& a) {
  const char* op = "matmul_ogs_backward";
  const MatmulOgsArgs& f = a.forward;
  check_optional(op, "grad_x", a.grad_x, {f.x.dtype}, {p.M, p.K});
  if (f.bias.present()) check_optional(op, "grad_bias", a.grad_bias, {f.bias.dtype}, {p.E, p.N});
  else if (a.grad_bias.present()) fail(kValue, op, "grad_bias", "None without bias", "a tensor");
  if (f.combine_weight.present()) {
    check_optional(op, "grad_combine_weight", a.grad_combine_weight, {DType::kFloat32}, {p.T, p.k});
  } else if (a.grad_combine_weight.present()) {
    fail(kValue, op, "grad_combine_weight", "None without combine_weight", "a tensor");
  }
  check::same_device(op, {{"x", &f.x}, {"grad_x", &a.grad_x}, {"grad_bias", &a.grad_bias},
                          {"grad_combine_weight", &a.grad_combine_weight}});
}

// -------------------------------------------------------------------------------------- moe_mlp

MoeMlpStepProblems moe_mlp_step_problems(const MoeMlpProblem& p) {
  const int64_t slots = p.T * p.k;  // checked by check_moe_mlp_inputs
  MoeMlpStepProblems s;
  MatmulOgsProblem& gate = s.gate;
  gate.M = gate.P = gate.out_rows = p.T;
  gate.K = p.H;
  gate.N = gate.out_cols = p.E;
  gate.E = 1;
  s.route = {p.T, p.E, p.k, p.device};
  MatmulOgsProblem& mlp1 = s.mlp1;
  mlp1.M = p.T;
  mlp1.P = mlp1.out_rows = slots;
  mlp1.K = p.H;
  mlp1.N = 2 * p.I;
  mlp1.E = p.E;
  mlp1.mxfp4 = p.mxfp4_1;
  mlp1.gather = mlp1.swiglu = true;
  mlp1.slabs = p.slabs1;
  mlp1.out_cols = p.I;
  MatmulOgsProblem& mlp2 = s.mlp2;
  mlp2.M = mlp2.P = slots;
  mlp2.K = p.I;
  mlp2.N = mlp2.out_cols = p.H;
  mlp2.E = p.E;
  mlp2.mxfp4 = p.mxfp4_2;
  mlp2.slabs = p.slabs2;
  mlp2.scatter = true;
  mlp2.T = mlp2.out_rows = p.T;
  mlp2.k = p.k;
  for (MatmulOgsProblem* m : {&gate, &mlp1, &mlp2}) {
    m->device = p.device;
    m->workspace = matmul_ogs_workspace_layout(*m);
  }
  return s;
}

namespace {

// Where the layer's intermediates go; throws if a size does not fit in int64.
MoeMlpWorkspace moe_mlp_workspace_layout(const MoeMlpProblem& p, DType x_dtype) {
  const char* op = "moe_mlp";
  MoeMlpWorkspace w;
  ByteLayout layout(op);
  const int64_t slots = p.T * p.k;  // checked by check_moe_mlp_inputs
  w.logits = layout.take("gate_weight", check::mul(op, "gate_weight", p.T, p.E), 4);
  w.expert_idx = layout.take("x", slots, 4);
  w.expert_weight = layout.take("x", slots, 4);
  w.expert_counts = layout.take("gate_weight", p.E, 4);
  w.expert_offsets = layout.take("gate_weight", p.E + 1, 4);
  w.gather_idx = layout.take("x", slots, 4);
  w.scatter_idx = layout.take("x", slots, 4);
  w.act = layout.take("mlp1_weight", check::mul(op, "mlp1_weight", slots, p.I), dtype_size(x_dtype));
  check::mul(op, "mlp2_weight", check::mul(op, "mlp2_weight", slots, p.H), sizeof(float));  // mlp2's combine rows
  // The three matmuls of the layer run one after another on one stream: one region serves all.
  const MoeMlpStepProblems steps = moe_mlp_step_problems(p);
  int64_t matmul = 0;
  for (const MatmulOgsProblem* m : {&steps.gate, &steps.mlp1, &steps.mlp2}) {
    const int64_t bytes = static_cast<int64_t>(m->workspace.total);
    matmul = bytes > matmul ? bytes : matmul;
  }
  w.matmul = layout.take("x", matmul, 1);
  const MoeDecodePlan& d = p.decode;
  w.decode_x = layout.take("x", d.fits ? p.T * p.H : 0, dtype_size(x_dtype));
  w.decode_partials = layout.take("x", d.partial_floats, sizeof(float));
  w.decode_counters = layout.take("x", d.counters, sizeof(int32_t));
  w.decode_route = layout.take("x", d.fits ? kMoeDecodeRouteBytes : 0, 1);
  w.total = layout.size();
  return w;
}

// Work units an expert matmul of the decode path aims at: a unit for each of its warps on each
// of 132 SMs (H100, H200).
constexpr int64_t kMoeDecodeTargetUnits = kMoeDecodeWarps * 132;

// k ranges per (expert, slab) that bring `units` (at one range) near the target, leaving each
// range two k steps (moe_decode_step_k) at least.
int64_t moe_decode_splits(int64_t units, int64_t K, int halves) {
  const int64_t steps = (K + moe_decode_step_k(halves) - 1) / moe_decode_step_k(halves);
  int64_t s = units > 0 ? kMoeDecodeTargetUnits / units : 1;
  s = s < kMoeDecodeMaxSplits ? s : kMoeDecodeMaxSplits;
  s = s < steps / 2 ? s : steps / 2;
  return s > 1 ? s : 1;
}

}  // namespace

MoeDecodePlan moe_decode_plan(const MoeMlpProblem& p) {
  MoeDecodePlan d;
  // The CUDA backend's path: elsewhere nothing of it is planned, nor its workspace reserved.
  d.fits = p.device.type == DeviceType::kCUDA && p.T >= 1 && p.T <= kMoeDecodeMaxTokens &&
           p.T * p.k <= kMoeDecodeMaxPairs;
  if (!d.fits) return d;
  d.experts = p.T * p.k < p.E ? p.T * p.k : p.E;
  d.halves = p.T <= kMoeDecodeHalvesMaxTokens ? 2 : 1;
  const int64_t rows = moe_decode_slab_rows(d.halves);
  const int64_t slabs1 = (2 * p.I + rows - 1) / rows;
  const int64_t slabs2 = (p.H + rows - 1) / rows;
  d.splits1 = moe_decode_splits(d.experts * slabs1, p.H, d.halves);
  d.splits2 = moe_decode_splits(d.experts * slabs2, p.I, d.halves);
  d.units1 = d.experts * slabs1 * d.splits1;
  d.units2 = d.experts * slabs2 * d.splits2;
  d.partial_floats = d.units2 * kMoeDecodeSlabRows * kMoeDecodeMaxTokens;  // mlp2's; mlp1's stay on chip
  d.counters = slabs2;
  return d;
}

MoeMlpProblem check_moe_mlp_inputs(const MoeMlpArgs& a) {
  const char* op = "moe_mlp";
  check_tensor(op, "x", a.x, kFloatTypes, {-1, -1});
  MoeMlpProblem p;
  p.T = a.x.shape[0];
  p.H = a.x.shape[1];
  check_tensor(op, "gate_weight", a.gate_weight, kFloatTypes, {-1, p.H});
  p.E = a.gate_weight.shape[0];
  if (p.E < 1) fail(kValue, op, "gate_weight", "at least one expert row", a.gate_weight.shape_str());
  check_optional(op, "gate_bias", a.gate_bias, kFloatTypes, {p.E});
  const WeightDims w1 = check_expert_weights(op, "mlp1_weight", "mlp1_scales", a.mlp1, p.H);
  if (w1.E != p.E) fail(kValue, op, "mlp1_weight", std::to_string(p.E) + " experts (rows of gate_weight)", std::to_string(w1.E));
  if (w1.N % 2 != 0) fail(kValue, op, "mlp1_weight", "an even number of rows 2I (interleaved SwiGLU pairs)", std::to_string(w1.N));
  p.I = w1.N / 2;
  check_optional(op, "mlp1_bias", a.mlp1_bias, kFloatTypes, {p.E, 2 * p.I});
  const WeightDims w2 = check_expert_weights(op, "mlp2_weight", "mlp2_scales", a.mlp2, p.I);
  if (w2.E != p.E || w2.N != p.H) {
    fail(kValue, op, "mlp2_weight", "shape [" + std::to_string(p.E) + ", " + std::to_string(p.H) + ", " +
         std::to_string(p.I) + "] (E, H, I)", a.mlp2.values.shape_str());
  }
  check_optional(op, "mlp2_bias", a.mlp2_bias, kFloatTypes, {p.E, p.H});
  p.mxfp4_1 = a.mlp1.is_mxfp4();
  p.mxfp4_2 = a.mlp2.is_mxfp4();
  p.slabs1 = check_weight_slabs(op, "mlp1_codes", "mlp1_slab_scales", a.mlp1, w1);
  p.slabs2 = check_weight_slabs(op, "mlp2_codes", "mlp2_slab_scales", a.mlp2, w2);
  check::at_most(op, "gate_weight", "experts", p.E, kMaxIndex - 1, "int32 expert offsets");
  if (a.experts_per_token < 1 || a.experts_per_token > p.E) {
    fail(kValue, op, "experts_per_token", "1 <= k <= " + std::to_string(p.E) + " (the number of experts)",
         std::to_string(a.experts_per_token));
  }
  p.k = static_cast<int>(a.experts_per_token);
  check::at_most(op, "x", "token-slots T * k", check::mul(op, "x", p.T, p.k), kMaxIndex, "int32 routing indices");
  check::finite(op, "swiglu_alpha", a.swiglu_alpha, false);
  check::finite(op, "swiglu_limit", a.swiglu_limit, true);
  p.device = check::same_device(op, {{"x", &a.x}, {"gate_weight", &a.gate_weight}, {"gate_bias", &a.gate_bias},
                                     {"mlp1_weight", &a.mlp1.values}, {"mlp1_scales", &a.mlp1.scales},
                                     {"mlp1_codes", &a.mlp1.slab_codes}, {"mlp1_slab_scales", &a.mlp1.slab_scales},
                                     {"mlp1_bias", &a.mlp1_bias}, {"mlp2_weight", &a.mlp2.values},
                                     {"mlp2_scales", &a.mlp2.scales}, {"mlp2_codes", &a.mlp2.slab_codes},
                                     {"mlp2_slab_scales", &a.mlp2.slab_scales}, {"mlp2_bias", &a.mlp2_bias},
                                     {"y", &a.y}, {"workspace", &a.workspace}});
  p.decode = moe_decode_plan(p);
  p.workspace = moe_mlp_workspace_layout(p, a.x.dtype);
  return p;
}

void check_moe_mlp_outputs(const MoeMlpProblem& p, const MoeMlpArgs& a) {
  const char* op = "moe_mlp";
  check_tensor(op, "y", a.y, {a.x.dtype}, {p.T, p.H});
  check::workspace(op, a.workspace, p.workspace.total);
}

// --------------------------------------------------------------------------------- add_rms_norm

AddRmsNormProblem check_add_rms_norm_inputs(const TensorView& x, const TensorView& residual, const TensorView& scale,
                                            float eps) {
  const char* op = "add_rms_norm";
  check_tensor(op, "x", x, kFloatTypes, {-1, -1});
  AddRmsNormProblem p{x.shape[0], x.shape[1], eps, x.device};
  check_tensor(op, "residual", residual, {x.dtype}, {p.T, p.H});
  check_tensor(op, "scale", scale, {DType::kFloat32}, {p.H});
  if (!(std::isfinite(eps) && eps >= 0.0f)) fail(kValue, op, "eps", "a finite number >= 0", check::format_number(eps));
  p.device = check::same_device(op, {{"x", &x}, {"residual", &residual}, {"scale", &scale}});
  return p;
}

void check_add_rms_norm_outputs(const AddRmsNormProblem& p, const TensorView& x, const TensorView& sum,
                                const TensorView& out) {
  const char* op = "add_rms_norm";
  check_tensor(op, "sum", sum, {x.dtype}, {p.T, p.H});
  check_tensor(op, "out", out, {x.dtype}, {p.T, p.H});
  check::on_device(op, "sum", sum, p.device, "x");
  check::on_device(op, "out", out, p.device, "x");
}

// ----------------------------------------------------------------------------- attention_decode

AttentionDecodeSplit attention_decode_split(int64_t cache_len, int64_t window, int64_t tokens, int64_t head_dim) {
  // 32 keys of up to 64 values per chunk (16 KB of keys and values in float32), a power of two
  // fewer keys for larger heads; at most 32 blocks per kv head, each walking every 32nd chunk of
  // a long context.
  AttentionDecodeSplit s;
  while (s.chunk > 1 && s.chunk * head_dim > kAttentionChunkValues) s.chunk /= 2;
  // Keys the tokens can see together: the window (stretched by the tokens after the first), or the
  // cache. Compared without forming window + tokens, which a huge window would overflow.
  const int64_t span = window > 0 && window < cache_len - tokens + 1 ? window + tokens - 1 : cache_len;
  const int64_t chunks = (span + s.chunk - 1) / s.chunk;
  s.splits = chunks < 1 ? 1 : (chunks > kAttentionMaxSplits ? kAttentionMaxSplits : chunks);
  return s;
}

AttentionDecodeProblem check_attention_decode_inputs(const AttentionDecodeArgs& a) {
  const char* op = "attention_decode";
  check_tensor(op, "k_cache", a.k_cache, kFloatTypes, {-1, -1, -1});
  AttentionDecodeProblem p;
  p.L = a.k_cache.shape[0];
  p.Hkv = a.k_cache.shape[1];
  p.D = a.k_cache.shape[2];
  if (p.Hkv < 1) fail(kValue, op, "k_cache", "at least one kv head [L, Hkv, D]", a.k_cache.shape_str());
  if (p.D < 2 || p.D % 2 != 0) {
    fail(kValue, op, "k_cache", "an even head size D >= 2 (rotary turns the two halves)", a.k_cache.shape_str());
  }
  check_tensor(op, "v_cache", a.v_cache, {a.k_cache.dtype}, {p.L, p.Hkv, p.D});
  check_tensor(op, "sinks", a.sinks, {DType::kFloat32}, {-1});
  p.Hq = a.sinks.shape[0];
  if (p.Hq < 1 || p.Hq % p.Hkv != 0) {
    fail(kValue, op, "sinks", "one sink per q head, a multiple of the " + std::to_string(p.Hkv) + " kv heads",
         a.sinks.shape_str());
  }
  const int64_t qkv_cols = check::mul(op, "qkv", check::add(op, "qkv", p.Hq, 2 * p.Hkv), p.D);
  check_tensor(op, "qkv", a.qkv, {a.k_cache.dtype}, {-1, qkv_cols});
  p.T = a.qkv.shape[0];
  check_tensor(op, "position", a.position, {DType::kInt32}, {1});
  check_tensor(op, "inv_freq", a.inv_freq, {DType::kFloat32}, {p.D / 2});
  check::at_most(op, "k_cache", "cache positions", p.L, kMaxIndex, "int32 positions");
  check::at_most(op, "qkv", "tokens", p.T, p.L, "the cache's positions");
  check::finite(op, "rope_scale", a.rope_scale, true);
  check::finite(op, "sm_scale", a.sm_scale, true);
  if (a.window < 0) fail(kValue, op, "window", "a number of keys >= 0 (0: no sliding window)", std::to_string(a.window));
  p.window = a.window;
  p.rope_scale = a.rope_scale;
  p.sm_scale = a.sm_scale;
  p.split = attention_decode_split(p.L, p.window, p.T, p.D);
  if (p.split.splits > 1) {
    const int64_t partials = check::mul(op, "k_cache", check::mul(op, "qkv", p.T, p.Hq), p.split.splits);
    p.workspace = static_cast<size_t>(check::mul(op, "k_cache", check::mul(op, "k_cache", partials, p.D + 2), 4));
  }
  p.device = check::same_device(op, {{"qkv", &a.qkv}, {"k_cache", &a.k_cache}, {"v_cache", &a.v_cache},
                                     {"sinks", &a.sinks}, {"position", &a.position}, {"inv_freq", &a.inv_freq},
                                     {"out", &a.out}, {"workspace", &a.workspace}});
  return p;
}

void check_attention_decode_outputs(const AttentionDecodeProblem& p, const AttentionDecodeArgs& a) {
  const char* op = "attention_decode";
  check_tensor(op, "out", a.out, {a.qkv.dtype}, {p.T, p.Hq * p.D});
}

// --------------------------------------------------------------------------------- greedy_token

GreedyTokenProblem check_greedy_token_args(const TensorView& logits, const TensorView& position,
                                           const TensorView& token, const TensorView& ids) {
  const char* op = "greedy_token";
  check_tensor(op, "logits", logits, kFloatTypes, {-1});
  GreedyTokenProblem p;
  p.V = logits.shape[0];
  if (p.V < 1) fail(kValue, op, "logits", "at least one logit [V]", logits.shape_str());
  check::at_most(op, "logits", "logits", p.V, kMaxIndex, "int32 token ids");
  check_tensor(op, "position", position, {DType::kInt32}, {1});
  check_tensor(op, "token", token, {DType::kInt32}, {1});
  check_tensor(op, "ids", ids, {DType::kInt32}, {-1});
  p.L = ids.shape[0];
  p.device = check::same_device(op, {{"logits", &logits}, {"position", &position}, {"token", &token}, {"ids", &ids}});
  return p;
}

}  // namespace moekit
