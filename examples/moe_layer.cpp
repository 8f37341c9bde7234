// One gpt-oss-style MoE layer on the CPU through moekit's C++ API: MXFP4 expert weights made by
// quantize_mxfp4, the layer by moe_mlp, and the same layer step by step (gate, route, mlp1 with
// SwiGLU, mlp2 with the weighted combine) to show the ops it is made of. The two must agree.
#include <moekit/moekit.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

namespace {

using moekit::DType;
using moekit::TensorView;

constexpr int64_t T = 4, H = 64, I = 64, E = 8, k = 2;

std::vector<float> normal(size_t n, float scale, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// MXFP4 blocks and scales of float weights [E, N, K], in the gpt-oss checkpoint layout.
struct Mxfp4 {
  std::vector<uint8_t> blocks, scales;
  moekit::ExpertWeights view(int64_t N, int64_t K) {
    return {TensorView(blocks.data(), DType::kUInt8, {E, N, K / 32, 16}),
            TensorView(scales.data(), DType::kUInt8, {E, N, K / 32})};
  }
};

Mxfp4 quantize(std::vector<float>& w, int64_t N, int64_t K) {
  Mxfp4 q{std::vector<uint8_t>(E * N * K / 2), std::vector<uint8_t>(E * N * K / 32)};
  moekit::quantize_mxfp4(TensorView(w.data(), DType::kFloat32, {E, N, K}), q.view(N, K).values, q.view(N, K).scales);
  return q;
}

}  // namespace

int main() {
  std::mt19937 rng(2026);
  std::vector<float> x = normal(T * H, 1.0f, rng), gate = normal(E * H, 0.125f, rng);
  std::vector<float> w1 = normal(E * 2 * I * H, 0.125f, rng), w2 = normal(E * H * I, 0.125f, rng);
  Mxfp4 mlp1 = quantize(w1, 2 * I, H), mlp2 = quantize(w2, H, I);

  // The whole layer: y [T, H], intermediates in a workspace the caller owns.
  moekit::MoeMlpArgs layer;
  layer.x = TensorView(x.data(), DType::kFloat32, {T, H});
  layer.gate_weight = TensorView(gate.data(), DType::kFloat32, {E, H});
  layer.mlp1 = mlp1.view(2 * I, H);
  layer.mlp2 = mlp2.view(H, I);
  layer.experts_per_token = k;
  std::vector<float> y(T * H);
  std::vector<uint8_t> workspace(moekit::moe_mlp_workspace_size(layer));
  layer.y = TensorView(y.data(), DType::kFloat32, {T, H});
  layer.workspace = TensorView(workspace.data(), DType::kUInt8, {static_cast<int64_t>(workspace.size())});
  moekit::moe_mlp(layer);

  // Step by step. The gate is a one-expert matmul_ogs, as moe_mlp computes it.
  std::vector<float> logits(T * E), weight(T * k), act(T * k * I), y2(T * H);
  std::vector<int32_t> idx(T * k), counts(E), offsets(E + 1), gather(T * k), scatter(T * k);
  moekit::MatmulOgsArgs g;
  g.x = layer.x;
  g.w.values = TensorView(gate.data(), DType::kFloat32, {1, E, H});
  g.out = TensorView(logits.data(), DType::kFloat32, {T, E});
  moekit::matmul_ogs(g);
  const moekit::RouteOutputs r{TensorView(idx.data(), DType::kInt32, {T, k}),
                               TensorView(weight.data(), DType::kFloat32, {T, k}),
                               TensorView(counts.data(), DType::kInt32, {E}),
                               TensorView(offsets.data(), DType::kInt32, {E + 1}),
                               TensorView(gather.data(), DType::kInt32, {T * k}),
                               TensorView(scatter.data(), DType::kInt32, {T, k})};
  moekit::route(g.out, k, r);
  moekit::MatmulOgsArgs m1;
  m1.x = layer.x;
  m1.w = layer.mlp1;
  m1.expert_offsets = r.expert_offsets;
  m1.gather_idx = r.gather_idx;
  m1.swiglu = {true, 1.702f, 7.0f};
  m1.out = TensorView(act.data(), DType::kFloat32, {T * k, I});
  moekit::matmul_ogs(m1);
  moekit::MatmulOgsArgs m2;
  m2.x = m1.out;
  m2.w = layer.mlp2;
  m2.expert_offsets = r.expert_offsets;
  m2.scatter_idx = r.scatter_idx;
  m2.combine_weight = r.expert_weight;
  m2.out = TensorView(y2.data(), DType::kFloat32, {T, H});
  moekit::matmul_ogs(m2);

  double diff = 0.0, norm = 0.0;
  for (int64_t i = 0; i < T * H; ++i) {
    diff = std::fmax(diff, std::fabs(y[i] - y2[i]));
    norm += static_cast<double>(y[i]) * y[i];
  }
  std::printf("moe_mlp on the CPU: T=%lld H=%lld I=%lld E=%lld k=%lld, MXFP4 experts\n", (long long)T, (long long)H,
              (long long)I, (long long)E, (long long)k);
  std::printf("token 0 goes to experts %d and %d with weights %.4f and %.4f\n", idx[0], idx[1], weight[0], weight[1]);
  std::printf("y[0, :4] = %.5f %.5f %.5f %.5f   |y| = %.4f\n", y[0], y[1], y[2], y[3], std::sqrt(norm));
  std::printf("the layer step by step differs by at most %g\n", diff);
  return diff == 0.0 && std::isfinite(norm) && norm > 0.0 ? 0 : 1;
}
