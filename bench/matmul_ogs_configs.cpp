// Times matmul_ogs on one gpt-oss layer's mlp1 or mlp2 with each config forced
// (ExecContext::matmul_ogs_config), through the library's public C++ API: no Python, and it
// builds in seconds against the library already built by `make install`:
//
//   g++ -O2 -std=c++17 -I include -I /usr/local/cuda/include bench/matmul_ogs_configs.cpp \
//       build/python/libmoekit.a -L /usr/local/cuda/lib64 -lcudart -lpthread -o build/mb/matmul_ogs_configs
//   build/mb/matmul_ogs_configs [--experts 32] [--tokens 512] [--mlp 1|2] [--configs wgmma128,stream32]
//
// Every call carries the weights in both layouts (checkpoint, and repack_mxfp4's for the swap-AB
// configs). Routing: each token's k = 4 experts drawn uniformly without repeats (seeded, random_routing.h),
// grouped by expert as route() groups them. Weights: random MXFP4 codes with scales around 2^-4 (several copies
// when one would fit in L2, each call of the graph reading the next). Each config: the median
// time per call of a CUDA graph of 20 calls, the routed experts' weight bytes per second, the
// useful FLOP/s (2 P N K), and the largest difference from the first config's output relative to
// that output's largest magnitude (kernels sum in different orders, so a few bf16 units).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "graph_timing.h"
#include "moekit/error.h"
#include "moekit/ops.h"
#include "random_routing.h"

namespace {

constexpr int kHidden = 2880, kIntermediate = 2880, kTopK = 4;

template <class T>
T* device_buffer(size_t n) {
  T* p = nullptr;
  CHECK(cudaMalloc(&p, n * sizeof(T)));
  return p;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= s.size()) {
    const size_t comma = s.find(',', at);
    out.push_back(s.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int E = 32, T = 512, mlp = 1;
  std::string configs = "simt,stream8,stream16,stream32,tiled64,wgmma128,swapab16,swapab32,swapab64,swapab128";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--experts") E = std::atoi(argv[i + 1]);
    else if (flag == "--tokens") T = std::atoi(argv[i + 1]);
    else if (flag == "--mlp") mlp = std::atoi(argv[i + 1]);
    else if (flag == "--configs") configs = argv[i + 1];
    else {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  const int64_t P = static_cast<int64_t>(T) * kTopK;
  const int64_t N = mlp == 1 ? 2 * kIntermediate : kHidden, K = mlp == 1 ? kHidden : kIntermediate;
  const int64_t M = mlp == 1 ? T : P;  // x's rows: tokens (gathered) or expert-grouped slots
  const int64_t out_rows = mlp == 1 ? P : T, out_cols = mlp == 1 ? N / 2 : N;

  std::mt19937 rng(1234);
  const RandomRouting routing = random_routing(T, E, kTopK, rng);
  const std::vector<int32_t>&offsets = routing.offsets, &gather = routing.gather, &scatter = routing.scatter;
  int used = 0;
  for (int e = 0; e < E; ++e) used += offsets[e + 1] > offsets[e];

  // Inputs.
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> x(M * K), bias(E * N);
  for (auto& v : x) v = bf16_bits(normal(rng));
  for (auto& v : bias) v = bf16_bits(0.1f * normal(rng));
  std::vector<float> combine(P);
  for (auto& v : combine) v = std::uniform_real_distribution<float>(0.0f, 1.0f)(rng);
  const size_t code_bytes = static_cast<size_t>(E) * N * K / 2, scale_bytes = static_cast<size_t>(E) * N * K / 32;
  const int copies = static_cast<int>(std::max<size_t>(1, (256u << 20) / (code_bytes + scale_bytes) + 1));
  std::vector<uint8_t> codes(code_bytes), scales(scale_bytes);
  std::vector<uint8_t*> codes_d(copies), scales_d(copies);
  for (int c = 0; c < copies; ++c) {
    for (auto& b : codes) b = static_cast<uint8_t>(rng());
    for (auto& s : scales) s = static_cast<uint8_t>(121 + rng() % 3);
    codes_d[c] = upload(codes);
    scales_d[c] = upload(scales);
  }
  // Each copy also repacked (repack_mxfp4), which the swap-AB configs read; every call carries both.
  const moekit::Device dev{moekit::DeviceType::kCUDA, 0};
  const int64_t n_slabs = (N + 63) / 64, n_steps = (K + 63) / 64;
  std::vector<uint8_t*> slab_codes_d(copies), slab_scales_d(copies);
  for (int c = 0; c < copies; ++c) {
    slab_codes_d[c] = device_buffer<uint8_t>(static_cast<size_t>(E) * n_slabs * n_steps * 2048);
    slab_scales_d[c] = device_buffer<uint8_t>(static_cast<size_t>(E) * n_slabs * n_steps * 128);
    moekit::repack_mxfp4(moekit::TensorView(codes_d[c], moekit::DType::kUInt8, {E, N, K / 32, 16}, dev),
                         moekit::TensorView(scales_d[c], moekit::DType::kUInt8, {E, N, K / 32}, dev),
                         moekit::TensorView(slab_codes_d[c], moekit::DType::kUInt8, {E, n_slabs, n_steps, 2048}, dev),
                         moekit::TensorView(slab_scales_d[c], moekit::DType::kUInt8, {E, n_slabs, n_steps, 128}, dev));
  }
  uint16_t* x_d = upload(x);
  uint16_t* bias_d = upload(bias);
  int32_t* offsets_d = upload(offsets);
  int32_t* gather_d = upload(gather);
  int32_t* scatter_d = upload(scatter);
  float* combine_d = upload(combine);
  uint16_t* out_d = device_buffer<uint16_t>(out_rows * out_cols);

  auto args_for = [&](int c) {
    moekit::MatmulOgsArgs a;
    a.x = moekit::TensorView(x_d, moekit::DType::kBFloat16, {M, K}, dev);
    a.w.values = moekit::TensorView(codes_d[c], moekit::DType::kUInt8, {E, N, K / 32, 16}, dev);
    a.w.scales = moekit::TensorView(scales_d[c], moekit::DType::kUInt8, {E, N, K / 32}, dev);
    a.w.slab_codes = moekit::TensorView(slab_codes_d[c], moekit::DType::kUInt8, {E, n_slabs, n_steps, 2048}, dev);
    a.w.slab_scales = moekit::TensorView(slab_scales_d[c], moekit::DType::kUInt8, {E, n_slabs, n_steps, 128}, dev);
    a.bias = moekit::TensorView(bias_d, moekit::DType::kBFloat16, {E, N}, dev);
    a.expert_offsets = moekit::TensorView(offsets_d, moekit::DType::kInt32, {E + 1}, dev);
    if (mlp == 1) {
      a.gather_idx = moekit::TensorView(gather_d, moekit::DType::kInt32, {P}, dev);
      a.swiglu = {true, 1.702f, 7.0f};
    } else {
      a.scatter_idx = moekit::TensorView(scatter_d, moekit::DType::kInt32, {T, kTopK}, dev);
      a.combine_weight = moekit::TensorView(combine_d, moekit::DType::kFloat32, {T, kTopK}, dev);
    }
    a.out = moekit::TensorView(out_d, moekit::DType::kBFloat16, {out_rows, out_cols}, dev);
    return a;
  };
  moekit::MatmulOgsArgs a = args_for(0);
  const size_t ws_bytes = moekit::matmul_ogs_workspace_size(a);
  uint8_t* ws_d = device_buffer<uint8_t>(std::max<size_t>(ws_bytes, 16));

  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s: mlp%d E=%d T=%d (P=%lld, N=%lld, K=%lld), %d experts routed, %d weight copies\n", prop.name, mlp, E,
              T, static_cast<long long>(P), static_cast<long long>(N), static_cast<long long>(K), used, copies);
  const double weight_bytes = static_cast<double>(used) * N * K * (0.5 + 1.0 / 32);
  const double flops = 2.0 * P * N * K;
  std::vector<float> first;
  for (const std::string& config : split(configs)) {
    moekit::ExecContext ctx = moekit::ExecContext::on_stream(stream);
    ctx.matmul_ogs_config = config;
    auto call = [&](int c) {
      moekit::MatmulOgsArgs ac = args_for(c % copies);
      ac.workspace = moekit::TensorView(ws_d, moekit::DType::kUInt8, {static_cast<int64_t>(ws_bytes)}, dev);
      moekit::matmul_ogs(ac, ctx);
    };
    try {
      call(0);  // refusals surface here, before any capture
    } catch (const moekit::Error& e) {
      std::printf("%-14s refused: %s\n", config.c_str(), e.what());
      continue;
    }
    CHECK(cudaStreamSynchronize(stream));
    std::vector<uint16_t> out(out_rows * out_cols);
    CHECK(cudaMemcpy(out.data(), out_d, out.size() * 2, cudaMemcpyDeviceToHost));
    double diff = 0, scale = 0;
    if (first.empty()) {
      for (uint16_t b : out) first.push_back(bf16_value(b));
    }
    for (size_t i = 0; i < out.size(); ++i) {
      diff = std::max(diff, static_cast<double>(std::fabs(bf16_value(out[i]) - first[i])));
      scale = std::max(scale, static_cast<double>(std::fabs(first[i])));
    }
    const float us = graph_us_per_call(stream, 20, call);
    std::printf("%-14s %9.1f us  %6.2f TB/s of weights  %6.1f TFLOP/s  max diff %.2e of max |out|\n", config.c_str(),
                us, weight_bytes / us / 1e6, flops / us / 1e6, scale > 0 ? diff / scale : diff);
  }
  return 0;
}
