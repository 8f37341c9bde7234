// The MoE decode path's expert kernels alone (mlp1 + SwiGLU, mlp2 + the combine), one row per
// compiled config and k split, at gpt-oss shapes on one GPU: no Python, builds in seconds, so
// one run sweeps every config (docs/kernels.md has the figures).
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I src -I include -I "$CUTE" bench/moe_decode_experts.cu \
//        -o build/moe_decode_experts && build/moe_decode_experts 32 1 32 8 128 1
//
// Arguments: pairs E T (default 32 1). Weights are random codes with scales near 2^0, biases
// float32; R routings read disjoint experts where E allows, and call r uses routing r % R, so
// that a call finds little of its weights in L2. A CUDA graph replays 2R calls of one kernel,
// or of mlp1 then mlp2 ("both"), chained by programmatic dependent launch as the layer chains
// them; a row (a config at a pair of k splits) gives the median over 5 replays of the time per
// call and the routed weights' bytes over it. Every config's outputs for routing 0 are compared
// bit for bit with the first config's of the same halves at the same splits (the order of a
// unit's sums depends on its rows and k step, not on the warps or the steps ahead).
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "moe_decode_setup.h"

using namespace moekit::cuda;
using namespace moe_decode_probe;

namespace {

struct Row {
  const char* config;
  int halves;
  float us[3];                   // mlp1, mlp2, the two chained
  std::vector<uint16_t> out[2];  // act and y after routing 0
};

// Median time per call (us) of a graph of `calls` calls of launch_call(c), after zeroing every
// call's counters.
template <class Launch>
float time_graph(const Setup& s, int calls, Launch&& launch_call) {
  return graph_us_per_call(s.stream, calls, [&](int c) {
    if (c == 0) CHECK(cudaMemsetAsync(s.counters, 0, sizeof(int) * 2 * calls * kMaxGroups, s.stream));
    launch_call(c);
  });
}

template <int kHalves, int kWarps, int kAhead>
Row time_config(const Setup& s, const int (&splits)[2]) {
  using Config = MoeDecodeExpertsConfig<kWarps, kAhead>;
  static char name[48];
  std::snprintf(name, sizeof name, "%d half, %d warps, %d ahead", kHalves, kWarps, kAhead);
  Row row{name, kHalves, {0, 0, 0}, {}};
  const int calls = 2 * kRoutings;
  const ExpertKernels<kHalves, Config> kernels(s);
  auto call = [&](int which, int c) { kernels.launch(s, which, splits[which], c, s.stream); };
  // Outputs for routing 0 (mlp2 reads the act mlp1 left).
  CHECK(cudaMemsetAsync(s.counters, 0, sizeof(int) * 2 * calls * kMaxGroups, s.stream));
  call(0, 0);
  call(1, 0);
  CHECK(cudaStreamSynchronize(s.stream));
  CHECK(cudaGetLastError());
  for (int which = 0; which < 2; ++which) {
    const int64_t n = which ? s.T * kH : s.T * kK * kI;
    row.out[which].resize(n);
    CHECK(cudaMemcpy(row.out[which].data(), which ? s.y : s.act, n * 2, cudaMemcpyDeviceToHost));
  }
  // mlp1 first: its calls leave every routing's copy that mlp2's calls alone then read.
  for (int which = 0; which < 2; ++which) row.us[which] = time_graph(s, calls, [&](int c) { call(which, c); });
  row.us[2] = time_graph(s, calls, [&](int c) {
    call(0, c);
    call(1, c);
  });
  return row;
}

// FNV-1a over the output bits, printed so that builds of different sources compare bit for bit.
uint64_t fingerprint(const std::vector<uint16_t>& v) {
  uint64_t h = 1469598103934665603ull;
  for (uint16_t x : v) h = (h ^ x) * 1099511628211ull;
  return h;
}

using Timer = Row (*)(const Setup&, const int (&)[2]);
// The configs compared; the first of each way of filling the MMA (halves) is the reference of
// the bitwise check (the halves change the order of a row's sum).
const Timer kConfigs[] = {time_config<1, 22, 1>, time_config<2, 22, 1>};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::pair<int, int>> shapes;
  for (int i = 1; i + 1 < argc; i += 2) shapes.emplace_back(std::atoi(argv[i]), std::atoi(argv[i + 1]));
  if (shapes.empty()) shapes.emplace_back(32, 1);
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs\n", prop.name, prop.multiProcessorCount);
  std::mt19937 rng(0);
  for (auto [E, T] : shapes) {
    Setup s = make_setup(E, T, prop.multiProcessorCount, rng);
    const int routed = std::min(E, T * kK);
    const double bytes[2] = {routed * 2.0 * kI * kH * (0.5 + 1.0 / 32), routed * 1.0 * kH * kI * (0.5 + 1.0 / 32)};
    std::printf("\nE=%d T=%d: %d routed experts, mlp1 %.1f MB, mlp2 %.1f MB\n", E, T, routed, bytes[0] / 1e6,
                bytes[1] / 1e6);
    std::printf("%-28s %9s %9s %7s %9s %7s %9s  %s\n", "config", "splits", "mlp1 us", "GB/s", "mlp2 us", "GB/s",
                "both us", "bits vs first config, fingerprint");
    // The plan's splits at T = 1 (2, 4 in 16-row slabs; 1, 2 in 8-row ones), and one range each.
    for (const auto& splits : {std::array<int, 2>{2, 4}, std::array<int, 2>{1, 2}, std::array<int, 2>{1, 1}}) {
      const int pair[2] = {splits[0], splits[1]};
      Row first[2]{};  // by halves - 1
      for (size_t c = 0; c < sizeof kConfigs / sizeof kConfigs[0]; ++c) {
        Row row = kConfigs[c](s, pair);
        Row& ref = first[row.halves - 1];
        const char* bits = ref.config == nullptr ? "first"
                           : row.out[0] == ref.out[0] && row.out[1] == ref.out[1] ? "equal" : "DIFFER";
        std::printf("%-28s %5d, %d %9.2f %7.0f %9.2f %7.0f %9.2f  %s %016llx\n", row.config, pair[0], pair[1],
                    row.us[0], bytes[0] / row.us[0] / 1e3, row.us[1], bytes[1] / row.us[1] / 1e3, row.us[2], bits,
                    static_cast<unsigned long long>(fingerprint(row.out[0]) ^ (fingerprint(row.out[1]) * 31)));
        if (ref.config == nullptr) ref = std::move(row);
      }
    }
    free_setup(s);
  }
  return 0;
}
