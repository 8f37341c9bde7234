// Cycles of the routing's top-k (topk_softmax_token, topk.cuh) for one token on one warp, as the
// decode path's mlp1 runs it in its prologue: warp 0 of each of 132 blocks of 22 warps, three
// passes through the same code (a rolled loop), clock64 around each. Pass 0 after the L2 was
// flushed by a 256 MB read (as the step's weights flush it) shows what fetching the code costs;
// the later passes, the top-k itself. Logits random normal, float32, k = 4.
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I src -I include -I "$CUTE" -I bench \
//        bench/topk_cycles.cu -o build/topk_cycles && build/topk_cycles
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#include "cuda/kernels/routing/topk.cuh"
#include "graph_timing.h"

using namespace moekit::cuda;

constexpr int kK = 4, kBlocks = 132, kPasses = 3, kSets = 64;

__global__ void __launch_bounds__(32 * 22, 1) topk_passes(const float* logits, int E, int32_t* idx, float* w,
                                                          long long* cycles) {
  if (threadIdx.x >= 32) return;
#pragma unroll 1
  for (int pass = 0; pass < kPasses; ++pass) {
    const long long t0 = clock64();
    const int at = blockIdx.x * kPasses + pass;
    topk_softmax_token(logits + (at % kSets) * E, 0, E, kK, idx + at * kK, w + at * kK);
    __syncwarp();  // the stores above issued: their values computed
    const long long t1 = clock64();
    if (threadIdx.x == 0) cycles[at] = t1 - t0;
  }
}

__global__ void read_all(const uint4* buf, size_t n, uint4* sink) {
  uint4 acc = make_uint4(0, 0, 0, 0);
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint4 v = buf[i];
    acc.x ^= v.x, acc.y ^= v.y, acc.z ^= v.z, acc.w ^= v.w;
  }
  if (acc.x == 0x12345678u) *sink = acc;
}

int main() {
  constexpr int kMaxE = 256;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> h(kSets * kMaxE);
  for (float& v : h) v = normal(rng);
  float* logits = upload(h);
  int32_t* idx;
  float* w;
  long long* cycles;
  uint4 *buf, *sink;
  const size_t n = (256u << 20) / 16;
  CHECK(cudaMalloc(&idx, kBlocks * kPasses * kK * 4));
  CHECK(cudaMalloc(&w, kBlocks * kPasses * kK * 4));
  CHECK(cudaMalloc(&cycles, kBlocks * kPasses * 8));
  CHECK(cudaMalloc(&buf, n * 16));
  CHECK(cudaMalloc(&sink, 16));
  CHECK(cudaMemset(buf, 1, n * 16));
  int clock_khz = 0;
  CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0));
  std::printf("top-k of E logits, k = %d, %d blocks; SM clock %d MHz; cycles: earliest / median / latest block\n", kK,
              kBlocks, clock_khz / 1000);
  std::vector<long long> c(kBlocks * kPasses);
  for (int E : {32, 128, 256}) {
    for (int flushed = 1; flushed >= 0; --flushed) {
      if (flushed) read_all<<<264, 512>>>(buf, n, sink);
      topk_passes<<<kBlocks, 32 * 22>>>(logits, E, idx, w, cycles);
      CHECK(cudaDeviceSynchronize());
      CHECK(cudaMemcpy(c.data(), cycles, c.size() * 8, cudaMemcpyDeviceToHost));
      std::printf("E = %3d, %-22s", E, flushed ? "after a 256 MB read" : "again (code in L2)");
      for (int pass = 0; pass < kPasses; ++pass) {
        std::vector<long long> v;
        for (int b = 0; b < kBlocks; ++b) v.push_back(c[b * kPasses + pass]);
        std::sort(v.begin(), v.end());
        std::printf("  pass %d: %5lld / %5lld / %5lld", pass, v.front(), v[v.size() / 2], v.back());
      }
      std::printf("\n");
    }
  }
  return 0;
}
