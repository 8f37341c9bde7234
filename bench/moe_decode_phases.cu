// Where the decode path's expert kernels spend their time at batch 1: each warp's %globaltimer at
// the kernels' phases (MOEKIT_MOE_DECODE_PHASE in decode_experts.cuh): 0 entry, 1 the wait for
// the kernel before passed, 2 routed (mlp1) or the routing copied (mlp2), 3 x landed, 4 the first
// unit's first loads issued, 5 its first k step multiplied, 6 the last unit's steps done, 7 the
// warp done (epilogues included). mlp1 then mlp2 at gpt-oss-20b's shapes (E = 32, T = 1, 22 warps,
// 1 step ahead, k splits 2 and 4), random codes, 8 routings in turn so that a call finds little of
// its weights in L2, a graph of 16 chained pairs; the last pair's stamps, us after mlp1's first
// passed wait: per phase the earliest, median and latest block (a block's warp 0 for phases 0-3,
// its latest warp for 4-7).
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I src -I include -I bench \
//        bench/moe_decode_phases.cu -o build/moe_decode_phases && build/moe_decode_phases
#include <cuda_runtime.h>

namespace probe {
constexpr int kPhases = 8, kMaxWarps = 32, kMaxBlocks = 256;
__device__ unsigned long long stamps[2][kMaxBlocks][kMaxWarps][kPhases];
}  // namespace probe
#define MOEKIT_MOE_DECODE_PHASE(n)                                                    \
  do {                                                                                \
    if (threadIdx.x % 32 == 0) {                                                      \
      unsigned long long t_;                                                          \
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_));                         \
      probe::stamps[kCombine][blockIdx.x][threadIdx.x / 32][n] = t_;                  \
    }                                                                                 \
  } while (0)

#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#include "cuda/kernels/moe/decode_experts.cuh"
#include "cuda/launch/launch_kernel.h"
#include "graph_timing.h"

using namespace moekit::cuda;

int main() {
  constexpr int64_t kH = 2880, kI = 2880;
  constexpr int kE = 32, kT = 1, kK = 4, kRoutings = 8, kWarps = 22, kCounters = 4096;
  using Config = MoeDecodeExpertsConfig<kWarps, 1>;
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  if (sms > probe::kMaxBlocks) return 1;
  std::mt19937 rng(0);
  auto random_bytes = [&](size_t n, int lo, int span) {
    std::vector<uint8_t> v(n);
    for (auto& b : v) b = static_cast<uint8_t>(lo + rng() % span);
    return upload(v);
  };
  uint8_t* codes[2] = {random_bytes(kE * 2 * kI * kH / 2, 0, 256), random_bytes(kE * kH * kI / 2, 0, 256)};
  uint8_t* scales[2] = {random_bytes(kE * 2 * kI * kH / 32, 120, 8), random_bytes(kE * kH * kI / 32, 120, 8)};
  // Routing r prefers experts (r * k + j) % E.
  std::vector<float> logits(kRoutings * kE);
  for (int r = 0; r < kRoutings; ++r) {
    for (int e = 0; e < kE; ++e) logits[r * kE + e] = static_cast<float>(rng() % 1000) / 1000.0f;
    for (int j = 0; j < kK; ++j) logits[r * kE + (r * kK + j) % kE] = 10.0f + j;
  }
  float* d_logits = upload(logits);
  std::vector<uint16_t> x_host(kT * kH);
  for (auto& v : x_host) v = static_cast<uint16_t>(0x3c00 + rng() % 0x800) | (rng() % 2 ? 0x8000 : 0);
  uint16_t* x = upload(x_host);
  __nv_bfloat16 *act, *y;
  float* partials;
  int* counters;
  char* routes;
  CHECK(cudaMalloc(&act, kT * kK * kI * 2));
  CHECK(cudaMalloc(&y, kT * kH * 2));
  CHECK(cudaMalloc(&partials, 2 * kT * kK * 4 * kH * moe_decode::kMaxTokens * sizeof(float)));
  CHECK(cudaMalloc(&counters, 2 * 2 * kRoutings * kCounters * sizeof(int)));
  CHECK(cudaMalloc(&routes, kRoutings * moekit::kMoeDecodeRouteBytes));
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  void (*kernels[2])(MoeDecodeExpertsParams) = {moe_decode_experts_kernel<false, Config>,
                                                moe_decode_experts_kernel<true, Config>};
  const size_t smem[2] = {moe_decode_mlp1_bytes(kT, kH, kWarps), moe_decode_x_bytes(kT * kK, kI)};
  for (int k = 0; k < 2; ++k) {
    CHECK(cudaFuncSetAttribute(kernels[k], cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem[k])));
  }
  auto params = [&](int which, int c) {
    MoeDecodeExpertsParams p{};
    p.logits = d_logits + (c % kRoutings) * kE;
    p.route = routes + (c % kRoutings) * moekit::kMoeDecodeRouteBytes;
    p.T = kT;
    p.E = kE;
    p.k = kK;
    p.w = codes[which];
    p.w_scales = scales[which];
    p.N = which ? kH : 2 * kI;
    p.K = which ? kI : kH;
    p.x = which ? reinterpret_cast<const uint4*>(act) : reinterpret_cast<const uint4*>(x);
    p.x_stride = moekit::moe_decode_x_stride(p.K);
    p.splits = which ? 4 : 2;
    p.partials = partials;
    p.counters = counters + (2 * c + which) * kCounters;  // each call's own, zeroed below
    p.alpha = 1.702f;
    p.limit = 7.0f;
    p.act = act;
    p.y = y;
    return p;
  };
  const int calls = 2 * kRoutings;
  std::printf("%s, %d SMs; E = %d, T = %d, %d warps, 1 step ahead, k splits 2 and 4\n", prop.name, sms, kE, kT, kWarps);
  const char* names[probe::kPhases] = {"entry",         "wait passed",     "routed",    "x landed",
                                       "1st loads out", "1st step done",   "loop done", "warp done"};
  for (int rep = 0; rep < 3; ++rep) {
    const float us = graph_us_per_call(stream, calls, [&](int c) {
      if (c == 0) CHECK(cudaMemsetAsync(counters, 0, 2 * 2 * kRoutings * kCounters * sizeof(int), stream));
      for (int which = 0; which < 2; ++which) {
        launch_kernel(kernels[which], sms, 32 * kWarps, smem[which], stream, true, params(which, c));
      }
    });
    CHECK(cudaStreamSynchronize(stream));
    std::vector<unsigned long long> h(2 * probe::kMaxBlocks * probe::kMaxWarps * probe::kPhases);
    CHECK(cudaMemcpyFromSymbol(h.data(), probe::stamps, h.size() * sizeof(unsigned long long)));
    auto at = [&](int k, int b, int w, int n) {
      return h[((static_cast<size_t>(k) * probe::kMaxBlocks + b) * probe::kMaxWarps + w) * probe::kPhases + n];
    };
    unsigned long long t0 = ~0ull;
    for (int b = 0; b < sms; ++b) t0 = std::min(t0, at(0, b, 0, 1));
    std::printf("\nreplay %d: %.2f us a pair; us after mlp1's first passed wait: earliest / median / latest block\n", rep, us);
    for (int k = 0; k < 2; ++k) {
      std::printf("  %s\n", k ? "mlp2 (+ combine)" : "mlp1 (+ SwiGLU)");
      for (int n = 0; n < probe::kPhases; ++n) {
        std::vector<double> v;
        for (int b = 0; b < sms; ++b) {
          unsigned long long latest = 0;
          for (int w = 0; w < (n < 4 ? 1 : kWarps); ++w) latest = std::max(latest, at(k, b, w, n));
          if (latest > t0 / 2) v.push_back((static_cast<double>(latest) - static_cast<double>(t0)) / 1e3);
        }
        if (v.empty()) continue;
        std::sort(v.begin(), v.end());
        std::printf("    %d %-14s %8.2f %8.2f %8.2f\n", n, names[n], v.front(), v[v.size() / 2], v.back());
      }
    }
  }
  return 0;
}
