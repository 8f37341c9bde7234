// Where the decode path's expert kernels spend their time at batch 1: each warp's %globaltimer at
// the kernels' phases (MOEKIT_MOE_DECODE_PHASE in decode_experts.cuh): 0 entry, 1 the wait for
// the kernel before passed, 2 routed (mlp1) or the routing copied (mlp2), 3 x landed, 4 the first
// unit's first loads issued, 5 its first k step multiplied, 6 the last unit's steps done, 7 the
// warp done (epilogues included). mlp1 then mlp2 at gpt-oss-20b's shapes (E = 32, T = 1, 22 warps,
// 1 step ahead, 8-row units, k splits 1 and 2: the library's shape), random codes (bench/moe_decode_setup.h), 8 routings in turn so that a call finds little of
// its weights in L2, a graph of 16 chained pairs; the last pair's stamps, us after mlp1's first
// passed wait: per phase the earliest, median and latest block (a block's warp 0 for phases 0-3,
// its latest warp for 4-7).
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I src -I include -I "$CUTE" -I bench \
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

#include "moe_decode_setup.h"

using namespace moekit::cuda;
using namespace moe_decode_probe;

int main() {
  constexpr int kE = 32, kT = 1, kWarps = 22, kHalves = 2;  // the library's shape at T = 1
  constexpr int kSplits[2] = {1, 2};
  using Config = MoeDecodeExpertsConfig<kWarps, 1>;
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  if (sms > probe::kMaxBlocks) return 1;
  std::mt19937 rng(0);
  Setup s = make_setup(kE, kT, sms, rng);
  const ExpertKernels<kHalves, Config> kernels(s);
  const int calls = 2 * kRoutings;
  std::printf("%s, %d SMs; E = %d, T = %d, %d warps, 1 step ahead, k splits %d and %d, 8-row slabs in halves\n", prop.name,
              sms, kE, kT, kWarps, kSplits[0], kSplits[1]);
  const char* names[probe::kPhases] = {"entry",         "wait passed",     "routed",    "x landed",
                                       "1st loads out", "1st step done",   "loop done", "warp done"};
  for (int rep = 0; rep < 3; ++rep) {
    const float us = graph_us_per_call(s.stream, calls, [&](int c) {
      if (c == 0) CHECK(cudaMemsetAsync(s.counters, 0, sizeof(int) * 2 * calls * kMaxGroups, s.stream));
      for (int which = 0; which < 2; ++which) {
        kernels.launch(s, which, kSplits[which], c, s.stream);
      }
    });
    CHECK(cudaStreamSynchronize(s.stream));
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
  free_setup(s);
  return 0;
}
