// What the C++ probes of the MoE decode path's expert kernels share (bench/moe_decode_experts.cu,
// bench/moe_decode_phases.cu, bench/l2_prefetch.cu): gpt-oss shapes, random weights and
// routings, the kernels' buffers, their parameters for call c (routing c % kRoutings, its own
// counters), and a compiled shape's two kernels launched as the layer launches them.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <random>
#include <vector>

#include "cuda/kernels/moe/decode_experts.cuh"
#include "cuda/launch/launch_kernel.h"
#include "graph_timing.h"

namespace moe_decode_probe {

using namespace moekit::cuda;

constexpr int64_t kH = 2880, kI = 2880;
constexpr int kK = 4, kRoutings = 8;

struct Matmul {
  uint8_t* codes;
  uint8_t* scales;
  float* bias;
  int64_t N, K;
};

inline Matmul make_matmul(int E, int64_t N, int64_t K, std::mt19937& rng) {
  std::vector<uint8_t> codes(E * N * K / 2), scales(E * N * K / 32);
  for (auto& c : codes) c = static_cast<uint8_t>(rng());
  for (auto& s : scales) s = static_cast<uint8_t>(120 + rng() % 8);
  std::normal_distribution<float> normal;
  std::vector<float> bias(E * N);
  for (auto& b : bias) b = 0.1f * normal(rng);
  return {upload(codes), upload(scales), upload(bias), N, K};
}

// Token t of routing r prefers experts (r * T * k + t * k + j) % E, j < k.
inline std::vector<float> make_logits(int E, int T, std::mt19937& rng) {
  std::uniform_real_distribution<float> small(0.0f, 1.0f);
  std::vector<float> logits(static_cast<size_t>(kRoutings) * T * E);
  for (int r = 0; r < kRoutings; ++r) {
    for (int t = 0; t < T; ++t) {
      float* row = logits.data() + (static_cast<size_t>(r) * T + t) * E;
      for (int e = 0; e < E; ++e) row[e] = small(rng);
      for (int j = 0; j < kK; ++j) row[(r * T * kK + t * kK + j) % E] = 10.0f + j;
    }
  }
  return logits;
}


struct Setup {
  int E, T, sms;
  Matmul mlp1, mlp2;
  float* logits;  // [kRoutings][T][E]
  uint4* x;       // [T, H / 8] paired
  __nv_bfloat16* act;
  __nv_bfloat16* y;
  float* partials;
  int* counters;  // [calls][mlp1, mlp2][kMaxGroups]
  char* routes;   // [kRoutings][kMoeDecodeRouteBytes]: what mlp1 leaves for mlp2
  cudaStream_t stream;
};

constexpr int64_t kMaxGroups = 2 * kI * kK * moe_decode::kMaxTokens / moe_decode::kSlabRows;
constexpr int kMaxSplits = 6;

inline MoeDecodeExpertsParams params(const Setup& s, bool mlp2, int splits, int call, int halves) {
  MoeDecodeExpertsParams p{};
  p.logits = s.logits + static_cast<size_t>(call % kRoutings) * s.T * s.E;
  p.route = s.routes + (call % kRoutings) * moekit::kMoeDecodeRouteBytes;
  p.T = s.T;
  p.E = s.E;
  p.k = kK;
  const Matmul& m = mlp2 ? s.mlp2 : s.mlp1;
  p.w = m.codes;
  p.w_scales = m.scales;
  p.N = m.N;
  p.K = m.K;
  p.bias = m.bias;
  p.bias_bf16 = false;
  p.x = mlp2 ? reinterpret_cast<const uint4*>(s.act) : s.x;
  p.x_stride = moekit::moe_decode_x_stride(m.K, halves);
  p.splits = splits;
  p.partials = s.partials;
  p.counters = s.counters + static_cast<size_t>(2 * call + mlp2) * kMaxGroups;  // each kernel its own
  p.alpha = 1.702f;
  p.limit = 7.0f;
  p.act = s.act;
  p.y = s.y;
  return p;
}

// A compiled shape's two kernels (mlp1, mlp2) with their shared memory for s's tokens, launched
// as the layer launches them (one block an SM, chained).
template <int kHalves, class Config>
struct ExpertKernels {
  void (*kernel[2])(MoeDecodeExpertsParams) = {moe_decode_experts_kernel<false, kHalves, Config>,
                                               moe_decode_experts_kernel<true, kHalves, Config>};
  size_t smem[2];

  explicit ExpertKernels(const Setup& s)
      : smem{moe_decode_mlp1_bytes(s.T, kH, Config::kWarps, kHalves), moe_decode_x_bytes(s.T * kK, kI, kHalves)} {
    for (int k = 0; k < 2; ++k) {
      CHECK(cudaFuncSetAttribute(kernel[k], cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem[k])));
    }
  }
  // mlp1 (which 0) or mlp2 of call c on `stream`.
  void launch(const Setup& s, int which, int splits, int call, cudaStream_t stream) const {
    launch_kernel(kernel[which], s.sms, 32 * Config::kWarps, smem[which], stream, true,
                  params(s, which, splits, call, kHalves));
  }
};

// The weights (random codes, scales near 2^0, float32 biases), kRoutings routings, x and the
// kernels' buffers for E experts and T tokens; free_setup releases them.
inline Setup make_setup(int E, int T, int sms, std::mt19937& rng) {
  Setup s{};
  s.E = E;
  s.T = T;
  s.sms = sms;
  s.mlp1 = make_matmul(E, 2 * kI, kH, rng);
  s.mlp2 = make_matmul(E, kH, kI, rng);
  s.logits = upload(make_logits(E, T, rng));
  std::vector<uint16_t> x(T * kH);
  for (auto& v : x) v = static_cast<uint16_t>(0x3c00 + rng() % 0x800) | (rng() % 2 ? 0x8000 : 0);
  s.x = reinterpret_cast<uint4*>(upload(x));
  CHECK(cudaMalloc(&s.act, T * kK * kI * 2));
  CHECK(cudaMalloc(&s.y, T * kH * 2));
  CHECK(cudaMalloc(&s.partials, sizeof(float) * kMaxSplits * kK * moe_decode::kMaxTokens * 2 * kI *
                                    moe_decode::kMaxTokens));
  CHECK(cudaMalloc(&s.counters, sizeof(int) * 2 * 2 * kRoutings * kMaxGroups));
  CHECK(cudaMalloc(&s.routes, kRoutings * moekit::kMoeDecodeRouteBytes));
  CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
  return s;
}

inline void free_setup(Setup& s) {
  for (void* ptr : {static_cast<void*>(s.mlp1.codes), static_cast<void*>(s.mlp1.scales),
                    static_cast<void*>(s.mlp1.bias), static_cast<void*>(s.mlp2.codes),
                    static_cast<void*>(s.mlp2.scales), static_cast<void*>(s.mlp2.bias),
                    static_cast<void*>(s.logits), static_cast<void*>(s.x), static_cast<void*>(s.act),
                    static_cast<void*>(s.y), static_cast<void*>(s.partials), static_cast<void*>(s.counters),
                    static_cast<void*>(s.routes)}) {
    CHECK(cudaFree(ptr));
  }
  CHECK(cudaStreamDestroy(s.stream));
}

}  // namespace moe_decode_probe
