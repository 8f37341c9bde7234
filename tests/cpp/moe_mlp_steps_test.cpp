// moe_mlp accepts its four steps from the layer's own checks (moe_mlp_step_problems) instead of
// checking each step's arguments again: each step's problem must be what the op's own checks
// make of the step's arguments, and those checks must accept them, for every kind of layer the
// layer's checks accept. Views only: nothing is read or run.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/accept.h"
#include "core/mxfp4_slabs.h"
#include "test_util.h"

namespace moekit::test {
namespace {

enum class Weights { kF32, kBF16, kMxfp4, kRepacked };

struct StepCase {
  int64_t T, E, k, H, I;
  DType x;
  Weights w1, w2;
  bool biases;
  Device device;
  std::string str() const {
    return "T " + std::to_string(T) + " E " + std::to_string(E) + " k " + std::to_string(k) + " H " +
           std::to_string(H) + " I " + std::to_string(I) + " x " + dtype_name(x) + " w1 " +
           std::to_string(static_cast<int>(w1)) + " w2 " + std::to_string(static_cast<int>(w2)) +
           (biases ? " biases" : "") + " on " + device.str();
  }
};

ExpertWeights weights(void* data, Weights kind, int64_t E, int64_t N, int64_t K, Device d) {
  switch (kind) {
    case Weights::kF32: return {make_view(data, DType::kFloat32, {E, N, K}, d)};
    case Weights::kBF16: return {make_view(data, DType::kBFloat16, {E, N, K}, d)};
    case Weights::kMxfp4:
    case Weights::kRepacked: break;
  }
  ExpertWeights w{make_view(data, DType::kUInt8, {E, N, K / 32, 16}, d), make_view(data, DType::kUInt8, {E, N, K / 32}, d)};
  if (kind == Weights::kRepacked) {
    const int64_t slabs = mxfp4_slabs::slabs(N), steps = mxfp4_slabs::steps(K);
    w.slab_codes = make_view(data, DType::kUInt8, {E, slabs, steps, mxfp4_slabs::kCodeBytes}, d);
    w.slab_scales = make_view(data, DType::kUInt8, {E, slabs, steps, mxfp4_slabs::kScaleBytes}, d);
  }
  return w;
}

void expect_same(const MatmulOgsProblem& made, const MatmulOgsProblem& checked) {
  EXPECT_EQ(made.M, checked.M);
  EXPECT_EQ(made.K, checked.K);
  EXPECT_EQ(made.N, checked.N);
  EXPECT_EQ(made.E, checked.E);
  EXPECT_EQ(made.P, checked.P);
  EXPECT_EQ(made.T, checked.T);
  EXPECT_EQ(made.k, checked.k);
  EXPECT_EQ(made.mxfp4, checked.mxfp4);
  EXPECT_EQ(made.gather, checked.gather);
  EXPECT_EQ(made.scatter, checked.scatter);
  EXPECT_EQ(made.swiglu, checked.swiglu);
  EXPECT_EQ(made.slabs, checked.slabs);
  EXPECT_EQ(made.out_rows, checked.out_rows);
  EXPECT_EQ(made.out_cols, checked.out_cols);
  EXPECT_EQ(made.device, checked.device);
  EXPECT_EQ(made.workspace.tiles, checked.workspace.tiles);
  EXPECT_EQ(made.workspace.tile_count, checked.workspace.tile_count);
  EXPECT_EQ(made.workspace.combine, checked.workspace.combine);
  EXPECT_EQ(made.workspace.staged, checked.workspace.staged);
  EXPECT_EQ(made.workspace.total, checked.workspace.total);
}

std::vector<StepCase> cases() {
  std::vector<Device> devices = {cpu()};
#if defined(MOEKIT_WITH_CUDA)
  devices.push_back(cuda(0));  // the decode path's plan and workspace; no device is touched
#endif
  std::vector<StepCase> out;
  for (const Device d : devices) {
    for (const int64_t T : {1, 3, 8, 9, 40}) {
      out.push_back({T, 32, 4, 2880 / 30, 64, DType::kBFloat16, Weights::kRepacked, Weights::kRepacked, true, d});
      out.push_back({T, 8, 2, 64, 96, DType::kBFloat16, Weights::kMxfp4, Weights::kRepacked, false, d});
      out.push_back({T, 4, 4, 32, 32, DType::kFloat32, Weights::kF32, Weights::kBF16, true, d});  // k = E
      out.push_back({T, 1, 1, 96, 32, DType::kFloat32, Weights::kMxfp4, Weights::kF32, true, d});  // one expert
      out.push_back({T, 128, 4, 64, 64, DType::kBFloat16, Weights::kBF16, Weights::kMxfp4, false, d});
    }
  }
  return out;
}

TEST(MoeMlpSteps, ProblemsAreWhatEachOpsChecksMakeOfTheStepsArguments) {
  std::vector<uint8_t> buffer(256);  // every view's data: nothing is read
  void* b = buffer.data();
  for (const StepCase& c : cases()) {
    SCOPED_TRACE(c.str());
    const Device d = c.device;
    MoeMlpArgs a;
    a.x = make_view(b, c.x, {c.T, c.H}, d);
    a.gate_weight = make_view(b, c.x, {c.E, c.H}, d);
    a.mlp1 = weights(b, c.w1, c.E, 2 * c.I, c.H, d);
    a.mlp2 = weights(b, c.w2, c.E, c.H, c.I, d);
    if (c.biases) {  // each in the other float dtype than x's where the layer takes either
      a.gate_bias = make_view(b, DType::kFloat32, {c.E}, d);
      a.mlp1_bias = make_view(b, DType::kBFloat16, {c.E, 2 * c.I}, d);
      a.mlp2_bias = make_view(b, c.x, {c.E, c.H}, d);
    }
    a.experts_per_token = c.k;
    const MoeMlpProblem p = check_moe_mlp_inputs(a);
    a.y = make_view(b, c.x, {c.T, c.H}, d);
    a.workspace = make_view(b, DType::kUInt8, {static_cast<int64_t>(p.workspace.total)}, d);
    check_moe_mlp_outputs(p, a);

    const MoeMlpSteps s = accept_moe_mlp_steps(p, a);
    for (const auto& [name, args, made] : {std::tuple{"gate", &s.gate, &s.gate_p}, {"mlp1", &s.mlp1, &s.mlp1_p},
                                           {"mlp2", &s.mlp2, &s.mlp2_p}}) {
      SCOPED_TRACE(name);
      MatmulOgsProblem checked;
      ASSERT_NO_THROW(checked = check_matmul_ogs_inputs(*args));
      EXPECT_NO_THROW(check_matmul_ogs_outputs(checked, *args));
      expect_same(*made, checked);
      // The layer's one workspace region serves each matmul in turn.
      EXPECT_GE(args->workspace.numel(), static_cast<int64_t>(checked.workspace.total));
    }
    RouteProblem route;
    ASSERT_NO_THROW(route = check_route_inputs(s.logits, c.k));
    EXPECT_NO_THROW(check_route_outputs(route, s.route));
    EXPECT_EQ(s.route_p.T, route.T);
    EXPECT_EQ(s.route_p.E, route.E);
    EXPECT_EQ(s.route_p.k, route.k);
    EXPECT_EQ(s.route_p.device, route.device);
  }
}

}  // namespace
}  // namespace moekit::test
