// Where attention_decode's time goes at batch 1: each block's clock at the kernel's phases
// (MOEKIT_ATTENTION_PHASE in attention_decode.cuh), gpt-oss-20b's shapes (64 q heads, 8 kv
// heads, head size 64, bf16 cache), a full layer and a sliding one (window 128), ~140 keys
// cached in a cache of 256, the kernel chained after a kernel that lets it start at once and
// spins 5 us (as QKV's projection does in the decode step), each launch a graph of 24.
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I src -I include -I "$CUTE" -I bench \
//        bench/attention_phases.cu src/core/problem.cpp src/core/check.cpp src/core/tensor.cpp \
//        -o build/attention_phases && build/attention_phases
//
// Prints, per phase, the median and the latest block (us after the first block passed its wait),
// how many SMs hold two of its blocks, the time per call of the graph and a hash of the output,
// for the kernel the op takes for one token (attention_decode_one_kernel) and the general one.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace probe {
constexpr int kPhases = 9, kMaxBlocks = 8 * 32;
__device__ unsigned long long stamps[kMaxBlocks][kPhases];
__device__ unsigned sm_of[kMaxBlocks];
__device__ __forceinline__ void stamp(int n) {
  if (threadIdx.x == 0) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    stamps[blockIdx.y * gridDim.x + blockIdx.x][n] = t;
    if (n == 0) {
      unsigned sm;
      asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
      sm_of[blockIdx.y * gridDim.x + blockIdx.x] = sm;
    }
  }
}
}  // namespace probe
#define MOEKIT_ATTENTION_PHASE(n) ::probe::stamp(n)

#include "cuda/kernels/attention/attention_decode_one.cuh"
#include "cuda/launch/launch_kernel.h"
#include "graph_timing.h"

using namespace moekit::cuda;

namespace {

constexpr int kHq = 64, kHkv = 8, kD = 64, kL = 256, kPosition = 140, kLayers = 24;
const char* kPhaseNames[probe::kPhases] = {"entered",         "passed the wait", "position arrived",
                                           "queries rotated", "chunk staged",    "scores",
                                           "softmax",         "weighted values", "merged, written"};

// Lets the next kernel start at once, then spins `ns` on the SM's clock (~1.98 cycles a ns).
__global__ void busy_kernel(int ns) {
  let_next_grid_start();
  wait_for_previous_grid();
  const long long s = clock64();
  while (clock64() - s < static_cast<long long>(ns) * 198 / 100) {
  }
}

template <auto kernel>
void run(const char* name, int window, cudaStream_t stream) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  auto bf16s = [&](size_t n) {
    std::vector<__nv_bfloat16> v(n);
    for (auto& x : v) x = __float2bfloat16(normal(rng));
    return v;
  };
  const int G = kHq / kHkv, row = (kHq + 2 * kHkv) * kD;
  std::vector<float> sinks(kHq), inv_freq(kD / 2);
  for (auto& s : sinks) s = normal(rng);
  for (int i = 0; i < kD / 2; ++i) inv_freq[i] = std::pow(150000.0f, -2.0f * i / kD);
  AttentionDecodeParams p{};
  p.qkv = upload(bf16s(row));
  p.k_cache = upload(bf16s(static_cast<size_t>(kL) * kHkv * kD));
  p.v_cache = upload(bf16s(static_cast<size_t>(kL) * kHkv * kD));
  p.sinks = upload(sinks);
  p.position = upload(std::vector<int32_t>{kPosition});
  p.inv_freq = upload(inv_freq);
  CHECK(cudaMalloc(&p.out, kHq * kD * 2));
  p.T = 1;
  p.Hq = kHq;
  p.Hkv = kHkv;
  p.D = kD;
  p.L = kL;
  p.window = window;
  p.rope_scale = 1.0f;
  p.sm_scale = 0.125f;
  const moekit::AttentionDecodeSplit split = moekit::attention_decode_split(kL, window, p.T, kD);
  p.chunk = static_cast<int>(split.chunk);
  p.splits = static_cast<int>(split.splits);
  p.cluster = attention_decode_merges_in_cluster(G, kD, p.chunk, p.splits);
  if (p.splits > 1 && !p.cluster) {
    std::printf("%s: %d splits need the merge kernel; not probed\n", name, p.splits);
    return;
  }
  CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  const size_t smem =
      static_cast<size_t>(attention_decode_smem_floats(G, kD, p.chunk, p.cluster ? p.splits : 0)) * sizeof(float);
  const dim3 grid(kHkv, p.splits), cluster(1, p.cluster ? p.splits : 1, 1);
  const float us = graph_us_per_call(stream, kLayers, [&](int) {
    launch_kernel(busy_kernel, 132, 128, 0, stream, true, 5000);
    launch_kernel_in_clusters(kernel, grid, cluster, kAttnThreads, smem, stream, true, p);
  });
  CHECK(cudaGetLastError());
  // One more pair alone for the stamps (phases a block does not reach stay 0).
  std::vector<unsigned long long> st(probe::kMaxBlocks * probe::kPhases, 0);
  CHECK(cudaMemcpyToSymbol(probe::stamps, st.data(), st.size() * sizeof(unsigned long long)));
  launch_kernel(busy_kernel, 132, 128, 0, stream, true, 5000);
  launch_kernel_in_clusters(kernel, grid, cluster, kAttnThreads, smem, stream, true, p);
  CHECK(cudaStreamSynchronize(stream));
  const int blocks = kHkv * p.splits;
  CHECK(cudaMemcpyFromSymbol(st.data(), probe::stamps, st.size() * sizeof(unsigned long long)));
  unsigned long long origin = ~0ull;
  for (int b = 0; b < blocks; ++b) origin = std::min(origin, st[b * probe::kPhases + 1]);
  // How many SMs hold two of its blocks: an SM with two has no room left for the output
  // projection's GEMV block (registers), which then starts only as attention ends.
  std::vector<unsigned> sms(probe::kMaxBlocks);
  CHECK(cudaMemcpyFromSymbol(sms.data(), probe::sm_of, sms.size() * sizeof(unsigned)));
  std::vector<int> per_sm(1024, 0);
  int doubled = 0;
  for (int b = 0; b < blocks; ++b) doubled += ++per_sm[sms[b] % 1024] == 2;
  // The output's bits, hashed: both kernels must print the same.
  std::vector<uint16_t> out(kHq * kD);
  CHECK(cudaMemcpy(out.data(), p.out, out.size() * 2, cudaMemcpyDeviceToHost));
  unsigned long long hash = 1469598103934665603ull;
  for (uint16_t v : out) hash = (hash ^ v) * 1099511628211ull;
  std::printf("\n%s (window %d): %d kv heads x %d splits in clusters of %d, %d SMs holding two blocks; busy 5 us + "
              "attention: %.2f us a call; output %016llx\n",
              name, window, kHkv, p.splits, cluster.y, doubled, us, hash);
  for (int n = 0; n < probe::kPhases; ++n) {
    std::vector<double> t;
    for (int b = 0; b < blocks; ++b) {
      const unsigned long long v = st[b * probe::kPhases + n];
      if (v != 0) t.push_back((static_cast<double>(v) - origin) / 1e3);
    }
    if (t.empty()) continue;
    std::sort(t.begin(), t.end());
    std::printf("  %-18s median %7.2f us, last %7.2f us (%zu blocks)\n", kPhaseNames[n], t[t.size() / 2], t.back(),
                t.size());
  }
}

}  // namespace

int main() {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs\n", prop.name, prop.multiProcessorCount);
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  // The kernel the op takes for one token, then the general one (the same bits), alternating.
  constexpr auto one = &attention_decode_one_kernel<__nv_bfloat16, true>;
  constexpr auto general = &attention_decode_kernel<__nv_bfloat16, true>;
  for (int round = 0; round < 2; ++round) {
    run<one>("full layer, attention_decode_one_kernel", 0, stream);
    run<general>("full layer, attention_decode_kernel", 0, stream);
    run<one>("sliding layer, attention_decode_one_kernel", 128, stream);
    run<general>("sliding layer, attention_decode_kernel", 128, stream);
  }
  return 0;
}
