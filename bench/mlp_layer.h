// One routed gpt-oss layer's mlp1 or mlp2 on the GPU, for the C++ benchmarks of matmul_ogs
// (matmul_ogs_configs.cpp, swapab_variants.cu): random routing (random_routing.h), bf16 x and
// bias, random MXFP4 codes with scales around 2^-4 in both layouts (the checkpoint's and
// repack_mxfp4's), in several copies when one would fit in L2 (each call of a graph reads the
// next), and the workspace matmul_ogs asks for.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/mxfp4_slabs.h"
#include "graph_timing.h"
#include "moekit/ops.h"
#include "random_routing.h"

struct MlpLayer {
  static constexpr int kHidden = 2880, kIntermediate = 2880, kTopK = 4;
  int E = 0, T = 0, mlp = 1, used = 0, copies = 1;  // used: experts with rows
  int64_t P = 0, N = 0, K = 0, M = 0, out_rows = 0, out_cols = 0;
  std::vector<uint8_t*> codes, scales, slab_codes, slab_scales;  // a copy each
  uint16_t *x = nullptr, *bias = nullptr, *out = nullptr;
  int32_t *offsets = nullptr, *gather = nullptr, *scatter = nullptr;
  float* combine = nullptr;
  uint8_t* workspace = nullptr;
  size_t workspace_bytes = 0;

  // matmul_ogs's arguments on weight copy c, the workspace included.
  moekit::MatmulOgsArgs args(int c) const {
    const moekit::Device dev{moekit::DeviceType::kCUDA, 0};
    namespace slab = moekit::mxfp4_slabs;
    const int64_t slabs = slab::slabs(N), steps = slab::steps(K);
    moekit::MatmulOgsArgs a;
    a.x = moekit::TensorView(x, moekit::DType::kBFloat16, {M, K}, dev);
    a.w.values = moekit::TensorView(codes[c], moekit::DType::kUInt8, {E, N, K / 32, 16}, dev);
    a.w.scales = moekit::TensorView(scales[c], moekit::DType::kUInt8, {E, N, K / 32}, dev);
    a.w.slab_codes = moekit::TensorView(slab_codes[c], moekit::DType::kUInt8, {E, slabs, steps, slab::kCodeBytes}, dev);
    a.w.slab_scales =
        moekit::TensorView(slab_scales[c], moekit::DType::kUInt8, {E, slabs, steps, slab::kScaleBytes}, dev);
    a.bias = moekit::TensorView(bias, moekit::DType::kBFloat16, {E, N}, dev);
    a.expert_offsets = moekit::TensorView(offsets, moekit::DType::kInt32, {E + 1}, dev);
    if (mlp == 1) {
      a.gather_idx = moekit::TensorView(gather, moekit::DType::kInt32, {P}, dev);
      a.swiglu = {true, 1.702f, 7.0f};
    } else {
      a.scatter_idx = moekit::TensorView(scatter, moekit::DType::kInt32, {T, kTopK}, dev);
      a.combine_weight = moekit::TensorView(combine, moekit::DType::kFloat32, {T, kTopK}, dev);
    }
    a.out = moekit::TensorView(out, moekit::DType::kBFloat16, {out_rows, out_cols}, dev);
    if (workspace) {
      a.workspace = moekit::TensorView(workspace, moekit::DType::kUInt8, {static_cast<int64_t>(workspace_bytes)}, dev);
    }
    return a;
  }

  // The routed experts' weight bytes (codes and scales) and the useful FLOPs of one call.
  double weight_bytes() const { return static_cast<double>(used) * N * K * (0.5 + 1.0 / 32); }
  double flops() const { return 2.0 * P * N * K; }
};

// The layer's flags, --experts E --tokens T --mlp 1|2, and the string flags `extra` names; false
// (said on stderr) on a flag it does not know.
inline bool parse_layer_flags(int argc, char** argv, int& E, int& T, int& mlp,
                              const std::map<std::string, std::string*>& extra = {}) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--experts") E = std::atoi(argv[i + 1]);
    else if (flag == "--tokens") T = std::atoi(argv[i + 1]);
    else if (flag == "--mlp") mlp = std::atoi(argv[i + 1]);
    else if (extra.count(flag)) *extra.at(flag) = argv[i + 1];
    else {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      return false;
    }
  }
  return true;
}

inline MlpLayer make_mlp_layer(int E, int T, int mlp) {
  MlpLayer l;
  l.E = E;
  l.T = T;
  l.mlp = mlp;
  l.P = static_cast<int64_t>(T) * MlpLayer::kTopK;
  l.N = mlp == 1 ? 2 * MlpLayer::kIntermediate : MlpLayer::kHidden;
  l.K = mlp == 1 ? MlpLayer::kHidden : MlpLayer::kIntermediate;
  l.M = mlp == 1 ? T : l.P;  // x's rows: tokens (gathered) or expert-grouped slots
  l.out_rows = mlp == 1 ? l.P : T;
  l.out_cols = mlp == 1 ? l.N / 2 : l.N;

  std::mt19937 rng(1234);
  const RandomRouting routing = random_routing(T, E, MlpLayer::kTopK, rng);
  for (int e = 0; e < E; ++e) l.used += routing.offsets[e + 1] > routing.offsets[e];
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> x(l.M * l.K), bias(E * l.N);
  for (auto& v : x) v = moekit::float_to_bf16(normal(rng));
  for (auto& v : bias) v = moekit::float_to_bf16(0.1f * normal(rng));
  std::vector<float> combine(l.P);
  for (auto& v : combine) v = std::uniform_real_distribution<float>(0.0f, 1.0f)(rng);
  const size_t code_bytes = static_cast<size_t>(E) * l.N * l.K / 2, scale_bytes = static_cast<size_t>(E) * l.N * l.K / 32;
  l.copies = static_cast<int>(std::max<size_t>(1, (256u << 20) / (code_bytes + scale_bytes) + 1));
  std::vector<uint8_t> codes(code_bytes), scales(scale_bytes);
  namespace slab = moekit::mxfp4_slabs;
  const int64_t slabs = slab::slabs(l.N), steps = slab::steps(l.K);
  for (int c = 0; c < l.copies; ++c) {
    for (auto& b : codes) b = static_cast<uint8_t>(rng());
    for (auto& s : scales) s = static_cast<uint8_t>(121 + rng() % 3);
    l.codes.push_back(upload(codes));
    l.scales.push_back(upload(scales));
    l.slab_codes.push_back(device_buffer<uint8_t>(static_cast<size_t>(E) * slabs * steps * slab::kCodeBytes));
    l.slab_scales.push_back(device_buffer<uint8_t>(static_cast<size_t>(E) * slabs * steps * slab::kScaleBytes));
    const moekit::ExpertWeights w = l.args(c).w;  // this copy's views, both layouts
    moekit::repack_mxfp4(w.values, w.scales, w.slab_codes, w.slab_scales,
                         moekit::ExecContext::on_stream(nullptr));  // the legacy stream; synchronized below
  }
  l.x = upload(x);
  l.bias = upload(bias);
  l.offsets = upload(routing.offsets);
  l.gather = upload(routing.gather);
  l.scatter = upload(routing.scatter);
  l.combine = upload(combine);
  l.out = device_buffer<uint16_t>(l.out_rows * l.out_cols);
  l.workspace_bytes = moekit::matmul_ogs_workspace_size(l.args(0));
  l.workspace = device_buffer<uint8_t>(std::max<size_t>(l.workspace_bytes, 16));
  CHECK(cudaDeviceSynchronize());
  return l;
}
